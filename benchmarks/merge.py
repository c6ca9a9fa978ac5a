"""Merge throughput: 5,000,000 rows streamed through shardq's ORDER BY merge, and its regroup.

Two tables are spread over 4 shards by shardq's own placement
(``load_config(config).placement.shard_for(id)``), one database on each of 4
throw-away PostgreSQL clusters, and a 5th cluster, the single node, holds all
the rows of both. Rows are generated from a fixed seed and loaded with
``COPY ... (FREEZE)``:

- ``t (id bigint primary key, v bigint)``, ``--rows`` rows (5,000,000 by
  default), ``v`` drawn from ``[0, rows)`` (so many rows tie on ``v`` and
  ``id`` breaks the ties);
- ``tg (id bigint primary key, g integer, v bigint, x numeric(12,2))``,
  ``--group-rows`` rows (1,000,000 by default: the regroup is not what the
  streaming scenario is about, and at 5,000,000 rows it would double the run),
  ``v`` as above and ``x`` from ``[-10,000,000.00, 10,000,000.00)``. ``g``
  takes ``--groups`` values (100,000 by default) and every group is on every
  shard: the k-th row of a shard (by id) has ``g = k % groups``. (``g = id %
  groups`` would not do: with 10 rows per group a group is missing from a
  given shard with probability (3/4)**10, about 5.6%.) The script checks this
  on each shard and prints it.

1. Streaming ORDER BY merge, ``SELECT id, v FROM t ORDER BY v, id`` (every
   row): rows per second and peak RSS of each contender, rows handed on in
   batches and dropped as they arrive:

   - shardq's async API (``await cur.next_batch()`` until it is empty);
   - shardq's DB-API facade (``cur.fetchmany(10000)`` until it is empty);
   - psycopg serial loop: one psycopg 3 connection per shard, each shard's
     sorted rows fetched in turn with ``fetchall()``, then ``heapq.merge`` on
     ``(v, id)``: what a careful user writes;
   - psycopg2 thread per shard: ``fetchall()`` in a thread per shard (a
     ``ThreadPoolExecutor`` whose threads are started beforehand), then
     ``heapq.merge`` on ``(v, id)``: the classic approach;
   - the ``parallel-connection`` package (0.1.2) itself: a
     ``ParallelConnection`` over one psycopg2 connection per shard, per run
     ``cursor()``, ``execute(sql)``, ``fetchall()``, ``close()``. Its
     ``fetchall`` concatenates the shards' results, so its answer is out of
     order and listed WRONG;
   - SQLAlchemy's horizontal sharding extension: a ``ShardedSession`` over one
     ``Engine`` per shard (psycopg2 driver, ``AUTOCOMMIT``), ``t`` mapped,
     choosers placing rows by shardq's placement and an ``execute_chooser``
     returning every shard; per run a new session executes
     ``select(id, v).order_by(v, id)`` and reads it by ``partitions()``.
     SQLAlchemy runs it on each shard in turn and concatenates the results
     (``Result.merge``), so its answer is out of order too: WRONG;
   - raw gather, psycopg 3: ``asyncio.gather`` over one async connection per
     shard, ``cursor.stream(sql, size=2000)`` as shardq's driver does, no
     merge: the ceiling for the driver shardq uses, its row count checked only;
   - raw gather, asyncpg: one connection per shard, a server-side cursor each
     (in a transaction, as asyncpg's cursors need) read by ``fetch(2000)``, no
     merge: the ceiling for the fastest driver, its row count checked only
     (``fetch`` in batches: iterating the cursor row by row with a prefetch of
     2,000 is about twice as slow);
   - the single node running the statement (psycopg 3 stream, as above).

   Every contender runs in a worker process of its own, started with
   :mod:`multiprocessing`'s "spawn" method while this process generates the
   rows (a fresh interpreter: it imports this script, i.e. psycopg 3 and
   shardq, and its contender's library, and connects) and driven over a pipe;
   it times its runs itself. Its memory is then its own: the RSS just before
   its first run (after a garbage collection and ``malloc_trim``), and the
   peak RSS of its runs (the process's ``VmHWM``, reset to the current RSS
   before the first run through ``/proc/self/clear_refs``; ``ru_maxrss``
   where there is no ``/proc``: on Linux it survives ``exec``, so a spawned
   child reports at least its parent's size). Both are printed: the peak
   (absolute, MB, imports included) and its growth over the RSS before the
   first run. shardq opens its pools in its first run, so their connections
   count in its growth. The ``fetchall`` contenders hold every row; shardq
   streams. (No :mod:`tracemalloc` figure: tracing the allocations of
   5,000,000 rows would take a run of its own per contender, several times
   slower.)

2. GROUP BY regroup, ``SELECT g, count(*), sum(v), avg(x) FROM tg GROUP BY
   g``: shardq async and sync, the raw fetch of the per-shard partial
   statement shardq sends (taken from its planner, ``Planner.plan(sql).sql``),
   the same raw fetch folding the partial rows into a Python dict as they
   arrive (a hand-written merge), the dict merge alone over partial rows
   already in memory, and the single node running the original statement.
   These run in this process, after the workers have stopped.

Runs are timed end to end with :func:`time.perf_counter`. Every connection is
in autocommit mode (asyncpg's, outside its cursors' transactions, commit each
statement) and opened (or, for shardq's lazy pools and SQLAlchemy's engine
pools, filled by the warm-up run) before timing starts. The contenders take
turns within each repetition, in a rotating order, so drift in the machine's
load affects them all alike: ``--warmup`` untimed runs (1 by default), then
``--repeat`` timed runs (3 by default). A full run took 6.5 minutes on a
2-core machine (generating and loading the 12,000,000 rows about 40 s of it,
the ORDER BY runs 5 minutes, SQLAlchemy's 16 s each the slowest); ``--quick``
(100,000 rows of ``t``, 200,000 of ``tg``, 20,000 groups) about 25 s. For
each statement the script prints the median and p90 wall time of
each contender, rows per second (ORDER BY), the ratio to the raw fetch and to
the single node, the peak RSS (ORDER BY), the answer's check, and the aims
being checked ("shardq at most 1.3 times the raw fetch"). The aims are
informational: the script exits 0 either way. A contender that raises is
reported as FAILED and dropped; the others go on.

Correctness is checked in the first warm-up run, which is not timed, against
the single node's answer. ORDER BY: the exact sequence of rows, as a
:class:`Fingerprint` taken in the worker as the rows arrive, in constant
memory (their count, a digest of their values as 8-byte integers row after
row, the value types of each batch's first row, and the first row whose ``v``
is below the previous row's, which names what is wrong with a concatenated
answer); the raw gathers are unmerged, so only their row count is checked.
GROUP BY: shardq's rows by ``g``, the numeric ``avg`` equal as a
:class:`~decimal.Decimal` and written with the same digits. Every run's row
count is checked too. A fast wrong answer is listed as WRONG.

With ``--json PATH`` the script also writes, after the run, the results as
JSON: a table of ORDER BY rows per second (the median run; higher is better), a
table of the ORDER BY contenders' peak RSS in MB (the note gives the growth),
a table of GROUP BY median wall times in seconds, ``correct`` from the check
against the single node (null where there is none: the reference itself and
the row-count-only contenders), and every aim printed. The printed output is
the same.

Five throw-away PostgreSQL clusters are started with the test suite's helper
(``tests.fixtures.servers.start_pg_clusters``) and stopped by pid at the end,
whatever happens (SIGTERM, as sent by ``timeout``, is handled like Ctrl-C); the
worker processes are stopped by the script (terminated by pid if they do not
exit).

Run it from anywhere (it needs the PostgreSQL server programs, psycopg 3,
psycopg2, asyncpg, SQLAlchemy 2, parallel-connection and shardq installed:
``pip install -e '.[bench]'``)::

    python benchmarks/merge.py
    python benchmarks/merge.py --quick
    python benchmarks/merge.py --quick --json /tmp/merge.json
    python benchmarks/merge.py --rows 10000000 --group-rows 2000000 --groups 200000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import gc
import hashlib
import heapq
import itertools
import json
import multiprocessing
import operator
import os
import platform
import random
import signal
import statistics
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import psycopg
from _common import (
    command_line,
    interrupt_on_sigterm,
    maxrss,
    peak_rss,
    reset_peak_rss,
    rss,
    stamp,
    stop_clusters,
    trim_heap,
    versions,
)
from psycopg import sql as pgsql

import shardq
from shardq.engine import DEFAULT_FETCH_SIZE
from shardq.sql.plan import Planner

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from multiprocessing.connection import Connection as Pipe
    from multiprocessing.context import SpawnContext, SpawnProcess
    from typing import TypeAlias

    from tests.fixtures.servers import PgCluster

    Sink: TypeAlias = Callable[[Sequence["Row"]], object]  # where a run hands its rows

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_merge"
SEED = 20240531
ORDER_SQL = "SELECT id, v FROM t ORDER BY v, id"
MERGE_KEY = itemgetter(1, 0)  # (v, id) of a row (id, v): ORDER_SQL's sort key
CHECK_KEY = itemgetter(1)  # v: cheaper to check than (v, id); the digest sees the rest
GROUP_SQL = "SELECT g, count(*), sum(v), avg(x) FROM tg GROUP BY g"
TABLES = {  # created without their primary key, added after COPY
    "t": "CREATE TABLE t (id bigint, v bigint)",
    "tg": "CREATE TABLE tg (id bigint, g integer, v bigint, x numeric(12,2))",
}
FETCH_SIZE = DEFAULT_FETCH_SIZE  # rows per batch read from a shard, shardq's default
BATCH = 10_000  # rows per fetchmany() of the DB-API, and per batch of a merged list
COPY_CHUNK = 50_000  # lines per COPY write
RATIO_AIM = 1.3
MB = 2**20

SHARDQ_ASYNC = "shardq async"
SHARDQ_SYNC = "shardq sync (DB-API)"
SERIAL = "psycopg serial loop + heapq.merge"
THREADS = "psycopg2 thread per shard + heapq.merge"
PARALLEL = "parallel-connection"
SQLALCHEMY = "SQLAlchemy ShardedSession"
RAW = "raw gather, 4 shards (psycopg 3)"
ASYNCPG = "raw gather, 4 shards (asyncpg)"
HAND = "raw gather + dict merge"
DICT_ONLY = "dict merge only (in memory)"
SINGLE = "single node (psycopg 3)"
SHARDQ = (SHARDQ_ASYNC, SHARDQ_SYNC)

Row = tuple[Any, ...]
T = TypeVar("T")


class Run(NamedTuple):
    """One run of a contender: its wall time in seconds and the rows it got."""

    seconds: float
    rows: int


class Memory(NamedTuple):
    """A worker's RSS just before its first run and its peak over its runs, in bytes."""

    before: int
    peak: int

    @property
    def growth(self) -> int:
        return self.peak - self.before


