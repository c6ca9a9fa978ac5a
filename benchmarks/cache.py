"""Result cache: hit latency and a stampede, shardq's cache beside dogpile.cache's.

Four throw-away PostgreSQL clusters hold one shard each of a distributed table

    events (id bigint primary key, name text, amount numeric(12, 2),
            at timestamptz, active boolean, score float8)

of ``--rows`` rows (4,000 by default, from a fixed seed, placed by shardq's own
``Config.shard_for("events", id)`` and loaded with ``COPY``), and one
throw-away Redis server (with a password) holds the Redis caches. The read
cached is

    SELECT id, name, amount, at, active, score FROM events ORDER BY at DESC, id LIMIT 100

exactly 100 rows of mixed types (int, text, numeric, timestamptz, bool,
float8), merged by shardq from the four shards' first 100.

**Hit latency.** Each contender is called ``--calls`` times (5,000; 1,000 with
``--quick``) after untimed warm-up calls (the first of which fills its cache),
each call timed alone with :func:`time.perf_counter` (inside the event loop for
asyncio contenders), and the table gives the p50 and p99 in microseconds. The
calls are made in 5 rounds, the contenders taking turns in an order rotated by
one each round, so drift in the machine's load affects them all alike; the
garbage collector runs (``gc.collect()``) before each contender's turn and is
left enabled, so a p99 may hold a collection. The contenders:

1. shardq async, memory: ``await (await conn.execute(sql, cache=region)).fetchall()``
   on a :class:`shardq.AsyncConnection`, ``region`` a
   ``CacheRegion(MemoryBackend(), ttl=3600)`` (the user-facing hit path:
   statement analysis memo, key hash, region, cursor, rows);
2. shardq async, memory: the bare region call ``await region.get_or_create(key,
   ("events",), creator)``, ``creator`` running the query uncached (never called
   on a hit);
3. and 4. the same two with a ``CacheRegion(RedisBackend(url, prefix=...))``;
5. and 6. shardq sync (DB-API): ``conn.execute(sql, cache=True).fetchall()`` on
   ``shardq.connect(config, cache=True)`` whose ``[cache]`` is ``memory://``,
   then the Redis server;
7. dogpile.cache memory: ``region.get_or_create(key, creator)`` on
   ``make_region().configure("dogpile.cache.memory", expiration_time=3600)``,
   caching the same 100 rows (a list of tuples; ``creator`` returns the
   uncached answer, computed beforehand: it is never called on a hit);
8. dogpile.cache Redis: the same on ``"dogpile.cache.redis"`` (``host``, ``port``,
   ``password``, ``db`` and nothing else: its default pickle serializer);
9. shardq async uncached: ``await (await conn.execute(sql)).fetchall()``, for scale.

Every call's rows are compared, untimed, with the uncached answer (itself
checked against the rows loaded): "ok", or "WRONG" and how many differed.

**Stampede.** 200 callers ask at once for a key nobody has computed, whose
computation takes 0.5 s. Each variant has a fresh key (a fresh Redis prefix),
and runs in child processes started by this script (``--child``, its spec on
stdin), so that callers left hanging can be ended by pid without hanging the
benchmark. Every process opens its connections before a wall-clock instant
passed to all of them (4 s after they are spawned), sleeps until then and
releases its callers together (a :class:`threading.Barrier`, or
``asyncio.gather``); a caller's wait is from that release to its answer. To
open its connections, each process first reads another key once uncached
(shardq: the shard's pool) and then as many times at once as it has callers,
in the same way (threads or tasks) as the stampede, so that its Redis pool
holds the connections a burst needs, as in a process that has been serving
for a while; ``--cold-pools`` makes that a single read (the pools then grow
during the stampede). The variants:

1. shardq, 1 process x 200 threads on one shared sync connection
   (``shardq.connect(config, cache=True)``, threadsafety 2, ``[cache]`` the Redis
   server), each calling ``conn.execute(sql, [id]).fetchall()``;
2. shardq, 4 processes x 50 asyncio tasks on one :class:`shardq.AsyncConnection`
   each, sharing the Redis server;
3. dogpile.cache Redis backend with ``distributed_lock=True`` (and
   ``thread_local_lock=False``, as its documentation says to with a distributed
   lock; every other argument at its default, so redis-py's default connection
   pool, whose size is printed), 1 process x 200 threads;
4. the same, 4 processes x 50 threads.

shardq's computation is the query ``SELECT id, nextval('stampede_calls') AS
call, clock_timestamp() AS began, pg_sleep(0.5)::text AS slept FROM events
WHERE id = %s`` (one shard, 0.5 s): the computations are counted by the
shards' sequences. dogpile's creator ``INCR``-s a counter in Redis (on a
client of its own), notes the time and sleeps 0.5 s. For each variant: the
computations, the errors (exceptions raised to callers; dogpile's
``MaxConnectionsError`` when its pool runs out counts here), the callers
served, how many different results they got, when the computation began after
the instant (how long the callers' own lookups and the lock took to get it
going), and the wait p50 and max.

**Aims** (informational: the script exits 0 either way): shardq's memory hit
p50 at most dogpile memory's and under 20 us, its Redis hit p50 at most dogpile
Redis's and under 250 us, both judged on the bare region call (the line
comparable with dogpile's ``region.get_or_create``; the ``conn.execute`` lines
are printed beside them for reference); and for each shardq stampede variant
exactly 1 computation, 0 errors and every caller served within 0.6 s.

``--json PATH`` also writes the results, after the run, to PATH as JSON (the
scenario, the command, the machine, a table of hit p50s in microseconds, their
p99s in the notes, a table of the stampedes' max waits in seconds, their
computations, errors and wait p50s in the notes, and every aim with its
verdict), printing nothing more.

The servers are started with the test suite's helpers
(``tests.fixtures.servers.start_pg_clusters``, ``RedisServer``) and stopped
with their ``stop()`` (by pid) at the end, whatever happens (SIGTERM, as sent
by ``timeout``, is handled like Ctrl-C).

Run it from anywhere (it needs the PostgreSQL server programs, redis-server,
psycopg 3, redis-py, dogpile.cache and shardq installed)::

    python benchmarks/cache.py
    python benchmarks/cache.py --quick
    python benchmarks/cache.py --calls 20000 --callers 400
    python benchmarks/cache.py --quick --json cache.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dogpile
import psycopg
import redis
from _common import command_line, interrupt_on_sigterm, stamp
from dogpile.cache import make_region

import shardq
from shardq.cache import CacheRegion, MemoryBackend, RedisBackend, Result

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.fixtures.servers import PgCluster, RedisServer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_cache"
SEED = 20240611
TTL = 3600
COLUMNS = "id, name, amount, at, active, score"
SQL = f"SELECT {COLUMNS} FROM events ORDER BY at DESC, id LIMIT 100"
TABLES = ("events",)
HIT_ROWS = 100
SLEEP = 0.5
STAMPEDE_SQL = (
    "SELECT id, nextval('stampede_calls') AS call, clock_timestamp() AS began, "
    f"pg_sleep({SLEEP})::text AS slept FROM events WHERE id = %s"
)
WARM_SQL = "SELECT id, name FROM events WHERE id = %s"
STAMPEDE_ID = 7
PROCESSES = 4
LEAD_SECONDS = 4.0  # from spawning the children to the stampede: imports, connections
CHILD_TIMEOUT = 60.0  # after the stampede's instant: callers still waiting then are cut off
ROUNDS = 5
MEMORY_AIM_US = 20.0
REDIS_AIM_US = 250.0
WAIT_AIM = 0.6

ASYNC_MEM = "shardq async memory: conn.execute + fetchall"
ASYNC_MEM_BARE = "shardq async memory: region.get_or_create"
ASYNC_REDIS = "shardq async Redis: conn.execute + fetchall"
ASYNC_REDIS_BARE = "shardq async Redis: region.get_or_create"
SYNC_MEM = "shardq sync memory: conn.execute().fetchall()"
SYNC_REDIS = "shardq sync Redis: conn.execute().fetchall()"
DOGPILE_MEM = "dogpile memory: region.get_or_create"
DOGPILE_REDIS = "dogpile Redis: region.get_or_create"
UNCACHED = "shardq async uncached: conn.execute + fetchall"
MEMORY_LINES = (ASYNC_MEM, ASYNC_MEM_BARE, SYNC_MEM)
REDIS_LINES = (ASYNC_REDIS, ASYNC_REDIS_BARE, SYNC_REDIS)
DOGPILE_LINES = (DOGPILE_MEM, DOGPILE_REDIS)

Row = tuple[Any, ...]


# --------------------------------------------------------------------------- servers and data


def _import_fixtures() -> None:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def start_redis() -> RedisServer:
    """Start one Redis server with the test suite's helper."""
    _import_fixtures()
    from tests.fixtures.servers import RedisServer

    server = RedisServer()
    server.start()
    return server


