"""Transactions over the shards, on every backend: commit, rollback, savepoints, failures.

Two-phase commit and its recovery run on PostgreSQL (the clusters are
started with ``max_prepared_transactions``); SQLite shards take a transaction
that writes on one shard, and refuse a second.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.fixtures.servers import PgCluster
from tests.fixtures.shards import _make_backend

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.shards import Backend


def _keys_on_distinct_shards(conn: Any, count: int) -> list[int]:
    """Ids of ``writes`` on ``count`` different shards."""
    found: dict[str, int] = {}
    for key in range(1000, 2000):
        found.setdefault(conn.shard_for("writes", key), key)
        if len(found) == count:
            break
    return sorted(found.values())


def _keys_on_one_shard(conn: Any, count: int) -> list[int]:
    """Ids of ``writes`` all on the shard of 1001."""
    home = conn.shard_for("writes", 1001)
    return [k for k in range(1001, 3000) if conn.shard_for("writes", k) == home][:count]


def _stored(backend: Backend) -> list[tuple[Any, ...]]:
    rows = [r for i in range(4) for r in backend.direct(i, "SELECT id, note FROM writes")]
    return sorted(rows)


def test_commit_and_rollback_on_one_shard(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        with conn.transaction():
            conn.execute(insert, [1001, "kept"])
            # The transaction reads its own write, on the shard's transaction connection.
            assert conn.execute("SELECT note FROM writes").fetchall() == [("kept",)]
        assert _stored(backend) == [(1001, "kept")]

        def undone() -> None:
            with conn.transaction():
                conn.execute(insert, [1002, "undone"])
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            undone()
        assert _stored(backend) == [(1001, "kept")]
        assert not conn.in_transaction


def test_autocommit_off_opens_a_transaction_until_commit_or_rollback(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        conn.autocommit = False
        conn.execute(insert, [1001, "a"])
        assert conn.in_transaction
        assert _stored(backend) == []  # not committed yet: other sessions do not see it
        conn.rollback()
        assert _stored(backend) == []
        conn.execute(insert, [1003, "b"])
        conn.commit()
        assert _stored(backend) == [(1003, "b")]
        conn.execute(insert, [1004, "c"])
        with pytest.raises(shardq.ProgrammingError, match="autocommit"):
            conn.autocommit = True
        conn.rollback()
        conn.autocommit = True
        assert not conn.in_transaction


def test_a_nested_transaction_is_a_savepoint(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        outer, inner, kept = _keys_on_one_shard(conn, 3)

        def inner_fails() -> None:
            with conn.transaction():
                conn.execute(insert, [inner, "inner"])
                raise KeyError

        with conn.transaction():
            conn.execute(insert, [outer, "outer"])
            with pytest.raises(KeyError):
                inner_fails()
            with conn.transaction():
                conn.execute(insert, [kept, "inner kept"])
        assert _stored(backend) == [(outer, "outer"), (kept, "inner kept")]


def test_named_savepoints_on_the_connection(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        first, undone, failed, kept = _keys_on_one_shard(conn, 4)
        with pytest.raises(shardq.ProgrammingError, match="a savepoint needs a transaction"):
            conn.savepoint()  # autocommit, no transaction
        assert not conn.in_transaction
        conn.autocommit = False
        outer = conn.savepoint()  # opens the transaction, as a statement would
        assert conn.in_transaction
        conn.execute(insert, [first, "first"])
        inner = conn.savepoint()
        conn.execute(insert, [undone, "undone"])
        conn.rollback_to_savepoint(inner)
        again = conn.savepoint()
        with pytest.raises(shardq.IntegrityError):
            conn.execute(insert, [first, "duplicate"])
        with pytest.raises(shardq.InFailedTransactionError):
            conn.execute(insert, [failed, "after the failure"])
        conn.rollback_to_savepoint(again)  # clears the failure
        conn.execute(insert, [kept, "kept"])
        conn.release_savepoint(outer)
        conn.commit()
        assert _stored(backend) == sorted([(first, "first"), (kept, "kept")])
        conn.rollback_to_savepoint(outer)  # no transaction open: nothing to undo
        conn.release_savepoint(outer)
        conn.autocommit = True


async def test_named_savepoints_on_the_async_connection(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    async with await backend.connect_async() as conn:
        first, second = _keys_on_one_shard(conn, 2)
        async with conn.transaction():
            await conn.execute(insert, [first, "kept"])
            name = await conn.savepoint()
            await conn.execute(insert, [second, "undone"])
            await conn.rollback_to_savepoint(name)
            await conn.release_savepoint(await conn.savepoint())
    assert _stored(backend) == [(first, "kept")]


def test_a_failed_statement_aborts_the_transaction(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        conn.autocommit = False
        conn.execute(insert, [1001, "a"])
        with pytest.raises(shardq.IntegrityError):
            conn.execute(insert, [1001, "duplicate"])
        with pytest.raises(shardq.InFailedTransactionError):
            conn.execute("SELECT count(*) FROM items")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(0,)]
        conn.rollback()  # the read opened a transaction again
        conn.autocommit = True


def test_writes_on_several_shards_commit_together_or_are_refused(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 3)
        if backend.dialect == "sqlite":

            def several() -> None:
                with conn.transaction():
                    for key in keys:
                        conn.execute(insert, [key, "x"])

            with pytest.raises(shardq.NotSupportedError, match="two-phase"):
                several()
            assert _stored(backend) == []
            return
        with conn.transaction():
            for key in keys:
                conn.execute(insert, [key, f"n{key}"])
            assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(3,)]
        assert _stored(backend) == [(k, f"n{k}") for k in keys]
        update = backend.sql("UPDATE writes SET note = {} WHERE id = {}")

        def rolled_back() -> None:
            with conn.transaction():
                conn.execute(update, ["y", keys[0]])
                conn.execute(update, ["y", keys[1]])
                raise RuntimeError

        with pytest.raises(RuntimeError):
            rolled_back()
        assert _stored(backend) == [(k, f"n{k}") for k in keys]
        assert _prepared(backend) == []


async def test_the_async_api(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    async with await backend.connect_async() as conn:
        first, second = _keys_on_one_shard(conn, 2)
        async with conn.transaction():
            await conn.execute(insert, [first, "async"])
            async with conn.transaction():
                await conn.execute(insert, [second, "nested"])
        async with conn.transaction():
            with pytest.raises(shardq.NotSupportedError, match="batch inside a transaction"):
                await conn.gather(["SELECT 1"])
    assert _stored(backend) == [(first, "async"), (second, "nested")]


_WRITER = """
import sys, shardq
config = {config!r}
with shardq.connect(config) as conn, conn.transaction():
    for key in {keys!r}:
        conn.execute("INSERT INTO writes (id, note) VALUES (%s, %s)", [key, "crash"])