class Verdict(NamedTuple):
    """A contender's answer checked: right, wrong or not checked (None), and how."""

    correct: bool | None
    text: str


class Aim(NamedTuple):
    text: str
    passed: bool | None  # None: not measured
    detail: str


@dataclass(frozen=True, slots=True)
class Stats:
    """The timings of one contender on one statement, in seconds."""

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
    """What was loaded, per table, shard and single node, and how long it took."""

    rows: int
    group_rows: int
    groups: int
    shard_rows: dict[str, int]
    shard_group_rows: dict[str, int]
    shard_groups: dict[str, int]
    single_rows: int
    single_group_rows: int
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
    title: str
    results: Sequence[Stats]
    failed: dict[str, str]
    verdicts: dict[str, Verdict]
    aims: list[Aim]
    rows: int | None = None  # rows of every answer, for rows/s (ORDER BY)
    memory: dict[str, Memory] = field(default_factory=dict)  # ORDER BY


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
        "tables": {"t": {"shard_key": "id"}, "tg": {"shard_key": "id"}},
    }


def _placement() -> Any:
    """shardq's placement of 4 shards (the DSNs play no part in it)."""
    dsns = [f"postgresql://u@127.0.0.1:1/d{i}" for i in range(SHARDS)]
    return shardq.load_config(shardq_config(dsns)).placement


