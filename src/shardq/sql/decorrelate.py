"""Decorrelation: a subquery correlated on another column than the shard key, made a CTE.

A scalar aggregate subquery, or an ``EXISTS``, over distributed tables that
refers to the outer query by equalities of plain columns (TPC-H Q17:
``l_quantity < (SELECT 0.2 * avg(l_quantity) FROM lineitem WHERE l_partkey
= p_partkey)``) is neither tied to the outer row's shard nor independent of
it. Grouped by the columns it is correlated on, it becomes independent: a
CTE the planner runs first as a distributed GROUP BY (whose merge is exact:
``avg`` from sums and counts), whose groups then replace it, shipped back as
parameters (:mod:`shardq.sql.subplans`). Where the outer columns are all of
one FROM item, the groups are LEFT JOINed right after it (the database
hashes the join); otherwise each aggregate is looked up by a scalar
subquery over the groups:

>>> from shardq.config import load_config
>>> from shardq.sql.analyze import analyze
>>> from shardq.sql.catalog import ColumnInfo
>>> from shardq.sql.parse import parse
>>> config = load_config({"dialect": "postgres", "shards": [
...     {"name": "s1", "dsn": "postgresql:///a"}, {"name": "s2", "dsn": "postgresql:///b"}],
...     "tables": {"lineitem": {"shard_key": "l_orderkey"}, "part": {"reference": True}}})
>>> columns = {
...     "lineitem": (ColumnInfo("l_orderkey", "integer"), ColumnInfo("l_partkey", "integer"),
...                  ColumnInfo("l_quantity", "numeric(15,2)")),
...     "part": (ColumnInfo("p_partkey", "integer"), ColumnInfo("p_brand", "text"))}
>>> sql = ("SELECT count(*) FROM lineitem, part WHERE p_partkey = l_partkey AND l_quantity"
...        " < (SELECT 0.2 * avg(l_quantity) FROM lineitem WHERE l_partkey = p_partkey)")
>>> print(decorrelate(analyze(parse(sql, "postgres"), config), columns).sql)
WITH _shardq_d0 AS MATERIALIZED (SELECT l_partkey AS _shardq_k0, AVG(l_quantity) AS \
_shardq_a0 FROM lineitem GROUP BY l_partkey) SELECT COUNT(*) FROM lineitem, part LEFT JOIN \
_shardq_d0 ON _shardq_d0._shardq_k0 = p_partkey WHERE p_partkey = l_partkey AND l_quantity \
< (0.2 * _shardq_d0._shardq_a0)

Why it is the same answer: a group holds exactly the rows the subquery
would aggregate for an outer row with its key values, matched with the
same ``=`` the subquery used, between the same types (a group's key is
shipped back with its column's type), and keys are unique, so a row finds
one group or none; each aggregate is then the same value of the same type.
An outer row that finds no group (no row has its values, or one is NULL)
gets NULL, which is what ``sum``/``avg``/``min``/``max`` of no row is;
``count`` becomes ``coalesce(..., 0)``. The expression around the
aggregates (``0.2 * ...``) is evaluated in the outer query on those same
values, for the same rows. ``EXISTS`` becomes ``EXISTS`` over the groups.
What is not provably the same is left alone (and gathered to one shard;
the checks are :mod:`shardq.sql.correlation`'s):

* the subquery has GROUP BY, HAVING, DISTINCT, ORDER BY, LIMIT, a window, a
  WITH, a nested subquery, an outer join, or reads anything but declared
  tables (nor a table a CTE's name hides);
* it refers to the outer query other than by ``own_column = outer_column``
  conjuncts of its WHERE, or a correlation column is not an integer,
  numeric or date column (GROUP BY and ``=`` agree for those; not for text
  under a nondeterministic collation, nor for floats' -0 and NaN);
* its select list is other than one expression over ``count``, ``sum``,
  ``avg``, ``min``, ``max`` (no DISTINCT or FILTER; ``sum`` and ``avg`` of
  integer and numeric columns only: a float sum depends on the order of its
  terms; ``min`` and ``max`` of numbers, dates and times: text shipped back
  loses its column's collation) with no column outside them;
* a conjunct it keeps could fail on a row the subquery would never have
  read (the groups cover every row): only comparisons of columns with
  constants, as a gather's pushdown (:func:`shardq.sql.gather.safe`); nor
  integer arithmetic in a sum (it could overflow there);
* it is not in a WHERE clause (a select-list subquery names its column);
* the expression around its aggregates, or the WHERE conjunct that holds it,
  could fail (a division, a function but ``coalesce`` and ``length``, a cast
  but to text): the database evaluates a subquery's conjunct after the
  cheaper ones, the decorrelated conjunct maybe before them, on rows they
  would have dropped.

The LEFT JOIN is not used after a ``SELECT *`` (its columns would show) or
with RIGHT, FULL or NATURAL joins in the SELECT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.analyze import normalize
from shardq.sql.correlation import (
    Refused,
    Scope,
    aggregates,
    check_body,
    check_safe,
    harmless,
    split_where,
    where_conjunct,
)
from shardq.sql.regenerate import regenerate

if TYPE_CHECKING:
    from shardq.sql.analyze import Analysis
    from shardq.sql.catalog import Columns

__all__ = ["MARK", "Decorrelated", "decorrelate", "decorrelated_columns", "decorrelated_ctes"]

#: The prefix of the CTEs and columns decorrelation adds.
MARK = "_shardq_d"
_KEY = "_shardq_k"
_VALUE = "_shardq_a"


@dataclass(frozen=True, slots=True)
class Decorrelated:
    """The statement with its correlated subqueries decorrelated.

    Attributes:
        sql: the new statement (named placeholders: bind the parameters as
            :func:`shardq.sql.rewrite.positional_as_named` gives them).
        subqueries: each decorrelated subquery and what it is correlated on,
            in words (for EXPLAIN).
        ctes: the names of the CTEs added, to run first.
    """

    sql: str
    subqueries: tuple[str, ...]
    ctes: tuple[str, ...]


def _grouped(
    body: exp.Select, keys: list[exp.Column], values: list[exp.Expr], local: list[exp.Expr]
) -> exp.Select:
    """The CTE: ``body``'s rows that pass ``local``, grouped by ``keys``."""
    items = [k.copy().as_(f"{_KEY}{i}") for i, k in enumerate(keys)]
    items += [v.copy().as_(f"{_VALUE}{j}") for j, v in enumerate(values)]
    grouped = exp.Select(expressions=items)
    grouped.set("from_", body.args["from_"].copy())
    if body.args.get("joins"):
        grouped.set("joins", [j.copy() for j in body.args["joins"]])
    if local:
        grouped = grouped.where(exp.and_(*(c.copy() for c in local)), copy=False)
    if keys:
        grouped = grouped.group_by(*(k.copy() for k in keys), copy=False)
    return grouped