print("committed", flush=True)
"""


def _kill_writer_at(backend: Backend, keys: list[int], step: str) -> None:
    """Run a writer process inserting ``keys`` in one transaction, killed at ``step``."""
    script = textwrap.dedent(_WRITER.format(config=backend.config, keys=keys))
    env = {**os.environ, "SHARDQ_CRASH_AT": step}
    writer = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert writer.returncode == -9, writer.stderr  # killed at the step (SIGKILL)


@pytest.mark.parametrize(
    ("step", "committed"),
    [
        ("before-decision-row", False),
        ("before-prepare", False),
        ("after-prepare", False),
        ("before-decision", False),
        ("after-decision", True),
        ("between-commits", True),
    ],
)
def test_recover_finishes_what_a_killed_writer_left(
    pg_backend_writes: Backend, step: str, committed: bool
) -> None:
    backend = pg_backend_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 3)
    _kill_writer_at(backend, keys, step)
    with backend.connect() as conn:
        report = conn.recover()
        again = conn.recover()
    assert (again.committed, again.rolled_back, again.in_progress) == ([], [], [])
    assert _prepared(backend) == []
    rows = _stored(backend)
    assert rows == ([(k, "crash") for k in keys] if committed else []), (step, report)


@pytest.fixture
def slow_prepare(pg_backend_writes: Backend) -> Iterator[tuple[Backend, list[int], int]]:
    """Keys of ``writes`` on three shards; the last one's PREPARE sleeps (a deferred trigger).

    The writer's PREPAREs go out at once: the first answered is the fast
    participant's, and a writer killed there (``after-prepare``) leaves the
    slow one's PREPARE still running on its server: the race recovery must
    wait out. Yields the backend, the keys and the slow shard's index.
    """
    backend = pg_backend_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 3)
        slow = max(int(conn.shard_for("writes", key)[1:]) for key in keys)
    backend.direct(
        slow,
        "CREATE FUNCTION slow_prepare() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(current_setting('shardq_test.sleep')::float8); "
        "RETURN NULL; END $$",
    )
    backend.direct(
        slow,
        "CREATE CONSTRAINT TRIGGER slow_prepare AFTER INSERT ON writes "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_prepare()",
    )
    try:
        yield backend, keys, slow
    finally:
        # A failed test may leave a PREPARE asleep, or prepared: its lock would
        # hold the DROP TRIGGER (and the next test's DELETE) forever.
        backend.direct(
            slow,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'PREPARE TRANSACTION%' AND pid <> pg_backend_pid()",
        )
        give_up = time.monotonic() + 10
        while _prepared(backend) or backend.direct(slow, _PREPARING):
            for i in range(4):
                for (gid,) in backend.direct(i, "SELECT gid FROM pg_prepared_xacts"):
                    backend.direct(i, f"ROLLBACK PREPARED '{gid}'")
            assert time.monotonic() < give_up, "a PREPARE outlived its termination"
            time.sleep(0.05)
        database = backend.direct(slow, "SELECT current_database()")[0][0]
        backend.direct(slow, f"ALTER DATABASE {database} RESET shardq_test.sleep")
        backend.direct(slow, "DROP TRIGGER slow_prepare ON writes")
        backend.direct(slow, "DROP FUNCTION slow_prepare()")


_PREPARING = (
    "SELECT pid FROM pg_stat_activity "
    "WHERE query LIKE 'PREPARE TRANSACTION%' AND state = 'active' AND pid <> pg_backend_pid()"
)


def _sleep_in_prepare(backend: Backend, slow: int, seconds: float) -> None:
    """Make the slow shard's deferred trigger sleep ``seconds`` (a database default)."""
    database = backend.direct(slow, "SELECT current_database()")[0][0]
    backend.direct(slow, f"ALTER DATABASE {database} SET shardq_test.sleep = '{seconds}'")


