"""INSERT ... SELECT into a distributed table, checked on each shard directly.

Co-located (``writes`` declared ``colocate_with = "items"``, the key carried
through): the statement runs on each shard. Otherwise shardq reads the
SELECT as a query of its own and inserts each row on its key's shard, in one
transaction (two-phase commit across shards), RETURNING rows in the order of
the selected rows. SQLite shards refuse what would write on several of them.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.fixtures.shards import ITEMS, TABLES, _make_backend
from tests.integration.test_transactions import _prepared, _stored

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.fixtures.shards import Backend

COLOCATED = {**TABLES, "writes": {"shard_key": "id", "colocate_with": "items"}}


def _emptied(backend: Backend) -> Backend:
    for i in range(4):
        if backend.dialect == "postgres":
            for (gid,) in backend.direct(i, "SELECT gid FROM pg_prepared_xacts"):
                backend.direct(i, f"ROLLBACK PREPARED '{gid}'")  # a failed test's leftovers
        backend.direct(i, "DELETE FROM writes")
    return backend


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The PostgreSQL backend, its ``writes`` emptied."""
    for backend in _make_backend(request, "postgres"):
        yield _emptied(backend)


@pytest.fixture
def lite(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The SQLite backend (four files), its ``writes`` emptied."""
    for backend in _make_backend(request, "sqlite"):
        yield _emptied(backend)


def _colocated(backend: Backend, **kw: Any) -> shardq.Connection:
    assert backend.config is not None
    return shardq.connect({**backend.config, "tables": COLOCATED}, **kw)


def _on_shards(backend: Backend) -> list[list[tuple[Any, ...]]]:
    """Each shard's ``writes`` rows, sorted."""
    return [sorted(backend.direct(i, "SELECT id, note FROM writes")) for i in range(4)]


def _placed(conn: shardq.Connection, backend: Backend, rows: list[tuple[Any, ...]]) -> list[Any]:
    """``rows`` of ``writes`` where placement puts them, one sorted list per shard."""
    return [
        sorted(r for r in rows if conn.shard_for("writes", r[0]) == backend.shard_names[i])
        for i in range(4)
    ]


def test_a_colocated_insert_select_runs_on_each_shard(pg: Backend) -> None:
    with _colocated(pg) as conn:
        sql = "INSERT INTO writes (id, note) SELECT id, grp FROM items WHERE val > %s"
        plan = conn.explain(sql, [1000])
        assert "on each shard that holds the rows it selects" in plan
        assert "Distributed query on 4 of 4 shards" in plan
        cur = conn.execute(sql, [1000])
        expected = [(i, g) for i, g, v in ITEMS if v > 1000]
        assert cur.rowcount == len(expected) == 100
        # Each shard copied its own rows: they are where placement puts them.
        assert _on_shards(pg) == _placed(conn, pg, expected)
        assert _prepared(pg) == []
        # A shard-key condition pins it to one shard, as it does a read.
        pinned = "INSERT INTO writes (id, note) SELECT id, 'again' FROM items WHERE id = %s"
        assert "Single-shard query" in conn.explain(pinned, [7])
        with pytest.raises(shardq.IntegrityError):
            conn.execute(pinned, [150])  # copied already: its key is taken
        cur = conn.execute(pinned + " RETURNING id, note", [7])
        assert cur.fetchall() == [(7, "again")]
        # RETURNING rows from every shard (in no order, as one database's).
        cur = conn.execute(
            "INSERT INTO writes (id, note) SELECT id, grp FROM items WHERE id <= 20 "
            "AND id <> 7 RETURNING id"
        )
        assert cur.rowcount == 19
        assert sorted(cur.fetchall()) == [(i,) for i in range(1, 21) if i != 7]
    everything = [*expected, (7, "again"), *((i, g) for i, g, _ in ITEMS[:20] if i != 7)]
    assert _on_shards(pg) == _placed(conn, pg, everything)


def test_a_colocated_insert_select_keeps_its_clauses(pg: Backend) -> None:
    with _colocated(pg) as conn:
        sql = (
            "INSERT INTO writes (id, note) SELECT i.id, k.label FROM items AS i "
            "JOIN kinds AS k ON k.code = 'a' WHERE i.grp = %s "
            "ON CONFLICT (id) DO UPDATE SET note = %s"
        )
        assert "co-located" in conn.explain(sql, ["g1", "x"])
        assert conn.execute(sql, ["g1", "x"]).rowcount == 40
        assert conn.execute(sql, ["g1", "upserted"]).rowcount == 40
        expected = [(i, "upserted") for i, g, _ in ITEMS if g == "g1"]
        assert _on_shards(pg) == _placed(conn, pg, expected)
        # Grouped by the key, each group is on one shard: still co-located.
        grouped = (
            "INSERT INTO writes (id, note) SELECT id + 1000, count(*) FROM items "
            "GROUP BY id HAVING id > 190"
        )
        assert "co-located" not in conn.explain(grouped)  # id + 1000 is computed
        grouped = "INSERT INTO writes (id, note) SELECT id, 'g' FROM items GROUP BY id, grp"
        assert "co-located" in conn.explain(grouped)
        conn.execute("DELETE FROM writes")
        assert conn.execute(grouped).rowcount == 200


def test_a_routed_insert_select_places_each_row(pg: Backend) -> None:
    with pg.connect() as conn:  # writes is not declared co-located with items
        sql = "INSERT INTO writes (id, note) SELECT id, grp FROM items WHERE val > %s"
        plan = conn.explain(sql, [1500])
        assert "runs first as a query of its own" in plan
        assert "not co-located" in plan
        assert conn.execute(sql, [1500]).rowcount == 50
        # The key computed: each row goes to its new key's shard.
        computed = "INSERT INTO writes (id, note) SELECT id + 1000, grp FROM items WHERE id <= %s"
        assert conn.execute(computed, [30]).rowcount == 30
        # From a reference table (read on one shard, placed on several).
        from_kinds = (
            "INSERT INTO writes (id, note) SELECT CASE code WHEN 'a' THEN 7001 "
            "WHEN 'b' THEN 7002 ELSE 7003 END, label FROM kinds"
        )
        assert conn.execute(from_kinds).rowcount == 3
        # Aggregates over every shard, merged before the rows are placed.
        assert (
            conn.execute(
                "INSERT INTO writes (id, note) SELECT max(id) + 8000, grp FROM items GROUP BY grp"
            ).rowcount
            == 5
        )
        expected = [(i, g) for i, g, v in ITEMS if v > 1500]
        expected += [(i + 1000, g) for i, g, _ in ITEMS[:30]]
        expected += [(7001, "alpha"), (7002, "beta"), (7003, "gamma")]
        expected += [(8000 + max(i for i, g, _ in ITEMS if g == grp), grp) for grp in
                     sorted({g for _, g, _ in ITEMS})]  # fmt: skip
        assert _on_shards(pg) == _placed(conn, pg, expected)
        assert _prepared(pg) == []


def test_returning_follows_the_selected_order(pg: Backend) -> None:
    with _colocated(pg) as conn:
        # ORDER BY ... LIMIT: the rows one database would select, in its order.
        sql = (
            "INSERT INTO writes (id, note) SELECT id, grp FROM items "
            "ORDER BY val DESC LIMIT 7 RETURNING id, note"
        )
        assert "RETURNING rows in the order of its ORDER BY" in conn.explain(sql)
        cur = conn.execute(sql)
        assert cur.rowcount == 7
        assert cur.fetchall() == [(i, f"g{i % 5}") for i in range(200, 193, -1)]
    with pg.connect(fetch_size=300) as conn:
        # More rows than one INSERT carries and than one fetch reads.
        cur = conn.execute(
            "INSERT INTO writes (id, note) SELECT g, 'n' || g FROM generate_series(10001, 15000) "
            "AS g ORDER BY g DESC RETURNING id"
        )
        assert cur.rowcount == 5000
        assert cur.fetchall() == [(k,) for k in range(15000, 10000, -1)]
        assert conn.execute("SELECT count(*) FROM writes WHERE id > 10000").fetchall() == [(5000,)]
    stored = [r for s in _on_shards(pg) for r in s]
    assert len(stored) == 5007


def test_inserting_into_the_table_read_reads_it_as_it_was(pg: Backend) -> None:
    with pg.connect(fetch_size=100) as conn:
        conn.execute(
            "INSERT INTO writes (id, note) SELECT g, 'first' FROM generate_series(1, 2000) AS g"
        )
        # Read and inserted in batches on the same connections: the rows it adds
        # are not read back (the cursors read the snapshot they were declared in).
        cur = conn.execute("INSERT INTO writes (id, note) SELECT id + 100000, 'copy' FROM writes")
        assert cur.rowcount == 2000
        assert conn.execute("SELECT note, count(*) FROM writes GROUP BY note ORDER BY note")\
            .fetchall() == [("copy", 2000), ("first", 2000)]  # fmt: skip
        assert _on_shards(pg) == _placed(conn, pg, [r for s in _on_shards(pg) for r in s])


def test_a_null_key_fails_the_whole_statement(pg: Backend) -> None:
    with pg.connect(fetch_size=20) as conn:
        sql = (
            "INSERT INTO writes (id, note) SELECT CASE WHEN id = 150 THEN NULL ELSE id END "
            "AS k, grp FROM items ORDER BY id"
        )
        with pytest.raises(shardq.ProgrammingError, match=r"row 150 .* = None") as caught:
            conn.execute(sql)
        assert "NULL" in str(caught.value)
        assert _stored(pg) == []  # the 149 rows before it were inserted, and rolled back
        assert _prepared(pg) == []
        # A row a shard rejects (a duplicate key) fails it all the same.
        conn.execute("INSERT INTO writes (id, note) VALUES (1180, 'there')")
        with pytest.raises(shardq.IntegrityError) as rejected:
            conn.execute("INSERT INTO writes (id, note) SELECT id + 1000, grp FROM items")
        assert conn.shard_for("writes", 1180) in str(rejected.value)
        assert _stored(pg) == [(1180, "there")]
        # Too few target columns for the selected ones, as PostgreSQL says it.
        with pytest.raises(shardq.ProgrammingError, match="more expressions"):
            conn.execute("INSERT INTO writes (id) SELECT id + 1000, grp FROM items")


def test_a_routed_insert_select_in_a_transaction(pg: Backend) -> None:
    with pg.connect() as conn:
        conn.autocommit = False
        conn.execute("INSERT INTO writes (id, note) VALUES (1, 'own')")
        # The SELECT sees the transaction's own rows; its rows are seen in turn.
        cur = conn.execute("INSERT INTO writes (id, note) SELECT id + 500, note FROM writes")
        assert cur.rowcount == 1
        cur = conn.execute("INSERT INTO writes SELECT id + 1000, grp FROM items WHERE id < 11")
        assert cur.rowcount == 10
        assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(12,)]
        conn.rollback()
        assert _stored(pg) == []
        conn.execute("INSERT INTO writes SELECT id + 1000, grp FROM items WHERE id < 11")
        conn.commit()
        expected = [(i + 1000, g) for i, g, _ in ITEMS[:10]]
        assert _on_shards(pg) == _placed(conn, pg, expected)
    with _colocated(pg) as conn:

        def undone() -> None:
            with conn.transaction():
                conn.execute("INSERT INTO writes (id, note) SELECT id, grp FROM items")
                assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(210,)]
                raise ZeroDivisionError  # leaving the block with an exception rolls it back

        with pytest.raises(ZeroDivisionError):
            undone()
    assert _on_shards(pg) == _placed(conn, pg, expected)
    assert _prepared(pg) == []


