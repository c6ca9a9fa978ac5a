"""``shardq explain``: show how a statement runs, and with ``--analyze`` run it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import shardq
from shardq.cli.arguments import config_path
from shardq.cli.exit_codes import ExitCode
from shardq.cli.query import add_statement_arguments

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "explain",
        help="show the target shards, the per-shard SQL and the merge steps of a statement",
        description="Show how shardq runs a statement: the shards it goes to, the exact SQL "
        "each runs, and how their results are merged.",
    )
    add_statement_arguments(parser)
    parser.add_argument(
        "--analyze", action="store_true", help="also run it (reads only): rows and times per shard"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    with shardq.connect(config_path(args), timeout=args.timeout) as conn:
        print(conn.explain(sql, args.param or None, analyze=args.analyze))
    return ExitCode.OK
