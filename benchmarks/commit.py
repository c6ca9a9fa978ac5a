"""Commit latency: shardq's transactions beside two-phase commit written by hand.

Four throw-away PostgreSQL clusters (``max_prepared_transactions`` set, as
the test suite starts them), one database each holding ``t (id bigint
primary key, v text)``, declared in shardq as distributed by ``id``. Every
transaction inserts one row on each shard it writes (keys chosen by shardq's
placement, new on every run), and is timed end to end with
:func:`time.perf_counter` on one event loop: from its start to its commit
returned. The commit alone (from the last INSERT's return to the commit's) is
timed too. The contenders, on 1, 2 and 4 shards:

1. shardq, ``async with conn.transaction(): await conn.execute(INSERT, ...)``
   per shard on an :class:`shardq.AsyncConnection`: on one shard a plain
   commit; on several a two-phase commit with its durable decision record
   (the first shard written inserts a row into ``shardq_commit_decisions``
   in its own transaction, the others ``PREPARE TRANSACTION``, the holder's
   ``COMMIT`` is the decision, then ``COMMIT PREPARED`` on the others, then
   the decision row is deleted);
2. psycopg's own two-phase commit by hand, the way a user would write it
   with asyncio: one connection per shard (not in autocommit), per
   transaction ``tpc_begin(gid)`` on each, the INSERTs one after another,
   then ``tpc_prepare()`` on all shards concurrently (``asyncio.gather``),
   then ``tpc_commit()`` on all concurrently. It has *no durable decision
   record*: if its process dies between the PREPAREs and the last
   ``COMMIT PREPARED``, nothing tells a recovery whether to commit or roll
   back what is left prepared, and all-or-nothing is lost;
3. a plain psycopg transaction on one shard (``async with
   conn.transaction()``: BEGIN, INSERT, COMMIT): the floor.

The contenders take turns within each repetition, in a rotating order, after
warm-up runs (connections opened, statements planned). The table gives each
one's median and p95 latency in milliseconds, and for shardq's two-phase
commits the ratio to the hand-written one on the same shards; the aim (within
10 % of the hand-written two-phase commit) is reported, not asserted. At the
end every row inserted is looked for on the shard placement put it on, and
no transaction may be left prepared: ``ok`` or ``WRONG``.

The clusters run with ``fsync=off`` and ``synchronous_commit=off`` as the
test suite's do (what is measured is the protocol and the client, not the
disk); ``--durable`` starts them with both on, where each PREPARE, COMMIT
and COMMIT PREPARED waits for its flush (shardq's decision commit always
flushes: it sets ``synchronous_commit`` to ``local`` when it is off).

``--json PATH`` writes the results as JSON (one table of median latencies
in ms, one of commit-only latencies, and the aims).

Run it from anywhere (the PostgreSQL server programs, psycopg 3 and shardq
installed)::

    python benchmarks/commit.py
    python benchmarks/commit.py --quick
    python benchmarks/commit.py --repeat 1000 --durable --json commit.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from _common import command_line, interrupt_on_sigterm, stamp, stop_clusters, versions

import shardq

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_commit"
INSERT = "INSERT INTO t (id, v) VALUES (%s, %s)"
AIM = 1.10  # shardq's two-phase commit within 10 % of the hand-written one

SHARDQ = "shardq transaction"
HAND = "psycopg tpc_* by hand (no decision record)"
PLAIN = "psycopg plain transaction"
NO_RECORD = (
    "hand-written two-phase commit: no durable decision record, so a crash between its "
    "PREPAREs and its last COMMIT PREPARED leaves transactions no recovery can decide"
)


@dataclass
class Tally:
    """One contender on one shard count: its latencies, whole and commit only."""

    name: str
    shards: int
    total: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name}, {self.shards} shard{'s' if self.shards > 1 else ''}"

    @property
    def shardq(self) -> bool:
        return self.name == SHARDQ


def p95(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- servers


def start_clusters(durable: bool) -> list[PgCluster]:
    """The 4 shard clusters, started concurrently with the test suite's helper."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import PgCluster

    settings = {"fsync": "on", "synchronous_commit": "on"} if durable else {}
    clusters = [PgCluster(name=f"bench-commit{i}", settings=settings) for i in range(SHARDS)]
    with ThreadPoolExecutor(max_workers=SHARDS) as pool:
        errors = [f.exception() for f in [pool.submit(c.start) for c in clusters]]
    if any(errors):
        stop_clusters(clusters)
        raise next(e for e in errors if e is not None)
    return clusters