def _recover_until_settled(conn: Any, **options: Any) -> list[Any]:
    """``conn.recover()`` until nothing is in progress (a killed holder's session may linger)."""
    reports = []
    give_up = time.monotonic() + 30
    while True:
        reports.append(conn.recover(**options))
        if not reports[-1].in_progress:
            return reports
        assert time.monotonic() < give_up, reports[-1].in_progress
        time.sleep(0.01)


def test_recover_waits_for_a_prepare_still_on_its_way(
    slow_prepare: tuple[Backend, list[int], int],
) -> None:
    backend, keys, slow = slow_prepare
    _sleep_in_prepare(backend, slow, 1.0)
    killed = time.monotonic()
    _kill_writer_at(backend, keys, "after-prepare")
    with backend.connect() as conn:
        reports = _recover_until_settled(conn)
    # Recovery waited for the slow PREPARE to land, then rolled it back too.
    assert time.monotonic() - killed >= 1.0
    rolled_back = [gid for report in reports for gid in report.rolled_back]
    assert len(rolled_back) == 2, reports  # both participants; the holder aborted on its own
    assert any(gid.startswith(f"s{slow}: ") for gid in rolled_back), rolled_back
    time.sleep(0.2)  # nothing else is on its way
    assert _prepared(backend) == []
    assert _stored(backend) == []
    tagged = "SELECT pid FROM pg_stat_activity WHERE application_name LIKE '%shardq:%'"
    assert [row for i in range(4) for row in backend.direct(i, tagged)] == []


def test_recover_terminates_a_session_that_outlives_its_wait(
    slow_prepare: tuple[Backend, list[int], int],
) -> None:
    backend, keys, slow = slow_prepare
    _sleep_in_prepare(backend, slow, 60.0)
    _kill_writer_at(backend, keys, "after-prepare")
    started = time.monotonic()
    with backend.connect() as conn:
        reports = _recover_until_settled(conn, wait=0.3)
        assert time.monotonic() - started < 30  # not the 60 s of the PREPARE
        assert conn.recover().in_progress == []
    assert _prepared(backend) == []
    assert _stored(backend) == []
    rolled_back = [gid for report in reports for gid in report.rolled_back]
    assert len(rolled_back) == 1, reports  # the fast participant; the slow one was ended
    assert backend.direct(slow, _PREPARING) == []


