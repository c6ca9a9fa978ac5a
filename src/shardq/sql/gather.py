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

On SQLite the temporary table is declared, not created from a query: each
moved column with its declared type's affinity and its collation, as the
catalog reads them (``declared``), so that values inserted keep the storage
class the real table gave them and compare as they would there. The chosen
shard fills it with its own rows by the pushdown naming its table in
``main`` (``local``: the unqualified name would already mean the temporary
table). Its ``rowid`` would not be the real table's, so a statement naming
one is not gathered.

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

import datetime as dt
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.analyze import normalize, own_aggregates
from shardq.sql.rewrite import positional_as_named

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shardq.sql.analyze import Analysis, TableRef
    from shardq.sql.catalog import ColumnInfo, Columns

__all__ = ["Gather", "GatheredTable", "bind_gather", "plan_gather", "safe"]


@dataclass(frozen=True, slots=True)
class GatheredTable:
    """One distributed table as the gather moves it.

    Attributes:
        name: the table's name as the statement writes it (the temporary
            table's name, which shadows it).
        columns: the columns moved, quoted, in the table's order; empty for all.
        declared: each moved column's declaration (name, type, collation)
            as the catalog reads it (all the table's columns when ``columns``
            is empty): SQLite's temporary table is declared from it; empty
            when not known.
        select: the pushdown: the SELECT every shard runs for its rows of it.
        pushed: whether a filter was pushed down (for EXPLAIN).
        reference: a reference table (gathered in a transaction only), whose
            rows are read from one shard.
        head: the pushdown before its WHERE.
        filters: the pushdown's conjuncts; on PostgreSQL they may hold
            placeholders, which :func:`bind_gather` replaces by the values
            (``select`` holds them until then).
        local: the pushdown reading the table by its schema (SQLite:
            ``main``), which the chosen shard runs once the temporary table
            shadows the bare name (the same as ``select`` on PostgreSQL).
    """

    name: str
    columns: tuple[str, ...]
    declared: tuple[ColumnInfo, ...]
    select: str
    pushed: bool
    reference: bool = False
    head: str = ""
    filters: tuple[exp.Expr, ...] = ()
    local: str = ""


@dataclass(frozen=True, slots=True)
class Gather:
    """The tables a gathered read moves to its shard (see the module docstring).

    ``analyze`` tells whether the temporary tables are to be analyzed once
    filled: when the statement reads more than one table (or one twice), its
    join order and methods depend on their sizes, which a table just filled
    does not have (PostgreSQL guessed 2,134 rows of 200,075, and sorted both
    sides of a join it would otherwise hash: 0.31-0.41 s against 0.22 s after
    an ANALYZE of 0.15 s). A read of one table is planned alike either way.
    """

    tables: tuple[GatheredTable, ...]
    analyze: bool = False
    positional: int = 0  # the statement's positional placeholders (named _p0, _p1, ...)
    placeholders: bool = False  # whether a filter holds one: see bind_gather


# Nodes a pushed-down conjunct may hold: comparisons of columns with constants.
# No function (volatile, or failing on rows the statement would not evaluate it
# on), no cast of a column, no division, no subquery, no placeholder.
_SAFE = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul,
    exp.Neg, exp.DataType, exp.Interval, exp.Var, exp.Tuple,
)  # fmt: skip


def safe(conjunct: exp.Expr, *, placeholders: bool = False, dialect: str = "postgres") -> bool:
    """Whether evaluating ``conjunct`` on every row of its table is harmless.

    ``placeholders`` allows bound parameters too (a subquery run first has
    the statement's; a PostgreSQL pushdown has them written in by
    :func:`bind_gather`, which leaves out a conjunct whose value it cannot
    write). On SQLite not even a literal's cast: its affinity comes from the
    type name as written (``CAST('5' AS STRING)`` is numeric), which the SQL
    generated again may spell otherwise.
    """
    for node in conjunct.walk():
        if placeholders and isinstance(node, exp.Placeholder):
            continue
        if isinstance(node, exp.Cast | exp.DataType) and dialect == "sqlite":
            return False
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
    names = {
        normalize(c.this, dialect)
        for c in analysis.parsed.expression.find_all(exp.Column)
        if not isinstance(c.this, exp.Star)  # t.*: whole rows (see _whole_rows)
    }
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
        if not safe(conjunct, placeholders=dialect == "postgres", dialect=dialect):
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


