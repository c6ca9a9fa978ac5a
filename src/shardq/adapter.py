"""``from_connections``: shardq over PEP 249 connections the user already has."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shardq.config import Config, load_config
from shardq.dbapi import Connection, connection_from_engine
from shardq.engine import DEFAULT_FETCH_SIZE, Engine
from shardq.errors import ConfigError
from shardq.execute.drivers.pep249 import adapter_pool
from shardq.rows import RowFactory, tuple_row

__all__ = ["adapter_engine", "from_connections"]


def adapter_engine(
    connections: Sequence[Any] | Mapping[str, Any],
    *,
    tables: Mapping[str, Mapping[str, Any]],
    dialect: str = "postgres",
    fetch_size: int = DEFAULT_FETCH_SIZE,
) -> Engine:
    """Build an engine whose shards are the given DB-API connections."""
    named = (
        dict(connections)
        if isinstance(connections, Mapping)
        else {f"shard{i}": conn for i, conn in enumerate(connections)}
    )
    if not named:
        raise ConfigError("expected at least one connection", field="connections")
    # The DSN of an adapter shard is only a label: shardq never opens these connections.
    raw = {
        "dialect": dialect,
        "driver": "pep249",
        "shards": [
            {"name": name, "dsn": "postgresql://adapter" if dialect == "postgres" else name}
            for name in named
        ],
        "tables": dict(tables),
    }
    config: Config = load_config(raw)
    pools = {name: adapter_pool(name, conn, dialect) for name, conn in named.items()}
    return Engine(config, pools, fetch_size=fetch_size)


def from_connections(
    connections: Sequence[Any] | Mapping[str, Any],
    *,
    tables: Mapping[str, Mapping[str, Any]],
    dialect: str = "postgres",
    row_factory: RowFactory = tuple_row,
    timeout: float | None = None,
    fetch_size: int = DEFAULT_FETCH_SIZE,
) -> Connection:
    """Treat existing PEP 249 connections (psycopg2, sqlite3, ...) as shards.

    Args:
        connections: one connection per shard, as a list (shards are named
            ``shard0``, ``shard1``...) or a dict of name to connection. Their
            order fixes the placement of distributed rows.
        tables: the ``[tables]`` section of a configuration, as a dict.
        dialect: the SQL dialect and placeholder style of the connections'
            driver: ``"postgres"`` (``%s``, psycopg2) or ``"sqlite"`` (``?``).

    Each connection is used by one thread at a time; shardq commits after
    each statement (so no transaction is left open) and does not close them.
    A sqlite3 connection must be opened with ``check_same_thread=False``.
    """
    engine = adapter_engine(connections, tables=tables, dialect=dialect, fetch_size=fetch_size)
    return connection_from_engine(engine, row_factory=row_factory, timeout=timeout)
