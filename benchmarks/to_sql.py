"""pandas' ``to_sql`` and multi-row INSERTs through the SQLAlchemy dialect, beside one node.

A table ``items (k bigint, name text, v float8, d date, at timestamp)``
exists on 4 shards (4 throw-away PostgreSQL clusters, ``[tables.items]
shard_key = "k"``) and on a 5th cluster, the single node. A frame of
``--rows`` rows (20,000; 5,000 with ``--quick``) from a fixed seed is
written by each contender into empty tables (``TRUNCATE``, untimed), timed
end to end (:func:`time.perf_counter`), ``--repeat`` (3) rounds, the median
kept; after each write, untimed, the rows stored are counted and summed
against the frame's. The cases:

``to_sql``
    ``frame.to_sql("items", engine, if_exists="append", index=False)``:
    SQLAlchemy's ``executemany`` of one INSERT, which shardq's dialect runs
    as a COPY per shard when COPY stores what the INSERT would (it does for
    this frame: see :mod:`shardq.insert_copy`);
``to_sql multi``
    the same with ``method="multi", chunksize=1000``: one INSERT of 1,000
    rows of VALUES per chunk, each planned by shardq (split by the shards
    its rows' keys are on) and sent as one INSERT per shard;
``INSERT 1,000 rows, parameters``
    ``INSERT INTO items (k, name, v, d, at) VALUES (%s, ...), ...`` of
    1,000 rows with 5,000 parameters, the frame's first ``--statements``
    (5) chunks of 1,000 rows one after the other (the same text each time),
    through ``shardq.connect(...).execute`` and through psycopg on the
    single node, each statement timed alone (the median over statements);
``INSERT 1,000 rows, literals``
    1,000 rows with their values written in the text: a text not seen
    before each time (another chunk of the frame each round), planned from
    its text.

The single node is written through SQLAlchemy's psycopg dialect
(``postgresql+psycopg://``) for the ``to_sql`` cases and through psycopg
for the INSERT. ``--json PATH`` writes the results as ``python -m
benchmarks`` collects them (``to_sql`` there). The clusters are stopped by
pid at the end, whatever happens.

Run it from the repository::

    python benchmarks/to_sql.py
    python benchmarks/to_sql.py --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import psycopg
import sqlalchemy as sa
from _common import command_line, interrupt_on_sigterm, stamp, stop_clusters, versions

import shardq
import shardq.sqlalchemy  # registers the dialects

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DATABASE = "to_sql"
SCHEMA = "CREATE TABLE items (k bigint NOT NULL, name text, v float8, d date, at timestamp)"
INSERT_ROWS = 1000


def frame(rows: int) -> pd.DataFrame:
    """``rows`` rows from a fixed seed: distinct keys, text, floats, dates, timestamps."""
    rng = random.Random(7)
    keys = rng.sample(range(1, 2**40), rows)
    start = dt.datetime(2024, 1, 1)
    return pd.DataFrame(
        {
            "k": keys,
            "name": [f"name {rng.randrange(10**6)}" for _ in range(rows)],
            "v": [rng.random() * 1000 for _ in range(rows)],
            "d": [start.date() + dt.timedelta(days=rng.randrange(3650)) for _ in range(rows)],
            "at": [start + dt.timedelta(seconds=rng.randrange(10**8)) for _ in range(rows)],
        }
    )


def insert_statement(rows: pd.DataFrame) -> tuple[str, list[Any]]:
    """One INSERT of every row of ``rows``, with positional parameters."""
    marks = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
    params = [value for row in rows.itertuples(index=False) for value in row]
    return f"INSERT INTO items (k, name, v, d, at) VALUES {marks}", params


def literal_statement(rows: pd.DataFrame) -> str:
    """One INSERT of every row of ``rows``, its values written in the text (a new text)."""
    values = ", ".join(
        f"({k}, '{name}', {v!r}, '{d}', '{at}')"
        for k, name, v, d, at in rows.itertuples(index=False)
    )
    return f"INSERT INTO items (k, name, v, d, at) VALUES {values}"


def check(count_sum: Callable[[], tuple[int, int]], rows: pd.DataFrame) -> bool:
    return count_sum() == (len(rows), int(rows["k"].sum()))


def measure(
    clusters: Sequence[PgCluster], single: PgCluster, args: argparse.Namespace
) -> dict[str, Any]:
    shards = [{"name": f"s{i}", "dsn": c.dsn(DATABASE)} for i, c in enumerate(clusters)]
    config = {"dialect": "postgres", "shards": shards, "tables": {"items": {"shard_key": "k"}}}
    engines = {
        "shardq": sa.create_engine("shardq+postgresql://", connect_args={"config": config}),
        "single node": sa.create_engine(
            single.dsn(DATABASE).replace("postgresql://", "postgresql+psycopg://")
        ),
    }
    data = frame(args.rows)
    chunks = [data.iloc[i : i + INSERT_ROWS] for i in range(0, len(data), INSERT_ROWS)]
    # Each round's literal INSERTs are texts not seen before (a planned text is kept).
    rounds = [
        [chunks[(r * args.statements + j) % len(chunks)] for j in range(args.statements)]
        for r in range(args.repeat)
    ]
    done = {"shardq": 0, "single node": 0}  # rounds of literal INSERTs run

    def empty() -> None:
        for cluster in [*clusters, single]:
            cluster.execute("TRUNCATE items", DATABASE)

    def count_sum() -> tuple[int, int]:
        found = [c.execute("SELECT count(*), sum(k) FROM items", DATABASE)[0] for c in clusters]
        return sum(n for n, _ in found), sum(int(s or 0) for _, s in found)

    def single_count_sum() -> tuple[int, int]:
        n, s = single.execute("SELECT count(*), sum(k) FROM items", DATABASE)[0]
        return n, int(s or 0)

    times: dict[tuple[str, str], list[float]] = {}
    wrong: dict[tuple[str, str], int] = {}
    conn = shardq.connect(config)
    direct = psycopg.connect(single.dsn(DATABASE), autocommit=True)
    executes = {"shardq": conn.execute, "single node": direct.execute}
    counts = {"shardq": count_sum, "single node": single_count_sum}

    def to_sql(engine: sa.Engine, **how: Any) -> Callable[[], list[float]]:
        def run() -> list[float]:
            began = time.perf_counter()
            data.to_sql("items", engine, if_exists="append", index=False, **how)
            return [time.perf_counter() - began]

        return run

    def inserts(name: str, literal: bool) -> Callable[[], list[float]]:
        def run() -> list[float]:
            seconds = []
            if literal:
                chunks = rounds[done[name]]
                done[name] += 1
            else:
                chunks = rounds[0]
            for chunk in chunks:  # each statement timed alone; the shards emptied in between
                sql, params = (
                    (literal_statement(chunk), None) if literal else insert_statement(chunk)
                )
                began = time.perf_counter()
                executes[name](sql, params)
                seconds.append(time.perf_counter() - began)
                if chunk is not chunks[-1]:
                    executes[name]("DELETE FROM items")
            return seconds

        return run

    insert = f"INSERT {INSERT_ROWS:,} rows"
    cases: dict[str, dict[str, Callable[[], list[float]]]] = {
        "to_sql": {name: to_sql(engine) for name, engine in engines.items()},
        "to_sql multi": {
            name: to_sql(engine, method="multi", chunksize=INSERT_ROWS)
            for name, engine in engines.items()
        },
        f"{insert}, parameters": {name: inserts(name, False) for name in executes},
        f"{insert}, literals": {name: inserts(name, True) for name in executes},
    }
    try:
        for r in range(args.repeat):
            for case, contenders in cases.items():
                expected = data if case.startswith("to_sql") else rounds[0][-1]
                if case.endswith("literals"):
                    expected = rounds[r][-1]
                for name, run in contenders.items():
                    empty()
                    times.setdefault((case, name), []).extend(run())
                    if not check(counts[name], expected):
                        wrong[(case, name)] = wrong.get((case, name), 0) + 1
    finally:
        conn.close()
        direct.close()
        for engine in engines.values():
            engine.dispose()
    return {
        case: {
            name: {
                "median_s": round(statistics.median(times[(case, name)]), 4),
                "wrong": wrong.get((case, name), 0),
            }
            for name in contenders
        }
        for case, contenders in cases.items()
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table and the aims; the results document ``python -m benchmarks`` reads.

    The aims: shardq within 2x of the single node for ``to_sql`` (a COPY per
    shard against psycopg's executemany on one), and within 5x for a
    multi-row INSERT (planned, split and sent to 4 shards, where the single
    node parses it once).
    """
    print(f"\n{'case':28} {'shardq':>10} {'single node':>12} {'ratio':>6}")
    aims, rows = [], []
    bounds = {case: 2.0 if case == "to_sql" else 5.0 for case in results}
    for case, contenders in results.items():
        s, one = contenders["shardq"], contenders["single node"]
        ratio = s["median_s"] / one["median_s"] if one["median_s"] else float("nan")
        flags = " WRONG" if s["wrong"] or one["wrong"] else ""
        print(f"{case:28} {s['median_s']:>8.3f} s {one['median_s']:>10.3f} s {ratio:>5.2f}x{flags}")
        aims.append(
            {
                "text": f"{case}: shardq within {bounds[case]:g}x of the single node",
                "passed": not s["wrong"] and ratio <= bounds[case],
                "detail": f"{ratio:.2f}x",
            }
        )
        rows += [
            {
                "contender": name,
                "shardq": name == "shardq",
                "case": case,
                "value": contenders[name]["median_s"],
                "correct": not contenders[name]["wrong"],
            }
            for name in contenders
        ]
    print()
    for aim in aims:
        print(f"{'PASS' if aim['passed'] else 'MISS'}  {aim['text']} ({aim['detail']})")
    return {
        "scenario": "to_sql",
        "title": f"pandas to_sql and a {INSERT_ROWS:,}-row INSERT, {SHARDS} shards "
        f"against one PostgreSQL ({args.rows:,} rows)",
        "command": command_line("to_sql.py", args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": [
            {
                "title": f"seconds per write (median of {args.repeat})",
                "metric": "s",
                "higher_is_better": False,
                "results": rows,
            }
        ],
        "aims": aims,
        "results": results,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time to_sql and multi-row INSERTs.")
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the frame")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds")
    parser.add_argument("--statements", type=int, default=5, help="1,000-row INSERTs per round")
    parser.add_argument("--quick", action="store_true", help="5,000 rows, 1 round")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeat, args.statements = min(args.rows, 5000), 1, 2
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    interrupt_on_sigterm()
    print(versions(f"SQLAlchemy {sa.__version__}", f"pandas {pd.__version__}"))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    clusters = start_pg_clusters(SHARDS + 1, prefix="bench-to-sql")
    try:
        for cluster in clusters:
            cluster.create_database(DATABASE)
            cluster.execute(SCHEMA, DATABASE)
        document = report(measure(clusters[:SHARDS], clusters[SHARDS], args), args)
    finally:
        stop_clusters(clusters)
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
