"""``shardq shell``: an interactive prompt on the shards, with psql's habits.

The shell's core, :class:`Shell`, takes lines and writes to streams; it
knows nothing of terminals, so tests drive it line by line. The prompt
(history, editing, colours) is prompt_toolkit's, in
:mod:`shardq.cli.prompt`, imported only when the shell is interactive.

A statement runs when a ``;`` ends it outside quotes and comments (see
:mod:`shardq.cli.split`); it may take several lines. A line that starts
with ``\\`` is a command and ends at the end of the line:

=====================  ==================================================
``\\d``, ``\\dt``       the declared tables: distributed or reference,
                       shard key, the table it is co-located with
``\\d TABLE``           its columns and types (from the shards' catalog),
                       shard key, co-location
``\\timing [on|off]``   print how long each statement took
``\\x [on|off]``        expanded display: each row as a record
``\\explain SQL``       how shardq runs SQL: shards, per-shard SQL, merge
``\\explain analyze SQL`` runs it too: rows, time, per-shard rows and times
``\\e``                 edit the statement being typed (else the last one)
                       in ``$EDITOR``, then run it
``\\q``                 quit (as does Ctrl-D)
``\\?``                 this list
=====================  ==================================================

A failed statement prints shardq's message and the shell goes on; Ctrl-C
while a statement runs cancels it on the shards and returns to the prompt.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import shardq
from shardq.cli import render
from shardq.cli.arguments import add_config_argument, add_timeout_argument, config_path
from shardq.cli.exit_codes import ExitCode
from shardq.cli.progress import showing
from shardq.cli.split import is_blank, is_open, split
from shardq.errors import Error, ProgrammingError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterable

    from shardq.dbapi import Connection
    from shardq.sql.catalog import ColumnInfo

__all__ = ["HELP", "Shell", "add_parser", "history_path", "run"]

HELP = """\
  \\d, \\dt        list the declared tables
  \\d TABLE       describe a table: columns, types, shard key, co-location
  \\timing        toggle printing each statement's time (or \\timing on|off)
  \\x             toggle expanded display (or \\x on|off)
  \\explain SQL   how shardq runs SQL: target shards, per-shard SQL, merge steps
  \\explain analyze SQL   run it too: rows, time, and each shard's rows and time
  \\e             edit the current (else the last) statement in $EDITOR, then run it
  \\q             quit (or Ctrl-D)
  \\?             this help
