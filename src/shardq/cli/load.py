"""``shardq load``: bulk-load a CSV file into a table, split by shard key.

The rows go through :meth:`shardq.Connection.copy_in`: one ``COPY`` per
shard, all at once, in one transaction (two-phase commit over several
PostgreSQL shards), so a bad line commits nothing and is named in the error.
On a terminal, standard error shows the rows read, the rate and each
shard's rows as they go; otherwise one summary line ends the run there.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

import shardq
from shardq.cli.arguments import add_config_argument, config_path
from shardq.cli.exit_codes import ExitCode

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "load",
        help="bulk-load a CSV file into a table, one COPY per shard",
        description=(
            "Load the rows of a CSV file into a declared table: each row goes to the shard its "
            "shard key places it on (a reference table's to every shard), one COPY per shard, "
            "all at once, in one transaction: a bad line commits nothing, and the error names "
            "it and the shard. The file is read as PostgreSQL's COPY ... (FORMAT csv) reads it: "
            "an unquoted empty field is NULL, a quoted one the empty text."
        ),
    )
    add_config_argument(parser)
    parser.add_argument("table", help="a table declared in the configuration")
    parser.add_argument("file", help="the CSV file ('-' for standard input)")
    parser.add_argument(
        "--columns",
        metavar="A,B",
        help="the columns the fields are for, in order (default: the header's names with "
        "--header, else every column of the table)",
    )
    parser.add_argument(
        "--header", action="store_true", help="the first line names the columns (not loaded)"
    )
    parser.add_argument(
        "--delimiter", default=",", metavar="CHAR", help="between fields (default ,; \\t: a tab)"
    )
    parser.add_argument("--quote", default='"', metavar="CHAR", help='around fields (default ")')
    parser.add_argument(
        "--null", default="", metavar="TEXT", help="an unquoted field equal to it is NULL"
    )
    parser.add_argument("--encoding", default="utf-8", help="of the file (default utf-8)")
    parser.add_argument(
        "--no-atomic",
        dest="atomic",
        action="store_false",
        help="commit each shard's part on its own once all rows are placed (needed to load "
        "several SQLite shards, which have no two-phase commit)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on standard error (default: when it is a terminal)",
    )
    parser.set_defaults(run=run)


def _delimiter(text: str) -> str:
    """``--delimiter '\\t'`` as a tab: shells make typing one awkward."""
    return {"\\t": "\t", "tab": "\t"}.get(text, text)


class _Display:
    """A progress line on standard error, redrawn at most five times a second."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._drawn = 0.0

    def __call__(self, progress: shardq.CopyProgress) -> None:
        now = time.monotonic()
        if not progress.done and now - self._drawn < 0.2:
            return
        self._drawn = now
        rate = progress.rows / progress.seconds if progress.seconds > 0 else 0.0
        shards = "  ".join(f"{name} {rows:,}" for name, rows in sorted(progress.shards.items()))
        self._stream.write(f"\r\x1b[K{progress.rows:,} rows  {rate:,.0f} rows/s  {shards}")
        self._stream.flush()


def run(args: argparse.Namespace) -> int:
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    display = _Display(sys.stderr) if show else None
    source = sys.stdin if args.file == "-" else args.file
    try:
        with shardq.connect(config_path(args)) as conn:
            result = conn.copy_in(
                args.table,
                source,
                columns,
                header=args.header,
                delimiter=_delimiter(args.delimiter),
                quote=args.quote,
                null=args.null,
                encoding=args.encoding,
                atomic=args.atomic,
                progress=display,
            )
    finally:
        if display is not None:
            sys.stderr.write("\n")
    rate = result.rowcount / result.seconds if result.seconds > 0 else 0.0
    shards = ", ".join(f"{name} {rows:,}" for name, rows in sorted(result.shards.items()))
    print(
        f"shardq: loaded {result.rowcount:,} rows into {args.table} in {result.seconds:.2f} s "
        f"({rate:,.0f} rows/s; {shards or 'no shard'})",
        file=sys.stderr,
    )
    return ExitCode.OK