def test_a_transaction_names_itself_in_its_sessions(pg_backend_writes: Backend) -> None:
    """While open, a transaction's sessions carry its tag after their own name; then not."""
    backend = pg_backend_writes
    query = "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE '%shardq:%'"
    with backend.connect() as conn:
        key = _keys_on_distinct_shards(conn, 1)[0]
        shard = int(conn.shard_for("writes", key)[1:])
        with conn.transaction():
            conn.execute("INSERT INTO writes (id, note) VALUES (%s, %s)", [key, "tagged"])
            (name,) = backend.direct(shard, query)
            assert name[0].startswith("shardq:") or " shardq:" in name[0]
            assert len(name[0].rsplit("shardq:", 1)[1]) == 16
        assert backend.direct(shard, query) == []


@pytest.fixture
def pg_backend_writes(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The PostgreSQL backend, its ``writes`` emptied."""
    for backend in _make_backend(request, "postgres"):
        for i in range(4):
            for (gid,) in backend.direct(i, "SELECT gid FROM pg_prepared_xacts"):
                backend.direct(i, f"ROLLBACK PREPARED '{gid}'")  # a failed test's leftovers
            backend.direct(i, "DELETE FROM writes")
        yield backend


def _prepared(backend: Backend) -> list[tuple[Any, ...]]:
    return [r for i in range(4) for r in backend.direct(i, "SELECT gid FROM pg_prepared_xacts")]


def _toml(config: dict[str, Any]) -> str:
    lines = [f'dialect = "{config["dialect"]}"']
    for shard in config["shards"]:
        lines += ["[[shards]]", f'name = "{shard["name"]}"', f'dsn = "{shard["dsn"]}"']
    for table, spec in config["tables"].items():
        lines.append(f"[tables.{table}]")
        lines += [f"{k} = {'true' if v is True else repr(v)}" for k, v in spec.items()]
    return "\n".join(lines).replace("'", '"') + "\n"


def test_shardq_recover_on_the_command_line(pg_backend_writes: Backend, tmp_path: Any) -> None:
    backend = pg_backend_writes
    assert backend.config is not None
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 2)
    _kill_writer_at(backend, keys, "after-decision")
    assert len(_prepared(backend)) == 1  # the decision is made; one participant is left
    config = tmp_path / "shardq.toml"
    config.write_text(_toml(backend.config))
    cli = [sys.executable, "-m", "shardq.cli", "recover", "-c", str(config)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "1 committed, 0 rolled back" in done.stdout
    assert "pw-" not in done.stdout + done.stderr  # no password in what it prints
    assert _prepared(backend) == []
    assert _stored(backend) == [(k, "crash") for k in keys]


@pytest.fixture(scope="module")
def no_prepared_cluster() -> Iterator[PgCluster]:
    """A cluster started with max_prepared_transactions = 0, a ``writes`` table in it."""
    cluster = PgCluster(name="noprepare", settings={"max_prepared_transactions": "0"})
    try:
        cluster.start()
        cluster.create_database("contract")
        cluster.execute("CREATE TABLE writes (id integer PRIMARY KEY, note text)", "contract")
        yield cluster
    finally:
        cluster.stop()


def test_a_shard_without_prepared_transactions_is_named(
    pg_backend_writes: Backend, no_prepared_cluster: PgCluster
) -> None:
    backend = pg_backend_writes
    config = {
        "dialect": "postgres",
        "shards": [
            backend.config["shards"][0],  # type: ignore[index]
            {"name": "late", "dsn": no_prepared_cluster.dsn("contract")},
        ],
        "tables": {"writes": {"shard_key": "id"}},
    }
    insert = "INSERT INTO writes (id, note) VALUES (%s, %s)"
    with shardq.connect(config) as conn:
        keys = _keys_on_distinct_shards(conn, 2)
        conn.autocommit = False
        for key in keys:
            conn.execute(insert, [key, "x"])
        with pytest.raises(shardq.NotSupportedError, match="'late' has max_prepared_transactions"):
            conn.commit()
        assert not conn.in_transaction
        conn.autocommit = True
        report = conn.check()
        assert any("'late' has max_prepared_transactions = 0" in n for n in report.notes)
        assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(0,)]


def test_a_connection_configured_so_recovers_when_it_opens(pg_backend_writes: Backend) -> None:
    backend = pg_backend_writes
    assert backend.config is not None
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 3)
    _kill_writer_at(backend, keys, "between-commits")
    assert len(_prepared(backend)) == 1  # committed on two shards, one left prepared
    with shardq.connect({**backend.config, "recover_on_connect": True}) as conn:
        assert _prepared(backend) == []
        assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(3,)]


def test_an_update_or_delete_not_pinned_runs_on_every_shard_atomically(
    empty_writes: Backend,
) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 4)
        for key in keys:
            conn.execute(insert, [key, "old"])
        update = "UPDATE writes SET note = 'new' WHERE note = 'old'"
        if backend.dialect == "sqlite":
            with pytest.raises(shardq.UnsupportedQueryError, match="two-phase commit"):
                conn.execute(update)
            return
        cur = conn.execute(update + " RETURNING id")
        assert cur.rowcount == 4
        assert sorted(cur.fetchall()) == [(k,) for k in keys]
        assert _stored(backend) == [(k, "new") for k in keys]
        with pytest.raises(shardq.UnsupportedQueryError, match="in a batch"):
            conn.gather(["DELETE FROM writes"])
        with conn.transaction():
            assert conn.execute("DELETE FROM writes WHERE note = 'new'").rowcount == 4
            assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(0,)]
        assert _stored(backend) == []
        assert _prepared(backend) == []


def test_writes_to_a_reference_table_change_every_copy_alike(backend: Backend) -> None:
    insert = backend.sql("INSERT INTO kinds (code, label) VALUES ({}, {})")
    try:
        with backend.connect() as conn:
            if backend.dialect == "sqlite":
                with pytest.raises(shardq.UnsupportedQueryError, match="no two-phase commit"):
                    conn.execute(insert, ["d", "delta"])
                return
            assert conn.execute(insert, ["d", "delta"]).rowcount == 1  # one copy's count
            cur = conn.execute(
                "UPDATE kinds SET label = upper(label) WHERE code = 'd' RETURNING code"
            )
            assert (cur.rowcount, cur.fetchall()) == (1, [("d",)])  # one copy's rows
            copies = [
                backend.direct(i, "SELECT label FROM kinds WHERE code = 'd'") for i in range(4)
            ]
            assert copies == [[("DELTA",)]] * 4
            for sql, match in [
                ("INSERT INTO kinds (code) VALUES ('e')", "without label"),
                ("UPDATE kinds SET label = now()::text", "another value"),
                ("UPDATE kinds SET label = (SELECT count(*)::text FROM items)", "distributed"),
            ]:
                with pytest.raises(shardq.UnsupportedQueryError, match=match):
                    conn.execute(sql)
            with conn.transaction():  # with a write on a distributed table: one commit
                conn.execute("DELETE FROM kinds WHERE code = 'd'")
                conn.execute(backend.sql("UPDATE items SET val = val WHERE id = {}"), [1])
            assert [
                backend.direct(i, "SELECT 1 FROM kinds WHERE code = 'd'") for i in range(4)
            ] == [[]] * 4
            assert _prepared(backend) == []
    finally:
        for i in range(4):
            backend.direct(i, "DELETE FROM kinds WHERE code = 'd'")


def test_leaving_the_connection_block_commits_or_rolls_back_as_psycopg(
    empty_writes: Backend,
) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        conn.autocommit = False
        conn.execute(insert, [1001, "committed on exit"])
    assert _stored(backend) == [(1001, "committed on exit")]

    def fails() -> None:
        with backend.connect() as conn:
            conn.autocommit = False
            conn.execute(insert, [1002, "rolled back"])
            raise LookupError

    with pytest.raises(LookupError):
        fails()
    assert _stored(backend) == [(1001, "committed on exit")]


async def test_leaving_the_async_connection_block_commits(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    async with await backend.connect_async() as conn:
        conn.autocommit = False
        await conn.execute(insert, [1003, "async exit"])
    assert _stored(backend) == [(1003, "async exit")]


def _in_transaction_sessions(backend: Backend) -> int:
    """Sessions on the shards' databases inside a transaction (other than the asking one)."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
    )
    return sum(backend.direct(i, sql)[0][0] for i in range(4))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_connections_go_back_clean_after_cancellation_error_and_commit(
    empty_writes: Backend,
) -> None:
    import asyncio

    backend = empty_writes
    async with await backend.connect_async() as conn:
        keys = _keys_on_distinct_shards(conn, 2)

        async def slow() -> None:
            async with conn.transaction():
                for key in keys:
                    await conn.execute("INSERT INTO writes (id, note) VALUES (%s, 'c')", [key])
                await conn.execute("SELECT pg_sleep(30) FROM writes")

        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not conn.in_transaction
        assert _stored(backend) == []
        assert _in_transaction_sessions(backend) == 0

        # An error: rolled back, connections clean; then a commit on the same pools.
        async def failing() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO writes (id, note) VALUES (%s, 'e')", [keys[0]])
                await conn.execute("SELECT no_such_column FROM writes")

        with pytest.raises(shardq.ProgrammingError):
            await failing()
        assert _in_transaction_sessions(backend) == 0
        async with conn.transaction():
            for key in keys:
                await conn.execute("INSERT INTO writes (id, note) VALUES (%s, 'ok')", [key])
        assert _in_transaction_sessions(backend) == 0
        # The pooled connections serve plain reads afterwards.
        cur = await conn.execute("SELECT count(*) FROM writes")
        assert await cur.fetchall() == [(2,)]
    assert _stored(backend) == [(k, "ok") for k in keys]
    assert _prepared(backend) == []


