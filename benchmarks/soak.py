"""Soak: 200 concurrent clients for 60 s on shards with replicas, one replica killed half way.

Each shard (``--shards``, 4 by default) is a throw-away PostgreSQL primary with
one streaming standby made by ``pg_basebackup -R`` (the test suite's
``PgCluster.start_standby``), declared as the shard's ``replicas``; the
connection's ``read_policy`` (``--read-policy``, ``prefer-replica`` by
default) sends reads to the standbys. Two tables: ``kv (id bigint primary
key, grp int, n bigint, v text)`` with ``--rows`` rows (100,000; ``grp = id %
1000``, indexed) and ``ev (id bigint primary key, k bigint, amount int)``,
empty at first, both distributed by ``id``.

``--clients`` (200) asyncio tasks run on one event loop for ``--seconds``
(60), after ``--warmup`` (5) seconds of the same load that are not counted
(pools opened, statements prepared), each in a closed loop (the next
operation as soon as the last ended, no think time), picking its operation
at random with these weights:

- ``read`` 55: ``SELECT id, grp, n FROM kv WHERE id = %s``, routed to the
  key's shard, read on its standby;
- ``aggregate`` 10: ``SELECT grp, count(*), sum(n) FROM kv WHERE grp IN (%s,
  %s) GROUP BY grp ORDER BY grp``, on every shard's standby, regrouped;
- ``batch`` 5: ``execute_concurrent`` of 9 point reads and one aggregate (a
  batch runs on the primaries, as shardq documents);
- ``insert`` 12: ``INSERT INTO ev`` of a new id, routed;
- ``update`` 15: ``UPDATE kv SET n = n + 1 WHERE id = %s``, routed;
- ``transaction`` 3: ``async with conn.transaction():`` moving 1 from one
  ``kv`` row to another on another shard (two UPDATEs, in ascending id order
  so that two transactions never wait on each other across shards, which no
  server could detect as a deadlock), committed by two-phase commit.

One client is one task, as a user of asyncpg runs many tasks over one pool:
the reads, batches and routed writes of all 200 share one
:class:`shardq.AsyncConnection`, whose per-host pools are what an asyncpg
pool is. Their size, ``--pool-size``, is 8 connections per host by default:
all 8 servers and the client share 2 cores, so more backends per server add
context switches, not throughput (the client's one event loop is the
bottleneck), while 8 still lets a shard's statements overlap their round
trips; ``conn.stats()``'s ``waiting`` (sampled each second) shows how many
statements queued for one. A transaction, though, belongs to a connection
(psycopg's and asyncpg's do too: one acquires a connection from the pool for
it): a statement run on a connection while another task's transaction is open
there would join that transaction. So a transaction takes one of
``--tx-connections`` (8) more AsyncConnections from a queue, each with 2
connections per host (the transaction holds one per shard it writes), and
gives it back after; its latency includes the wait for one.

At ``--kill-at`` seconds (half way by default) the standby of shard ``s0`` is
killed: SIGKILL of its postmaster by pid (``--kill-mode immediate``: an
immediate shutdown, SIGQUIT, instead); its backends, orphaned, notice the
postmaster's death and exit (they are looked for by pid afterwards). shardq
should see the failure on the reads that were on that host (the circuit
breaker of :mod:`shardq.execute.hosts` marks it down and each such read is
started again once on the shard's primary), so errors, if any, belong to the
detection window: the kill's second and the ``--window`` (2) seconds after it.

Measured, per second: completed operations of each kind, errors (with their
messages), reads retried on another host, each host's statements (from
``conn.stats()``), the client's RSS and Python heap
(``sys.getallocatedblocks()``), and CPU in cores: this process, its servers
(the postmasters and their children) and the whole machine, whose rest is
other work sharing the cores. The heap is also measured idle, after
``gc.collect()``, once after the warm-up and once after the run: a leak
shows there, without the in-flight work and the garbage reference cycles
keep until a full collection. ``--tracemalloc`` adds traced bytes, and the
allocation sites that grew most between snapshots (idle after the warm-up,
the 10th second, the kill, 5 s after it, idle after the run), at a cost of
several times the client's CPU per operation. Latencies go into log-spaced
histograms (2 % wide buckets), so that the benchmark's own memory does not
grow with the operations it counts. Every answer is checked: a point read
returns its row, an aggregate the fixed count of its groups, a write one
row; at the end ``sum(n)`` over ``kv`` must equal the updates that
succeeded (transactions move, they do not add), ``ev`` must hold the inserts
that succeeded, and no transaction may be left prepared.

Printed: throughput (ops/s overall and per kind), p50/p99 latency per kind
(in a closed loop, mostly the queue: clients / throughput on average), the
seconds that had errors (and whether all are in the detection window), the
per-second table, memory in the first and last 10 s, ``conn.stats()`` per
host; ``--out`` writes a chart (throughput, errors and retries, memory, s0's
hosts' statements and CPU over time, the kill marked), ``--json PATH`` the
results in the format of ``python -m benchmarks``. Aims (reported, not
asserted): no error outside the detection window, RSS of the last 10 s
within 5 % of the first 10 s, every answer right.

Run it from anywhere (the PostgreSQL server programs, psycopg 3, shardq and,
for the chart, matplotlib installed)::

    python benchmarks/soak.py
    python benchmarks/soak.py --quick                      # 10 s, the kill at 5 s
    python benchmarks/soak.py --clients 50 --seconds 120 --read-policy round-robin
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import itertools
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from _common import command_line, interrupt_on_sigterm, rss, stamp, stop_clusters, versions

import shardq

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
DBNAME = "bench_soak"
GROUPS = 1000
TIMEOUT = 10.0  # seconds a statement may take (a stuck one is an error, not a hang)
WEIGHTS = {"read": 55, "aggregate": 10, "batch": 5, "insert": 12, "update": 15, "transaction": 3}
KINDS = tuple(WEIGHTS)
MEMORY_AIM = 0.05  # the last 10 s within 5 % of the first 10 s

READ = "SELECT id, grp, n FROM kv WHERE id = %s"
AGGREGATE = "SELECT grp, count(*), sum(n) FROM kv WHERE grp IN (%s, %s) GROUP BY grp ORDER BY grp"
INSERT = "INSERT INTO ev (id, k, amount) VALUES (%s, %s, %s)"
UPDATE = "UPDATE kv SET n = n + 1 WHERE id = %s"
TAKE = "UPDATE kv SET n = n - 1 WHERE id = %s"
GIVE = "UPDATE kv SET n = n + 1 WHERE id = %s"
SCHEMA = (
    "CREATE TABLE kv (id bigint PRIMARY KEY, grp int NOT NULL, n bigint NOT NULL, v text);"
    "CREATE INDEX kv_grp ON kv (grp);"
    "CREATE TABLE ev (id bigint PRIMARY KEY, k bigint NOT NULL, amount int NOT NULL)"
)


class WrongAnswerError(AssertionError):
    """An operation returned something other than the rows loaded say it must."""


# --------------------------------------------------------------------------- measures


class Histogram:
    """Latencies in log-spaced buckets (2 % wide, 10 µs to 1000 s): constant memory."""

    FIRST = 1e-5
    STEP = math.log(1.02)
    SIZE = int(math.log(1e8) / STEP) + 2

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE
        self.total = 0

    def add(self, seconds: float) -> None:
        index = int(math.log(max(seconds, self.FIRST) / self.FIRST) / self.STEP)
        self.counts[min(index, self.SIZE - 1)] += 1
        self.total += 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds (the middle of its bucket), None if empty."""
        if not self.total:
            return None
        cumulative = list(itertools.accumulate(self.counts))
        index = bisect.bisect_left(cumulative, q * self.total)
        return self.FIRST * math.exp((index + 0.5) * self.STEP)


