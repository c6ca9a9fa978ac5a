"""Every benchmark in one command: ``python -m benchmarks [--quick]``.

Runs each scenario script of this folder in turn, as a child process (each
starts the throw-away PostgreSQL clusters and Redis it needs with the test
suite's helpers, and stops them by pid whatever happens), shows its output
as it goes, and collects what each wrote with ``--json``:

- ``scatter``: ``scatter_latency.py``, ``pg_sleep(0.05)`` on 4 and 16 shards;
- ``tpch``: ``tpch.py``, TPC-H Q1, Q3, Q5, Q6, Q10, Q18 at scale factor 0.1,
  next to the slowest shard's own time for its per-shard SQL;
- ``merge``: ``merge.py``, 5,000,000 rows streamed through an ORDER BY merge
  (rows/s and peak RSS of nine contenders, each answer checked) and a GROUP BY
  over 1,000,000 rows;
- ``batch``: ``batch.py``, 20,000 point lookups by key, concurrency 100;
- ``cache``: ``cache.py``, cache hits and a 200-caller stampede;
- ``load``: ``load.py``, 1,000,000 rows bulk-loaded over 4 shards by ``copy_in``,
  beside a hand-split psycopg COPY, a single-node COPY and ``executemany``.
- ``commit``: ``commit.py``, the latency of a transaction on 1 shard and of a
  two-phase commit on 2 and 4, beside psycopg's ``tpc_*`` by hand and a plain
  commit;
- ``soak``: ``soak.py``, 200 clients of mixed reads and writes for 60 s on
  shards with standbys, one standby killed half way (it also draws
  ``benchmarks/soak.png``, over time).
- ``gather``: ``gather.py``, a window not partitioned by the shard key and a
  join of tables that are not co-located (reads answered by gathering to one
  shard), beside the single node and a hand-written pull into pandas;
- ``sqlite_gather``: ``sqlite_gather.py``, the same two reads on 4 SQLite shard
  files, beside one SQLite file holding every row;
- ``decorrelate``: ``decorrelate.py``, TPC-H Q17, Q20 and Q22 (subqueries
  correlated on another key than the shard key) decorrelated and gathered, at
  scale factor 0.01 on 4 shards;
- ``to_sql``: ``to_sql.py``, pandas' ``to_sql`` of 20,000 rows through the
  SQLAlchemy dialect (a COPY per shard, and ``method="multi"``: 1,000-row
  INSERTs) and 1,000-row INSERTs through ``shardq.connect``, beside one
  PostgreSQL;
- ``arrow``: ``arrow.py``, 1,000,000 rows over 4 shards into Arrow (shardq's
  row and columnar paths beside a hand-written ADBC gather and a single
  node), and a GROUP BY of 100,000 groups beside the raw fetch of its partials.

Then it prints every table and every aim once more, side by side, writes
``benchmarks/results.json`` (all the scenarios' results, the machine and the
date) and draws ``benchmarks/results.png`` (one panel per table, shardq's bars
in colour, a wrong answer marked), and exits 0 unless a scenario failed to
run: missed aims are reported, not errors.

The full run took 910 s on a 2-core machine, before ``commit`` and ``soak``
were added (``soak`` takes about 90 s, 20 s with ``--quick``); ``--quick``
passes ``--quick`` to every scenario (136 s, then); ``--only batch,cache``
runs some of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import stamp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The scenarios, in the order they run: name -> script.
SCENARIOS = {
    "scatter": "scatter_latency.py",
    "tpch": "tpch.py",
    "merge": "merge.py",
    "batch": "batch.py",
    "cache": "cache.py",
    "load": "load.py",
    "commit": "commit.py",
    "soak": "soak.py",
    "gather": "gather.py",
    "sqlite_gather": "sqlite_gather.py",
    "decorrelate": "decorrelate.py",
    "to_sql": "to_sql.py",
    "arrow": "arrow.py",
}


def run_scenario(name: str, quick: bool, folder: Path) -> dict[str, Any] | None:
    """Run one scenario script; its ``--json`` results, or None if it failed."""
    out = folder / f"{name}.json"
    command = [sys.executable, str(HERE / SCENARIOS[name]), "--json", str(out)]
    if quick:
        command.append("--quick")
    print(f"\n=== {name}: {' '.join(Path(c).name if c == command[1] else c for c in command[1:])}")
    sys.stdout.flush()
    began = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    code = subprocess.call(command, cwd=REPO, env=env)
    seconds = time.monotonic() - began
    if code != 0 or not out.exists():
        print(f"=== {name}: FAILED (exit {code}) after {seconds:.0f} s")
        return None
    results: dict[str, Any] = json.loads(out.read_text())
    results["seconds"] = round(seconds, 1)
    print(f"=== {name}: done in {seconds:.0f} s")
    return results


def _number(value: float | None) -> str:
    if value is None:
        return "FAILED"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def summarize(scenarios: list[dict[str, Any]]) -> None:
    """Print every table and every aim of the scenarios, one after the other."""
    print("\n" + "=" * 100)
    print("Summary")
    print("=" * 100)
    for scenario in scenarios:
        print(f"\n{scenario['title']}")
        for table in scenario["tables"]:
            better = "higher" if table["higher_is_better"] else "lower"
            print(f"  {table['title']} ({table['metric']}, {better} is better)")
            for result in table["results"]:
                label = result["contender"]
                if result.get("case"):
                    label = f"[{result['case']}] {label}"
                mark = {True: "ok", False: "WRONG", None: ""}[result.get("correct")]
                star = "*" if result.get("shardq") else " "
                print(f"   {star} {label:<72} {_number(result['value']):>12}  {mark}")
        for aim in scenario.get("aims", []):
            verdict = "PASS" if aim["passed"] else "MISS"
            print(f"  {verdict}  {aim['text']} ({aim.get('detail', '')})")
    print("\n* shardq's own lines")


def chart(scenarios: list[dict[str, Any]], path: Path) -> bool:
    """One horizontal bar panel per table; whether matplotlib was there to draw it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no chart ({path.name}); pip install matplotlib")
        return False
    panels = [(s, t) for s in scenarios for t in s["tables"]]
    if not panels:
        return False
    heights = [max(1.6, 0.32 * len(t["results"]) + 0.9) for _, t in panels]
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(11, sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    if len(panels) == 1:
        axes = [axes]
    for axis, (scenario, table) in zip(axes, panels, strict=True):
        results = table["results"]
        labels = [(f"[{r['case']}] " if r.get("case") else "") + r["contender"] for r in results]
        values = [r["value"] or 0.0 for r in results]  # a method that failed: no bar
        colours = [
            "#c0392b" if r.get("correct") is False else "#2471a3" if r.get("shardq") else "#aab7b8"
            for r in results
        ]
        bars = axis.barh(range(len(values)), values, color=colours)
        for bar, result in zip(bars, results, strict=True):
            text = _number(result["value"]) + (" WRONG" if result.get("correct") is False else "")
            axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text,
                      va="center", fontsize=7)  # fmt: skip
        axis.set_yticks(range(len(labels)), labels, fontsize=7)
        axis.invert_yaxis()
        better = "higher" if table["higher_is_better"] else "lower"
        axis.set_title(
            f"{scenario['scenario']}: {table['title']} ({table['metric']}, {better} is better)",
            fontsize=9,
            loc="left",
        )
        axis.tick_params(axis="x", labelsize=7)
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 50:
            axis.set_xscale("log")  # a cache hit beside the uncached query: decades apart
            axis.set_xlim(min(positive) / 2, max(positive) * 8)
        else:
            axis.margins(x=0.15)
    figure.suptitle("shardq (blue) and the alternatives (grey); red: a wrong answer", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run every shardq benchmark; one table, one chart."
    )
    parser.add_argument("--quick", action="store_true", help="every scenario's quick version")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"scenarios to run (of {', '.join(SCENARIOS)})"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="results file")
    parser.add_argument("--chart", type=Path, default=HERE / "results.png", help="PNG chart")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)} (of {', '.join(SCENARIOS)})")
    args.names = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    done: list[dict[str, Any]] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="shardq-bench-") as folder:
        for name in args.names:
            found = run_scenario(name, args.quick, Path(folder))
            if found is None:
                failed.append(name)
            else:
                done.append(found)
    summarize(done)
    combined = {
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        **stamp(),
        "seconds": round(time.monotonic() - began, 1),
        "failed": failed,
        "scenarios": done,
    }
    args.out.write_text(json.dumps(combined, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    if chart(done, args.chart):
        print(f"wrote {args.chart}")
    ended = f"; FAILED: {', '.join(failed)}" if failed else ""
    print(f"wall time {combined['seconds']:.0f} s{ended}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
