"""What tracing costs a routed point read: without OpenTelemetry, with the API only, recording.

A SQLite point read by key (``SELECT val FROM items WHERE id = ?`` on one of
four shard files, its rows fetched) is the cheapest statement shardq runs, so
it shows a per-statement cost best. Each mode runs in a child interpreter:

- ``not installed``: ``opentelemetry`` made unimportable before ``import
  shardq`` (``sys.modules["opentelemetry"] = None``): the decorator returns
  ``AsyncCursor.execute`` itself and every hook is a call that returns;
- ``API, no SDK``: ``opentelemetry-api`` installed, no ``TracerProvider``
  configured (the global proxy hands out non-recording spans);
- ``SDK, recording``: a ``TracerProvider`` whose processor drops every span
  (what is measured is making them, not exporting them).

The end-to-end read time (the median of 7 runs of N reads) is noisy next to
what tracing adds, so tracing is also timed alone: a method decorated as
``AsyncCursor.execute`` is, making the calls a routed read makes (``query``,
``started``, one ``shard_span``), less the same method bare (the best of 5
runs of 50,000 calls). Prints microseconds per statement.

    python benchmarks/tracing.py [--reads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = """
import asyncio, json, sqlite3, statistics, sys, tempfile, time
mode, reads = sys.argv[1], int(sys.argv[2])
if mode == "not installed":
    sys.modules["opentelemetry"] = None
import shardq
from shardq import tracing
if mode == "SDK, recording":
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    provider = TracerProvider()
    provider.add_span_processor(SpanProcessor())  # the base class drops every span
    tracing.set_tracer_provider(provider)

folder = tempfile.mkdtemp()
shards = []
for i in range(4):
    path = f"{folder}/s{i}.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, val INTEGER)")
    db.commit()
    db.close()
    shards.append({"name": f"s{i}", "dsn": path})
config = {"dialect": "sqlite", "shards": shards, "tables": {"items": {"shard_key": "id"}}}

async def main():
    async with shardq.AsyncConnection(config) as conn:
        await conn.execute("INSERT INTO items VALUES (?, ?)", [7, 70])
        cur = conn.cursor()
        async def run():
            for _ in range(reads):
                await cur.execute("SELECT val FROM items WHERE id = ?", [7])
                await cur.fetchall()
        await run()  # warm up: connections opened, statement planned
        times = []
        for _ in range(7):
            began = time.perf_counter()
            await run()
            times.append((time.perf_counter() - began) / reads * 1e6)
        return statistics.median(times)

result = {"read_us": asyncio.run(main())}

# Tracing alone: a cursor whose execute makes the calls a routed read makes
# (the decorator, query, started, one shard span) and nothing else, beside
# the same method bare.
class Pool:
    name = "s0"
    server = ("db.internal", 5432)
class Route:
    class kind:
        value = "shards"
class Config:
    dialect = "sqlite"
class Connection:
    config = Config()
pool, route = Pool(), Route()

class Traced:
    connection = Connection()
    rowcount = 1
    description = ()
    @tracing.statement_span
    async def execute(self):
        tracing.query("SELECT val FROM items WHERE id = ?")
        tracing.started(route, ("s0",), 1)
        with tracing.shard_span(pool):
            pass

class Bare:
    async def execute(self):
        pass

async def per_call(cursor, n=50_000):
    best = None
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(n):
            await cursor.execute()
        took = (time.perf_counter() - began) / n * 1e6
        best = took if best is None else min(best, took)
    return best

result["tracing_us"] = asyncio.run(per_call(Traced())) - asyncio.run(per_call(Bare()))
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000, help="reads per timed run")
    args = parser.parse_args()
    results = {}
    for mode in ("not installed", "API, no SDK", "SDK, recording"):
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHILD), mode, str(args.reads)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[mode] = json.loads(out)
    print(f"{'mode':<16} {'µs / point read':>16} {'µs of tracing / statement':>26}")
    for mode, result in results.items():
        print(f"{mode:<16} {result['read_us']:>16.1f} {result['tracing_us']:>26.2f}")


if __name__ == "__main__":
    main()