@dataclass
class Timeline:
    """What happened in each second of the run, and the latencies of each kind."""

    seconds: int
    ops: dict[str, list[int]] = field(init=False)
    errors: dict[str, list[int]] = field(init=False)
    latency: dict[str, Histogram] = field(init=False)
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_errors: list[tuple[float, str, str]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    wrong_count: int = 0
    warmup_errors: int = 0
    late_errors: int = 0
    # Written rows that succeeded, and writes whose fate an error left unknown.
    updates: int = 0
    inserts: int = 0
    unsure_updates: int = 0
    unsure_inserts: int = 0
    # Per-second samples: RSS bytes, Python heap blocks, traced bytes, per-host statements.
    rss: list[int | None] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    traced: list[int] = field(default_factory=list)
    hosts: dict[str, list[int]] = field(default_factory=dict)
    retries: list[int] = field(default_factory=list)
    # Per host: the most statements seen waiting for a pool connection (sampled each second).
    waiting: dict[str, int] = field(default_factory=dict)
    # Per-second CPU, in cores: this client, the servers (the postmasters and their
    # children), and the whole machine (so the rest is other work sharing it).
    cpu_client: list[float] = field(default_factory=list)
    cpu_servers: list[float] = field(default_factory=list)
    cpu_machine: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ops = {kind: [0] * self.seconds for kind in KINDS}
        self.errors = {kind: [0] * self.seconds for kind in KINDS}
        self.latency = {kind: Histogram() for kind in KINDS}

    def done(self, kind: str, second: int, seconds: float) -> None:
        if 0 <= second < self.seconds:
            self.ops[kind][second] += 1
            self.latency[kind].add(seconds)

    def failed(self, kind: str, second: int, at: float, exc: BaseException) -> None:
        if isinstance(exc, WrongAnswerError):
            if len(self.wrong) < 20:
                self.wrong.append(f"{kind}: {exc}")
            self.wrong_count += 1
        if 0 <= second < self.seconds:
            self.errors[kind][second] += 1
        elif second < 0:
            self.warmup_errors += 1
        else:
            self.late_errors += 1  # an operation in flight at the end
        message = (str(exc).splitlines() or [""])[0][:160]
        self.messages[(kind, f"{type(exc).__name__}: {message}")] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append((at, kind, f"{type(exc).__name__}: {message}"))

    def per_second(self) -> list[int]:
        return [sum(self.ops[kind][s] for kind in KINDS) for s in range(self.seconds)]

    def errors_per_second(self) -> list[int]:
        return [sum(self.errors[kind][s] for kind in KINDS) for s in range(self.seconds)]


def heap_blocks() -> int:
    return sys.getallocatedblocks()


def idle_memory() -> tuple[int | None, int]:
    """RSS and Python heap blocks with no operation running, after a full collection.

    Taken after the warm-up and after the clients ended: what a leak would
    leave behind, without the run's garbage that cycles keep until the
    cyclic collector's oldest generation runs (exceptions with their
    tracebacks, for one).
    """
    gc.collect()
    return rss(), heap_blocks()


_TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (every core, ``/proc/stat``)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICK


def _processes() -> Iterator[tuple[int, list[str]]]:
    """Every live process's pid and the fields of its ``/proc/PID/stat`` after the name."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        yield int(entry.name), fields


def servers_cpu(postmasters: Sequence[int]) -> float:
    """CPU seconds of the postmasters and their live children, and of children reaped."""
    total = 0
    wanted = set(postmasters)
    for pid, fields in _processes():
        parent = int(fields[1])
        if pid in wanted:  # its own, and its reaped children's (a backend that ended)
            total += sum(int(f) for f in fields[11:15])
        elif parent in wanted:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


# --------------------------------------------------------------------------- servers


def start_servers(shards: int, rows: int) -> tuple[list[PgCluster], list[PgCluster]]:
    """The primaries, loaded, then one standby each (a base backup of the loaded data)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import PgCluster, start_pg_clusters

    primaries = start_pg_clusters(shards, prefix="soak-primary")
    standbys = [PgCluster(name=f"soak-standby{i}") for i in range(shards)]
    try:
        for primary in primaries:
            primary.create_database(DBNAME)
            primary.execute(SCHEMA, DBNAME)
        asyncio.run(load(primaries, rows))
        with ThreadPoolExecutor(max_workers=shards) as pool:
            pairs = zip(standbys, primaries, strict=True)
            for future in [pool.submit(s.start_standby, p) for s, p in pairs]:
                future.result()
    except BaseException:
        stop_clusters([*standbys, *primaries])
        raise
    return primaries, standbys


async def load(primaries: Sequence[PgCluster], rows: int) -> None:
    config = shardq_config(primaries, [], "primary", None, 4)
    async with await shardq.connect_async(config) as conn:
        await conn.copy_in("kv", ((i, i % GROUPS, 0, f"v{i}") for i in range(1, rows + 1)))
    for primary in primaries:
        primary.execute("ANALYZE", DBNAME)


def shardq_config(
    primaries: Sequence[PgCluster],
    standbys: Sequence[PgCluster],
    policy: str,
    max_lag: float | None,
    pool_size: int,
) -> dict[str, Any]:
    shards = []
    for i, primary in enumerate(primaries):
        shard: dict[str, Any] = {"name": f"s{i}", "dsn": primary.dsn(DBNAME)}
        shard["pool_max_size"] = pool_size
        if standbys:
            shard["replicas"] = [standbys[i].dsn(DBNAME)]
        shards.append(shard)
    config: dict[str, Any] = {
        "dialect": "postgres",
        "shards": shards,
        "tables": {"kv": {"shard_key": "id"}, "ev": {"shard_key": "id"}},
        "read_policy": policy,
    }
    if max_lag is not None:
        config["max_replica_lag"] = max_lag
    return config


def wait_replayed(primaries: Sequence[PgCluster], standbys: Sequence[PgCluster]) -> None:
    """Wait until every standby has replayed what its primary wrote so far."""
    for primary, standby in zip(primaries, standbys, strict=True):
        (lsn,) = primary.execute("SELECT pg_current_wal_lsn()::text", DBNAME)[0]
        deadline = time.monotonic() + 60
        while not standby.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", DBNAME, params=[lsn]
        )[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{standby.name} did not replay {lsn} within 60 s")
            time.sleep(0.05)


def _process_start(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat`` (the start time): tells a process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def children_of(pid: int) -> list[tuple[int, str]]:
    """The (pid, start time) of ``pid``'s child processes (its backends, for a postmaster)."""
    return [(child, fields[19]) for child, fields in _processes() if int(fields[1]) == pid]


def kill(cluster: PgCluster, mode: str) -> list[tuple[int, str]]:
    """Kill ``cluster``'s postmaster by its pid; return its children as they were."""
    assert cluster.pid is not None
    children = children_of(cluster.pid)
    if mode == "sigkill":
        os.kill(cluster.pid, signal.SIGKILL)
    cluster.halt("immediate")  # after a SIGKILL: only reaps it
    return children


def orphans_gone(children: Sequence[tuple[int, str]], timeout: float = 10.0) -> str:
    """Wait for the killed postmaster's children to exit; SIGKILL (by pid) any that stay."""
    deadline = time.monotonic() + timeout
    alive = list(children)
    while alive and time.monotonic() < deadline:
        alive = [(pid, start) for pid, start in alive if _process_start(pid) == start]
        time.sleep(0.05)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if alive:
        return f"{len(alive)} of its {len(children)} processes were still there: killed by pid"
    return f"its {len(children)} other processes had exited"


# --------------------------------------------------------------------------- the workload


class Soak:
    """The connections, the keys, the clients and what they measure."""

    def __init__(
        self,
        primaries: Sequence[PgCluster],
        standbys: Sequence[PgCluster],
        args: argparse.Namespace,
    ):
        self.primaries = list(primaries)
        self.standbys = list(standbys)
        self.args = args
        self.config = shardq_config(
            primaries, standbys, args.read_policy, args.max_lag, args.pool_size
        )
        self.tx_config = shardq_config(primaries, standbys, "primary", None, 2)
        placement = shardq.load_config(self.config)
        self.by_shard: dict[str, list[int]] = {}
        for key in range(1, args.rows + 1):
            self.by_shard.setdefault(placement.shard_for("kv", key), []).append(key)
        self.shard_names = sorted(self.by_shard)
        self.timeline = Timeline(args.seconds)
        self.ev_ids = itertools.count(1)
        self.began = 0.0
        self.stop = asyncio.Event()
        self.kill_time: float | None = None
        self.detected_after: float | None = None
        self.orphans = ""
        self.conn: shardq.AsyncConnection | None = None
        self.tx_conns: asyncio.Queue[shardq.AsyncConnection] = asyncio.Queue()
        self.tx_all: list[shardq.AsyncConnection] = []
        # --tracemalloc: (when, file) of snapshots: idle after the warm-up, the 10th
        # second, before the kill, 5 s after it, idle after the run.
        self.snapshots: list[tuple[str, Path]] = []
        self.folder = tempfile.TemporaryDirectory(prefix="shardq-soak-")
        self.idle_before: tuple[int | None, int] = (None, 0)
        self.idle_after: tuple[int | None, int] = (None, 0)

    # -- operations: each raises WrongAnswerError when the answer is not the loaded one

    async def read(self, rng: random.Random) -> None:
        assert self.conn is not None
        key = rng.randint(1, self.args.rows)
        cur = await self.conn.execute(READ, [key])
        rows = await cur.fetchall()
        if len(rows) != 1 or rows[0][0] != key or rows[0][1] != key % GROUPS:
            raise WrongAnswerError(f"read of {key}: {rows!r}")

    def _groups(self, rng: random.Random) -> list[int]:
        return sorted(rng.sample(range(GROUPS), 2))

    def _check_groups(self, groups: list[int], rows: Sequence[Any]) -> None:
        want = [(g, len(range(g or GROUPS, self.args.rows + 1, GROUPS))) for g in groups]
        got = [(row[0], row[1]) for row in rows]
        if got != want:
            raise WrongAnswerError(f"aggregate of groups {groups}: {got!r}, not {want!r}")

    async def aggregate(self, rng: random.Random) -> None:
        assert self.conn is not None
        groups = self._groups(rng)
        cur = await self.conn.execute(AGGREGATE, groups)
        self._check_groups(groups, await cur.fetchall())

    async def batch(self, rng: random.Random) -> None:
        assert self.conn is not None
        keys = [rng.randint(1, self.args.rows) for _ in range(9)]
        groups = self._groups(rng)
        statements: list[tuple[str, list[int]]] = [(READ, [k]) for k in keys]
        statements.append((AGGREGATE, groups))
        outcomes = await self.conn.execute_concurrent(statements, raise_on_first_error=False)
        for outcome, key in zip(outcomes, keys, strict=False):
            if not outcome.success:
                raise outcome.result_or_exc
            rows = outcome.result_or_exc.rows
            if len(rows) != 1 or rows[0][0] != key:
                raise WrongAnswerError(f"batch read of {key}: {rows!r}")
        if not outcomes[-1].success:
            raise outcomes[-1].result_or_exc
        self._check_groups(groups, outcomes[-1].result_or_exc.rows)

    async def insert(self, rng: random.Random) -> None:
        assert self.conn is not None
        self.timeline.unsure_inserts += 1
        cur = await self.conn.execute(
            INSERT, [next(self.ev_ids), rng.randint(1, self.args.rows), rng.randint(1, 100)]
        )
        self.timeline.unsure_inserts -= 1
        if cur.rowcount != 1:
            raise WrongAnswerError(f"insert: rowcount {cur.rowcount}")
        self.timeline.inserts += 1

    async def update(self, rng: random.Random) -> None:
        assert self.conn is not None
        key = rng.randint(1, self.args.rows)
        self.timeline.unsure_updates += 1
        cur = await self.conn.execute(UPDATE, [key])
        self.timeline.unsure_updates -= 1
        if cur.rowcount != 1:
            raise WrongAnswerError(f"update of {key}: rowcount {cur.rowcount}")
        self.timeline.updates += 1

    async def transaction(self, rng: random.Random) -> None:
        first, second = rng.sample(self.shard_names, 2)
        keys = sorted([rng.choice(self.by_shard[first]), rng.choice(self.by_shard[second])])
        take_first = rng.random() < 0.5
        conn = await self.tx_conns.get()
        try:
            async with conn.transaction():
                for key, take in zip(keys, (take_first, not take_first), strict=True):
                    cur = await conn.execute(TAKE if take else GIVE, [key])
                    if cur.rowcount != 1:
                        raise WrongAnswerError(f"transaction on {key}: rowcount {cur.rowcount}")
        finally:
            self.tx_conns.put_nowait(conn)

    # -- clients and watchers

    async def client(self, number: int) -> None:
        rng = random.Random(number)
        operations: dict[str, Callable[[random.Random], Any]] = {
            kind: getattr(self, kind) for kind in KINDS
        }
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        timeline = self.timeline
        while not self.stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            started = time.monotonic()
            try:
                await operations[kind](rng)
            except Exception as exc:
                now = time.monotonic()
                timeline.failed(kind, int(now - self.began), now - self.began, exc)
            else:
                now = time.monotonic()
                timeline.done(kind, int(now - self.began), now - started)

    def _host_statements(self) -> tuple[dict[str, int], int]:
        """Statements so far per host, and reads retried; the most statements waiting noted."""
        assert self.conn is not None
        stats = self.conn.stats()
        for h in stats:
            host = f"{h.shard} {h.host}"
            waits = self.timeline.waiting
            waits[host] = max(waits.get(host, 0), h.waiting or 0)
        return {f"{h.shard} {h.host}": h.statements for h in stats}, sum(h.retries for h in stats)

    def _cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far: this process, the servers still running, the machine."""
        mine = os.times()
        pids = [c.pid for c in [*self.primaries, *self.standbys] if c.pid is not None]
        return mine.user + mine.system, servers_cpu(pids), machine_cpu()

    async def sampler(self) -> None:
        """Once a second: memory, CPU, and each host's statements (as counted so far)."""
        timeline = self.timeline
        last, last_retries = self._host_statements()
        cpu = await asyncio.to_thread(self._cpu)
        wall = time.monotonic()
        for second in range(1, self.args.seconds + 1):
            await asyncio.sleep(max(0.0, self.began + second - time.monotonic()))
            # The counts first, the moment the loop wakes us (the CPU takes a thread hop).
            now, retries = self._host_statements()
            for host, count in now.items():
                timeline.hosts.setdefault(host, []).append(count - last.get(host, 0))
            timeline.retries.append(retries - last_retries)
            last, last_retries = now, retries
            timeline.rss.append(rss())
            timeline.blocks.append(heap_blocks())
            now_cpu = await asyncio.to_thread(self._cpu)
            now_wall = time.monotonic()
            spent = [(b - a) / (now_wall - wall) for a, b in zip(cpu, now_cpu, strict=True)]
            timeline.cpu_client.append(spent[0])
            # (the killed standby's past CPU leaves the sum: never below 0)
            timeline.cpu_servers.append(max(0.0, spent[1]))
            timeline.cpu_machine.append(spent[2])
            cpu, wall = now_cpu, now_wall
            if self.args.tracemalloc:
                timeline.traced.append(tracemalloc.get_traced_memory()[0])
                if second == min(10, self.args.seconds // 3):
                    self.snapshot(f"second {second}")

    async def killer(self) -> None:
        """Kill s0's standby at --kill-at; note when its host first counts an error."""
        await asyncio.sleep(max(0.0, self.began + self.args.kill_at - time.monotonic()))
        assert self.conn is not None
        replica = ("s0", "replica 1")

        def replica_errors() -> int:
            assert self.conn is not None
            return sum(h.errors for h in self.conn.stats() if (h.shard, h.host) == replica)

        before = replica_errors()
        self.snapshot("the kill")
        standby = self.standbys[0]
        pid = standby.pid
        self.kill_time = time.monotonic() - self.began
        children = await asyncio.to_thread(kill, standby, self.args.kill_mode)
        print(
            f"  {self.kill_time:5.2f} s: killed s0's standby ({self.args.kill_mode}, "
            f"postmaster pid {pid})",
            flush=True,
        )
        waiting = asyncio.create_task(asyncio.to_thread(orphans_gone, children))
        while not self.stop.is_set() and time.monotonic() - self.began < self.args.seconds:
            if replica_errors() > before:
                self.detected_after = time.monotonic() - self.began - self.kill_time
                break
            await asyncio.sleep(0.01)
        self.orphans = await waiting
        if tracemalloc.is_tracing():
            await asyncio.sleep(max(0.0, self.began + self.args.kill_at + 5 - time.monotonic()))
            if not self.stop.is_set():
                self.snapshot("5 s after the kill")

    async def run(self) -> None:
        args = self.args
        self.conn = await shardq.connect_async(self.config, timeout=TIMEOUT)
        for _ in range(args.tx_connections):
            tx = await shardq.connect_async(self.tx_config, timeout=TIMEOUT)
            self.tx_all.append(tx)
            self.tx_conns.put_nowait(tx)
        try:
            # Warm-up, untimed: every kind once (plans parsed, the catalog read), then
            # every client for --warmup seconds (pools opened, statements prepared),
            # counted in no second (they are all before the run's first).
            rng = random.Random(-1)
            for kind in KINDS:
                await getattr(self, kind)(rng)
            self.began = time.monotonic() + 1e9
            warming = [asyncio.create_task(self.client(-1 - i)) for i in range(args.clients)]
            await asyncio.sleep(args.warmup)
            self.stop.set()
            await asyncio.gather(*warming)
            self.stop = asyncio.Event()
            if args.tracemalloc:
                tracemalloc.start()
            self.idle_before = idle_memory()
            self.snapshot("idle, after the warm-up")
            self.began = time.monotonic()
            clients = [asyncio.create_task(self.client(i)) for i in range(args.clients)]
            watchers = [asyncio.create_task(self.sampler())]
            if args.kill_at < args.seconds:
                watchers.append(asyncio.create_task(self.killer()))
            await asyncio.sleep(max(0.0, self.began + args.seconds - time.monotonic()))
            self.stop.set()
            await asyncio.gather(*watchers)
            _, pending = await asyncio.wait(clients, timeout=2 * TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            self.idle_after = idle_memory()
            if args.tracemalloc:
                self.snapshot("idle, after the run")
                self.report_growth()
                tracemalloc.stop()
            self.final_stats = self.conn.stats()
            self.final_checks = await self.check()
        finally:
            for conn in [self.conn, *self.tx_all]:
                await conn.close()
            self.folder.cleanup()

    def snapshot(self, when: str) -> None:
        """With ``--tracemalloc``, a snapshot, kept in a file (not in the heap measured)."""
        if tracemalloc.is_tracing():
            path = Path(self.folder.name) / f"{len(self.snapshots)}.snapshot"
            tracemalloc.take_snapshot().dump(str(path))
            self.snapshots.append((when, path))

    def report_growth(self) -> None:
        """The allocation sites that grew most between the snapshots (``--tracemalloc``)."""
        loaded = [(when, tracemalloc.Snapshot.load(str(path))) for when, path in self.snapshots]
        pairs = list(itertools.pairwise(loaded))
        if len(loaded) > 2:
            pairs.append((loaded[0], loaded[-1]))
        for (since, first), (until, last) in pairs:
            growth = last.compare_to(first, "lineno")
            growth.sort(key=lambda stat: stat.size_diff, reverse=True)
            total = sum(stat.size_diff for stat in growth) / 1024
            print(f"\ntraced memory from {since} to {until}: {total:+.1f} KiB; grew most:")
            for stat in growth[:8]:
                size, count = stat.size_diff / 1024, stat.count_diff
                print(f"  {size:+9.1f} KiB {count:+7d} blocks  {stat.traceback}")

    async def check(self) -> list[str]:
        """The writes' totals on the primaries, and no transaction left prepared."""
        assert self.conn is not None
        t = self.timeline
        wrong = []
        cur = await self.conn.execute("SELECT sum(n), count(*) FROM kv", read_policy="primary")
        ((total, count),) = await cur.fetchall()
        if count != self.args.rows or not t.updates <= total <= t.updates + t.unsure_updates:
            wrong.append(
                f"kv: {count} rows, sum(n) {total}; {t.updates} updates succeeded "
                f"({t.unsure_updates} unsure)"
            )
        cur = await self.conn.execute("SELECT count(*) FROM ev", read_policy="primary")
        ((events,),) = await cur.fetchall()
        if not t.inserts <= events <= t.inserts + t.unsure_inserts:
            wrong.append(f"ev: {events} rows; {t.inserts} inserts succeeded")
        for primary in self.primaries:
            with psycopg.connect(primary.dsn(DBNAME), autocommit=True) as raw:
                row = raw.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()
            if row and row[0]:
                wrong.append(f"{primary.name}: {row[0]} transactions left prepared")
        return wrong


# --------------------------------------------------------------------------- report


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def memory_windows(t: Timeline, seconds: int) -> dict[str, tuple[float | None, float | None]]:
    """Mean RSS (MB), heap blocks (thousands) and traced MB over the first and last 10 s."""
    span = max(1, min(10, seconds // 3))
    found: dict[str, tuple[float | None, float | None]] = {}
    rss_mb = [r / 1e6 for r in t.rss if r is not None]
    for name, values in (
        ("RSS MB", rss_mb),
        ("Python heap, thousand blocks", [b / 1e3 for b in t.blocks]),
        ("tracemalloc MB", [b / 1e6 for b in t.traced]),
    ):
        if values:
            found[name] = (_mean(values[:span]), _mean(values[-span:]))
    return found


def summarize(soak: Soak) -> dict[str, Any]:
    """Print the report; return what the JSON file and the chart need."""
    args, t = soak.args, soak.timeline
    seconds = args.seconds
    per_second = t.per_second()
    errors = t.errors_per_second()
    total_ops = sum(per_second)
    title = (
        f"{args.clients} clients, {seconds} s, {args.shards} shards each with a standby, "
        f"read_policy {args.read_policy!r}, pools of {args.pool_size} per host"
    )
    print(f"\n{title}\n{'=' * len(title)}")
    print(f"{'kind':<12} {'ops':>8} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    kinds = []
    for kind in KINDS:
        ops = sum(t.ops[kind])
        hist = t.latency[kind]
        p50, p99 = hist.quantile(0.5), hist.quantile(0.99)
        errs = sum(t.errors[kind])
        print(f"{kind:<12} {ops:>8} {ops / seconds:>8.0f} {_ms(p50):>8} {_ms(p99):>8} {errs:>7}")
        kinds.append({"kind": kind, "ops": ops, "ops_s": ops / seconds, "p50": p50, "p99": p99,
                      "errors": errs})  # fmt: skip
    rate = total_ops / seconds
    print(f"{'all':<12} {total_ops:>8} {rate:>8.0f} {'':>8} {'':>8} {sum(errors):>7}")
    print(
        f"(a batch is 10 statements; a transaction 2 UPDATEs and a two-phase commit; "
        f"{args.tx_connections} transaction connections)"
    )

    kill_second = None if soak.kill_time is None else int(soak.kill_time)
    window = (
        set()
        if kill_second is None
        else set(range(kill_second, min(seconds, kill_second + args.window + 1)))
    )
    error_seconds = [s for s in range(seconds) if errors[s]]
    outside = [s for s in error_seconds if s not in window]
    print()
    if soak.kill_time is not None:
        detected = (
            "no error counted on its host"
            if soak.detected_after is None
            else f"first error counted on its host {soak.detected_after * 1e3:.0f} ms after"
        )
        print(f"kill of s0's standby at {soak.kill_time:.2f} s ({args.kill_mode}): {detected}; "
              f"{soak.orphans}")  # fmt: skip
        print(f"detection window: seconds {min(window)}-{max(window)}")
    print(f"seconds with errors: {len(error_seconds)} of {seconds}" + (
        f" ({', '.join(f'{s}: {errors[s]}' for s in error_seconds)})" if error_seconds else ""
    ))  # fmt: skip
    print(f"errors outside the detection window: {sum(errors[s] for s in outside)}"
          + (f" in seconds {outside}" if outside else "")
          + f"; during the warm-up: {t.warmup_errors}; after the end: {t.late_errors}")  # fmt: skip
    retried = sum(t.retries)
    print(f"reads retried on another host (conn.stats()): {retried}")
    for (kind, message), count in t.messages.most_common(10):
        print(f"  {count:>6} x {kind}: {message}")

    print(
        "\nper second: ops, errors, RSS MB, Python heap (thousand blocks), CPU in cores "
        "(this client, the servers, the whole machine: the rest is other work), client CPU ms/op"
    )
    rows = []
    for s in range(seconds):
        r = t.rss[s] if s < len(t.rss) else None
        b = t.blocks[s] if s < len(t.blocks) else None
        cpu = ""
        if s < len(t.cpu_client):
            mine = t.cpu_client[s]
            per_op = f"{mine * 1e3 / per_second[s]:6.2f}" if per_second[s] else "     -"
            cpu = f"  {mine:4.2f} {t.cpu_servers[s]:4.2f} {t.cpu_machine[s]:4.2f} {per_op}"
        mark = "  <- kill" if s == kill_second else ""
        rows.append(
            f"  {s:>3}: {per_second[s]:>6} {errors[s]:>5} "
            f"{'-' if r is None else f'{r / 1e6:7.1f}'} {'-' if b is None else f'{b / 1e3:7.1f}'}"
            + cpu
            + mark
        )
    print("\n".join(rows))
    if t.cpu_client:
        n = len(t.cpu_client)
        print(
            f"mean CPU: client {sum(t.cpu_client) / n:.2f} cores, servers "
            f"{sum(t.cpu_servers) / n:.2f}, machine {sum(t.cpu_machine) / n:.2f} "
            f"of {os.cpu_count()}; client CPU per op "
            f"{sum(t.cpu_client) * 1e3 / max(1, sum(per_second[:n])):.2f} ms"
        )

    memory = memory_windows(t, seconds)
    span = max(1, min(10, seconds // 3))
    print(f"\nmemory, mean of the first {span} s -> the last {span} s:")
    flat = True
    for name, (first, last) in memory.items():
        if first is None or last is None:
            continue
        change = (last - first) / first
        print(f"  {name:<30} {first:8.1f} -> {last:8.1f} ({change:+.1%})")
        if name == "RSS MB":
            flat = flat and change <= MEMORY_AIM
    (rss_before, blocks_before), (rss_after, blocks_after) = soak.idle_before, soak.idle_after
    heap_change = (blocks_after - blocks_before) / blocks_before if blocks_before else 0.0
    idle = (
        f"idle, after gc.collect(): Python heap {blocks_before / 1e3:.1f} -> "
        f"{blocks_after / 1e3:.1f} thousand blocks ({heap_change:+.1%})"
    )
    if rss_before and rss_after:
        idle += f", RSS {rss_before / 1e6:.1f} -> {rss_after / 1e6:.1f} MB"
    print(f"  {idle} (after the warm-up -> after the run)")

    print(
        "\nconn.stats() per host at the end (the connection of the reads, batches and routed "
        "writes; p50-p99: the time to a shard's first answer, of the last 1,024; most waiting: "
        "statements waiting for a pool connection, the most seen in the once-a-second samples)"
    )
    print(
        f"  {'shard':<5} {'host':<10} {'statements':>10} {'errors':>6} {'timeouts':>8} "
        f"{'retries':>7} {'open':>5} {'most waiting':>12} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7}"
    )
    for h in soak.final_stats:
        most = t.waiting.get(f"{h.shard} {h.host}", 0)
        print(
            f"  {h.shard:<5} {h.host:<10} {h.statements:>10} {h.errors:>6} {h.timeouts:>8} "
            f"{h.retries:>7} {h.open if h.open is not None else '-':>5} {most:>12} "
            f"{_ms(h.p50):>7} {_ms(h.p95):>7} {_ms(h.p99):>7}"
        )
    wrong = [*t.wrong, *soak.final_checks]
    wrong_count = t.wrong_count + len(soak.final_checks)
    print(f"\nanswers: {'ok' if not wrong else f'{wrong_count} WRONG: ' + '; '.join(wrong[:5])}")
    print(
        f"writes: {t.updates} updates, {t.inserts} inserts succeeded "
        f"({t.unsure_updates + t.unsure_inserts} unsure); totals checked on the primaries"
    )
    aims = [
        {
            "text": "no error outside the detection window",
            "passed": not outside and not t.warmup_errors and not t.late_errors,
            "detail": f"{len(error_seconds)} seconds with errors, {len(outside)} outside "
            f"seconds {min(window, default=0)}-{max(window, default=0)}; {sum(errors)} errors, "
            f"{t.warmup_errors} in the warm-up, {t.late_errors} after the end",
        },
        {
            "text": f"memory flat: RSS of the last {span} s within 5 % of the first {span} s",
            "passed": flat,
            "detail": "; ".join(
                [f"{n} {a:.1f} -> {b:.1f}" for n, (a, b) in memory.items() if a and b] + [idle]
            ),
        },
        {"text": "every answer right", "passed": not wrong, "detail": f"{wrong_count} wrong"},
    ]
    print()
    for aim in aims:
        print(f"  {'PASS' if aim['passed'] else 'MISS'}  {aim['text']} ({aim['detail']})")
    return {
        "kinds": kinds,
        "total_ops_s": total_ops / seconds,
        "per_second": per_second,
        "errors_per_second": errors,
        "error_seconds": error_seconds,
        "outside": outside,
        "memory": {k: list(v) for k, v in memory.items()},
        "aims": aims,
        "wrong": wrong,
    }


def chart(soak: Soak, path: Path) -> bool:
    """Throughput, errors, memory and s0's hosts over time, the kill marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no chart ({path.name}); pip install matplotlib")
        return False
    t, args = soak.timeline, soak.args
    # Counts of second s at its middle; samples taken at its end.
    xs = [s + 0.5 for s in range(args.seconds)]
    ends = [s + 1.0 for s in range(args.seconds)]
    figure, axes = plt.subplots(5, 1, figsize=(10, 12), sharex=True)
    throughput, errors, memory, hosts, cpu = axes
    throughput.plot(xs, t.per_second(), color="black", label="all")
    for kind in KINDS:
        throughput.plot(xs, t.ops[kind], label=kind, linewidth=1)
    throughput.set_ylabel("ops/s")
    throughput.legend(fontsize=7, ncol=4, loc="lower left")
    throughput.set_title(
        f"soak: {args.clients} clients, {args.shards} shards + standbys, "
        f"read_policy {args.read_policy}",
        fontsize=10,
        loc="left",
    )
    errors.bar(xs, t.errors_per_second(), color="#c0392b", label="errors")
    retries = t.retries[: len(xs)]
    errors.plot(xs[: len(retries)], retries, color="#7f8c8d", marker=".", linewidth=1,
                label="reads retried on another host")  # fmt: skip
    errors.set_ylabel("per second")
    errors.legend(fontsize=7, loc="upper right")
    rss_mb = [None if r is None else r / 1e6 for r in t.rss]
    memory.plot(ends[: len(rss_mb)], rss_mb, color="#2471a3", marker=".")
    memory.set_ylabel("RSS MB", color="#2471a3")
    memory.set_ylim(0, 1.25 * max([m for m in rss_mb if m is not None], default=1))
    heap = memory.twinx()  # below the RSS line, on a scale of its own
    if t.traced:
        values, label = [b / 1e6 for b in t.traced], "tracemalloc MB"
    else:
        values, label = [b / 1e3 for b in t.blocks], "Python heap, thousand blocks"
    heap.plot(ends[: len(values)], values, color="#e67e22", marker=".")
    heap.set_ylabel(label, color="#e67e22")
    heap.set_ylim(0, 1.6 * max(values, default=1))
    for host, counts in sorted(t.hosts.items()):
        if host.startswith("s0 "):
            hosts.plot(xs[: len(counts)], counts, label=host)
    hosts.set_ylabel("statements/s")
    hosts.legend(fontsize=7, loc="upper left")
    n = len(t.cpu_client)
    used = zip(t.cpu_machine, t.cpu_client, t.cpu_servers, strict=True)
    other = [max(0.0, machine - mine - servers) for machine, mine, servers in used]
    cpu.stackplot(ends[:n], t.cpu_client, t.cpu_servers, other,
                  labels=["this client", "its servers", "other work"],
                  colors=["#2471a3", "#85c1e9", "#d5d8dc"])  # fmt: skip
    cpu.set_ylabel("CPU, cores")
    cpu.set_ylim(0, os.cpu_count() or 2)
    cpu.legend(fontsize=7, loc="lower left", ncol=3)
    cpu.set_xlabel("seconds")
    if soak.kill_time is not None:
        for axis in axes:
            axis.axvline(soak.kill_time, color="#c0392b", linestyle="--", linewidth=1)
        throughput.annotate(f"s0's standby killed ({args.kill_mode})",
                            (soak.kill_time, throughput.get_ylim()[1]), fontsize=7,
                            color="#c0392b", ha="left", va="top")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def results_file(soak: Soak, found: dict[str, Any]) -> dict[str, Any]:
    args = soak.args
    correct = not found["wrong"]

    def table(title: str, metric: str, key: str, scale: float, higher: bool) -> dict[str, Any]:
        return {
            "title": title,
            "metric": metric,
            "higher_is_better": higher,
            "results": [
                {
                    "contender": kind["kind"],
                    "shardq": True,
                    "value": None if kind[key] is None else round(kind[key] * scale, 3),
                    "correct": correct,
                }
                for kind in found["kinds"]
            ],
        }

    return {
        "scenario": "soak",
        "title": f"Soak: {args.clients} clients for {args.seconds} s on {args.shards} shards with "
        f"standbys, one standby killed at {args.kill_at} s",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": [
            table("throughput per operation kind", "ops/s", "ops_s", 1, True),
            table("p99 latency per operation kind", "ms", "p99", 1e3, False),
        ],
        "aims": found["aims"],
        "timeline": {
            "ops_per_second": found["per_second"],
            "errors_per_second": found["errors_per_second"],
            "rss_mb": [None if r is None else round(r / 1e6, 1) for r in soak.timeline.rss],
            "kill_time": soak.kill_time,
        },
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Many clients of mixed reads and writes on shards with standbys, for a "
        "while; one standby killed half way. Throughput, latency, errors and memory over time."
    )
    parser.add_argument("--clients", type=int, default=None, help="client tasks (default 200)")
    parser.add_argument("--seconds", type=int, default=None, help="how long (default 60)")
    parser.add_argument("--shards", type=int, default=4, help="shards, each with a standby")
    parser.add_argument(
        "--kill-at", type=float, default=None, help="when s0's standby is killed (default half way)"
    )
    parser.add_argument(
        "--kill-mode",
        choices=("sigkill", "immediate"),
        default="sigkill",
        help="SIGKILL of the postmaster, or an immediate shutdown (SIGQUIT)",
    )
    parser.add_argument("--window", type=int, default=2, help="seconds after the kill's second "
                        "in which errors count as detection (default 2)")  # fmt: skip
    parser.add_argument("--rows", type=int, default=100_000, help="rows in kv (default 100,000)")
    parser.add_argument("--read-policy", default="prefer-replica", help="(default prefer-replica)")
    parser.add_argument(
        "--max-lag", type=float, default=None, help="max_replica_lag in seconds (default none)"
    )
    parser.add_argument("--pool-size", type=int, default=8, help="pool_max_size per host")
    parser.add_argument(
        "--tx-connections", type=int, default=8, help="connections for transactions (default 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds of load before the run (default 5)"
    )
    parser.add_argument("--tracemalloc", action="store_true", help="trace Python allocations")
    parser.add_argument("--quick", action="store_true", help="10 s and 50 clients (flags win)")
    parser.add_argument("--out", type=Path, default=HERE / "soak.png", help="the chart (PNG)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.seconds is None:
        args.seconds = 10 if args.quick else 60
    if args.clients is None:
        args.clients = 50 if args.quick else 200
    if args.warmup is None:
        args.warmup = 2.0 if args.quick else 5.0
    if args.kill_at is None:
        args.kill_at = args.seconds / 2
    if args.shards < 2 or args.seconds < 3 or args.clients < 1:
        parser.error("--shards must be at least 2 (transactions span two), --seconds at least 3")
    if args.rows < 2 * GROUPS:
        parser.error(f"--rows must be at least {2 * GROUPS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    began = time.perf_counter()
    print(versions())
    print(f"starting {args.shards} PostgreSQL primaries and {args.shards} standbys...", flush=True)
    primaries, standbys = start_servers(args.shards, args.rows)
    clusters = [*primaries, *standbys]
    print(f"  postmaster pids: {', '.join(str(c.pid) for c in clusters)}", flush=True)
    try:
        print(f"PostgreSQL {primaries[0].execute('SHOW server_version')[0][0]}", flush=True)
        wait_replayed(primaries, standbys)
        soak = Soak(primaries, standbys, args)
        print(f"running {args.clients} clients for {args.seconds} s...", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(soak.run())
            found = summarize(soak)
            if chart(soak, args.out):
                print(f"wrote {args.out}")
            if args.json is not None:
                args.json.write_text(json.dumps(results_file(soak, found), indent=2) + "\n")
    finally:
        stop_clusters(clusters)
        print(f"wall time {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
