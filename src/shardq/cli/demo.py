"""``shardq demo``: a sharded sample dataset in SQLite files, and queries over it.

Needs no server and no configuration: it writes a few SQLite shard files and
a ``shardq.toml`` into a folder (a temporary one unless ``--dir`` is given),
places every row with the same hash placement shardq uses, and runs showcase
queries, printing each one's result, the shards it ran on and its time.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shardq
from shardq.cli.exit_codes import ExitCode
from shardq.cli.output import write_rows
from shardq.config import load_config

if TYPE_CHECKING:
    import argparse

__all__ = ["SCHEMA", "add_parser", "create_dataset", "run"]

SCHEMA = """
CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT NOT NULL, signed_up TEXT NOT NULL
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, amount REAL NOT NULL,
    ordered_at TEXT NOT NULL
);
"""
COUNTRIES = [
    ("DE", "Germany"),
    ("FR", "France"),
    ("JP", "Japan"),
    ("BR", "Brazil"),
    ("IN", "India"),
    ("US", "United States"),
    ("NG", "Nigeria"),
    ("NZ", "New Zealand"),
]
_CONFIG = """\
# Written by `shardq demo`: {shards} SQLite shards beside this file.
dialect = "sqlite"
{shard_entries}
[tables.customers]
shard_key = "id"

[tables.orders]
shard_key = "customer_id"
colocate_with = "customers"

[tables.countries]
reference = true
"""
SHOWCASE: list[tuple[str, str, tuple[Any, ...]]] = [
    (
        "A point lookup: the shard key pins one shard",
        "SELECT id, name, country, signed_up FROM customers WHERE id = ?",
        (42,),
    ),
    (
        "A join with a reference table, only on the shards that hold customers 2 and 3",
        "SELECT c.id, c.name, n.name AS country FROM customers c "
        "JOIN countries n ON n.code = c.country WHERE c.id IN (?, ?)",
        (2, 3),
    ),
    (
        "A filter over every shard at once (scatter-gather)",
        "SELECT id, customer_id, amount FROM orders WHERE amount > ?",
        (995.0,),
    ),
    ("A reference table: read from one shard", "SELECT code, name FROM countries", ()),
    (
        "Top orders: each shard sorts its own, a k-way merge keeps the global top 5",
        "SELECT id, customer_id, amount FROM orders ORDER BY amount DESC, id LIMIT 5",
        (),
    ),
    (
        "Orders per country: partial counts and sums from every shard, regrouped",
        "SELECT n.name AS country, count(*) AS orders, sum(o.amount) AS revenue "
        "FROM orders o JOIN customers c ON c.id = o.customer_id "
        "JOIN countries n ON n.code = c.country "
        "GROUP BY n.name HAVING count(*) > ? ORDER BY orders DESC, country LIMIT 5",
        (10,),
    ),
    (
        "Refused rather than answered wrong: the list's order would depend on the shards",
        "SELECT group_concat(name) FROM customers",
        (),
    ),
]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="create SQLite shards with sample data and run showcase queries",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--dir", type=Path, help="folder for the shard files (default: temporary)")
    parser.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    parser.add_argument("--customers", type=int, default=2000, help="customers (default 2000)")
    parser.set_defaults(run=run)


def create_dataset(folder: Path, shards: int = 4, customers: int = 2000, seed: int = 7) -> Path:
    """Write ``shards`` SQLite files and a ``shardq.toml`` into ``folder``; return its path."""
    if shards < 1 or customers < 1:
        raise ValueError("shards and customers must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    entries = "".join(
        f'\n[[shards]]\nname = "s{i}"\ndsn = "demo-s{i}.sqlite"\n' for i in range(shards)
    )
    config_path = folder / "shardq.toml"
    config_path.write_text(_CONFIG.format(shards=shards, shard_entries=entries))
    config = load_config(config_path)
    rng = random.Random(seed)
    rows: dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {
        name: ([], []) for name in config.shard_names
    }
    order_id = 0
    start = dt.date(2024, 1, 1)
    for cid in range(1, customers + 1):
        home = config.shard_for("customers", cid)
        signed_up = start + dt.timedelta(days=rng.randrange(365))
        rows[home][0].append((cid, f"customer {cid}", rng.choice(COUNTRIES)[0], str(signed_up)))
        for _ in range(rng.randrange(1, 10)):
            order_id += 1
            ordered = signed_up + dt.timedelta(days=rng.randrange(300))
            amount = round(rng.uniform(5, 1000), 2)
            rows[home][1].append((order_id, cid, amount, str(ordered)))
    for shard in config.shards:
        path = Path(shard.dsn)
        path.unlink(missing_ok=True)
        with sqlite3.connect(path) as db:
            db.executescript(SCHEMA)
            db.executemany("INSERT INTO countries VALUES (?, ?)", COUNTRIES)
            db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", rows[shard.name][0])
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", rows[shard.name][1])
        db.close()
    return config_path


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="shardq-demo-") as tmp:
        folder = args.dir or Path(tmp)
        began = time.perf_counter()
        config_path = create_dataset(folder, args.shards, args.customers)
        print(
            f"Created {args.shards} SQLite shards with {args.customers} customers in {folder} "
            f"({(time.perf_counter() - began) * 1000:.0f} ms)"
        )
        with shardq.connect(config_path) as conn:
            print(f"customer 42 lives on shard {conn.shard_for('customers', 42)}\n")
            for title, sql, params in SHOWCASE:
                print(f"-- {title}\n{sql}" + (f"  -- params {list(params)}" if params else ""))
                began = time.perf_counter()
                try:
                    cur = conn.execute(sql, params or None)
                    assert cur.description is not None
                    rows = cur.fetchall()
                except shardq.UnsupportedQueryError as exc:
                    print(f"refused: {exc}\n")
                    continue
                elapsed = (time.perf_counter() - began) * 1000
                write_rows(sys.stdout, "table", [c.name for c in cur.description], rows[:10])
                more = f", first 10 of {len(rows)} shown" if len(rows) > 10 else ""
                print(f"ran on {', '.join(cur.shards)} in {elapsed:.1f} ms{more}\n")
        if args.dir:
            print(f'Query it yourself: shardq query -c {config_path} "SELECT ..."')
    return ExitCode.OK