def start_clusters() -> list[PgCluster]:
    """Start the 4 shard clusters with the test suite's helper."""
    _import_fixtures()
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(SHARDS, prefix="bench_cache")


def shardq_config(dsns: Sequence[str], cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shardq configuration, with a ``[cache]`` section if given."""
    config: dict[str, Any] = {
        "dialect": "postgres",
        "driver": "psycopg",
        "shards": [{"name": f"s{i}", "dsn": dsn} for i, dsn in enumerate(dsns)],
        "tables": {"events": {"shard_key": "id"}},
    }
    if cache is not None:
        config["cache"] = cache
    return config


def generate(rows: int) -> list[Row]:
    """The rows of ``events``, from the fixed seed."""
    rng = random.Random(SEED)
    epoch = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return [
        (
            id_,
            f"event-{id_:05d}-{rng.getrandbits(32):08x}",
            Decimal(rng.randrange(-(10**7), 10**7)).scaleb(-2),
            epoch + datetime.timedelta(seconds=rng.randrange(10**8), microseconds=id_),
            rng.random() < 0.5,
            rng.random() * 1000,
        )
        for id_ in range(1, rows + 1)
    ]


def expected_answer(rows: Sequence[Row]) -> list[Row]:
    """What :data:`SQL` returns: ORDER BY at DESC, id; LIMIT 100."""
    by_id = sorted(rows, key=lambda r: r[0])
    return sorted(by_id, key=lambda r: r[3], reverse=True)[:HIT_ROWS]


def prepare(clusters: Sequence[PgCluster], count: int) -> tuple[list[str], list[Row]]:
    """Create and load ``events`` (and the stampede's sequence) on every shard."""
    schema = (
        "CREATE TABLE events (id bigint PRIMARY KEY, name text NOT NULL, "
        "amount numeric(12, 2) NOT NULL, at timestamptz NOT NULL, active boolean NOT NULL, "
        "score float8 NOT NULL); CREATE SEQUENCE stampede_calls"
    )
    for cluster in clusters:
        cluster.create_database(DBNAME)
        cluster.execute(schema, DBNAME)
    dsns = [cluster.dsn(DBNAME) for cluster in clusters]
    placed = shardq.load_config(shardq_config(dsns))
    rows = generate(count)
    by_shard: dict[str, list[Row]] = {name: [] for name in placed.shard_names}
    for row in rows:
        by_shard[placed.shard_for("events", row[0])].append(row)
    for name, dsn in zip(placed.shard_names, dsns, strict=True):
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            conn.cursor() as cur,
            cur.copy(f"COPY events ({COLUMNS}) FROM STDIN") as copy,
        ):
            for row in by_shard[name]:
                copy.write_row(row)
    for cluster in clusters:
        cluster.execute("VACUUM (ANALYZE) events", DBNAME)
    return dsns, rows


# --------------------------------------------------------------------------- hit latency


@dataclass(slots=True)
class Latency:
    """One contender's timed calls, in seconds, and how many answers were wrong."""

    name: str
    label: str
    samples: list[float] = field(default_factory=list)
    calls_checked: int = 0
    wrong: int = 0
    failure: str | None = None

    def quantile(self, q: int) -> float:
        """The ``q``-th percentile (1..99)."""
        return statistics.quantiles(self.samples, n=100, method="inclusive")[q - 1]

    @property
    def p50(self) -> float:
        return self.quantile(50)

    @property
    def p99(self) -> float:
        return self.quantile(99)

    @property
    def answers(self) -> str:
        if not self.wrong:
            return f"ok ({self.calls_checked:,} calls checked)"
        return f"WRONG in {self.wrong:,} of {self.calls_checked:,} calls"


Call = Callable[[], Any]  # returns the rows, or an awaitable of them


class Hits:
    """The hit-latency contenders, their connections and regions open while in use."""

    def __init__(
        self,
        dsns: Sequence[str],
        redis_server: RedisServer,
        prefix: str,
        runner: asyncio.Runner,
    ):
        self.dsns = list(dsns)
        self.redis_server = redis_server
        self.prefix = prefix
        self.runner = runner
        self.expected: list[Row] = []
        self._sync_stack = contextlib.ExitStack()
        self._async_stack = contextlib.AsyncExitStack()
        self._plain: shardq.AsyncConnection | None = None
        self._cached: shardq.AsyncConnection | None = None
        self._memory: CacheRegion | None = None
        self._redis: CacheRegion | None = None
        self._sync_memory: shardq.Connection | None = None
        self._sync_redis: shardq.Connection | None = None
        self._dogpile_memory: Any = None
        self._dogpile_redis: Any = None
        self.dogpile_pool = ""

    # -- lifecycle

    def open(self) -> None:
        try:
            self.runner.run(self._open_async())
            self._open_sync()
        except BaseException:
            self.close()
            raise

    async def _open_async(self) -> None:
        stack = self._async_stack
        config = shardq_config(self.dsns)
        self._plain = await stack.enter_async_context(shardq.AsyncConnection(config))
        self._cached = await stack.enter_async_context(shardq.AsyncConnection(config))
        self._memory = CacheRegion(MemoryBackend(), ttl=TTL, name="bench-memory")
        stack.push_async_callback(self._memory.close)
        backend = RedisBackend(self.redis_server.url, prefix=f"{self.prefix}async:")
        self._redis = CacheRegion(backend, ttl=TTL, name="bench-redis")
        stack.push_async_callback(self._redis.close)
        self.expected = await self._uncached()

    def _open_sync(self) -> None:
        stack = self._sync_stack
        memory = shardq_config(self.dsns, {"url": "memory://", "ttl": TTL})
        self._sync_memory = stack.enter_context(shardq.connect(memory, cache=True))
        redis_cache = {"url": self.redis_server.url, "prefix": f"{self.prefix}sync:", "ttl": TTL}
        self._sync_redis = stack.enter_context(
            shardq.connect(shardq_config(self.dsns, redis_cache), cache=True)
        )
        self._dogpile_memory = make_region().configure("dogpile.cache.memory", expiration_time=TTL)
        server = self.redis_server
        self._dogpile_redis = make_region().configure(
            "dogpile.cache.redis",
            expiration_time=TTL,
            arguments={
                "host": server.host,
                "port": server.port,
                "password": server.password,
                "db": 0,
            },
        )
        pool = self._dogpile_redis.backend.writer_client.connection_pool
        self.dogpile_pool = f"{type(pool).__name__}(max_connections={pool.max_connections})"

    def close(self) -> None:
        try:
            self.runner.run(self._async_stack.aclose())
        finally:
            self._sync_stack.close()

    # -- the contenders: each returns the rows, or an awaitable of them

    def contenders(self) -> dict[str, tuple[bool, Call]]:
        """``name -> (is_async, call)`` in the order of the table."""
        assert self._cached is not None
        assert self._memory is not None
        assert self._redis is not None
        assert self._sync_memory is not None
        assert self._sync_redis is not None
        cached, memory, redis_region = self._cached, self._memory, self._redis
        sync_memory, sync_redis = self._sync_memory, self._sync_redis
        dogpile_memory, dogpile_redis = self._dogpile_memory, self._dogpile_redis
        expected = self.expected

        async def execute(region: CacheRegion) -> list[Row]:
            cur = await cached.execute(SQL, cache=region)
            rows: list[Row] = await cur.fetchall()
            return rows

        async def bare(region: CacheRegion) -> list[Row]:
            return (await region.get_or_create("bench-hit", TABLES, self._creator)).rows

        def rows() -> list[Row]:
            return list(expected)

        return {
            ASYNC_MEM: (True, lambda: execute(memory)),
            ASYNC_MEM_BARE: (True, lambda: bare(memory)),
            ASYNC_REDIS: (True, lambda: execute(redis_region)),
            ASYNC_REDIS_BARE: (True, lambda: bare(redis_region)),
            SYNC_MEM: (False, lambda: sync_memory.execute(SQL, cache=True).fetchall()),
            SYNC_REDIS: (False, lambda: sync_redis.execute(SQL, cache=True).fetchall()),
            DOGPILE_MEM: (False, lambda: dogpile_memory.get_or_create("bench-hit", rows)),
            DOGPILE_REDIS: (False, lambda: dogpile_redis.get_or_create("bench-hit", rows)),
            UNCACHED: (True, self._uncached),
        }

    async def _uncached(self) -> list[Row]:
        assert self._plain is not None
        cur = await self._plain.execute(SQL)
        rows: list[Row] = await cur.fetchall()
        return rows

    async def _creator(self) -> Result:
        assert self._plain is not None
        cur = await self._plain.execute(SQL)
        rows = await cur.fetchall()
        return Result(cur.description, rows, len(rows), cur.shards)

    # -- timing

    def timed(self, is_async: bool, call: Call, n: int) -> tuple[list[float], int]:
        """``n`` calls, each timed alone; the samples and how many answers were wrong."""
        if is_async:
            return self.runner.run(self._timed_async(call, n))
        expected = self.expected
        clock = time.perf_counter
        samples = [0.0] * n
        wrong = 0
        for i in range(n):
            start = clock()
            rows = call()
            samples[i] = clock() - start
            if rows != expected:
                wrong += 1
        return samples, wrong

    async def _timed_async(self, call: Call, n: int) -> tuple[list[float], int]:
        expected = self.expected
        clock = time.perf_counter
        samples = [0.0] * n
        wrong = 0
        for i in range(n):
            start = clock()
            rows = await call()
            samples[i] = clock() - start
            if rows != expected:
                wrong += 1
        return samples, wrong


def measure_hits(hits: Hits, calls: int, warmup: int) -> list[Latency]:
    """Warm every contender up, then ``calls`` timed calls each, in rotating rounds."""
    contenders = hits.contenders()
    tallies = {name: Latency(name, name) for name in contenders}
    names = list(contenders)
    per_round = [calls // ROUNDS + (1 if r < calls % ROUNDS else 0) for r in range(ROUNDS)]

    def run(name: str, n: int, timed: bool) -> None:
        tally = tallies[name]
        if tally.failure is not None or n == 0:
            return
        gc.collect()
        is_async, call = contenders[name]
        try:
            samples, wrong = hits.timed(is_async, call, n)
        except Exception as exc:
            tally.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return
        tally.calls_checked += n
        tally.wrong += wrong
        if timed:
            tally.samples += samples

    print(f"warming up ({warmup} untimed calls each, the first a miss)...", flush=True)
    for name in names:
        run(name, warmup, timed=False)
    for round_, n in enumerate(per_round):
        print(f"round {round_ + 1} of {ROUNDS}: {n:,} calls each...", flush=True)
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            run(name, n, timed=True)
    return list(tallies.values())


# --------------------------------------------------------------------------- stampede


@dataclass(slots=True)
class Stampede:
    """What one stampede variant did."""

    label: str
    shardq: bool
    callers: int
    computations: int = 0
    waits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: set[Any] = field(default_factory=set)
    unanswered: int = 0  # callers still waiting when their process was cut off
    released: list[float] = field(default_factory=list)  # each process, after the instant
    margins: list[float] = field(default_factory=list)  # each process ready this early
    notes: list[str] = field(default_factory=list)
    start: float = 0.0  # the wall-clock instant the callers were released at

    @property
    def served(self) -> int:
        return len(self.waits)

    @property
    def p50(self) -> float | None:
        return statistics.median(self.waits) if self.waits else None

    @property
    def max(self) -> float | None:
        return max(self.waits) if self.waits else None

    @property
    def began(self) -> float | None:
        """When the (first) computation began, in seconds after the instant."""
        return min(a[1] for a in self.answers) - self.start if self.answers else None


def sequence_total(clusters: Sequence[PgCluster]) -> int:
    """The values the shards' ``stampede_calls`` sequences have handed out."""
    total = 0
    for cluster in clusters:
        found = cluster.execute(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM stampede_calls", DBNAME
        )
        total += int(found[0][0])
    return total


def run_stampede(
    label: str,
    spec: dict[str, Any],
    processes: int,
    count: Callable[[], int],
) -> Stampede:
    """Start ``processes`` children on ``spec``, collect their callers' outcomes."""
    callers = spec["callers"] * processes
    tally = Stampede(label, spec["mode"].startswith("shardq"), callers)
    before = count()
    start = tally.start = time.time() + LEAD_SECONDS
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
    payload = json.dumps({**spec, "start": start}).encode()
    procs: list[tuple[subprocess.Popen[bytes], Any, Any]] = []
    with contextlib.ExitStack() as files:
        try:
            for _ in range(processes):
                # Files, not pipes: the children are read one by one, and none may block.
                out = files.enter_context(tempfile.TemporaryFile())
                err = files.enter_context(tempfile.TemporaryFile())
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--child"],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    env=env,
                )
                procs.append((proc, out, err))
                assert proc.stdin is not None
                proc.stdin.write(payload)
                proc.stdin.close()
            for proc, out, err in procs:
                try:
                    proc.wait(timeout=max(1.0, start + CHILD_TIMEOUT + 15 - time.time()))
                except subprocess.TimeoutExpired:
                    proc.kill()  # our own child, by its pid
                    proc.wait()
                    tally.notes.append(f"a child (pid {proc.pid}) hung and was killed")
                out.seek(0)
                err.seek(0)
                _collect(tally, proc, out.read(), err.read(), spec["callers"])
        finally:
            for proc, _, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    tally.computations = count() - before
    return tally


def _collect(
    tally: Stampede, proc: subprocess.Popen[bytes], out: bytes, err: bytes, n: int
) -> None:
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        tally.unanswered += n
        tally.notes.append(f"child pid {proc.pid} exited {proc.returncode}: {' | '.join(tail)}")
        return
    tally.waits += report["waits"]
    tally.errors += report["errors"]
    tally.answers.update(tuple(answer) for answer in report["answers"])
    tally.unanswered += report["unanswered"]
    tally.released.append(report["released"])
    tally.margins.append(report["margin"])
    for note in report["notes"]:
        if note not in tally.notes:
            tally.notes.append(note)


def stampedes(
    clusters: Sequence[PgCluster],
    dsns: Sequence[str],
    redis_server: RedisServer,
    prefix: str,
    callers: int,
    cold_pools: bool,
) -> list[Stampede]:
    """The four stampede variants, each on a fresh key."""
    counter = redis.Redis.from_url(redis_server.url)
    try:

        def pg_count() -> int:
            return sequence_total(clusters)

        def shardq_spec(mode: str, name: str, per_process: int) -> dict[str, Any]:
            cache = {"url": redis_server.url, "prefix": f"{prefix}{name}:", "ttl": TTL}
            return {
                "mode": mode,
                "callers": per_process,
                "warm": 1 if cold_pools else per_process,
                "config": shardq_config(dsns, cache),
            }

        def dogpile_spec(name: str, per_process: int) -> tuple[dict[str, Any], Callable[[], int]]:
            key = f"{prefix}{name}:counter"

            def redis_count() -> int:
                return int(counter.get(key) or 0)

            spec = {
                "mode": "dogpile-threads",
                "callers": per_process,
                "warm": 1 if cold_pools else per_process,
                "redis": {
                    "host": redis_server.host,
                    "port": redis_server.port,
                    "password": redis_server.password,
                },
                "key": f"{prefix}{name}:cold",
                "counter": key,
            }
            return spec, redis_count

        per_process = max(1, callers // PROCESSES)
        out = []
        print(f"stampede: shardq, {callers} threads on one sync connection...", flush=True)
        out.append(
            run_stampede(
                f"shardq, 1 process x {callers} threads, one sync connection",
                shardq_spec("shardq-threads", "threads", callers),
                1,
                pg_count,
            )
        )
        print(f"stampede: shardq, {PROCESSES} processes x {per_process} tasks...", flush=True)
        out.append(
            run_stampede(
                f"shardq, {PROCESSES} processes x {per_process} asyncio tasks",
                shardq_spec("shardq-asyncio", "processes", per_process),
                PROCESSES,
                pg_count,
            )
        )
        print(f"stampede: dogpile, {callers} threads...", flush=True)
        spec, count = dogpile_spec("dogpile-threads", callers)
        out.append(
            run_stampede(f"dogpile Redis lock, 1 process x {callers} threads", spec, 1, count)
        )
        print(f"stampede: dogpile, {PROCESSES} processes x {per_process} threads...", flush=True)
        spec, count = dogpile_spec("dogpile-processes", per_process)
        out.append(
            run_stampede(
                f"dogpile Redis lock, {PROCESSES} processes x {per_process} threads",
                spec,
                PROCESSES,
                count,
            )
        )
        return out
    finally:
        counter.close()


# --------------------------------------------------------------------------- the children


@dataclass(slots=True)
class _Callers:
    """The outcomes of one process's callers."""

    n: int
    waits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self, released: float, answer: Any) -> None:
        wait = time.time() - released
        with self.lock:
            self.waits.append(wait)
            self.answers.append(answer)

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])


