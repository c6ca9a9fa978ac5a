"""Merge throughput: what shardq's k-way ORDER BY merge and GROUP BY regroup cost.

A table ``t (id bigint primary key, g integer, v bigint, x numeric(12,2))`` of
``--rows`` rows (1,000,000 by default) is spread over 4 shards by shardq's own
placement (``load_config(config).placement.shard_for(id)``), one database on
each of 4 throw-away PostgreSQL clusters, and a 5th cluster, the single node,
holds all the rows. Rows are loaded with ``COPY``. ``v`` is drawn from
``[0, rows)`` (so many rows tie on ``v`` and ``id`` breaks the ties) and ``x``
from ``[-10,000,000.00, 10,000,000.00)``, from a fixed seed. ``g`` takes
``--groups`` values (100,000 by default) and every group is on every shard:
the k-th row of a shard (by id) has ``g = k % groups``. (``g = id % groups``
would not do: with 10 rows per group a group is missing from a given shard
with probability (3/4)**10, about 5.6%.) The script checks this on each shard
and prints it.

Two statements are timed end to end with :func:`time.perf_counter`, rows
counted and dropped as they arrive:

1. ORDER BY merge, ``SELECT id, v FROM t ORDER BY v, id`` (every row):
   shardq's async API (``await cur.next_batch()`` until it is empty), shardq's
   DB-API facade (``cur.fetchmany(10000)`` until it is empty), the raw fetch
   of the same statement from the 4 shards (psycopg 3, ``asyncio.gather`` over
   one async connection per shard, ``cursor.stream(sql, size=2000)`` as
   shardq's driver does, no merging) and the single node running it.
2. GROUP BY re-aggregation, ``SELECT g, count(*), sum(v), avg(x) FROM t GROUP
   BY g``: shardq async and sync, the raw fetch of the per-shard partial
   statement shardq sends (taken from its planner, ``Engine.plan(sql).sql``),
   the same raw fetch folding the partial rows into a Python dict as they
   arrive (a hand-written merge), the dict merge alone over partial rows
   already in memory, and the single node running the original statement.

Every connection is in autocommit mode and opened (or, for shardq's lazy
pools, filled by the warm-up runs) before timing starts. The methods take
turns within each repetition, in a rotating order, so drift in the machine's
load affects them all alike. For each statement the script prints the median
and p90 wall time of each method, rows per second (ORDER BY), the ratio to the
raw fetch and to the single node, and the aim being checked ("shardq at most
1.3 times the raw fetch"). The aims are informational: the script exits 0
either way.

Correctness is checked in separate, untimed runs: shardq's answer must equal
the single node's (ORDER BY: the sequence of ``(id, v)``; GROUP BY: the rows
by ``g``, the numeric ``avg`` equal as a :class:`~decimal.Decimal` and written
with the same digits). Memory is measured for the ORDER BY statement in
separate, untimed runs too: the peak resident set size of the process above
its size at the start of the run (sampled from ``/proc/self/statm`` every
5 ms, after ``malloc_trim`` has returned the heap's free memory; ``ru_maxrss``
elsewhere), and the peak of :mod:`tracemalloc` (Python allocations only, all
threads) in another run. Memory the allocator kept from earlier work can be
reused without growing the RSS, so the RSS figure is a lower bound.

With ``--json PATH`` the script also writes, after the run, the results as
JSON: a table of median wall times in seconds (lower is better) with a result
per method and statement (case "ORDER BY merge", "GROUP BY regroup";
``correct`` from the check against the single node, null where there is
none), a table of the ORDER BY memory (RSS peak growth in MB), and every aim
printed. The printed output is the same.

Five throw-away PostgreSQL clusters are started with the test suite's helper
(``tests.fixtures.servers.start_pg_clusters``) and stopped by pid at the end,
whatever happens (SIGTERM, as sent by ``timeout``, is handled like Ctrl-C).

Run it from anywhere (it needs the PostgreSQL server programs, psycopg 3 and
shardq installed)::

    python benchmarks/merge.py
    python benchmarks/merge.py --quick
    python benchmarks/merge.py --quick --json /tmp/merge.json
    python benchmarks/merge.py --rows 2000000 --groups 200000 --repeat 9
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
from _common import command_line, interrupt_on_sigterm, maxrss, stamp

import shardq
from shardq.engine import DEFAULT_FETCH_SIZE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Iterator, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_merge"
SEED = 20240531
ORDER_SQL = "SELECT id, v FROM t ORDER BY v, id"
GROUP_SQL = "SELECT g, count(*), sum(v), avg(x) FROM t GROUP BY g"
FETCH_SIZE = DEFAULT_FETCH_SIZE  # rows per batch, shardq's default
SYNC_FETCHMANY = 10_000
COPY_CHUNK = 50_000  # lines per COPY write
RATIO_AIM = 1.3
RSS_INTERVAL = 0.005

SHARDQ_ASYNC = "shardq async"
SHARDQ_SYNC = "shardq sync (DB-API)"
RAW = "raw gather, 4 shards (psycopg 3)"
HAND = "raw gather + dict merge"
DICT_ONLY = "dict merge only (in memory)"
SINGLE = "single node (psycopg 3)"
SAME = "= single node"  # how a verdict that shardq's answer is right begins

Row = tuple[Any, ...]
Method = Callable[[], float]
Memory = dict[str, tuple[int, int, int]]


class Aim(NamedTuple):
    text: str
    passed: bool | None  # None: not measured
    detail: str


@dataclass(frozen=True, slots=True)
class Stats:
    """The timings of one method on one statement, in seconds."""

    method: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[-1]


@dataclass(frozen=True, slots=True)
class Dataset:
    """What was loaded: the rows and distinct groups of each shard, and the timings."""

    rows: int
    groups: int
    shard_rows: dict[str, int]
    shard_groups: dict[str, int]
    single_rows: int
    single_groups: int
    generate_seconds: float
    load_seconds: float

    @property
    def partial_rows(self) -> int:
        """Rows of the per-shard GROUP BY: one per group present on each shard."""
        return sum(self.shard_groups.values())

    @property
    def every_group_everywhere(self) -> bool:
        return all(n == self.groups for n in self.shard_groups.values())


@dataclass(frozen=True, slots=True)
class Outcome:
    """What was measured and printed for one statement (kept for ``--json``)."""

    case: str
    results: Sequence[Stats]
    failed: dict[str, str]
    answers: dict[str, str]  # as printed, a wrong row count included
    correct: dict[str, bool | None]
    rows: dict[str, int] | None
    aims: list[Aim]


# --------------------------------------------------------------------------- servers and data


def start_clusters() -> list[PgCluster]:
    """Start the 4 shard clusters and the single node with the test suite's helper."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(SHARDS + 1, prefix="bench-merge")


