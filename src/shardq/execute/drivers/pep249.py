"""An adapter over PEP 249 connections the user already has.

``shardq.from_connections([conn1, conn2, ...], tables=...)`` treats each
connection as one shard (the classic ``ParallelConnection(connections)``).
Each connection is used by one worker thread at a time, and each shard's
result is read in full when the statement runs (as psycopg2's client-side
cursors do), so several cursors can share the one connection; use the native
drivers for results larger than memory. shardq does not
close connections it did not open. After each statement it commits (or, on
error, rolls back) so that no transaction is left open, and it stops a
cancelled statement with the connection's ``cancel()`` (psycopg2) or
``interrupt()`` (sqlite3) when the driver has one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from shardq.dsn import Secrets
from shardq.execute.drivers.threaded import ThreadedConnection, ThreadedPool
from shardq.execute.textorder import POSTGRES_COLLATION_SQL
from shardq.sql.catalog import sqlite_columns_query

__all__ = ["DRIVER_DIALECTS", "adapter_pool", "driver_of"]

#: The dialect of the connections of each PEP 249 driver shardq knows, by top-level module.
DRIVER_DIALECTS = {"sqlite3": "sqlite", "psycopg2": "postgres", "psycopg": "postgres"}

_INFO_SQL = {"postgres": "SELECT version()", "sqlite": "SELECT 'SQLite ' || sqlite_version()"}


def _interrupt_of(conn: Any) -> Any:
    for name in ("cancel", "interrupt"):
        method = getattr(type(conn), name, None)
        if callable(method):
            return lambda c, _name=name: getattr(c, _name)()
    return None


def driver_of(conn: object) -> str | None:
    """The known driver module defining ``conn``'s class or a base of it, or None.

    >>> import sqlite3
    >>> class Mine(sqlite3.Connection): ...
    >>> conn = Mine(":memory:")
    >>> driver_of(conn), driver_of(object())
    ('sqlite3', None)
    >>> conn.close()
    """
    for cls in type(conn).__mro__:
        module = cls.__module__.partition(".")[0]
        if module in DRIVER_DIALECTS:
            return module
    return None


def _columns_sql(dialect: str) -> Any:
    def build(table: str) -> tuple[str, tuple[Any, ...]]:
        schema, _, name = table.rpartition(".")
        if dialect == "sqlite":
            return sqlite_columns_query(table)
        return (
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = COALESCE(%s, current_schema()) "
            "ORDER BY ordinal_position",
            (name, schema or None),
        )

    return build


def adapter_pool(name: str, conn: Any, dialect: str) -> ThreadedPool:
    """Make a one-connection pool around the user's PEP 249 connection ``conn``."""
    # psycopg2 and psycopg say autocommit=True; sqlite3 says isolation_level=None
    # (psycopg2's isolation_level is None too, meaning "the server's default").
    autocommit = getattr(conn, "autocommit", None) is True or (
        driver_of(conn) == "sqlite3" and conn.isolation_level is None
    )
    factory = partial(
        ThreadedConnection,
        name,
        Secrets(),
        lambda: conn,
        interrupt=_interrupt_of(conn),
        commit_after=not autocommit,
        owned=False,
        # One connection per shard: a result still being read must not hold it,
        # or a second cursor would wait forever. psycopg2's default cursors
        # buffer whole results anyway.
        buffered=True,
    )
    return ThreadedPool(
        name,
        factory,
        max_size=1,
        info_sql=_INFO_SQL.get(dialect, "SELECT 1"),
        columns_query=_columns_sql(dialect),
        collation_sql=POSTGRES_COLLATION_SQL if dialect == "postgres" else None,
    )
