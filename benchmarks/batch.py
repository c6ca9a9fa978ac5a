"""Batch throughput: shardq's concurrent batch API against hand-written clients.

A table ``kv (id bigint primary key, v text)`` of ``--rows`` rows (100,000 by
default) is spread over 4 shards, one database on each of 4 throw-away
PostgreSQL clusters, by shardq's own placement (``Config.shard_for("kv", id)``,
what ``conn.shard_for`` answers; declared ``[tables.kv] shard_key = "id"``).
The ids are distinct random 62-bit integers and each ``v`` is random text,
both from a fixed seed, so a wrong row cannot pass for the right one. Rows are
loaded with ``COPY`` per shard (``--load executemany`` or ``--load concurrent``
loads them through shardq's own batch API instead, and prints how long that
took). A 5th cluster, the single node, holds the whole table: every row, the
union of the shards' rows, loaded with one ``COPY`` after the shards (timed
apart); its row count and an order-free checksum of its rows are checked
against the shards' summed.

The workload is ``--lookups`` point lookups (20,000 by default)

    SELECT v FROM kv WHERE id = %s

for random existing keys (distinct while there are enough rows), the same keys
for every contender, with at most ``--concurrency`` (100) statements in flight.
The contenders:

1. shardq async, ``await conn.execute_concurrent_with_args(sql, [(k,) for k in
   keys], concurrency=100)`` on a :class:`shardq.AsyncConnection` whose shards
   have ``pool_max_size = --pool-size`` (default concurrency / 4 = 25);
2. shardq async, the general form ``execute_concurrent([(sql, (k,)) for k in
   keys], concurrency=100)`` on the same connection;
3. shardq sync, ``shardq.connect(config).execute_concurrent_with_args(...)``
   (skipped, with a note, while the DB-API facade lacks the method);
4. psycopg 3 async pipeline mode, one connection per shard: each shard's
   lookups are sent in chunks of concurrency / 4 (``cursor.executemany(...,
   returning=True)`` inside ``conn.pipeline()``, then a Sync), the results
   read set by set, all shards at once with ``asyncio.gather``;
5. psycopg 3 async, concurrency / 4 worker tasks per shard, each holding its
   own connection and pulling keys from its shard's queue;
6. the same with asyncpg (``$1`` placeholders, its statement cache);
7. a ``ThreadPoolExecutor`` of ``--threads`` (20) threads, each holding its own
   psycopg2 connection to every shard (thread-local), mapped over the keys;
8. a serial loop: one psycopg 3 sync connection per shard, one lookup at a time;
9. SQLAlchemy's horizontal sharding extension on its asyncio API, as its users
   write it: ``kv`` mapped as the ORM class ``Kv``, an ``async_sessionmaker``
   with ``sync_session_class=ShardedSession`` over one ``create_async_engine``
   per shard (asyncpg driver, ``AUTOCOMMIT``, a pool of concurrency / 4
   connections), and ``--concurrency`` tasks pulling keys from one queue, each
   lookup ``async with sessions() as session: await session.get(Kv, key)``
   (a session per lookup: a session keeps its shards' connections until it
   closes). Its choosers send each key where shardq's placement put it: the
   ``identity_chooser`` names the key's shard (SQLAlchemy 2 consults it only
   for the identity map), and the ``execute_chooser``, which picks the shards
   the SELECT runs on, finds the key in the statement's ``id = ?`` condition
   (``Session.get`` passes it as a parameter) and returns its shard alone;

and two extra lines: contender 1 on a connection with shardq's default pool
size (4 connections per shard); and, last, "single node, psycopg pipeline":
contender 4's code run against the single node, one server holding all the
data (what sharding is compared against), with as many connections as
contender 4 has over the shards (4, all to the single node) and the same
chunks of concurrency / 4, the keys dealt to the 4 connections round-robin in
input order, so the client does the same work and only the server side
differs. It is neither shardq nor a baseline of the aims.

The hand-written contenders, and SQLAlchemy's choosers, route each key to its
shard inside the timed region with shardq's placement (``placement.shard_for``,
the function ``conn.shard_for`` calls); the time that routing takes alone is
printed. The single node needs no routing: its round-robin split of the keys
is inside its time instead.
Every connection is in autocommit mode. Each contender runs the whole
workload once untimed first (connections opened, statements prepared), then
``--repeat`` (5) timed runs, the contenders taking turns in an order rotated
by one each round, so drift in the machine's load affects them all alike
(but SQLAlchemy, whose ORM spends over a millisecond of CPU per lookup on a
2-core machine, some 25 s a run with runs within 1 % of each other, is timed
in the first round only, which keeps the script's time). Each run is timed
end to end with :func:`time.perf_counter` (inside the event loop for asyncio
contenders), from the keys to every answer in memory, in input order. Every
run's answers are then checked, untimed, against the rows loaded:
one row per key holding the right ``v`` (and, for shardq, run on the key's
shard alone). The table gives each contender's median statements per second,
its ratio to the best hand-written asyncio contender (the fastest of 4, 5 and
6) and to the thread pool (7), and "ok" or "WRONG" beside it; then the aims
("shardq async at least 90 % of the best hand-written figure", "at least 1.4 x
the thread pool"). The aims are informational: the script exits 0 either way.

``--json PATH`` also writes the results, after the run, to PATH as JSON (the
scenario, the command, the machine, one table of statements per second: each
measured contender's median, its min-max over the runs and whether its answers
were right, and every aim with its verdict), printing nothing more.

Five throw-away PostgreSQL clusters (the 4 shards and the single node) are
started with the test suite's helper
(``tests.fixtures.servers.start_pg_clusters``) and stopped by pid at the end,
whatever happens (SIGTERM, as sent by ``timeout``, is handled like Ctrl-C).

Run it from anywhere (it needs the PostgreSQL server programs, psycopg 3,
psycopg2, asyncpg, SQLAlchemy 2 with its asyncio extra (``greenlet``) and
shardq installed)::

    python benchmarks/batch.py
    python benchmarks/batch.py --quick
    python benchmarks/batch.py --lookups 50000 --repeat 9 --pool-size 10
    python benchmarks/batch.py --quick --json batch.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
import psycopg2
import sqlalchemy
from _common import command_line, interrupt_on_sigterm, stamp, stop_clusters, versions
from sqlalchemy import BigInteger, Select, make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.ext.horizontal_shard import ShardedSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter

import shardq

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Mapper, ORMExecuteState
    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_batch"
SEED = 20240607
SQL = "SELECT v FROM kv WHERE id = %s"
SQL_ASYNCPG = "SELECT v FROM kv WHERE id = $1"
INSERT_SQL = "INSERT INTO kv (id, v) VALUES (%s, %s)"
COPY_CHUNK = 50_000  # lines per COPY write
DEFAULT_POOL = 4  # shardq's pool_max_size when the configuration says nothing
MAX_CONNECTIONS = 200  # tests/fixtures/servers.py starts every cluster with this
RESERVED_CONNECTIONS = 10  # the loader, psql checks, superuser_reserved_connections
SHARE_AIM = 0.9  # of the best hand-written figure
THREADS_AIM = 1.4  # times the thread pool's figure

SHARDQ_ARGS = "shardq async with_args"
SHARDQ_GENERAL = "shardq async execute_concurrent"
SHARDQ_SYNC = "shardq sync with_args (DB-API)"
SHARDQ_POOL4 = f"shardq async with_args, pool {DEFAULT_POOL}"
PIPELINE = "psycopg pipeline, 1 conn/shard"
WORKERS = "psycopg workers"
ASYNCPG = "asyncpg workers"
THREADS = "psycopg2 thread pool"
SERIAL = "psycopg serial loop"
SQLALCHEMY = "SQLAlchemy ShardedSession"
SINGLE_PIPELINE = "single node, psycopg pipeline"
HAND_WRITTEN_ASYNC = (PIPELINE, WORKERS, ASYNCPG)
SHARDQ_ASYNC = (SHARDQ_ARGS, SHARDQ_GENERAL)
SHARDQ_LINES = (*SHARDQ_ASYNC, SHARDQ_SYNC, SHARDQ_POOL4)
# A checksum of a node's kv rows that adds up over nodes: the union of the
# shards' rows is the single node's when their counts and sums are equal.
CHECKSUM_SQL = (
    "SELECT count(*), coalesce(sum(('x' || left(md5(id::text || ':' || v), 15))::bit(60)"
    "::bigint), 0) FROM kv"
)
# The slow contenders' timed runs (the others make --repeat): a run of SQLAlchemy's
# takes some 25 s at the default --lookups.
TIMED_RUNS = {SQLALCHEMY: 1}

Row = tuple[Any, ...]
Run = Callable[[], "tuple[float, list[Any], list[str]]"]


@dataclass(frozen=True, slots=True)
class Dataset:
    """The rows loaded: ``expected[id] = v``, and the keys to look up."""

    expected: dict[int, str]
    keys: list[int]
    shard_rows: dict[str, int]
    generate_seconds: float
    load_seconds: float
    load_how: str
    single_rows: int
    single_load_seconds: float
    single_is_union: bool  # the single node's count and checksum = the shards' summed


@dataclass(slots=True)
class Tally:
    """What one contender did: its timed runs, and what was wrong with its answers."""

    name: str
    label: str
    samples: list[float] = field(default_factory=list)
    runs_checked: int = 0
    wrong: list[str] = field(default_factory=list)
    failure: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def timed_runs(self) -> str:
        return f"{len(self.samples)} timed run{'' if len(self.samples) == 1 else 's'}"

    @property
    def answers(self) -> str:
        if not self.wrong:
            return f"ok ({self.runs_checked} runs checked)"
        return f"WRONG in {len(self.wrong)} of {self.runs_checked} runs: {self.wrong[0]}"


class _Base(DeclarativeBase):
    pass


class Kv(_Base):
    """Table ``kv`` as SQLAlchemy maps it; the same table on every shard."""

    __tablename__ = "kv"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    v: Mapped[str]


def looked_up_id(orm_context: ORMExecuteState) -> int | None:
    """The ``id`` a statement compares ``Kv.id`` to (``id = ?``), or None.

    As SQLAlchemy's sharding example reads its shard key, but the value may
    also be a parameter of the execution: ``Session.get`` binds the key so.
    """
    statement = orm_context.statement
    if not isinstance(statement, Select) or statement.whereclause is None:
        return None
    key_column = Kv.__table__.c.id
    parameters = orm_context.parameters
    for element in visitors.iterate(statement.whereclause):
        if not (
            isinstance(element, BinaryExpression)
            and element.operator is operators.eq
            and isinstance(element.right, BindParameter)
            and element.left.shares_lineage(key_column)
        ):
            continue
        bind = element.right
        if isinstance(parameters, dict) and bind.key in parameters:
            value = parameters[bind.key]
        else:
            value = bind.effective_value
        return None if value is None else int(value)
    return None


# --------------------------------------------------------------------------- servers and data


def start_clusters() -> list[PgCluster]:
    """Start the 4 shard clusters and the single node (the last) with the test suite's helper."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(SHARDS + 1, prefix="bench-batch")