def test_on_conflict_is_kept_on_each_routed_insert(pg: Backend) -> None:
    with pg.connect() as conn:
        sql = (
            "INSERT INTO writes (id, note) SELECT id * 3, grp FROM items WHERE id <= 10 "
            "ON CONFLICT (id) DO UPDATE SET note = %s"
        )
        assert conn.execute(sql, ["first"]).rowcount == 10
        assert conn.execute(sql, ["second"]).rowcount == 10
        assert _stored(pg) == [(i * 3, "second") for i in range(1, 11)]
        with pytest.raises(shardq.UnsupportedQueryError, match="RETURNING"):
            conn.execute(sql + " RETURNING id", ["third"])
        with pytest.raises(shardq.UnsupportedQueryError, match="sets the shard key"):
            conn.execute(
                "INSERT INTO writes (id, note) SELECT id, grp FROM items "
                "ON CONFLICT (id) DO UPDATE SET id = 0"
            )


async def test_a_routed_insert_select_through_the_async_api(pg: Backend) -> None:
    async with await pg.connect_async() as conn:
        cur = await conn.execute(
            "INSERT INTO writes (id, note) SELECT id + %(shift)s, grp FROM items "
            "WHERE id > %(above)s ORDER BY id RETURNING id",
            {"shift": 3000, "above": 195},
        )
        assert await cur.fetchall() == [(3000 + i,) for i in range(196, 201)]
    assert _stored(pg) == [(3000 + i, f"g{i % 5}") for i in range(196, 201)]