def _numeric_text(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def generate(
    rows: int, group_rows: int, groups: int, shard_names: Sequence[str]
) -> dict[str, dict[str, list[str]]]:
    """The COPY text lines of ``t`` and ``tg`` on each shard, placed by shardq's rule.

    Raises:
        RuntimeError: a shard got fewer ``tg`` rows than there are groups.
    """
    placement = _placement()
    ids: dict[str, list[int]] = {name: [] for name in shard_names}
    keys = range(1, max(rows, group_rows) + 1)
    for id_, shard in zip(keys, map(placement.shard_for, keys), strict=True):
        ids[shard].append(id_)
    # Each shard's ids are ascending: those of a table of n rows are a prefix.
    t_ids = {name: own[: bisect.bisect_right(own, rows)] for name, own in ids.items()}
    tg_ids = {name: own[: bisect.bisect_right(own, group_rows)] for name, own in ids.items()}
    short = {name: len(own) for name, own in tg_ids.items() if len(own) < groups}
    if short:
        raise RuntimeError(
            f"shards {short} hold fewer rows than --groups ({groups}): every group cannot "
            "be on every shard; use more --group-rows or fewer --groups"
        )
    rng = random.Random(SEED)
    lines: dict[str, dict[str, list[str]]] = {}
    for name in shard_names:
        lines[name] = {
            "t": [f"{id_}\t{rng.randrange(rows)}\n" for id_ in t_ids[name]],
            "tg": [
                f"{id_}\t{k % groups}\t{rng.randrange(group_rows)}\t"
                f"{_numeric_text(rng.randrange(-(10**9), 10**9))}\n"
                for k, id_ in enumerate(tg_ids[name])
            ],
        }
    return lines


def load(dsn: str, tables: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, int]]:
    """Create the tables and COPY their lines in; each table's row and distinct-``g`` counts."""
    counts = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, lines in tables.items():
            name = pgsql.Identifier(table)
            copy = pgsql.SQL("COPY {} FROM STDIN (FREEZE)").format(name)
            # FREEZE (the table is new in this transaction): rows written frozen and
            # all-visible, so neither VACUUM nor the first reads set their hint bits.
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(TABLES[table])
                with cur.copy(copy) as cp:
                    for start in range(0, len(lines), COPY_CHUNK):
                        cp.write("".join(lines[start : start + COPY_CHUNK]))
            conn.execute(pgsql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(name))
            conn.execute(pgsql.SQL("VACUUM (ANALYZE) {}").format(name))
            groups = "count(DISTINCT g)" if table == "tg" else "0"
            query = pgsql.SQL("SELECT count(*), {} FROM {}").format(pgsql.SQL(groups), name)
            row = conn.execute(query).fetchone()
            assert row is not None
            counts[table] = (int(row[0]), int(row[1]))
    return counts


def create_databases(clusters: Sequence[PgCluster]) -> tuple[list[str], str]:
    """Create the (empty) database on every cluster; the shards' DSNs and the single node's."""
    for cluster in clusters:
        cluster.create_database(DBNAME)
    dsns = [cluster.dsn(DBNAME) for cluster in clusters]
    return dsns[:SHARDS], dsns[SHARDS]


def load_data(
    shard_dsns: Sequence[str], single_dsn: str, rows: int, group_rows: int, groups: int
) -> Dataset:
    """Generate the rows and load them into the shards and the single node."""
    names = [f"s{i}" for i in range(SHARDS)]
    began = time.perf_counter()
    lines = generate(rows, group_rows, groups, names)
    everything = {
        table: [line for name in names for line in lines[name][table]] for table in TABLES
    }
    generated = time.perf_counter() - began
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
    shards = dict(zip(names, counts[:SHARDS], strict=True))
    single = counts[SHARDS]
    return Dataset(
        rows=rows,
        group_rows=group_rows,
        groups=groups,
        shard_rows={name: c["t"][0] for name, c in shards.items()},
        shard_group_rows={name: c["tg"][0] for name, c in shards.items()},
        shard_groups={name: c["tg"][1] for name, c in shards.items()},
        single_rows=single["t"][0],
        single_group_rows=single["tg"][0],
        single_groups=single["tg"][1],
        generate_seconds=generated,
        load_seconds=loaded,
    )


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Answer:
    """A sequence of rows in brief: equal answers are the same rows in the same order."""

    rows: int
    digest: str | None  # None: not all values were 64-bit integers
    types: tuple[tuple[str, ...], ...]  # the value types of each batch's first row, distinct
    disorder: str | None = field(compare=False)  # the first row out of order, if any


class Fingerprint:
    """An :class:`Answer` taken from rows of integers as they arrive, in constant memory.

    The digest is BLAKE2b over the rows' values as 8-byte integers, row after
    row: exact for ``bigint`` columns (what ``ORDER_SQL`` returns), whatever
    the batches (a value that is not a 64-bit integer leaves no digest). The
    value types of each batch's first row are kept too (``True`` packs as
    ``1``). ``key`` names the first row out of order: the first whose key is
    below the previous row's.

    >>> a, b = Fingerprint(CHECK_KEY), Fingerprint(CHECK_KEY)
    >>> a.add([(1, 5), (2, 5)]); a.add([(0, 6)])
    >>> b.add([(1, 5)]); b.add([(2, 5), (0, 6)])
    >>> a.answer() == b.answer(), a.answer().disorder
    (True, None)
    >>> c = Fingerprint(CHECK_KEY)
    >>> c.add([(0, 6), (1, 5), (2, 5)])
    >>> c.answer() == a.answer(), c.answer().disorder
    (False, 'row 1 (1, 5) after (0, 6)')
    """

    def __init__(self, key: Callable[[Row], Any]) -> None:
        self._key = key
        self._hash: hashlib.blake2b | None = hashlib.blake2b(digest_size=16)
        self._types: dict[tuple[str, ...], None] = {}
        self._last: Row | None = None
        self._disorder: str | None = None
        self.rows = 0

    def add(self, batch: Sequence[Row]) -> None:
        if not batch:
            return
        if self._hash is not None:
            values = list(itertools.chain.from_iterable(batch))
            try:
                self._hash.update(struct.pack(f"{len(values)}q", *values))
            except struct.error:
                self._hash = None
        self._types[tuple(type(value).__name__ for value in batch[0])] = None
        if self._disorder is None:
            run = batch if self._last is None else [self._last, *batch]
            keys = list(map(self._key, run))
            if not all(map(operator.le, keys, keys[1:])):
                i = next(i for i in range(1, len(keys)) if keys[i] < keys[i - 1])
                index = self.rows + i - (len(run) - len(batch))
                self._disorder = f"row {index:,} {tuple(run[i])!r} after {tuple(run[i - 1])!r}"
            self._last = batch[-1]
        self.rows += len(batch)

    def answer(self) -> Answer:
        digest = None if self._hash is None else self._hash.hexdigest()
        return Answer(self.rows, digest, tuple(self._types), self._disorder)