def shardq_config(dsns: Sequence[str], pool_size: int | None) -> dict[str, Any]:
    """The shardq configuration; ``pool_size=None`` leaves shardq's default."""
    shards: list[dict[str, Any]] = []
    for i, dsn in enumerate(dsns):
        shard: dict[str, Any] = {"name": f"s{i}", "dsn": dsn}
        if pool_size is not None:
            shard["pool_max_size"] = pool_size
        shards.append(shard)
    return {
        "dialect": "postgres",
        "driver": "psycopg",
        "shards": shards,
        "tables": {"kv": {"shard_key": "id"}},
    }


def generate(rows: int, lookups: int) -> tuple[dict[int, str], list[int]]:
    """The rows (``id -> v``) and the keys to look up, from the fixed seed."""
    rng = random.Random(SEED)
    ids = rng.sample(range(1, 2**62), rows)
    expected = {id_: f"v-{rng.getrandbits(64):016x}" for id_ in ids}
    keys = rng.sample(ids, lookups) if lookups <= rows else rng.choices(ids, k=lookups)
    return expected, keys


def _copy_into(dsn: str, lines: Sequence[str]) -> None:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy("COPY kv (id, v) FROM STDIN") as copy,
    ):
        for start in range(0, len(lines), COPY_CHUNK):
            copy.write("".join(lines[start : start + COPY_CHUNK]))


