"""``shardq.from_connections``: the dialect follows from the connections' driver."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from shardq.adapter import detect_dialect
from tests.fixtures.shards import ITEMS, PG_DATABASE, TABLES

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.servers import PgCluster

EXPECTED = [(row[0],) for row in ITEMS if row[2] > 1900]


class MyConnection(sqlite3.Connection):
    """A user's own connection class (``sqlite3.connect(factory=...)``)."""


class Wrapper:
    """A connection of a driver shardq does not know (here, a thin proxy)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _sqlite(paths: list[Path], **options: Any) -> list[sqlite3.Connection]:
    return [
        sqlite3.connect(p, check_same_thread=False, isolation_level=None, **options) for p in paths
    ]


def _close(conns: list[Any]) -> None:
    for conn in conns:
        conn.close()


def test_sqlite3_connections_need_no_dialect(sqlite_dataset: list[Path]) -> None:
    for conns in (_sqlite(sqlite_dataset), _sqlite(sqlite_dataset, factory=MyConnection)):
        try:
            with shardq.from_connections(conns, tables=TABLES) as conn:
                assert conn.config.dialect == "sqlite"
                assert conn.paramstyle == "qmark"
                cur = conn.execute("SELECT id FROM items WHERE val > ? ORDER BY id", [1900])
                assert cur.fetchall() == EXPECTED
        finally:
            _close(conns)


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_postgres_driver_connections_need_no_dialect(
    pg_dataset: list[PgCluster], driver: str
) -> None:
    module: Any = __import__(driver)
    conns = [module.connect(c.dsn(PG_DATABASE)) for c in pg_dataset]
    try:
        assert detect_dialect(conns) == "postgres"
        with shardq.from_connections(conns, tables=TABLES) as conn:
            assert conn.paramstyle == "pyformat"
            cur = conn.execute("SELECT id FROM items WHERE val > %s ORDER BY id", [1900])
            assert cur.fetchall() == EXPECTED
    finally:
        _close(conns)


def test_an_unknown_driver_asks_for_the_dialect(sqlite_dataset: list[Path]) -> None:
    conns = _sqlite(sqlite_dataset)
    try:
        wrapped = [Wrapper(c) for c in conns]
        with pytest.raises(
            shardq.ConfigError, match=r"Wrapper connection.*dialect='sqlite'"
        ) as info:
            shardq.from_connections(wrapped, tables=TABLES)
        assert info.value.field == "dialect"
        # Explicit dialect= wins: over an unknown driver, and over the detected one.
        with shardq.from_connections(wrapped, tables=TABLES, dialect="sqlite") as conn:
            cur = conn.execute("SELECT id FROM items WHERE val > ? ORDER BY id", [1900])
            assert cur.fetchall() == EXPECTED
        with shardq.from_connections(conns, tables=TABLES, dialect="postgres") as conn:
            assert conn.config.dialect == "postgres"
            assert conn.paramstyle == "pyformat"
    finally:
        _close(conns)


@pytest.mark.postgres
def test_connections_of_two_dialects_are_refused(
    sqlite_dataset: list[Path], pg_dataset: list[PgCluster]
) -> None:
    import psycopg2

    lite = sqlite3.connect(sqlite_dataset[0], check_same_thread=False)
    pg = psycopg2.connect(pg_dataset[0].dsn(PG_DATABASE))
    try:
        with pytest.raises(
            shardq.ConfigError, match=r"postgres \(psycopg2\) and sqlite \(sqlite3\)"
        ):
            shardq.from_connections([lite, pg], tables=TABLES)
    finally:
        _close([lite, pg])
