"""Row factories: how each row of a result is built, as psycopg's ``rows`` module.

A row factory is called with the result's description and returns a maker,
called on each row tuple. Pass one as ``row_factory=`` to ``connect()``,
``cursor()`` or ``AsyncConnection``:

>>> from shardq.execute.driver import Column
>>> maker = dict_row((Column("id"), Column("name")))
>>> maker((1, "ada"))
{'id': 1, 'name': 'ada'}
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from shardq.execute.driver import Column

__all__ = ["RowFactory", "RowMaker", "dict_row", "namedtuple_row", "tuple_row"]

Row = TypeVar("Row", covariant=True)
RowMaker = Callable[[tuple[Any, ...]], Any]
RowFactory = Callable[[Sequence[Column] | None], RowMaker]


def _identity(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return values


def tuple_row(description: Sequence[Column] | None) -> RowMaker:
    """Rows as tuples (the default)."""
    return _identity


def dict_row(description: Sequence[Column] | None) -> RowMaker:
    """Rows as dicts keyed by column name (like psycopg's ``dict_row``)."""
    names = [c.name for c in description or ()]

    def make(values: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(names, values, strict=True))

    return make


@functools.lru_cache(512)
def _row_class(names: tuple[str, ...]) -> type[NamedTuple]:
    return namedtuple("Row", names, rename=True)  # type: ignore[return-value]


def namedtuple_row(description: Sequence[Column] | None) -> RowMaker:
    """Rows as named tuples; invalid column names become ``_0``, ``_1``..."""
    cls = _row_class(tuple(c.name for c in description or ()))
    return lambda values: cls._make(values)


def is_tuple_factory(factory: RowFactory) -> bool:
    """Whether ``factory`` keeps rows as they come, so batches need no conversion."""
    return factory is tuple_row