async def _load_with_shardq(config: dict[str, Any], rows: list[Row], how: str) -> None:
    async with shardq.AsyncConnection(config) as conn:
        if how == "executemany":
            await conn.cursor().executemany(INSERT_SQL, rows)
        else:
            await conn.execute_concurrent_with_args(INSERT_SQL, rows)


def prepare(
    clusters: Sequence[PgCluster], args: argparse.Namespace
) -> tuple[list[str], str, Dataset]:
    """Create ``kv`` on every shard and the single node, and load them.

    Return the shard DSNs, the single node's and what was loaded.
    """
    began = time.perf_counter()
    expected, keys = generate(args.rows, args.lookups)
    generated = time.perf_counter() - began
    for cluster in clusters:
        cluster.create_database(DBNAME)
        cluster.execute("CREATE TABLE kv (id bigint PRIMARY KEY, v text NOT NULL)", DBNAME)
    single = clusters[SHARDS]
    clusters = clusters[:SHARDS]
    dsns = [cluster.dsn(DBNAME) for cluster in clusters]
    config = shardq_config(dsns, args.pool_size)
    placed = shardq.load_config(config)  # conn.shard_for("kv", id) answers from this
    began = time.perf_counter()
    if args.load == "copy":
        lines: dict[str, list[str]] = {name: [] for name in placed.shard_names}
        for id_, v in expected.items():
            lines[placed.shard_for("kv", id_)].append(f"{id_}\t{v}\n")
        with ThreadPoolExecutor(max_workers=SHARDS) as pool:
            futures = [
                pool.submit(_copy_into, dsn, lines[name])
                for name, dsn in zip(placed.shard_names, dsns, strict=True)
            ]
            for future in futures:
                future.result()
        how = "COPY per shard, rows split by shard_for"
    else:
        asyncio.run(_load_with_shardq(config, list(expected.items()), args.load))
        how = {
            "executemany": "shardq cursor.executemany of INSERTs",
            "concurrent": "shardq execute_concurrent_with_args of INSERTs",
        }[args.load]
    loaded = time.perf_counter() - began
    # The single node: every row, loaded with COPY whatever --load says.
    began = time.perf_counter()
    _copy_into(single.dsn(DBNAME), [f"{id_}\t{v}\n" for id_, v in expected.items()])
    single_loaded = time.perf_counter() - began
    shard_rows = {}
    union = [0, 0]  # the shards' rows and checksums, summed
    for name, cluster in zip(placed.shard_names, clusters, strict=True):
        cluster.execute("VACUUM (ANALYZE) kv", DBNAME)
        count, checksum = cluster.execute(CHECKSUM_SQL, DBNAME)[0]
        shard_rows[name] = int(count)
        union = [union[0] + int(count), union[1] + int(checksum)]
    single.execute("VACUUM (ANALYZE) kv", DBNAME)
    count, checksum = single.execute(CHECKSUM_SQL, DBNAME)[0]
    data = Dataset(
        expected,
        keys,
        shard_rows,
        generated,
        loaded,
        how,
        single_rows=int(count),
        single_load_seconds=single_loaded,
        single_is_union=[int(count), int(checksum)] == union,
    )
    return dsns, single.dsn(DBNAME), data


# --------------------------------------------------------------------------- checking answers


def check_values(keys: Sequence[int], got: Sequence[Any], expected: dict[int, str]) -> str | None:
    """None if ``got[i]`` is the ``v`` of ``keys[i]`` for every i; else what is wrong."""
    if len(got) != len(keys):
        return f"{len(got):,} answers for {len(keys):,} keys"
    bad = [
        i for i, (key, value) in enumerate(zip(keys, got, strict=True)) if value != expected[key]
    ]
    if not bad:
        return None
    i = bad[0]
    return (
        f"{len(bad):,} of {len(keys):,} answers wrong, "
        f"e.g. key {keys[i]}: {got[i]!r} instead of {expected[keys[i]]!r}"
    )