def order_verdict(answer: Answer, reference: Answer) -> Verdict:
    """Whether an ORDER BY answer is the single node's, and if not how it differs."""
    if reference.digest is None:
        return Verdict(None, "not checked: the single node's values are not all integers")
    if answer == reference:
        return Verdict(True, "= single node")
    problems = []
    if answer.rows != reference.rows:
        problems.append(f"{answer.rows:,} rows, the single node {reference.rows:,}")
    if answer.disorder is not None:
        problems.append(f"out of ORDER BY order from {answer.disorder}")
    if answer.types != reference.types:
        problems.append(f"value types {answer.types}, the single node {reference.types}")
    if not problems:
        problems.append("other rows, or in another order, than the single node's")
    return Verdict(False, "WRONG: " + "; ".join(problems))


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


def group_verdict(got: Sequence[Row], expected: Sequence[Row]) -> Verdict:
    """Whether GROUP BY rows are the single node's by group key (values, digits, types)."""
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
    if problems:
        return Verdict(False, "WRONG: " + "; ".join(problems))
    return Verdict(True, f"= single node ({len(common):,} groups, Decimal digits equal)")


# --------------------------------------------------------------------------- the contenders


@dataclass(frozen=True, slots=True)
class Target:
    """What a contender runs where (picklable: it is sent to a worker process)."""

    sql: str
    shard_dsns: tuple[str, ...]
    single_dsn: str


def _discard(batch: Sequence[Row]) -> None:
    """The sink of a timed run: rows are counted by the contender and dropped."""


def feed(rows: Iterable[Row], sink: Sink) -> int:
    """Hand ``rows`` to ``sink`` in lists of :data:`BATCH`; return how many there were."""
    it = iter(rows)
    count = 0
    while batch := list(itertools.islice(it, BATCH)):
        sink(batch)
        count += len(batch)
    return count


class Contender:
    """One way of running ``target.sql``; ``run`` hands its rows to a sink in batches.

    ``open`` connects (what it opens goes on ``stack`` or ``astack``, which
    ``close`` closes); ``run`` returns the wall time and the row count.
    """

    merged: ClassVar[bool] = True  # False: rows come unmerged, only their count is checked

    def __init__(self, target: Target, runner: asyncio.Runner) -> None:
        self.target = target
        self.runner = runner
        self.stack = contextlib.ExitStack()
        self.astack = contextlib.AsyncExitStack()

    def open(self) -> None:
        raise NotImplementedError

    def run(self, sink: Sink) -> Run:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.runner.run(self.astack.aclose())
        finally:
            self.stack.close()


class SyncContender(Contender):
    """A contender whose ``fetch`` blocks; timed around it."""

    def run(self, sink: Sink) -> Run:
        start = time.perf_counter()
        rows = self.fetch(sink)
        return Run(time.perf_counter() - start, rows)

    def fetch(self, sink: Sink) -> int:
        raise NotImplementedError


class AsyncContender(Contender):
    """A contender whose ``fetch`` is a coroutine, run on the runner's loop and timed there."""

    def open(self) -> None:
        self.runner.run(self.aopen())

    async def aopen(self) -> None:
        raise NotImplementedError

    def run(self, sink: Sink) -> Run:
        async def timed() -> Run:
            # Timed inside the loop: entering asyncio.Runner.run is not the method's cost.
            start = time.perf_counter()
            rows = await self.fetch(sink)
            return Run(time.perf_counter() - start, rows)

        return self.runner.run(timed())

    async def fetch(self, sink: Sink) -> int:
        raise NotImplementedError

    async def connect_psycopg(self, dsn: str) -> psycopg.AsyncConnection[Row]:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        self.astack.push_async_callback(conn.close)
        return conn


class ShardqAsync(AsyncContender):
    """shardq's async API: ``next_batch()`` until it is empty."""

    conn: shardq.AsyncConnection

    async def aopen(self) -> None:
        self.conn = await shardq.AsyncConnection.connect(shardq_config(self.target.shard_dsns))
        self.astack.push_async_callback(self.conn.close)

    async def fetch(self, sink: Sink) -> int:
        cur = await self.conn.execute(self.target.sql)
        count = 0
        while batch := await cur.next_batch():
            sink(batch)
            count += len(batch)
        return count


class ShardqSync(SyncContender):
    """shardq's DB-API facade: ``fetchmany(BATCH)`` until it is empty."""

    conn: shardq.Connection

    def open(self) -> None:
        self.conn = self.stack.enter_context(shardq.connect(shardq_config(self.target.shard_dsns)))

    def fetch(self, sink: Sink) -> int:
        cur = self.conn.execute(self.target.sql)
        count = 0
        while rows := cur.fetchmany(BATCH):
            sink(rows)
            count += len(rows)
        return count


class SerialLoop(SyncContender):
    """One psycopg 3 connection per shard, ``fetchall()`` from each in turn, ``heapq.merge``."""

    conns: list[psycopg.Connection[Row]]

    def open(self) -> None:
        self.conns = [
            self.stack.enter_context(psycopg.connect(dsn, autocommit=True))
            for dsn in self.target.shard_dsns
        ]

    def fetch(self, sink: Sink) -> int:
        per_shard = [conn.execute(self.target.sql).fetchall() for conn in self.conns]
        return feed(heapq.merge(*per_shard, key=MERGE_KEY), sink)


def _psycopg2_connections(stack: contextlib.ExitStack, dsns: Iterable[str]) -> list[Any]:
    import psycopg2

    conns = []
    for dsn in dsns:
        conn = psycopg2.connect(dsn)
        stack.callback(conn.close)
        conn.autocommit = True
        conns.append(conn)
    return conns


class ThreadPerShard(SyncContender):
    """psycopg2, ``fetchall()`` in a thread per shard, then ``heapq.merge``."""

    conns: list[Any]
    pool: ThreadPoolExecutor

    def open(self) -> None:
        self.conns = _psycopg2_connections(self.stack, self.target.shard_dsns)
        self.pool = self.stack.enter_context(
            ThreadPoolExecutor(max_workers=len(self.conns), thread_name_prefix="shard")
        )
        # Start every thread now rather than in the first run.
        list(self.pool.map(time.sleep, [0.01] * len(self.conns)))

    def _fetchall(self, conn: Any) -> list[Row]:
        with conn.cursor() as cur:
            cur.execute(self.target.sql)
            rows: list[Row] = cur.fetchall()
            return rows

    def fetch(self, sink: Sink) -> int:
        per_shard = list(self.pool.map(self._fetchall, self.conns))
        return feed(heapq.merge(*per_shard, key=MERGE_KEY), sink)


