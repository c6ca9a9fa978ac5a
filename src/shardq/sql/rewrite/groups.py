"""GROUP BY terms, resolved as the database resolves them.

An ordinal names a select-list item. A bare name is an input column when the
FROM has a column of that name, and otherwise the select-list item of that
output name (``SELECT upper(g) AS u ... GROUP BY u``, or the implicit name
``GROUP BY upper``): PostgreSQL looks at the input first. Which columns the
FROM has comes from the catalog; when it is not known and a name could be
either, the query is refused rather than grouped by a guess.

>>> import sqlglot
>>> s = sqlglot.parse_one("SELECT upper(g) AS u, count(*) FROM t GROUP BY u, 1", read="postgres")
>>> [e.sql() for e in group_terms(s, "postgres", "", lambda name: False)]
['UPPER(g)', 'UPPER(g)']
>>> s = sqlglot.parse_one("SELECT count(*) AS g FROM t GROUP BY g", read="postgres")
>>> [e.sql() for e in group_terms(s, "postgres", "", lambda name: name == "g")]
['g']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import ProgrammingError, UnsupportedQueryError
from shardq.sql.analyze import normalize
from shardq.sql.rewrite.names import output_name

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["group_terms"]


def group_terms(
    select: exp.Select,
    dialect: str,
    source: str,
    input_column: Callable[[str], bool | None],
) -> list[exp.Expr]:
    """The GROUP BY terms of ``select`` as expressions (see the module docstring).

    ``input_column(name)`` says whether the FROM has a column ``name`` (None:
    not known).
    """
    group = select.args.get("group")
    if group is None:
        return []
    items = select.expressions
    names = [_name(item, dialect, source) for item in items]
    terms = []
    for node in group.expressions:
        if isinstance(node, exp.Literal) and not node.is_string and node.name.isdigit():
            position = int(node.name) - 1
            if not 0 <= position < len(items) or isinstance(items[position], exp.Star):
                raise ProgrammingError(f"GROUP BY position {node.name} is not in select list")
            item = items[position]
            terms.append(item.this if isinstance(item, exp.Alias) else item)
            continue
        if (
            isinstance(node, exp.Column)
            and not node.table
            and isinstance(node.this, exp.Identifier)
        ):
            name = normalize(node.this, dialect)
            if name in names:
                item = items[names.index(name)]
                expression = item.this if isinstance(item, exp.Alias) else item
                if expression.sql(dialect) != node.sql(dialect):
                    found = input_column(name)
                    if found is None:
                        raise UnsupportedQueryError(
                            f"GROUP BY {node.sql(dialect)}",
                            "it names a select-list item and may name a column of the FROM "
                            "too, which the database would prefer; shardq does not know the "
                            "columns here: write the expression or the ordinal instead",
                        )
                    if not found:
                        terms.append(expression)
                        continue
        terms.append(node)
    return terms


def _name(item: exp.Expr, dialect: str, source: str) -> str | None:
    if isinstance(item, exp.Star) or (
        isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
    ):
        return None
    return output_name(item, dialect, source).lower() if dialect == "sqlite" else output_name(
        item, dialect, source)  # fmt: skip