_NO_ROW = "<no row>"


def _only_value(rows: Sequence[Row]) -> Any:
    """The one value of a one-row, one-column result; else a marker that is never right."""
    if len(rows) == 1 and len(rows[0]) == 1:
        return rows[0][0]
    return _NO_ROW if not rows else f"<{len(rows)} rows: {list(rows)[:3]!r}>"


def shardq_values(results: Sequence[Any], key_shards: Sequence[str]) -> tuple[list[Any], list[str]]:
    """The values of shardq's ExecutionResults, and any result not on its key's shard alone."""
    values: list[Any] = []
    problems: list[str] = []
    misrouted = failed = 0
    for result, shard in zip(results, key_shards, strict=False):
        if not result.success:
            failed += 1
            values.append(f"<failed: {result.result_or_exc!r}>")
            continue
        values.append(_only_value(result.result_or_exc.rows))
        if tuple(result.result_or_exc.shards) != (shard,):
            misrouted += 1
    if failed:
        problems.append(f"{failed:,} statements failed")
    if misrouted:
        problems.append(f"{misrouted:,} statements not run on their key's shard alone")
    return values, problems


# --------------------------------------------------------------------------- the contenders


class Bench:
    """The contenders, their connections open while in use."""

    def __init__(
        self,
        dsns: Sequence[str],
        single_dsn: str,
        data: Dataset,
        args: argparse.Namespace,
        runner: asyncio.Runner,
    ):
        self.dsns = list(dsns)
        self.single_dsn = single_dsn
        self.data = data
        self.keys = data.keys
        self.concurrency: int = args.concurrency
        self.per_shard = max(1, args.concurrency // SHARDS)
        self.pool_size: int = args.pool_size
        self.threads: int = args.threads
        self.runner = runner
        self.config = shardq_config(self.dsns, self.pool_size)
        placed = shardq.load_config(self.config)
        self.placement = placed.placement
        self.shard_names = list(placed.shard_names)
        self.key_shards = [placed.shard_for("kv", key) for key in self.keys]
        self.skipped: dict[str, str] = {}
        self._sync_stack = contextlib.ExitStack()
        self._async_stack = contextlib.AsyncExitStack()
        self._aconn: shardq.AsyncConnection | None = None
        self._aconn4: shardq.AsyncConnection | None = None
        self._sconn: shardq.Connection | None = None
        self._pipe: list[psycopg.AsyncConnection[Row]] = []
        self._single_pipe: list[psycopg.AsyncConnection[Row]] = []  # SHARDS, to the single node
        self._workers: list[list[psycopg.AsyncConnection[Row]]] = []
        self._asyncpg: list[list[asyncpg.Connection]] = []
        self._serial: list[psycopg.Connection[Row]] = []
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._thread_conns: list[Any] = []
        self._thread_lock = threading.Lock()

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
        sconn = stack.enter_context(shardq.connect(self.config))
        if hasattr(sconn, "execute_concurrent_with_args"):
            self._sconn = sconn
        else:
            self.skipped[SHARDQ_SYNC] = (
                "shardq.Connection (the DB-API facade) has no execute_concurrent_with_args yet"
            )
        for dsn in self.dsns:
            conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            self._serial.append(conn)
        self._executor = stack.enter_context(
            ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="bench-lookup")
        )
        stack.callback(self._close_thread_conns)  # after the executor's threads have ended
        # Start every thread and open its connections now, not in a timed run:
        # the barrier makes each of the threads take exactly one of these tasks.
        barrier = threading.Barrier(self.threads)

        def open_connections(_: int) -> None:
            self._thread_connections()
            barrier.wait(timeout=60)

        list(self._executor.map(open_connections, range(self.threads)))

    async def _open_async(self) -> None:
        stack = self._async_stack
        self._aconn = await stack.enter_async_context(shardq.AsyncConnection(self.config))
        self._aconn4 = await stack.enter_async_context(
            shardq.AsyncConnection(shardq_config(self.dsns, None))
        )
        for dsn in self.dsns:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            stack.push_async_callback(conn.close)
            self._pipe.append(conn)
            workers = await asyncio.gather(
                *(
                    psycopg.AsyncConnection.connect(dsn, autocommit=True)
                    for _ in range(self.per_shard)
                )
            )
            for conn in workers:
                stack.push_async_callback(conn.close)
            self._workers.append(list(workers))
            pg_workers = await asyncio.gather(
                *(asyncpg.connect(dsn) for _ in range(self.per_shard))
            )
            for pg_conn in pg_workers:
                stack.push_async_callback(pg_conn.close)
            self._asyncpg.append(list(pg_workers))
        # As many connections as the pipeline has over the shards, all to the single node.
        single = await asyncio.gather(
            *(psycopg.AsyncConnection.connect(self.single_dsn, autocommit=True) for _ in self.dsns)
        )
        for conn in single:
            stack.push_async_callback(conn.close)
        self._single_pipe = list(single)
        engines = {}
        for name, dsn in zip(self.shard_names, self.dsns, strict=True):
            engine = create_async_engine(
                make_url(dsn).set(drivername="postgresql+asyncpg"),
                isolation_level="AUTOCOMMIT",
                pool_size=self.per_shard,
                max_overflow=0,
            )
            stack.push_async_callback(engine.dispose)
            engines[name] = engine.sync_engine
        self._sessions = async_sessionmaker(
            sync_session_class=ShardedSession,
            shards=engines,
            shard_chooser=self._shard_chooser,
            identity_chooser=self._identity_chooser,
            execute_chooser=self._execute_chooser,
        )

    def close(self) -> None:
        try:
            self.runner.run(self._async_stack.aclose())
        finally:
            self._sync_stack.close()

    def _thread_connections(self) -> list[Any]:
        """This thread's psycopg2 connection to each shard, opened on first use."""
        conns: list[Any] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = []
            for dsn in self.dsns:
                conn = psycopg2.connect(dsn)
                conn.autocommit = True
                conns.append(conn)
                with self._thread_lock:
                    self._thread_conns.append(conn)
            self._local.conns = conns
        return conns

    def _close_thread_conns(self) -> None:
        with self._thread_lock:
            conns, self._thread_conns = self._thread_conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    # -- SQLAlchemy's choosers: a key's shard is shardq's placement of it, as the rows were loaded

    def _shard_chooser(
        self, mapper: Mapper[Any] | None, instance: Kv | None, clause: Any = None
    ) -> str:
        if instance is None:
            raise LookupError("shard_chooser: only rows of Kv have a shard")
        return self.placement.shard_for(instance.id)

    def _identity_chooser(
        self, mapper: Mapper[Any], primary_key: Sequence[Any], **kw: Any
    ) -> list[str]:
        return [self.placement.shard_for(primary_key[0])]

    def _execute_chooser(self, orm_context: ORMExecuteState) -> list[str]:
        key = looked_up_id(orm_context)
        if key is None:
            # Every statement here is a lookup: fail rather than time a scatter to all shards.
            raise LookupError(f"execute_chooser: no Kv.id = ? in {orm_context.statement}")
        return [self.placement.shard_for(key)]

    # -- the contenders: each runs the workload once, returning (seconds, values, problems)

    def contenders(self) -> dict[str, tuple[str, Run]]:
        """``name -> (label, run)`` in the order of the table."""
        n = self.per_shard
        out: dict[str, tuple[str, Run]] = {
            SHARDQ_ARGS: (
                f"{SHARDQ_ARGS} (pool {self.pool_size}/shard)",
                lambda: self._shardq_async(self._shardq_with_args, self._aconn),
            ),
            SHARDQ_GENERAL: (
                f"{SHARDQ_GENERAL} (pool {self.pool_size}/shard)",
                lambda: self._shardq_async(self._shardq_general, self._aconn),
            ),
            SHARDQ_SYNC: (f"{SHARDQ_SYNC} (pool {self.pool_size}/shard)", self._shardq_sync),
            PIPELINE: (
                f"{PIPELINE} (chunks of {n})",
                # The keys are routed inside the timed region: run() is called there.
                lambda: self._timed_async(lambda: self._pipeline(self._pipe, self._route())),
            ),
            WORKERS: (f"{WORKERS}, {n}/shard", lambda: self._timed_async(self._psycopg_workers)),
            ASYNCPG: (f"{ASYNCPG}, {n}/shard", lambda: self._timed_async(self._asyncpg_workers)),
            THREADS: (f"{THREADS}, {self.threads} threads", self._thread_pool),
            SERIAL: (f"{SERIAL}, 1 conn/shard", self._serial_loop),
            SQLALCHEMY: (
                f"{SQLALCHEMY}, {self.concurrency} tasks, pool {n}/shard",
                lambda: self._timed_async(self._sharded_session),
            ),
            SHARDQ_POOL4: (
                f"{SHARDQ_POOL4} (the default)",
                lambda: self._shardq_async(self._shardq_with_args, self._aconn4),
            ),
            SINGLE_PIPELINE: (
                f"{SINGLE_PIPELINE}, {len(self._single_pipe)} conns (chunks of {n})",
                lambda: self._timed_async(
                    lambda: self._pipeline(self._single_pipe, self._round_robin())
                ),
            ),
        }
        for name in self.skipped:
            del out[name]
        return out

    def _route(self) -> list[list[tuple[int, int]]]:
        """Each shard's ``(position, key)`` pairs, by shardq's placement."""
        index = {name: i for i, name in enumerate(self.shard_names)}
        shard_for = self.placement.shard_for
        per_shard: list[list[tuple[int, int]]] = [[] for _ in self.shard_names]
        for position, key in enumerate(self.keys):
            per_shard[index[shard_for(key)]].append((position, key))
        return per_shard

    def _round_robin(self) -> list[list[tuple[int, int]]]:
        """The ``(position, key)`` pairs dealt to the single node's connections in turn."""
        pairs = list(enumerate(self.keys))
        n = len(self._single_pipe)
        return [pairs[i::n] for i in range(n)]

    def routing_seconds(self) -> float:
        """The time :meth:`_route` takes alone (median of 5)."""
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            self._route()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    def _timed_async(
        self, run: Callable[[], Awaitable[list[Any]]]
    ) -> tuple[float, list[Any], list[str]]:
        async def timed() -> tuple[float, list[Any]]:
            # Timed inside the loop: entering asyncio.Runner.run is not the contender's cost.
            start = time.perf_counter()
            values = await run()
            return time.perf_counter() - start, values

        elapsed, values = self.runner.run(timed())
        return elapsed, values, []

    def _shardq_async(
        self,
        run: Callable[[shardq.AsyncConnection], Awaitable[list[Any]]],
        conn: shardq.AsyncConnection | None,
    ) -> tuple[float, list[Any], list[str]]:
        assert conn is not None
        elapsed, results, _ = self._timed_async(lambda: run(conn))
        values, problems = shardq_values(results, self.key_shards)
        return elapsed, values, problems

    async def _shardq_with_args(self, conn: shardq.AsyncConnection) -> list[Any]:
        results: list[Any] = await conn.execute_concurrent_with_args(
            SQL, [(k,) for k in self.keys], concurrency=self.concurrency
        )
        return results

    async def _shardq_general(self, conn: shardq.AsyncConnection) -> list[Any]:
        results: list[Any] = await conn.execute_concurrent(
            [(SQL, (k,)) for k in self.keys], concurrency=self.concurrency
        )
        return results

    def _shardq_sync(self) -> tuple[float, list[Any], list[str]]:
        conn: Any = self._sconn
        start = time.perf_counter()
        results = conn.execute_concurrent_with_args(
            SQL, [(k,) for k in self.keys], concurrency=self.concurrency
        )
        results = list(results)
        elapsed = time.perf_counter() - start
        values, problems = shardq_values(results, self.key_shards)
        return elapsed, values, problems

    async def _pipeline(
        self, conns: Sequence[psycopg.AsyncConnection[Row]], groups: list[list[tuple[int, int]]]
    ) -> list[Any]:
        """Each connection runs its group of ``(position, key)`` pairs, all at once.

        Over the shards, a shard's connection and the keys routed to it; on the
        single node, its connections and the keys dealt to them.
        """
        out: list[Any] = [_NO_ROW] * len(self.keys)
        chunk = self.per_shard

        async def lookups_on(
            conn: psycopg.AsyncConnection[Row], items: list[tuple[int, int]]
        ) -> None:
            cur = conn.cursor()
            async with conn.pipeline() as pipeline:
                for start in range(0, len(items), chunk):
                    part = items[start : start + chunk]
                    # In a pipeline, executemany sends the chunk's statements
                    # back to back and reads their results, one per set.
                    await cur.executemany(SQL, [(key,) for _, key in part], returning=True)
                    for position, _ in part:
                        row = await cur.fetchone()
                        if row is not None:
                            out[position] = row[0]
                        cur.nextset()
                    await pipeline.sync()

        await asyncio.gather(
            *(lookups_on(conn, items) for conn, items in zip(conns, groups, strict=True))
        )
        return out

    async def _psycopg_workers(self) -> list[Any]:
        out: list[Any] = [_NO_ROW] * len(self.keys)

        async def worker(conn: psycopg.AsyncConnection[Row], queue: Any) -> None:
            # The shard's queue is an iterator shared by its workers: on one
            # event loop, next() needs no lock.
            for position, key in queue:
                cur = await conn.execute(SQL, (key,))
                row = await cur.fetchone()
                if row is not None:
                    out[position] = row[0]

        tasks = []
        for conns, items in zip(self._workers, self._route(), strict=True):
            queue = iter(items)
            tasks += [worker(conn, queue) for conn in conns]
        await asyncio.gather(*tasks)
        return out

    async def _asyncpg_workers(self) -> list[Any]:
        out: list[Any] = [_NO_ROW] * len(self.keys)

        async def worker(conn: asyncpg.Connection, queue: Any) -> None:
            for position, key in queue:
                row = await conn.fetchrow(SQL_ASYNCPG, key)
                if row is not None:
                    out[position] = row[0]

        tasks = []
        for conns, items in zip(self._asyncpg, self._route(), strict=True):
            queue = iter(items)
            tasks += [worker(conn, queue) for conn in conns]
        await asyncio.gather(*tasks)
        return out

    async def _sharded_session(self) -> list[Any]:
        assert self._sessions is not None
        sessions = self._sessions
        out: list[Any] = [_NO_ROW] * len(self.keys)

        async def worker(queue: Iterator[tuple[int, int]]) -> None:
            for position, key in queue:
                async with sessions() as session:
                    row = await session.get(Kv, key)
                    if row is not None:
                        out[position] = row.v

        queue = iter(enumerate(self.keys))
        await asyncio.gather(*(worker(queue) for _ in range(self.concurrency)))
        return out

    def _thread_pool(self) -> tuple[float, list[Any], list[str]]:
        assert self._executor is not None
        index = {name: i for i, name in enumerate(self.shard_names)}
        shard_for = self.placement.shard_for

        def lookup(key: int) -> Any:
            conn = self._thread_connections()[index[shard_for(key)]]
            with conn.cursor() as cur:
                cur.execute(SQL, (key,))
                row = cur.fetchone()
            return _NO_ROW if row is None else row[0]

        start = time.perf_counter()
        values = list(self._executor.map(lookup, self.keys))
        return time.perf_counter() - start, values, []

    def _serial_loop(self) -> tuple[float, list[Any], list[str]]:
        index = {name: i for i, name in enumerate(self.shard_names)}
        shard_for = self.placement.shard_for
        conns = self._serial
        start = time.perf_counter()
        values: list[Any] = []
        for key in self.keys:
            row = conns[index[shard_for(key)]].execute(SQL, (key,)).fetchone()
            values.append(_NO_ROW if row is None else row[0])
        return time.perf_counter() - start, values, []