def _sleep_until(instant: float) -> None:
    delay = instant - time.time()
    if delay > 0:
        time.sleep(delay)


def _threads(n: int, call: Callable[[], Any], start: float, outcome: _Callers) -> float:
    """Run ``call`` on ``n`` threads released together at ``start``; the release time."""
    released = [0.0]

    def release() -> None:
        released[0] = time.time()

    barrier = threading.Barrier(n + 1, action=release)

    def caller() -> None:
        barrier.wait()
        try:
            answer = call()
        except Exception as exc:
            outcome.failed(exc)
        else:
            outcome.served(released[0], answer)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    _sleep_until(start)
    barrier.wait()
    deadline = time.monotonic() + CHILD_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return released[0]


def _warm_threads(n: int, call: Callable[[], Any]) -> list[str]:
    """Open the connections ``n`` callers need: ``call`` on ``n`` threads at once (or once)."""
    warm = _Callers(n)
    _threads(n, call, time.time(), warm)
    if len(warm.waits) + len(warm.errors) < n:
        return [f"warm-up: {n - len(warm.waits) - len(warm.errors)} calls never answered"]
    if warm.errors:
        return [f"warm-up: {len(warm.errors)} of {n} calls failed, e.g. {warm.errors[0]}"]
    return []


def _child_shardq_threads(
    spec: dict[str, Any], outcome: _Callers
) -> tuple[float, float, list[str]]:
    with shardq.connect(spec["config"], cache=True) as conn:
        conn.execute(WARM_SQL, [STAMPEDE_ID], cache=False).fetchall()  # the shard's pool
        # Redis, on another key: a burst opens as many connections as the stampede will use.
        notes = _warm_threads(
            spec["warm"], lambda: conn.execute(WARM_SQL, [STAMPEDE_ID]).fetchall()
        )
        margin = spec["start"] - time.time()

        def call() -> Any:
            rows = conn.execute(STAMPEDE_SQL, [STAMPEDE_ID]).fetchall()
            return [rows[0][1], rows[0][2].timestamp()]

        released = _threads(outcome.n, call, spec["start"], outcome)
        if len(outcome.waits) + len(outcome.errors) < outcome.n:
            _report(spec, outcome, released, margin, notes)
            os._exit(0)  # callers still hang: closing the connection would wait for them
    return released, margin, notes


