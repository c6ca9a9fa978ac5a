"""The declared tables' columns, as the shards define them.

The engine reads each declared table's columns once from the first shard
(the *catalog*). The planner uses them to tell an input column from an
output name, to expand ``*``, and on SQLite shards to merge as SQLite
computes: a column's declared type gives its *affinity* (how SQLite
converts values it compares) and its ``COLLATE`` clause the collation its
comparisons, GROUP BY, DISTINCT, ORDER BY, min() and max() use.

SQLite does not report a column's collation through ``pragma_table_info``,
so the columns query also returns the table's ``CREATE TABLE`` text, read
here with sqlglot.

>>> cols = sqlite_columns([("id", "INTEGER", None), ("name", "TEXT", None)],
...                       "CREATE TABLE t (id INTEGER, name TEXT COLLATE NOCASE)")
>>> [(c.name, c.type, c.collation) for c in cols]
[('id', 'INTEGER', 'binary'), ('name', 'TEXT', 'nocase')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ColumnInfo", "Columns", "implicit_columns", "sqlite_columns", "sqlite_columns_query"]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a declared table.

    Attributes:
        name: the name as the table declares it (SQLite names result columns so).
        type: the declared type as written ("" when none).
        collation: the declared collation, lower case (SQLite; "binary" by default).
    """

    name: str
    type: str = ""
    collation: str = "binary"


Columns = dict[str, tuple[ColumnInfo, ...]]
"""The columns of each declared table (by its configured name), in their order."""


def sqlite_columns_query(table: str) -> tuple[str, tuple[Any, ...]]:
    """The query giving a SQLite table's columns: name, declared type, CREATE TABLE text."""
    schema, _, name = table.rpartition(".")
    master = f'"{schema}".sqlite_master' if schema else "sqlite_master"
    info = "pragma_table_info(?, ?)" if schema else "pragma_table_info(?)"
    sql = (
        f"SELECT name, type, (SELECT sql FROM {master} WHERE type = 'table' "
        f"AND name = ? COLLATE NOCASE) FROM {info} ORDER BY cid"
    )
    return sql, (name, name, schema) if schema else (name, name)


def _collations(create_sql: str) -> dict[str, str]:
    try:
        tree = sqlglot.parse_one(create_sql, read="sqlite")
    except (ParseError, TokenError):
        return {}
    found = {}
    for column in tree.find_all(exp.ColumnDef):
        for constraint in column.args.get("constraints") or []:
            kind = constraint.args.get("kind")
            if isinstance(kind, exp.CollateColumnConstraint):
                name = kind.this.name if isinstance(kind.this, exp.Expr) else str(kind.this)
                found[column.name.lower()] = name.lower()
    return found


def sqlite_columns(
    rows: Sequence[Sequence[Any]], create_sql: str | None = None
) -> tuple[ColumnInfo, ...]:
    """The columns from the rows of :func:`sqlite_columns_query`."""
    if create_sql is None and rows:
        create_sql = rows[0][2] if len(rows[0]) > 2 else None
    collations = _collations(create_sql) if create_sql else {}
    return tuple(
        ColumnInfo(str(row[0]), str(row[1] or ""), collations.get(str(row[0]).lower(), "binary"))
        for row in rows
    )


def implicit_columns(insert: exp.Expr, columns: Sequence[ColumnInfo], *, fold: bool) -> list[str]:
    """The columns an INSERT without a column list fills: the table's first ones, in order.

    As the database reads ``INSERT INTO t VALUES (...)``: the n values of a row
    go to the table's first n columns, the others take their defaults.
    ``fold`` lowers the names (SQLite's ignore case).

    >>> insert = sqlglot.parse_one("INSERT INTO t VALUES (1, 'a')")
    >>> implicit_columns(insert, [ColumnInfo("ID"), ColumnInfo("v"), ColumnInfo("w")], fold=True)
    ['id', 'v']
    """
    values = insert.expression
    first = values.expressions[0] if isinstance(values, exp.Values) and values.expressions else None
    width = len(first.expressions) if isinstance(first, exp.Tuple) else len(columns)
    return [c.name.lower() if fold else c.name for c in columns[:width]]
