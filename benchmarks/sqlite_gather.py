"""Gather to one shard on SQLite shards: reads no merge can answer, beside one SQLite file.

Four SQLite files hold ``events (id INTEGER PRIMARY KEY, account INTEGER, kind
INTEGER, amount INTEGER, day TEXT)`` and ``accounts (id INTEGER PRIMARY KEY,
region TEXT COLLATE NOCASE)``, both declared distributed by ``id``; a 5th
file, the single file, holds every row of both. ``--rows`` events (200,000
by default, 20,000 with ``--quick``) and a tenth as many accounts, from a
fixed seed. The two reads of ``benchmarks/gather.py``, which shardq answers
only by gathering (each table's used columns and filtered rows into a
temporary table on one shard, the read run there as written):

``window``
    the three largest amounts of each kind since a day, ``rank()`` over a
    window partitioned by ``kind``, not by the shard key;
``join``
    events joined to their accounts on ``events.account = accounts.id``
    (not on the same shards), counted and summed per region.

shardq (``shardq.connect``, ``fetchall()``) and the single file (sqlite3)
take turns, ``--repeat`` (5) rounds, each timed from the query to its last
row; every answer is compared with the single file's (``ok`` or ``WRONG``).
The table gives each one's median seconds and shardq's ratio; the aim, as
``benchmarks/gather.py``'s, is shardq within 2x the single file, with its
answer. ``--json PATH`` writes the results as ``python -m benchmarks`` reads
them (``sqlite_gather`` there)::

    python benchmarks/sqlite_gather.py
    python benchmarks/sqlite_gather.py --quick --repeat 3 --json sqlite_gather.json
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import command_line, stamp, versions

import shardq

if TYPE_CHECKING:
    from collections.abc import Sequence

SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, account INTEGER, kind INTEGER, amount INTEGER,
    day TEXT);
CREATE TABLE accounts (id INTEGER PRIMARY KEY, region TEXT COLLATE NOCASE);
"""
TABLES = {"events": {"shard_key": "id"}, "accounts": {"shard_key": "id"}}
QUERIES = {
    "window": (
        "SELECT kind, id, amount FROM (SELECT kind, id, amount, rank() OVER "
        "(PARTITION BY kind ORDER BY amount DESC, id) AS r FROM events "
        "WHERE day >= '2024-07-01') WHERE r <= 3 ORDER BY kind, r"
    ),
    "join": (
        "SELECT a.region, count(*), sum(e.amount) FROM events e JOIN accounts a "
        "ON a.id = e.account WHERE e.kind IN (1, 2) GROUP BY a.region ORDER BY 1"
    ),
}
REGIONS = ["eu", "us", "apac", "latam", "mea"]
SHARDQ = "shardq, 4 SQLite shards"
SINGLE = "one SQLite file (sqlite3)"
AIM_SINGLE = 2.0  # benchmarks/gather.py's aim for the same reads on PostgreSQL


def build(folder: Path, rows: int) -> dict[str, Any]:
    """Write the shard files and the single file; return shardq's configuration."""
    shards = [folder / f"s{i}.sqlite" for i in range(4)]
    config = {
        "dialect": "sqlite",
        "shards": [{"name": f"s{i}", "dsn": str(p)} for i, p in enumerate(shards)],
        "tables": TABLES,
    }
    placement = shardq.load_config(config)
    rng = random.Random(17)
    accounts = [(i, rng.choice(REGIONS)) for i in range(1, rows // 10 + 1)]
    events = [
        (
            i,
            rng.randrange(1, rows // 10 + 1),
            rng.randrange(10),
            rng.randrange(1_000_000),
            f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        )
        for i in range(1, rows + 1)
    ]
    for index, path in enumerate([*shards, folder / "single.sqlite"]):
        with sqlite3.connect(path) as db:
            db.executescript(SCHEMA)
            for table, data in (("events", events), ("accounts", accounts)):
                mine = [
                    r for r in data if index == 4 or placement.shard_for(table, r[0]) == f"s{index}"
                ]
                db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(data[0]))})",
                               mine)  # fmt: skip
        db.close()
    return config


def measure(config: dict[str, Any], single_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Each read's timings, verdict and rows moved: shardq and the single file take turns."""
    found: dict[str, Any] = {}
    single = sqlite3.connect(single_path)
    try:
        with shardq.connect(config) as conn:
            for name, sql in QUERIES.items():
                times: dict[str, list[float]] = {"shardq": [], "single": []}
                verdict = "ok"
                want = single.execute(sql).fetchall()
                for round_ in range(args.repeat):
                    for who in ["shardq", "single"] if round_ % 2 else ["single", "shardq"]:
                        began = time.perf_counter()
                        if who == "shardq":
                            got = conn.execute(sql).fetchall()
                        else:
                            got = single.execute(sql).fetchall()
                        times[who].append(time.perf_counter() - began)
                        if [tuple(r) for r in got] != want:
                            verdict = "WRONG"
                explained = conn.explain(sql, analyze=True)
                moved = sum(
                    int(line.split()[3]) for line in explained.splitlines() if "rows moved" in line
                )
                found[name] = {"times": times, "verdict": verdict, "moved": moved}
    finally:
        single.close()
    return found


def report(found: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table and the aims; the results document ``python -m benchmarks`` reads.

    Only shardq's answer is checked (the single file's is the reference).
    """
    print(f"{'read':8} {'shardq s':>10} {'single s':>10} {'ratio':>7}  moved  answer")
    tables = []
    aims = []
    for name, read in found.items():
        times, verdict, moved = read["times"], read["verdict"], read["moved"]
        a, b = statistics.median(times["shardq"]), statistics.median(times["single"])
        print(f"{name:8} {a:10.3f} {b:10.3f} {a / b:6.1f}x  {moved:,}  {verdict}")
        aims.append(
            {
                "text": f"{name}: shardq within {AIM_SINGLE:g}x the single file",
                "passed": verdict == "ok" and a / b <= AIM_SINGLE,
                "detail": f"{a / b:.2f}x",
            }
        )
        tables.append(
            {
                "title": f"{name}: seconds per read (median of {args.repeat}), "
                f"{args.rows:,} events, SQLite",
                "metric": "s",
                "higher_is_better": False,
                "results": [
                    {
                        "contender": who,
                        "shardq": key == "shardq",
                        "case": name,
                        "value": round(statistics.median(times[key]), 4),
                        "spread": [round(min(times[key]), 4), round(max(times[key]), 4)],
                        "correct": verdict == "ok" if key == "shardq" else None,
                        "note": f"{moved:,} rows moved" if key == "shardq" else "",
                    }
                    for key, who in (("shardq", SHARDQ), ("single", SINGLE))
                ],
            }
        )
    print()
    for aim in aims:
        print(f"{'PASS' if aim['passed'] else 'MISS'}  {aim['text']} ({aim['detail']})")
    return {
        "scenario": "sqlite_gather",
        "title": f"Gather to one shard on SQLite: {args.rows:,} events over 4 SQLite files",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": tables,
        "aims": aims,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time reads answered by gathering to one SQLite shard, beside one file."
    )
    parser.add_argument("--rows", type=int, default=None, help="events (default 200,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 events")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 20_000 if args.quick else 200_000
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print(versions())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = build(folder, args.rows)
        print(f"{args.rows:,} events, {args.rows // 10:,} accounts; 4 SQLite shards vs one file; "
              f"median of {args.repeat}")  # fmt: skip
        document = report(measure(config, folder / "single.sqlite", args), args)
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