def _child_shardq_asyncio(
    spec: dict[str, Any], outcome: _Callers
) -> tuple[float, float, list[str]]:
    async def main() -> tuple[float, float, list[str]]:
        async with shardq.AsyncConnection(spec["config"], cache=True) as conn:
            await (await conn.execute(WARM_SQL, [STAMPEDE_ID], cache=False)).fetchall()

            async def warm() -> None:
                await (await conn.execute(WARM_SQL, [STAMPEDE_ID])).fetchall()

            found = await asyncio.gather(
                *(warm() for _ in range(spec["warm"])), return_exceptions=True
            )
            failed = sum(isinstance(f, BaseException) for f in found)
            notes = [f"warm-up: {failed} of {len(found)} calls failed"] if failed else []
            margin = spec["start"] - time.time()
            await asyncio.sleep(max(0.0, spec["start"] - time.time()))
            released = time.time()

            async def one() -> None:
                try:
                    rows = await (await conn.execute(STAMPEDE_SQL, [STAMPEDE_ID])).fetchall()
                except Exception as exc:
                    outcome.failed(exc)
                else:
                    outcome.served(released, [rows[0][1], rows[0][2].timestamp()])

            tasks = [asyncio.ensure_future(one()) for _ in range(outcome.n)]
            await asyncio.wait(tasks, timeout=CHILD_TIMEOUT)
            for task in tasks:
                task.cancel()
            return released, margin, notes

    return asyncio.run(main())


