"""Gather to one shard: reads no merge can answer, beside one node and a pull into pandas.

Four throw-away PostgreSQL clusters hold ``events (id bigint primary key,
account bigint, kind integer, amount bigint, day date)`` and ``accounts (id
bigint primary key, region text)``, both declared distributed by ``id``; a
5th cluster, the single node, holds every row of both. ``--rows`` events
(1,000,000 by default, 100,000 with ``--quick``) and a tenth as many
accounts, from a fixed seed. Two reads shardq can only answer by gathering
(issue 17: each distributed table the read uses is copied, filtered and
projected, into a temporary table of the same name on one shard, and the
read runs there unchanged):

``window``
    the three largest amounts of each kind since a day, with ``rank()``
    over a window partitioned by ``kind``, not by the shard key (about half
    of the events are moved);
``join``
    events joined to their accounts on ``events.account = accounts.id``,
    which are not on the same shards, counted and summed per region (the
    events of two kinds of ten, and every account, are moved).

The contenders, taking turns in a rotating order, ``--repeat`` (5) rounds,
each timed end to end with :func:`time.perf_counter` from the query to its
last row:

1. shardq, ``await conn.execute(sql)`` then ``fetchall()`` on an
   :class:`shardq.AsyncConnection` over the 4 shards;
2. the single node: the same SQL with psycopg 3 on the 5th cluster;
3. the hand-written pull a user would write without shardq: the same
   filtered, projected rows read from the 4 shards at once (psycopg 3 async,
   ``asyncio.gather``), into pandas DataFrames, concatenated, and the read
   done in pandas (``rank`` in groups; ``merge`` then ``groupby``).

Every answer is compared with the single node's (rows and order): ``ok`` or
``WRONG``; a read shardq refuses is shown as refused. The table gives each
contender's median seconds and shardq's ratio to the single node and to the
pull; the aims (within 2x of the single node, faster than the pull) are
reported, not asserted.

Run it from the repository (the ``bench`` environment: ``scripts/uv sync
--locked --extra bench``)::

    python benchmarks/gather.py
    python benchmarks/gather.py --quick
    python benchmarks/gather.py --rows 200000 --repeat 3 --json gather.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import psycopg
from _common import command_line, interrupt_on_sigterm, stamp, stop_clusters, versions

import shardq

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_gather"
SEED = 20261206
KINDS = 10
REGIONS = ["north", "south", "east", "west", "centre", "islands"]
FIRST_DAY = dt.date(2024, 1, 1)
DAYS = 366
SINCE = FIRST_DAY + dt.timedelta(days=DAYS // 2)
SCHEMA = """
CREATE TABLE events (id bigint PRIMARY KEY, account bigint NOT NULL, kind integer NOT NULL,
                     amount bigint NOT NULL, day date NOT NULL);
CREATE TABLE accounts (id bigint PRIMARY KEY, region text NOT NULL);
"""
AIM_SINGLE = 2.0  # shardq's time over the single node's, at most
SHARDQ = "shardq (gather to one shard)"
SINGLE = "single node (psycopg)"
PULL = "pull into pandas (psycopg + pandas)"

WINDOW = f"""
SELECT kind, id, amount FROM (
    SELECT kind, id, amount, rank() OVER (PARTITION BY kind ORDER BY amount DESC, id) AS r
    FROM events WHERE day >= DATE '{SINCE.isoformat()}'
) ranked WHERE r <= 3 ORDER BY kind, r
"""
JOIN = """
SELECT a.region, count(*) AS n, sum(e.amount) AS total
FROM events e JOIN accounts a ON a.id = e.account
WHERE e.kind IN (1, 2)
GROUP BY a.region ORDER BY a.region
"""
QUERIES = {"window": WINDOW, "join": JOIN}


@dataclass(slots=True)
class Tally:
    """One contender's timed runs of one query, and what was wrong with its answers."""

    samples: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    refused: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


# --------------------------------------------------------------------------- data


