"""SQLite shards: the standard library's sqlite3, one worker thread per connection.

Connections run in autocommit mode (``isolation_level=None``), like the
PostgreSQL driver, and a cancelled statement is stopped with
``Connection.interrupt()``.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.request import pathname2url

from shardq.execute.drivers.threaded import ThreadedConnection, ThreadedPool
from shardq.sql.catalog import sqlite_columns_query

if TYPE_CHECKING:
    from shardq.config import Config, ShardConfig

__all__ = ["SQLitePool"]


def _open(path: str) -> sqlite3.Connection:
    # mode=rw: a missing shard file is a mistake to report, not a database to create.
    uri = path if path.startswith("file:") else f"file:{pathname2url(path)}?mode=rw"
    conn = sqlite3.connect(uri, isolation_level=None, uri=True, check_same_thread=True)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _interrupt(conn: Any) -> None:
    conn.interrupt()


def SQLitePool(config: Config, shard: ShardConfig) -> ThreadedPool:
    """Make the pool of one SQLite shard (the shard's ``dsn`` is the file's path)."""
    factory = partial(
        ThreadedConnection,
        shard.name,
        config.secrets,
        partial(_open, shard.dsn),
        interrupt=_interrupt,
        commit_after=False,
        owned=True,
    )
    return ThreadedPool(
        shard.name,
        factory,
        max_size=shard.pool_max_size,
        info_sql="SELECT 'SQLite ' || sqlite_version()",
        columns_query=sqlite_columns_query,
        # A SELECT not read to its end holds its file's shared lock, and a
        # write commits only once no other connection holds one (rollback
        # journal): it would wait out busy_timeout, then fail as "locked".
        readers_block_writers=True,
    )
