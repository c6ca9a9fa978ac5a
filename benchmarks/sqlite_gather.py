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
The table gives each one's median seconds and shardq's ratio::

    python benchmarks/sqlite_gather.py
    python benchmarks/sqlite_gather.py --quick --repeat 3
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import shardq

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="20,000 events")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = 20_000 if args.quick else args.rows
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = build(folder, rows)
        single = sqlite3.connect(folder / "single.sqlite")
        print(f"{rows:,} events, {rows // 10:,} accounts; 4 SQLite shards vs one file; "
              f"median of {args.repeat}")  # fmt: skip
        print(f"{'read':8} {'shardq s':>10} {'single s':>10} {'ratio':>7}  moved  answer")
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
                a, b = statistics.median(times["shardq"]), statistics.median(times["single"])
                print(f"{name:8} {a:10.3f} {b:10.3f} {a / b:6.1f}x  {moved:,}  {verdict}")
        single.close()


if __name__ == "__main__":
    main()