def _child_dogpile_threads(
    spec: dict[str, Any], outcome: _Callers
) -> tuple[float, float, list[str]]:
    where = spec["redis"]
    region = make_region().configure(
        "dogpile.cache.redis",
        expiration_time=TTL,
        arguments={**where, "db": 0, "distributed_lock": True, "thread_local_lock": False},
    )
    counter = redis.Redis(**where)
    counter.ping()
    pool = region.backend.writer_client.connection_pool
    notes = [
        f"dogpile's client: redis-py {type(pool).__name__}"
        f"(max_connections={pool.max_connections}) per process"
    ]
    notes += _warm_threads(spec["warm"], lambda: region.get(spec["key"] + "-warm"))

    def creator() -> list[float]:
        calls = int(counter.incr(spec["counter"]))
        began = time.time()
        time.sleep(SLEEP)
        return [calls, began]

    margin = spec["start"] - time.time()

    def call() -> Any:
        return region.get_or_create(spec["key"], creator)

    released = _threads(outcome.n, call, spec["start"], outcome)
    return released, margin, notes


def _report(
    spec: dict[str, Any], outcome: _Callers, released: float, margin: float, notes: list[str]
) -> None:
    with outcome.lock:
        report = {
            "waits": outcome.waits,
            "errors": outcome.errors,
            "answers": outcome.answers,
            "unanswered": outcome.n - len(outcome.waits) - len(outcome.errors),
            "released": released - spec["start"],
            "margin": margin,
            "notes": notes,
        }
    print(json.dumps(report), flush=True)


