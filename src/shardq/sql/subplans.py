"""Recursive planning: subqueries run first, their results substituted.

A subquery over distributed tables that cannot run on the shards as part of
its query (a CTE grouped by a non-key column, an uncorrelated ``IN
(SELECT ...)`` under a query of reference tables, a scalar subquery) is run
first as a distributed query of its own, as Citus's recursive planning does.
Its rows then replace it, shipped as bound parameters: one array per column,
read back with ``unnest`` (PostgreSQL), or as a ``VALUES`` list of
parameters (SQLite, where only results whose columns have no affinity are
shipped: rows shipped back lose the column affinity SQLite compares by)::

    WITH revenue AS (SELECT * FROM unnest(%(_shardq_m0_0)s::int4[],
                                          %(_shardq_m0_1)s::numeric[])
                     AS _shardq_m0("supplier_no", "total_revenue"))
    SELECT ... FROM supplier, revenue WHERE ...

The statement is planned again with the results in place: usually it now
reads reference tables only and runs whole on one shard, with the
database's own semantics for everything it does with them. Whatever the
size of a result, the statement's text stays the same size (the rows travel
as parameters) and there is nothing to clean up afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.analyze import normalize
from shardq.sql.regenerate import regenerate
from shardq.sql.rewrite import positional_as_named
from shardq.sql.rewrite.names import named_items

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Deferred", "Result", "Subplan", "defer"]

_MARK = "_shardq_m"
# The PostgreSQL types a result column can be shipped as (OID -> type name).
# Not interval: psycopg reads '1 mon' as 30 days, which would not come back.
_PG_TYPES = {
    16: "bool", 17: "bytea", 18: '"char"', 19: "name", 20: "int8", 21: "int2", 23: "int4",
    25: "text", 700: "float4", 701: "float8", 1042: "bpchar", 1043: "varchar", 1082: "date",
    1083: "time", 1114: "timestamp", 1184: "timestamptz", 1266: "timetz",
    1700: "numeric", 2950: "uuid",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Subplan:
    """One subquery to run first: its SQL, standalone.

    ``table`` tells whether the statement reads its rows as a table (a
    derived table or a CTE), rather than as a value or a list of values.
    ``max_rows``: the most rows its result may have, or None (a decorrelated
    subquery's groups: over it, the statement is gathered instead).
    """

    sql: str
    table: bool = False
    max_rows: int | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """What a subplan returned: column names, type codes and rows."""

    names: tuple[str, ...]
    types: tuple[Any, ...]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Deferred:
    """A statement whose subqueries run first (see the module docstring)."""

    template: exp.Expr
    subplans: tuple[Subplan, ...]
    dialect: str
    positional: int
    source: str = ""  # the text the statement was parsed from

    def substitute(self, results: Sequence[Result], params: object) -> tuple[str, object]:
        """The statement with the results in place, and its parameters."""
        statement = self.template.copy()
        named = positional_as_named(params, self.positional)
        bound: dict[str, Any] = dict(named) if isinstance(named, Mapping) else {}
        marks = {
            node.name: node
            for node in statement.find_all(exp.Placeholder)
            if node.name.startswith(_MARK)
        }
        for i, (_, result) in enumerate(zip(self.subplans, results, strict=True)):
            name = f"{_MARK}{i}"
            select, values = self._select(name, result)
            marks[name].replace(select)
            bound.update(values)
        # The words of the VALUES lists shardq writes on SQLite (column1, ...).
        ours = frozenset({"values", "null", "where", *(f"column{j + 1}" for r in results
                                                       for j in range(len(r.names)))})  # fmt: skip
        return regenerate(statement, self.source, self.dialect, ours), bound

    def _select(self, name: str, result: Result) -> tuple[exp.Expr, dict[str, Any]]:
        width = len(result.types)
        names = list(result.names)
        # The unnest alias names positions; the select list names the columns
        # as the subquery did (duplicates allowed there, as in the subquery).
        positions = ", ".join(f"c{j + 1}" for j in range(width))
        outputs = ", ".join(
            f'c{j + 1} AS "' + n.replace('"', '""') + '"' for j, n in enumerate(names)
        )
        values: dict[str, Any] = {}
        if self.dialect == "sqlite":
            return self._sqlite_select(name, result)
        arrays = []
        for j, type_code in enumerate(result.types):
            type_name = _PG_TYPES.get(type_code)
            if type_name is None:
                raise UnsupportedQueryError(
                    f"a subquery result column of type OID {type_code}",
                    "shardq ships the results of subqueries it runs first as arrays of "
                    "built-in scalar types only",
                )
            values[f"{name}_{j}"] = [row[j] for row in result.rows]
            arrays.append(f"%({name}_{j})s::{type_name}[]")
        sql = f"SELECT {outputs} FROM unnest({', '.join(arrays)}) AS {name}({positions})"
        return sqlglot.parse_one(sql, read=self.dialect), values

    def _sqlite_select(self, name: str, result: Result) -> tuple[exp.Expr, dict[str, Any]]:
        """The rows as a VALUES list of parameters (SQLite has no arrays).

        The planner runs first on SQLite only subqueries whose columns have no
        affinity and the BINARY collation, as VALUES columns and parameters
        do: the rows compare in their place exactly as they did.
        """
        width = len(result.names)
        count = width * len(result.rows)
        if count > _SQLITE_MAX_PARAMETERS:
            raise UnsupportedQueryError(
                f"a subquery result of {len(result.rows)} rows run first on SQLite shards",
                f"shardq ships such rows back as parameters, and SQLite takes at most "
                f"{_SQLITE_MAX_PARAMETERS} in one statement; pin the query to one shard",
            )
        values: dict[str, Any] = {}
        outputs = ", ".join(
            f'column{j + 1} AS "' + n.replace('"', '""') + '"' for j, n in enumerate(result.names)
        )
        if not result.rows:
            nulls = ", ".join('NULL AS "' + n.replace('"', '""') + '"' for n in result.names)
            return sqlglot.parse_one(f"SELECT {nulls} WHERE 0", read="sqlite"), values
        tuples = []
        for i, row in enumerate(result.rows):
            marks = []
            for j in range(width):
                key = f"{name}_{i}_{j}"
                values[key] = row[j]
                marks.append(f":{key}")
            tuples.append(f"({', '.join(marks)})")
        sql = f"SELECT {outputs} FROM (VALUES {', '.join(tuples)})"
        return sqlglot.parse_one(sql, read="sqlite"), values


#: SQLite's default SQLITE_MAX_VARIABLE_NUMBER (3.32 and later).
_SQLITE_MAX_PARAMETERS = 32766


def defer(
    statement: exp.Expr,
    first: Sequence[exp.Select],
    dialect: str,
    positional: int,
    source: str,
    text: str = "",
) -> Deferred:
    """Build the :class:`Deferred` of ``statement`` whose subqueries ``first`` run first.

    ``source`` is the text the statement was parsed from, ``text`` the text as
    given (SQLite names result columns by it).
    """
    ctes = _cte_names(statement, dialect)
    # The template is a copy in which each subquery is replaced by a marker.
    template = statement.copy()
    copies = {id(a): b for a, b in zip(statement.walk(), template.walk(), strict=True)}
    subplans = []
    for i, body in enumerate(first):
        used = {
            normalize(t.this, dialect)
            for t in body.find_all(exp.Table)
            if isinstance(t.this, exp.Identifier) and not t.db
        }
        if used & ctes and body.args.get("with") is None and body.args.get("with_") is None:
            raise UnsupportedQueryError(
                "a subquery that reads a CTE of its statement, run on its own",
                "shardq runs such a subquery first and on its own, where the CTE is not "
                "defined; write the CTE's query into the subquery",
            )
        parent = body.parent
        table = isinstance(parent, exp.CTE) or (
            isinstance(parent, exp.Subquery) and isinstance(parent.parent, exp.From | exp.Join)
        )
        subplans.append(Subplan(regenerate(body, source, dialect), table))
        copies[id(body)].replace(exp.Placeholder(this=f"{_MARK}{i}"))
    if dialect == "sqlite" and isinstance(template, exp.Select) and text:
        # Written back by sqlglot, SQLite would name its columns by sqlglot's words.
        template = named_items(template, text)
    return Deferred(template, tuple(subplans), dialect, positional, source)


def _cte_names(statement: exp.Expr, dialect: str) -> set[str]:
    return {normalize(cte.args["alias"].this, dialect) for cte in statement.find_all(exp.CTE)}