def prepare(clusters: Sequence[PgCluster]) -> list[str]:
    dsns = []
    for cluster in clusters:
        cluster.create_database(DBNAME)
        cluster.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL)", DBNAME)
        dsns.append(cluster.dsn(DBNAME))
    return dsns


def shardq_config(dsns: Sequence[str]) -> dict[str, Any]:
    return {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": dsn} for i, dsn in enumerate(dsns)],
        "tables": {"t": {"shard_key": "id"}},
    }


# --------------------------------------------------------------------------- contenders


class Bench:
    """Every contender's connections, and fresh keys for each shard."""

    def __init__(self, dsns: Sequence[str]):
        self.dsns = list(dsns)
        self.config = shardq_config(dsns)
        placement = shardq.load_config(self.config)
        self.names = [f"s{i}" for i in range(SHARDS)]

        def keys(name: str) -> Iterator[int]:
            return (k for k in itertools.count(1) if placement.shard_for("t", k) == name)

        self._keys = {name: keys(name) for name in self.names}
        self.inserted: dict[str, list[int]] = {name: [] for name in self.names}
        self._gids = itertools.count()
        self.conn: shardq.AsyncConnection | None = None
        self.raw: list[psycopg.AsyncConnection[Any]] = []

    def key(self, shard: int) -> int:
        name = self.names[shard]
        key = next(self._keys[name])
        self.inserted[name].append(key)
        return key

    async def open(self) -> None:
        self.conn = await shardq.connect_async(self.config)
        self.raw = [await psycopg.AsyncConnection.connect(dsn) for dsn in self.dsns]

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        for raw in self.raw:
            await raw.close()

    async def shardq(self, shards: int) -> tuple[float, float]:
        assert self.conn is not None
        began = time.perf_counter()
        async with self.conn.transaction():
            for shard in range(shards):
                await self.conn.execute(INSERT, [self.key(shard), "shardq"])
            written = time.perf_counter()
        done = time.perf_counter()
        return done - began, done - written

    async def hand(self, shards: int) -> tuple[float, float]:
        conns = self.raw[:shards]
        began = time.perf_counter()
        gid = f"bench:{next(self._gids)}"
        for i, conn in enumerate(conns):
            await conn.tpc_begin(f"{gid}:{i}")
            await conn.execute(INSERT, [self.key(i), "hand"])
        written = time.perf_counter()
        await asyncio.gather(*(conn.tpc_prepare() for conn in conns))
        await asyncio.gather(*(conn.tpc_commit() for conn in conns))
        done = time.perf_counter()
        return done - began, done - written

    async def plain(self, shards: int) -> tuple[float, float]:
        conn = self.raw[0]
        began = time.perf_counter()
        async with conn.transaction():
            await conn.execute(INSERT, [self.key(0), "plain"])
            written = time.perf_counter()
        done = time.perf_counter()
        return done - began, done - written

    def check(self) -> list[str]:
        """Every key inserted is on its shard, nothing else is, nothing is left prepared."""
        wrong = []
        for name, dsn in zip(self.names, self.dsns, strict=True):
            with psycopg.connect(dsn, autocommit=True) as conn:
                keys = sorted(k for (k,) in conn.execute("SELECT id FROM t"))
                prepared = conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()
            if keys != sorted(self.inserted[name]):
                wrong.append(f"{name}: {len(keys)} rows, {len(self.inserted[name])} inserted")
            if prepared and prepared[0]:
                wrong.append(f"{name}: {prepared[0]} transactions left prepared")
        return wrong


async def measure(bench: Bench, args: argparse.Namespace) -> list[Tally]:
    runs: list[tuple[Tally, Callable[[int], Awaitable[tuple[float, float]]]]] = [
        (Tally(PLAIN, 1), bench.plain),
        (Tally(SHARDQ, 1), bench.shardq),
    ]
    for shards in (2, 4):
        runs += [(Tally(SHARDQ, shards), bench.shardq), (Tally(HAND, shards), bench.hand)]
    for i in range(args.warmup + args.repeat):
        turn = i % len(runs)
        for tally, run in runs[turn:] + runs[:turn]:
            total, commit = await run(tally.shards)
            if i >= args.warmup:
                tally.total.append(total * 1e3)
                tally.commit.append(commit * 1e3)
    return [tally for tally, _ in runs]


# --------------------------------------------------------------------------- report


