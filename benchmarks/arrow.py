"""Columnar reads: shardq into Arrow, beside a hand-written ADBC gather and a single node.

Four throw-away PostgreSQL clusters hold ``events (id bigint primary key,
account bigint, kind integer, amount numeric(12,2), note text, at
timestamptz)``, declared distributed by ``id``; a 5th, the single node,
holds every row. ``--rows`` events (1,000,000 by default, 200,000 with
``--quick``) over ``--rows / 10`` accounts (100,000 groups by default).

Two reads, each contender timed end to end (:func:`time.perf_counter`, from
the query to the whole ``pyarrow.Table``), in a rotating order, ``--repeat``
(5) rounds; the table gives the median seconds:

``scan``: ``SELECT * FROM events``
    1. the hand-written ADBC gather a user would write: one thread per shard,
       ``adbc_driver_postgresql`` (its connections opened once, before the
       rounds), ``pa.concat_tables``;
    2. the single node into Arrow with ADBC (one connection, one thread);
    3. shardq's ``read_arrow()`` on the row path (``arrow_reads = "rows"``:
       psycopg rows, columns built from them; phase 1);
    4. shardq's ``read_arrow()`` on the columnar path (ADBC per shard,
       merged on Arrow data);
    5. ``execute()`` then ``fetch_arrow_table()`` with ``arrow_reads =
       "adbc"``: the read is started as rows, cancelled, and read again.

``group``: ``SELECT account, count(*), sum(kind), min(kind), max(at) FROM
events GROUP BY account``
    1. shardq's ``read_arrow()``, columnar path (the partial aggregates
       regrouped with pyarrow);
    2. the raw fetch of the same per-shard partial rows (shardq's per-shard
       SQL) on the same path: the hand-written ADBC gather, concatenated;
    3. ``execute()`` then ``fetch_arrow_table()``, ``arrow_reads = "adbc"``;
    4. shardq's row path, for reference.

shardq's answers are checked (rows compared, sorted, with the single node's
read by psycopg through the same mapping to Arrow); ADBC's own read types
numeric as text, so the hand-written contenders are not compared. The aims
(reported, not asserted): the columnar scan at least 0.9x the hand-written
gather's speed (its time at most 1/0.9 of the gather's), the regroup at most
1.3x the time of the raw fetch of its partials.

Run it from the repository (the ``bench`` environment: ``scripts/uv sync
--locked --extra bench``)::

    python benchmarks/arrow.py
    python benchmarks/arrow.py --quick --json arrow.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import adbc_driver_postgresql
import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
from _common import command_line, interrupt_on_sigterm, stamp, stop_clusters, versions

import shardq

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from tests.fixtures.servers import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARDS = 4
DBNAME = "bench_arrow"
SCAN = "SELECT * FROM events"
GROUP = "SELECT account, count(*), sum(kind), min(kind), max(at) FROM events GROUP BY account"
AIM_GATHER = 0.9  # speed relative to the hand-written gather, at least
AIM_REGROUP = 1.3  # time relative to the raw fetch of the partials, at most

HAND = "hand-written ADBC gather (4 threads, concat_tables)"
SINGLE = "single node, ADBC"
ROWS = "shardq read_arrow(), row path (phase 1)"
FAST = "shardq read_arrow(), columnar path (ADBC)"
AGAIN = "shardq execute() + fetch_arrow_table(), arrow_reads='adbc'"
PARTIALS = "raw fetch of the per-shard partial rows (ADBC gather)"
REGROUP = "shardq regroup, read_arrow(), columnar path"
REGROUP_AGAIN = "shardq regroup, execute() + fetch_arrow_table(), 'adbc'"
REGROUP_ROWS = "shardq regroup, row path"

SCHEMA = """
CREATE TABLE events (
    id bigint PRIMARY KEY, account bigint, kind integer, amount numeric(12, 2),
    note text, at timestamptz
)
"""
# Every shard makes its own rows (those whose id it holds): no rows cross the client.
FILL = """
INSERT INTO events
SELECT g, g %% %(accounts)s, (g * 7) %% 10, ((g * 37) %% 100000) / 100.0, 'event ' || g,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, %(rows)s) g
"""


def load(clusters: Sequence[PgCluster], single: PgCluster, rows: int) -> dict[str, Any]:
    """Create and fill the shards and the single node; the shardq configuration."""
    config = {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": c.dsn(DBNAME)} for i, c in enumerate(clusters)],
        "tables": {"events": {"shard_key": "id"}},
    }
    with shardq.connect(config) as conn:
        owner = [conn.shard_for("events", i) for i in range(1, rows + 1)]
    names = [s["name"] for s in config["shards"]]
    for cluster in [*clusters, single]:
        cluster.create_database(DBNAME)
        with psycopg.connect(cluster.dsn(DBNAME), autocommit=True) as db:
            db.execute(SCHEMA)
            db.execute(FILL, {"accounts": rows // 10, "rows": rows})
    # Keep on each shard only the ids shardq places there.
    for name, cluster in zip(names, clusters, strict=True):
        gone = [i for i in range(1, rows + 1) if owner[i - 1] != name]
        with psycopg.connect(cluster.dsn(DBNAME), autocommit=True) as db:
            db.execute("DELETE FROM events WHERE id = ANY(%s)", (gone,))
            db.execute("VACUUM ANALYZE events")
    with psycopg.connect(single.dsn(DBNAME), autocommit=True) as db:
        db.execute("VACUUM ANALYZE events")
    return config


class Gather:
    """The hand-written ADBC gather: a connection and a thread per shard."""

    def __init__(self, dsns: Sequence[str]):
        self.conns = [adbc.connect(dsn) for dsn in dsns]
        self.pool = ThreadPoolExecutor(max_workers=len(dsns))

    def _one(self, conn: Any, sql: str) -> pa.Table:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetch_arrow_table()

    def read(self, sql: str) -> pa.Table:
        tables = list(self.pool.map(lambda c: self._one(c, sql), self.conns))
        return pa.concat_tables(tables)

    def close(self) -> None:
        self.pool.shutdown()
        for conn in self.conns:
            conn.close()


def shardq_read(conn: shardq.Connection, sql: str, mode: str) -> pa.Table:
    """``read_arrow`` with ``arrow_reads = mode``, checked to have gone the way it says."""
    conn.arrow_reads = mode  # type: ignore[assignment]
    table = conn.read_arrow(sql)
    if conn.arrow_path != ("rows" if mode == "rows" else "adbc"):
        raise AssertionError(f"{mode}: read by {conn.arrow_path} ({conn.arrow_fallback})")
    return table


def shardq_again(conn: shardq.Connection, sql: str) -> pa.Table:
    """``execute()`` then ``fetch_arrow_table()``: the read started as rows, read again."""
    conn.arrow_reads = "adbc"
    cursor = conn.execute(sql)
    table = cursor.fetch_arrow_table()
    if cursor.arrow_path != "adbc":
        raise AssertionError(f"read again by {cursor.arrow_path} ({cursor.arrow_fallback})")
    return table


def single_answer(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    """The single node's rows, through shardq's mapping to Arrow (psycopg, one node)."""
    from shardq.execute.driver import Column
    from shardq.export import to_table

    with psycopg.connect(dsn, autocommit=True) as db:
        cursor = db.execute(sql)
        assert cursor.description is not None
        described = [
            Column(c.name, c.type_code, c.display_size, c.internal_size, c.precision, c.scale)
            for c in cursor.description
        ]
        return canonical(to_table(described, [cursor.fetchall()]))


def canonical(table: pa.Table) -> list[tuple[Any, ...]]:
    """The table's rows, sorted, with plain column names (to compare answers)."""
    plain = table.rename_columns([f"c{i}" for i in range(table.num_columns)])
    rows = [tuple(row.values()) for row in plain.to_pylist()]
    return sorted(rows, key=lambda row: tuple((v is None, v) for v in row))


