"""The driver interface: what shardq needs from a database client.

A driver provides one :class:`ShardPool` per shard. A pool lends
:class:`ShardConnection` objects; a connection runs one statement at a time
and returns a :class:`ShardStream`, whose rows arrive in batches so a large
result never has to fit in memory.

Drivers are found by name in a lazy registry: ``import shardq`` imports no
driver, and psycopg is needed only when a PostgreSQL shard is used.

Every driver is a translation boundary: whatever its client raises leaves it
as a :class:`~shardq.errors.ShardError` naming the shard, with the secrets of
the DSNs scrubbed from the message and the original as ``__cause__``.
Cancelling the task that awaits a driver call (a timeout, a failure on
another shard) cancels the statement on the server.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from shardq.errors import ShardError, category_of, shard_error

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from shardq.config import Config, ShardConfig
    from shardq.dsn import Secrets

__all__ = [
    "Column",
    "CopyRejected",
    "Driver",
    "OneConnection",
    "Outcome",
    "Row",
    "ShardConnection",
    "ShardPool",
    "ShardStream",
    "Statement",
    "get_driver",
    "read_whole",
    "register_driver",
    "run_statements",
    "translate_error",
]

Row = tuple[Any, ...]


class Column(NamedTuple):
    """One column of a result, in the PEP 249 ``description`` layout."""

    name: str
    type_code: Any = None
    display_size: int | None = None
    internal_size: int | None = None
    precision: int | None = None
    scale: int | None = None
    null_ok: bool | None = None


class Statement(NamedTuple):
    """One statement of a batch, as one shard runs it."""

    sql: str
    params: object = None
    #: A write: it runs alone, never in a group that could be retried.
    write: bool = False


class Outcome(NamedTuple):
    """The whole result of one statement on one shard."""

    description: tuple[Column, ...] | None
    rows: list[Row]
    rowcount: int


class CopyRejected(Exception):
    """A shard refused a row of a bulk load (see :mod:`shardq.execute.copy`).

    Drivers that load rows (PostgreSQL's ``copy_from``, the threaded drivers'
    ``insert_many``) raise it with the shard's error and, when the server
    tells, the 1-based number of the refused row among those the call sent,
    so that the load can name the row of its source.

    Attributes:
        error: the shard's error, as the driver translated it.
        row: the refused row's 1-based number in what the call sent, or None.
    """

    def __init__(self, error: ShardError, row: int | None):
        super().__init__(str(error))
        self.error = error
        self.row = row


class ShardStream(Protocol):
    """The result of one statement on one shard."""

    @property
    def description(self) -> tuple[Column, ...] | None:
        """The result's columns, or ``None`` for a statement that returns no rows."""

    @property
    def rowcount(self) -> int:
        """Rows affected by a write, or rows received so far by a read (-1 if unknown)."""

    @property
    def holds_connection(self) -> bool:
        """Whether reading the rest still needs the connection (else it can go back)."""

    async def fetch(self) -> list[Row]:
        """Return the next batch of rows; an empty list once the result is exhausted."""

    async def aclose(self) -> None:
        """Stop the statement if it still runs (cancelling it on the server)."""


class ShardConnection(Protocol):
    """A connection to one shard, lent by its pool."""

    async def execute(
        self, sql: str, params: object, *, fetch_size: int, stream: bool = True
    ) -> ShardStream:
        """Run one statement with its parameters bound by the client.

        ``stream=False`` says the statement is a write: its result (RETURNING
        rows) may be received whole.
        """


class ShardPool(Protocol):
    """The connections to one shard. Connections are opened lazily."""

    name: str

    @property
    def max_size(self) -> int:
        """The most connections the pool opens at once."""

    def connection(self) -> AbstractAsyncContextManager[ShardConnection]:
        """Lend a connection for the duration of a ``async with`` block."""

    #: A query returning one row whose first column is the server's version.
    info_sql: str

    def columns_query(self, table: str) -> tuple[str, object]:
        """A query (and its parameters) returning ``(column, type)`` rows of ``table``."""

    #: A query returning one ``(collation, provider)`` row for the database's
    #: default text order, or None where text always compares by code point.
    collation_sql: str | None

    # Optional: ``readers_block_writers = True`` says a statement still being
    # read holds a lock that makes a write on another connection to the shard
    # wait (SQLite). The engine then reads open results into memory before a
    # write (see Engine.execute). Read with getattr: drivers may leave it out.

    async def close(self) -> None:
        """Close every connection the pool opened."""


