"""``shardq batch``: run a file of statements concurrently, one JSON line per result.

Each statement's result is printed as it comes, in the file's order::

    {"statement": 0, "ok": true, "rowcount": 1, "columns": ["v"], "rows": [["a"]]}
    {"statement": 1, "ok": false, "error": "SQLSyntaxError", "message": "..."}

A progress bar (completed, failed, total) is drawn on standard error when it
is a terminal, or with ``--progress``; a summary line ends the run there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import TokenType

import shardq
from shardq.cli.arguments import add_config_argument, config_path
from shardq.cli.exit_codes import ExitCode
from shardq.cli.output import _json_default
from shardq.errors import Error

if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["add_parser", "run", "split_statements"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "batch",
        help="run a file of SQL statements concurrently, one JSON line per result",
        description=(
            "Run the statements of a file (separated by semicolons) concurrently, and print "
            "one JSON line per statement, in the file's order."
        ),
    )
    add_config_argument(parser)
    parser.add_argument("file", help="the statements, or - to read them from standard input")
    parser.add_argument(
        "-j", "--concurrency", type=int, default=100, help="statements in flight (default 100)"
    )
    parser.add_argument(
        "--continue-on-error",
        action="store_true",
        help="run every statement and report failures in place (default: stop at the first)",
    )
    parser.add_argument("-t", "--timeout", type=float, default=None, help="seconds per statement")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print no results, only the summary"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar on standard error (default: when it is a terminal)",
    )
    parser.set_defaults(run=run)


def split_statements(text: str, dialect: str) -> list[str]:
    """The statements of ``text``, split at the semicolons outside strings and comments.

    >>> split_statements("SELECT 1; SELECT ';' ; -- done\\n", "postgres")
    ['SELECT 1', "SELECT ';'"]
    """
    statements: list[str] = []
    start = 0
    tokens = sqlglot.tokenize(text, read=dialect)
    for token in tokens:
        if token.token_type is TokenType.SEMICOLON:
            statements.append(text[start : token.start])
            start = token.end + 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _has_code(s, dialect)]


def _has_code(text: str, dialect: str) -> bool:
    return bool(text.strip()) and bool(sqlglot.tokenize(text, read=dialect))


class _Bar:
    """A progress line on standard error, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, total: int):
        self.stream = stream
        self.total = total
        self._last = 0.0

    def __call__(self, progress: shardq.Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        total = progress.total or self.total
        width = 30
        filled = width * progress.completed // total if total else width
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {progress.completed}/{total} done, "
            f"{progress.failed} failed"
        )
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    with shardq.connect(config_path(args), timeout=args.timeout) as conn:
        text = sys.stdin.read() if args.file == "-" else _read(args.file)
        statements = split_statements(text, conn.config.dialect)
        show = sys.stderr.isatty() if args.progress is None else args.progress
        bar = _Bar(sys.stderr, len(statements)) if show else None
        failed = 0
        last = shardq.Progress(0, 0, len(statements))

        def progress(p: shardq.Progress) -> None:
            nonlocal last
            last = p
            if bar is not None:
                bar(p)

        results = conn.execute_concurrent(
            statements,
            args.concurrency,
            not args.continue_on_error,
            True,
            progress=progress,
        )
        try:
            for index, outcome in enumerate(results):
                if not outcome.success:
                    failed += 1
                if not args.quiet:
                    print(json.dumps(_line(index, outcome), default=_json_default))
        except Error:
            if bar is not None:
                bar(last, force=True)
                sys.stderr.write("\n")
            raise
        if bar is not None:
            bar(last, force=True)
            sys.stderr.write("\n")
    seconds = time.monotonic() - began
    print(
        f"shardq: {len(statements)} statements, {len(statements) - failed} ok, {failed} failed "
        f"in {seconds:.2f} s",
        file=sys.stderr,
    )
    return ExitCode.FAILED if failed else ExitCode.OK


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _line(index: int, outcome: shardq.ExecutionResult) -> dict[str, Any]:
    if not outcome.success:
        exc = outcome.result_or_exc
        return {"statement": index, "ok": False, "error": type(exc).__name__, "message": str(exc)}
    result = outcome.result_or_exc
    line: dict[str, Any] = {"statement": index, "ok": True, "rowcount": result.rowcount}
    if result.description is not None:
        line["columns"] = [c.name for c in result.description]
        line["rows"] = [list(row) for row in result.rows]
    return line
