"""Concurrent batches on every backend: the same answers as one statement at a time.

``execute_concurrent``, ``execute_concurrent_with_args``, ``gather``, the list
form of ``execute`` and ``executemany`` run on PostgreSQL (psycopg), SQLite,
and the PEP 249 adapter over psycopg2 and sqlite3.
"""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

import shardq
from tests.fixtures.shards import ITEMS, Backend

if TYPE_CHECKING:
    from collections.abc import Iterator


def statements(backend: Backend) -> list[Any]:
    """Routed lookups interleaved with scattered, merged reads."""
    lookup = backend.sql("SELECT id, grp, val FROM items WHERE id = {}")
    out: list[Any] = []
    for key in range(1, 41):
        out.append((lookup, [key]))
        if key % 10 == 0:
            out.append("SELECT grp, count(*), sum(val) FROM items GROUP BY grp ORDER BY grp")
            out.append("SELECT id FROM items ORDER BY val DESC LIMIT 3")
            out.append("SELECT code, label FROM kinds ORDER BY code")
    return out


def one_by_one(backend: Backend, items: list[Any]) -> list[list[tuple[Any, ...]]]:
    with backend.connect() as conn:
        return [
            conn.execute(*(item if isinstance(item, tuple) else (item,))).fetchall()
            for item in items
        ]


async def test_results_come_in_input_order_and_match_one_by_one(backend: Backend) -> None:
    items = statements(backend)
    expected = one_by_one(backend, items)
    async with await backend.connect_async() as conn:
        results = await conn.execute_concurrent(items, concurrency=7)
    assert [r.success for r in results] == [True] * len(items)
    assert [r.result_or_exc.rows for r in results] == expected
    lookup = results[0].result_or_exc
    assert [c.name for c in lookup.description] == ["id", "grp", "val"]
    assert lookup.rowcount == 1
    assert list(lookup) == [ITEMS[0]]
    assert lookup.shards == (conn.shard_for("items", 1),)
    merged = results[10].result_or_exc  # the GROUP BY, after keys 1..10
    with backend.connect() as sync:
        alone = sync.execute(items[10]).description
    assert merged.description == alone
    assert len(merged.shards) == 4


def test_sync_twin_and_generator_mode(backend: Backend) -> None:
    items = statements(backend)
    expected = one_by_one(backend, items)
    with backend.connect() as conn:
        listed = conn.execute_concurrent(items, concurrency=5)
        assert [r.result_or_exc.rows for r in listed] == expected
        streamed = conn.execute_concurrent(items, concurrency=5, results_generator=True)
        assert not isinstance(streamed, list)
        assert [r.result_or_exc.rows for r in streamed] == expected
        # Leaving a generator early stops its batch; the connection goes on.
        partial = conn.execute_concurrent(iter(items), concurrency=3, results_generator=True)
        assert next(partial).result_or_exc.rows == expected[0]
        partial.close()
        assert conn.execute(*items[0]).fetchall() == expected[0]


def test_failures_come_back_in_place_or_stop_the_batch(backend: Backend) -> None:
    lookup = backend.sql("SELECT val FROM items WHERE id = {}")
    zero = backend.sql("SELECT 1 / (val - val) FROM items WHERE id = {}")
    items: list[Any] = [
        (lookup, [1]),
        "SELECT * FROM items WHERE (",
        "SELECT * FROM nowhere_declared",
        (zero, [3]),
        "SELECT id FROM items ORDER BY id LIMIT 2",
    ]
    with backend.connect() as conn:
        results = conn.execute_concurrent(items, raise_on_first_error=False)
        assert [r.success for r in results] == [
            True,
            False,
            False,
            backend.dialect == "sqlite",
            True,
        ]
        assert results[0].result_or_exc.rows == [(10,)]
        assert isinstance(results[1].result_or_exc, shardq.SQLSyntaxError)
        assert isinstance(results[2].result_or_exc, shardq.UndeclaredTableError)
        if backend.dialect == "postgres":  # SQLite divides by zero into NULL
            error = results[3].result_or_exc
            assert isinstance(error, shardq.DataError)
            assert isinstance(error, shardq.ShardError)
            assert error.shard == conn.shard_for("items", 3)
            assert "statement 3 of the batch" in "".join(error.__notes__)
        assert results[4].result_or_exc.rows == [(1,), (2,)]
        # One error stops the batch and is raised, naming the statement.
        with pytest.raises(shardq.SQLSyntaxError) as info:
            conn.execute_concurrent(items)
        assert "statement 1 of the batch" in "".join(info.value.__notes__)