class ParallelConnections(SyncContender):
    """The ``parallel-connection`` package: its ``fetchall()`` concatenates the shards' rows."""

    parallel: Any

    def open(self) -> None:
        from parallel_connection.parallel_connection import ParallelConnection

        self.parallel = ParallelConnection(
            _psycopg2_connections(self.stack, self.target.shard_dsns)
        )

    def fetch(self, sink: Sink) -> int:
        cur = self.parallel.cursor()
        try:
            cur.execute(self.target.sql)
            rows: list[Row] = cur.fetchall()
        finally:
            cur.close()
        return feed(rows, sink)


class ShardedSessions(SyncContender):
    """SQLAlchemy's ``ShardedSession``: each shard in turn, the results concatenated."""

    sessions: Callable[[], Any]
    statement: Any

    def open(self) -> None:
        from sqlalchemy import BigInteger, create_engine, make_url, select
        from sqlalchemy.ext.horizontal_shard import ShardedSession
        from sqlalchemy.orm import DeclarativeBase, mapped_column, sessionmaker

        class Base(DeclarativeBase):
            pass

        class OrderRow(Base):
            __tablename__ = "t"
            id = mapped_column(BigInteger, primary_key=True, autoincrement=False)
            v = mapped_column(BigInteger, nullable=False)

        config = shardq.load_config(shardq_config(self.target.shard_dsns))
        engines = {}
        for shard, dsn in zip(config.shard_names, self.target.shard_dsns, strict=True):
            url = make_url(dsn).set(drivername="postgresql+psycopg2")
            engine = create_engine(url, isolation_level="AUTOCOMMIT")
            self.stack.callback(engine.dispose)
            engines[shard] = engine
        self.sessions = sessionmaker(
            class_=ShardedSession,
            shards=engines,
            shard_chooser=lambda mapper, instance, clause=None: config.shard_for("t", instance.id),
            identity_chooser=lambda mapper, key, **kw: [config.shard_for("t", key[0])],
            execute_chooser=lambda context: list(engines),
        )
        self.statement = select(OrderRow.id, OrderRow.v).order_by(OrderRow.v, OrderRow.id)

    def fetch(self, sink: Sink) -> int:
        count = 0
        with self.sessions() as session:
            for rows in session.execute(self.statement).partitions(BATCH):
                sink(rows)
                count += len(rows)
        return count


class RawGather(AsyncContender):
    """psycopg 3, ``stream()`` from every shard at once, rows counted, not merged."""

    merged = False
    conns: list[psycopg.AsyncConnection[Row]]

    async def aopen(self) -> None:
        self.conns = [await self.connect_psycopg(dsn) for dsn in self.target.shard_dsns]

    async def _count(self, conn: psycopg.AsyncConnection[Row]) -> int:
        count = 0
        async for _ in conn.cursor().stream(self.target.sql, size=FETCH_SIZE):
            count += 1
        return count

    async def fetch(self, sink: Sink) -> int:
        return sum(await asyncio.gather(*(self._count(conn) for conn in self.conns)))


class AsyncpgGather(AsyncContender):
    """asyncpg, a server-side cursor on every shard at once, rows counted, not merged."""

    merged = False
    conns: list[Any]

    async def aopen(self) -> None:
        import asyncpg

        self.conns = []
        for dsn in self.target.shard_dsns:
            conn = await asyncpg.connect(dsn)
            self.astack.push_async_callback(conn.close)
            self.conns.append(conn)

    async def _count(self, conn: Any) -> int:
        count = 0
        async with conn.transaction():
            cursor = await conn.cursor(self.target.sql)
            while rows := await cursor.fetch(FETCH_SIZE):
                count += len(rows)
        return count

    async def fetch(self, sink: Sink) -> int:
        return sum(await asyncio.gather(*(self._count(conn) for conn in self.conns)))


class SingleNode(AsyncContender):
    """The single node, ``stream()`` as the raw gather does, rows handed on in batches."""

    conn: psycopg.AsyncConnection[Row]

    async def aopen(self) -> None:
        self.conn = await self.connect_psycopg(self.target.single_dsn)

    async def fetch(self, sink: Sink) -> int:
        count = 0
        batch: list[Row] = []
        async for row in self.conn.cursor().stream(self.target.sql, size=FETCH_SIZE):
            batch.append(row)
            if len(batch) == FETCH_SIZE:
                sink(batch)
                count += len(batch)
                batch = []
        sink(batch)
        return count + len(batch)


class GatherDictMerge(RawGather):
    """The raw gather of the partial GROUP BY, folding each row into a dict as it arrives."""

    async def fetch(self, sink: Sink) -> int:
        groups: dict[Any, list[Any]] = {}

        async def one(conn: psycopg.AsyncConnection[Row]) -> None:
            async for row in conn.cursor().stream(self.target.sql, size=FETCH_SIZE):
                fold(groups, row)

        await asyncio.gather(*(one(conn) for conn in self.conns))
        rows = finish(groups)
        sink(rows)
        return len(rows)


class DictMergeOnly(SyncContender):
    """The dict merge alone, over the partial GROUP BY rows fetched once at open."""

    merged = False
    partials: list[list[Row]]

    def open(self) -> None:
        self.partials = []
        for dsn in self.target.shard_dsns:
            with psycopg.connect(dsn, autocommit=True) as conn:
                self.partials.append(conn.execute(self.target.sql).fetchall())

    def fetch(self, sink: Sink) -> int:
        groups: dict[Any, list[Any]] = {}
        for rows in self.partials:
            for row in rows:
                fold(groups, row)
        merged = finish(groups)
        sink(merged)
        return len(merged)


#: The ORDER BY contenders, in the order they are printed; each runs in a worker process.
ORDER_CONTENDERS: dict[str, type[Contender]] = {
    SHARDQ_ASYNC: ShardqAsync,
    SHARDQ_SYNC: ShardqSync,
    SERIAL: SerialLoop,
    THREADS: ThreadPerShard,
    PARALLEL: ParallelConnections,
    SQLALCHEMY: ShardedSessions,
    RAW: RawGather,
    ASYNCPG: AsyncpgGather,
    SINGLE: SingleNode,
}


# --------------------------------------------------------------------------- worker processes