# --------------------------------------------------------------------------- measuring


def measure(bench: Bench, repeat: int) -> list[Tally]:
    """One untimed run of every contender, then ``repeat`` timed rounds in rotating order.

    A contender in ``TIMED_RUNS`` takes part in that many rounds at most, the
    first ones. Every run's answers are checked. A contender that raises is
    dropped and its error kept.
    """
    contenders = bench.contenders()
    tallies = {name: Tally(name, label) for name, (label, _) in contenders.items()}
    names = list(contenders)

    def run(name: str, timed: bool) -> None:
        tally = tallies[name]
        if tally.failure is not None:
            return
        gc.collect()
        try:
            elapsed, values, problems = contenders[name][1]()
        except Exception as exc:
            tally.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return
        tally.runs_checked += 1
        wrong = check_values(bench.keys, values, bench.data.expected)
        issues = [wrong] if wrong else []
        issues += problems
        if issues:
            tally.wrong.append("; ".join(issues))
        if timed:
            tally.samples.append(elapsed)

    print("warming up (one untimed run each)...", flush=True)
    for name in names:
        run(name, timed=False)
    for round_ in range(repeat):
        print(f"round {round_ + 1} of {repeat}...", flush=True)
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if round_ < TIMED_RUNS.get(name, repeat):
                run(name, timed=True)
    return list(tallies.values())