def shardq_config(dsns: Sequence[str]) -> dict[str, Any]:
    return {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": dsn} for i, dsn in enumerate(dsns)],
        "tables": {"t": {"shard_key": "id"}},
    }


def _numeric_text(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def generate(rows: int, groups: int, shard_names: Sequence[str]) -> dict[str, list[str]]:
    """The COPY text lines of each shard, placed by shardq's placement rule.

    Raises:
        RuntimeError: a shard got fewer rows than there are groups.
    """
    placement = shardq.load_config(
        shardq_config([f"postgresql://u@127.0.0.1:1/d{i}" for i in range(len(shard_names))])
    ).placement
    ids: dict[str, list[int]] = {name: [] for name in shard_names}
    for id_ in range(1, rows + 1):
        ids[placement.shard_for(id_)].append(id_)
    short = {name: len(keys) for name, keys in ids.items() if len(keys) < groups}
    if short:
        raise RuntimeError(
            f"shards {short} hold fewer rows than --groups ({groups}): "
            "every group cannot be on every shard; use more rows or fewer groups"
        )
    rng = random.Random(SEED)
    lines: dict[str, list[str]] = {}
    for name, keys in ids.items():
        lines[name] = [
            f"{id_}\t{k % groups}\t{rng.randrange(rows)}\t"
            f"{_numeric_text(rng.randrange(-(10**9), 10**9))}\n"
            for k, id_ in enumerate(keys)
        ]
    return lines


def load(dsn: str, lines: Sequence[str]) -> tuple[int, int]:
    """Create ``t`` and COPY ``lines`` into it; return its row and distinct-group counts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigint, g integer, v bigint, x numeric(12,2))")
        with conn.cursor() as cur, cur.copy("COPY t (id, g, v, x) FROM STDIN") as copy:
            for start in range(0, len(lines), COPY_CHUNK):
                copy.write("".join(lines[start : start + COPY_CHUNK]))
        conn.execute("ALTER TABLE t ADD PRIMARY KEY (id)")
        conn.execute("VACUUM (ANALYZE) t")
        row = conn.execute("SELECT count(*), count(DISTINCT g) FROM t").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def prepare(
    clusters: Sequence[PgCluster], rows: int, groups: int
) -> tuple[list[str], str, Dataset]:
    """Generate and load the data; return the shard DSNs, the single node's and what was loaded."""
    names = [f"s{i}" for i in range(SHARDS)]
    began = time.perf_counter()
    lines = generate(rows, groups, names)
    generated = time.perf_counter() - began
    for cluster in clusters:
        cluster.create_database(DBNAME)
    dsns = [cluster.dsn(DBNAME) for cluster in clusters]
    shard_dsns, single_dsn = dsns[:SHARDS], dsns[SHARDS]
    everything = [line for name in names for line in lines[name]]
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=SHARDS + 1) as pool:
        futures = [
            pool.submit(load, dsn, lines[name]) for name, dsn in zip(names, shard_dsns, strict=True)
        ]
        futures.append(pool.submit(load, single_dsn, everything))
        counts = [f.result() for f in futures]
    loaded = time.perf_counter() - began
    del lines, everything
    gc.collect()
    dataset = Dataset(
        rows=rows,
        groups=groups,
        shard_rows={name: c[0] for name, c in zip(names, counts[:SHARDS], strict=True)},
        shard_groups={name: c[1] for name, c in zip(names, counts[:SHARDS], strict=True)},
        single_rows=counts[-1][0],
        single_groups=counts[-1][1],
        generate_seconds=generated,
        load_seconds=loaded,
    )
    return shard_dsns, single_dsn, dataset