def test_bad_sql_in_a_list_fails_before_any_shard_is_touched(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    items = [(insert, [i, "x"]) for i in range(1, 11)] + ["INSERT INTO writes VALUES (("]
    with backend.connect() as conn, pytest.raises(shardq.SQLSyntaxError):
        conn.execute_concurrent(items)
    assert sum(len(backend.direct(i, "SELECT id FROM writes")) for i in range(4)) == 0


def test_with_args_gather_and_list_execute(empty_writes: Backend) -> None:
    backend = empty_writes
    insert = backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})")
    lookup = backend.sql("SELECT note FROM writes WHERE id = {}")
    with backend.connect() as conn:
        written = conn.execute_concurrent_with_args(insert, [(i, f"n{i}") for i in range(1, 31)])
        assert [r.result_or_exc.rowcount for r in written] == [1] * 30
        read = conn.execute_concurrent_with_args(lookup, ((i,) for i in range(1, 31)))
        assert [r.result_or_exc.rows for r in read] == [[(f"n{i}",)] for i in range(1, 31)]
        count, first = conn.gather(["SELECT count(*) FROM writes", (lookup, [1])])
        assert count.rows == [(30,)]
        assert first.rows == [("n1",)]
        listed = conn.execute(["SELECT count(*) FROM writes", lookup], [None, [2]])
        assert [r.rows for r in listed] == [[(30,)], [("n2",)]]
        with pytest.raises(shardq.ProgrammingError, match="same length"):
            conn.execute(["SELECT 1", "SELECT 2"], [None])
    placed = {i: backend.shard_names.index(conn.shard_for("writes", i)) for i in range(1, 31)}
    for key, shard in placed.items():
        rows = backend.direct(shard, f"SELECT note FROM writes WHERE id = {key}")
        assert rows == [(f"n{key}",)]


def test_executemany_applies_each_shards_writes_in_order(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        cur = conn.cursor()
        cur.executemany(
            backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})"),
            ((i, "start") for i in range(1, 5)),
        )
        assert cur.rowcount == 4
        # The same rows updated many times: the last value given must win.
        updates = [(f"v{step}", key) for step in range(25) for key in range(1, 5)]
        cur.executemany(backend.sql("UPDATE writes SET note = {} WHERE id = {}"), updates)
        assert cur.rowcount == 100
        cur.execute("SELECT id, note FROM writes ORDER BY id")
        assert cur.fetchall() == [(key, "v24") for key in range(1, 5)]


def test_progress_reports_completed_failed_and_total(backend: Backend) -> None:
    seen: list[shardq.Progress] = []
    items = [*statements(backend)[:12], "SELECT * FROM items WHERE ("]
    with backend.connect() as conn:
        conn.execute_concurrent(items, raise_on_first_error=False, progress=seen.append)
        assert len(seen) == len(items)
        assert seen[-1] == shardq.Progress(len(items), 1, len(items))
        assert [p.completed for p in seen] == list(range(1, len(items) + 1))
        seen.clear()
        conn.execute_concurrent(iter(items[:5]), progress=seen.append)
        assert seen[-1].completed == 5
        assert seen[-1].total == 5  # known once the iterator is exhausted


async def test_sqlalchemy_statements_are_compiled_with_their_parameters(
    backend: Backend,
) -> None:
    items_table = sa.table("items", sa.column("id"), sa.column("grp"), sa.column("val"))
    by_key = sa.select(items_table.c.val).where(items_table.c.id == sa.bindparam("key"))
    grouped = (
        sa.select(items_table.c.grp, sa.func.count().label("n"))
        .where(items_table.c.val > 1000)
        .group_by(items_table.c.grp)
        .order_by(items_table.c.grp)
    )
    async with await backend.connect_async() as conn:
        results = await conn.execute_concurrent(
            [
                (by_key, {"key": 7}),
                grouped,
                sa.select(items_table.c.id).where(items_table.c.id == 9),
            ]
        )
        assert results[0].result_or_exc.rows == [(70,)]
        assert results[0].result_or_exc.shards == (conn.shard_for("items", 7),)
        expected = one_by_one(
            backend, ["SELECT grp, count(*) FROM items WHERE val > 1000 GROUP BY grp ORDER BY grp"]
        )[0]
        assert results[1].result_or_exc.rows == expected
        assert results[2].result_or_exc.rows == [(9,)]
        assert results[2].result_or_exc.shards == (conn.shard_for("items", 9),)
        looked_up = await conn.execute_concurrent_with_args(by_key, [{"key": k} for k in (1, 2)])
        assert [r.result_or_exc.rows for r in looked_up] == [[(10,)], [(20,)]]
        with pytest.raises(shardq.ProgrammingError, match="mapping"):
            await conn.execute_concurrent_with_args(by_key, [(1,)])