# The names by which SQLite reads a table's rowid when no column takes them.
_ROWID = frozenset({"rowid", "oid", "_rowid_"})


def _check_rowid(analysis: Analysis, columns: Columns, names: list[str]) -> None:
    """Refuse a SQLite statement naming a gathered table's rowid (its own, in the temporary table).

    >>> from shardq.config import load_config
    >>> from shardq.sql.analyze import analyze
    >>> from shardq.sql.parse import parse
    >>> config = load_config({"dialect": "sqlite", "shards": [
    ...     {"name": "s1", "dsn": "a.db"}, {"name": "s2", "dsn": "b.db"}],
    ...     "tables": {"t": {"shard_key": "id"}}})
    >>> sql = "SELECT rowid, id FROM t ORDER BY 1"
    >>> _check_rowid(analyze(parse(sql, "sqlite"), config), {}, ["t"])
    Traceback (most recent call last):
    ...
    shardq.errors.UnsupportedQueryError: the rowid of a gathered table is not supported: ...
    """
    own = {c.name.lower() for name in names for c in columns.get(name, ())}
    for column in analysis.parsed.expression.find_all(exp.Column):
        name = column.name.lower()
        if name in _ROWID and name not in own:
            raise UnsupportedQueryError(
                "the rowid of a gathered table",
                f"no merge answers this read exactly, so shardq would gather its tables' rows "
                f"into temporary tables on one shard, where {column.name} would number the "
                "rows as they arrived, not as the tables do; name the key column instead",
            )


def _stripped(node: exp.Expr) -> str:
    """``node``'s SQL without the COLLATE clauses (a group under NOCASE is still its column's)."""
    bare = node.copy().transform(lambda n: n.this if isinstance(n, exp.Collate) else n)
    return str(bare.sql("sqlite"))


def _grouped(select: exp.Select) -> set[str]:
    """The expressions ``select`` groups by (ordinals and output names resolved)."""
    items = select.expressions
    names = {normalize(i.alias, "sqlite"): i.unalias() for i in items if i.alias}
    found = set()
    group = select.args.get("group")
    for key in group.expressions if group is not None else ():
        if isinstance(key, exp.Literal) and key.is_int and 0 < int(key.this) <= len(items):
            key = items[int(key.this) - 1].unalias()
        found.add(_stripped(key))
        if isinstance(key, exp.Column) and not key.table:
            aliased = names.get(normalize(key.this, "sqlite"))
            if aliased is not None:
                found.add(_stripped(aliased))
    return found


def _check_bare(analysis: Analysis, columns: Columns) -> None:
    """Refuse a grouped SELECT showing a column SQLite takes from an arbitrary row.

    As the merge does (:mod:`shardq.sql.rewrite.sqlite`): a column neither
    grouped nor aggregated comes from the row of the query's one min() or
    max(), else from any row of the group, which need not be the one another
    file holding the same rows would take. Only a column surely of the
    SELECT's own tables counts (qualified by one of them, or a column of one
    in the catalog); an outer query's column is one value per group.

    >>> from shardq.config import load_config
    >>> from shardq.sql.analyze import analyze
    >>> from shardq.sql.catalog import ColumnInfo
    >>> from shardq.sql.parse import parse
    >>> config = load_config({"dialect": "sqlite", "shards": [
    ...     {"name": "s1", "dsn": "a.db"}, {"name": "s2", "dsn": "b.db"}],
    ...     "tables": {"t": {"shard_key": "id"}}})
    >>> cols = {"t": (ColumnInfo("id"), ColumnInfo("g"), ColumnInfo("v"))}
    >>> def check(sql):
    ...     _check_bare(analyze(parse(sql, "sqlite"), config), cols)
    >>> check("SELECT g, max(v), id, rank() OVER (ORDER BY g) FROM t GROUP BY 1")
    >>> check("SELECT g + 1 AS h, count(*) OVER () FROM t GROUP BY h")
    >>> check("SELECT g, v, rank() OVER (ORDER BY g) FROM t GROUP BY g")
    Traceback (most recent call last):
    ...
    shardq.errors.UnsupportedQueryError: the bare column v in a grouped query is not supported: ...
    """
    for select in analysis.parsed.expression.find_all(exp.Select):
        found = _bare_column(select, columns)
        if found is not None:
            raise UnsupportedQueryError(
                f"the bare column {found.sql('sqlite')} in a grouped query",
                "SQLite takes a column that is neither grouped nor aggregated from an "
                "arbitrary row of the group (from the row holding the minimum or maximum "
                "only when the query has exactly one min() or max()); gathered to one shard, "
                "it could take another row than one file holding the same rows does; add it "
                "to GROUP BY or aggregate it",
                gatherable=False,
            )


