"""``shardq demo``: a sharded sample dataset in SQLite files, and queries over it.

Needs no server and no configuration: it writes a few SQLite shard files and
a ``shardq.toml`` into a folder (``./shardq-demo`` unless ``--dir`` is
given), places every row with the same hash placement shardq uses, and runs
showcase queries, printing each one's result, the shards it ran on and its
time. The folder stays, to be explored with the commands printed at the end;
a second run reuses it (``--fresh`` rebuilds it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import shardq
from shardq.cli.exit_codes import ExitCode
from shardq.cli.output import write_rows
from shardq.config import load_config

if TYPE_CHECKING:
    from shardq.config import Config

__all__ = ["DEFAULT_DIR", "SCHEMA", "add_parser", "create_dataset", "find_dataset", "run"]

DEFAULT_DIR = Path("shardq-demo")
#: A query the closing hint prints: plain enough to paste into any POSIX shell.
TRY_SQL = "SELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY n DESC"

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
# Written by `shardq demo`: {shards} SQLite shards, {customers} customers, seed {seed}.
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
        "Refused rather than answered wrong: SQLite would show any row's name for the group",
        "SELECT country, name FROM customers GROUP BY country",
        (),
    ),
]


_MARKER = re.compile(
    r"# Written by `shardq demo`: (\d+) SQLite shards, (\d+) customers, seed (\d+)\."
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="create SQLite shards with sample data and run showcase queries",
        description=(
            "Create a sharded sample dataset in SQLite files (no server needed), run showcase "
            "queries over it, and leave it in a folder to explore. A second run reuses the "
            "folder when it holds the same demo."
        ),
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"folder for the shard files and shardq.toml (default: ./{DEFAULT_DIR})",
    )
    parser.add_argument(
        "--shards", type=_at_least_one, default=4, metavar="N", help="number of shards (default 4)"
    )
    parser.add_argument(
        "--customers",
        type=_at_least_one,
        default=2000,
        metavar="N",
        help="customers, each with 1 to 9 orders (default 2000)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="rebuild the dataset even if the folder already holds this demo",
    )
    parser.set_defaults(run=run, parser=parser)


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Exit as argparse does for a bad argument: usage, message, exit code 2."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def find_dataset(folder: Path) -> tuple[int, int, int] | None:
    """The (shards, customers, seed) of the demo ``folder`` holds, complete, or None.

    Raises:
        FileExistsError: ``folder`` has a ``shardq.toml`` that ``shardq demo``
            did not write: it must not be overwritten.
    """
    config_path = folder / "shardq.toml"
    try:
        first = config_path.read_text(encoding="utf-8").partition("\n")[0]
    except FileNotFoundError:
        return None
    if not first.startswith("# Written by `shardq demo`"):
        raise FileExistsError(f"{config_path} exists and was not written by shardq demo")
    found = _MARKER.fullmatch(first)
    if found is None:  # written by an older shardq: rebuild it
        return None
    shards, customers, seed = (int(g) for g in found.groups())
    if not all((folder / f"demo-s{i}.sqlite").is_file() for i in range(shards)):
        return None
    return shards, customers, seed


def create_dataset(folder: Path, shards: int = 4, customers: int = 2000, seed: int = 7) -> Path:
    """Write ``shards`` SQLite files and a ``shardq.toml`` into ``folder``; return its path."""
    if shards < 1 or customers < 1:
        raise ValueError("shards and customers must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    entries = "".join(
        f'\n[[shards]]\nname = "s{i}"\ndsn = "demo-s{i}.sqlite"\n' for i in range(shards)
    )
    config_path = folder / "shardq.toml"
    text = _CONFIG.format(shards=shards, customers=customers, seed=seed, shard_entries=entries)
    config_path.write_text(text, encoding="utf-8")
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
    folder: Path = args.dir
    wanted = (args.shards, args.customers, 7)
    shown = _shown(folder)
    try:
        found = find_dataset(folder)
    except FileExistsError as exc:
        _usage_error(args, f"{exc}; choose another folder with --dir")
    except OSError as exc:
        _usage_error(args, f"cannot use {shown} for the demo: {exc.strerror}; choose --dir")
    if found == wanted and not args.fresh:
        config_path = folder / "shardq.toml"
        print(
            f"Reusing the demo in {shown}: {args.shards} SQLite shards, {args.customers} "
            "customers (built by an earlier run; --fresh rebuilds it)"
        )
    else:
        began = time.perf_counter()
        try:
            if (folder / "shardq.toml").exists():  # an earlier demo's: none of its files stays
                for stale in folder.glob("demo-s*.sqlite"):
                    stale.unlink()
            config_path = create_dataset(folder, args.shards, args.customers)
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            _usage_error(
                args,
                f"cannot write the demo into {shown}: {reason}; choose --dir",
            )
        verb = "Created" if found is None else "Rebuilt"
        print(
            f"{verb} {args.shards} SQLite shards with {args.customers} customers in {shown} "
            f"({(time.perf_counter() - began) * 1000:.0f} ms)"
            + (f"; it held {found[0]} shards and {found[1]} customers" if found else "")
        )
    with shardq.connect(config_path) as conn:
        _showcase(conn.config, conn)
    _next_steps(folder, args.shards)
    return ExitCode.OK


def _showcase(config: Config, conn: shardq.Connection) -> None:
    print(f"customer 42 lives on shard {config.shard_for('customers', 42)}\n")
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


def _shown(folder: Path) -> str:
    """``folder`` as the user can type it here: relative below the current directory."""
    absolute = folder.resolve()
    try:
        relative = absolute.relative_to(Path.cwd().resolve())
    except ValueError:
        return str(absolute)
    return str(relative) if str(relative) != "." else "."


def _next_steps(folder: Path, shards: int) -> None:
    where = _shown(folder)
    config = shlex.quote(os.path.join(where, "shardq.toml"))
    print(
        f"The demo stays in {where} (shardq.toml and {shards} shard files); "
        "run shardq demo again to reuse it, with --fresh to rebuild it.\n"
        "Query it yourself, from this directory:\n"
        f'  shardq query -c {config} "{TRY_SQL}"\n'
        "or from inside the folder, where shardq finds ./shardq.toml by itself:\n"
        f"  cd {shlex.quote(where)}\n"
        f'  shardq explain -p 42 "SELECT * FROM orders WHERE customer_id = ?"'
    )