# --------------------------------------------------------------------------- reporting


def report_machine() -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc {affinity}), "
        f"{platform.system()} {platform.release()}"
    )
    print(
        versions(
            f"psycopg2 {psycopg2.__version__.split()[0]}",
            f"asyncpg {asyncpg.__version__}",
            f"SQLAlchemy {sqlalchemy.__version__}",
        )
    )


def report_data(data: Dataset, server_version: str, routing: float) -> None:
    rows = len(data.expected)
    rate = rows / data.load_seconds if data.load_seconds else float("inf")
    print(
        f"PostgreSQL {server_version}: generated {rows:,} rows in {data.generate_seconds:.2f} s; "
        f"loaded in {data.load_seconds:.2f} s ({rate:,.0f} rows/s; {data.load_how})"
    )
    for name, count in data.shard_rows.items():
        print(f"  shard {name}: {count:>9,} rows")
    if sum(data.shard_rows.values()) != rows:
        print("  WARNING: the shards' row counts do not add up to --rows")
    union = (
        "the union of the shards' (count and checksum equal)"
        if data.single_is_union
        else "WARNING: not the union of the shards' rows (count or checksum differs)"
    )
    print(
        f"  single node: {data.single_rows:>9,} rows, {union}; "
        f"one COPY in {data.single_load_seconds:.2f} s"
    )
    print(
        f"routing {len(data.keys):,} keys with placement.shard_for alone: {routing * 1e3:.1f} ms "
        "(inside the hand-written contenders' times)"
    )