# --------------------------------------------------------------------------- memory


def _current_rss() -> int | None:
    """The resident set size of this process in bytes, or None without /proc."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _trim_heap() -> None:
    """Give the heap's free memory back to the OS (glibc only), so the RSS is what is in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssPeak:
    """Samples the RSS in a thread while in use; ``growth`` is its peak above the start."""

    def __init__(self) -> None:
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = _current_rss() is not None

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            self.peak = max(self.peak, _current_rss() or 0)

    def __enter__(self) -> RssPeak:
        gc.collect()
        _trim_heap()
        self.start = (_current_rss() if self._sampled else maxrss()) or 0
        self.peak = self.start
        if self._sampled:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _current_rss() or 0)
        else:
            self.peak = max(self.peak, maxrss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


@contextlib.contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Trace Python allocations; the yielded list gets the peak (bytes) at the end."""
    gc.collect()
    out: list[int] = []
    tracemalloc.start()
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


# --------------------------------------------------------------------------- the methods


class Bench:
    """The methods over the 4 shards and the single node, their connections open while in use."""

    def __init__(
        self, shard_dsns: Sequence[str], single_dsn: str, runner: asyncio.Runner, data: Dataset
    ):
        self.config = shardq_config(shard_dsns)
        self.shard_dsns = list(shard_dsns)
        self.single_dsn = single_dsn
        self.runner = runner
        self.data = data
        self.problems: dict[str, str] = {}
        self._sync_stack = contextlib.ExitStack()
        self._async_stack = contextlib.AsyncExitStack()
        self._aconn: shardq.AsyncConnection | None = None
        self._sconn: shardq.Connection | None = None
        self._raw: list[psycopg.AsyncConnection[Row]] = []
        self._single: psycopg.AsyncConnection[Row] | None = None
        self._partials: list[list[Row]] = []

    # -- lifecycle

    def open(self) -> None:
        try:
            self._sconn = self._sync_stack.enter_context(shardq.connect(self.config))
            self.runner.run(self._open_async())
        except BaseException:
            self.close()
            raise

    async def _open_async(self) -> None:
        stack = self._async_stack
        self._aconn = await shardq.AsyncConnection.connect(self.config)
        stack.push_async_callback(self._aconn.close)
        for dsn in self.shard_dsns:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            stack.push_async_callback(conn.close)
            self._raw.append(conn)
        self._single = await psycopg.AsyncConnection.connect(self.single_dsn, autocommit=True)
        stack.push_async_callback(self._single.close)

    def close(self) -> None:
        try:
            self.runner.run(self._async_stack.aclose())
        finally:
            self._sync_stack.close()

    @property
    def aconn(self) -> shardq.AsyncConnection:
        assert self._aconn is not None
        return self._aconn

    @property
    def sconn(self) -> shardq.Connection:
        assert self._sconn is not None
        return self._sconn

    @property
    def single(self) -> psycopg.AsyncConnection[Row]:
        assert self._single is not None
        return self._single

    def partial_sql(self, sql: str) -> str:
        """The statement shardq sends to each shard for ``sql``."""
        return self.aconn._engine.plan(sql).sql

    # -- timing

    def _check(self, method: str, counted: int, expected: int) -> None:
        if counted != expected and method not in self.problems:
            self.problems[method] = f"counted {counted:,} rows, expected {expected:,}"

    def _timed(self, method: str, run: Callable[[], int], expected: int) -> float:
        start = time.perf_counter()
        counted = run()
        elapsed = time.perf_counter() - start
        self._check(method, counted, expected)
        return elapsed

    def _timed_async(self, method: str, run: Callable[[], Awaitable[int]], expected: int) -> float:
        async def timed() -> tuple[float, int]:
            # Timed inside the loop: entering asyncio.Runner.run is not the method's cost.
            start = time.perf_counter()
            counted = await run()
            return time.perf_counter() - start, counted

        elapsed, counted = self.runner.run(timed())
        self._check(method, counted, expected)
        return elapsed

    # -- what each method runs; each returns the number of rows it got

    async def _shardq_async(self, sql: str) -> int:
        cur = await self.aconn.execute(sql)
        count = 0
        while batch := await cur.next_batch():
            count += len(batch)
        return count

    def _shardq_sync(self, sql: str) -> int:
        cur = self.sconn.execute(sql)
        count = 0
        while rows := cur.fetchmany(SYNC_FETCHMANY):
            count += len(rows)
        return count

    @staticmethod
    async def _stream_count(conn: psycopg.AsyncConnection[Row], sql: str) -> int:
        count = 0
        async for _ in conn.cursor().stream(sql, size=FETCH_SIZE):
            count += 1
        return count

    async def _raw_gather(self, sql: str) -> int:
        counts = await asyncio.gather(*(self._stream_count(c, sql) for c in self._raw))
        return sum(counts)

    async def _single_node(self, sql: str) -> int:
        return await self._stream_count(self.single, sql)

    async def _raw_merge(self, sql: str) -> int:
        groups: dict[Any, list[Any]] = {}

        async def one(conn: psycopg.AsyncConnection[Row]) -> None:
            async for row in conn.cursor().stream(sql, size=FETCH_SIZE):
                fold(groups, row)

        await asyncio.gather(*(one(c) for c in self._raw))
        return len(finish(groups))

    def _dict_merge(self) -> int:
        groups: dict[Any, list[Any]] = {}
        for rows in self._partials:
            for row in rows:
                fold(groups, row)
        return len(finish(groups))

    async def _fetch_partials(self, sql: str) -> list[list[Row]]:
        async def one(conn: psycopg.AsyncConnection[Row]) -> list[Row]:
            cur = await conn.execute(sql)
            return await cur.fetchall()

        return list(await asyncio.gather(*(one(c) for c in self._raw)))

    # -- the two statements

    def order_methods(self) -> dict[str, Method]:
        n = self.data.rows
        sql = ORDER_SQL
        return {
            SHARDQ_ASYNC: lambda: self._timed_async(
                SHARDQ_ASYNC, lambda: self._shardq_async(sql), n
            ),
            SHARDQ_SYNC: lambda: self._timed(SHARDQ_SYNC, lambda: self._shardq_sync(sql), n),
            RAW: lambda: self._timed_async(RAW, lambda: self._raw_gather(sql), n),
            SINGLE: lambda: self._timed_async(SINGLE, lambda: self._single_node(sql), n),
        }

    def group_methods(self) -> dict[str, Method]:
        groups = self.data.groups
        partial = self.partial_sql(GROUP_SQL)
        self._partials = self.runner.run(self._fetch_partials(partial))
        return {
            SHARDQ_ASYNC: lambda: self._timed_async(
                SHARDQ_ASYNC, lambda: self._shardq_async(GROUP_SQL), groups
            ),
            SHARDQ_SYNC: lambda: self._timed(
                SHARDQ_SYNC, lambda: self._shardq_sync(GROUP_SQL), groups
            ),
            RAW: lambda: self._timed_async(
                RAW, lambda: self._raw_gather(partial), self.data.partial_rows
            ),
            HAND: lambda: self._timed_async(HAND, lambda: self._raw_merge(partial), groups),
            DICT_ONLY: lambda: self._timed(DICT_ONLY, self._dict_merge, groups),
            SINGLE: lambda: self._timed_async(SINGLE, lambda: self._single_node(GROUP_SQL), groups),
        }

    # -- answers, untimed

    def order_answers(self) -> dict[str, str]:
        """Compare shardq's ORDER BY answers with the single node's."""
        expected = self.runner.run(self._fetchall_single(ORDER_SQL))
        verdicts = {SINGLE: "reference", RAW: "row count only (unmerged)"}
        got_async = self.runner.run(self._fetchall_shardq(ORDER_SQL))
        verdicts[SHARDQ_ASYNC] = compare_sequences(got_async, expected)
        del got_async
        got_sync = self.sconn.execute(ORDER_SQL).fetchall()
        verdicts[SHARDQ_SYNC] = compare_sequences(got_sync, expected)
        return verdicts

    def group_answers(self) -> dict[str, str]:
        """Compare shardq's GROUP BY answers with the single node's."""
        expected = self.runner.run(self._fetchall_single(GROUP_SQL))
        verdicts = {
            SINGLE: "reference",
            RAW: "row count only (partials)",
            HAND: "not checked (reference)",
            DICT_ONLY: "not checked (reference)",
        }
        got_async = self.runner.run(self._fetchall_shardq(GROUP_SQL))
        verdicts[SHARDQ_ASYNC] = compare_groups(got_async, expected)
        got_sync = self.sconn.execute(GROUP_SQL).fetchall()
        verdicts[SHARDQ_SYNC] = compare_groups(got_sync, expected)
        return verdicts

    async def _fetchall_single(self, sql: str) -> list[Row]:
        cur = await self.single.execute(sql)
        return await cur.fetchall()

    async def _fetchall_shardq(self, sql: str) -> list[Row]:
        cur = await self.aconn.execute(sql)
        rows: list[Row] = await cur.fetchall()
        return rows


def fold(groups: dict[Any, list[Any]], row: Row) -> None:
    """Fold one partial row ``(g, count, sum v, sum x, count x)`` into ``groups``."""
    g, count, sum_v, sum_x, count_x = row
    state = groups.get(g)
    if state is None:
        groups[g] = [count, sum_v, sum_x, count_x]
    else:
        state[0] += count
        state[1] += sum_v
        state[2] += sum_x
        state[3] += count_x


def finish(groups: dict[Any, list[Any]]) -> list[Row]:
    """The final rows ``(g, count, sum, avg)``; avg by Decimal division in the default context."""
    return [(g, c, sv, sx / cx if cx else None) for g, (c, sv, sx, cx) in groups.items()]


def compare_sequences(got: Sequence[Row], expected: Sequence[Row]) -> str:
    """``"= single node"``, or where the two sequences of rows first differ."""
    if len(got) == len(expected) and all(
        a == b and list(map(type, a)) == list(map(type, b))
        for a, b in zip(got, expected, strict=True)
    ):
        return SAME
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return f"DIFFERS at row {i:,}: {a!r} vs {b!r} ({len(got):,} vs {len(expected):,} rows)"
    if len(got) != len(expected):
        return f"DIFFERS: {len(got):,} rows vs {len(expected):,}"
    return "DIFFERS in value types"


def compare_groups(got: Sequence[Row], expected: Sequence[Row]) -> str:
    """``"= single node"``, or how the rows by group key differ (values, digits, types)."""
    got_by = {row[0]: row for row in got}
    want_by = {row[0]: row for row in expected}
    problems = []
    if len(got_by) != len(got):
        problems.append(f"{len(got) - len(got_by):,} duplicate groups")
    missing = want_by.keys() - got_by.keys()
    extra = got_by.keys() - want_by.keys()
    if missing or extra:
        problems.append(f"{len(missing):,} groups missing, {len(extra):,} extra")
    common = want_by.keys() & got_by.keys()
    unequal = [g for g in common if got_by[g] != want_by[g]]
    spelled = [
        g
        for g in common
        if g not in unequal
        and [(type(v), str(v)) for v in got_by[g]] != [(type(v), str(v)) for v in want_by[g]]
    ]
    if unequal:
        g = min(unequal)
        problems.append(
            f"{len(unequal):,} groups unequal, e.g. g={g}: {got_by[g]!r} vs {want_by[g]!r}"
        )
    if spelled:
        g = min(spelled)
        problems.append(
            f"{len(spelled):,} groups equal in value but not in type or digits, "
            f"e.g. g={g}: {got_by[g]!r} vs {want_by[g]!r}"
        )
    if not problems:
        return f"{SAME} ({len(common):,} groups, Decimal digits equal)"
    return "DIFFERS: " + "; ".join(problems)


# --------------------------------------------------------------------------- measuring


def measure(
    methods: dict[str, Method], repeat: int, warmup: int
) -> tuple[list[Stats], dict[str, str]]:
    """Warm every method up, then time ``repeat`` rounds, rotating the order each round.

    A method that raises is dropped; its exception is returned with its name.
    """
    names = list(methods)
    failed: dict[str, str] = {}

    def run(name: str) -> float | None:
        if name in failed:
            return None
        try:
            return methods[name]()
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            return None

    for _ in range(warmup):
        for name in names:
            run(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = run(name)
            if elapsed is not None:
                samples[name].append(elapsed)
    stats = [Stats(name, tuple(samples[name])) for name in names if samples[name]]
    return stats, failed


def measure_memory(methods: dict[str, Method]) -> Memory:
    """Each method once with the RSS sampled, once under tracemalloc.

    Returns:
        per method, the RSS at the start, its peak growth, and the traced peak (bytes).
    """
    out: Memory = {}
    for name, method in methods.items():
        try:
            with RssPeak() as rss:
                method()
            with traced_peak() as traced:
                method()
        except Exception:
            continue  # reported by measure()
        out[name] = (rss.start, rss.growth, traced[0])
    return out


# --------------------------------------------------------------------------- reporting


def _title(text: str) -> None:
    print(f"\n{text}\n{'=' * len(text)}")


def printed_answers(answers: dict[str, str], problems: dict[str, str]) -> dict[str, str]:
    """The answer column: each method's verdict, after its wrong row count if any."""
    out = dict(answers)
    for method, problem in problems.items():
        out[method] = f"WRONG ROW COUNT: {problem}; {answers.get(method, '-')}"
    return out


def correctness(
    methods: Iterable[str], answers: dict[str, str], problems: dict[str, str]
) -> dict[str, bool | None]:
    """Each answer right or wrong against the single node (a wrong row count is wrong), or None."""
    out: dict[str, bool | None] = {}
    for method in methods:
        verdict = answers.get(method, "")
        if method in problems or verdict.startswith("DIFFERS"):
            out[method] = False
        else:
            out[method] = True if verdict.startswith(SAME) else None
    return out


def report(
    title: str,
    results: Sequence[Stats],
    failed: dict[str, str],
    answers: dict[str, str],
    rows: dict[str, int] | None,
) -> dict[str, float]:
    """Print the table of one statement (``answers`` from printed_answers); return the medians."""
    _title(title)
    medians = {s.method: s.median for s in results}
    raw = medians.get(RAW)
    single = medians.get(SINGLE)
    rate = f" {'rows/s':>11}" if rows is not None else ""
    header = (
        f"{'method':<33} {'median s':>9} {'p90 s':>8}{rate} {'x raw':>7} {'x single':>8}  answer"
    )
    print(header)
    print("-" * len(header))
    for s in results:
        ratio_raw = f"{s.median / raw:>7.3f}" if raw else f"{'-':>7}"
        ratio_single = f"{s.median / single:>8.3f}" if single else f"{'-':>8}"
        rate = f" {rows[s.method] / s.median:>11,.0f}" if rows is not None else ""
        answer = answers.get(s.method, "-")
        print(
            f"{s.method:<33} {s.median:>9.3f} {s.p90:>8.3f}{rate} {ratio_raw} {ratio_single}  "
            f"{answer}"
        )
    for name, error in failed.items():
        print(f"{name:<33} FAILED: {error}")
    return medians


def report_aims(medians: dict[str, float], baseline: str) -> list[Aim]:
    """Print the aims of one statement; return them."""
    raw = medians.get(RAW)
    aims = []
    for method in (SHARDQ_ASYNC, SHARDQ_SYNC):
        got = medians.get(method)
        aim = f"{method} at most {RATIO_AIM:g} x {baseline}"
        if got is None or raw is None:
            aims.append(Aim(aim, None, "not measured"))
            continue
        ratio = got / raw
        extra = (got - raw) * 1e3
        aims.append(Aim(aim, ratio <= RATIO_AIM, f"{ratio:.3f} x, {extra:+,.0f} ms"))
    print()
    for aim in aims:
        verdict = {True: "PASS", False: "MISS", None: "----"}[aim.passed]
        print(f"  {verdict}  {aim.text} ({aim.detail})")
    return aims


def report_memory(memory: Memory) -> None:
    how = "sampled every 5 ms" if _current_rss() is not None else "ru_maxrss"
    print(f"\nmemory of one untimed run each (RSS {how}; tracemalloc in a second run):")
    header = (
        f"  {'method':<33} {'RSS at start MB':>16} {'RSS peak growth MB':>19} "
        f"{'tracemalloc peak MB':>20}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for name, (start, growth, traced) in memory.items():
        print(
            f"  {name:<33} {start / 2**20:>16.1f} {growth / 2**20:>19.1f} {traced / 2**20:>20.1f}"
        )


def report_machine() -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc {affinity}), "
        f"{platform.system()} {platform.release()}"
    )
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()}), "
        f"shardq {shardq.__version__}"
    )