def measure(
    contenders: dict[str, Callable[[], pa.Table]],
    want: list[tuple[Any, ...]],
    checked: set[str],
    repeat: int,
) -> dict[str, dict[str, Any]]:
    """Each contender's samples (rotating order), and for those ``checked`` whether
    their first answer was ``want`` (the others' types differ: ADBC's numeric is text)."""
    out: dict[str, dict[str, Any]] = {
        n: {"samples": [], "correct": True if n in checked else None} for n in contenders
    }
    names = list(contenders)
    for round_ in range(repeat):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            began = time.perf_counter()
            table = contenders[name]()
            out[name]["samples"].append(time.perf_counter() - began)
            if round_ == 0 and name in checked and canonical(table) != want:
                out[name]["correct"] = False
    return out


def table_of(title: str, case: str, found: dict[str, dict[str, Any]], ours: set[str]) -> Any:
    print(f"\n{title}")
    results = []
    for who, tally in found.items():
        median = statistics.median(tally["samples"])
        mark = {True: "ok", False: "WRONG", None: ""}[tally["correct"]]
        print(f"   {who:<58} {median:>8.3f} s  {mark}")
        results.append(
            {
                "contender": who,
                "shardq": who in ours,
                "case": case,
                "value": round(median, 4),
                "spread": [round(min(tally["samples"]), 4), round(max(tally["samples"]), 4)],
                "correct": tally["correct"],
            }
        )
    return {"title": title, "metric": "s", "higher_is_better": False, "results": results}