async def test_async_iterables_and_generator_results(backend: Backend) -> None:
    lookup = backend.sql("SELECT val FROM items WHERE id = {}")

    async def keys() -> Any:
        for key in range(1, 21):
            await asyncio.sleep(0)
            yield (key,)

    async with await backend.connect_async() as conn:
        results = await conn.execute_concurrent_with_args(
            lookup, keys(), concurrency=4, results_generator=True
        )
        values = [r.result_or_exc.rows[0][0] async for r in results]
        assert values == [key * 10 for key in range(1, 21)]


# A statement that fails in each way a batch can meet: refused by the planner,
# not planned at all (bad SQL, undeclared table), or failing on a shard.
FAILURES: dict[str, tuple[str, type[Exception]]] = {
    # (each row could move to another shard: refused alone, in a batch, in executemany)
    "refusal": ("UPDATE writes SET id = id + 1", shardq.UnsupportedQueryError),
    "syntax": ("SELECT * FROM items WHERE (", shardq.SQLSyntaxError),
    "undeclared": ("SELECT * FROM nowhere_declared", shardq.UndeclaredTableError),
    "shard": ("SELECT no_such_column FROM items", shardq.ShardError),
}
MERGED = "SELECT grp, count(*) FROM items GROUP BY grp ORDER BY grp"


def _around(bad: str, at: int = 3, total: int = 40) -> Iterator[str]:
    """Merged reads with ``bad`` at ``at``: an iterator, so nothing is checked up front."""
    for index in range(total):
        yield bad if index == at else MERGED


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failure_leaves_no_statement_unawaited_sync(backend: Backend, failure: str) -> None:
    # Statements started but not yet running when the batch stopped used to be
    # dropped as never-awaited coroutines ("coroutine 'Engine.run' was never
    # awaited"): filterwarnings=error turns that warning into a failure here.
    bad, error = FAILURES[failure]
    with backend.connect() as conn:
        with pytest.raises(error):
            conn.execute_concurrent(_around(bad), concurrency=8)
        with pytest.raises(error):
            list(conn.execute_concurrent(_around(bad), concurrency=8, results_generator=True))
        if failure == "shard":  # a list is checked first: only a shard error gets this far
            with pytest.raises(error):
                conn.execute_concurrent(list(_around(bad)), concurrency=8)
        results = conn.execute_concurrent(_around(bad), concurrency=8, raise_on_first_error=False)
        assert [r.success for r in results] == [i != 3 for i in range(40)]
        assert isinstance(results[3].result_or_exc, error)
        # Leaving a generator early withdraws the statements not yet running.
        early = conn.execute_concurrent(
            _around(bad, at=30), concurrency=8, raise_on_first_error=False, results_generator=True
        )
        assert next(early).success
        early.close()
        with pytest.raises(error):
            conn.cursor().executemany(bad, [()] * 20)
        assert conn.execute(MERGED).fetchall() == one_by_one(backend, [MERGED])[0]
    gc.collect()  # a dropped coroutine warns when it is collected: now, within this test


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failure_leaves_no_statement_unawaited_async(
    backend: Backend, failure: str
) -> None:
    bad, error = FAILURES[failure]
    async with await backend.connect_async() as conn:
        with pytest.raises(error):
            await conn.execute_concurrent(_around(bad), concurrency=8)
        results = await conn.execute_concurrent(
            _around(bad), concurrency=8, raise_on_first_error=False
        )
        assert [r.success for r in results] == [i != 3 for i in range(40)]
        streamed = await conn.execute_concurrent(
            _around(bad), concurrency=8, results_generator=True
        )
        with pytest.raises(error):
            async for _ in streamed:
                pass
        with pytest.raises(error):
            await conn.cursor().executemany(bad, [()] * 20)
        with pytest.raises(error):
            await conn.gather(_around(bad))
    gc.collect()
