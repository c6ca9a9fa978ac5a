"""``shardq query``: run one statement and print its result."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import shardq
from shardq.cli.arguments import (
    add_config_argument,
    add_param_argument,
    add_timeout_argument,
    config_path,
)
from shardq.cli.exit_codes import ExitCode
from shardq.cli.output import FORMATS, write_rows
from shardq.cli.progress import showing, until_first
from shardq.cli.stats import addresses
from shardq.stats import format_table

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser", "add_statement_arguments", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "query",
        help="run one SQL statement on the shards and print the result",
        description="Run one SQL statement on the shards and print the result.",
    )
    add_statement_arguments(parser)
    parser.add_argument(
        "-f", "--format", choices=FORMATS, default="table", help="how rows print (default: table)"
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="then print per shard and host the statistics on standard error (see shardq stats)",
    )
    parser.set_defaults(run=run)


def add_statement_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a command that takes one statement: config, SQL, parameters, timeout."""
    add_config_argument(parser)
    parser.add_argument("sql", help="the statement, or - to read it from standard input")
    add_param_argument(parser)
    add_timeout_argument(parser)


def run(args: argparse.Namespace) -> int:
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    params = args.param or None
    with shardq.connect(config_path(args), timeout=args.timeout) as conn:
        try:
            # Rows received per shard on a terminal; when the rows print on one too, only
            # until the first of them.
            with showing(conn, sys.stderr, enabled=sys.stderr.isatty()) as stop:
                cur = conn.execute(sql, params)
                if cur.description is None:
                    stop()
                    print(f"OK, {cur.rowcount} row{'s' if cur.rowcount != 1 else ''} affected")
                    return ExitCode.OK
                names = [c.name for c in cur.description]
                rows = until_first(cur, stop) if sys.stdout.isatty() else cur
                write_rows(sys.stdout, args.format, names, rows)
        finally:
            if args.stats:  # a failure's too: which host it met
                sys.stdout.flush()
                print(format_table(conn.stats(), addresses(conn.config)), file=sys.stderr)
    return ExitCode.OK