def generate(count: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rng = random.Random(SEED)
    accounts = [(i, rng.choice(REGIONS)) for i in range(1, count // 10 + 1)]
    events = [
        (
            i,
            rng.randrange(1, len(accounts) + 1),
            rng.randrange(KINDS),
            rng.randrange(1, 10_000_000),
            FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS)),
        )
        for i in range(1, count + 1)
    ]
    return events, accounts


def load(clusters: Sequence[PgCluster], single: PgCluster, rows: int) -> dict[str, Any]:
    """Create and fill the tables; return shardq's configuration over the shards."""
    events, accounts = generate(rows)
    config = {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": c.dsn(DBNAME)} for i, c in enumerate(clusters)],
        "tables": {"events": {"shard_key": "id"}, "accounts": {"shard_key": "id"}},
    }
    placement = shardq.load_config(config).placement
    parts: dict[str, dict[str, list[tuple[Any, ...]]]] = {
        f"s{i}": {"events": [], "accounts": []} for i in range(len(clusters))
    }
    for table, data in (("events", events), ("accounts", accounts)):
        for row in data:
            parts[placement.shard_for(row[0])][table].append(row)
    targets = [(c, parts[f"s{i}"]) for i, c in enumerate(clusters)]
    targets.append((single, {"events": events, "accounts": accounts}))
    for cluster, tables in targets:
        cluster.create_database(DBNAME)
        cluster.execute(SCHEMA, DBNAME)
        with psycopg.connect(cluster.dsn(DBNAME), autocommit=True) as conn:
            for table, data in tables.items():
                with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                    for row in data:
                        copy.write_row(row)
            conn.execute("VACUUM ANALYZE")
    return config


# --------------------------------------------------------------------------- contenders


async def through_shardq(conn: shardq.AsyncConnection, sql: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql)
    return [tuple(row) for row in await cur.fetchall()]


async def on_single(conn: psycopg.AsyncConnection[Any], sql: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql)
    return list(await cur.fetchall())


async def _frame(conn: psycopg.AsyncConnection[Any], sql: str, columns: list[str]) -> pd.DataFrame:
    cur = await conn.execute(sql)
    return pd.DataFrame(await cur.fetchall(), columns=columns)


async def _pulled(
    conns: Sequence[psycopg.AsyncConnection[Any]], sql: str, columns: list[str]
) -> pd.DataFrame:
    frames = await asyncio.gather(*(_frame(conn, sql, columns) for conn in conns))
    return pd.concat(frames, ignore_index=True)


async def pull_window(conns: Sequence[psycopg.AsyncConnection[Any]]) -> list[tuple[Any, ...]]:
    events = await _pulled(
        conns,
        f"SELECT kind, id, amount FROM events WHERE day >= DATE '{SINCE.isoformat()}'",
        ["kind", "id", "amount"],
    )
    events = events.sort_values(["kind", "amount", "id"], ascending=[True, False, True])
    top = events.groupby("kind", sort=True).head(3)
    return [(int(k), int(i), int(a)) for k, i, a in top.itertuples(index=False)]


async def pull_join(conns: Sequence[psycopg.AsyncConnection[Any]]) -> list[tuple[Any, ...]]:
    events, accounts = await asyncio.gather(
        _pulled(
            conns, "SELECT account, amount FROM events WHERE kind IN (1, 2)", ["account", "amount"]
        ),
        _pulled(conns, "SELECT id, region FROM accounts", ["account", "region"]),
    )
    joined = events.merge(accounts, on="account")
    grouped = joined.groupby("region", sort=True)["amount"].agg(["count", "sum"])
    return [(str(r), int(n), int(t)) for r, n, t in grouped.itertuples()]


PULLS: dict[str, Callable[[Sequence[psycopg.AsyncConnection[Any]]], Awaitable[Any]]] = {
    "window": pull_window,
    "join": pull_join,
}


def comparable(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with numbers as ints (sum() of bigint is numeric on PostgreSQL)."""
    return [tuple(int(v) if not isinstance(v, str) else v for v in row) for row in rows]


# --------------------------------------------------------------------------- main


async def measure(
    config: dict[str, Any], single: PgCluster, shards: Sequence[PgCluster], args: argparse.Namespace
) -> dict[str, dict[str, Tally]]:
    tallies = {q: {SHARDQ: Tally(), SINGLE: Tally(), PULL: Tally()} for q in QUERIES}
    async with (
        shardq.AsyncConnection(config) as conn,
        await psycopg.AsyncConnection.connect(single.dsn(DBNAME), autocommit=True) as one,
    ):
        pulls = [
            await psycopg.AsyncConnection.connect(c.dsn(DBNAME), autocommit=True) for c in shards
        ]
        try:
            for name, sql in QUERIES.items():
                want = comparable(await on_single(one, sql))  # also warms the single node
                runs: dict[str, Callable[[], Awaitable[list[tuple[Any, ...]]]]] = {
                    SHARDQ: lambda sql=sql: through_shardq(conn, sql),
                    SINGLE: lambda sql=sql: on_single(one, sql),
                    PULL: lambda name=name: PULLS[name](pulls),
                }
                order = list(runs)
                for round_ in range(args.repeat):
                    turn = round_ % len(order)
                    for who in order[turn:] + order[:turn]:
                        tally = tallies[name][who]
                        if tally.refused:
                            continue
                        began = time.perf_counter()
                        try:
                            got = await runs[who]()
                        except shardq.UnsupportedQueryError as exc:
                            tally.refused = str(exc)
                            print(f"  {name:<7} {who:<40} refused: {exc}")
                            continue
                        seconds = time.perf_counter() - began
                        tally.samples.append(seconds)
                        if comparable(got) != want:
                            tally.wrong.append(f"{len(got)} rows, first {got[:2]}")
                        mark = "ok" if comparable(got) == want else "WRONG"
                        print(f"  round {round_ + 1} {name:<7} {who:<40} {seconds:7.3f} s  {mark}")
        finally:
            for pull in pulls:
                await pull.close()
    return tallies


def report(tallies: dict[str, dict[str, Tally]], args: argparse.Namespace) -> dict[str, Any]:
    aims = []
    tables = []
    for name, by in tallies.items():
        ours, single, pull = by[SHARDQ], by[SINGLE], by[PULL]
        print(f"\n{name}: {'contender':<40} {'median s':>9}  answers")
        for who, tally in by.items():
            mark = (
                f"refused: {tally.refused}" if tally.refused
                else "ok" if not tally.wrong else f"WRONG: {tally.wrong[0]}"
            )  # fmt: skip
            print(f"{'':<{len(name) + 2}}{who:<40} {tally.median:>9.3f}  {mark}")
        answered = bool(ours.samples) and not ours.wrong
        to_single = ours.median / single.median if answered else float("nan")
        to_pull = ours.median / pull.median if answered else float("nan")
        aims += [
            {
                "text": f"{name}: shardq within {AIM_SINGLE:g}x the single node",
                "passed": answered and to_single <= AIM_SINGLE,
                "detail": f"{to_single:.2f}x",
            },
            {
                "text": f"{name}: shardq faster than the pull into pandas",
                "passed": answered and to_pull < 1.0,
                "detail": f"{to_pull:.2f}x the pull's time",
            },
        ]
        tables.append(
            {
                "title": f"{name}: seconds per read (median of {args.repeat}), "
                f"{args.rows:,} events",
                "metric": "s",
                "higher_is_better": False,
                "results": [
                    {
                        "contender": who,
                        "shardq": who == SHARDQ,
                        "case": name,
                        "value": None if not t.samples else round(t.median, 4),
                        "spread": [round(min(t.samples), 4), round(max(t.samples), 4)]
                        if t.samples
                        else None,
                        "correct": not t.wrong and not t.refused,
                        "note": t.refused or "",
                    }
                    for who, t in by.items()
                ],
            }
        )
    print()
    for aim in aims:
        print(f"{'PASS' if aim['passed'] else 'MISS'}  {aim['text']} ({aim['detail']})")
    return {
        "scenario": "gather",
        "title": f"Gather to one shard: {args.rows:,} events over {SHARDS} shards",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": tables,
        "aims": aims,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time reads answered by gathering to one shard, beside one node and pandas."
    )
    parser.add_argument("--rows", type=int, default=None, help="events (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--quick", action="store_true", help="100,000 events, 3 runs")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    if args.quick:
        args.repeat = min(args.repeat, 3)
    args.argv = list(argv)
    return args


def start_clusters() -> list[PgCluster]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(SHARDS + 1, prefix="bench-gather")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    interrupt_on_sigterm()
    print(versions(f"pandas {pd.__version__}"))
    clusters = start_clusters()
    try:
        began = time.perf_counter()
        config = load(clusters[:SHARDS], clusters[SHARDS], args.rows)
        print(f"{args.rows:,} events loaded in {time.perf_counter() - began:.1f} s")
        tallies = asyncio.run(measure(config, clusters[SHARDS], clusters[:SHARDS], args))
        results = report(tallies, args)
    finally:
        stop_clusters(clusters)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
