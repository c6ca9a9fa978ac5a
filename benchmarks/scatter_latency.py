"""Scatter latency: what shardq adds to a query that runs on every shard.

Every shard holds a table ``t (id int primary key)`` with one row, declared in
shardq as distributed (``[tables.t] shard_key = "id"``), so the statement

    SELECT pg_sleep(0.05) FROM t

runs on every shard, takes 50 ms there and returns one row per shard (a
filter-only read: shardq concatenates the shards' rows). The same statement is
timed, end to end with :func:`time.perf_counter`, five ways:

1. shardq, async API: ``await (await conn.execute(sql)).fetchall()`` on an
   :class:`shardq.AsyncConnection`;
2. shardq, sync DB-API facade: ``conn.execute(sql).fetchall()`` on
   :func:`shardq.connect`;
3. psycopg2, serial: one connection per shard, queried in turn;
4. psycopg2, thread per shard: a ``ThreadPoolExecutor`` with one worker per
   shard, each using its own connection (the classic "ParallelConnection");
5. psycopg 3, raw ``asyncio.gather`` over one async connection per shard: the
   ceiling for a client on one event loop.

Every connection is in autocommit mode and opened (or, for shardq's lazy
pools, filled by the warm-up runs) before timing starts. The methods take
turns within each repetition, in a rotating order, so drift in the machine's
load affects them all alike. For each shard count the script prints the
median and p90 wall time of each method, its ratio to the raw gather's
median and the difference in milliseconds, then the aims being checked
("shardq async within 1 ms of raw gather", "shardq sync no slower than
threads"). The aims are informational: the script exits 0 either way.
``--quick`` makes 5 timed runs after 1 warm-up run (explicit options win),
in well under a minute.

With ``--json PATH`` the script also writes, after the run, the results as
JSON: one table of median latencies in ms (lower is better) with a result per
method and shard count (case "4 shards", "16 shards"; ``spread`` the fastest
and slowest run, ``correct`` true as every run returned one row per shard),
and every aim printed, per shard count. The printed output is the same.

Four throw-away PostgreSQL clusters are started with the test suite's helper
(``tests.fixtures.servers.start_pg_clusters``) and stopped at the end, whatever
happens. Shard ``i`` is database ``bench_i`` on cluster ``i % 4``, so 16 shards
are 4 databases per cluster and 4 shards are one database on each cluster.

Run it from anywhere (it needs the PostgreSQL server programs, psycopg 3,
psycopg2 and shardq installed)::

    python benchmarks/scatter_latency.py
    python benchmarks/scatter_latency.py --quick --json /tmp/scatter_latency.json
    python benchmarks/scatter_latency.py --repeat 50 --warmup 5 --shards 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
import psycopg2

import shardq

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = 4
SLEEP_SECONDS = 0.05
SQL = f"SELECT pg_sleep({SLEEP_SECONDS}) FROM t"
RAW = "raw asyncio.gather (psycopg 3)"
SHARDQ_ASYNC = "shardq async"
SHARDQ_SYNC = "shardq sync (DB-API)"
SERIAL = "psycopg2 serial loop"
THREADS = "psycopg2 thread per shard"
ASYNC_AIM_MS = 1.0

Row = tuple[Any, ...]


class Aim(NamedTuple):
    text: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Stats:
    """The timings of one method at one shard count, in seconds."""

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


def start_clusters() -> list[PgCluster]:
    """Start the PostgreSQL clusters with the test suite's helper."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(CLUSTERS, prefix="bench")


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


def shardq_config(dsns: Sequence[str]) -> dict[str, Any]:
    return {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": dsn, "pool_max_size": 2} for i, dsn in enumerate(dsns)],
        "tables": {"t": {"shard_key": "id"}},
    }


def check_rows(method: str, rows: Sequence[Row], shards: int) -> None:
    if len(rows) != shards:
        raise RuntimeError(f"{method}: expected one row per shard ({shards}), got {len(rows)}")


