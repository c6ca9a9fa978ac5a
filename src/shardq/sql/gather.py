"""Gather to one shard: the general fallback for a read no merge answers exactly.

Each distributed table the statement reads is replaced, on one shard and for
one session only, by a temporary table of the same name holding the rows the
statement can need from every shard; the statement then runs there unchanged,
with the database's own semantics (windows over any partition, ordered
aggregates, percentiles, joins of tables not co-located, correlated
subqueries, grouping sets). PostgreSQL and SQLite both search the temporary
schema first, so the unqualified name means the temporary table.

This module plans it, purely: per gathered table, the columns the statement
uses and the WHERE conjuncts that concern that table alone (the *pushdown*),
as a SELECT each shard runs. What it does not know to be safe it does not
push down: correctness first, fewer rows second.

>>> from shardq.config import load_config
>>> from shardq.sql.catalog import ColumnInfo
>>> config = load_config({"dialect": "postgres", "shards": [
...     {"name": "s1", "dsn": "postgresql:///a"},
...     {"name": "s2", "dsn": "postgresql:///b"}],
...     "tables": {"t": {"shard_key": "id"}, "u": {"shard_key": "id"}}})
>>> from shardq.sql.analyze import analyze
>>> from shardq.sql.parse import parse
>>> sql = "SELECT t.a, u.b FROM t JOIN u ON u.a = t.a WHERE t.k > 5 AND u.b IS NOT NULL"
>>> columns = {"t": (ColumnInfo("id"), ColumnInfo("a"), ColumnInfo("k")),
...            "u": (ColumnInfo("id"), ColumnInfo("a"), ColumnInfo("b"))}
>>> for table in plan_gather(analyze(parse(sql, "postgres"), config), columns).tables:
...     print(table.select)
SELECT "a", "k" FROM t WHERE t.k > 5
SELECT "a", "b" FROM u WHERE u.b IS NOT NULL
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.analyze import normalize

if TYPE_CHECKING:
    from shardq.sql.analyze import Analysis, TableRef
    from shardq.sql.catalog import ColumnInfo, Columns

__all__ = ["Gather", "GatheredTable", "plan_gather", "safe"]


@dataclass(frozen=True, slots=True)
class GatheredTable:
    """One distributed table as the gather moves it.

    Attributes:
        name: the table's name as the statement writes it (the temporary
            table's name, which shadows it).
        columns: the columns moved, quoted, in the table's order; empty for all.
        declared: on SQLite, each moved column's declaration (name, type,
            collation) for the temporary table; empty when not known.
        select: the pushdown: the SELECT every shard runs for its rows of it.
        pushed: whether a filter was pushed down (for EXPLAIN).
    """

    name: str
    columns: tuple[str, ...]
    declared: tuple[ColumnInfo, ...]
    select: str
    pushed: bool


@dataclass(frozen=True, slots=True)
class Gather:
    """The tables a gathered read moves to its shard (see the module docstring)."""

    tables: tuple[GatheredTable, ...]


# Nodes a pushed-down conjunct may hold: comparisons of columns with constants.
# No function (volatile, or failing on rows the statement would not evaluate it
# on), no cast of a column, no division, no subquery, no placeholder.
_SAFE = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul,
    exp.Neg, exp.DataType, exp.Interval, exp.Var, exp.Tuple,
)  # fmt: skip


def safe(conjunct: exp.Expr, *, placeholders: bool = False) -> bool:
    """Whether evaluating ``conjunct`` on every row of its table is harmless.

    ``placeholders`` allows bound parameters too (a pushdown is sent without
    any; a subquery run first has the statement's).
    """
    for node in conjunct.walk():
        if placeholders and isinstance(node, exp.Placeholder):
            continue
        if isinstance(node, exp.Cast):  # of a literal only: date '1998-12-01'
            if not isinstance(node.this, exp.Literal):
                return False
            continue
        if not isinstance(node, _SAFE):
            return False
        if isinstance(node, exp.Literal) and node.is_string and "%" in node.this:
            # Written "%%" for psycopg when the call has parameters, "%" when not:
            # the pushdown, sent without any, could not tell which.
            return False
        if isinstance(node, exp.In) and (node.args.get("query") or node.args.get("unnest")):
            return False
    return True


def _whole_rows(analysis: Analysis, refs: list[TableRef]) -> bool:
    """Whether the statement may use every column of the tables ``refs`` name.

    ``*`` (not ``count(*)``), ``t.*``, a whole-row reference (``row_to_json(t)``)
    or a NATURAL join: then the temporary tables get every column.
    """
    statement = analysis.parsed.expression
    dialect = analysis.parsed.dialect
    names = {ref.alias for ref in refs} | {ref.table.name.rpartition(".")[2] for ref in refs}
    for star in statement.find_all(exp.Star):
        if not isinstance(star.parent, exp.Count):
            return True
    for join in statement.find_all(exp.Join):
        if join.args.get("method") or str(join.args.get("kind") or "").upper() == "NATURAL":
            return True
    for column in statement.find_all(exp.Column):
        if not column.table and normalize(column.this, dialect) in names:
            return True
    return False


def _used_names(analysis: Analysis) -> set[str]:
    """Every column name the statement writes anywhere (over-inclusion is harmless)."""
    dialect = analysis.parsed.dialect
    names = {normalize(c.this, dialect) for c in analysis.parsed.expression.find_all(exp.Column)}
    for join in analysis.parsed.expression.find_all(exp.Join):
        for using in join.args.get("using") or ():
            names.add(
                normalize(using if isinstance(using, exp.Identifier) else using.this, dialect)
            )
    return names


def _pushdown(
    ref: TableRef, refs: int, known: tuple[ColumnInfo, ...] | None, dialect: str
) -> list[exp.Expr]:
    """The WHERE conjuncts of ``ref``'s SELECT that concern its table alone.

    Only when the table is read once (else each reference would need its own
    rows), from a SELECT with inner joins only (a filter on a null-extended
    side changes which rows are extended), each conjunct :func:`safe` and
    naming columns of ``ref`` only: qualified by its alias, or unqualified
    when it is the SELECT's one table and has the column.
    """
    select = ref.node.parent_select
    if refs != 1 or not isinstance(select, exp.Select) or ref.node.parent is None:
        return []
    if not isinstance(ref.node.parent, exp.From | exp.Join):
        return []
    joins = select.args.get("joins") or []
    if any(j.side or j.kind or j.args.get("method") for j in joins):
        return []
    where = select.args.get("where")
    if where is None:
        return []
    alone = not joins
    own = {normalize(c.name, dialect) if dialect == "sqlite" else c.name for c in known or ()}
    found = []
    for conjunct in where.this.flatten() if isinstance(where.this, exp.And) else [where.this]:
        if not safe(conjunct):
            continue
        columns = list(conjunct.find_all(exp.Column))
        if all(
            (normalize(c.args.get("table"), dialect) == ref.alias and not c.args.get("db"))
            if c.table
            else alone and normalize(c.this, dialect) in own
            for c in columns
        ):
            found.append(conjunct)
    return found


def _quote(name: str, dialect: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect)


def plan_gather(analysis: Analysis, columns: Columns) -> Gather:
    """The gather of a read (see the module docstring).

    Raises:
        UnsupportedQueryError: a distributed table is named with its schema,
            which the temporary table would not shadow.
    """
    dialect = analysis.parsed.dialect
    by_table: dict[str, list[TableRef]] = {}
    for ref in analysis.distributed:
        if ref.node.db:
            raise UnsupportedQueryError(
                f"gathering the table {ref.node.sql(dialect)}, named with its schema",
                "shardq gathers a table's rows into a temporary table of the same name, which "
                "shadows only the unqualified name; write the table's name without its schema",
            )
        by_table.setdefault(ref.table.name, []).append(ref)
    used = _used_names(analysis)
    tables = []
    for name, refs in by_table.items():
        known = columns.get(name)
        fold = dialect == "sqlite"
        moved: tuple[ColumnInfo, ...] = ()
        if known is not None and not _whole_rows(analysis, refs):
            moved = tuple(c for c in known if (c.name.lower() if fold else c.name) in used)
            if not moved:  # count(*) only: one column keeps the rows
                moved = known[:1]
        listed = ", ".join(_quote(c.name, dialect) for c in moved) if moved else "*"
        source = refs[0].node.this.sql(dialect)
        conjuncts = _pushdown(refs[0], len(refs), known, dialect)
        alias = refs[0].node.args.get("alias")
        select = f"SELECT {listed} FROM {source}"
        if alias is not None and conjuncts:
            select += f" AS {alias.this.sql(dialect)}"
        if conjuncts:
            select += " WHERE " + " AND ".join(c.sql(dialect) for c in conjuncts)
        tables.append(
            GatheredTable(
                source,
                tuple(_quote(c.name, dialect) for c in moved),
                moved or (known or ()),
                select,
                bool(conjuncts),
            )
        )
    return Gather(tuple(tables))
