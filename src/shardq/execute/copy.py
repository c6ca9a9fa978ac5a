"""Bulk load: rows split by shard key, one ``COPY`` per shard, all shards at once.

:func:`copy_in` reads a source (:mod:`shardq.execute.sources`) a batch at a
time and places each row as an INSERT would be placed
(``config.placement.shards_for(keys)``, a batch's keys at once); a reference
table's rows go to every shard. Each shard has a *lane*: a writer task
holding the shard's connection, fed chunks of its rows through a queue of
two chunks, so memory holds a few chunks per shard whatever the size of the
source, and a slow shard holds the reader back instead of filling memory.
What maps a shard's refused row back to the source's line is a
:class:`~shardq.execute.ledger.Ledger`, about a byte per row.

The reader's Python work per row is kept to the placement's hash and one
append to the row's lane (measured: the hand-written split, placing by
``shard_for`` and writing with ``await write_row(row)``, spends more CPU
per row than a load does). On PostgreSQL (psycopg) a writer runs one
``COPY ... FROM STDIN``: a CSV source's records are sent as read, in
``FORMAT csv`` with the source's options; other rows are formatted by
psycopg's formatter in the text format, a chunk in one loop. The binary
format was measured against it (300,000 rows of ``bigint, text, numeric,
date``: formatting 1.04 M rows/s text, 1.07 M binary; the COPY end to end
within the noise of each other), so text is kept: it takes every value an
INSERT takes (a string for a date, an int for a numeric), where binary
needs each value of the column's exact type. Other drivers (SQLite, PEP
249 connections) get ``executemany`` of an INSERT per chunk.

Atomic by default: every lane writes in one :class:`Transaction` (its
commit is a two-phase commit when several PostgreSQL shards were written),
or in the caller's open transaction, which it joins. SQLite has no
two-phase commit: an atomic load there may write one shard only (a second
is refused, as a transaction refuses it, and nothing is committed); with
``atomic=False`` each shard commits its own part once every shard has
received all of its rows, so bad input or a refused row still commits
nothing, and only a failure between the shards' commits (a crash, a full
disk) leaves some shards loaded and others not.

Bad input loses nothing: a row with the wrong number of values, a NULL
shard key, a key that cannot be placed, or a row a shard refuses raises an
error naming the row's line (or index) in the source (and the shard), and
the transaction is rolled back (the caller's own is marked failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardq.errors import (
    DataError,
    NotSupportedError,
    ProgrammingError,
    ShardError,
    category_of,
    shard_error,
)
from shardq.execute.driver import CopyRejected, read_whole
from shardq.execute.ledger import Ledger
from shardq.execute.sources import Batch, CsvFormat, Source, open_source
from shardq.execute.transaction import Transaction
from shardq.placement import text_pins

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from shardq.config import Config, TableConfig
    from shardq.execute.driver import Row, ShardPool

__all__ = ["CopyProgress", "CopyResult", "CsvFormat", "copy_in"]

#: Rows handed to a shard's writer at a time.
CHUNK_ROWS = 5000
#: Chunks waiting for each writer, at most.
QUEUED_CHUNKS = 2

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What a load did: ``rowcount`` rows of the source, ``shards`` rows on each shard.

    A reference table's rows are on every shard: each shard's count is then
    ``rowcount``. ``int(result)`` is ``rowcount``.
    """

    rowcount: int
    shards: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __int__(self) -> int:
        return self.rowcount

    def __index__(self) -> int:
        return self.rowcount


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """How far a load is: rows read and placed, per shard, seconds since it began."""

    rows: int
    shards: Mapping[str, int]
    seconds: float
    done: bool = False


class _Lane:
    """One shard's part of a load: rows waiting, the writer's queue, counts."""

    def __init__(self, shard: str):
        self.shard = shard
        self.queue: asyncio.Queue[list[Any] | str | None] = asyncio.Queue(QUEUED_CHUNKS)
        self.rows: list[Any] = []
        self.copied = 0  # rows the shard reports loaded
        self.sent = 0  # rows handed to the writer


def _identifier(name: str, dialect: str) -> str:
    """A table or column name for the SQL a load sends, quoted.

    A plain name is folded as the database folds an unquoted one (PostgreSQL
    to lower case), so ``Name`` loads into the column ``name``, as an INSERT
    naming it unquoted would; any other name is taken as written.
    """
    parts = name.split(".") if all(_PLAIN_NAME.fullmatch(p) for p in name.split(".")) else [name]
    folded = [p.lower() if dialect == "postgres" and _PLAIN_NAME.fullmatch(p) else p for p in parts]
    return ".".join('"' + p.replace('"', '""') + '"' for p in folded)


