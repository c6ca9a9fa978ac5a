"""The driver contract: the same behaviour over every backend (see tests/fixtures/shards.py)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

import shardq
from tests.fixtures.shards import ITEMS, KINDS, Backend


def test_routed_read_goes_to_the_one_shard_holding_the_key(backend: Backend) -> None:
    with backend.connect() as conn:
        for key in (1, 17, 200):
            cur = conn.execute(backend.sql("SELECT id, grp, val FROM items WHERE id = {}"), [key])
            assert cur.fetchall() == [ITEMS[key - 1]]
            assert len(cur.shards) == 1
            # The shard named by the public placement is the one that answered.
            index = backend.shard_names.index(cur.shards[0])
            assert backend.direct(index, f"SELECT id FROM items WHERE id = {key}") == [(key,)]
            assert conn.shard_for("items", key) == cur.shards[0]


def test_literal_and_bound_keys_route_alike(backend: Backend) -> None:
    with backend.connect() as conn:
        literal = conn.execute("SELECT id FROM items WHERE id = 42")
        bound = conn.execute(backend.sql("SELECT id FROM items WHERE id = {}"), [42])
        text = conn.execute("SELECT id FROM items WHERE id = '42'")
        assert literal.shards == bound.shards == text.shards
        assert literal.fetchall() == bound.fetchall() == [(42,)]


def test_in_list_routes_to_the_shards_of_its_keys(backend: Backend) -> None:
    with backend.connect() as conn:
        keys = [3, 5, 8]
        cur = conn.execute(backend.sql("SELECT id FROM items WHERE id IN ({}, {}, {})"), keys)
        assert sorted(cur.fetchall()) == [(k,) for k in keys]
        assert set(cur.shards) == {conn.shard_for("items", k) for k in keys}


def test_scatter_returns_every_matching_row_once(backend: Backend) -> None:
    with backend.connect() as conn:
        cur = conn.execute(backend.sql("SELECT id, grp, val FROM items WHERE val > {}"), [1000])
        assert sorted(cur.fetchall()) == [r for r in ITEMS if r[2] > 1000]
        assert sorted(cur.shards) == sorted(backend.shard_names)


def test_reference_table_is_read_from_one_shard(backend: Backend) -> None:
    with backend.connect() as conn:
        cur = conn.execute("SELECT code, label FROM kinds")
        assert sorted(cur.fetchall()) == KINDS
        assert len(cur.shards) == 1


def test_join_with_reference_table_stays_routed(backend: Backend) -> None:
    sql = backend.sql(
        "SELECT i.id, k.label FROM items i JOIN kinds k ON k.code = 'a' WHERE i.id = {}"
    )
    with backend.connect() as conn:
        cur = conn.execute(sql, [9])
        assert cur.fetchall() == [(9, "alpha")]
        assert cur.shards == (conn.shard_for("items", 9),)


def test_description_names_the_columns(backend: Backend) -> None:
    with backend.connect() as conn:
        cur = conn.execute("SELECT id, grp AS group_name FROM items WHERE id = 1")
        assert cur.description is not None
        assert [c.name for c in cur.description] == ["id", "group_name"]
        assert all(len(c) == 7 for c in cur.description)


def test_dict_and_namedtuple_rows(backend: Backend) -> None:
    with backend.connect(row_factory=shardq.dict_row) as conn:
        assert conn.execute("SELECT id, grp FROM items WHERE id = 2").fetchone() == {
            "id": 2,
            "grp": "g2",
        }
        cur = conn.cursor(row_factory=shardq.namedtuple_row)
        row = cur.execute("SELECT id, val FROM items WHERE id = 3").fetchone()
        assert (row.id, row.val) == (3, 30)


def test_fetch_methods_and_iteration(backend: Backend) -> None:
    with backend.connect(fetch_size=7) if backend.config else backend.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT id FROM items WHERE id <= 50")
        first = cur.fetchone()
        cur.arraysize = 4
        some = cur.fetchmany()
        more = cur.fetchmany(10)
        rest = list(cur)
        got = [first, *some, *more, *rest]
        assert len(some) == 4
        assert len(more) == 10
        assert sorted(r[0] for r in got if r) == list(range(1, 51))
        assert cur.fetchone() is None
        assert cur.rowcount == 50


def test_routed_writes_and_rowcount(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        cur = conn.cursor()
        cur.executemany(
            backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})"),
            [(i, f"n{i}") for i in range(1, 21)],
        )
        assert cur.rowcount == 20
        cur.execute(backend.sql("UPDATE writes SET note = {} WHERE id = {}"), ["changed", 5])
        assert cur.rowcount == 1
        assert cur.description is None
        cur.execute(backend.sql("DELETE FROM writes WHERE id = {}"), [6])
        assert cur.rowcount == 1
        home = backend.shard_names.index(conn.shard_for("writes", 5))
        assert backend.direct(home, "SELECT note FROM writes WHERE id = 5") == [("changed",)]
        total = sum(len(backend.direct(i, "SELECT id FROM writes")) for i in range(4))
        assert total == 19
        cur.execute(
            backend.sql("INSERT INTO writes (id, note) VALUES ({}, 'x') RETURNING id"), [99]
        )
        assert cur.fetchall() == [(99,)]


def test_multi_shard_write_is_refused_before_touching_a_shard(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        if backend.dialect == "sqlite":
            # No two-phase commit (PostgreSQL commits these together: test_transactions.py,
            # test_split_writes.py).
            with pytest.raises(shardq.UnsupportedQueryError, match="two-phase"):
                conn.execute("DELETE FROM writes")
            with pytest.raises(shardq.UnsupportedQueryError, match="shards"):
                conn.execute("INSERT INTO writes (id, note) VALUES (1, 'a'), (2, 'b'), (4, 'c')")
        with pytest.raises(shardq.UnsupportedQueryError, match="reference"):
            # Each shard would delete by its own rows of items (PostgreSQL); SQLite: no 2PC.
            conn.execute("DELETE FROM kinds WHERE code IN (SELECT grp FROM items)")
    assert sum(len(backend.direct(i, "SELECT id FROM writes")) for i in range(4)) == 0


def test_integrity_error_names_the_shard(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        conn.execute("INSERT INTO writes (id, note) VALUES (7, 'a')")
        with pytest.raises(shardq.IntegrityError) as info:
            conn.execute("INSERT INTO writes (id, note) VALUES (7, 'b')")
        err = info.value
        assert isinstance(err, shardq.ShardError)
        assert err.shard == conn.shard_for("writes", 7)
        assert err.shard in str(err)
        assert err.__cause__ is not None
        # The connection is still usable after the error.
        assert conn.execute("SELECT note FROM writes WHERE id = 7").fetchall() == [("a",)]


def test_bad_sql_fails_before_any_shard(backend: Backend) -> None:
    with backend.connect() as conn:
        with pytest.raises(shardq.SQLSyntaxError) as info:
            conn.execute("SELECT id FROM items WHERE")
        assert info.value.line == 1
        with pytest.raises(shardq.UndeclaredTableError, match="missing_table"):
            conn.execute("SELECT * FROM missing_table")
        window = "SELECT id, row_number() OVER (ORDER BY val) FROM items"
        join = "SELECT * FROM items a JOIN writes b ON a.val = b.id"
        # No merge answers them, so they are gathered to one shard.
        assert "gathered to shard" in conn.explain(window)
        assert "gathered to shard" in conn.explain(join)
        by_val = sorted(ITEMS, key=lambda r: r[2])  # (no two rows have the same val)
        want = sorted((r[0], n) for n, r in enumerate(by_val, 1))
        if backend.name == "pep249-psycopg2":
            # Rows move by COPY, which shardq does on its own connections only: refused.
            with pytest.raises(shardq.UnsupportedQueryError, match="PEP 249 connections"):
                conn.execute(window + " ORDER BY id")
            return
        assert conn.execute(window + " ORDER BY id").fetchall() == want


def test_merged_reads_match_one_database(backend: Backend) -> None:
    """Aggregates, grouping, ORDER BY, LIMIT and DISTINCT across shards, on every backend."""
    vals = [v for _, _, v in ITEMS]
    by_group: dict[str, list[int]] = {}
    for _, grp, val in ITEMS:
        by_group.setdefault(grp, []).append(val)
    with backend.connect() as conn:
        cur = conn.execute("SELECT count(*), sum(val), min(val), max(val) FROM items")
        assert cur.fetchall() == [(len(ITEMS), sum(vals), min(vals), max(vals))]
        assert [d.name for d in cur.description][:1] == (
            ["count"] if backend.dialect == "postgres" else ["count(*)"]
        )
        cur = conn.execute(
            backend.sql(
                "SELECT grp, count(*) AS n, max(val) FROM items WHERE val > {} "
                "GROUP BY grp HAVING count(*) > {} ORDER BY n DESC, grp LIMIT 3"
            ),
            (100, 5),
        )
        want = sorted(
            ((g, sum(1 for v in vs if v > 100), max(vs)) for g, vs in by_group.items()),
            key=lambda r: (-r[1], r[0]),
        )
        assert cur.fetchall() == [r for r in want if r[1] > 5][:3]
        cur = conn.execute(
            backend.sql("SELECT id, val FROM items ORDER BY val DESC LIMIT {} OFFSET {}"), (4, 3)
        )
        assert cur.fetchall() == [(i, v) for i, _, v in sorted(ITEMS, key=lambda r: -r[2])][3:7]
        assert len(cur.shards) == 4
        cur = conn.execute("SELECT DISTINCT grp FROM items ORDER BY grp")
        assert cur.fetchall() == [(g,) for g in sorted(by_group)]
        cur = conn.execute("SELECT count(DISTINCT grp), avg(val) FROM items WHERE id > 1000")
        assert cur.fetchall() == [(0, None)]


def test_subqueries_run_first_on_every_backend(backend: Backend) -> None:
    vals = [v for _, _, v in ITEMS]
    mean = sum(vals) / len(vals)
    with backend.connect() as conn:
        sql = "SELECT count(*) FROM items WHERE val > (SELECT avg(val) FROM items)"
        assert conn.execute(sql).fetchall() == [(sum(1 for v in vals if v > mean),)]
        sql = "SELECT count(*) FROM kinds WHERE length(code) IN (SELECT count(*) / 200 FROM items)"
        assert conn.execute(sql).fetchall() == [(len(KINDS),)]
        sql = backend.sql(
            "SELECT code FROM kinds WHERE code IN (SELECT grp FROM items WHERE val < {}) "
            "ORDER BY code"
        )
        # On SQLite grp, a TEXT column, compares by an affinity rows shipped back as
        # parameters lack: the read is gathered to one shard instead.
        assert conn.execute(sql, [0]).fetchall() == []


def test_an_empty_result_still_has_its_columns(backend: Backend) -> None:
    with backend.connect() as conn:
        for sql in ["SELECT id, grp FROM items WHERE id = 100000",  # one shard
                    "SELECT id, grp FROM items WHERE val < 0 ORDER BY id",
                    "SELECT id, grp FROM items WHERE val < 0; -- no rows"]:  # fmt: skip
            cur = conn.execute(sql)
            assert cur.description is not None
            assert [d.name for d in cur.description] == ["id", "grp"]
            assert cur.fetchall() == []


def test_a_shards_database_error_names_it(backend: Backend) -> None:
    with backend.connect() as conn:
        with pytest.raises(shardq.ShardError) as info:
            conn.execute("SELECT no_such_column FROM items WHERE id = 1")
        assert isinstance(info.value, shardq.ProgrammingError | shardq.OperationalError)
        assert info.value.shard == conn.shard_for("items", 1)


def test_cursor_and_connection_close(backend: Backend) -> None:
    conn = backend.connect()
    cur = conn.cursor()
    cur.execute("SELECT id FROM items WHERE id > 0")
    cur.fetchone()
    cur.close()  # stops the unread result
    with pytest.raises(shardq.InterfaceError):
        cur.fetchone()
    conn.close()
    conn.close()  # idempotent
    with pytest.raises(shardq.InterfaceError):
        conn.cursor()


async def test_async_api(backend: Backend) -> None:
    async with await backend.connect_async() as conn:
        cur = await conn.execute(backend.sql("SELECT id, val FROM items WHERE id = {}"), [10])
        assert await cur.fetchall() == [(10, 100)]
        cur = await conn.execute("SELECT id FROM items WHERE val >= 1900")
        assert sorted([row async for row in cur]) == [(i,) for i in range(190, 201)]


async def test_sync_api_inside_a_running_event_loop(backend: Backend) -> None:
    # As in a notebook or an async web app calling sync code.
    with backend.connect() as conn:
        assert conn.execute("SELECT id FROM items WHERE id = 3").fetchall() == [(3,)]


def _endless(backend: Backend) -> str:
    if backend.dialect == "postgres":
        return "SELECT pg_sleep(60) AS endless"
    return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def test_timeout_interrupts_the_statement(backend: Backend) -> None:
    with backend.connect() as conn:
        began = time.monotonic()
        with pytest.raises(shardq.QueryTimeoutError):
            conn.execute(_endless(backend), timeout=0.3)
        # Raised promptly because the statement was interrupted in the database
        # (the worker thread or server was waited for before returning).
        assert time.monotonic() - began < 10
        assert conn.execute("SELECT id FROM items WHERE id = 4").fetchall() == [(4,)]
        if backend.dialect == "postgres":
            for cluster in backend.clusters:
                rows = cluster.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    "AND query LIKE '%AS endless%' AND pid <> pg_backend_pid()"
                )
                assert rows == [(0,)]


ITEMS_TABLE = sa.table("items", sa.column("id"), sa.column("grp"), sa.column("val"))
WRITES_TABLE = sa.table("writes", sa.column("id"), sa.column("note"))
BY_KEY = sa.select(ITEMS_TABLE.c.id, ITEMS_TABLE.c.val).where(
    ITEMS_TABLE.c.id == sa.bindparam("key")
)
GROUPED = (
    sa.select(ITEMS_TABLE.c.grp, sa.func.count().label("n"))
    .where(ITEMS_TABLE.c.val > sa.bindparam("floor", 1500))
    .group_by(ITEMS_TABLE.c.grp)
    .order_by(ITEMS_TABLE.c.grp)
)
GROUPED_TEXT = "SELECT grp, count(*) AS n FROM items WHERE val > {} GROUP BY grp ORDER BY grp"


def test_sqlalchemy_statements_run_through_execute(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        cur = conn.cursor()
        cur.execute(BY_KEY, {"key": 7})
        assert cur.fetchall() == [(7, 70)]
        assert cur.shards == (conn.shard_for("items", 7),)  # routed by the bound value
        cur.execute(sa.select(ITEMS_TABLE.c.id).where(ITEMS_TABLE.c.id == 9))
        assert cur.fetchall() == [(9,)]
        assert cur.shards == (conn.shard_for("items", 9),)
        expected = conn.execute(backend.sql(GROUPED_TEXT), [1500]).fetchall()
        assert conn.execute(GROUPED).fetchall() == expected  # the default bound value
        above = conn.execute(GROUPED, {"floor": 1900}).fetchall()
        assert above == [(f"g{k}", 2) for k in range(5)]  # ids 191..200
        assert [c.name for c in cur.execute(GROUPED).description or ()] == ["grp", "n"]
        cur.execute(sa.insert(WRITES_TABLE).values(id=5, note="five"))
        assert cur.rowcount == 1
        cur.executemany(
            sa.insert(WRITES_TABLE), [{"id": i, "note": f"n{i}"} for i in range(10, 20)]
        )
        assert cur.rowcount == 10
        update = (
            sa.update(WRITES_TABLE)
            .where(WRITES_TABLE.c.id == sa.bindparam("key"))
            .values(note=sa.bindparam("new"))
        )
        cur.execute(update, {"key": 12, "new": "twelve"})
        assert cur.rowcount == 1
        plan = conn.explain(BY_KEY, {"key": 3})
        assert plan.startswith(f"Single-shard query on {conn.shard_for('items', 3)}\n")
        with pytest.raises(shardq.ProgrammingError, match="mapping"):
            cur.execute(BY_KEY, [7])
        with pytest.raises(shardq.ProgrammingError, match="SQL text, a SQLAlchemy statement"):
            cur.execute(object())
    home = backend.shard_names.index(conn.shard_for("writes", 12))
    assert backend.direct(home, "SELECT note FROM writes WHERE id = 12") == [("twelve",)]
    total = sum(len(backend.direct(i, "SELECT id FROM writes")) for i in range(4))
    assert total == 11


async def test_sqlalchemy_statements_run_through_async_execute(empty_writes: Backend) -> None:
    backend = empty_writes
    async with await backend.connect_async() as conn:
        cur = await conn.execute(BY_KEY, {"key": 11})
        assert await cur.fetchall() == [(11, 110)]
        assert cur.shards == (conn.shard_for("items", 11),)
        cur = conn.cursor()
        await cur.executemany(
            sa.insert(WRITES_TABLE), [{"id": i, "note": f"a{i}"} for i in range(1, 6)]
        )
        assert cur.rowcount == 5
        await cur.execute(
            sa.select(WRITES_TABLE.c.note).where(WRITES_TABLE.c.id == sa.bindparam("key")),
            {"key": 4},
        )
        assert await cur.fetchall() == [("a4",)]
        assert "items" in await conn.explain(GROUPED)


def _write_or_roll_back(conn: shardq.Connection, sql: str) -> None:
    """The usual DB-API error handler: roll back, then let the error through."""
    try:
        conn.execute(sql)
    except shardq.Error:
        conn.rollback()
        raise


async def _write_or_roll_back_async(conn: shardq.AsyncConnection, sql: str) -> None:
    try:
        await conn.execute(sql)
    except shardq.Error:
        await conn.rollback()
        raise


def test_rollback_in_an_error_handler_lets_the_real_error_through(empty_writes: Backend) -> None:
    backend = empty_writes
    conn = backend.connect()
    with conn:
        assert conn.autocommit is True
        conn.execute("INSERT INTO writes (id, note) VALUES (7, 'a')")
        # The duplicate key must reach the caller, not an error of rollback().
        with pytest.raises(shardq.IntegrityError):
            _write_or_roll_back(conn, "INSERT INTO writes (id, note) VALUES (7, 'b')")
        conn.rollback()
        conn.commit()
        # Autocommit: rollback() undid nothing, as in psycopg's and sqlite3's autocommit mode.
        assert conn.execute("SELECT note FROM writes WHERE id = 7").fetchall() == [("a",)]
        conn.autocommit = True
        conn.autocommit = False  # transactions: see test_transactions.py
        assert conn.autocommit is False
        conn.autocommit = True
        assert not hasattr(conn.cursor(), "callproc")  # left out, not a method that raises
    with pytest.raises(shardq.InterfaceError):
        conn.rollback()


async def test_async_rollback_and_autocommit(empty_writes: Backend) -> None:
    backend = empty_writes
    conn = await backend.connect_async()
    async with conn:
        assert conn.autocommit is True
        await conn.execute("INSERT INTO writes (id, note) VALUES (8, 'a')")
        with pytest.raises(shardq.IntegrityError):
            await _write_or_roll_back_async(conn, "INSERT INTO writes (id, note) VALUES (8, 'b')")
        await conn.commit()
        cur = await conn.execute("SELECT note FROM writes WHERE id = 8")
        assert await cur.fetchall() == [("a",)]
        conn.autocommit = False  # transactions: see test_transactions.py
        assert conn.autocommit is False
        conn.autocommit = True
        assert not hasattr(conn.cursor(), "callproc")
    with pytest.raises(shardq.InterfaceError):
        await conn.rollback()
