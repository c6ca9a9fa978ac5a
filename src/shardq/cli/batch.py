"""``shardq batch``: run a file of statements concurrently, one JSON line per result.

Each statement's result is printed as it comes, in the file's order::

    {"statement": 0, "ok": true, "rowcount": 1, "columns": ["v"], "rows": [["a"]]}
    {"statement": 1, "ok": false, "error": "SQLSyntaxError", "message": "..."}

A progress bar (completed, failed, total) is drawn on standard error when it
is a terminal, or with ``--progress``; a summary line ends the run there.

Without ``--continue-on-error`` every statement is parsed before any runs, so
bad SQL stops the batch with nothing done, and the first failure while running
(a shard's error, a refusal found while planning) stops the batch: no new
statement starts, the statements already running finish, and every statement
that ran is printed, in the file's order, before the error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import TokenType

import shardq
from shardq.cli.arguments import add_config_argument, config_path
from shardq.cli.exit_codes import ExitCode, exit_code_for
from shardq.cli.output import _json_default
from shardq.errors import Error
from shardq.sql.analyze import analyze
from shardq.sql.parse import parse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import TextIO

    from shardq.config import Config

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


class _Gate:
    """Hands the statements to the batch one by one, and none after a failure.

    A statement is handed out only when the batch has room for it (fewer than
    ``concurrency`` running, fewer than ``2 * concurrency`` started and not
    yet printed, the batch's own bounds), so that once a statement fails,
    none is waiting inside the batch to start: those running finish, and
    nothing else runs.
    """

    def __init__(self, statements: list[str], concurrency: int, stop_on_error: bool):
        self.statements = statements
        self.concurrency = concurrency
        self.stop_on_error = stop_on_error
        self.handed = self.completed = self.printed = 0
        self.stopped = False
        self._room = asyncio.Event()

    def finished(self, progress: shardq.Progress) -> None:
        self.completed = progress.completed
        if progress.failed and self.stop_on_error:
            self.stopped = True
        self._room.set()

    def took(self) -> None:
        self.printed += 1
        self._room.set()

    def _full(self) -> bool:
        running = self.handed - self.completed
        return running >= self.concurrency or self.handed - self.printed >= 2 * self.concurrency

    async def __aiter__(self) -> AsyncIterator[str]:
        for sql in self.statements:
            while not self.stopped and self._full():
                self._room.clear()
                await self._room.wait()
            if self.stopped:
                return
            self.handed += 1
            yield sql


def check_statements(statements: list[str], config: Config) -> None:
    """Parse every distinct statement: bad SQL stops the batch before anything runs."""
    seen: set[str] = set()
    for index, sql in enumerate(statements):
        if sql in seen:
            continue
        seen.add(sql)
        try:
            analyze(parse(sql, config.dialect), config)
        except Error as exc:
            exc.add_note(f"(statement {index} of the batch, counting from 0)")
            raise


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    async with shardq.AsyncConnection(config_path(args), timeout=args.timeout) as conn:
        text = sys.stdin.read() if args.file == "-" else _read(args.file)
        statements = split_statements(text, conn.config.dialect)
        if not args.continue_on_error:
            check_statements(statements, conn.config)
        show = sys.stderr.isatty() if args.progress is None else args.progress
        bar = _Bar(sys.stderr, len(statements)) if show else None
        gate = _Gate(statements, args.concurrency, not args.continue_on_error)
        failed = 0
        first_error: BaseException | None = None
        last = shardq.Progress(0, 0, len(statements))

        def progress(p: shardq.Progress) -> None:
            nonlocal last
            last = p
            gate.finished(p)
            if bar is not None:
                bar(p)

        results = await conn.execute_concurrent(
            gate, args.concurrency, False, True, progress=progress
        )
        index = 0
        async for outcome in results:
            gate.took()
            if not outcome.success:
                failed += 1
                first_error = first_error or outcome.result_or_exc
            if not args.quiet:
                print(json.dumps(_line(index, outcome), default=_json_default))
            index += 1
        if bar is not None:
            bar(shardq.Progress(last.completed, last.failed, len(statements)), force=True)
            sys.stderr.write("\n")
    seconds = time.monotonic() - began
    ran = f"{index - failed} ok, {failed} failed"
    if first_error is not None and not args.continue_on_error:
        sys.stdout.flush()  # the statements that ran come before the error that stopped them
        print(f"shardq: error: {first_error}", file=sys.stderr)
        for note in getattr(first_error, "__notes__", ()):
            print(f"shardq: {note}", file=sys.stderr)
        print(
            f"shardq: stopped at the first failure: {index} of {len(statements)} statements "
            f"ran ({ran}), {len(statements) - index} not run, in {seconds:.2f} s",
            file=sys.stderr,
        )
        if isinstance(first_error, Error):
            return exit_code_for(first_error)
        return ExitCode.FAILED
    print(f"shardq: {len(statements)} statements, {ran} in {seconds:.2f} s", file=sys.stderr)
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