def _bare_column(select: exp.Select, columns: Columns) -> exp.Column | None:
    """The first column of ``select`` SQLite would take from an arbitrary row, if any."""
    having, order = select.args.get("having"), select.args.get("order")
    parts = [(i.unalias(), False) for i in select.expressions]
    parts += [(p, True) for p in (having, order) if p is not None]
    aggregates = [a for part, _ in parts for a in own_aggregates(part, select)]
    if select.args.get("group") is None and not aggregates:
        return None
    if len({a.sql("sqlite") for a in aggregates if isinstance(a, exp.Min | exp.Max)}) == 1:
        return None  # the row of the one min() or max(): SQLite's documented choice
    grouped = _grouped(select)
    first = select.args.get("from_") or select.args.get("from")
    sources = [first, *(select.args.get("joins") or ())]
    tables = [s.this for s in sources if s is not None and isinstance(s.this, exp.Table)]
    own = {normalize(t.alias_or_name, "sqlite") for t in tables}
    known = {c.name.lower() for t in tables for c in columns.get(t.name.lower(), ())}
    outputs = {normalize(i.alias, "sqlite") for i in select.expressions if i.alias}
    pruned = {id(a) for a in aggregates}

    def bare(node: exp.Expr, ordering: bool) -> exp.Column | None:
        if id(node) in pruned or isinstance(node, exp.Select | exp.Subquery):
            return None
        if _stripped(node) in grouped:
            return None
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier):
            name = normalize(node.this, "sqlite")
            if node.table:
                mine = normalize(node.args.get("table"), "sqlite") in own
            else:  # an output name in HAVING and ORDER BY; else, if known, a column
                mine = name in known and not (ordering and name in outputs)
            return node if mine else None
        for child in node.iter_expressions():
            if (found := bare(child, ordering)) is not None:
                return found
        return None

    for part, ordering in parts:
        if (found := bare(part, ordering)) is not None:
            return found
    return None


