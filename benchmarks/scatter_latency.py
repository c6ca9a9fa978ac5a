"""Scatter latency: what shardq adds to a query that runs on every shard.

Every shard holds a table ``t (id int primary key)`` with one row (shard ``i``
holds ``id = i``), declared in shardq as distributed (``[tables.t] shard_key =
"id"``), so the statement

    SELECT id, pg_sleep(0.05) FROM t

runs on every shard, takes 50 ms there and returns one row per shard (a
filter-only read: shardq concatenates the shards' rows; ``id`` is selected so
that the answer says which shards answered). The same statement is timed, end
to end with :func:`time.perf_counter`, ten ways:

1. shardq, async API: ``await (await conn.execute(sql)).fetchall()`` on an
   :class:`shardq.AsyncConnection`;
2. shardq, sync DB-API facade: ``conn.execute(sql).fetchall()`` on
   :func:`shardq.connect`;
3. psycopg2, serial: one connection per shard, queried in turn;
4. psycopg2, thread per shard: a ``ThreadPoolExecutor`` with one worker per
   shard, its threads started before timing and reused, each using its own
   connection (a hand-written "ParallelConnection");
5. psycopg 3, raw ``asyncio.gather`` over one async connection per shard: the
   ceiling for a client on one event loop, and the base of the ratios;
6. asyncpg, raw ``asyncio.gather`` of ``conn.fetch(sql)`` over one asyncpg
   connection per shard (asyncpg prepares the statement on the first, warm-up,
   run and reuses it from its statement cache);
7. the ``parallel-connection`` package (0.1.2) itself: a
   ``ParallelConnection`` over one psycopg2 connection per shard, per run
   ``cursor()``, ``execute(sql)``, ``fetchall()`` (the union of the rows),
   ``close()``. It starts a new thread per connection for ``execute`` and again
   for ``fetchall`` and joins them, so each run pays two rounds of thread
   starts, which 4 above does not;
8. SQLAlchemy's horizontal sharding extension: a ``ShardedSession`` over one
   ``Engine`` per shard (psycopg2 driver, ``AUTOCOMMIT``, the engine's pool),
   ``t`` mapped as ``ShardRow``, a ``shard_chooser`` and ``identity_chooser``
   that place ``id = i`` on shard ``i`` as the data is laid out, and an
   ``execute_chooser`` returning every shard id; per run a new session
   executes ``select(ShardRow.id, func.pg_sleep(0.05))`` and ``.all()``.
   SQLAlchemy queries the shards one after another: its ``do_orm_execute``
   hook (``execute_and_instances``) loops over the ids the ``execute_chooser``
   returns, runs the statement on each shard's connection in turn and merges
   the results, so expect about the serial loop's time (plus the ORM's);
9. a single node, the same statement: one database on a fifth cluster holding
   all the rows (4 or 16), queried with psycopg 3 async. ``pg_sleep`` runs
   once per row, so this is about rows x 50 ms: what the one database shardq
   stands in for takes when per-row work of this size runs on one server, i.e.
   what scattering it saves, not a bar for shardq's overhead;
10. a single node, one sleep: ``SELECT id, (SELECT pg_sleep(0.05)) FROM t`` on
    the same database. The uncorrelated scalar subquery is an InitPlan,
    evaluated once, so this returns the same rows after one 50 ms wait on the
    server: one database's latency for the same answer and the same wait, the
    bar for what fanning out to N servers costs over a single round trip. Both
    single-node lines are kept because neither says the other's thing.

Every connection is in autocommit mode (asyncpg has no such switch: outside a
transaction each statement commits) and opened (or, for shardq's lazy pools and
SQLAlchemy's engine pools, filled by the warm-up runs) before timing starts.
The methods take turns within each repetition, in a rotating order, so drift in
the machine's load affects them all alike. For each shard count the script
prints the median and p90 wall time of each method, its ratio to the raw
gather's median, the difference in milliseconds and the answer's check, then
the aims being checked ("shardq async within 1 ms of raw gather", "shardq sync
no slower than threads"). The aims are informational: the script exits 0
either way. ``--quick`` makes 5 timed runs after 1 warm-up run (explicit
options win), in under a minute.

Every run's answer, warm-up runs included, is checked outside the timed
window against the single node's answer to the statement (fetched once before
timing; it is the answer shardq must give, and shardq's own lines are checked
too): the same rows, in any order, as a multiset. ``pg_sleep`` returns
``void``, which psycopg and psycopg2 read as ``''`` and asyncpg as ``None``;
the check reads both as ``None``. The table prints ``ok``, or ``WRONG k/n``
(in k of n runs) with the first difference below the table.

With ``--json PATH`` the script also writes, after the run, the results as
JSON: one table of median latencies in ms (lower is better) with a result per
method and shard count (case "4 shards", "16 shards"; ``spread`` the fastest
and slowest run, ``correct`` true when every run returned the single node's
rows), and every aim printed, per shard count. The printed output is the same.

Five throw-away PostgreSQL clusters are started with the test suite's helper
(``tests.fixtures.servers.start_pg_clusters``) and stopped by pid at the end,
whatever happens. Shard ``i`` is database ``bench_i`` on cluster ``i % 4``, so
16 shards are 4 databases per cluster and 4 shards are one database on each
cluster; the fifth cluster holds the single node's databases ``bench_all_4``
and ``bench_all_16``.

Run it from anywhere (it needs the PostgreSQL server programs, psycopg 3,
psycopg2, asyncpg, SQLAlchemy 2, parallel-connection and shardq installed:
``pip install -e '.[bench]'``)::

    python benchmarks/scatter_latency.py
    python benchmarks/scatter_latency.py --quick --json /tmp/scatter_latency.json
    python benchmarks/scatter_latency.py --repeat 50 --warmup 5 --shards 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
import psycopg
import psycopg2
from _common import command_line, stamp
from parallel_connection.parallel_connection import ParallelConnection
from sqlalchemy import create_engine, func, make_url, select
from sqlalchemy.ext.horizontal_shard import ShardedSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import shardq

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from sqlalchemy.orm import Mapper, ORMExecuteState
    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = 4
SLEEP_SECONDS = 0.05
SQL = f"SELECT id, pg_sleep({SLEEP_SECONDS}) FROM t"
# An uncorrelated scalar subquery is an InitPlan: evaluated once, whatever the row count.
ONE_SLEEP_SQL = f"SELECT id, (SELECT pg_sleep({SLEEP_SECONDS})) FROM t"
RAW = "raw asyncio.gather (psycopg 3)"
SHARDQ_ASYNC = "shardq async"
SHARDQ_SYNC = "shardq sync (DB-API)"
SERIAL = "psycopg2 serial loop"
THREADS = "psycopg2 thread per shard"
ASYNCPG = "raw asyncio.gather (asyncpg)"
PARALLEL = "parallel-connection"
SQLALCHEMY = "SQLAlchemy ShardedSession"
SINGLE = "single node, same statement"
SINGLE_ONE_SLEEP = "single node, one sleep"
ASYNC_AIM_MS = 1.0

Row = tuple[Any, ...]


class Aim(NamedTuple):
    text: str
    passed: bool
    detail: str


class Run(NamedTuple):
    """One run of a method: its wall time in seconds and the rows it returned."""

    seconds: float
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Stats:
    """The timings of one method at one shard count, in seconds, and its answers' check."""

    method: str
    samples: tuple[float, ...]
    checked: int
    problems: tuple[str, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[-1]

    @property
    def correct(self) -> bool:
        return not self.problems

    @property
    def answer(self) -> str:
        return "ok" if self.correct else f"WRONG {len(self.problems)}/{self.checked}"


class _Base(DeclarativeBase):
    pass


class ShardRow(_Base):
    """Table ``t`` as SQLAlchemy maps it; the same table on every shard."""

    __tablename__ = "t"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


def normalize(rows: Iterable[Sequence[Any]]) -> Counter[Row]:
    """The rows as a multiset of tuples, ``void`` read as None whichever driver read it.

    >>> normalize([(1, ""), (0, None)]) == normalize([(0, ""), (1, None)])
    True
    """
    return Counter(tuple(None if value == "" else value for value in row) for row in rows)


def difference(expected: Counter[Row], rows: Sequence[Sequence[Any]]) -> str | None:
    """None if ``rows`` are the expected multiset; else how they differ, briefly."""
    got = normalize(rows)
    if got == expected:
        return None
    missing = sorted((expected - got).elements(), key=repr)
    extra = sorted((got - expected).elements(), key=repr)
    return (
        f"{len(rows)} rows, {len(missing)} missing {missing[:3]}, "
        f"{len(extra)} unexpected {extra[:3]}"
    )


def start_clusters() -> list[PgCluster]:
    """Start the shard clusters and the single node with the test suite's helper."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(CLUSTERS + 1, prefix="bench")


def create_shards(clusters: Sequence[PgCluster], count: int) -> list[str]:
    """Create ``count`` shard databases round-robin over ``clusters``; return their DSNs."""
    dsns = []
    for i in range(count):
        cluster = clusters[i % len(clusters)]
        name = f"bench_{i}"
        cluster.create_database(name)
        cluster.execute("CREATE TABLE t (id int PRIMARY KEY)", name)
        cluster.execute("INSERT INTO t VALUES (%s)", name, [i])
        dsns.append(cluster.dsn(name))
    return dsns


def create_single(cluster: PgCluster, count: int) -> str:
    """Create the single node's database holding the rows of ``count`` shards; its DSN."""
    name = f"bench_all_{count}"
    cluster.create_database(name)
    cluster.execute("CREATE TABLE t (id int PRIMARY KEY)", name)
    cluster.execute("INSERT INTO t SELECT generate_series(0, %s - 1)", name, [count])
    return cluster.dsn(name)


def shardq_config(dsns: Sequence[str]) -> dict[str, Any]:
    return {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": dsn, "pool_max_size": 2} for i, dsn in enumerate(dsns)],
        "tables": {"t": {"shard_key": "id"}},
    }


class Bench:
    """The methods at one shard count, their connections open while in use."""

    def __init__(self, dsns: Sequence[str], single_dsn: str, runner: asyncio.Runner):
        self.dsns = list(dsns)
        self.single_dsn = single_dsn
        self.shards = len(dsns)
        self.shard_ids = [f"s{i}" for i in range(self.shards)]
        self.runner = runner
        self.expected: Counter[Row] = Counter()
        self._sync_stack = contextlib.ExitStack()
        self._async_stack = contextlib.AsyncExitStack()
        self._aconn: shardq.AsyncConnection | None = None
        self._sconn: shardq.Connection | None = None
        self._serial: list[Any] = []
        self._threaded: list[Any] = []
        self._executor: ThreadPoolExecutor | None = None
        self._parallel: ParallelConnection | None = None
        self._sessions: sessionmaker[ShardedSession] | None = None
        self._raw: list[psycopg.AsyncConnection[Row]] = []
        self._asyncpg: list[asyncpg.Connection] = []
        self._single: psycopg.AsyncConnection[Row] | None = None

    # -- lifecycle

    def open(self) -> None:
        try:
            self._open_sync()
            self.runner.run(self._open_async())
            self.expected = normalize(self.runner.run(self._single_node(SQL)))
        except BaseException:
            self.close()
            raise

    def _psycopg2_connections(self) -> list[Any]:
        conns = []
        for dsn in self.dsns:
            conn = psycopg2.connect(dsn)
            self._sync_stack.callback(conn.close)
            conn.autocommit = True
            conns.append(conn)
        return conns

    def _open_sync(self) -> None:
        stack = self._sync_stack
        self._sconn = stack.enter_context(shardq.connect(self.config))
        self._serial = self._psycopg2_connections()
        self._threaded = self._psycopg2_connections()
        self._parallel = ParallelConnection(self._psycopg2_connections())
        self._executor = stack.enter_context(
            ThreadPoolExecutor(max_workers=self.shards, thread_name_prefix="bench-shard")
        )
        # Start every worker thread now rather than during the first timed run.
        list(self._executor.map(time.sleep, [0.01] * self.shards))
        engines = {}
        for shard_id, dsn in zip(self.shard_ids, self.dsns, strict=True):
            url = make_url(dsn).set(drivername="postgresql+psycopg2")
            engine = create_engine(url, isolation_level="AUTOCOMMIT")
            stack.callback(engine.dispose)
            engines[shard_id] = engine
        self._sessions = sessionmaker(
            class_=ShardedSession,
            shards=engines,
            shard_chooser=self._shard_chooser,
            identity_chooser=self._identity_chooser,
            execute_chooser=self._execute_chooser,
        )

    async def _open_async(self) -> None:
        stack = self._async_stack
        self._aconn = await stack.enter_async_context(shardq.AsyncConnection(self.config))
        for dsn in self.dsns:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            stack.push_async_callback(conn.close)
            self._raw.append(conn)
        for dsn in self.dsns:
            pg_conn = await asyncpg.connect(dsn)
            stack.push_async_callback(pg_conn.close)
            self._asyncpg.append(pg_conn)
        self._single = await psycopg.AsyncConnection.connect(self.single_dsn, autocommit=True)
        stack.push_async_callback(self._single.close)

    def close(self) -> None:
        try:
            self.runner.run(self._async_stack.aclose())
        finally:
            self._sync_stack.close()

    @property
    def config(self) -> dict[str, Any]:
        return shardq_config(self.dsns)

    # -- SQLAlchemy's choosers: row ``id = i`` is on shard ``i``, as create_shards() put it

    def _shard_chooser(
        self, mapper: Mapper[Any] | None, instance: ShardRow | None, clause: Any = None
    ) -> str:
        if instance is None:
            raise LookupError("shard_chooser: only rows of ShardRow have a shard")
        return self.shard_ids[instance.id]

    def _identity_chooser(
        self, mapper: Mapper[Any], primary_key: Sequence[Any], **kw: Any
    ) -> list[str]:
        return [self.shard_ids[primary_key[0]]]

    def _execute_chooser(self, orm_context: ORMExecuteState) -> list[str]:
        return self.shard_ids

    # -- the methods: each runs the statement once and returns its wall time and rows

    def methods(self) -> dict[str, Callable[[], Run]]:
        return {
            SHARDQ_ASYNC: lambda: self._timed_async(self._shardq_async),
            SHARDQ_SYNC: lambda: self._timed(self._shardq_sync),
            SERIAL: lambda: self._timed(self._serial_loop),
            THREADS: lambda: self._timed(self._thread_per_shard),
            RAW: lambda: self._timed_async(self._raw_gather),
            ASYNCPG: lambda: self._timed_async(self._asyncpg_gather),
            PARALLEL: lambda: self._timed(self._parallel_connection),
            SQLALCHEMY: lambda: self._timed(self._sharded_session),
            SINGLE: lambda: self._timed_async(lambda: self._single_node(SQL)),
            SINGLE_ONE_SLEEP: lambda: self._timed_async(lambda: self._single_node(ONE_SLEEP_SQL)),
        }

    @staticmethod
    def _timed(run: Callable[[], Sequence[Sequence[Any]]]) -> Run:
        start = time.perf_counter()
        rows = run()
        return Run(time.perf_counter() - start, rows)

    def _timed_async(self, run: Callable[[], Awaitable[Sequence[Sequence[Any]]]]) -> Run:
        async def timed() -> Run:
            # Timed inside the loop: entering asyncio.Runner.run is not the method's cost.
            start = time.perf_counter()
            rows = await run()
            return Run(time.perf_counter() - start, rows)

        return self.runner.run(timed())

    async def _shardq_async(self) -> list[Row]:
        assert self._aconn is not None
        cur = await self._aconn.execute(SQL)
        rows: list[Row] = await cur.fetchall()
        return rows

    def _shardq_sync(self) -> list[Row]:
        assert self._sconn is not None
        rows: list[Row] = self._sconn.execute(SQL).fetchall()
        return rows

    def _serial_loop(self) -> list[Row]:
        rows: list[Row] = []
        for conn in self._serial:
            with conn.cursor() as cur:
                cur.execute(SQL)
                rows += cur.fetchall()
        return rows

    @staticmethod
    def _psycopg2_query(conn: Any) -> list[Row]:
        with conn.cursor() as cur:
            cur.execute(SQL)
            rows: list[Row] = cur.fetchall()
            return rows

    def _thread_per_shard(self) -> list[Row]:
        assert self._executor is not None
        rows: list[Row] = []
        for shard_rows in self._executor.map(self._psycopg2_query, self._threaded):
            rows += shard_rows
        return rows

    async def _raw_gather(self) -> list[Row]:
        async def one(conn: psycopg.AsyncConnection[Row]) -> list[Row]:
            cur = await conn.execute(SQL)
            return await cur.fetchall()

        per_shard = await asyncio.gather(*(one(conn) for conn in self._raw))
        return [row for rows in per_shard for row in rows]

    async def _asyncpg_gather(self) -> list[asyncpg.Record]:
        per_shard = await asyncio.gather(*(conn.fetch(SQL) for conn in self._asyncpg))
        return [row for rows in per_shard for row in rows]

    def _parallel_connection(self) -> list[Row]:
        assert self._parallel is not None
        cur = self._parallel.cursor()
        try:
            cur.execute(SQL)
            rows: list[Row] = cur.fetchall()
        finally:
            cur.close()
        return rows

    def _sharded_session(self) -> list[Any]:
        assert self._sessions is not None
        with self._sessions() as session:
            return list(session.execute(select(ShardRow.id, func.pg_sleep(SLEEP_SECONDS))).all())

    async def _single_node(self, sql: str) -> list[Row]:
        assert self._single is not None
        cur = await self._single.execute(sql)
        return await cur.fetchall()


def measure(bench: Bench, repeat: int, warmup: int) -> list[Stats]:
    """Warm every method up, then time ``repeat`` rounds, rotating the order each round.

    Every run's rows, warm-up runs included, are checked after its clock stopped.
    """
    methods = bench.methods()
    names = list(methods)
    problems: dict[str, list[str]] = {name: [] for name in names}

    def run(name: str) -> float:
        seconds, rows = methods[name]()
        problem = difference(bench.expected, rows)
        if problem is not None:
            problems[name].append(problem)
        return seconds

    for _ in range(warmup):
        for name in names:
            run(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(run(name))
    return [
        Stats(name, tuple(samples[name]), warmup + repeat, tuple(problems[name])) for name in names
    ]


def report(shards: int, results: Sequence[Stats], repeat: int, warmup: int) -> list[Aim]:
    """Print the table and the aims of one shard count; return the aims."""
    by_name = {s.method: s for s in results}
    raw = by_name[RAW].median
    title = f"{shards} shards: {SQL!r}, median and p90 of {repeat} runs after {warmup} warm-up runs"
    print(f"\n{title}\n{'=' * len(title)}")
    header = (
        f"{'method':<30} {'median ms':>10} {'p90 ms':>10} {'x raw':>7} {'vs raw ms':>10}  answer"
    )
    print(header)
    print("-" * len(header))
    for s in results:
        print(
            f"{s.method:<30} {s.median * 1e3:>10.2f} {s.p90 * 1e3:>10.2f} "
            f"{s.median / raw:>7.3f} {(s.median - raw) * 1e3:>+10.2f}  {s.answer}"
        )
    for s in results:
        if not s.correct:
            print(f"  WRONG  {s.method}: {s.problems[0]}")
    async_gap = (by_name[SHARDQ_ASYNC].median - raw) * 1e3
    sync_ms = by_name[SHARDQ_SYNC].median * 1e3
    threads_ms = by_name[THREADS].median * 1e3
    aims = [
        Aim(
            f"shardq async within {ASYNC_AIM_MS:g} ms of raw gather",
            async_gap <= ASYNC_AIM_MS,
            f"{async_gap:+.2f} ms",
        ),
        Aim(
            "shardq sync no slower than threads",
            sync_ms <= threads_ms,
            f"{sync_ms:.2f} ms vs {threads_ms:.2f} ms",
        ),
    ]
    print()
    for aim, met, detail in aims:
        print(f"  {'PASS' if met else 'MISS'}  {aim} ({detail})")
    return aims


def results_json(
    args: argparse.Namespace,
    command: str,
    measured: Sequence[tuple[int, Sequence[Stats], Sequence[Aim]]],
) -> dict[str, Any]:
    """The ``--json`` document: per shard count, each method's timings and the aims."""
    results = []
    aims = []
    for shards, stats, shard_aims in measured:
        raw = next(s.median for s in stats if s.method == RAW)
        results += [
            {
                "contender": s.method,
                "shardq": s.method in (SHARDQ_ASYNC, SHARDQ_SYNC),
                "case": f"{shards} shards",
                "value": s.median * 1e3,
                "spread": [min(s.samples) * 1e3, max(s.samples) * 1e3]
                if len(s.samples) > 1
                else None,
                "correct": s.correct,
                "note": f"p90 {s.p90 * 1e3:.2f} ms, {s.median / raw:.3f} x raw"
                + ("" if s.correct else f"; {s.answer}: {s.problems[0]}"),
            }
            for s in stats
        ]
        aims += [
            {"text": f"{shards} shards: {aim.text}", "passed": aim.passed, "detail": aim.detail}
            for aim in shard_aims
        ]
    counts = " / ".join(map(str, args.shards))
    return {
        "scenario": "scatter_latency",
        "title": f"Scatter latency: {SQL!r} (one row per shard) on {counts} shards",
        "command": command,
        "quick": args.quick,
        **stamp(),
        "tables": [
            {
                "title": f"median latency (median of {args.repeat} runs "
                f"after {args.warmup} warm-up runs)",
                "metric": "ms",
                "higher_is_better": False,
                "results": results,
            }
        ],
        "aims": aims,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Time {SQL!r} on N shards: shardq against hand-written clients."
    )
    parser.add_argument(
        "--repeat", type=int, default=None, metavar="N", help="timed runs per method (default 30)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, metavar="N", help="untimed runs first (default 3)"
    )
    parser.add_argument(
        "--shards",
        type=int,
        nargs="+",
        default=[4, 16],
        metavar="N",
        help="shard counts to measure (default: 4 16)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5 timed runs after 1 warm-up run (explicit options win)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH"
    )
    args = parser.parse_args(argv)
    defaults = (5, 1) if args.quick else (30, 3)
    for option, default in zip(("repeat", "warmup"), defaults, strict=True):
        if getattr(args, option) is None:
            setattr(args, option, default)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (it fills shardq's lazy pools)")
    if min(args.shards) < 1:
        parser.error("--shards must be positive")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: no directory {str(args.json.parent)!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    measured = []
    print(f"starting {CLUSTERS + 1} PostgreSQL clusters (shards and single node)...", flush=True)
    clusters = start_clusters()
    try:
        dsns = create_shards(clusters[:CLUSTERS], max(args.shards))
        single = {n: create_single(clusters[CLUSTERS], n) for n in dict.fromkeys(args.shards)}
        with asyncio.Runner() as runner:
            for shards in args.shards:
                bench = Bench(dsns[:shards], single[shards], runner)
                bench.open()
                try:
                    results = measure(bench, args.repeat, args.warmup)
                finally:
                    bench.close()
                aims = report(shards, results, args.repeat, args.warmup)
                measured.append((shards, results, aims))
    finally:
        for cluster in clusters:
            cluster.stop()
    if args.json is not None:
        with args.json.open("w", encoding="utf-8") as out:
            json.dump(results_json(args, command, measured), out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
