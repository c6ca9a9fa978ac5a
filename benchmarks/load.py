"""Bulk load: shardq's ``copy_in`` against a hand-written COPY split over the same shards.

A table ``items (id bigint primary key, v text not null, n integer)`` exists
on 4 shards, one database on each of 4 throw-away PostgreSQL clusters,
declared ``[tables.items] shard_key = "id"``; a 5th cluster, the single node,
has the same table. ``--rows`` rows (1,000,000 by default, 100,000 with
``--quick``) are made from a fixed seed (distinct random 62-bit ids, random
text, an integer) and held in memory as a list of tuples, the same list for
every contender. The contenders:

1. shardq, ``await conn.copy_in("items", rows)`` on an
   :class:`shardq.AsyncConnection`: rows placed by the shard key, one ``COPY``
   per shard, all at once, in one transaction (a two-phase commit over the 4
   shards);
2. shardq, ``copy_in`` of the same rows from a CSV file (written untimed
   beforehand): the records go to each shard as read;
3. the hand-written alternative a user would write with psycopg 3 async: the
   rows split into one list per shard by shardq's placement
   (``config.placement.shard_for(id)``, what ``conn.shard_for`` answers),
   then one connection and one ``COPY ... FROM STDIN`` per shard, all at once
   (``asyncio.gather``), each ``write_row`` per row, each shard's COPY its own
   transaction (not atomic over the shards);
4. one ``COPY`` of every row into the single node (no split, no sharding);
5. row-by-row INSERTs through shardq's ``cursor.executemany`` (``INSERT INTO
   items (id, v, n) VALUES (%s, %s, %s)``, statements prepared and pipelined
   per shard, concurrency 100): on the first ``--insert-rows`` rows only
   (20,000; 5,000 with ``--quick``), reported in rows/s like the others.

Each contender starts from empty tables (``TRUNCATE``, then ``CHECKPOINT`` so
that the last load's pages are not written during this one; untimed) and is timed
end to end with :func:`time.perf_counter` (inside the event loop), from the
rows in memory to the load committed, connections included, the contenders
taking turns, ``--repeat`` (5) rounds in an order rotated each round. After
each load, untimed, every shard's row count and ``sum(id)`` are checked
against what placement puts there (the single node: against all rows). The
table gives each contender's median rows per second and its ratio to the
hand-written split COPY; the aim is ``copy_in`` at least 0.9x of it.

``--json PATH`` writes the results in the format ``python -m benchmarks``
collects. The five clusters are started with the test suite's helper and
stopped by pid at the end, whatever happens.

Run it from the repository::

    python benchmarks/load.py
    python benchmarks/load.py --quick
    python benchmarks/load.py --rows 200000 --repeat 5 --json load.json
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from _common import command_line, interrupt_on_sigterm, stamp, stop_clusters

import shardq

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_load"
SEED = 20240611
SCHEMA = "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL, n integer)"
INSERT_SQL = "INSERT INTO items (id, v, n) VALUES (%s, %s, %s)"
COPY_SQL = "COPY items (id, v, n) FROM STDIN"
AIM = 0.9  # copy_in's rate over the hand-written split COPY's

COPY_IN = "shardq copy_in (rows)"
COPY_IN_CSV = "shardq copy_in (CSV file)"
SPLIT = "psycopg COPY per shard, hand-split"
SINGLE = "single node, one psycopg COPY"
EXECUTEMANY = "shardq executemany of INSERTs"
SHARDQ_LINES = (COPY_IN, COPY_IN_CSV, EXECUTEMANY)

Row = tuple[int, str, int]


@dataclass(slots=True)
class Tally:
    """One contender's timed runs (rows per run) and what was wrong with its loads."""

    name: str
    rows: int
    samples: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / statistics.median(self.samples)


def generate(count: int) -> list[Row]:
    rng = random.Random(SEED)
    ids = rng.sample(range(1, 2**62), count)
    return [(id_, f"v-{rng.getrandbits(48):012x}", rng.randrange(1_000_000)) for id_ in ids]