def test_a_failed_write_on_every_shard_raises_its_own_error(pg_backend_writes: Backend) -> None:
    # Every copy rejects the duplicate: the first failure cancels the other shards'
    # statements, and a connection whose cancellation was interrupted is closed.
    # The rollback after it must not replace the IntegrityError by its own failure.
    backend = pg_backend_writes
    with backend.connect() as conn:
        for _ in range(5):
            with pytest.raises(shardq.IntegrityError):
                conn.execute("INSERT INTO kinds (code, label) VALUES ('a', 'again')")
            assert conn.execute("SELECT label FROM kinds WHERE code = 'a'").fetchall() == [
                ("alpha",)
            ]
    assert [backend.direct(i, "SELECT label FROM kinds WHERE code = 'a'") for i in range(4)] == [
        [("alpha",)]
    ] * 4
    assert _prepared(backend) == []


def test_executemany_in_a_transaction_is_part_of_it(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    with backend.connect() as conn:
        keys = _keys_on_one_shard(conn, 4)
        conn.autocommit = False
        cur = conn.cursor()
        cur.executemany(insert, [(k, "many") for k in keys[:2]])
        assert cur.rowcount == 2
        # The transaction reads its own rows; other sessions do not see them yet.
        assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(2,)]
        assert _stored(backend) == []
        conn.rollback()
        assert _stored(backend) == []
        cur.executemany(insert, [(k, "kept") for k in keys[2:]])
        with pytest.raises(shardq.IntegrityError) as failure:
            cur.executemany(insert, [(keys[0], "new"), (keys[2], "duplicate")])
        assert "parameter set 1 of executemany" in str(failure.value.__notes__)
        conn.rollback()
        with conn.transaction():
            cur.executemany(insert, [(k, "kept") for k in keys[2:]])
        conn.autocommit = True
        assert _stored(backend) == [(k, "kept") for k in keys[2:]]