async def _catalog_columns(pool: ShardPool, table: str) -> list[str]:
    """The table's columns, in order, as the (first) shard defines them."""
    async with pool.connection() as conn:
        rows = (await read_whole(conn, *pool.columns_query(table))).rows
    if not rows:
        raise ProgrammingError(f"table {table!r} does not exist on shard {pool.name!r}")
    return [str(row[0]) for row in rows]


class _Load:
    """One run of :func:`copy_in`: the reader, the lanes, their writers."""

    def __init__(
        self,
        config: Config,
        pools: Mapping[str, ShardPool],
        table: TableConfig,
        source: Source,
        columns: list[str],
        transaction_for: Callable[[str], Transaction],
        progress: Callable[[CopyProgress], object] | None,
    ):
        self.config = config
        self.table = table
        self.source = source
        self.columns = columns
        self.transaction_for = transaction_for
        self.progress = progress
        self.began = time.monotonic()
        self.rows = 0
        self.lanes: dict[str, _Lane] = {}
        dialect = config.dialect
        self.key: int | None = None
        if table.shard_key is not None:
            wanted = table.shard_key.lower()
            found = [i for i, c in enumerate(columns) if c.lower() == wanted]
            if not found:
                raise ProgrammingError(
                    f"a load into {table.name} without its shard key {table.shard_key} among "
                    f"the columns ({', '.join(columns)}): shardq places each row by it"
                )
            self.key = found[0]
        self.copies = all(getattr(pools[s], "copies", False) for s in config.shard_names)
        # A CSV source goes to COPY as read; to INSERTs as values (NULLs applied).
        self.raw = source.csv is not None and self.copies
        target = _identifier(table.name, dialect)
        names = ", ".join(_identifier(c, dialect) for c in columns)
        if self.copies:
            options = f" ({source.csv.copy_options()})" if self.raw and source.csv else ""
            self.sql = f"COPY {target} ({names}) FROM STDIN{options}"
        else:
            mark = "%s" if dialect == "postgres" else "?"
            marks = ", ".join([mark] * len(columns))
            self.sql = f"INSERT INTO {target} ({names}) VALUES ({marks})"
        self.ledger = Ledger(config.shard_names)
        # Each shard's append for its waiting rows, once its lane exists.
        self._appends: dict[str, Callable[[Any], None]] = {}

    # -- the reader

    def _bad(self, position: int, problem: str) -> DataError:
        return DataError(
            f"{self.source.where(position)}: {problem}; nothing of the load into "
            f"{self.table.name} was committed"
        )

    def _lane(self, shard: str) -> _Lane:
        lane = self.lanes.get(shard)
        if lane is None:
            transaction = self.transaction_for(shard)
            # The writers note their shards when they start: check with every lane so far.
            mine = [s for s in self.lanes if self.transaction_for(s) is transaction]
            try:
                transaction.check((*mine, shard), write=True)
            except NotSupportedError as exc:
                if transaction.dialect == "sqlite":
                    exc.add_note(
                        "a load that places rows on several SQLite shards cannot be atomic: "
                        "load it outside a transaction with atomic=False (each shard commits "
                        "its own part once all rows are placed)"
                    )
                raise
            lane = self.lanes[shard] = _Lane(shard)
            self._appends[shard] = lane.rows.append
        return lane

    def _place(self, batch: Batch) -> None:
        """Add the batch's rows to their shards' lanes (checked, placed).

        The rows are checked, their keys placed (:meth:`Placement.shards_for`)
        and noted in the ledger a batch at a time; only handing each row to
        its lane is a loop here. A batch with a bad row goes through
        :meth:`_check_rows`, which names the first.
        """
        source, width = self.source, len(self.columns)
        if batch.keys is None:  # rows to check, unless the source checked them
            rows = source.split(batch)
            if set(map(len, rows)) != {width}:
                j = next(j for j, row in enumerate(rows) if len(row) != width)
                raise self._bad(
                    batch.positions[j],
                    f"{len(rows[j])} values for the {width} columns ({', '.join(self.columns)})",
                )
        payloads: Sequence[Any]
        if self.raw and batch.raw is not None:
            payloads = batch.raw
        elif source.csv is not None:
            payloads = [source.values(batch, j) for j in range(len(batch.positions))]
        else:
            payloads = source.split(batch)
        self.rows += len(payloads)
        if self.key is None:  # a reference table: every row on every shard
            for shard in self.config.shard_names:
                self._lane(shard).rows.extend(payloads)
            self.ledger.add(batch.positions, None)
            return
        key = self.key
        keys = batch.keys if batch.keys is not None else [row[key] for row in source.split(batch)]
        shards = None if self._suspect(batch, keys) else self._shards_for(keys)
        if shards is None:
            self._check_rows(batch, keys)  # raises for the first bad row, if one is
            shards = self.config.placement.shards_for(keys)
        self._hand_out(payloads, shards)
        self.ledger.add(batch.positions, shards)

    def _suspect(self, batch: Batch, keys: list[Any]) -> bool:
        """Whether a CSV key of the batch may be NULL, or text that must not be placed.

        A value that cannot be placed (None among them) makes placement raise.
        """
        csv = self.source.csv
        if csv is None:
            return False
        null, key_type = csv.null, self.table.key_type
        if null in keys:
            return True  # NULL unless quoted: _check_rows tells
        return key_type not in (None, "text") and not all(
            text_pins(value, key_type) for value in keys
        )

    def _shards_for(self, keys: list[Any]) -> list[str] | None:
        try:
            return self.config.placement.shards_for(keys)
        except ValueError:
            return None

    def _check_rows(self, batch: Batch, keys: list[Any]) -> None:
        """Raise the error of the batch's first row that cannot be placed, if one cannot."""
        source, key, positions = self.source, self.key, batch.positions
        assert key is not None
        csv, key_type = source.csv, self.table.key_type
        for j, value in enumerate(keys):
            if csv is None:
                if value is None:
                    raise self._no_key(positions[j])
            else:
                if value == csv.null and source.is_null(batch, j, key):
                    raise self._no_key(positions[j])
                if not text_pins(value, key_type):
                    raise self._bad(
                        positions[j],
                        f"the text {value!r} as a {key_type} shard key may be read by the "
                        "database as another value than placement reads it; write it in ISO form",
                    )
            try:
                self.config.placement.shard_for(value)
            except ValueError as exc:
                raise self._bad(positions[j], f"cannot place the row: {exc}") from None

    def _hand_out(self, payloads: Sequence[Any], shards: list[str]) -> None:
        """Append each row to its shard's lane (opening lanes in the order rows need them)."""
        appends = self._appends
        for shard in dict.fromkeys(shards):
            if shard not in appends:
                self._lane(shard)
        for payload, shard in zip(payloads, shards, strict=True):
            appends[shard](payload)

    def _no_key(self, position: int) -> DataError:
        return self._bad(
            position,
            f"no value for the shard key {self.table.shard_key}, so no shard can hold the row",
        )

    async def _hand_over(self, lane: _Lane, writers: asyncio.TaskGroup, last: bool) -> None:
        """Give the lane's waiting rows to its writer (started with its first chunk)."""
        while lane.rows and (last or len(lane.rows) >= CHUNK_ROWS):
            # The lists stay the same objects: their appends are kept by _place.
            chunk = lane.rows[:CHUNK_ROWS]
            del lane.rows[:CHUNK_ROWS]
            if lane.sent == 0:
                writers.create_task(self._write(lane), name=f"shardq-copy-{lane.shard}")
            lane.sent += len(chunk)
            await lane.queue.put("".join(chunk) if self.raw else chunk)
        if last and lane.sent:
            await lane.queue.put(None)

    def _report(self, done: bool = False) -> None:
        if self.progress is not None:
            shards = {name: lane.sent + len(lane.rows) for name, lane in self.lanes.items()}
            self.progress(CopyProgress(self.rows, shards, time.monotonic() - self.began, done))

    async def read(self, writers: asyncio.TaskGroup) -> None:
        """Read the source to its end, handing each shard its rows."""
        shape = None if not self.raw else (self.key or 0, len(self.columns))
        async for batch in self.source.batches(shape):
            self._place(batch)
            for lane in list(self.lanes.values()):
                await self._hand_over(lane, writers, last=False)
            self._report()
            # Reading a file or a list never waits: let the writers send what they hold.
            await asyncio.sleep(0)
        for lane in list(self.lanes.values()):
            await self._hand_over(lane, writers, last=True)

    # -- the writers

    async def _chunks(self, lane: _Lane) -> AsyncIterator[list[Any] | str]:
        while (chunk := await lane.queue.get()) is not None:
            yield chunk

    async def _write(self, lane: _Lane) -> None:
        """Send the lane's chunks to its shard, in the shard's transaction."""
        transaction = self.transaction_for(lane.shard)
        async with transaction.connection(lane.shard) as conn:
            transaction.note((lane.shard,), write=True)
            copy_from = getattr(conn, "copy_from", None) if self.copies else None
            if copy_from is not None:
                try:
                    lane.copied = await copy_from(self.sql, self._chunks(lane))
                except CopyRejected as exc:
                    raise self._rejected(lane, exc.error, exc.row) from exc.error
                return
            insert_many: Callable[[str, Sequence[Row]], Any] | None = getattr(
                conn, "insert_many", None
            )
            if insert_many is None:
                raise NotSupportedError(
                    f"shard {lane.shard!r}: its driver can neither COPY nor insert many rows"
                )
            done = 0
            async for chunk in self._chunks(lane):
                assert not isinstance(chunk, str)
                try:
                    lane.copied += await insert_many(self.sql, chunk)
                except CopyRejected as exc:
                    row = None if exc.row is None else done + exc.row
                    raise self._rejected(lane, exc.error, row) from exc.error
                done += len(chunk)

    def _rejected(self, lane: _Lane, error: ShardError, row: int | None) -> ShardError:
        """The shard's error, naming the source's row it refused (when the shard said)."""
        position = None if row is None else self.ledger.nth(lane.shard, row - 1)
        if position is None:
            where = "the load"
        else:
            where = f"{self.source.where(position)}, row {row} sent to shard {lane.shard!r}"
        message = str(error).removeprefix(f"shard {error.shard!r}: ")
        found = shard_error(
            error.shard,
            category_of(error),
            f"{message}\n(the refused row: {where}; nothing of the load into "
            f"{self.table.name} was committed)",
            sqlstate=error.sqlstate,
        )
        found.__cause__ = error.__cause__
        return found

    def result(self) -> CopyResult:
        shards = {name: lane.copied for name, lane in self.lanes.items()}
        return CopyResult(self.rows, shards, time.monotonic() - self.began)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped a load (not the cancellations it caused)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return leaves[0]