def child() -> int:
    """One stampede process: its spec on stdin, its callers' outcomes as JSON on stdout."""
    spec = json.loads(sys.stdin.read())
    outcome = _Callers(spec["callers"])
    run = {
        "shardq-threads": _child_shardq_threads,
        "shardq-asyncio": _child_shardq_asyncio,
        "dogpile-threads": _child_dogpile_threads,
    }[spec["mode"]]
    released, margin, notes = run(spec, outcome)
    _report(spec, outcome, released, margin, notes)
    sys.stdout.flush()
    os._exit(0)  # daemon threads may still wait on a lock: do not wait for them


# --------------------------------------------------------------------------- reporting


def report_machine() -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date: {now}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc {affinity}), "
        f"{platform.system()} {platform.release()}"
    )
    hiredis = "with hiredis" if redis.utils.HIREDIS_AVAILABLE else "without hiredis"
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"shardq {shardq.__version__}, dogpile.cache {dogpile.__version__}, "
        f"redis-py {redis.__version__} ({hiredis}), psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__})"
    )


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def report_hits(tallies: Sequence[Latency], args: argparse.Namespace, hits: Hits) -> None:
    title = (
        f"Hit latency of {SQL!r} ({HIT_ROWS} rows, {SHARDS} shards): {args.calls:,} calls each, "
        f"{ROUNDS} rounds after {args.warmup} warm-up calls"
    )
    print(f"\n{title}\n{'=' * len(title)}")
    by_name = {t.name: t for t in tallies if t.samples}
    uncached = by_name.get(UNCACHED)
    header = (
        f"{'contender':<48} {'p50 us':>9} {'p99 us':>9} {'x dogpile':>9} {'x uncached':>10}"
        "  answers"
    )
    print(header)
    print("-" * len(header))
    for t in tallies:
        if t.failure is not None:
            print(f"{t.label:<48} FAILED: {t.failure}")
            continue
        base = None
        if t.name in (*MEMORY_LINES, DOGPILE_MEM):
            base = by_name.get(DOGPILE_MEM)
        elif t.name in (*REDIS_LINES, DOGPILE_REDIS):
            base = by_name.get(DOGPILE_REDIS)
        x_dogpile = f"{t.p50 / base.p50:>9.2f}" if base else f"{'-':>9}"
        x_uncached = f"{t.p50 / uncached.p50:>10.3f}" if uncached else f"{'-':>10}"
        print(
            f"{t.label:<48} {_us(t.p50):>9} {_us(t.p99):>9} {x_dogpile} {x_uncached}  {t.answers}"
        )
    print(
        "x dogpile: p50 over dogpile's p50 on the same kind of backend; x uncached: p50 over "
        "the uncached query's p50"
    )
    print(f"dogpile Redis hits: redis-py {hits.dogpile_pool}, pickle serializer")


