"""The interactive front of ``shardq shell``: prompt_toolkit's prompt around :class:`Shell`.

Everything a terminal needs lives here and nowhere else: the history file,
line editing, SQL colours (pygments, when installed) and the keys. Enter
runs what is typed once it is complete (a ``;`` ends it outside quotes and
comments, or it is a backslash command) and otherwise starts a new line of
the same statement, so a statement of several lines is edited as one and
comes back whole from the history (Up), as in psql.

Ctrl-C at the prompt drops the statement being typed; Ctrl-C while a
statement runs reaches the waiting call, whose portal cancels the statement
on the shards (see :meth:`shardq._portal.Portal.call`). Ctrl-D quits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.cli.split import is_blank, is_open, split
from shardq.errors import MissingDependencyError

if TYPE_CHECKING:
    from pathlib import Path

    from shardq.cli.shell import Shell

__all__ = ["complete", "loop", "require"]


def require() -> None:
    """Raise, naming the ``shell`` extra, if prompt_toolkit is not installed.

    Raises:
        MissingDependencyError: prompt_toolkit is missing.
    """
    try:
        import prompt_toolkit  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("prompt_toolkit", "shell", "shardq shell") from exc


def _lexer() -> Any:
    from prompt_toolkit.lexers import PygmentsLexer

    try:  # pygments finds its SQL lexer by the file name's extension
        return PygmentsLexer.from_filename("statement.sql")
    except ImportError:  # colours are a nicety: pygments is optional
        return None


def complete(text: str) -> bool:
    """Whether Enter after ``text`` runs it rather than starting another line.

    >>> complete("SELECT 1"), complete("SELECT ';'"), complete("SELECT 1;"), complete("\\\\d")
    (False, False, True, True)
    >>> complete(""), complete("SELECT 1;\\nSELECT"), complete("SELECT 1\\n\\\\e")
    (True, False, True)
    >>> complete("SELECT $$\\n\\\\d")  # in a dollar quote: text, not a command
    False
    """
    before, _, last = text.rpartition("\n")
    if last.lstrip().startswith("\\") and not is_open(before):
        return True
    statements, rest = split(text)
    return is_blank(rest) and (bool(statements) or is_blank(text))


def loop(shell: Shell, history: Path, **session: Any) -> None:
    """Read lines at the prompt and feed them to ``shell`` until ``\\q`` or Ctrl-D.

    Args:
        shell: what the lines are fed to.
        history: the history file (its folder is made if missing).
        session: more arguments of prompt_toolkit's ``PromptSession`` (tests give
            ``input`` and ``output``).
    """
    require()
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

    keys = KeyBindings()

    @keys.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if complete(buffer.text):
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        kept: Any = FileHistory(str(history))
    except OSError:  # a read-only home: the session still has its own history
        kept = InMemoryHistory()
    prompt_session: PromptSession[str] = PromptSession(
        history=kept,
        lexer=_lexer(),
        multiline=True,
        key_bindings=keys,
        prompt_continuation="shardq-> ",
        **session,
    )
    shell.out.write("shardq shell: statements end with ;  \\? for help, \\q to quit\n")
    while not shell.done:
        try:
            text = prompt_session.prompt("shardq=> ")
        except KeyboardInterrupt:  # drops what is typed
            shell.cancel_input()
            continue
        except EOFError:
            shell.out.write("\n")
            return
        for line in text.split("\n"):
            if not shell.feed(line):
                return
