"""LIMIT and OFFSET: the shards return ``LIMIT n + m`` rows, the merge applies the window.

The first ``n + m`` rows of the whole ordered result are among the first
``n + m`` rows of some shard, so each shard runs the query with
``LIMIT n + m`` and no OFFSET, and the merge skips ``m`` rows and keeps ``n``.
A LIMIT after a regrouping cannot be pushed: every shard sends all its
groups.

``FETCH FIRST n ROWS ONLY`` is the standard's LIMIT and is run as one.
``FETCH FIRST n ROWS WITH TIES`` also keeps the rows that tie, in the ORDER
BY, with the ``n``-th: each shard runs it with ``n + m`` (its rows that sort
no later than its own ``(n + m)``-th include every row of the whole result
that sorts no later than the whole result's), and the merge keeps rows
while they tie with the last one of the window.

>>> import sqlglot
>>> select = sqlglot.parse_one("SELECT * FROM t ORDER BY a LIMIT 10 OFFSET 5")
>>> window = split_window(select)
>>> push_window(select, window).sql()
'SELECT * FROM t ORDER BY a LIMIT 15'
>>> window.resolve(None)
(5, 10)
>>> select = sqlglot.parse_one(
...     "SELECT * FROM t ORDER BY a OFFSET 2 FETCH FIRST 3 ROWS WITH TIES", read="postgres")
>>> push_window(select, split_window(select)).sql("postgres")
'SELECT * FROM t ORDER BY a FETCH FIRST 5 ROWS WITH TIES'
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from sqlglot import exp

from shardq.errors import DataError, UnsupportedQueryError
from shardq.sql.route import constant_value

__all__ = ["WINDOW_WORDS", "Window", "push_window", "split_window"]

#: The words :func:`push_window` may add to a SQLite statement.
WINDOW_WORDS = frozenset(
    {"case", "when", "then", "else", "end", "max", "fetch", "first", "rows", "with", "ties"}
)


@dataclass(frozen=True, slots=True)
class Window:
    """A query's LIMIT and OFFSET, as literals or bound parameters."""

    limit: exp.Expr | None = None
    offset: exp.Expr | None = None
    # SQLite: a negative LIMIT means none, a negative OFFSET means 0.
    negative_is_none: bool = False
    # FETCH FIRST ... WITH TIES: rows tying with the last one of the window are kept.
    ties: bool = False

    @property
    def bounded(self) -> bool:
        return self.limit is not None or self.offset is not None

    def resolve(self, params: object) -> tuple[int, int | None]:
        """``(offset, limit)`` with the parameters bound; ``limit`` None for no limit."""
        return (max(self._value(self.offset, params, "OFFSET") or 0, 0),
                self._value(self.limit, params, "LIMIT"))  # fmt: skip

    def _value(self, node: exp.Expr | None, params: object, clause: str) -> int | None:
        if node is None or isinstance(node, exp.Null):
            return None
        value = constant_value(node, params)
        if value is None:
            return None
        if isinstance(value, Decimal | float) and not isinstance(value, bool):
            # PostgreSQL casts a fractional LIMIT to bigint: halves away from zero.
            value = int(Decimal(value).quantize(Decimal(1), ROUND_HALF_UP))
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"{clause} must be an integer, not {value!r}")
        if value < 0:
            if self.negative_is_none:
                return None
            raise DataError(f"{clause} must not be negative")
        return value


def _operand(node: exp.Expr) -> exp.Expr | None:
    if isinstance(node, exp.Var) and node.name.upper() == "ALL":
        return None  # LIMIT ALL: no limit
    if isinstance(node, exp.Placeholder | exp.Literal | exp.Null):
        return node
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        return node  # LIMIT -1
    if isinstance(node, exp.Paren) and isinstance(node.this, exp.Literal | exp.Placeholder):
        return node.this
    raise UnsupportedQueryError(
        f"LIMIT/OFFSET {node.sql()} across shards",
        "shardq applies the window after merging and needs a number or a bound parameter",
    )


def split_window(select: exp.Select, dialect: str = "postgres") -> Window:
    """Read a query's LIMIT and OFFSET (refusing what cannot be resolved to numbers)."""
    limit = select.args.get("limit")
    offset = select.args.get("offset")
    offset_value = _operand(offset.expression) if offset is not None else None
    if isinstance(limit, exp.Fetch):
        options = limit.args.get("limit_options")
        if options is not None and options.args.get("percent"):
            raise UnsupportedQueryError(
                f"{limit.sql(dialect)} across shards",
                "a percentage of the rows depends on the count of every shard's rows",
            )
        count = limit.args.get("count")
        return Window(
            _operand(count) if count is not None else exp.Literal.number(1),
            offset_value,
            ties=options is not None and bool(options.args.get("with_ties")),
        )
    if limit is not None and not isinstance(limit, exp.Limit):
        raise UnsupportedQueryError(
            f"{limit.sql()} across shards", "only LIMIT and OFFSET are merged exactly"
        )
    if limit is not None and not isinstance(limit.expression, exp.Expr):
        limit = None
    return Window(
        _operand(limit.expression) if limit is not None else None,
        offset_value,
        negative_is_none=dialect == "sqlite",
    )


def push_window(select: exp.Select, window: Window) -> exp.Select:
    """Set ``select``'s per-shard LIMIT to ``limit + offset`` and drop its OFFSET."""
    select.set("offset", None)
    if window.limit is None or isinstance(window.limit, exp.Null | exp.Neg):
        select.set("limit", None)
        return select
    total: exp.Expr = window.limit.copy()
    if window.offset is not None and not isinstance(window.offset, exp.Null):
        both = (window.limit, window.offset)
        if not any(n.find(exp.Placeholder) for n in both):
            offset, limit = window.resolve(None)
            if limit is None:  # SQLite's negative LIMIT
                select.set("limit", None)
                return select
            total = exp.Literal.number(limit + offset)
        elif window.negative_is_none:
            # SQLite: a negative LIMIT is none and a negative OFFSET is 0, so the
            # shards' LIMIT n + m is written as SQLite would read the window:
            # CASE WHEN n < 0 THEN -1 ELSE n + max(m, 0) END.
            zero = exp.Literal.number(0)
            total = exp.Case(
                ifs=[exp.If(this=exp.LT(this=window.limit.copy(), expression=zero),
                            true=exp.Neg(this=exp.Literal.number(1)))],
                default=exp.Add(this=window.limit.copy(), expression=exp.func(
                    "MAX", window.offset.copy(), zero.copy())),
            )  # fmt: skip
        else:
            total = exp.Add(this=window.limit.copy(), expression=window.offset.copy())
    if window.ties:
        if not isinstance(total, exp.Literal | exp.Placeholder):
            total = exp.Paren(this=total)  # FETCH FIRST takes a constant or (an expression)
        options = exp.LimitOptions(rows=True, with_ties=True)
        select.set("limit", exp.Fetch(direction="FIRST", count=total, limit_options=options))
        return select
    select.set("limit", exp.Limit(expression=total))
    return select
