"""``shardq recover``: finish the two-phase commits left in doubt on the shards."""

from __future__ import annotations

from typing import TYPE_CHECKING

import shardq
from shardq.cli.arguments import add_config_argument, config_path
from shardq.cli.exit_codes import ExitCode
from shardq.execute.twophase import RECOVERY_WAIT

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "recover",
        help="finish the two-phase commits an interrupted transaction left prepared",
        description=(
            "Find every transaction shardq left prepared on the shards (its process or a "
            "server died during a two-phase commit) and finish it as the interrupted "
            "transaction would have: committed if its decision was made durable, rolled "
            "back otherwise. A transaction still being committed is left alone. Safe to run "
            "at any time, and twice."
        ),
    )
    add_config_argument(parser)
    parser.add_argument(
        "--wait",
        type=float,
        default=RECOVERY_WAIT,
        metavar="SECONDS",
        help="how long to wait for the sessions of a transaction it rolls back to end before "
        f"terminating them (a killed writer's PREPARE may still be on its way; default "
        f"{RECOVERY_WAIT:g})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with shardq.connect(config_path(args)) as conn:
        report = conn.recover(wait=args.wait)
    for gid in report.committed:
        print(f"committed: {gid}")
    for gid in report.rolled_back:
        print(f"rolled back: {gid}")
    for gid in report.in_progress:
        print(f"in progress, left alone: {gid}")
    print(report)
    return ExitCode.OK
