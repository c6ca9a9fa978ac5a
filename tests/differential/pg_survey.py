"""Survey: many random analytic reads on PostgreSQL shards, every outcome counted.

The property test stops at the first failure; this script does not. It starts
the four shard clusters and the single node (as the test fixtures do), loads
the edge dataset, draws ``-n`` examples with the property test's strategies
(:mod:`tests.differential.pg_analytics`: rows of ``ana`` and ``anb``, then a
query), compares each answer (:func:`tests.differential.pg_constructs.outcome`)
and prints how many answered the same (merged across the shards or gathered
to one), were refused (by reason) or differ, by shape, with the shortest
query of each failing kind::

    python -m tests.differential.pg_survey -n 1500 [--seed 1] [--timezone Europe/Paris]

The servers are stopped (by pid) when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

import shardq
from tests.differential.pg_analytics import Query, ana_rows, anb_rows, queries
from tests.differential.pg_constructs import outcome
from tests.fixtures.edge import DATABASE, Edge, build_edge
from tests.fixtures.servers import PgCluster, start_pg_clusters

SHARDS = 4


def _strategy(conn: shardq.Connection, query: Query) -> str:
    """``merged`` or ``gathered``: how shardq plans ``query`` (EXPLAIN's first line).

    A merge refused once the shards describe their rows (an order or a date
    computation the merge cannot reproduce) is gathered then, but EXPLAIN
    shows the merge planned.
    """
    text = conn.explain(query.sql, query.params)
    return "gathered" if text.startswith("Gathered") else "merged"


def survey(edge: Edge, examples: int, random_seed: int) -> tuple[Counter[str], dict[str, str]]:
    """Counts by outcome, shape and detail, and the shortest query of each non-``same`` kind."""
    counts: Counter[str] = Counter()
    shortest: dict[str, str] = {}
    with shardq.connect(edge.config) as conn:

        @seed(random_seed)
        @settings(max_examples=examples, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(ana=ana_rows, anb=anb_rows, query=queries())
        def run(ana: list[tuple[Any, ...]], anb: list[tuple[Any, ...]], query: Query) -> None:
            edge.load_tables({"ana": ana, "anb": anb})
            result = outcome(conn, edge, query)
            counts[result.kind] += 1
            counts[f"{result.kind} / {query.shape}"] += 1
            if query.params:
                counts[f"{result.kind} / with parameters"] += 1
            if result.kind == "same":
                strategy = _strategy(conn, query)
                counts[f"same: {strategy}"] += 1
                counts[f"same: {strategy} / {query.shape}"] += 1
                return
            key = f"{result.kind}: {re.sub(r'[0-9]+', 'N', result.detail)[:160]}"
            counts[key] += 1
            if len(query.sql) < len(shortest.get(key, query.sql + "x")):
                rows = f"{len(ana)} + {len(anb)} rows"
                shortest[key] = f"{query.sql}\n         ({result.detail}; {rows})"

        run()
    return counts, shortest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=1500, help="examples to draw (default 1500)")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed (default 1)")
    parser.add_argument(
        "--timezone", help="the sessions' TimeZone on every server (default: the servers', UTC)"
    )
    args = parser.parse_args()
    clusters = start_pg_clusters(SHARDS)
    single = PgCluster(name="single")
    try:
        single.start()
        edge = build_edge(clusters, single)
        if args.timezone:
            for cluster in [*clusters, single]:
                cluster.execute(f"ALTER DATABASE {DATABASE} SET TimeZone = '{args.timezone}'")
        started = time.monotonic()
        counts, shortest = survey(edge, args.n, args.seed)
        took = time.monotonic() - started
    finally:
        for cluster in [*clusters, single]:
            cluster.stop()
    kinds = ("same", "refused", "differ", "error", "invalid")
    total = sum(counts[k] for k in kinds)
    print(f"{total} queries in {took:.1f} s")
    for kind in kinds:
        print(f"  {kind:8s} {counts[kind]:5d}  ({100 * counts[kind] / max(total, 1):.1f}%)")
    for key, count in sorted(counts.items(), key=lambda kv: (kv[0].split(":")[0], -kv[1])):
        if ":" in key or " / " in key:
            print(f"{count:5d}  {key}")
            if key in shortest:
                print(f"         e.g. {shortest[key]}")


if __name__ == "__main__":
    main()