A statement ends with ; and may span lines. Ctrl-C cancels a running statement."""


@dataclass
class Shell:
    """The shell without its prompt: feed it lines, it writes results and messages.

    Args:
        conn: the connection statements run on.
        out: where results go.
        err: where errors go.
        terminal: ``out`` is a terminal: colour NULL, page results taller than it.
        size: the terminal's size, asked for each result (it may be resized).
        pager: runs the lines of a long result through a pager (default: :func:`render.page`).
        editor: edits a file in place for ``\\e`` (default: ``$EDITOR``, else ``vi``).
        progress: show rows received per shard on ``err`` while a read runs
            (see :mod:`shardq.cli.progress`); for ``err`` a terminal.
    """

    conn: Connection
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    terminal: bool = False
    size: Callable[[], os.terminal_size] = field(default=lambda: os.terminal_size((80, 24)))
    pager: Callable[[list[str]], None] | None = None
    editor: Callable[[Path], None] | None = None
    progress: bool = False
    timing: bool = False
    expanded: bool = False
    buffer: str = ""  #: the statement being typed
    last: str = ""  #: the last statement run, for ``\e`` with nothing typed
    done: bool = False  #: ``\q`` was given
    failures: int = 0  #: statements and commands that failed

    # -- input

    @property
    def continues(self) -> bool:
        """Whether a statement is being typed (the prompt shows it goes on)."""
        return not is_blank(self.buffer)

    def feed(self, line: str) -> bool:
        """Take one line typed at the prompt; return False once the shell should end."""
        if line.lstrip().startswith("\\") and not is_open(self.buffer):
            self.command(line.strip())
        else:
            self.buffer += line + "\n"
            self._run_complete()
        return not self.done

    def feed_all(self, lines: Iterable[str]) -> None:
        """Feed lines until ``\\q`` or their end (a script piped into the shell).

        A statement left without its ``;`` at the end still runs, as psql runs it.
        """
        for line in lines:
            if not self.feed(line.rstrip("\n")):
                return
        if not is_blank(self.buffer):
            self.last, self.buffer = self.buffer.strip(), ""
            self.execute(self.last)

    def cancel_input(self) -> None:
        """Ctrl-C at the prompt: forget the statement being typed."""
        self.buffer = ""

    def _run_complete(self) -> None:
        statements, self.buffer = split(self.buffer)
        if is_blank(self.buffer):
            self.buffer = ""
        for statement in statements:
            if not is_blank(statement.rstrip(";")):
                self.last = statement.strip()
                self.execute(statement.strip())

    # -- statements

    def execute(self, sql: str) -> None:
        """Run one statement and print its result, or the error it met."""
        started = time.perf_counter()
        try:
            self._execute(sql.rstrip().rstrip(";"))
        except Error as exc:
            self.error(exc)
        except KeyboardInterrupt:
            # The portal cancelled the statement on the shards before this arrives.
            self.err.write("cancelled\n")
        if self.timing:
            self.out.write(f"Time: {(time.perf_counter() - started) * 1000:.3f} ms\n")
        self.out.flush()

    def _execute(self, sql: str) -> None:
        names: list[str] | None = None
        with showing(self.conn, self.err, enabled=self.progress):
            cur = self.conn.execute(sql)
            try:
                count = cur.rowcount
                if cur.description is not None:
                    names = [c.name for c in cur.description]
                    rows = cur.fetchall()
            finally:
                cur.close()
        if names is None:
            self.out.write(f"OK, {count} row{'s' if count != 1 else ''} affected\n")
            return
        self.show(names, rows)

    def show(self, names: list[str], rows: list[Any]) -> None:
        """Print a result as a table (or records, in expanded display), paged if long."""
        draw = render.expanded if self.expanded else render.table
        lines = draw(names, rows, color=self.terminal)
        if render.wants_pager(lines, terminal=self.terminal, size=self.size()):
            if self.pager is not None:
                self.pager(lines)
            else:
                render.page(lines, self.out)
            return
        self.out.write("\n".join(lines) + "\n")

    def error(self, exc: Error) -> None:
        """Print shardq's message for ``exc`` (and its notes), as the ``shardq`` command does."""
        self.failures += 1
        self.err.write(f"ERROR: {exc}\n")
        for note in getattr(exc, "__notes__", ()):
            self.err.write(f"  {note}\n")
        self.err.flush()

    # -- backslash commands

    def command(self, line: str) -> None:
        """Run one backslash command (the whole line, ``\\`` included)."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("d", "dt"):  # psql's \dt lists tables too; `\d t;` names t
            name, arg = "d", arg.rstrip(";").strip()
        handlers: dict[str, Callable[[str], None]] = {
            "d": self._describe,
            "timing": self._timing,
            "x": self._expanded,
            "explain": self._explain,
            "e": self._edit,
            "q": self._quit,
            "?": self._help,
        }
        handler = handlers.get(name)
        if handler is None:
            self.err.write(f"invalid command \\{name}; try \\? for help\n")
            return
        try:
            handler(arg)
        except Error as exc:
            self.error(exc)
        except KeyboardInterrupt:
            self.err.write("cancelled\n")

    def _quit(self, arg: str) -> None:
        self.done = True

    def _help(self, arg: str) -> None:
        self.out.write(HELP + "\n")

    def _toggle(self, arg: str, current: bool, what: str) -> bool:
        choice = {"": not current, "on": True, "off": False}.get(arg.lower())
        if choice is None:
            self.err.write(f"\\{what} takes on or off, not {arg!r}\n")
            return current
        return choice

    def _timing(self, arg: str) -> None:
        self.timing = self._toggle(arg, self.timing, "timing")
        self.out.write(f"Timing is {'on' if self.timing else 'off'}.\n")

    def _expanded(self, arg: str) -> None:
        self.expanded = self._toggle(arg, self.expanded, "x")
        self.out.write(f"Expanded display is {'on' if self.expanded else 'off'}.\n")

    def _explain(self, arg: str) -> None:
        sql = arg.rstrip().rstrip(";")
        word, _, rest = sql.partition(" ")
        analyze = word.lower() == "analyze" and bool(rest.strip())
        if analyze:
            sql = rest.strip()
        if not sql:
            self.err.write("\\explain needs a statement: \\explain [analyze] SELECT ...\n")
            return
        self.out.write(self.conn.explain(sql, analyze=analyze).rstrip("\n") + "\n")

    def _describe(self, arg: str) -> None:
        config = self.conn.config
        if not arg:
            rows = [
                (
                    t.name,
                    "reference" if t.reference else "distributed",
                    t.shard_key,
                    t.colocate_with,
                )
                for t in sorted(config.tables.values(), key=lambda t: t.name)
            ]
            self.out.write("Declared tables\n")
            self.show(["table", "kind", "shard key", "co-located with"], rows)
            return
        table = config.table(arg)  # raises shardq's own error for an undeclared name
        columns = table_columns(self.conn, table.name)
        if not columns:
            raise ProgrammingError(
                f"table {table.name!r} is declared but the shards have no such table "
                "(its columns come from the first shard that answers)"
            )
        self.out.write(f'Table "{table.name}"\n')
        self.show(["column", "type"], [(c.name, c.type) for c in columns])
        if table.reference:
            self.out.write("Reference table: every shard holds all its rows.\n")
        else:
            self.out.write(f"Distributed by: {table.shard_key}\n")
            if table.colocate_with:
                self.out.write(f"Co-located with: {table.colocate_with}\n")
        self.out.write(f"Shards: {', '.join(config.shard_names)}\n")

    def _edit(self, arg: str) -> None:
        text = self.buffer if not is_blank(self.buffer) else self.last
        with tempfile.TemporaryDirectory(prefix="shardq-") as folder:
            path = Path(folder) / "statement.sql"
            path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
            try:
                (self.editor or _run_editor)(path)
            except (OSError, subprocess.CalledProcessError) as exc:
                self.err.write(f"the editor failed: {exc}\n")
                return
            edited = path.read_text(encoding="utf-8")
        self.buffer = ""
        if is_blank(edited):
            return
        self.out.write(edited.rstrip("\n") + "\n")  # what runs, as psql echoes it
        self.buffer = edited if edited.endswith("\n") else edited + "\n"
        self._run_complete()


def table_columns(conn: Connection, table: str) -> tuple[ColumnInfo, ...]:
    """``table``'s columns as the planner knows them: the catalog read from the shards.

    The catalog is the engine's, read once from the first shard that answers,
    and read again after a schema change; ``\\d`` shows what the planner uses.
    """
    engine = conn.async_connection._engine

    async def load() -> None:
        await engine._load_catalog()

    if engine.planner.catalog is None:
        conn._portal.call(load)
    return engine.planner.columns.get(table, ())


def _run_editor(path: Path) -> None:
    command = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    subprocess.run([*shlex.split(command), str(path)], check=True)


def history_path() -> Path:
    """Where the prompt keeps its history: ``$XDG_STATE_HOME/shardq/history``.

    ``$XDG_STATE_HOME`` defaults to ``~/.local/state``, as the XDG base
    directory specification has it.
    """
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "shardq" / "history"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "shell",
        help="an interactive SQL prompt on the shards (psql's \\d, \\x, \\timing, \\e)",
        description="An interactive SQL prompt on the shards. Statements end with ; and may "
        "span lines; type \\? for the backslash commands. With standard input not a "
        "terminal, reads statements from it (needs no prompt_toolkit).",
    )
    add_config_argument(parser)
    add_timeout_argument(parser, "each statement")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        from shardq.cli import prompt  # fails with the extra's name before connecting

        prompt.require()
    with shardq.connect(config_path(args), timeout=args.timeout) as conn:
        shell = Shell(
            conn,
            terminal=sys.stdout.isatty(),
            size=lambda: _terminal_size(sys.stdout),
            progress=sys.stderr.isatty(),
        )
        if interactive:
            prompt.loop(shell, history_path())
        else:
            shell.feed_all(sys.stdin)
    # A script learns that a statement failed; at the prompt the user saw it.
    return ExitCode.FAILED if shell.failures and not interactive else ExitCode.OK


def _terminal_size(stream: TextIO) -> os.terminal_size:
    try:
        return os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return os.terminal_size((80, 24))