def plan_gather(analysis: Analysis, columns: Columns, *, everything: bool = False) -> Gather:
    """The gather of a read (see the module docstring).

    With ``everything``, the reference tables the read uses are gathered
    too: in a transaction, the read runs on a session of its own, which must
    see the transaction's writes to them as well.

    Raises:
        UnsupportedQueryError: a distributed table is named with its schema,
            which the temporary table would not shadow.
    """
    dialect = analysis.parsed.dialect
    by_table: dict[str, list[TableRef]] = {}
    for ref in analysis.refs if everything else analysis.distributed:
        if ref.node.db:
            raise UnsupportedQueryError(
                f"gathering the table {ref.node.sql(dialect)}, named with its schema",
                "shardq gathers a table's rows into a temporary table of the same name, which "
                "shadows only the unqualified name; write the table's name without its schema",
            )
        by_table.setdefault(ref.table.name, []).append(ref)
    if dialect == "sqlite":
        _check_rowid(analysis, columns, list(by_table))
        _check_bare(analysis, columns)
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
        named = alias.this.sql(dialect) if alias is not None else source
        head = f"SELECT {listed} FROM {source}"
        if alias is not None and conjuncts:
            head += f" AS {named}"
        filtered = " WHERE " + " AND ".join(c.sql(dialect) for c in conjuncts) if conjuncts else ""
        # SQLite's own rows, read once the temporary table shadows the name: by
        # its schema, under the name the conjuncts qualify its columns by.
        local = f"SELECT {listed} FROM main.{source} AS {named}{filtered}" if fold else ""
        tables.append(
            GatheredTable(
                source,
                tuple(_quote(c.name, dialect) for c in moved),
                moved or (known or ()),
                _select(head, conjuncts, dialect),
                bool(conjuncts),
                reference=not refs[0].table.distributed,
                head=head,
                filters=tuple(conjuncts),
                local=local or _select(head, conjuncts, dialect),
            )
        )
    placeholders = dialect == "postgres" and any(
        conjunct.find(exp.Placeholder) for table in tables for conjunct in table.filters
    )
    return Gather(
        tuple(tables),
        analyze=len(analysis.refs) > 1,
        positional=analysis.parsed.positional,
        placeholders=placeholders,
    )


def _select(head: str, conjuncts: Sequence[exp.Expr], dialect: str) -> str:
    if not conjuncts:
        return head
    return f"{head} WHERE {' AND '.join(c.sql(dialect) for c in conjuncts)}"


# The Python types whose value a literal states exactly as psycopg binds it: an
# untyped literal where psycopg sends no type (str) or one the literal takes
# (int, Decimal: numeric), a typed literal otherwise. Not lists, dicts, JSON.
_LITERAL_TYPES = (
    bool, int, Decimal, str, bytes, dt.date, dt.datetime, dt.time, dt.timedelta, uuid.UUID,
)  # fmt: skip


def _literal(value: object) -> str | None:
    """``value`` as the SQL literal of what psycopg would bind, or None when it cannot say.

    Parenthesized, so that no neighbour changes how it reads (``- -3`` would
    start a comment).

    >>> _literal(-3), _literal(0.1), _literal("o'k"), _literal([1, 2])
    ('(-3)', "('0.1'::float8)", "('o''k')", None)
    """
    if value is None:
        return "(NULL)"
    if type(value) is float:  # psycopg binds float8: so does the literal
        text = "NaN" if math.isnan(value) else repr(value).replace("inf", "Infinity")
        return f"('{text}'::float8)"
    if not isinstance(value, _LITERAL_TYPES):
        return None
    from psycopg import sql  # (PostgreSQL shards only: psycopg is there)

    try:
        literal = sql.Literal(value).as_string(None)
    except Exception:  # (a NUL in a string, a value psycopg cannot dump)
        return None
    return f"({literal.strip()})"


def bind_gather(gather: Gather, params: object) -> Gather:
    """``gather`` with its pushdowns' placeholders replaced by ``params``' values.

    A ``COPY (query) TO STDOUT`` takes no parameters, so each value is written
    in as the literal of what psycopg would bind (:func:`_literal`): the
    conjunct then keeps the rows the statement's own conjunct keeps. A
    conjunct with a value that has no such literal (a list, a dict) is not
    pushed down: its rows move, and the statement filters them.
    """
    if not gather.placeholders:
        return gather
    named = positional_as_named(params, gather.positional)
    values = named if isinstance(named, Mapping) else {}
    tables = []
    for table in gather.tables:
        kept = []
        for conjunct in table.filters:
            bound = conjunct.copy()
            for node in list(bound.find_all(exp.Placeholder)):
                literal = _literal(values[node.name]) if node.name in values else None
                if literal is None:
                    break
                node.replace(exp.var(literal))  # written as it is
            else:
                kept.append(bound)
        tables.append(
            replace(
                table,
                select=_select(table.head, kept, "postgres"),
                filters=tuple(kept),
                pushed=bool(kept),
            )
        )
    return replace(gather, tables=tuple(tables), placeholders=False)
