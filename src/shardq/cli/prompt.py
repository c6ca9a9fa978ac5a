"""The interactive front of ``shardq shell``: prompt_toolkit's prompt around :class:`Shell`.

Everything a terminal needs lives here and nowhere else: the history file,
line editing, SQL colours (pygments, when installed) and the keys. The
prompt reads one line at a time, so a statement's lines reach the shell as
typed and each goes into the history as one entry, as in psql.

Ctrl-C at the prompt drops the statement being typed; Ctrl-C while a
statement runs reaches the waiting call, whose portal cancels the statement
on the shards (see :meth:`shardq._portal.Portal.call`). Ctrl-D quits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.errors import MissingDependencyError

if TYPE_CHECKING:
    from pathlib import Path

    from shardq.cli.shell import Shell

__all__ = ["loop", "require"]


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

    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        kept: Any = FileHistory(str(history))
    except OSError:  # a read-only home: the session still has its own history
        kept = InMemoryHistory()
    prompt_session: PromptSession[str] = PromptSession(history=kept, lexer=_lexer(), **session)
    shell.out.write("shardq shell: statements end with ;  \\? for help, \\q to quit\n")
    while not shell.done:
        prompt = "shardq-> " if shell.continues else "shardq=> "
        try:
            line = prompt_session.prompt(prompt)
        except KeyboardInterrupt:
            shell.cancel_input()
            continue
        except EOFError:
            shell.out.write("\n")
            return
        shell.feed(line)
