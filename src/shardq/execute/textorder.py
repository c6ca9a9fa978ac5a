"""Text order: whether a shard compares text as the merge does, by code point.

The merge orders text (ORDER BY, MIN, MAX) by Unicode code point, which is
exactly PostgreSQL's order under the ``C``, ``POSIX`` and ``C.UTF-8``
collations and SQLite's ``BINARY``. Under a linguistic collation
(``en_US.UTF-8``, any ICU one) the order differs, so a merge that compares
text is refused there rather than answered in another order. Each shard's
default collation is asked once per engine; a column declared with its own
``COLLATE`` is not seen (the README says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ORDERABLE_TYPES",
    "POSTGRES_COLLATION_SQL",
    "TEXT_TYPES",
    "code_point_order",
    "collation_name",
]

# The database's default collation and, from PostgreSQL 15, its provider
# (read through jsonb so that older servers, without the column, answer NULL).
POSTGRES_COLLATION_SQL = (
    "SELECT datcollate, to_jsonb(d) ->> 'datlocprovider', "
    "coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale') "
    "FROM pg_database d WHERE datname = current_database()"
)
# PostgreSQL type OIDs of text: text, varchar, bpchar, name, "char".
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 18})
# The types whose order Python reproduces from the values the drivers return:
# bool, bytea, integers, numeric, float4/8 (NaN handled), text, date, time,
# timestamp(tz) and uuid. Not interval: psycopg reads a year as 365 days,
# PostgreSQL compares it as 360.
ORDERABLE_TYPES = TEXT_TYPES | frozenset(
    {16, 17, 20, 21, 23, 26, 700, 701, 1700, 1082, 1083, 1114, 1184, 2950}
)
_CODE_POINT = frozenset({"c", "posix", "c.utf8", "c.utf-8"})


def code_point_order(row: Sequence[Any]) -> bool:
    """Whether a ``(collation, provider)`` row orders text by code point.

    >>> code_point_order(("C.UTF-8", "c")), code_point_order(("en_US.UTF-8", "c"))
    (True, False)
    >>> code_point_order(("C", "i"))  # ICU: linguistic, whatever datcollate says
    False
    """
    collation, provider = [*row, None, None][:2]
    if provider not in (None, "c", "b"):  # libc and builtin can be code point; ICU never
        return False
    return str(collation or "").lower() in _CODE_POINT


def collation_name(row: Sequence[Any]) -> str:
    """A readable name of the collation a ``(collation, provider, locale)`` row describes.

    >>> collation_name(("C", "i", "en-US")), collation_name(("en_US.UTF-8", "c", None))
    ('ICU en-US', 'en_US.UTF-8')
    """
    collation, provider, locale = [*row, None, None, None][:3]
    if provider == "i":
        return f"ICU {locale or collation}"
    return str(collation or "unknown")