def _lookup(name: str, pairs: list[tuple[int, exp.Column]], value: str | None) -> exp.Select:
    """``SELECT name.value FROM name WHERE name.k_i = outer_i AND ...`` (1 for EXISTS)."""
    terms = [
        exp.EQ(this=exp.column(f"{_KEY}{i}", table=name), expression=theirs.copy())
        for i, theirs in pairs
    ]
    item: exp.Expr = exp.column(value, table=name) if value else exp.Literal.number(1)
    return (
        exp.Select(expressions=[item]).from_(name, copy=False).where(exp.and_(*terms), copy=False)
    )


def _joined_source(
    subquery: exp.Expr, outer: list[exp.Column], analysis: Analysis, columns: Columns
) -> exp.Expr | None:
    """The FROM item of the SELECT around ``subquery`` that all ``outer`` columns are of.

    None when there is none, when it cannot be told for sure, or when a LEFT
    JOIN after it could change the SELECT's rows or columns (``*``, a RIGHT,
    FULL or NATURAL join).
    """
    select = subquery.parent_select
    if not isinstance(select, exp.Select) or select.args.get("from_") is None:
        return None
    if any(isinstance(item, exp.Star) for item in select.expressions):
        return None
    joins = select.args.get("joins") or []
    if any(str(j.side or "").upper() in ("RIGHT", "FULL") or j.args.get("method") for j in joins):
        return None
    refs = {id(r.node): r for r in analysis.refs}
    sources: list[exp.Expr] = [select.args["from_"].this, *(j.this for j in joins)]
    owners = set()
    for column in outer:
        if column.table:
            qualifier = normalize(column.args["table"], "postgres")
            found = [
                s for s in sources if (refs[id(s)].alias if id(s) in refs else s.alias_or_name)
                == qualifier
            ]  # fmt: skip
        else:
            name = normalize(column.this, "postgres")
            if any(id(s) not in refs or refs[id(s)].renames_columns for s in sources):
                return None
            found = [
                s for s in sources
                if any(c.name == name for c in columns.get(refs[id(s)].table.name, ()))
            ]  # fmt: skip
        if len(found) != 1:
            return None
        owners.add(id(found[0]))
    if len(owners) != 1:
        return None
    return next(s for s in sources if id(s) in owners)


