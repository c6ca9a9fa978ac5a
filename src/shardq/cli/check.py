"""``shardq check``: every shard reachable, every declared table alike on all."""

from __future__ import annotations

from typing import TYPE_CHECKING

import shardq
from shardq.cli.arguments import add_config_argument, config_path
from shardq.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="connect to every shard and compare the declared tables",
        description=(
            "Connect to every shard, report its server version and round-trip time, and "
            "verify that every declared table exists on every shard with the same columns."
        ),
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with shardq.connect(config_path(args)) as conn:
        report = conn.check()
    for shard in report.shards:
        if shard.error is not None:
            print(f"{shard.shard}: UNREACHABLE")
            continue
        assert shard.round_trip is not None
        version = (shard.version or "").split(" on ")[0]
        tables = sum(1 for cols in shard.tables.values() if cols)
        prepared = (
            f", max_prepared_transactions {shard.prepared_transactions}"
            if shard.prepared_transactions is not None
            else ""
        )
        print(
            f"{shard.shard}: {version}, round trip {shard.round_trip * 1000:.2f} ms, "
            f"{tables}/{len(shard.tables)} tables{prepared}"
        )
    for host in report.hosts:
        if host.error is not None:
            state = "UNREACHABLE"
        else:
            state = "standby" if host.in_recovery else "writable"
            if host.lag is not None:
                state += f", lag {host.lag:.2f} s"
        if host.down:
            state += ", marked down"
        pool = (
            ""
            if host.pool is None
            else f", pool {host.pool[0]} in use, {host.pool[1]} open of {host.pool[2]}"
        )
        print(f"  {host.shard} {host.role} {host.address}: {state}{pool}")
    for problem in report.problems:
        print(f"problem: {problem}")
    for note in report.notes:
        print(f"note: {note}")
    print("OK" if report.ok else f"{len(report.problems)} problem(s)")
    return ExitCode.OK if report.ok else ExitCode.FAILED
