"""``from_connections``: shardq over PEP 249 connections the user already has.

The SQL dialect follows from the module that defines the connections' class,
so sqlite3 connections need no ``dialect=``:

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:")
>>> detect_dialect([conn])
'sqlite'
>>> conn.close()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shardq.config import Config, load_config
from shardq.dbapi import Connection, connection_from_engine
from shardq.engine import DEFAULT_FETCH_SIZE, Engine
from shardq.errors import ConfigError
from shardq.execute.drivers.pep249 import DRIVER_DIALECTS, adapter_pool, driver_of
from shardq.rows import RowFactory, tuple_row

__all__ = ["adapter_engine", "detect_dialect", "from_connections"]


def detect_dialect(connections: Iterable[Any]) -> str:
    """The SQL dialect of ``connections``, from the driver module their class comes from.

    Raises:
        ConfigError: a connection's driver is not one shardq knows (the
            message asks for ``dialect=``), or the connections come from
            drivers of different dialects.
    """
    found: dict[str, str] = {}  # dialect -> the driver that gave it
    for conn in connections:
        driver = driver_of(conn)
        if driver is None:
            kind = type(conn)
            raise ConfigError(
                f"cannot tell the SQL dialect of a {kind.__module__}.{kind.__qualname__} "
                f"connection (known drivers: {', '.join(sorted(DRIVER_DIALECTS))}); pass "
                "dialect='postgres' (%s placeholders) or dialect='sqlite' (? placeholders)",
                field="dialect",
            )
        found.setdefault(DRIVER_DIALECTS[driver], driver)
    if len(found) > 1:
        drivers = " and ".join(f"{d} ({found[d]})" for d in sorted(found))
        raise ConfigError(
            f"the connections speak different dialects: {drivers}; every shard must speak one",
            field="dialect",
        )
    if not found:
        raise ConfigError("expected at least one connection", field="connections")
    return next(iter(found))


def adapter_engine(
    connections: Sequence[Any] | Mapping[str, Any],
    *,
    tables: Mapping[str, Mapping[str, Any]],
    dialect: str | None = None,
    fetch_size: int = DEFAULT_FETCH_SIZE,
) -> Engine:
    """Build an engine whose shards are the given DB-API connections.

    ``dialect`` defaults to the connections' own (:func:`detect_dialect`).
    """
    named = (
        dict(connections)
        if isinstance(connections, Mapping)
        else {f"shard{i}": conn for i, conn in enumerate(connections)}
    )
    if not named:
        raise ConfigError("expected at least one connection", field="connections")
    if dialect is None:
        dialect = detect_dialect(named.values())
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
    dialect: str | None = None,
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
            driver: ``"postgres"`` (``%s``) or ``"sqlite"`` (``?``). By
            default it follows from the connections' driver: sqlite3 is
            ``"sqlite"``, psycopg2 and psycopg are ``"postgres"``; for any
            other driver pass it, or a :class:`~shardq.errors.ConfigError`
            asks for it.

    Each connection is used by one thread at a time; shardq commits after
    each statement (so no transaction is left open) and does not close them.
    A sqlite3 connection must be opened with ``check_same_thread=False``.
    """
    engine = adapter_engine(connections, tables=tables, dialect=dialect, fetch_size=fetch_size)
    return connection_from_engine(engine, row_factory=row_factory, timeout=timeout)