def test_sqlite_shards_refuse_what_writes_on_several(lite: Backend) -> None:
    assert lite.config is not None
    with shardq.connect({**lite.config, "tables": COLOCATED}) as conn:
        with pytest.raises(shardq.UnsupportedQueryError, match="two-phase commit"):
            conn.execute("INSERT INTO writes (id, note) SELECT id, grp FROM items")
        with pytest.raises(shardq.UnsupportedQueryError, match="two-phase commit"):
            conn.execute("INSERT INTO writes (id, note) SELECT id + 1, grp FROM items WHERE id = 3")
        # Pinned to one shard, a co-located one runs there.
        cur = conn.execute(
            "INSERT INTO writes (id, note) SELECT id, grp FROM items WHERE id = ?", [3]
        )
        assert cur.rowcount == 1
    assert _stored(lite) == [(3, "g3")]


def test_one_sqlite_shard_runs_it_as_written(tmp_path: Path) -> None:
    path = tmp_path / "one.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, grp TEXT, val INTEGER);"
            "CREATE TABLE writes (id INTEGER PRIMARY KEY, note TEXT);"
        )
        db.executemany("INSERT INTO items VALUES (?, ?, ?)", ITEMS)
    db.close()
    config = {
        "dialect": "sqlite",
        "shards": [{"name": "only", "dsn": str(path)}],
        "tables": {"items": {"shard_key": "id"}, "writes": {"shard_key": "id"}},
    }
    with shardq.connect(config) as conn:
        sql = "INSERT INTO writes SELECT id + 1, grp FROM items ORDER BY val DESC LIMIT 3"
        assert "on the one shard, as written" in conn.explain(sql)
        assert conn.execute(sql).rowcount == 3
        assert conn.execute("SELECT id FROM writes ORDER BY id").fetchall() == [
            (199,),
            (200,),
            (201,),
        ]