# Rows read per round trip when a batch statement's whole result is gathered.
_GATHER_SIZE = 10_000


async def run_statements(
    conn: ShardConnection, statements: Sequence[Statement], *, prepare: bool = False
) -> list[Outcome | ShardError | None]:
    """Run ``statements`` on ``conn`` in order, each as its own transaction; read them whole.

    A failing statement's error takes its place in the list. Reads after a
    failing one may come back as None: not run (a pipeline stops at its first
    failure), to be sent again. A connection may offer a faster ``run(statements, prepare=)``
    with the same contract (PostgreSQL pipelines reads; the threaded drivers
    run the whole list in one call to their thread); this is the fallback.
    ``prepare`` asks for server-side prepared statements where the client has
    them (the same statement text is about to run many times).
    """
    run = getattr(conn, "run", None)
    if run is not None:
        outcomes: list[Outcome | ShardError | None] = await run(statements, prepare=prepare)
        return outcomes
    out: list[Outcome | ShardError | None] = []
    for statement in statements:
        try:
            out.append(
                await read_whole(conn, statement.sql, statement.params, stream=not statement.write)
            )
        except ShardError as exc:
            out.append(exc)
    return out


async def read_whole(
    conn: ShardConnection, sql: str, params: object, *, stream: bool = True
) -> Outcome:
    """Run one statement on ``conn`` and read its whole result (``stream=False``: a write)."""
    result = await conn.execute(sql, params, fetch_size=_GATHER_SIZE, stream=stream)
    rows: list[Row] = []
    try:
        while batch := await result.fetch():
            rows += batch
    finally:
        await result.aclose()
    return Outcome(result.description, rows, result.rowcount)


class OneConnection:
    """A shard's pool as one statement sees it, lending one connection of its own.

    A transaction's view (its held connection) and a gathered read's shard
    (its connection with the temporary tables) are this: ``connection()`` is
    theirs, everything else (``info_sql``, ``columns_query``,
    ``collation_sql``, ...) the pool's.
    """

    def __init__(self, pool: ShardPool):
        self._pool = pool
        self.name = pool.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    @property
    def max_size(self) -> int:
        return 1


class Driver(Protocol):
    """Makes the pools for the shards of a configuration."""

    def __call__(self, config: Config, shard: ShardConfig) -> ShardPool: ...


_REGISTRY: dict[str, str] = {
    "psycopg": "shardq.execute.drivers.postgres:PsycopgPool",
    "sqlite": "shardq.execute.drivers.sqlite:SQLitePool",
}
_LOADED: dict[str, Driver] = {}


def register_driver(name: str, target: str | Driver) -> None:
    """Register a driver under ``name``: a factory or a ``"module:attribute"`` path."""
    if isinstance(target, str):
        _REGISTRY[name] = target
        _LOADED.pop(name, None)
    else:
        _LOADED[name] = target


def get_driver(name: str) -> Driver:
    """Return the driver registered as ``name``, importing it on first use.

    Raises:
        KeyError: no driver has that name.
    """
    if name in _LOADED:
        return _LOADED[name]
    if name not in _REGISTRY:
        known = ", ".join(sorted({*_REGISTRY, *_LOADED}))
        raise KeyError(f"unknown driver {name!r} (known: {known})")
    module, _, attribute = _REGISTRY[name].partition(":")
    driver: Driver = getattr(importlib.import_module(module), attribute)
    _LOADED[name] = driver
    return driver


def translate_error(
    shard: str,
    exc: BaseException,
    secrets: Secrets,
    *,
    sqlstate_of: Callable[[BaseException], str | None] | None = None,
) -> ShardError:
    """Wrap a client's exception as the :class:`ShardError` of ``shard``.

    The caller raises the result ``from exc``. The message is the client's,
    first line and detail kept, with every known secret scrubbed.
    """
    if secrets.values:
        # The original stays chained as __cause__ (tracebacks, logger.exception
        # print it): scrub its own message too.
        with contextlib.suppress(AttributeError, TypeError):  # exotic exception types
            exc.args = tuple(secrets.scrub(a) if isinstance(a, str) else a for a in exc.args)
    message = secrets.scrub(str(exc).strip() or type(exc).__name__)
    sqlstate = sqlstate_of(exc) if sqlstate_of else None
    return shard_error(shard, category_of(exc), message, sqlstate=sqlstate)