def test_cursor_copy_in_reports_its_rows_as_rowcount(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        keys = _keys_on_one_shard(conn, 3)
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM writes")
        loaded = cur.copy_in("writes", [(k, "loaded") for k in keys], ["id", "note"])
        assert (loaded.rowcount, cur.rowcount, cur.description) == (3, 3, None)
        with pytest.raises(shardq.ProgrammingError, match="no statement"):
            cur.fetchall()  # the read before it is gone, as after an INSERT
        with pytest.raises(shardq.IntegrityError):
            cur.copy_in("writes", [(keys[0], "duplicate")], ["id", "note"])
        assert cur.rowcount == -1  # the failed load reports no count, not the last one
    assert _stored(backend) == [(k, "loaded") for k in keys]


async def test_async_cursor_copy_in_reports_its_rows_as_rowcount(empty_writes: Backend) -> None:
    backend = empty_writes
    async with await backend.connect_async() as conn:
        keys = _keys_on_one_shard(conn, 2)
        cur = conn.cursor()
        await cur.copy_in("writes", [(k, "async") for k in keys], ["id", "note"])
        assert cur.rowcount == 2
    assert _stored(backend) == [(k, "async") for k in keys]


def test_executemany_into_a_reference_table(backend: Backend) -> None:
    insert = backend.sql("INSERT INTO kinds (code, label) VALUES ({}, {})")
    try:
        with backend.connect() as conn:
            cur = conn.cursor()
            if backend.dialect == "sqlite":
                with pytest.raises(shardq.UnsupportedQueryError, match="no two-phase commit"):
                    cur.executemany(insert, [("x", "ex"), ("y", "why")])
                return
            cur.executemany(insert, [("x", "ex"), ("y", "why")])  # each writes every copy
            assert cur.rowcount == 2
        copies = [backend.direct(i, "SELECT code FROM kinds WHERE code > 'w'") for i in range(4)]
        assert [sorted(c) for c in copies] == [[("x",), ("y",)]] * 4
        assert _prepared(backend) == []
    finally:
        for i in range(4):
            backend.direct(i, "DELETE FROM kinds WHERE code > 'w'")


def test_decision_rows_are_deleted_with_the_next_decision_and_by_recover(
    pg_backend_writes: Backend,
) -> None:
    backend = pg_backend_writes
    decisions = "SELECT count(*) FROM shardq_commit_decisions"
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 2)
        # The holder is the first written shard in the configuration's order.
        holder = min(int(conn.shard_for("writes", key)[1:]) for key in keys)
        for round_ in range(5):
            with conn.transaction():
                for key in keys:
                    conn.execute(
                        "INSERT INTO writes (id, note) VALUES (%s, %s) "
                        "ON CONFLICT (id) DO UPDATE SET note = excluded.note",
                        [key, f"r{round_}"],
                    )
            # Each decision deletes the rows of the commits this connection finished
            # before it (rows of earlier tests' connections wait for recover()).
            if round_ == 0:
                conn.recover()
                assert backend.direct(holder, decisions) == [(0,)]
            else:
                assert backend.direct(holder, decisions) == [(1,)]
        conn.recover()
        assert backend.direct(holder, decisions) == [(0,)]
    assert _stored(backend) == [(k, "r4") for k in keys]
    assert _prepared(backend) == []