_CHECK, _RUN, _STOP = "check", "run", "stop"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def serve(name: str, target: Target, pipe: Pipe) -> None:
    """A worker process: open one ORDER BY contender, then run it as the pipe says.

    Every reply is ``(True, value)`` or ``(False, error)``: first None once the
    contender is open, then per command a :class:`Run` (``run``), a :class:`Run`
    and an :class:`Answer` (``check``), or the :class:`Memory` of the runs
    (``stop``, None if there was no run).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with asyncio.Runner() as runner:
        contender = ORDER_CONTENDERS[name](target, runner)
        try:
            contender.open()
        except Exception as exc:
            contender.close()
            pipe.send((False, _describe(exc)))
            return
        before: int | None = None
        try:
            pipe.send((True, None))
            while (command := pipe.recv()) != _STOP:
                if before is None:
                    gc.collect()
                    trim_heap()
                    before = rss() or maxrss()
                    reset_peak_rss()
                try:
                    if command == _CHECK:
                        fingerprint = Fingerprint(CHECK_KEY)
                        run = contender.run(fingerprint.add)
                        reply: object = (run, fingerprint.answer())
                    else:
                        reply = contender.run(_discard)
                except Exception as exc:
                    pipe.send((False, _describe(exc)))
                else:
                    pipe.send((True, reply))
            pipe.send((True, None if before is None else Memory(before, peak_rss())))
        except EOFError:
            pass  # the parent is gone
        finally:
            contender.close()


class WorkerError(Exception):
    """A worker could not do what it was told; the message is the worker's exception."""


class Worker:
    """An ORDER BY contender in a process of its own, so that its memory is its own."""

    def __init__(self, context: SpawnContext, name: str, target: Target) -> None:
        self.name = name
        self._pipe, child_end = context.Pipe()
        self._process: SpawnProcess = context.Process(
            target=serve, args=(name, target, child_end), name=f"merge: {name}", daemon=True
        )
        self._child_end = child_end
        self._waiting = False  # for a reply: the worker is busy

    def start(self) -> None:
        self._process.start()
        self._child_end.close()
        self._waiting = True

    def _call(self, command: str | None) -> Any:
        if command is not None:
            self._pipe.send(command)
            self._waiting = True
        try:
            ok, value = self._pipe.recv()
        except EOFError:
            self._process.join(timeout=5)
            raise WorkerError(f"the worker exited (code {self._process.exitcode})") from None
        self._waiting = False
        if not ok:
            raise WorkerError(value)
        return value

    def opened(self) -> None:
        """Wait until the contender is open (raises WorkerError if it could not open)."""
        self._call(None)

    def check(self) -> tuple[Run, Answer]:
        """One untimed run, its rows fingerprinted as they arrive."""
        run, answer = self._call(_CHECK)
        return run, answer

    def run(self) -> Run:
        """One run, its rows counted and dropped."""
        run: Run = self._call(_RUN)
        return run

    def stop(self) -> Memory | None:
        """Stop the worker; the memory of its runs, if it could tell."""
        memory = None
        try:
            if self._waiting:  # in the middle of a run: this process was interrupted
                self._process.terminate()  # by its pid
            elif self._process.is_alive():
                memory = self._call(_STOP)
        except (OSError, WorkerError):
            pass  # it died: its failure is reported already
        finally:
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()
            self._pipe.close()
        return memory


def start_workers(target: Target) -> dict[str, Worker]:
    """Start a worker process per ORDER BY contender; they import and connect meanwhile."""
    context = multiprocessing.get_context("spawn")
    workers = {name: Worker(context, name, target) for name in ORDER_CONTENDERS}
    try:
        for worker in workers.values():
            worker.start()
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: Mapping[str, Worker]) -> dict[str, Memory]:
    """Stop the workers; the memory of each one that ran."""
    memory = {}
    for name, worker in workers.items():
        if (used := worker.stop()) is not None:
            memory[name] = used
    return memory


# --------------------------------------------------------------------------- measuring