def _decorrelate_one(
    subquery: exp.Expr,
    body: exp.Select,
    name: str,
    analysis: Analysis,
    columns: Columns,
    joined: bool,
) -> tuple[exp.Select, exp.Expr, str, tuple[exp.Expr, exp.Join] | None]:
    """The CTE for one subquery, what replaces it, and how (in words).

    With ``joined``, a scalar subquery whose outer columns are all of one FROM
    item of the SELECT around it becomes a LEFT JOIN of the groups to that item
    (the database can hash it), returned last: the item and the join.
    """
    check_body(body)
    scope = Scope(body, analysis, columns)
    for join in body.args.get("joins") or []:
        on = join.args.get("on")
        if on is not None:
            if scope.outer(on):
                raise Refused("a join condition refers to the outer query")
            check_safe(on, "join condition")
    pairs, local = split_where(body, scope)
    keys: list[exp.Column] = []
    matched: list[tuple[int, exp.Column]] = []  # (the key's position, the outer column)
    for mine, theirs in pairs:
        owner, column = scope.owner(mine), normalize(mine.this, "postgres")
        same = [
            i for i, k in enumerate(keys)
            if scope.owner(k) is owner and normalize(k.this, "postgres") == column
        ]  # fmt: skip
        if not same:
            keys.append(mine)
        matched.append((same[0] if same else len(keys) - 1, theirs))
    on_text = " and ".join(f"{m.sql('postgres')} = {t.sql('postgres')}" for m, t in pairs)
    if isinstance(subquery, exp.Exists):
        for item in body.expressions:
            if not isinstance(item, exp.Star | exp.Literal | exp.Column) or (
                isinstance(item, exp.Column) and scope.outer(item)
            ):
                raise Refused("its select list has more than columns and constants")
        cte = _grouped(body, keys, [], local)
        replacement: exp.Expr = exp.Exists(this=_lookup(name, matched, None))
        return cte, replacement, f"EXISTS correlated on {on_text}", None
    if len(body.expressions) != 1:
        raise Refused("it selects more than one column")
    item = body.expressions[0].unalias()
    found = aggregates(item, scope)
    cte = _grouped(body, keys, found, local)
    source = _joined_source(subquery, [t for _, t in pairs], analysis, columns) if joined else None
    join = None
    if source is not None:
        on = exp.and_(
            *(exp.EQ(this=exp.column(f"{_KEY}{i}", table=name), expression=t.copy())
              for i, t in matched)
        )  # fmt: skip
        join = exp.Join(this=exp.to_table(name), side="LEFT", on=on)
    around = item.copy()
    copies = {id(a): b for a, b in zip(item.walk(), around.walk(), strict=True)}
    for j, aggregate in enumerate(found):
        value: exp.Expr = (
            exp.column(f"{_VALUE}{j}", table=name)
            if join is not None
            else exp.Subquery(this=_lookup(name, matched, f"{_VALUE}{j}"))
        )
        if isinstance(aggregate, exp.Count):  # of no row: 0, not NULL
            value = exp.Coalesce(this=value, expressions=[exp.Literal.number(0)])
        replaced = copies[id(aggregate)]
        if replaced is around:
            around = value
        else:
            replaced.replace(value)
    how = f"a scalar subquery correlated on {on_text}"
    if source is None or join is None:
        return cte, exp.Paren(this=around), how + ", its groups looked up", None
    return cte, exp.Paren(this=around), how + ", its groups LEFT JOINed", (source, join)