async def test_first_two_phase_commits_at_once_on_a_new_holder_all_commit(
    pg_backend_writes: Backend,
) -> None:
    """Concurrent first commits each find no decisions table: it is made once, none fails.

    PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is no guard against a concurrent
    creator: the second waits for the first's commit, then fails on the catalog's
    unique index, or says the table's type exists, as timing has it (both seen in
    ``benchmarks/soak.py``, in the first second of its runs).
    """
    backend = pg_backend_writes
    assert _prepared(backend) == []  # so no decision row is needed any more
    for i in range(4):
        backend.direct(i, "DROP TABLE IF EXISTS shardq_commit_decisions")
    writers = 6
    conns = [await backend.connect_async() for _ in range(writers)]
    try:
        # Every transaction writes s0 and s1, so s0 holds every decision.
        on: dict[str, list[int]] = {"s0": [], "s1": []}
        for key in range(1000, 3000):
            shard = conns[0].shard_for("writes", key)
            if shard in on and len(on[shard]) < writers:
                on[shard].append(key)
        together = asyncio.Barrier(writers)

        async def write(conn: shardq.AsyncConnection, keys: list[int]) -> None:
            async with conn.transaction():
                for key in keys:
                    await conn.execute("INSERT INTO writes (id, note) VALUES (%s, 'first')", [key])
                await together.wait()  # then all commit at once

        pairs = [[a, b] for a, b in zip(on["s0"], on["s1"], strict=True)]
        await asyncio.gather(*(write(c, k) for c, k in zip(conns, pairs, strict=True)))
    finally:
        for conn in conns:
            await conn.close()
    assert _stored(backend) == sorted((k, "first") for pair in pairs for k in pair)
    assert backend.direct(1, "SELECT to_regclass('shardq_commit_decisions')") == [(None,)]
    assert _prepared(backend) == []
