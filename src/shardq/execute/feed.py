"""Feeding: the rows a SELECT returns, inserted on their shards (a routed INSERT ... SELECT).

The SELECT's merged rows (:mod:`shardq.sql.insert_select` says when shardq
routes them) are read a batch at a time; each row goes to the shard of its
shard-key value (``placement.shard_for``, as a VALUES row does), into that
shard's buffer; a full buffer is sent as one ``INSERT ... VALUES`` with
parameters, on the transaction's connection to the shard. Memory holds a
batch of selected rows and a buffer per shard, whatever the number of rows
selected, plus the RETURNING rows if the INSERT has RETURNING: those are
put back in the order of the selected rows, as one database returns them.

Everything runs in one transaction (the caller's, or one of the statement's
own): a row placement cannot place (a NULL key) or a shard rejects fails the
statement, and nothing of it is committed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

from shardq.errors import ProgrammingError, QueryTimeoutError
from shardq.execute.driver import read_whole
from shardq.results import StoredResult
from shardq.sql.route import place

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.execute.driver import Column, Row
    from shardq.execute.transaction import Transaction
    from shardq.results import AsyncResult
    from shardq.rows import RowFactory
    from shardq.sql.insert_select import Feed

__all__ = ["feed_rows"]


class _Inserter:
    """The per-shard buffers of a feed, and what the INSERTs returned."""

    def __init__(self, feed: Feed, transaction: Transaction, width: int):
        self._feed = feed
        self._transaction = transaction
        self._width = width
        self._limit = feed.rows_per_insert(width)
        self._pools = transaction.view()
        self._buffers: dict[str, list[tuple[int, Row]]] = {}
        self.written: list[str] = []
        self.rowcount = 0
        self.description: tuple[Column, ...] | None = None
        self.returned: dict[int, Row] = {}
        self.running: tuple[str, ...] = ()  # the shard an INSERT runs on, if any

    async def add(self, shard: str, position: int, row: Row) -> None:
        buffer = self._buffers.setdefault(shard, [])
        buffer.append((position, row))
        if len(buffer) >= self._limit:
            await self.flush(shard)

    async def flush(self, shard: str) -> None:
        rows = self._buffers.pop(shard, [])
        if not rows:
            return
        feed = self._feed
        sql, names = feed.inserts.statement(len(rows), self._width, feed.escaped)
        params: dict[str, Any] = dict(feed.params) if isinstance(feed.params, dict) else {}
        params.update(
            zip(names, itertools.chain.from_iterable(row for _, row in rows), strict=True)
        )
        transaction = self._transaction
        transaction.check((shard,), True)
        self.running = (shard,)
        try:
            async with self._pools[shard].connection() as conn:
                outcome = await read_whole(conn, sql, params, stream=False)
        except BaseException as exc:
            transaction.fail(exc)
            raise
        self.running = ()
        transaction.note((shard,), True)
        if shard not in self.written:
            self.written.append(shard)
        self.rowcount += outcome.rowcount
        if feed.returning:
            self.description = outcome.description
            if len(outcome.rows) != len(rows):
                raise AssertionError(
                    f"shard {shard} returned {len(outcome.rows)} rows for {len(rows)}"
                )
            for (position, _), returned in zip(rows, outcome.rows, strict=True):
                self.returned[position] = returned

    async def flush_all(self) -> None:
        for shard in list(self._buffers):
            await self.flush(shard)


def _check_width(feed: Feed, width: int) -> None:
    """Refuse selected rows that do not fit the target's columns, as the database would."""
    widest = feed.inserts.widest
    if feed.explicit and width != widest:
        more = (
            "expressions than target columns"
            if width > widest
            else "target columns than expressions"
        )
        raise ProgrammingError(f"INSERT has more {more}")
    if width > widest:
        raise ProgrammingError("INSERT has more expressions than target columns")
    if feed.key >= width:
        table = feed.target.table
        raise ProgrammingError(
            f"INSERT ... SELECT leaves {table.name}.{table.shard_key}, the shard key, to its "
            "default: shardq places rows by their key; select a value for it"
        )


async def feed_rows(
    feed: Feed,
    selected: AsyncResult | StoredResult,
    transaction: Transaction,
    config: Config,
    row_factory: RowFactory,
    *,
    batch: int,
    timeout: float | None,
) -> StoredResult:
    """Insert the rows of ``selected`` on their shards, in ``transaction``; the INSERT's result.

    ``rowcount`` is the number of rows inserted; RETURNING rows are in the
    order of the selected rows. ``batch`` is how many selected rows are read
    at a time.

    Raises:
        ProgrammingError: a selected row's key cannot be placed (NULL), or the
            rows do not fit the target's columns.
        QueryTimeoutError: ``timeout`` seconds passed (the shards' statements
            are cancelled).
    """
    width = len(selected.description or ())
    _check_width(feed, width)
    inserter = _Inserter(feed, transaction, width)
    key, ref = feed.target.table, feed.target
    position = 0
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while rows := await selected.fetchmany(batch):
                for row in rows:
                    value = row[feed.key]
                    try:
                        shard = place(value, ref, config, "INSERT ... SELECT with")
                    except ProgrammingError as exc:
                        raise ProgrammingError(
                            f"{exc} (row {position + 1} of the SELECT has {key.shard_key} = "
                            f"{value!r}); nothing of the INSERT is kept"
                        ) from None
                    await inserter.add(shard, position, row)
                    position += 1
            await inserter.flush_all()
    except TimeoutError:
        if not deadline.expired():
            raise  # the SELECT's own (a QueryTimeoutError naming its shards)
        assert timeout is not None
        raise QueryTimeoutError(timeout, inserter.running) from None
    shards = tuple(s for s in config.shard_names if s in inserter.written)
    if not feed.returning:
        return StoredResult(None, [], inserter.rowcount, shards, row_factory)
    ordered = [inserter.returned[i] for i in range(position)]
    return StoredResult(inserter.description, ordered, inserter.rowcount, shards, row_factory)
