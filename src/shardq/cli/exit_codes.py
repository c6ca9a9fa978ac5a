"""Exit codes of the ``shardq`` command, stable for scripts.

====  =========================================================
code  meaning
====  =========================================================
0     success
1     a shard or database failed, or ``check`` found a problem
2     wrong usage (unknown option, missing argument)
3     the configuration is invalid
4     the SQL was refused before running: syntax, undeclared
      table, or a construct shardq cannot answer exactly
5     the statement timed out (and was cancelled on the shards)
6     ``verify``: shardq's answer differs from the single database's
130   interrupted (Ctrl-C); running statements were cancelled
====  =========================================================
"""

from __future__ import annotations

import enum

from shardq.errors import (
    ConfigError,
    Error,
    ProgrammingError,
    QueryTimeoutError,
    ShardError,
    SQLSyntaxError,
    UndeclaredTableError,
    UnsupportedQueryError,
)

__all__ = ["ExitCode", "exit_code_for"]


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    CONFIG = 3
    REFUSED = 4
    TIMEOUT = 5
    DIFFERS = 6
    INTERRUPTED = 130


def exit_code_for(exc: Error) -> ExitCode:
    """Map a shardq error to the exit code scripts can rely on.

    >>> exit_code_for(SQLSyntaxError("x")).name
    'REFUSED'
    """
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, QueryTimeoutError):
        return ExitCode.TIMEOUT
    if isinstance(exc, SQLSyntaxError | UndeclaredTableError | UnsupportedQueryError):
        return ExitCode.REFUSED
    if isinstance(exc, ProgrammingError) and not isinstance(exc, ShardError):
        return ExitCode.REFUSED
    return ExitCode.FAILED
