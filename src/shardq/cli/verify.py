"""``shardq verify``: one read through shardq and on an unsharded copy, compared.

Exit codes: 0 when the answers are the same, 6 (``DIFFERS``) when they
differ, and the usual codes otherwise (:mod:`shardq.cli.exit_codes`). The
``--against`` DSN is shown redacted, and its password never appears in an
error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import shardq
from shardq.cli.arguments import (
    add_config_argument,
    add_timeout_argument,
    at_least_one,
    config_path,
)
from shardq.cli.exit_codes import ExitCode

__all__ = ["add_parser", "parse_params", "run"]


def parse_params(text: str) -> Any:
    """``--params``: a JSON array (positional placeholders) or object (named ones).

    >>> parse_params('[1, "DE"]'), parse_params('{"id": 7}')
    ([1, 'DE'], {'id': 7})
    >>> parse_params("7")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: --params takes a JSON array or object, not '7'
    """
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list | dict):
        raise argparse.ArgumentTypeError(f"--params takes a JSON array or object, not {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify",
        help="run a read through shardq and on an unsharded copy, and compare the answers",
        description=(
            "Run a read through shardq and on one database holding every row (--against), "
            "and compare column names and types, rows, and their order where the ORDER BY "
            "fixes it. Exit code 0: the same answer; 6: they differ."
        ),
    )
    add_config_argument(parser)
    parser.add_argument(
        "--against",
        required=True,
        metavar="DSN",
        help="the unsharded copy: a PostgreSQL DSN, or a SQLite file (path or sqlite:///path)",
    )
    parser.add_argument("sql", help="the statement, or - to read it from standard input")
    parser.add_argument(
        "--params",
        type=parse_params,
        default=None,
        metavar="JSON",
        help="the parameters, as a JSON array (positional) or object (named)",
    )
    parser.add_argument(
        "--limit",
        type=at_least_one,
        default=10,
        metavar="N",
        help="show at most N differences (default: 10)",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    add_timeout_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    with shardq.connect(config_path(args), timeout=args.timeout) as conn:
        result = conn.verify(sql, args.params, against=args.against, limit=args.limit)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result)
    return ExitCode.OK if result.ok else ExitCode.DIFFERS