def report(tallies: Sequence[Tally], wrong: list[str], args: argparse.Namespace) -> list[Any]:
    title = (
        f"one INSERT per shard, then commit; median and p95 of {args.repeat} runs after "
        f"{args.warmup} warm-up runs ({'fsync on' if args.durable else 'fsync off'})"
    )
    print(f"\n{title}\n{'=' * len(title)}")
    hand = {t.shards: t for t in tallies if t.name == HAND}
    header = (
        f"{'contender':<52} {'median ms':>9} {'p95 ms':>8} {'commit ms':>9} {'p95':>7} "
        f"{'x hand':>7} {'commit x hand':>13}"
    )
    print(header)
    print("-" * len(header))
    for t in tallies:
        base = hand.get(t.shards) if t.shardq else None
        ratio = (
            f"{statistics.median(t.total) / statistics.median(base.total):>7.2f}" if base else ""
        )
        commit_ratio = (
            f"{statistics.median(t.commit) / statistics.median(base.commit):>13.2f}" if base else ""
        )
        print(
            f"{t.label:<52} {statistics.median(t.total):>9.3f} {p95(t.total):>8.3f} "
            f"{statistics.median(t.commit):>9.3f} {p95(t.commit):>7.3f} {ratio:>7} "
            f"{commit_ratio:>13}"
        )
    print(f"\nanswers: {'ok' if not wrong else 'WRONG: ' + '; '.join(wrong)}")
    print(f"note: {NO_RECORD}")
    aims = []
    for t in tallies:
        if not t.shardq or t.shards not in hand:
            continue
        for what, mine, theirs in (
            ("the transaction", t.total, hand[t.shards].total),
            ("the commit alone", t.commit, hand[t.shards].commit),
        ):
            ratio = statistics.median(mine) / statistics.median(theirs)
            text = f"shardq {t.shards}-shard two-phase commit within 10 % of by hand: {what}"
            detail = (
                f"{ratio:.2f} x: {statistics.median(mine):.3f} vs "
                f"{statistics.median(theirs):.3f} ms"
            )
            passed = ratio <= AIM
            print(f"  {'PASS' if passed else 'MISS'}  {text} ({detail})")
            aims.append({"text": text, "passed": passed, "detail": detail})
    return aims


def results_file(
    tallies: Sequence[Tally], aims: list[Any], wrong: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    def table(title: str, pick: Callable[[Tally], list[float]]) -> dict[str, Any]:
        return {
            "title": title,
            "metric": "ms",
            "higher_is_better": False,
            "results": [
                {
                    "contender": t.name,
                    "shardq": t.shardq,
                    "case": f"{t.shards} shard{'s' if t.shards > 1 else ''}",
                    "value": round(statistics.median(pick(t)), 4),
                    "spread": [round(min(pick(t)), 4), round(p95(pick(t)), 4)],
                    "correct": not wrong,
                    "note": f"median and p95 of {len(pick(t))} runs"
                    + (f"; {NO_RECORD}" if t.name == HAND else ""),
                }
                for t in tallies
            ],
        }

    durable = ", fsync on" if args.durable else ""
    return {
        "scenario": "commit",
        "title": f"Commit latency: one INSERT per shard then commit, on 1, 2 and 4 shards{durable}",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": [
            table(f"transaction latency, median of {args.repeat} runs", lambda t: t.total),
            table(f"commit alone, median of {args.repeat} runs", lambda t: t.commit),
        ],
        "aims": aims,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time transactions on 1, 2 and 4 shards: shardq against two-phase commit "
        "by hand with psycopg and a plain commit."
    )
    parser.add_argument("--repeat", type=int, default=None, help="timed runs (default 500)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    parser.add_argument(
        "--durable", action="store_true", help="fsync and synchronous_commit on in the servers"
    )
    parser.add_argument("--quick", action="store_true", help="100 timed runs (--repeat wins)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repeat is None:
        args.repeat = 100 if args.quick else 500
    if args.repeat < 2 or args.warmup < 1:
        parser.error("--repeat must be at least 2 and --warmup at least 1")
    return args


async def run(dsns: Sequence[str], args: argparse.Namespace) -> None:
    bench = Bench(dsns)
    await bench.open()
    try:
        tallies = await measure(bench, args)
    finally:
        await bench.close()
    wrong = bench.check()
    aims = report(tallies, wrong, args)
    if args.json is not None:
        args.json.write_text(json.dumps(results_file(tallies, aims, wrong, args), indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    began = time.perf_counter()
    print(versions())
    print(f"starting {SHARDS} PostgreSQL clusters...", flush=True)
    clusters = start_clusters(args.durable)
    print(f"  postmaster pids: {', '.join(str(c.pid) for c in clusters)}", flush=True)
    try:
        dsns = prepare(clusters)
        print(f"PostgreSQL {clusters[0].execute('SHOW server_version')[0][0]}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run(dsns, args))
    finally:
        stop_clusters(clusters)
        print(f"wall time {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
