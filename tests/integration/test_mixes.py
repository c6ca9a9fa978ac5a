"""Every kind of statement after every other, on one connection, on every backend.

A connection's shard connections are pooled: whatever one operation leaves on
them (a stream's libpq mode, an open cursor, a transaction, a cached entry) the
next one meets. Issue 14 found one such leftover: a batch after a scattered
read failed on PostgreSQL. Here each kind of operation runs after each other
kind (every ordered pair, in one de Bruijn sequence), then in random longer
sequences (hypothesis), over the four backends and both APIs, with one
connection per shard so that every operation meets its predecessors' leftovers.
Each operation checks its values against a model of the data, and afterwards
that no shard connection is still lent.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardq
from shardq.cache import CacheRegion, MemoryBackend
from tests.fixtures.shards import PG_DATABASE, TABLES
from tests.integration.test_postgres import sessions, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.shards import Backend

#: Rows read from a shard per round trip: small, so that a scan streams in many chunks.
FETCH_SIZE = 16
SUM_VAL = sum(i * 10 for i in range(1, 201))
GROUPS = [(f"g{i}", 40) for i in range(5)]


class Blocking:
    """The async API shaped like the sync one, for the same operations to drive both.

    Coroutines are run to completion on ``runner``'s loop, cursors wrapped in
    turn, and a batch's async iterator becomes a generator (whose ``close()``
    closes it), as :class:`shardq.Connection` does.
    """

    def __init__(self, runner: asyncio.Runner, target: Any):
        self._runner = runner
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value
        return lambda *args, **kwargs: self._wrap(value(*args, **kwargs))

    def _wrap(self, value: Any) -> Any:
        if inspect.iscoroutine(value):
            value = self._runner.run(value)
        if isinstance(value, shardq.AsyncCursor):
            return Blocking(self._runner, value)
        if isinstance(value, AsyncIterator):
            return self._generator(value)
        return value

    def _generator(self, results: AsyncIterator[Any]) -> Iterator[Any]:
        async def step() -> tuple[bool, Any]:
            try:
                return True, await anext(results)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._runner.run(step())
                if not more:
                    return
                yield item
        finally:

            async def close() -> None:
                await results.aclose()  # type: ignore[attr-defined]

            self._runner.run(close())


@dataclass
class State:
    """What the operations of one connection know: the backend, the data, the cache."""

    backend: Backend
    conn: Any  # a shardq.Connection, or a Blocking AsyncConnection
    engine: Any
    region: CacheRegion
    written: dict[int, str] = field(default_factory=dict)
    step: int = 0
    history: list[str] = field(default_factory=list)

    def sql(self, text: str) -> str:
        return self.backend.sql(text)

    def key(self, offset: int = 0) -> int:
        """A key of ``items`` that moves with each operation, so every shard is visited."""
        return (self.step * 7 + offset * 13) % 200 + 1

    def new_id(self) -> int:
        return 1000 + len(self.written) + 1


LOOKUP = "SELECT id, val FROM items WHERE id = {}"
# Fails on the shard itself (an unknown function), on both dialects.
FAILING = "SELECT nosuchfn(val) FROM items WHERE id = {}"
INSERT = "INSERT INTO writes (id, note) VALUES ({}, {})"
SUBQUERY = "SELECT id FROM items WHERE grp IN (SELECT grp FROM items WHERE id = {}) ORDER BY id"
# A read of every shard that never ends by itself (one pg_sleep per row on PostgreSQL).
ENDLESS = {
    "postgres": "SELECT id, pg_sleep(60) FROM items WHERE val > 0",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT count(*) FROM c, items WHERE items.id = 1",
}
# The same, routed to the shard of one key.
ENDLESS_LOOKUP = {
    "postgres": "SELECT id, pg_sleep(60) FROM items WHERE id = {}",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT count(*) FROM c, items WHERE items.id = {}",
}


def scan(s: State) -> None:
    """A scattered read merged in order, read to its end."""
    cur = s.conn.execute(s.sql("SELECT id, val FROM items WHERE val > {} ORDER BY id"), [500])
    assert cur.fetchall() == [(i, i * 10) for i in range(51, 201)]


def scan_closed_early(s: State) -> None:
    """A scattered read of many chunks, left after a few rows."""
    cur = s.conn.execute("SELECT id FROM items ORDER BY id")
    assert cur.fetchmany(5) == [(i,) for i in range(1, 6)]
    assert cur.fetchone() == (6,)
    cur.close()


def aggregate(s: State) -> None:
    """The read of issue 14: a scattered count, one row per shard."""
    assert s.conn.cursor().execute("SELECT count(*) FROM items").fetchall() == [(200,)]


def routed(s: State) -> None:
    key = s.key()
    assert s.conn.execute(s.sql(LOOKUP), [key]).fetchall() == [(key, key * 10)]


def failing_read(s: State) -> None:
    with pytest.raises(shardq.ShardError):
        s.conn.execute("SELECT nosuchfn(val) FROM items").fetchall()


def gather(s: State) -> None:
    keys = [s.key(i) for i in range(3)]
    results = s.conn.gather(
        [
            "SELECT 1",
            *[(s.sql(LOOKUP), [k]) for k in keys],
            "SELECT grp, count(*) FROM items GROUP BY grp ORDER BY grp",
            "SELECT count(*) FROM writes",
        ]
    )
    assert [r.rows for r in results] == [
        [(1,)],
        *[[(k, k * 10)] for k in keys],
        GROUPS,
        [(len(s.written),)],
    ]


def batch_with_a_failure(s: State) -> None:
    """Lookups on every shard with one failing in their midst (a pipeline cut short)."""
    keys = [s.key(i) for i in range(8)]
    items = [(s.sql(FAILING if i == 3 else LOOKUP), [k]) for i, k in enumerate(keys)]
    results = s.conn.execute_concurrent(items, raise_on_first_error=False)
    assert [r.success for r in results] == [i != 3 for i in range(8)]
    assert isinstance(results[3].result_or_exc, shardq.ShardError)
    assert [r.result_or_exc.rows for r in results if r.success] == [
        [(k, k * 10)] for i, k in enumerate(keys) if i != 3
    ]


def batch_generator(s: State) -> None:
    keys = [s.key(i) for i in range(10)]
    results = s.conn.execute_concurrent_with_args(
        s.sql(LOOKUP), [(k,) for k in keys], concurrency=4, results_generator=True
    )
    assert [r.result_or_exc.rows for r in results] == [[(k, k * 10)] for k in keys]


def batch_generator_left(s: State) -> None:
    """A streamed batch left after two results: the rest is stopped."""
    keys = [s.key(i) for i in range(12)]
    items = [(s.sql(LOOKUP), [k]) for k in keys] + ["SELECT count(*) FROM items"]
    results = s.conn.execute_concurrent(items, concurrency=3, results_generator=True)
    assert next(results).result_or_exc.rows == [(keys[0], keys[0] * 10)]
    assert next(results).result_or_exc.rows == [(keys[1], keys[1] * 10)]
    results.close()


def cached(s: State) -> None:
    """Cached reads: one of items, one of writes (which every write must invalidate)."""
    cur = s.conn.execute("SELECT count(*), sum(val) FROM items", cache=s.region)
    assert cur.fetchall() == [(200, SUM_VAL)]
    cur = s.conn.execute("SELECT id, note FROM writes ORDER BY id", cache=s.region)
    assert cur.fetchall() == sorted(s.written.items())


def write(s: State) -> None:
    new = s.new_id()
    cur = s.conn.execute(s.sql(INSERT), [new, f"n{new}"])
    assert cur.rowcount == 1
    s.written[new] = f"n{new}"


def batch_of_writes(s: State) -> None:
    first = s.new_id()
    rows = [(i, f"b{i}") for i in range(first, first + 3)]
    results = s.conn.execute_concurrent_with_args(s.sql(INSERT), rows)
    assert [r.result_or_exc.rowcount for r in results] == [1, 1, 1]
    s.written.update(rows)


def executemany(s: State) -> None:
    first = s.new_id()
    rows = [(i, f"m{i}") for i in range(first, first + 2)]
    cur = s.conn.cursor()
    cur.executemany(s.sql(INSERT), rows)
    assert cur.rowcount == 2
    s.written.update(rows)


def duplicate_write(s: State) -> None:
    """A write the shard refuses (its key exists), in autocommit: nothing is left open."""
    if not s.written:
        write(s)
    taken = min(s.written)
    with pytest.raises(shardq.IntegrityError):
        s.conn.execute(s.sql(INSERT), [taken, "again"])


def subquery_first(s: State) -> None:
    """A subquery run first, then the statement with its result in place (alone and in a batch).

    SQLite shards gather it to one shard instead (it would compare shipped rows without
    their affinity), in a batch too.
    """
    key = s.key()
    sql = s.sql(SUBQUERY)
    expected = [(i,) for i in range(1, 201) if i % 5 == key % 5]
    assert s.conn.execute(sql, [key]).fetchall() == expected
    (batched, looked_up) = s.conn.gather([(sql, [key]), (s.sql(LOOKUP), [key])])
    assert batched.rows == expected
    assert looked_up.rows == [(key, key * 10)]


def timeouts(s: State) -> None:
    """Statements cut by their timeout, cancelled on the servers: a scattered read, then one
    statement of a batch (alone: the batch's other lookups succeed).

    The lookups go to other shards than the endless statement: on its shard
    they would wait for its only connection, and their time runs while they wait.
    """
    with pytest.raises(shardq.QueryTimeoutError):
        s.conn.execute(ENDLESS[s.backend.dialect], timeout=0.02).fetchall()
    slow = s.key()
    busy = s.conn.shard_for("items", slow)
    keys = [k for k in (s.key(i) for i in range(1, 40)) if s.conn.shard_for("items", k) != busy]
    keys = keys[:4]
    items = [(s.sql(LOOKUP), [k]) for k in keys]
    items.insert(2, (s.sql(ENDLESS_LOOKUP[s.backend.dialect]), [slow]))
    # Six times what a lookup took on a machine running three suites at once (50 ms
    # was not always enough there), and short: the de Bruijn sequence runs this 17
    # times per connection. The endless statement is cut whatever the bound.
    results = s.conn.execute_concurrent(items, raise_on_first_error=False, timeout=0.3)
    assert [r.success for r in results] == [True, True, False, True, True]
    assert isinstance(results[2].result_or_exc, shardq.QueryTimeoutError)
    assert [r.result_or_exc.rows for r in results if r.success] == [[(k, k * 10)] for k in keys]


def read_writes(s: State) -> None:
    """What was written, read back uncached from every shard."""
    cur = s.conn.execute("SELECT id, note FROM writes ORDER BY id")
    assert cur.fetchall() == sorted(s.written.items())


OPERATIONS: dict[str, Callable[[State], None]] = {
    op.__name__: op
    for op in (
        scan,
        scan_closed_early,
        aggregate,
        routed,
        failing_read,
        gather,
        batch_with_a_failure,
        batch_generator,
        batch_generator_left,
        cached,
        write,
        batch_of_writes,
        executemany,
        duplicate_write,
        subquery_first,
        timeouts,
        read_writes,
    )
}


def de_bruijn(symbols: int) -> list[int]:
    """A shortest sequence holding every ordered pair of ``range(symbols)`` as neighbours.

    >>> sequence = de_bruijn(3)
    >>> sorted(set(zip(sequence, sequence[1:]))) == [(a, b) for a in range(3) for b in range(3)]
    True
    >>> len(sequence)
    10
    """
    # The de Bruijn sequence B(symbols, 2) (Lyndon words of length 1 or 2, in
    # order), made linear by repeating its first symbol at the end.
    out: list[int] = []
    for a in range(symbols):
        out.append(a)
        for b in range(a + 1, symbols):
            out += [a, b]
    return [*out, out[0]]


def run(state: State, names: list[str]) -> None:
    """Run the operations ``names`` in order; after each, no more shard connections are lent.

    (No more than before it: none, unless a result is left open meanwhile.)
    """
    for name in names:
        state.history.append(name)
        before = lent(state.engine)
        try:
            OPERATIONS[name](state)
            after = lent(state.engine)
            assert all(n <= before.get(s, 0) for s, n in after.items()), "a connection is lent"
        except BaseException as exc:
            exc.add_note(f"operations on this connection so far: {' -> '.join(state.history)}")
            raise
        state.step += 1


def lent(engine: Any) -> dict[str, int]:
    """The shards whose pool has connections lent (held by a statement or a result)."""
    counts = {name: pool._pool._lent for name, pool in engine.pools.items()}
    for name, pool in engine.pools.items():
        assert pool._pool.size <= pool.max_size, f"{name} opened more than its pool's size"
    return {name: count for name, count in counts.items() if count}


@contextmanager
def one_connection(backend: Backend, api: str, pool_size: int = 1) -> Iterator[State]:
    """A connection of ``api``, ``pool_size`` connections per shard; its pools checked when closed.

    (The PEP 249 adapter has one connection per shard, whatever ``pool_size``.)
    """
    for i in range(4):
        backend.direct(i, "DELETE FROM writes")
    before = [sessions(c) for c in backend.clusters] if backend.name == "postgres" else []
    config = None
    if backend.config is not None:
        config = copy.deepcopy(backend.config)
        for shard in config["shards"]:
            shard["pool_max_size"] = pool_size
    # Each its own cache: the writes table is emptied behind shardq's back.
    region = CacheRegion(MemoryBackend(), ttl=600)
    if api == "sync":
        conn: Any = (
            backend.connect(fetch_size=FETCH_SIZE)
            if config is None
            else shardq.connect(config, fetch_size=FETCH_SIZE)
        )
        with conn:
            engine = conn.async_connection._engine
            yield State(backend, conn, engine, region)
    else:
        with asyncio.Runner() as runner:
            inner = runner.run(
                backend.connect_async()
                if config is None
                else shardq.connect_async(config, fetch_size=FETCH_SIZE)
            )
            engine = inner._engine
            try:
                yield State(backend, Blocking(runner, inner), engine, region)
            finally:
                runner.run(inner.close())
    assert lent(engine) == {}
    assert all(pool._pool.size == 0 for pool in engine.pools.values()), "left open after close"
    for cluster, base in zip(backend.clusters, before, strict=False):
        try:
            wait_until(lambda c=cluster, b=base: sessions(c) <= b, "the shard sessions closed")
        except AssertionError as exc:
            exc.add_note(f"{base} before; now: {_activity(cluster)}")
            raise


def _activity(cluster: Any) -> list[tuple[Any, ...]]:
    """The sessions on the test database: what each runs, in what state, for how long."""
    return cluster.execute(  # type: ignore[no-any-return]
        "SELECT pid, backend_type, state, left(query, 60), round(extract(epoch FROM "
        "now() - query_start)::numeric, 1) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        params=[PG_DATABASE],
    )


@pytest.mark.parametrize("api", ["sync", "async"])
def test_every_operation_after_every_other(backend: Backend, api: str) -> None:
    names = list(OPERATIONS)
    with one_connection(backend, api) as state:
        run(state, [names[i] for i in de_bruijn(len(names))])


@pytest.mark.parametrize("api", ["sync", "async"])
def test_every_operation_while_a_result_is_being_read(backend: Backend, api: str) -> None:
    # A scan left half read while each kind of operation runs, then read to its
    # end: on SQLite its shared lock would make a write wait, then fail as
    # "database is locked". Two connections per shard: the scan holds one.
    every = [(i, i * 10) for i in range(1, 201)]
    with one_connection(backend, api, pool_size=2) as state:
        for name in OPERATIONS:
            held = state.conn.execute("SELECT id, val FROM items ORDER BY id")
            assert held.fetchmany(20) == every[:20]
            run(state, [name])
            assert held.fetchall() == every[20:], name
            assert lent(state.engine) == {}


async def test_a_write_cancelled_while_a_result_is_read_into_memory_loses_no_row(
    sqlite_dataset: list[Path],
) -> None:
    # The write waits for the open scan to be read into memory; cancelled
    # then, it must not take the rows read so far with it.
    config = {
        "dialect": "sqlite",
        "shards": [
            {"name": f"s{i}", "dsn": str(p), "pool_max_size": 1}
            for i, p in enumerate(sqlite_dataset)
        ],
        "tables": TABLES,
    }
    insert = "INSERT INTO writes (id, note) VALUES (?, ?)"
    async with await shardq.connect_async(config, fetch_size=4) as conn:
        await conn.execute(insert, [99998, "x"])  # the catalog is read now, not during the scan
        cur = await conn.execute("SELECT id FROM items ORDER BY id")
        assert await cur.fetchmany(3) == [(1,), (2,), (3,)]
        scatter = cur._result._scatter  # type: ignore[union-attr]
        write = asyncio.ensure_future(conn.execute(insert, [99999, "x"]))
        # Until the write waits for the rows, and some shards' are in memory already.
        for _ in range(100_000):
            kept = [lease for lease in scatter._leases if not lease.stream.holds_connection]
            if scatter._receiving is not None and kept:
                break
            await asyncio.sleep(0)
        assert kept
        assert len(kept) < 4
        assert not scatter._receiving.done()
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert await cur.fetchall() == [(i,) for i in range(4, 201)]
        assert all(pool._pool._lent == 0 for pool in conn._engine.pools.values())
        await conn.execute("DELETE FROM writes WHERE id IN (99998, 99999)")


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(
    api=st.sampled_from(["sync", "async"]),
    names=st.lists(st.sampled_from(list(OPERATIONS)), min_size=3, max_size=12),
)
def test_random_sequences_of_operations(backend: Backend, api: str, names: list[str]) -> None:
    with one_connection(backend, api) as state:
        run(state, names)