class Tally:
    """The runs of one statement's contenders: timings, failures and wrong row counts."""

    def __init__(self, expected: Mapping[str, int]) -> None:
        self.expected = dict(expected)
        self.samples: dict[str, list[float]] = {name: [] for name in expected}
        self.failed: dict[str, str] = {}
        self.miscounts: dict[str, str] = {}

    def attempt(self, name: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None if the contender failed (now or before)."""
        if name in self.failed:
            return None
        try:
            return call()
        except Exception as exc:
            self.failed[name] = _describe(exc)
            return None

    def counted(self, name: str, rows: int) -> None:
        expected = self.expected[name]
        if rows != expected and name not in self.miscounts:
            self.miscounts[name] = f"counted {rows:,} rows, expected {expected:,}"

    def stats(self) -> list[Stats]:
        return [Stats(name, tuple(runs)) for name, runs in self.samples.items() if runs]


def measure(tally: Tally, runs: Mapping[str, Callable[[], Run]], repeat: int, warmup: int) -> None:
    """``warmup`` untimed rounds, then ``repeat`` timed rounds, rotating the order each round."""
    names = list(runs)
    for round_ in range(warmup + repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            run = tally.attempt(name, runs[name])
            if run is not None:
                tally.counted(name, run.rows)
                if round_ >= warmup:
                    tally.samples[name].append(run.seconds)


def _with_counts(verdicts: Mapping[str, Verdict], tally: Tally) -> dict[str, Verdict]:
    """The verdicts, a wrong row count in any run making an answer wrong."""
    out = dict(verdicts)
    for name, problem in tally.miscounts.items():
        out[name] = Verdict(False, f"WRONG ROW COUNT: {problem}; {out[name].text}")
    return out


def order_by(
    workers: Mapping[str, Worker], data: Dataset, args: argparse.Namespace
) -> tuple[Tally, dict[str, Verdict]]:
    """Check and time the ORDER BY contenders, each in its worker process."""
    tally = Tally(dict.fromkeys(workers, data.rows))
    began = time.perf_counter()
    for name, worker in workers.items():
        tally.attempt(name, worker.opened)
    print("  checking every answer (the first warm-up run)...", flush=True)
    answers: dict[str, Answer] = {}
    for name, worker in workers.items():
        checked = tally.attempt(name, worker.check)
        if checked is not None:
            tally.counted(name, checked[0].rows)
            answers[name] = checked[1]
    print(
        f"  {time.perf_counter() - began:.0f} s; {args.warmup - 1} more warm-up and "
        f"{args.repeat} timed rounds...",
        flush=True,
    )
    began = time.perf_counter()
    measure(tally, {n: w.run for n, w in workers.items()}, args.repeat, args.warmup - 1)
    print(f"  {time.perf_counter() - began:.0f} s", flush=True)
    verdicts = {name: Verdict(None, "-") for name in workers}
    reference = answers.get(SINGLE)
    for name, answer in answers.items():
        if name == SINGLE:
            verdicts[name] = Verdict(None, "reference")
        elif not ORDER_CONTENDERS[name].merged:
            verdicts[name] = Verdict(None, "row count only (unmerged)")
        elif reference is not None:
            verdicts[name] = order_verdict(answer, reference)
    return tally, _with_counts(verdicts, tally)


def group_by(
    shard_dsns: Sequence[str], single_dsn: str, data: Dataset, args: argparse.Namespace
) -> tuple[Tally, dict[str, Verdict], str]:
    """Check and time the GROUP BY contenders in this process; the partial statement too."""
    partial = Planner(shardq.load_config(shardq_config(shard_dsns))).plan(GROUP_SQL).sql
    whole = Target(GROUP_SQL, tuple(shard_dsns), single_dsn)
    partials = Target(partial, tuple(shard_dsns), single_dsn)
    kinds: dict[str, tuple[type[Contender], Target, int]] = {
        SHARDQ_ASYNC: (ShardqAsync, whole, data.groups),
        SHARDQ_SYNC: (ShardqSync, whole, data.groups),
        RAW: (RawGather, partials, data.partial_rows),
        HAND: (GatherDictMerge, partials, data.groups),
        DICT_ONLY: (DictMergeOnly, partials, data.groups),
        SINGLE: (SingleNode, whole, data.groups),
    }
    tally = Tally({name: rows for name, (_, _, rows) in kinds.items()})
    got: dict[str, list[Row]] = {}
    with asyncio.Runner() as runner, contextlib.ExitStack() as stack:
        contenders = {name: kind(target, runner) for name, (kind, target, _) in kinds.items()}
        for name, contender in contenders.items():
            stack.callback(contender.close)
            tally.attempt(name, contender.open)
        for name, contender in contenders.items():
            rows: list[Row] = []
            checked = tally.attempt(name, functools.partial(contender.run, rows.extend))
            if checked is not None:
                tally.counted(name, checked.rows)
                got[name] = rows
        runs = {name: (lambda c=c: c.run(_discard)) for name, c in contenders.items()}
        measure(tally, runs, args.repeat, args.warmup - 1)
    verdicts = {
        SINGLE: Verdict(None, "reference"),
        RAW: Verdict(None, "row count only (partials)"),
        HAND: Verdict(None, "not checked (reference)"),
        DICT_ONLY: Verdict(None, "not checked (reference)"),
    }
    for name in SHARDQ:
        if name in got and SINGLE in got:
            verdicts[name] = group_verdict(got[name], got[SINGLE])
    return tally, _with_counts(verdicts, tally), partial


# --------------------------------------------------------------------------- reporting


def _title(text: str) -> None:
    print(f"\n{text}\n{'=' * len(text)}")


def report(outcome: Outcome) -> dict[str, float]:
    """Print the table of one statement; return the medians."""
    _title(outcome.title)
    medians = {s.method: s.median for s in outcome.results}
    raw = medians.get(RAW)
    single = medians.get(SINGLE)
    rate = f" {'rows/s':>11}" if outcome.rows is not None else ""
    memory = f" {'peak MB':>8} {'growth MB':>9}" if outcome.memory else ""
    header = (
        f"{'contender':<40} {'median s':>9} {'p90 s':>8}{rate} {'x raw':>7} {'x single':>8}"
        f"{memory}  answer"
    )
    print(header)
    print("-" * len(header))
    for s in outcome.results:
        ratio_raw = f"{s.median / raw:>7.3f}" if raw else f"{'-':>7}"
        ratio_single = f"{s.median / single:>8.3f}" if single else f"{'-':>8}"
        rate = f" {outcome.rows / s.median:>11,.0f}" if outcome.rows is not None else ""
        memory = ""
        if outcome.memory:
            used = outcome.memory.get(s.method)
            memory = (
                f" {used.peak / MB:>8.0f} {used.growth / MB:>+9.0f}"
                if used
                else f" {'-':>8} {'-':>9}"
            )
        verdict = outcome.verdicts.get(s.method, Verdict(None, "-"))
        print(
            f"{s.method:<40} {s.median:>9.3f} {s.p90:>8.3f}{rate} {ratio_raw} {ratio_single}"
            f"{memory}  {verdict.text}"
        )
    for name, error in outcome.failed.items():
        print(f"{name:<40} FAILED: {error}")
    return medians


def report_aims(medians: dict[str, float], baseline: str) -> list[Aim]:
    """Print the aims of one statement; return them."""
    raw = medians.get(RAW)
    aims = []
    for method in SHARDQ:
        got = medians.get(method)
        text = f"{method} at most {RATIO_AIM:g} x {baseline}"
        if got is None or raw is None:
            aims.append(Aim(text, None, "not measured"))
            continue
        ratio = got / raw
        extra = (got - raw) * 1e3
        aims.append(Aim(text, ratio <= RATIO_AIM, f"{ratio:.3f} x, {extra:+,.0f} ms"))
    print()
    for aim in aims:
        verdict = {True: "PASS", False: "MISS", None: "----"}[aim.passed]
        print(f"  {verdict}  {aim.text} ({aim.detail})")
    return aims


def report_machine() -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc {affinity}), "
        f"{platform.system()} {platform.release()}"
    )
    print(versions())


def report_data(data: Dataset, server_version: str) -> None:
    print(
        f"PostgreSQL {server_version}: generated {data.rows:,} rows of t and "
        f"{data.group_rows:,} of tg in {data.generate_seconds:.1f} s, loaded (COPY, primary "
        f"key, VACUUM ANALYZE) into 4 shards + single node in {data.load_seconds:.1f} s"
    )
    for name in data.shard_rows:
        print(
            f"  shard {name}: t {data.shard_rows[name]:>10,} rows, "
            f"tg {data.shard_group_rows[name]:>9,} rows, {data.shard_groups[name]:>7,} distinct g"
        )
    print(
        f"  single  : t {data.single_rows:>10,} rows, tg {data.single_group_rows:>9,} rows, "
        f"{data.single_groups:>7,} distinct g"
    )
    everywhere = "yes" if data.every_group_everywhere else "NO"
    print(
        f"  every one of the {data.groups:,} groups on every shard: {everywhere} "
        f"({data.partial_rows:,} partial rows)"
    )
    if sum(data.shard_rows.values()) != data.rows or data.single_rows != data.rows:
        print("  WARNING: the loaded rows of t do not add up to --rows")
    if data.single_group_rows != data.group_rows:
        print("  WARNING: the loaded rows of tg do not add up to --group-rows")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stream an ORDER BY of N rows through shardq's merge and the alternatives "
        "(rows/s, peak RSS, correctness), and time its GROUP BY regroup, on 4 shards."
    )
    parser.add_argument(
        "--rows", type=int, default=None, metavar="N", help="rows of t (default 5,000,000)"
    )
    parser.add_argument(
        "--group-rows",
        type=int,
        default=None,
        metavar="N",
        help="rows of tg, for the GROUP BY (default 1,000,000)",
    )
    parser.add_argument(
        "--groups", type=int, default=None, metavar="N", help="distinct g (default 100,000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="N", help="timed runs per contender (default 3)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed runs first, the first checking the answer (default 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100,000 rows of t, 200,000 of tg, 20,000 groups (explicit options win)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH"
    )
    args = parser.parse_args(argv)
    defaults = (100_000, 200_000, 20_000) if args.quick else (5_000_000, 1_000_000, 100_000)
    for option, default in zip(("rows", "group_rows", "groups"), defaults, strict=True):
        if getattr(args, option) is None:
            setattr(args, option, default)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (it checks the answers, fills the pools)")
    if args.rows < 1:
        parser.error("--rows must be positive")
    if args.groups < 1 or args.group_rows < SHARDS * args.groups:
        parser.error("--groups must be positive and --group-rows at least 4 x --groups")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: no directory {str(args.json.parent)!r}")
    return args


def run(clusters: Sequence[PgCluster], args: argparse.Namespace) -> list[Outcome]:
    """Load the data, then check, time and report both statements; return what was measured."""
    shard_dsns, single_dsn = create_databases(clusters)
    # The workers import and connect while this process generates the rows.
    print(f"starting {len(ORDER_CONTENDERS)} worker processes, one per ORDER BY contender")
    workers = start_workers(Target(ORDER_SQL, tuple(shard_dsns), single_dsn))
    try:
        data = load_data(shard_dsns, single_dsn, args.rows, args.group_rows, args.groups)
        version = clusters[0].execute("SHOW server_version")[0][0]
        report_data(data, str(version))
        print(f"\nORDER BY: {ORDER_SQL!r}", flush=True)
        tally, verdicts = order_by(workers, data, args)
    finally:
        memory = stop_workers(workers)
    runs = f"median and p90 of {args.repeat} runs after {args.warmup} warm-up run(s)"
    order = Outcome(
        "ORDER BY merge",
        f"ORDER BY merge: {ORDER_SQL!r}, {data.rows:,} rows from 4 shards; {runs}",
        tally.stats(),
        tally.failed,
        verdicts,
        [],
        data.rows,
        memory,
    )
    medians = report(order)
    order.aims.extend(report_aims(medians, "the raw fetch"))
    print(
        "\npeak MB: the worker process's peak RSS over its runs; growth: over its RSS before "
        "the first run"
    )

    print(f"\nGROUP BY: {GROUP_SQL!r}", flush=True)
    began = time.perf_counter()
    tally, verdicts, partial = group_by(shard_dsns, single_dsn, data, args)
    print(f"  {time.perf_counter() - began:.0f} s", flush=True)
    group = Outcome(
        "GROUP BY regroup",
        f"GROUP BY regroup: {GROUP_SQL!r}, {data.group_rows:,} rows, {data.groups:,} groups, "
        f"{data.partial_rows:,} partial rows; {runs}",
        tally.stats(),
        tally.failed,
        verdicts,
        [],
    )
    medians = report(group)
    print(f"\nper-shard statement (from shardq's planner): {partial}")
    group.aims.extend(report_aims(medians, "the raw partial fetch"))
    return [order, group]


def _result(
    outcome: Outcome, method: str, value: float | None, spread: list[float] | None, note: str
) -> dict[str, Any]:
    return {
        "contender": method,
        "shardq": method in SHARDQ,
        "case": outcome.case,
        "value": value,
        "spread": spread,
        "correct": outcome.verdicts.get(method, Verdict(None, "")).correct,
        "note": note,
    }


def results_json(
    args: argparse.Namespace, command: str, outcomes: Sequence[Outcome]
) -> dict[str, Any]:
    """The ``--json`` document: ORDER BY rows/s and peak RSS, GROUP BY wall time, the aims."""
    order, group = outcomes
    runs = f"median of {args.repeat} runs"
    assert order.rows is not None
    rates = []
    for s in order.results:
        verdict = order.verdicts.get(s.method, Verdict(None, "-")).text
        rates.append(
            _result(
                order,
                s.method,
                order.rows / s.median,
                [order.rows / max(s.samples), order.rows / min(s.samples)]
                if len(s.samples) > 1
                else None,
                f"median {s.median:.3f} s, p90 {s.p90:.3f} s; answer: {verdict}",
            )
        )
    peaks = [
        _result(
            order,
            method,
            used.peak / MB,
            None,
            f"growth {used.growth / MB:+.1f} MB over {used.before / MB:.1f} MB before the run",
        )
        for method, used in order.memory.items()
    ]
    times = []
    for s in group.results:
        verdict = group.verdicts.get(s.method, Verdict(None, "-")).text
        times.append(
            _result(
                group,
                s.method,
                s.median,
                [min(s.samples), max(s.samples)] if len(s.samples) > 1 else None,
                f"p90 {s.p90:.3f} s; answer: {verdict}",
            )
        )
    for outcome, table in ((order, rates), (group, times)):
        table += [
            _result(outcome, method, None, None, f"FAILED: {error}")
            for method, error in outcome.failed.items()
        ]
    return {
        "scenario": "merge",
        "title": f"Merge throughput: {order.rows:,} rows streamed through an ORDER BY merge "
        f"from 4 shards, and a GROUP BY regroup, against the alternatives and a single node",
        "command": command,
        "quick": args.quick,
        **stamp(),
        "tables": [
            {
                "title": f"ORDER BY merge of {order.rows:,} rows: throughput ({runs})",
                "metric": "rows/s",
                "higher_is_better": True,
                "results": rates,
            },
            {
                "title": "ORDER BY merge: peak RSS of each contender's process",
                "metric": "MB",
                "higher_is_better": False,
                "results": peaks,
            },
            {
                "title": f"GROUP BY regroup of {args.group_rows:,} rows: wall time ({runs})",
                "metric": "s",
                "higher_is_better": False,
                "results": times,
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
        outcomes = run(clusters, args)
    finally:
        stop_clusters(clusters)
        print(f"wall time {time.perf_counter() - began:.1f} s (maxrss {maxrss() / MB:.0f} MB)")
    if args.json is not None:
        with args.json.open("w", encoding="utf-8") as out:
            json.dump(results_json(args, command, outcomes), out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