def report(
    tallies: Sequence[Tally], bench: Bench, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Print the table and the aims; return the aims as in the ``--json`` file."""
    lookups = len(bench.keys)
    title = (
        f"{lookups:,} lookups {SQL!r} over {SHARDS} shards, concurrency {args.concurrency}; "
        f"median of {args.repeat} runs after 1 warm-up run"
    )
    print(f"\n{title}\n{'=' * len(title)}")
    rates = {t.name: lookups / t.median for t in tallies if t.samples}
    measured = [n for n in HAND_WRITTEN_ASYNC if n in rates]
    best_name = max(measured, key=lambda n: rates[n]) if measured else None
    best = rates.get(best_name) if best_name else None
    threads = rates.get(THREADS)
    width = max([52, *(len(t.label) for t in tallies)])
    header = (
        f"{'contender':<{width}} {'median s':>9} {'min-max s':>13} {'stmts/s':>8} "
        f"{'x best hand':>11} {'x threads':>9}  answers"
    )
    print(header)
    print("-" * len(header))
    for t in tallies:
        if not t.samples:
            continue
        rate = rates[t.name]
        x_best = f"{rate / best:>11.2f}" if best else f"{'-':>11}"
        x_threads = f"{rate / threads:>9.2f}" if threads else f"{'-':>9}"
        spread = f"{min(t.samples):.3f}-{max(t.samples):.3f}"
        print(
            f"{t.label:<{width}} {t.median:>9.3f} {spread:>13} {rate:>8,.0f} {x_best} {x_threads}  "
            f"{t.answers}"
        )
    for t in tallies:
        if t.samples and len(t.samples) < args.repeat:
            print(f"{t.label:<{width}} {t.timed_runs} only: its runs are slow")
    for t in tallies:
        if t.failure is not None:
            print(f"{t.label:<{width}} FAILED: {t.failure}")
    for name, why in bench.skipped.items():
        print(f"{name:<{width}} skipped: {why}")
    if best_name:
        print(f"\nbest hand-written asyncio contender: {best_name} ({best:,.0f} statements/s)")
    print()
    verdicts: list[dict[str, Any]] = []
    for name in SHARDQ_ASYNC:
        got = rates.get(name)
        aims = [
            (f"{name} >= {SHARE_AIM:.0%} of the best hand-written", best, SHARE_AIM),
            (f"{name} >= {THREADS_AIM:g} x the thread pool", threads, THREADS_AIM),
        ]
        for aim, base, factor in aims:
            if got is None or base is None:
                print(f"  ----  {aim} (not measured)")
                verdicts.append({"text": aim, "passed": False, "detail": "not measured"})
                continue
            passed = got >= factor * base
            detail = f"{got / base:.2f} x: {got:,.0f} vs {base:,.0f} stmts/s"
            print(f"  {'PASS' if passed else 'MISS'}  {aim} ({detail})")
            verdicts.append({"text": aim, "passed": passed, "detail": detail})
    return verdicts


def results_file(
    tallies: Sequence[Tally], aims: list[dict[str, Any]], data: Dataset, args: argparse.Namespace
) -> dict[str, Any]:
    """What ``--json`` writes: the measured lines of the table, and the aims.

    Contenders that failed or were skipped have no figure, and are left out.
    """
    lookups = args.lookups
    single = f"; one server holding all {len(data.expected):,} rows, no sharding"
    return {
        "scenario": "batch",
        "title": f"Point lookups: {lookups:,} lookups by shard key over {SHARDS} shards, "
        f"concurrency {args.concurrency}",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": [
            {
                "title": f"statements per second (median of {args.repeat} runs)",
                "metric": "statements/s",
                "higher_is_better": True,
                "results": [
                    {
                        "contender": t.label,
                        "shardq": t.name in SHARDQ_LINES,
                        "case": None,
                        "value": round(lookups / t.median, 1),
                        "spread": [
                            round(lookups / max(t.samples), 1),
                            round(lookups / min(t.samples), 1),
                        ],
                        "correct": not t.wrong,
                        "note": f"median {t.median:.3f} s of {t.timed_runs}; answers {t.answers}"
                        + (single if t.name == SINGLE_PIPELINE else ""),
                    }
                    for t in tallies
                    if t.samples
                ],
            }
        ],
        "aims": aims,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Time {SQL!r} point lookups on 4 shards: shardq's batch API against "
        "hand-written clients."
    )
    parser.add_argument(
        "--lookups", type=int, default=None, metavar="N", help="lookups per run (default 20,000)"
    )
    parser.add_argument(
        "--rows", type=int, default=None, metavar="N", help="rows in kv (default 100,000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, metavar="N", help="timed runs per contender (default 5)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        metavar="N",
        help="statements in flight (default 100); the hand-written contenders use N/4 per shard",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=None,
        metavar="N",
        help="shardq's pool_max_size per shard (default concurrency / 4)",
    )
    parser.add_argument(
        "--threads", type=int, default=20, metavar="N", help="thread pool size (default 20)"
    )
    parser.add_argument(
        "--load",
        choices=("copy", "executemany", "concurrent"),
        default="copy",
        help="load the rows with COPY (default), or through shardq's cursor.executemany "
        "or execute_concurrent_with_args",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 lookups, 20,000 rows, 3 timed runs (explicit options win)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the results to PATH as JSON, after the run",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: no directory {str(args.json.parent)!r}")
    defaults = (2_000, 20_000, 3) if args.quick else (20_000, 100_000, 5)
    for option, default in zip(("lookups", "rows", "repeat"), defaults, strict=True):
        if getattr(args, option) is None:
            setattr(args, option, default)
    if args.concurrency < SHARDS:
        parser.error(f"--concurrency must be at least {SHARDS} (one per shard)")
    if args.pool_size is None:
        args.pool_size = args.concurrency // SHARDS
    for option in ("lookups", "rows", "repeat", "pool_size", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    per_shard = args.concurrency // SHARDS
    # Per shard cluster: two shardq pools, the default-sized one, the pipeline's,
    # two sets of workers, SQLAlchemy's pool, one per thread, the serial loop's
    # (the single node has SHARDS, the single-node pipeline's).
    needed = 2 * args.pool_size + DEFAULT_POOL + 1 + 3 * per_shard + args.threads + 1
    if needed > MAX_CONNECTIONS - RESERVED_CONNECTIONS:
        parser.error(
            f"these options open {needed} connections per cluster; the clusters allow "
            f"{MAX_CONNECTIONS} (keep 2 x pool size + 3 x concurrency / 4 + threads + "
            f"{DEFAULT_POOL + 2} at most {MAX_CONNECTIONS - RESERVED_CONNECTIONS})"
        )
    return args


def run(clusters: Sequence[PgCluster], args: argparse.Namespace) -> None:
    """Load the data, then time, check and report every contender."""
    print(f"loading {args.rows:,} rows...", flush=True)
    dsns, single_dsn, data = prepare(clusters, args)
    version = clusters[0].execute("SHOW server_version")[0][0]
    with asyncio.Runner() as runner:
        bench = Bench(dsns, single_dsn, data, args, runner)
        report_data(data, str(version), bench.routing_seconds())
        bench.open()
        try:
            tallies = measure(bench, args.repeat)
        finally:
            bench.close()
        aims = report(tallies, bench, args)
    if args.json is not None:
        with args.json.open("w", encoding="utf-8") as file:
            json.dump(results_file(tallies, aims, data, args), file, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    report_machine()
    began = time.perf_counter()
    print(
        f"starting {SHARDS + 1} PostgreSQL clusters ({SHARDS} shards, 1 single node)...", flush=True
    )
    clusters = start_clusters()
    pids = [cluster.pid for cluster in clusters]
    print(f"  postmaster pids: {', '.join(map(str, pids))}", flush=True)
    try:
        run(clusters, args)
    finally:
        stop_clusters(clusters)
        print(f"wall time {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
