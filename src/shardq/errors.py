"""Exceptions raised by shardq.

The classes follow PEP 249, so code written for any DB-API driver catches
shardq's errors the way it catches its driver's; shardq's own errors sit under
the PEP 249 category they belong to::

    Warning
     +-- PartialResultWarning            (also UserWarning)
    Error
     +-- InterfaceError
     |    +-- ConfigError                 (also ValueError)
     |    +-- MissingDependencyError      (also ModuleNotFoundError)
     +-- DatabaseError
          +-- DataError
          +-- OperationalError
          |    +-- QueryTimeoutError       (also TimeoutError)
          |         +-- CommitTimeoutError
          +-- IntegrityError
          +-- InternalError
          +-- ProgrammingError
          |    +-- SQLSyntaxError
          |    +-- UndeclaredTableError
          |    +-- InFailedTransactionError
          +-- NotSupportedError
               +-- UnsupportedQueryError

An error raised by one shard is a :class:`ShardError`: it names the shard in
``.shard`` and its message, keeps the driver's exception as ``__cause__`` and
is also an instance of the PEP 249 category of that exception (a unique
violation on shard ``s2`` is both a ``ShardError`` and an ``IntegrityError``).
"""

from __future__ import annotations

import builtins

__all__ = [
    "CommitTimeoutError",
    "ConfigError",
    "DataError",
    "DatabaseError",
    "Error",
    "InFailedTransactionError",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "MissingDependencyError",
    "NotSupportedError",
    "OperationalError",
    "PartialResultWarning",
    "ProgrammingError",
    "QueryTimeoutError",
    "SQLSyntaxError",
    "ShardError",
    "UndeclaredTableError",
    "UnsupportedQueryError",
    "Warning",
    "missing_dependency",
    "shard_error",
]


class Warning(Exception):
    """Important warnings, such as data truncation (PEP 249)."""


class PartialResultWarning(Warning, builtins.UserWarning):
    """A read with ``allow_partial`` left shards out: its answer is partial.

    Issued with :func:`warnings.warn` (it is a Python warning as well as
    PEP 249's ``Warning``, so the ``warnings`` filters apply: turn it into an
    exception with ``warnings.simplefilter("error", PartialResultWarning)``),
    once for the shards missing when the statement starts and once for each
    shard lost while its rows are read.

    Attributes:
        shards: the shards left out this time.
        errors: why, one error per shard (a timeout, a host that could not serve).
    """

    def __init__(self, errors: dict[str, BaseException]):
        self.shards = tuple(errors)
        self.errors = dict(errors)
        named = "shard " if len(errors) == 1 else "shards "
        reasons = "; ".join(f"{shard}: {_reason(exc)}" for shard, exc in errors.items())
        super().__init__(
            f"partial result: {named}{', '.join(errors)} left out ({reasons}); the rows are "
            "those of the other shards, and an aggregate, a count or a LIMIT is over them only"
        )


def _reason(exc: BaseException) -> str:
    """An error's message without the shard's name in front (the warning names it)."""
    text = str(exc).strip()
    shard = getattr(exc, "shard", None)
    if shard is not None and text.startswith(prefix := f"shard {shard!r}: "):
        text = text[len(prefix) :]
    return text.splitlines()[0] if text else type(exc).__name__


class Error(Exception):
    """Base class of every shardq error (PEP 249)."""


class InterfaceError(Error):
    """An error of the interface rather than the database (PEP 249)."""


class DatabaseError(Error):
    """An error related to the database (PEP 249)."""


class DataError(DatabaseError):
    """A problem with the processed data: division by zero, out of range (PEP 249)."""


class OperationalError(DatabaseError):
    """A database operation failed: lost connection, cancelled, timed out (PEP 249)."""


class IntegrityError(DatabaseError):
    """A relational integrity violation, such as a duplicate key (PEP 249)."""


class InternalError(DatabaseError):
    """The database hit an internal error (PEP 249)."""


class ProgrammingError(DatabaseError):
    """Wrong SQL, a missing table, the wrong number of parameters (PEP 249)."""


class NotSupportedError(DatabaseError):
    """A method or an operation that is not supported (PEP 249)."""