class Bench:
    """The five methods at one shard count, their connections open while in use."""

    def __init__(self, dsns: Sequence[str], runner: asyncio.Runner):
        self.dsns = list(dsns)
        self.shards = len(dsns)
        self.runner = runner
        self._sync_stack = contextlib.ExitStack()
        self._async_stack = contextlib.AsyncExitStack()
        self._aconn: shardq.AsyncConnection | None = None
        self._sconn: shardq.Connection | None = None
        self._serial: list[Any] = []
        self._threaded: list[Any] = []
        self._executor: ThreadPoolExecutor | None = None
        self._raw: list[psycopg.AsyncConnection[Row]] = []

    # -- lifecycle

    def open(self) -> None:
        try:
            self._open_sync()
            self.runner.run(self._open_async())
        except BaseException:
            self.close()
            raise

    def _open_sync(self) -> None:
        stack = self._sync_stack
        self._sconn = stack.enter_context(shardq.connect(self.config))
        for conns in (self._serial, self._threaded):
            for dsn in self.dsns:
                conn = psycopg2.connect(dsn)
                stack.callback(conn.close)
                conn.autocommit = True
                conns.append(conn)
        self._executor = stack.enter_context(
            ThreadPoolExecutor(max_workers=self.shards, thread_name_prefix="bench-shard")
        )
        # Start every worker thread now rather than during the first timed run.
        list(self._executor.map(time.sleep, [0.01] * self.shards))

    async def _open_async(self) -> None:
        stack = self._async_stack
        self._aconn = await stack.enter_async_context(shardq.AsyncConnection(self.config))
        for dsn in self.dsns:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            stack.push_async_callback(conn.close)
            self._raw.append(conn)

    def close(self) -> None:
        try:
            self.runner.run(self._async_stack.aclose())
        finally:
            self._sync_stack.close()

    @property
    def config(self) -> dict[str, Any]:
        return shardq_config(self.dsns)

    # -- the methods: each runs the statement once and returns its wall time

    def methods(self) -> dict[str, Callable[[], float]]:
        return {
            SHARDQ_ASYNC: lambda: self._timed_async(SHARDQ_ASYNC, self._shardq_async),
            SHARDQ_SYNC: lambda: self._timed(SHARDQ_SYNC, self._shardq_sync),
            SERIAL: lambda: self._timed(SERIAL, self._serial_loop),
            THREADS: lambda: self._timed(THREADS, self._thread_per_shard),
            RAW: lambda: self._timed_async(RAW, self._raw_gather),
        }

    def _timed(self, method: str, run: Callable[[], list[Row]]) -> float:
        start = time.perf_counter()
        rows = run()
        elapsed = time.perf_counter() - start
        check_rows(method, rows, self.shards)
        return elapsed

    def _timed_async(self, method: str, run: Callable[[], Awaitable[list[Row]]]) -> float:
        async def timed() -> float:
            # Timed inside the loop: entering asyncio.Runner.run is not the method's cost.
            start = time.perf_counter()
            rows = await run()
            elapsed = time.perf_counter() - start
            check_rows(method, rows, self.shards)
            return elapsed

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


def measure(bench: Bench, repeat: int, warmup: int) -> list[Stats]:
    """Warm every method up, then time ``repeat`` rounds, rotating the order each round."""
    methods = bench.methods()
    names = list(methods)
    for _ in range(warmup):
        for name in names:
            methods[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(methods[name]())
    return [Stats(name, tuple(samples[name])) for name in names]


def report(shards: int, results: Sequence[Stats], repeat: int, warmup: int) -> list[Aim]:
    """Print the table and the aims of one shard count; return the aims."""
    by_name = {s.method: s for s in results}
    raw = by_name[RAW].median
    title = f"{shards} shards: {SQL!r}, median and p90 of {repeat} runs after {warmup} warm-up runs"
    print(f"\n{title}\n{'=' * len(title)}")
    header = f"{'method':<30} {'median ms':>10} {'p90 ms':>10} {'x raw':>7} {'vs raw ms':>10}"
    print(header)
    print("-" * len(header))
    for s in results:
        print(
            f"{s.method:<30} {s.median * 1e3:>10.2f} {s.p90 * 1e3:>10.2f} "
            f"{s.median / raw:>7.3f} {(s.median - raw) * 1e3:>+10.2f}"
        )
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


def command_line(argv: Sequence[str]) -> str:
    """How the script was run, without ``--json PATH``."""
    words: list[str] = []
    skip = False
    for word in argv:
        if not skip and word != "--json" and not word.startswith("--json="):
            words.append(word)
        skip = word == "--json"
    return shlex.join(["python", f"benchmarks/{Path(__file__).name}", *words])


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
                "correct": True,  # check_rows() raises on a wrong row count
                "note": f"p90 {s.p90 * 1e3:.2f} ms, {s.median / raw:.3f} x raw",
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
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
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
    command = command_line(sys.argv[1:] if argv is None else argv)
    measured = []
    print(f"starting {CLUSTERS} PostgreSQL clusters...", flush=True)
    clusters = start_clusters()
    try:
        dsns = create_shards(clusters, max(args.shards))
        with asyncio.Runner() as runner:
            for shards in args.shards:
                bench = Bench(dsns[:shards], runner)
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