def report_stampedes(tallies: Sequence[Stampede], callers: int, cold_pools: bool) -> None:
    warm = "one warm-up read" if cold_pools else "pools warmed by a burst"
    title = (
        f"Stampede: {callers} callers on a cold key, a {SLEEP} s computation, "
        f"released together ({warm})"
    )
    print(f"\n{title}\n{'=' * len(title)}")
    header = (
        f"{'variant':<50} {'computed':>8} {'errors':>6} {'served':>7} {'answers':>7} "
        f"{'began ms':>8} {'wait p50 s':>10} {'wait max s':>10}"
    )
    print(header)
    print("-" * len(header))
    for t in tallies:
        p50 = f"{t.p50:>10.3f}" if t.p50 is not None else f"{'-':>10}"
        top = f"{t.max:>10.3f}" if t.max is not None else f"{'-':>10}"
        began = f"{t.began * 1e3:>+8.1f}" if t.began is not None else f"{'-':>8}"
        print(
            f"{t.label:<50} {t.computations:>8} {len(t.errors):>6} "
            f"{t.served:>3}/{t.callers:<3} {len(t.answers):>7} {began} {p50} {top}"
        )
    for t in tallies:
        details = []
        if t.released:
            details.append(
                "released "
                + ", ".join(f"{r * 1e3:+.1f}" for r in t.released)
                + " ms after the instant"
            )
        if t.margins and min(t.margins) < 0:
            details.append(f"a process was ready {-min(t.margins):.2f} s late")
        if t.unanswered:
            details.append(f"{t.unanswered} callers never answered")
        if t.errors:
            kinds: dict[str, int] = {}
            for error in t.errors:
                kinds[error] = kinds.get(error, 0) + 1
            details += [f"{n} x {error}" for error, n in sorted(kinds.items(), key=lambda x: -x[1])]
        details += t.notes
        print(f"  {t.label}:")
        for detail in details:
            print(f"    {detail}")
    print(
        "computed: executions of the computation (shardq: the shards' sequence; dogpile: a Redis "
        "INCR); answers: distinct results served; began: when the first computation began, "
        "after the instant"
    )


def report_aims(hits: Sequence[Latency], storms: Sequence[Stampede]) -> list[dict[str, Any]]:
    """Print the aims; return them as in the ``--json`` file."""
    by_name = {t.name: t for t in hits if t.samples}
    verdicts: list[dict[str, Any]] = []
    print("\nAims (hit aims judged on the bare region.get_or_create lines)")
    for line, reference, dogpile_name, limit in (
        (ASYNC_MEM_BARE, ASYNC_MEM, DOGPILE_MEM, MEMORY_AIM_US),
        (ASYNC_REDIS_BARE, ASYNC_REDIS, DOGPILE_REDIS, REDIS_AIM_US),
    ):
        got, base, user = by_name.get(line), by_name.get(dogpile_name), by_name.get(reference)
        aim = f"{line} p50 <= {dogpile_name} p50 and < {limit:g} us"
        if got is None or base is None:
            print(f"  ----  {aim} (not measured)")
            verdicts.append({"text": aim, "passed": False, "detail": "not measured"})
            continue
        met = got.p50 <= base.p50 and got.p50 * 1e6 < limit and not got.wrong
        detail = f"{_us(got.p50)} us vs dogpile {_us(base.p50)} us"
        print(f"  {'PASS' if met else 'MISS'}  {aim} ({detail})")
        verdicts.append({"text": aim, "passed": met, "detail": detail})
        if user is not None:
            print(
                f"        for reference, {reference}: p50 {_us(user.p50)} us "
                f"({user.p50 / base.p50:.2f} x dogpile's)"
            )
    for t in storms:
        if not t.shardq:
            continue
        top = t.max if t.max is not None else float("inf")
        met = (
            t.computations == 1
            and not t.errors
            and t.served == t.callers
            and top <= WAIT_AIM
            and len(t.answers) == 1
        )
        aim = f"{t.label}: 1 computation, 0 errors, every caller served within {WAIT_AIM} s"
        detail = (
            f"{t.computations} computations, {len(t.errors)} errors, "
            f"{t.served}/{t.callers} served, max wait {top:.3f} s"
        )
        print(f"  {'PASS' if met else 'MISS'}  {aim} ({detail})")
        verdicts.append({"text": aim, "passed": met, "detail": detail})
    return verdicts


