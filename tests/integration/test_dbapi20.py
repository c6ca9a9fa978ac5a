"""The DB-API 2.0 compliance suite (``dbapi20``, package dbapi-compliance) over shardq.

The suite runs against four PostgreSQL shards, then against four SQLite
files. Its two tables are declared **distributed by** ``name`` (their only
column in common), not as reference tables: each row then lives on one shard
chosen by its name, so the suite's six sample rows spread over the shards and
every ``SELECT`` it reads back is a scatter over all four, merged by shardq.
``fetchone``/``fetchmany``/``fetchall``, ``rowcount`` and ``description`` are
thereby checked on shardq's merged results, and ``executemany`` on rows routed
to different shards. (A reference table would keep a whole copy per shard and
read one of them: the suite would then mostly test one database.) Its
``CREATE TABLE``/``DROP TABLE`` run on every shard, as shardq runs schema
changes on declared tables.

The suite's tests that a driver must override (``test_nextset``,
``test_setoutputsize``) and the ones whose premise shardq does not share
(``test_non_idempotent_close``, ``test_callproc``; on SQLite, the type code
``test_description`` wants) are overridden below, each asserting what shardq
does instead.
"""

from __future__ import annotations

import sqlite3
import types
from typing import TYPE_CHECKING, Any, ClassVar

import dbapi20
import pytest

import shardq

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.servers import PgCluster

DATABASE = "dbapi20"
PREFIX = dbapi20.DatabaseAPI20Test.table_prefix
TABLES = {
    f"{PREFIX}booze": {"shard_key": "name"},
    f"{PREFIX}barflys": {"shard_key": "name"},
}


class _ShardqSuite(dbapi20.DatabaseAPI20Test):
    """The suite's tests over ``shardq.connect(config)``; a subclass sets the config."""

    __test__ = False  # collected through its subclasses only

    driver: Any = shardq
    connect_args: tuple[Any, ...] = ()
    connect_kw_args: ClassVar[dict[str, Any]] = {}
    shard_tables: ClassVar[Any] = None  # (shard index) -> table names there, set by a fixture

    def setUp(self) -> None:
        super().setUp()
        # A test interrupted before its tearDown must not leave a table for the next.
        self.tearDown()

    def tearDown(self) -> None:
        super().tearDown()
        for index in range(4):
            assert self.shard_tables(index) == [], f"a suite table is left on shard {index}"

    def test_paramstyle(self) -> None:
        super().test_paramstyle()
        # The style the suite writes its placeholders in is the connection's.
        with self._connect() as con:
            assert con.paramstyle == self.driver.paramstyle

    def test_nextset(self) -> None:
        # Every shardq statement has exactly one result set (no stored procedures
        # returning several): nextset() says there is no other, and the set read
        # so far stays readable, as PEP 249 asks of "no more sets".
        con = self._connect()
        try:
            cur = con.cursor()
            self.executeDDL1(cur)
            for sql in self._populate():
                cur.execute(sql)
            cur.execute(f"select name from {PREFIX}booze")
            first = cur.fetchone()
            assert cur.nextset() is None
            rest = cur.fetchall()
            assert sorted([first[0], *(r[0] for r in rest)]) == self.samples
            assert cur.nextset() is None
        finally:
            con.close()

    def test_setoutputsize(self) -> None:
        # Accepted and ignored (PEP 249 lets a driver do so): shardq fetches
        # whole values; a large column is read in full whatever size was set.
        con = self._connect()
        try:
            cur = con.cursor()
            cur.setoutputsize(5)
            cur.setoutputsize(5, 0)
            self.executeDDL1(cur)
            cur.execute(f"insert into {PREFIX}booze values ('Carlton Cold Draught')")
            cur.execute(f"select name from {PREFIX}booze")
            assert cur.fetchall() == [("Carlton Cold Draught",)]
        finally:
            con.close()

    def test_non_idempotent_close(self) -> None:
        # The suite wants a second close() to raise ("reasonable persons differ",
        # it says). shardq's close() is idempotent, as sqlite3's and psycopg's
        # are, so that `with` blocks, finalizers and error handlers may close a
        # connection already closed (tests/integration/test_contract.py pins
        # it). Every other use of a closed connection raises an Error.
        con = self._connect()
        cur = con.cursor()
        con.close()
        con.close()
        assert con.closed
        for operation in (
            con.cursor,
            con.commit,
            con.rollback,
            lambda: cur.execute(f"select name from {PREFIX}booze"),
            lambda: con.execute(f"select name from {PREFIX}booze"),
        ):
            with pytest.raises(self.driver.InterfaceError, match="closed"):
                operation()

    def test_callproc(self) -> None:
        # callproc() is optional in PEP 249 and shardq leaves it out (a
        # procedure's effects on N shards cannot be made one call's), so that
        # hasattr() tells the truth; the suite then checks nothing. What it
        # would have checked, lower('FOO'), shardq runs as a SELECT.
        con = self._connect()
        try:
            cur = con.cursor()
            assert not hasattr(cur, "callproc")
            super().test_callproc()
            cur.execute(f"select {self.lower_func}({self._placeholder()})", ("FOO",))
            assert cur.fetchall() == [("foo",)]
        finally:
            con.close()

    def _placeholder(self) -> str:
        return "?" if self.driver.paramstyle == "qmark" else "%s"