class ConfigError(InterfaceError, ValueError):
    """The configuration is invalid.

    Attributes:
        file: the configuration file, or ``None`` for a dict.
        field: the dotted path of the offending field, such as ``shards[1].dsn``.
    """

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file = file
        self.field = field
        where = ": ".join(part for part in (file, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class MissingDependencyError(InterfaceError, ModuleNotFoundError):
    """What was asked for needs an optional dependency that is not installed.

    Raised when the connection (or the cache backend) is made, not at
    ``import shardq``. It is an :class:`InterfaceError`, not a
    :class:`ConfigError`: the configuration is valid and works as written once
    the extra is installed. It is also the ``ModuleNotFoundError`` raised
    before it had a hint, so code catching that still does.

    Attributes:
        name: the missing top-level module (as ``ModuleNotFoundError.name``).
        extra: the extra of shardq that installs it (``pip install 'shardq[extra]'``).
    """

    def __init__(self, module: str, extra: str, needed_for: str):
        self.extra = extra
        super().__init__(
            f"{needed_for} needs the {module!r} package, which is not installed; "
            f"install it with: pip install 'shardq[{extra}]'",
            name=module,
        )


#: The extra of shardq that installs each optional top-level module.
EXTRAS = {"psycopg": "postgres", "redis": "redis", "sqlalchemy": "sqlalchemy"}


def missing_dependency(exc: ImportError, needed_for: str) -> MissingDependencyError | None:
    """The hint for ``exc`` when it is a module one of shardq's extras installs, else None.

    >>> exc = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    >>> err = missing_dependency(exc, "the postgres dialect")
    >>> err.name, err.extra, isinstance(err, ModuleNotFoundError)
    ('psycopg', 'postgres', True)
    >>> str(err).endswith("install it with: pip install 'shardq[postgres]'")
    True
    >>> missing_dependency(ModuleNotFoundError("x", name="numpy"), "x") is None
    True
    """
    module = (exc.name or "").partition(".")[0]
    extra = EXTRAS.get(module)
    return None if extra is None else MissingDependencyError(module, extra, needed_for)


class SQLSyntaxError(ProgrammingError):
    """The SQL could not be parsed; raised before any shard is contacted.

    Attributes:
        line: 1-based line of the error, when known.
        column: 1-based column of the error, when known.
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        self.line = line
        self.column = column
        super().__init__(message)


class InFailedTransactionError(ProgrammingError):
    """A statement of a transaction that an earlier failure aborted (as in PostgreSQL).

    Roll the transaction back, or back to a savepoint taken before the failure.
    """


class UndeclaredTableError(ProgrammingError):
    """A query uses a table that the configuration does not declare.

    Attributes:
        table: the table's name as written in the query.
    """

    def __init__(self, table: str, *, hint: str | None = None):
        self.table = table
        message = (
            f"table {table!r} is not declared in the shardq configuration; "
            "declare it under [tables] with shard_key = '...' or reference = true"
        )
        super().__init__(f"{message} ({hint})" if hint else message)


class UnsupportedQueryError(NotSupportedError):
    """shardq cannot run this statement and guarantee a correct answer.

    Attributes:
        construct: what in the statement is not supported (e.g. ``"multi-shard UPDATE"``).
        reason: why it cannot be distributed correctly.
        gatherable: whether gathering the read to one shard would answer it
            as one database does (False: one database's own answer is
            arbitrary there, such as SQLite's value of a bare column, and
            shardq's could not be the same).
    """

    def __init__(self, construct: str, reason: str, *, gatherable: bool = True):
        self.construct = construct
        self.reason = reason
        self.gatherable = gatherable
        super().__init__(f"{construct} is not supported: {reason}")


class QueryTimeoutError(OperationalError, TimeoutError):
    """A statement did not finish within its ``timeout``.

    The statements still running on the shards were cancelled on the servers.

    Attributes:
        timeout: the timeout in seconds.
        shards: names of the shards still running when the time ran out.
    """

    def __init__(self, timeout: float, shards: tuple[str, ...] = ()):
        self.timeout = timeout
        self.shards = shards
        pending = f" (still running on {', '.join(shards)}; cancelled)" if shards else ""
        super().__init__(f"statement timed out after {timeout:g} s{pending}")


class CommitTimeoutError(QueryTimeoutError):
    """A commit did not finish within its timeout; ``committed`` says what became of it.

    A ``COMMIT`` a shard did not answer may have happened there or not: the
    client cannot know (psycopg and libpq are in the same place when the
    connection drops during a commit). So the outcome is told, not guessed:

    * ``committed is False``: nothing was committed, everything rolled back
      (a two-phase commit given up before its decision: a ``PREPARE`` or the
      decision row that did not answer);
    * ``committed is None``: unknown. A plain one-shard ``COMMIT``: read the
      data to know. The commit on a two-phase commit's decision holder:
      :meth:`~shardq.AsyncConnection.recover` finishes the participants
      either way, as the holder's transaction turned out.

    (A ``COMMIT PREPARED`` not confirmed after the decision raises nothing: the
    transaction is committed, and ``recover()`` finishes that shard.)

    Attributes:
        timeout: the commit's timeout in seconds.
        shards: the shards that did not answer in time.
        committed: False (rolled back) or None (unknown).
    """

    def __init__(
        self, timeout: float, shards: tuple[str, ...], committed: bool | None, hint: str = ""
    ):
        super().__init__(timeout, shards)
        self.committed = committed
        outcome = (
            "nothing was committed, the transaction was rolled back"
            if committed is False
            else "the transaction may or may not have committed"
        )
        hint = f" ({hint})" if hint else ""
        self.args = (
            f"commit timed out after {timeout:g} s on {', '.join(shards)}: {outcome}{hint}",
        )


class ShardError(DatabaseError):
    """An error raised by one shard.

    Concrete instances are also instances of the PEP 249 category of the
    driver's error (see :func:`shard_error`).

    Attributes:
        shard: the name of the shard that failed.
        sqlstate: the SQLSTATE code of the database error, when the driver reports one.
    """

    def __init__(self, shard: str, message: str, *, sqlstate: str | None = None):
        self.shard = shard
        self.sqlstate = sqlstate
        super().__init__(f"shard {shard!r}: {message}")


_CATEGORIES: tuple[type[DatabaseError], ...] = (
    IntegrityError,
    DataError,
    ProgrammingError,
    NotSupportedError,
    InternalError,
    OperationalError,
)
_SHARD_CLASSES: dict[type[DatabaseError], type[ShardError]] = {
    category: type(f"Shard{category.__name__}", (ShardError, category), {"__module__": __name__})
    for category in _CATEGORIES
}
# Interface errors of a driver (a closed connection, a bad parameter count)
# surface as shard errors under DatabaseError: shardq's own InterfaceError
# stays reserved for mistakes in using shardq itself.


def shard_error(
    shard: str, category: type[DatabaseError] | None, message: str, *, sqlstate: str | None = None
) -> ShardError:
    """Build the :class:`ShardError` for ``shard`` in the PEP 249 ``category``.

    >>> err = shard_error("s1", IntegrityError, "duplicate key")
    >>> isinstance(err, IntegrityError), err.shard, str(err)
    (True, 's1', "shard 's1': duplicate key")
    """
    cls = _SHARD_CLASSES.get(category, ShardError) if category else ShardError
    return cls(shard, message, sqlstate=sqlstate)


def category_of(exc: BaseException) -> type[DatabaseError] | None:
    """Map a driver exception to a PEP 249 category by its class names.

    Every PEP 249 driver names its classes after the specification, so the
    names in the exception's MRO identify the category without importing the
    driver.

    >>> import sqlite3
    >>> category_of(sqlite3.IntegrityError("x")).__name__
    'IntegrityError'
    >>> category_of(ValueError("x")) is None
    True
    """
    names = {klass.__name__ for klass in type(exc).__mro__}
    for category in _CATEGORIES:
        if category.__name__ in names:
            return category
    if "DatabaseError" in names or "InterfaceError" in names:
        return OperationalError if "InterfaceError" in names else DatabaseError
    return None