def results_file(
    hits: Sequence[Latency],
    storms: Sequence[Stampede],
    aims: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """What ``--json`` writes: the measured lines of both tables, and the aims.

    Contenders that failed, and stampede variants that served no caller, have
    no figure, and are left out.
    """

    def backend(name: str) -> str | None:
        if name in (*MEMORY_LINES, DOGPILE_MEM):
            return "memory"
        return "Redis" if name in (*REDIS_LINES, DOGPILE_REDIS) else None

    hit_results = [
        {
            "contender": t.label,
            "shardq": t.name not in DOGPILE_LINES,
            "case": backend(t.name),
            "value": round(t.p50 * 1e6, 2),
            "spread": None,
            "correct": not t.wrong,
            "note": f"p99 {_us(t.p99)} us",
        }
        for t in hits
        if t.samples
    ]
    storm_results = [
        {
            "contender": t.label,
            "shardq": t.shardq,
            "case": None,
            "value": round(t.max, 4),
            "spread": None,
            "correct": t.computations <= 1 and len(t.answers) <= 1,
            "note": f"{t.computations} computations, {len(t.errors)} errors, "
            f"{t.served}/{t.callers} served, {len(t.answers)} distinct answers, "
            f"wait p50 {t.p50:.3f} s",
        }
        for t in storms
        if t.max is not None and t.p50 is not None
    ]
    return {
        "scenario": "cache",
        "title": f"Result cache: hits on a {HIT_ROWS}-row read over {SHARDS} shards, and "
        f"{args.callers} callers stampeding a cold key",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": [
            {
                "title": f"hit latency p50 ({args.calls:,} calls each, {HIT_ROWS} rows)",
                "metric": "us",
                "higher_is_better": False,
                "results": hit_results,
            },
            {
                "title": f"stampede: max wait of {args.callers} callers, a {SLEEP} s computation",
                "metric": "s",
                "higher_is_better": False,
                "results": storm_results,
            },
        ],
        "aims": aims,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time shardq's result cache (hits, a stampede) beside dogpile.cache's."
    )
    parser.add_argument(
        "--calls", type=int, default=None, metavar="N", help="timed hits per contender (5,000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, metavar="N", help="untimed calls first (200)"
    )
    parser.add_argument(
        "--rows", type=int, default=4_000, metavar="N", help="rows in events (default 4,000)"
    )
    parser.add_argument(
        "--callers",
        type=int,
        default=200,
        metavar="N",
        help=f"stampede callers (default 200; {PROCESSES} x N/{PROCESSES} in the process variants)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1,000 calls, 50 warm-up calls (explicit options win)"
    )
    parser.add_argument(
        "--cold-pools",
        action="store_true",
        help="warm each stampede process with one read of another key, not a burst of as many "
        "concurrent reads as it has callers (its Redis pools then grow during the stampede)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the results to PATH as JSON, after the run",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: no directory {str(args.json.parent)!r}")
    defaults = (1_000, 50) if args.quick else (5_000, 200)
    for option, default in zip(("calls", "warmup"), defaults, strict=True):
        if getattr(args, option) is None:
            setattr(args, option, default)
    if args.calls < ROUNDS:
        parser.error(f"--calls must be at least {ROUNDS}")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first call fills the cache)")
    if args.rows < HIT_ROWS:
        parser.error(f"--rows must be at least {HIT_ROWS}")
    if args.callers < PROCESSES:
        parser.error(f"--callers must be at least {PROCESSES}")
    return args


def run(clusters: Sequence[PgCluster], redis_server: RedisServer, args: argparse.Namespace) -> None:
    """Load the data, then measure and report hits and stampedes."""
    print(f"loading {args.rows:,} rows...", flush=True)
    dsns, rows = prepare(clusters, args.rows)
    pg_version = clusters[0].execute("SHOW server_version")[0][0]
    with redis.Redis.from_url(redis_server.url) as client:
        redis_version = client.info("server")["redis_version"]
    print(f"PostgreSQL {pg_version}, Redis {redis_version}")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    with asyncio.Runner() as runner:
        hits = Hits(dsns, redis_server, prefix, runner)
        hits.open()
        try:
            if hits.expected == expected_answer(rows):
                print(f"the uncached answer: {len(hits.expected)} rows, the rows loaded: ok")
            else:
                print("WARNING: the uncached answer is not the rows loaded (checks below use it)")
            latencies = measure_hits(hits, args.calls, args.warmup)
        finally:
            hits.close()
    storms = stampedes(clusters, dsns, redis_server, prefix, args.callers, args.cold_pools)
    report_hits(latencies, args, hits)
    report_stampedes(storms, args.callers, args.cold_pools)
    aims = report_aims(latencies, storms)
    if args.json is not None:
        with args.json.open("w", encoding="utf-8") as file:
            json.dump(results_file(latencies, storms, aims, args), file, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child()
    interrupt_on_sigterm()
    report_machine()
    began = time.perf_counter()
    print("starting Redis and 4 PostgreSQL clusters...", flush=True)
    redis_server = start_redis()
    clusters: list[PgCluster] = []
    try:
        clusters = start_clusters()
        pids = [cluster.pid for cluster in clusters]
        print(
            f"  redis pid {redis_server.pid}, postmaster pids {', '.join(map(str, pids))}",
            flush=True,
        )
        run(clusters, redis_server, args)
    finally:
        servers: list[PgCluster | RedisServer] = [*clusters, redis_server]
        pids = [server.pid for server in servers]
        for server, pid in zip(servers, pids, strict=True):
            try:
                server.stop()
            except Exception as exc:
                print(f"could not stop the server of pid {pid}: {exc}", file=sys.stderr)
        print(f"\nstopped Redis and the PostgreSQL clusters (pids {', '.join(map(str, pids))})")
        print(f"wall time {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