# --------------------------------------------------------------------------- PostgreSQL


def _pg_tables(cluster: PgCluster) -> list[str]:
    rows = cluster.execute(
        f"SELECT tablename FROM pg_tables WHERE tablename LIKE '{PREFIX}%' ORDER BY 1", DATABASE
    )
    return [row[0] for row in rows]


@pytest.fixture(scope="class")
def _pg_suite(request: pytest.FixtureRequest, pg_clusters: list[PgCluster]) -> None:
    for cluster in pg_clusters:
        cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE)
    request.cls.connect_args = (
        {
            "dialect": "postgres",
            "shards": [
                {"name": f"s{i}", "dsn": c.dsn(DATABASE)} for i, c in enumerate(pg_clusters)
            ],
            "tables": TABLES,
        },
    )
    request.cls.shard_tables = staticmethod(lambda index: _pg_tables(pg_clusters[index]))


@pytest.mark.postgres
@pytest.mark.usefixtures("_pg_suite")
class TestPostgres(_ShardqSuite):
    """Four PostgreSQL shards; the suite's DDL (``varchar`` columns) is PostgreSQL's own."""

    __test__ = True


# --------------------------------------------------------------------------- SQLite


def _sqlite_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ORDER BY 1",
            [f"{PREFIX}%"],
        ).fetchall()
    db.close()
    return [row[0] for row in rows]


@pytest.fixture(scope="class")
def _sqlite_suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("dbapi20")
    paths = [folder / f"s{i}.db" for i in range(4)]
    request.cls.connect_args = (
        {
            "dialect": "sqlite",
            "shards": [{"name": f"s{i}", "dsn": str(p)} for i, p in enumerate(paths)],
            "tables": TABLES,
        },
    )
    request.cls.shard_tables = staticmethod(lambda index: _sqlite_tables(paths[index]))


# The suite reads the placeholder style from the driver module. shardq's
# module-level paramstyle is the postgres dialect's; a connection to SQLite
# shards takes SQLite's "qmark" (Connection.paramstyle says so), so the SQLite
# run sees shardq with that one global as a SQLite connection reports it.
_SHARDQ_FOR_SQLITE = types.SimpleNamespace(**{**vars(shardq), "paramstyle": "qmark"})


@pytest.mark.usefixtures("_sqlite_suite")
class TestSQLite(_ShardqSuite):
    """Four SQLite files: ``varchar(20)`` has TEXT affinity there, so the DDL is unchanged."""

    __test__ = True
    driver = _SHARDQ_FOR_SQLITE

    def test_description(self) -> None:
        # SQLite reports no column types: Python's sqlite3 gives type_code None
        # (PEP 249 makes it mandatory), and shardq passes on what its shards give.
        # Everything else of the suite's test holds; the type code is None, not a
        # wrong type. (Deriving it from the catalog, for every result path, is
        # left to the engine.)
        con = self._connect()
        try:
            cur = con.cursor()
            self.executeDDL1(cur)
            assert cur.description is None
            cur.execute(f"select name from {PREFIX}booze")
            assert len(cur.description) == 1
            assert len(cur.description[0]) == 7
            assert cur.description[0][0].lower() == "name"
            assert cur.description[0][1] is None
            self.executeDDL2(cur)
            assert cur.description is None
        finally:
            con.close()
