"""``shardq stats``: run statements (or a probe of every host) and print ``conn.stats()``.

A command lives for one run, so it makes its own traffic: the statements
given, each ``--repeat`` times, ``--concurrency`` at once, under a read
policy; then it prints, per shard and host, what
:meth:`shardq.AsyncConnection.stats` counted (statements, errors, timeouts,
reads retried on another host, p50/p95/p99 of the time to a shard's first
answer, the pool), as a table or JSON. Hosts are shown as ``host:port``,
never with their credentials.

Without statements it runs the *probe*: ``SELECT 1`` once per host of every
shard, replicas included, under the ``round-robin`` policy (primary and
replicas in turn), so that every host answers or shows its errors. A probe
statement reads no table, so it goes to one shard, the shards taken in turn;
a round is as many statements as shards times the most hosts a shard has.

Every statement runs, whatever fails; bad SQL is refused before any runs.
The result cache is not used: the point is to reach the hosts. Exit code 0
when every statement succeeded; else the code of the failures when they
agree (5 if every one timed out), else 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import shardq
from shardq.cli.arguments import add_config_argument, at_least_one, config_path
from shardq.cli.batch import check_statements, split_statements
from shardq.cli.exit_codes import ExitCode, exit_code_for
from shardq.config import READ_POLICIES
from shardq.dsn import address
from shardq.errors import Error
from shardq.stats import HostStats, format_table

if TYPE_CHECKING:
    import argparse

    from shardq.config import Config

__all__ = ["PROBE", "add_parser", "addresses", "run"]

#: The statement of the probe: the lightest read a host answers.
PROBE = "SELECT 1"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stats",
        help="run statements (default: a probe of every host) and print per-host statistics",
        description=(
            "Run the statements given (default: SELECT 1 on every host of every shard, "
            "replicas included), REPEAT times with CONCURRENCY at once, then print per shard "
            "and host the statements, errors, timeouts, retries, time to first answer "
            "(p50/p95/p99) and pool use."
        ),
    )
    add_config_argument(parser)
    parser.add_argument(
        "sql",
        nargs="*",
        help="statements to run (default: the probe); - reads them from standard input",
    )
    parser.add_argument(
        "-n",
        "--repeat",
        type=at_least_one,
        default=1,
        metavar="N",
        help="run the statements (or the probe's round) N times (default 1)",
    )
    parser.add_argument(
        "-j",
        "--concurrency",
        type=at_least_one,
        default=1,
        metavar="K",
        help="statements in flight at once (default 1: times not inflated by queueing)",
    )
    parser.add_argument(
        "--read-policy",
        choices=READ_POLICIES,
        default=None,
        help="the hosts reads go to (default: round-robin for the probe, else the "
        "configuration's read_policy)",
    )
    parser.add_argument("-t", "--timeout", type=float, default=None, help="seconds per statement")
    parser.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    parser.set_defaults(run=run)


def addresses(config: Config) -> dict[tuple[str, str], str]:
    """(shard, host) -> ``host:port`` of every host, as stats name them (SQLite: the file)."""
    out = {}
    for shard in config.shards:
        out[(shard.name, "primary")] = address(shard.dsn)
        for i, dsn in enumerate(shard.replicas, 1):
            out[(shard.name, f"replica {i}")] = address(dsn)
    return out


def probe_round(config: Config) -> int:
    """Probe statements that reach every host once under ``round-robin``.

    A tableless read goes to one shard, the shards in turn; a shard's reads
    go to its hosts in turn. With the most hosts any shard has, per shard,
    every host of every shard is reached.
    """
    hosts = max(1 + len(shard.replicas) for shard in config.shards)
    return len(config.shards) * hosts


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    async with shardq.AsyncConnection(config_path(args), timeout=args.timeout, cache=False) as conn:
        config = conn.config
        if args.sql:
            statements = []
            for sql in args.sql:
                text = sys.stdin.read() if sql == "-" else sql
                statements += split_statements(text, config.dialect)
            check_statements(statements, config)  # bad SQL runs nothing
            policy = args.read_policy or conn.read_policy
        else:
            statements = [PROBE] * probe_round(config)
            policy = args.read_policy or "round-robin"
        total = len(statements) * args.repeat
        work = itertools.chain.from_iterable(itertools.repeat(statements, args.repeat))
        failures: list[Error] = []

        async def worker() -> None:
            for sql in work:  # shared: each statement taken by one worker
                try:
                    async with await conn.execute(sql, read_policy=policy) as cur:
                        while await cur.next_batch():
                            pass
                except Error as exc:
                    failures.append(exc)

        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for _ in range(min(args.concurrency, total)):
                group.create_task(worker())
        seconds = time.monotonic() - began
        rows = conn.stats()
    where = addresses(config)
    if args.json:
        print(json.dumps(_document(rows, where, total, failures, seconds, policy)))
    else:
        print(format_table(rows, where))
    for (kind, message), count in _distinct(failures).items():
        times = "" if count == 1 else f" ({count} times)"
        print(f"shardq: {kind}{times}: {message}", file=sys.stderr)
    print(
        f"shardq: {total} statements under read_policy {policy!r}, {total - len(failures)} ok, "
        f"{len(failures)} failed in {seconds:.2f} s",
        file=sys.stderr,
    )
    codes = {exit_code_for(exc) for exc in failures}
    if not codes:
        return ExitCode.OK
    return codes.pop() if len(codes) == 1 else ExitCode.FAILED


def _distinct(failures: list[Error]) -> dict[tuple[str, str], int]:
    """Each distinct failure (class, message) with how often it happened, first seen first."""
    counts: dict[tuple[str, str], int] = {}
    for exc in failures:
        key = (type(exc).__name__, str(exc))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _document(
    rows: list[HostStats],
    where: dict[tuple[str, str], str],
    total: int,
    failures: list[Error],
    seconds: float,
    policy: str,
) -> dict[str, Any]:
    return {
        "statements": total,
        "ok": total - len(failures),
        "failed": len(failures),
        "seconds": seconds,
        "read_policy": policy,
        "hosts": [
            {**dataclasses.asdict(row), "address": where.get((row.shard, row.host), "")}
            for row in rows
        ],
        "errors": [
            {"error": kind, "message": message, "count": count}
            for (kind, message), count in _distinct(failures).items()
        ],
    }