async def _commit(own: Mapping[str, Transaction]) -> None:
    """Commit the load's own transaction(s); one per shard (``atomic=False``) in turn."""
    done: list[str] = []
    for key, started in own.items():
        try:
            await started.commit()
        except BaseException as exc:
            rest = [k for k in own if k != key and k not in done]
            for other in rest:
                with contextlib.suppress(Exception):
                    await own[other].rollback()
            if key:  # one transaction per shard: say where the load is
                exc.add_note(
                    f"atomic=False: committed on {', '.join(done) or 'no shard'}; "
                    f"not on {', '.join([key, *rest])}"
                )
            raise
        done.append(key)


async def copy_in(
    config: Config,
    pools: Mapping[str, ShardPool],
    table: str,
    source: object,
    columns: Sequence[str] | None = None,
    *,
    transaction: Transaction | None = None,
    atomic: bool = True,
    csv: CsvFormat | None = None,
    progress: Callable[[CopyProgress], object] | None = None,
) -> CopyResult:
    """Load the rows of ``source`` into ``table`` (see the module docstring).

    Args:
        config: the configuration (placement, the declared table).
        pools: every shard's pool.
        table: a declared table.
        source: what :func:`~shardq.execute.sources.open_source` reads.
        columns: the columns the values are for; default: a CSV header's
            names, a frame's, else every column of the table, in order.
        transaction: the caller's open transaction, to load in (its commit
            or rollback decides); None for a transaction of the load's own.
        atomic: one transaction over every shard (the default); False for
            one per shard (see the module docstring). Ignored in ``transaction``.
        csv: how a CSV source is written.
        progress: called after each batch, and once at the end.

    Raises:
        DataError: a row of the source cannot be loaded (names its line).
        ShardError: a shard refused a row (names the shard and the row's line).
    """
    declared = config.table(table)
    read = open_source(source, csv or CsvFormat())
    own: dict[str, Transaction] = {}

    def transaction_for(shard: str) -> Transaction:
        if transaction is not None:
            return transaction
        key = "" if atomic else shard
        found = own.get(key)
        if found is None:
            found = own[key] = Transaction(
                pools, config.dialect, commit_timeout=config.commit_timeout
            )
        return found

    try:
        if hasattr(read, "read_header"):
            read.read_header()
        if columns is not None:
            names = list(columns)
        elif read.columns is not None:
            names = list(read.columns)
        else:
            first = config.shard_names[0]
            view = transaction.view() if transaction is not None else pools
            names = await _catalog_columns(view[first], declared.name)
        load = _Load(config, pools, declared, read, names, transaction_for, progress)
        try:
            async with asyncio.TaskGroup() as writers:
                await load.read(writers)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
    except BaseException as exc:
        read.close()
        if transaction is not None:
            transaction.fail(exc)  # as a failed COPY aborts PostgreSQL's transaction
        else:
            for started in own.values():
                with contextlib.suppress(Exception):
                    await started.rollback()
        raise
    read.close()
    await _commit(own)
    result = load.result()
    if progress is not None:
        progress(CopyProgress(result.rowcount, dict(result.shards), result.seconds, done=True))
    return result
