"""Schema changes through shardq: on every shard, atomically on PostgreSQL.

PostgreSQL runs a schema change in one two-phase commit over the shards (a
failure on one leaves none changed), except what it runs outside a
transaction only (``CREATE INDEX CONCURRENTLY``), which runs shard after
shard; so do SQLite shards, which have no two-phase commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.fixtures.shards import TABLES

if TYPE_CHECKING:
    from tests.fixtures.shards import Backend


def _config(backend: Backend) -> dict[str, Any]:
    if backend.config is None:
        pytest.skip("the PEP 249 backends take no configuration to declare a table in")
    return {**backend.config, "tables": {**TABLES, "ddl_t": {"shard_key": "id"}}}


def _tables(backend: Backend) -> list[bool]:
    sql = (
        "SELECT count(*) FROM pg_tables WHERE tablename = 'ddl_t'"
        if backend.dialect == "postgres"
        else "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'ddl_t'"
    )
    return [bool(backend.direct(i, sql)[0][0]) for i in range(4)]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"], indirect=True)
def test_schema_changes_run_on_every_shard(backend: Backend) -> None:
    insert = backend.sql("INSERT INTO ddl_t (id, v) VALUES ({}, {})")
    try:
        with shardq.connect(_config(backend)) as conn:
            conn.execute("CREATE TABLE ddl_t (id integer PRIMARY KEY, v text)")
            assert _tables(backend) == [True] * 4
            for key in range(1, 41):
                conn.execute(insert, [key, f"v{key}"])
            conn.execute("ALTER TABLE ddl_t ADD COLUMN w integer")
            # The catalog is read again: the new column is there for * and the planner.
            assert len(conn.execute("SELECT * FROM ddl_t ORDER BY 3, 1 LIMIT 1").description) == 3
            conn.execute("CREATE INDEX ddl_i ON ddl_t (v)")
            if backend.dialect == "postgres":
                conn.execute("CREATE INDEX CONCURRENTLY ddl_j ON ddl_t (w)")
                conn.execute("COMMENT ON TABLE ddl_t IS 'made by shardq'")
            conn.execute("DROP INDEX ddl_i")
            if backend.dialect == "postgres":  # SQLite has no TRUNCATE
                conn.execute("TRUNCATE ddl_t")
                assert conn.execute("SELECT count(*) FROM ddl_t").fetchall() == [(0,)]
            conn.execute("DROP TABLE ddl_t")
            assert _tables(backend) == [False] * 4
    finally:
        for i in range(4):
            backend.direct(i, "DROP TABLE IF EXISTS ddl_t")


@pytest.mark.parametrize("backend", ["postgres", "sqlite"], indirect=True)
def test_a_schema_change_failing_on_one_shard(backend: Backend) -> None:
    backend.direct(2, "CREATE TABLE ddl_t (id integer PRIMARY KEY)")  # in the way on s2
    try:
        with shardq.connect(_config(backend)) as conn:
            with pytest.raises(shardq.ShardError) as failure:
                conn.execute("CREATE TABLE ddl_t (id integer PRIMARY KEY, v text)")
            if backend.dialect == "postgres":  # one two-phase commit: none has it
                assert _tables(backend) == [False, False, True, False]
            else:  # shard after shard: the error says which have it
                assert _tables(backend) == [True, True, True, False]
                assert "done on s0, s1; not on s2, s3" in str(failure.value.__notes__)
    finally:
        for i in range(4):
            backend.direct(i, "DROP TABLE IF EXISTS ddl_t")


def test_what_is_not_a_schema_change_of_declared_tables_is_refused() -> None:
    config = {"shards": [{"name": "a", "dsn": "a.db"}], "tables": {"t": {"shard_key": "k"}}}
    with shardq.connect(config) as conn:
        for sql, match in [
            ("CREATE TABLE t AS SELECT 1 AS k", "CREATE TABLE ... AS"),
            ("CREATE VIEW v AS SELECT 1", "not declared"),
            ("CREATE TABLE undeclared (a int)", "undeclared"),
        ]:
            with pytest.raises((shardq.ProgrammingError, shardq.NotSupportedError), match=match):
                conn.execute(sql)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"], indirect=True)
def test_views_are_created_everywhere_and_read_as_declared(backend: Backend) -> None:
    config = _config(backend)
    config["tables"] = {
        **config["tables"],
        "big_items": {"shard_key": "id"},
        "kind_names": {"reference": True},
        "bad_ref": {"reference": True},
        "bad_dist": {"shard_key": "id"},
    }
    catalog = (
        "SELECT viewname FROM pg_views WHERE viewname IN ('big_items', 'kind_names')"
        if backend.dialect == "postgres"
        else "SELECT name FROM sqlite_master WHERE name IN ('big_items', 'kind_names')"
    )
    try:
        with shardq.connect(config) as conn:
            conn.execute("CREATE VIEW big_items AS SELECT id, grp, val FROM items WHERE val > 1500")
            conn.execute("CREATE VIEW kind_names AS SELECT upper(label) AS name FROM kinds")
            assert all(len(backend.direct(i, catalog)) == 2 for i in range(4))
            # Read as the tables they are declared as: merged, routed.
            assert conn.execute("SELECT count(*), min(id) FROM big_items").fetchall() == [(50, 151)]
            assert conn.execute("SELECT grp FROM big_items WHERE id = 152").fetchall() == [("g2",)]
            assert conn.execute("SELECT count(*) FROM kind_names").fetchall() == [(3,)]
            for sql, match in [
                ("CREATE VIEW bad_ref AS SELECT id FROM items", "reference table"),
                ("CREATE VIEW bad_dist AS SELECT code AS id FROM kinds", "reference tables only"),
                ("CREATE VIEW bad_dist AS SELECT val AS id FROM items", "shard key"),
                (
                    "CREATE VIEW bad_dist AS SELECT grp, count(*) AS id FROM items GROUP BY grp",
                    "merged",
                ),
                ("CREATE VIEW bad_dist AS SELECT id FROM items ORDER BY id LIMIT 3", "merged"),
                ("CREATE MATERIALIZED VIEW bad_dist AS SELECT id FROM items", "materialized"),
            ]:
                if "MATERIALIZED" in sql and backend.dialect == "sqlite":
                    continue
                with pytest.raises(shardq.NotSupportedError, match=match):
                    conn.execute(sql)
            conn.execute("DROP VIEW big_items")
            conn.execute("DROP VIEW kind_names")
            assert all(backend.direct(i, catalog) == [] for i in range(4))
    finally:
        for i in range(4):
            backend.direct(i, "DROP VIEW IF EXISTS big_items")
            backend.direct(i, "DROP VIEW IF EXISTS kind_names")