def run(config: dict[str, Any], single: PgCluster, args: argparse.Namespace) -> dict[str, Any]:
    dsns = [s["dsn"] for s in config["shards"]]
    gather = Gather(dsns)
    lone = Gather([single.dsn(DBNAME)])
    conn = shardq.connect(config)
    try:
        shard_sql = conn._inner._engine.plan(GROUP).sql
        scan = measure(
            {
                HAND: lambda: gather.read(SCAN),
                SINGLE: lambda: lone.read(SCAN),
                ROWS: lambda: shardq_read(conn, SCAN, "rows"),
                FAST: lambda: shardq_read(conn, SCAN, "auto"),
                AGAIN: lambda: shardq_again(conn, SCAN),
            },
            single_answer(single.dsn(DBNAME), SCAN),
            {ROWS, FAST, AGAIN},
            args.repeat,
        )
        group = measure(
            {
                REGROUP: lambda: shardq_read(conn, GROUP, "auto"),
                PARTIALS: lambda: gather.read(shard_sql),
                REGROUP_AGAIN: lambda: shardq_again(conn, GROUP),
                REGROUP_ROWS: lambda: shardq_read(conn, GROUP, "rows"),
            },
            single_answer(single.dsn(DBNAME), GROUP),
            {REGROUP, REGROUP_AGAIN, REGROUP_ROWS},
            args.repeat,
        )
    finally:
        conn.close()
        gather.close()
        lone.close()
    rows = args.rows
    scan_title = f"scan: {rows:,} rows over {SHARDS} shards into Arrow, s (median of {args.repeat})"
    group_title = f"group: {rows // 10:,} groups, the regroup and the raw fetch of its partials, s"
    tables = [
        table_of(scan_title, "scan", scan, {ROWS, FAST, AGAIN}),
        table_of(group_title, "group", group, {REGROUP, REGROUP_AGAIN, REGROUP_ROWS}),
    ]
    median = {n: statistics.median(t["samples"]) for n, t in {**scan, **group}.items()}
    speed = median[HAND] / median[FAST]
    regroup = median[REGROUP] / median[PARTIALS]
    aims = [
        {
            "text": f"scan: columnar path at least {AIM_GATHER:g}x the hand-written gather's speed",
            "passed": scan[FAST]["correct"] and speed >= AIM_GATHER,
            "detail": f"{speed:.2f}x; read again after execute() "
            f"{median[HAND] / median[AGAIN]:.2f}x; row path {median[HAND] / median[ROWS]:.2f}x; "
            f"single node {median[HAND] / median[SINGLE]:.2f}x",
        },
        {
            "text": f"group: regroup at most {AIM_REGROUP:g}x the raw fetch of the partials",
            "passed": group[REGROUP]["correct"] and regroup <= AIM_REGROUP,
            "detail": f"{regroup:.2f}x; read again after execute() "
            f"{median[REGROUP_AGAIN] / median[PARTIALS]:.2f}x; "
            f"row path {median[REGROUP_ROWS] / median[PARTIALS]:.2f}x",
        },
    ]
    print()
    for aim in aims:
        print(f"{'PASS' if aim['passed'] else 'MISS'}  {aim['text']} ({aim['detail']})")
    return {
        "scenario": "arrow",
        "title": f"Columnar reads: {rows:,} rows over {SHARDS} shards into Arrow",
        "command": command_line(__file__, args.argv),
        "quick": args.quick,
        **stamp(),
        "tables": tables,
        "aims": aims,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time reads into Arrow, beside ADBC by hand.")
    parser.add_argument("--rows", type=int, default=None, help="events (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 3 rounds")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 200_000 if args.quick else 1_000_000
    if args.quick:
        args.repeat = min(args.repeat, 3)
    args.argv = list(argv)
    return args


def start_clusters() -> list[PgCluster]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.servers import start_pg_clusters

    return start_pg_clusters(SHARDS + 1, prefix="bench-arrow")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    interrupt_on_sigterm()
    print(
        versions(
            f"pyarrow {pa.__version__}",
            f"adbc-driver-postgresql {adbc_driver_postgresql.__version__}",
        )
    )
    clusters = start_clusters()
    try:
        began = time.perf_counter()
        config = load(clusters[:SHARDS], clusters[SHARDS], args.rows)
        print(f"{args.rows:,} events loaded in {time.perf_counter() - began:.1f} s")
        results = run(config, clusters[SHARDS], args)
    finally:
        stop_clusters(clusters)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