def config_of(dsns: Sequence[str]) -> dict[str, Any]:
    return {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": dsn} for i, dsn in enumerate(dsns)],
        "tables": {"items": {"shard_key": "id"}},
    }


# --------------------------------------------------------------------------- contenders


async def shardq_copy_in(config: dict[str, Any], source: object) -> None:
    async with shardq.AsyncConnection(config) as conn:
        await conn.copy_in("items", source)


async def _copy(dsn: str, rows: Sequence[Row]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = conn.cursor()
        async with cursor.copy(COPY_SQL) as copy:
            for row in rows:
                await copy.write_row(row)


async def hand_split(config: dict[str, Any], rows: Sequence[Row]) -> None:
    placement = shardq.load_config(config).placement
    parts: dict[str, list[Row]] = {shard["name"]: [] for shard in config["shards"]}
    shard_for = placement.shard_for
    for row in rows:
        parts[shard_for(row[0])].append(row)
    await asyncio.gather(*(_copy(shard["dsn"], parts[shard["name"]]) for shard in config["shards"]))


async def shardq_executemany(config: dict[str, Any], rows: Sequence[Row]) -> None:
    async with shardq.AsyncConnection(config) as conn:
        await conn.cursor().executemany(INSERT_SQL, rows)


# --------------------------------------------------------------------------- checks


def expected_per_shard(config: dict[str, Any], rows: Sequence[Row]) -> dict[str, tuple[int, int]]:
    placement = shardq.load_config(config).placement
    found = {shard["name"]: [0, 0] for shard in config["shards"]}
    for row in rows:
        spot = found[placement.shard_for(row[0])]
        spot[0] += 1
        spot[1] += row[0]
    return {name: (count, total) for name, (count, total) in found.items()}


def stored(cluster: PgCluster) -> tuple[int, int]:
    count, total = cluster.execute("SELECT count(*), coalesce(sum(id), 0) FROM items", DBNAME)[0]
    return int(count), int(total)


def check(
    name: str, clusters: Sequence[PgCluster], single: PgCluster, want: dict[str, Any]
) -> str | None:
    """None if the shards (or the single node) hold what the load should have put there."""
    if name == SINGLE:
        got = stored(single)
        return None if got == want["single"] else f"single node holds {got}, not {want['single']}"
    per_shard = want["executemany"] if name == EXECUTEMANY else want["shards"]
    for i, cluster in enumerate(clusters):
        got = stored(cluster)
        if got != per_shard[f"s{i}"]:
            return f"shard s{i} holds (count, sum) {got}, not {per_shard[f's{i}']}"
    return None


def empty(clusters: Sequence[PgCluster]) -> None:
    """Empty every table, and write the last load's pages out now, not during the next."""
    for cluster in clusters:
        cluster.execute("TRUNCATE items", DBNAME)
        cluster.execute("CHECKPOINT", DBNAME)


# --------------------------------------------------------------------------- main


def start_clusters() -> list[PgCluster]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(SHARDS + 1, prefix="bench-load")


def run(args: argparse.Namespace, clusters: list[PgCluster]) -> dict[str, Any]:
    shard_clusters, single = clusters[:SHARDS], clusters[SHARDS]
    for cluster in clusters:
        cluster.create_database(DBNAME)
        cluster.execute(SCHEMA, DBNAME)
    config = config_of([c.dsn(DBNAME) for c in shard_clusters])
    began = time.perf_counter()
    rows = generate(args.rows)
    few = rows[: args.insert_rows]
    print(f"{len(rows):,} rows made in {time.perf_counter() - began:.1f} s")
    folder = tempfile.TemporaryDirectory(prefix="shardq-load-")
    path = Path(folder.name) / "items.csv"
    with path.open("w", newline="") as file:
        csv.writer(file).writerows(rows)
    want = {
        "shards": expected_per_shard(config, rows),
        "executemany": expected_per_shard(config, few),
        "single": (len(rows), sum(r[0] for r in rows)),
    }
    contenders: dict[str, tuple[int, Callable[[], Awaitable[None]]]] = {
        COPY_IN: (len(rows), lambda: shardq_copy_in(config, rows)),
        COPY_IN_CSV: (len(rows), lambda: shardq_copy_in(config, path)),
        SPLIT: (len(rows), lambda: hand_split(config, rows)),
        SINGLE: (len(rows), lambda: _copy(single.dsn(DBNAME), rows)),
        EXECUTEMANY: (len(few), lambda: shardq_executemany(config, few)),
    }
    tallies = {name: Tally(name, count) for name, (count, _) in contenders.items()}
    order = list(contenders)

    async def timed(load: Callable[[], Awaitable[None]]) -> float:
        start = time.perf_counter()
        await load()
        return time.perf_counter() - start

    try:
        for round_ in range(args.repeat):
            for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
                empty(clusters)
                seconds = asyncio.run(timed(contenders[name][1]))
                tallies[name].samples.append(seconds)
                problem = check(name, shard_clusters, single, want)
                if problem:
                    tallies[name].wrong.append(problem)
                print(
                    f"  round {round_ + 1} {name:<40} {seconds:7.2f} s  "
                    f"{tallies[name].rows / seconds:>12,.0f} rows/s  {problem or 'ok'}"
                )
    finally:
        folder.cleanup()
    return report(tallies, args)


def report(tallies: dict[str, Tally], args: argparse.Namespace) -> dict[str, Any]:
    base = tallies[SPLIT].rate
    print(f"\n{'contender':<44} {'rows/s':>12} {'x split':>8}  answers")
    for tally in tallies.values():
        mark = "ok" if not tally.wrong else f"WRONG: {tally.wrong[0]}"
        print(f"{tally.name:<44} {tally.rate:>12,.0f} {tally.rate / base:>7.2f}x  {mark}")
    print(f"(executemany: {tallies[EXECUTEMANY].rows:,} rows; the others {args.rows:,})")
    share = tallies[COPY_IN].rate / base
    aims = [
        {
            "text": f"copy_in at least {AIM}x the hand-written split COPY",
            "passed": share >= AIM and not tallies[COPY_IN].wrong,
            "detail": f"{share:.2f}x",
        }
    ]
    for aim in aims:
        print(f"{'PASS' if aim['passed'] else 'MISS'}  {aim['text']} ({aim['detail']})")
    return {
        "scenario": "load",
        "title": f"Bulk load: {args.rows:,} rows into {SHARDS} shards",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": [
            {
                "title": f"rows loaded per second (median of {args.repeat} runs)",
                "metric": "rows/s",
                "higher_is_better": True,
                "results": [
                    {
                        "contender": t.name
                        + (f" ({t.rows:,} rows)" if t.name == EXECUTEMANY else ""),
                        "shardq": t.name in SHARDQ_LINES,
                        "case": None,
                        "value": round(t.rate, 1),
                        "spread": [
                            round(t.rows / max(t.samples), 1),
                            round(t.rows / min(t.samples), 1),
                        ],
                        "correct": not t.wrong,
                        "note": f"{t.rate / base:.2f}x the hand-written split COPY",
                    }
                    for t in tallies.values()
                ],
            }
        ],
        "aims": aims,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a bulk load over 4 shards: copy_in against a hand-written split COPY."
    )
    parser.add_argument("--rows", type=int, default=None, help="rows loaded (default 1,000,000)")
    parser.add_argument(
        "--insert-rows", type=int, default=None, help="rows for executemany (default 20,000)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--quick", action="store_true", help="100,000 rows (5,000 INSERTs)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    if args.insert_rows is None:
        args.insert_rows = 5_000 if args.quick else 20_000
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    interrupt_on_sigterm()
    clusters = start_clusters()
    try:
        results = run(args, clusters)
    finally:
        stop_clusters(clusters)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