def decorrelate(analysis: Analysis, columns: Columns, *, joined: bool = True) -> Decorrelated:
    """Decorrelate ``analysis``'s correlated subqueries (see the module docstring).

    ``joined``: LEFT JOIN the groups where the subquery's outer columns are
    of one FROM item (otherwise each aggregate is a lookup, a scalar subquery
    over the groups).

    Raises:
        UnsupportedQueryError: no subquery is decorrelated; the reason says
            why the first one met is not.
    """
    statement = analysis.parsed.expression
    dialect = analysis.parsed.dialect
    if dialect != "postgres" or not isinstance(statement, exp.Select):
        raise UnsupportedQueryError("decorrelation", "PostgreSQL SELECT statements only")
    with_ = statement.args.get("with_")
    if with_ is not None and with_.args.get("recursive"):
        raise UnsupportedQueryError("decorrelation", "the statement has WITH RECURSIVE")
    if any(select.args.get("locks") for select in statement.find_all(exp.Select)):
        # (FOR UPDATE cannot lock the groups, nor the nullable side of their join)
        raise UnsupportedQueryError("decorrelation", "the statement locks rows (FOR UPDATE)")
    tree = statement.copy()
    copies = {id(a): b for a, b in zip(statement.walk(), tree.walk(), strict=True)}
    ctes: list[exp.CTE] = []
    # (a statement planned again after its groups came back has such CTEs already)
    taken = sum(1 for c in statement.find_all(exp.CTE) if c.alias.startswith(MARK))
    done: list[str] = []
    refusals: list[str] = []
    for body in list(statement.find_all(exp.Select)):
        if body is statement:
            continue
        holder = body.parent
        if isinstance(holder, exp.Exists):
            subquery: exp.Expr = holder
        elif (
            isinstance(holder, exp.Subquery)
            and not isinstance(
                holder.parent, exp.From | exp.Join | exp.In | exp.Any | exp.All | exp.CTE
            )
            and not isinstance(holder.parent, exp.SetOperation)
        ):
            subquery = holder
        else:
            continue
        name = f"{MARK}{len(ctes) + taken}"
        try:
            term = where_conjunct(subquery)
            if term is None:
                raise Refused("it is not in a WHERE clause")
            if not harmless(term, [subquery]):
                raise Refused(
                    f"the condition {term.sql('postgres')} could fail (a division, a function) "
                    "on rows another condition drops first"
                )
            cte_body, replacement, how, attach = _decorrelate_one(
                subquery, body, name, analysis, columns, joined
            )
        except Refused as exc:
            if _reads_distributed(body, analysis):
                refusals.append(f"{body.sql('postgres')}: {exc}")
            continue
        # MATERIALIZED: the groups are unnested once, not once per outer row.
        alias = exp.TableAlias(this=exp.to_identifier(name))
        ctes.append(exp.CTE(this=cte_body, alias=alias, materialized=True))
        copies[id(subquery)].replace(replacement)
        if attach is not None:
            _attach(copies[id(attach[0])], attach[1])
        done.append(f"{how} ({name})")
    if not ctes:
        raise UnsupportedQueryError(
            "decorrelation", refusals[0] if refusals else "no correlated subquery to decorrelate"
        )
    existing = tree.args.get("with_")
    if existing is None:
        tree.set("with_", exp.With(expressions=ctes))
    else:
        existing.set("expressions", [*ctes, *existing.expressions])
    sql = regenerate(
        tree,
        analysis.parsed.source,
        dialect,
        frozenset({"with", "materialized", "coalesce", "exists", "left", "join", "on"}),
    )
    return Decorrelated(sql, tuple(done), tuple(c.alias for c in ctes))


def _attach(source: exp.Expr, join: exp.Join) -> None:
    """Put ``join`` right after the FROM item ``source``: its ON reads that item's columns.

    ``a, b LEFT JOIN d ON d.k = b.x`` joins ``d`` to ``b`` alone (a join binds
    tighter than a comma), so it goes after ``b``, before any later item.
    """
    select = source.parent_select
    assert isinstance(select, exp.Select)
    joins = list(select.args.get("joins") or [])
    holder = source.parent
    at = 0 if isinstance(holder, exp.From) else next(
        i + 1 for i, j in enumerate(joins) if j is holder
    )  # fmt: skip
    joins.insert(at, join)
    select.set("joins", joins)


def _reads_distributed(body: exp.Select, analysis: Analysis) -> bool:
    return any(ref.table.distributed and ref.node.parent_select is body for ref in analysis.refs)


def decorrelated_ctes(statement: exp.Expr, names: tuple[str, ...]) -> list[exp.Select]:
    """The bodies of the CTEs ``names`` :func:`decorrelate` added to ``statement``, in order."""
    with_ = statement.args.get("with_")
    return [
        cte.this
        for cte in (with_.expressions if isinstance(with_, exp.With) else ())
        if cte.alias in names and isinstance(cte.this, exp.Select)
    ]


def decorrelated_columns(sql: str) -> tuple[str, ...]:
    """The column names of a CTE body :func:`decorrelate` wrote, from its SQL."""
    body = sqlglot.parse_one(sql, read="postgres")
    return tuple(item.alias_or_name for item in body.expressions)