def report_data(data: Dataset, server_version: str) -> None:
    print(
        f"PostgreSQL {server_version}: generated {data.rows:,} rows in "
        f"{data.generate_seconds:.1f} s, loaded (COPY, primary key, VACUUM ANALYZE) "
        f"into 4 shards + single node in {data.load_seconds:.1f} s"
    )
    for name in data.shard_rows:
        print(
            f"  shard {name}: {data.shard_rows[name]:>9,} rows, "
            f"{data.shard_groups[name]:>7,} distinct g"
        )
    print(f"  single : {data.single_rows:>9,} rows, {data.single_groups:>7,} distinct g")
    everywhere = "yes" if data.every_group_everywhere else "NO"
    print(
        f"  every one of the {data.groups:,} groups on every shard: {everywhere} "
        f"({data.partial_rows:,} partial rows)"
    )
    if sum(data.shard_rows.values()) != data.rows or data.single_rows != data.rows:
        print("  WARNING: the loaded row counts do not add up to --rows")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time shardq's ORDER BY merge and GROUP BY regroup on 4 shards "
        "against the raw fetch and a single node."
    )
    parser.add_argument(
        "--rows", type=int, default=None, metavar="N", help="rows in all (default 1,000,000)"
    )
    parser.add_argument(
        "--groups", type=int, default=None, metavar="N", help="distinct g (default 100,000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, metavar="N", help="timed runs per method (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, metavar="N", help="untimed runs first (default 1)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200,000 rows, 20,000 groups, 3 timed runs (explicit options win)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH"
    )
    args = parser.parse_args(argv)
    defaults = (200_000, 20_000, 3) if args.quick else (1_000_000, 100_000, 5)
    for option, default in zip(("rows", "groups", "repeat"), defaults, strict=True):
        if getattr(args, option) is None:
            setattr(args, option, default)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (it fills shardq's lazy pools)")
    if args.groups < 1 or args.rows < SHARDS * args.groups:
        parser.error("--groups must be positive and --rows at least 4 x --groups")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: no directory {str(args.json.parent)!r}")
    return args


def run(
    clusters: Sequence[PgCluster], args: argparse.Namespace
) -> tuple[Dataset, list[Outcome], Memory]:
    """Load the data, then time, check and report both statements; return what was measured."""
    shard_dsns, single_dsn, data = prepare(clusters, args.rows, args.groups)
    version = clusters[0].execute("SHOW server_version")[0][0]
    report_data(data, str(version))
    runs = f"median and p90 of {args.repeat} runs after {args.warmup} warm-up run(s)"
    with asyncio.Runner() as runner:
        bench = Bench(shard_dsns, single_dsn, runner, data)
        bench.open()
        try:
            print(f"\ntiming {ORDER_SQL!r}...", flush=True)
            methods = bench.order_methods()
            results, failed = measure(methods, args.repeat, args.warmup)
            memory = measure_memory({n: m for n, m in methods.items() if n not in failed})
            verdicts = bench.order_answers()
            answers = printed_answers(verdicts, bench.problems)
            rows = dict.fromkeys(methods, data.rows)
            medians = report(
                f"ORDER BY merge: {ORDER_SQL!r}, {data.rows:,} rows from 4 shards; {runs}",
                results,
                failed,
                answers,
                rows,
            )
            aims = report_aims(medians, "the raw fetch")
            report_memory(memory)
            correct = correctness(methods, verdicts, bench.problems)
            order = Outcome("ORDER BY merge", results, failed, answers, correct, rows, aims)
            bench.problems = {}

            partial = bench.partial_sql(GROUP_SQL)
            print(f"\ntiming {GROUP_SQL!r}...", flush=True)
            methods = bench.group_methods()
            results, failed = measure(methods, args.repeat, args.warmup)
            verdicts = bench.group_answers()
            answers = printed_answers(verdicts, bench.problems)
            medians = report(
                f"GROUP BY regroup: {GROUP_SQL!r}, {data.groups:,} groups, "
                f"{data.partial_rows:,} partial rows; {runs}",
                results,
                failed,
                answers,
                None,
            )
            print(f"\nper-shard statement (from shardq's planner): {partial}")
            aims = report_aims(medians, "the raw partial fetch")
            correct = correctness(methods, verdicts, bench.problems)
            group = Outcome("GROUP BY regroup", results, failed, answers, correct, None, aims)
        finally:
            bench.close()
    return data, [order, group], memory


def results_json(
    args: argparse.Namespace,
    command: str,
    data: Dataset,
    outcomes: Sequence[Outcome],
    memory: Memory,
) -> dict[str, Any]:
    """The ``--json`` document: each statement's timings and aims, and the ORDER BY memory."""
    timings = []
    for outcome in outcomes:
        for s in outcome.results:
            rate = f", {outcome.rows[s.method] / s.median:,.0f} rows/s" if outcome.rows else ""
            answer = outcome.answers.get(s.method, "-")
            timings.append(
                {
                    "contender": s.method,
                    "shardq": s.method in (SHARDQ_ASYNC, SHARDQ_SYNC),
                    "case": outcome.case,
                    "value": s.median,
                    "spread": [min(s.samples), max(s.samples)] if len(s.samples) > 1 else None,
                    "correct": outcome.correct.get(s.method),
                    "note": f"p90 {s.p90:.3f} s{rate}; answer: {answer}",
                }
            )
        timings += [
            {
                "contender": method,
                "shardq": method in (SHARDQ_ASYNC, SHARDQ_SYNC),
                "case": outcome.case,
                "value": None,
                "spread": None,
                "correct": None,
                "note": f"FAILED: {error}",
            }
            for method, error in outcome.failed.items()
        ]
    memory_results = [
        {
            "contender": method,
            "shardq": method in (SHARDQ_ASYNC, SHARDQ_SYNC),
            "case": outcomes[0].case,
            "value": growth / 2**20,
            "spread": None,
            "correct": None,
            "note": f"RSS at start {start / 2**20:.1f} MB, "
            f"tracemalloc peak {traced / 2**20:.1f} MB",
        }
        for method, (start, growth, traced) in memory.items()
    ]
    runs = f"median of {args.repeat} runs after {args.warmup} warm-up run(s)"
    return {
        "scenario": "merge",
        "title": f"Merge throughput: ORDER BY merge of {data.rows:,} rows and GROUP BY regroup "
        f"of {data.groups:,} groups from 4 shards, against the raw fetch and a single node",
        "command": command,
        "quick": args.quick,
        **stamp(),
        "tables": [
            {
                "title": f"wall time of each statement ({runs})",
                "metric": "s",
                "higher_is_better": False,
                "results": timings,
            },
            {
                "title": "RSS peak growth in one untimed run of the ORDER BY statement",
                "metric": "MB",
                "higher_is_better": False,
                "results": memory_results,
            },
        ],
        "aims": [
            {"text": aim.text, "passed": aim.passed is True, "detail": aim.detail}
            for outcome in outcomes
            for aim in outcome.aims
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    interrupt_on_sigterm()
    report_machine()
    began = time.perf_counter()
    print(f"starting {SHARDS + 1} PostgreSQL clusters...", flush=True)
    clusters = start_clusters()
    pids = [cluster.pid for cluster in clusters]
    print(f"  postmaster pids: {', '.join(map(str, pids))}", flush=True)
    try:
        data, outcomes, memory = run(clusters, args)
    finally:
        for cluster in clusters:
            try:
                cluster.stop()
            except Exception as exc:
                print(f"could not stop {cluster.name} (pid {cluster.pid}): {exc}", file=sys.stderr)
        print(f"\nstopped the PostgreSQL clusters (pids {', '.join(map(str, pids))})")
        print(f"wall time {time.perf_counter() - began:.1f} s (maxrss {maxrss() / 2**20:.0f} MB)")
    if args.json is not None:
        with args.json.open("w", encoding="utf-8") as out:
            json.dump(results_json(args, command, data, outcomes, memory), out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
