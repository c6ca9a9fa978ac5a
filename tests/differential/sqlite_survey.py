"""Survey: many random SQLite queries, every failure counted by kind.

The property test stops at the first failure; this script does not. It builds
the SQLite edge dataset in a temporary folder, draws ``-n`` queries with the
property test's strategy and prints how many answered the same, were refused
(by construct), differ or failed, with the shortest query of each kind::

    python -m tests.differential.sqlite_survey -n 1000 [--seed 1]

Use it to measure a change to the SQLite merge path; the test suite is the
pass/fail gate.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

import shardq
from tests.differential.sqlite_queries import Query, outcome, queries
from tests.fixtures.sqlite_edge import build


def survey(examples: int, random_seed: int) -> tuple[Counter[str], dict[str, str]]:
    """Counts by outcome and kind, and the shortest query of each failing kind."""
    counts: Counter[str] = Counter()
    shortest: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="shardq-sqlite-survey-") as tmp:
        data = build(Path(tmp))
        with shardq.connect(data.config) as conn, data.single_connection() as db:

            @seed(random_seed)
            @settings(max_examples=examples, database=None, deadline=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(query=queries())
            def run(query: Query) -> None:
                result = outcome(conn, db, query)
                counts[result.kind] += 1
                if result.kind == "same":
                    return
                key = f"{result.kind}: {result.detail}"
                counts[key] += 1
                text = query.sql + (f"  -- params {list(query.params)}" if query.params else "")
                if len(text) < len(shortest.get(key, text + "x")):
                    shortest[key] = text

            run()
        db.close()
    return counts, shortest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=1000, help="queries to draw (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed (default 1)")
    args = parser.parse_args()
    counts, shortest = survey(args.n, args.seed)
    total = sum(counts[k] for k in ("same", "refused", "differ", "error", "both-error"))
    print(f"{total} queries")
    for kind in ("same", "refused", "differ", "error", "both-error"):
        print(f"  {kind:10s} {counts[kind]:5d}  ({100 * counts[kind] / max(total, 1):.1f}%)")
    for key, count in sorted(counts.items(), key=lambda kv: (kv[0].split(":")[0], -kv[1])):
        if ":" in key:
            print(f"{count:5d}  {key}")
            if key in shortest:
                print(f"         e.g. {shortest[key]}")


if __name__ == "__main__":
    main()
