"""ORDER BY: which column of the result each sort term reads.

The merge compares values the shards return, so every ORDER BY term must be
a column of the rows: an ordinal (``ORDER BY 2``), an output name
(``ORDER BY total``), an expression written as in the select list, or else
a helper column appended to the select list and dropped after the merge.
PostgreSQL resolves a bare name in ORDER BY to an output column first, then
to an input column; so does this.

>>> import sqlglot
>>> sql = "SELECT a, b AS total FROM t ORDER BY total DESC, 1, c"
>>> sort_terms(sqlglot.parse_one(sql, read="postgres"), "postgres")
[SortTerm(1, True, True), SortTerm(0, False, False), SortTerm('c', False, False)]
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from shardq.errors import ProgrammingError, UnsupportedQueryError
from shardq.sql.affinity import collation_name
from shardq.sql.analyze import normalize

__all__ = ["SortTerm", "is_star", "sort_terms"]

# Collations whose order is the code-point order the merge compares by.
CODE_POINT_COLLATIONS = frozenset({"c", "posix", "c.utf8", "c.utf-8", "ucs_basic", "binary"})


@dataclass(frozen=True, slots=True)
class SortTerm:
    """One ORDER BY term: a select-list index, or an expression to add as a column."""

    target: int | exp.Expr
    descending: bool
    nulls_first: bool
    code_point: bool = False  # an explicit code-point COLLATE

    def __repr__(self) -> str:  # the doctest shows expressions as SQL
        target = self.target if isinstance(self.target, int) else self.target.sql()
        return f"SortTerm({target!r}, {self.descending}, {self.nulls_first})"


def is_star(item: exp.Expr) -> bool:
    """Whether a select-list item is ``*`` or ``t.*``."""
    return isinstance(item, exp.Star) or (
        isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
    )


def _output_name(item: exp.Expr, dialect: str) -> str:
    from shardq.sql.rewrite.names import output_name

    name = output_name(item, dialect)
    return name.lower() if dialect == "sqlite" else name


def _unaliased(item: exp.Expr) -> exp.Expr:
    return item.this if isinstance(item, exp.Alias) else item


# SQLite's built-in collations, which the merge reproduces.
SQLITE_COLLATIONS = frozenset({"binary", "nocase", "rtrim"})


def _check_collation(node: exp.Expr, dialect: str) -> exp.Expr:
    if isinstance(node, exp.Collate):
        name = node.expression
        text = collation_name(node)
        if dialect == "sqlite" and text not in SQLITE_COLLATIONS:
            raise UnsupportedQueryError(
                f"ORDER BY ... COLLATE {name.sql()} across shards",
                "the merge orders text under SQLite's built-in collations BINARY, NOCASE "
                "and RTRIM only; sort on one shard",
            )
        if dialect != "sqlite" and text not in CODE_POINT_COLLATIONS:
            raise UnsupportedQueryError(
                f"ORDER BY ... COLLATE {name.sql()} across shards",
                "the merge compares text by code point, which is the order of the C "
                'collation only; sort on one shard or use COLLATE "C"',
            )
    return node


def _code_point(node: exp.Expr) -> bool:
    """Whether ``node`` is ``x COLLATE`` a code-point collation."""
    return isinstance(node, exp.Collate) and collation_name(node) in CODE_POINT_COLLATIONS


def sort_terms(select: exp.Select, dialect: str) -> list[SortTerm]:
    """Resolve ``select``'s ORDER BY terms against its select list."""
    order = select.args.get("order")
    if order is None:
        return []
    items = select.expressions
    star = next((i for i, item in enumerate(items) if is_star(item)), None)
    visible = items if star is None else items[:star]
    # A bare name is an output column first: an alias, or an implicit name
    # (``count`` for count(*), ``upper`` for upper(g)), then an input column.
    aliases: dict[str, int] = {}
    for i, item in enumerate(visible):
        aliases.setdefault(_output_name(item, dialect), i)
    texts = {_unaliased(item).sql(dialect): i for i, item in enumerate(visible)}
    terms = []
    for ordered in order.expressions:
        node = _check_collation(ordered.this, dialect)
        target: int | exp.Expr
        if isinstance(node, exp.Literal) and not node.is_string and node.name.isdigit():
            position = int(node.name) - 1
            if star is not None and position >= star:
                # (Checked first: * stands for columns shardq could not list.)
                raise UnsupportedQueryError(
                    f"ORDER BY {node.name} after a * in the select list",
                    "shardq cannot tell which column of * the ordinal names (the columns "
                    "of its source are not known); order by name",
                )
            if not 0 <= position < len(items):
                raise ProgrammingError(f"ORDER BY position {node.name} is not in select list")
            target = position
        elif (
            isinstance(node, exp.Column)
            and not node.table
            and (normalize(node.this, dialect) in aliases)
        ):
            target = aliases[normalize(node.this, dialect)]
        elif node.sql(dialect) in texts:
            target = texts[node.sql(dialect)]
        else:
            target = node
        terms.append(SortTerm(target, bool(ordered.args.get("desc")),
                              bool(ordered.args.get("nulls_first")),
                              _code_point(node)))  # fmt: skip
    return terms
