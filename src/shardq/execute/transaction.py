"""Transactions over the shards: one connection per shard touched, held to the end.

A :class:`Transaction` lends the engine a *view* of the pools in which each
shard has one connection, taken from its pool the first time a statement of
the transaction needs that shard and opened with ``BEGIN`` (and the
savepoints already open, so that rolling back to one works on every shard).
Every later statement on that shard runs on the same connection, so it sees
the transaction's own writes; statements run one at a time on it, their
results received whole.

The end: with one shard written, a plain ``COMMIT`` there; with several, the
two-phase commit of :mod:`shardq.execute.twophase`; shards only read are
committed without preparing. Whatever happens, every connection goes back to
its pool outside a transaction (or is discarded by the pool if broken).

A commit waits on the shards for a bounded time: a statement's ``timeout=``
for the transaction of its own (a write over several shards), else the
configuration's ``commit_timeout``, under the deadlines of
:mod:`shardq.execute.deadline`. A commit given up tells what became of the
transaction (:class:`~shardq.errors.CommitTimeoutError`'s ``committed``).

A statement that fails aborts the transaction, as in PostgreSQL: every later
statement is refused until :meth:`Transaction.rollback` or a rollback to a
savepoint taken before the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from shardq import tracing
from shardq.config import DEFAULT_COMMIT_TIMEOUT
from shardq.errors import (
    CommitTimeoutError,
    InFailedTransactionError,
    InterfaceError,
    NotSupportedError,
)
from shardq.execute.deadline import ROLLBACK_TIMEOUT, bounded
from shardq.execute.driver import OneConnection, read_whole
from shardq.execute.twophase import begin_tagged, two_phase_commit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

    from shardq.execute.driver import ShardConnection, ShardPool

__all__ = ["ROLLBACK_TIMEOUT", "Transaction"]

_IDS = itertools.count(1)
log = logging.getLogger("shardq.transaction")


class _Held:
    """One shard's connection for the length of the transaction."""

    def __init__(self, cm: AbstractAsyncContextManager[ShardConnection], conn: ShardConnection):
        self.cm = cm
        self.conn = conn
        self.lock = asyncio.Lock()


class _View(OneConnection):
    """A shard's pool as a transaction sees it: always its one connection."""

    def __init__(self, transaction: Transaction, pool: ShardPool):
        super().__init__(pool)
        self._transaction = transaction

    def connection(self) -> AbstractAsyncContextManager[ShardConnection]:
        return self._transaction.connection(self.name)


class Transaction:
    """One transaction over the shards of ``pools`` (see the module docstring).

    Args:
        pools: every shard's pool, by name.
        dialect: ``postgres`` or ``sqlite``: SQLite has no two-phase commit,
            so a transaction there writes on one shard at most.
        commit_timeout: seconds :meth:`commit` may wait on the shards when
            not told otherwise (the configuration's ``commit_timeout``).
    """

    def __init__(
        self,
        pools: Mapping[str, ShardPool],
        dialect: str,
        *,
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
    ):
        self._pools = dict(pools)
        self.dialect = dialect
        self.commit_timeout = commit_timeout
        self.txid = uuid.uuid4().hex
        self._held: dict[str, _Held] = {}
        self._order = list(self._pools)
        self.written: set[str] = set()
        self._savepoints: list[str] = []
        self.failed: BaseException | None = None
        self.closed = False
        self._views = {name: _View(self, pool) for name, pool in self._pools.items()}

    def __repr__(self) -> str:
        state = "closed" if self.closed else "failed" if self.failed else "open"
        shards, written = sorted(self._held), sorted(self.written)
        return f"<shardq.Transaction {state} shards={shards} written={written}>"

    # -- what the engine uses

    def view(self) -> dict[str, ShardPool]:
        """The pools as statements of this transaction use them."""
        return dict(self._views)

    def check(self, shards: Iterable[str], write: bool) -> None:
        """Refuse a statement the transaction cannot run (aborted, or a second SQLite shard)."""
        if self.closed:
            raise InterfaceError("the transaction is over")
        if self.failed is not None:
            raise InFailedTransactionError(
                "current transaction is aborted, commands ignored until end of transaction "
                "block (roll it back, or back to a savepoint taken before the failure)"
            )
        if write and self.dialect == "sqlite":
            touched = self.written | set(shards)
            if len(touched) > 1:
                raise NotSupportedError(
                    f"a transaction writing on the SQLite shards {', '.join(sorted(touched))}: "
                    "SQLite has no two-phase commit, so shardq cannot commit writes on several "
                    "SQLite shards atomically; write on one shard per transaction"
                )

    def note(self, shards: Iterable[str], write: bool) -> None:
        """Record that a statement ran on ``shards`` (and wrote, if ``write``)."""
        if write:
            self.written.update(shards)

    def fail(self, exc: BaseException) -> None:
        """Abort the transaction after a failed statement."""
        if self.failed is None:
            self.failed = exc

    @asynccontextmanager
    async def connection(self, shard: str) -> AsyncIterator[ShardConnection]:
        held = self._held.get(shard)
        if held is None:
            held = await self._join(shard)
        async with held.lock:
            yield held.conn

    async def _join(self, shard: str) -> _Held:
        cm = self._pools[shard].connection()
        conn = await cm.__aenter__()
        try:
            begin = begin_tagged(self.txid) if self.dialect == "postgres" else "BEGIN"
            await read_whole(conn, begin, None, stream=False)
            for name in self._savepoints:
                await read_whole(conn, f"SAVEPOINT {name}", None, stream=False)
        except BaseException as exc:
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        held = self._held.setdefault(shard, _Held(cm, conn))
        if held.conn is not conn:  # another task joined first: give this one back
            with contextlib.suppress(Exception):
                await read_whole(conn, "ROLLBACK", None, stream=False)
            await cm.__aexit__(None, None, None)
        return held

    # -- savepoints

    async def savepoint(self) -> str:
        """Open a savepoint on every shard joined (and later joiners); return its name."""
        self.check((), write=False)
        name = f"shardq_sp{next(_IDS)}"
        await self._everywhere(f"SAVEPOINT {name}")
        self._savepoints.append(name)
        return name

    async def release(self, name: str) -> None:
        """Keep what was done since savepoint ``name``."""
        self.check((), write=False)
        await self._everywhere(f"RELEASE SAVEPOINT {name}")
        del self._savepoints[self._savepoints.index(name) :]

    async def rollback_to(self, name: str) -> None:
        """Undo what was done since savepoint ``name``, on every shard; clear a failure."""
        if self.closed:
            raise InterfaceError("the transaction is over")
        await self._everywhere(f"ROLLBACK TO SAVEPOINT {name}")
        await self._everywhere(f"RELEASE SAVEPOINT {name}")
        del self._savepoints[self._savepoints.index(name) :]
        self.failed = None

    async def _everywhere(self, sql: str) -> None:
        for shard in list(self._held):
            async with self.connection(shard) as conn:
                await read_whole(conn, sql, None, stream=False)

    # -- the end

    async def commit(self, timeout: float | None = None, *, deadline: float | None = None) -> None:
        """Commit: plainly on one written shard, with two-phase commit on several.

        Args:
            timeout: seconds the commit may wait on the shards (default:
                :attr:`commit_timeout`); a shard silent longer is given up
                (its connection closed after the grace of
                :mod:`~shardq.execute.deadline`).
            deadline: the ``time.monotonic()`` by which to be done, when the
                commit ends a call bounded by ``timeout`` as a whole.

        Raises:
            CommitTimeoutError: a shard did not answer in time; its
                ``committed`` says whether the transaction was rolled back
                (False) or may have committed (None). A two-phase commit whose
                decision was made succeeds even if a ``COMMIT PREPARED`` is not
                confirmed: it is committed, and ``recover()`` finishes that
                shard (logged as a warning), as Citus does.
        """
        if self.closed:
            raise InterfaceError("the transaction is over")
        if self.failed is not None:
            await self.rollback()
            raise InFailedTransactionError(
                "the transaction was aborted by an earlier failure and has been rolled back"
            )
        self.closed = True
        if timeout is None:
            timeout = self.commit_timeout
        if deadline is None:
            deadline = time.monotonic() + timeout
        readers = [s for s in self._held if s not in self.written]
        writers = [s for s in self._order if s in self.written and s in self._held]
        with tracing.commit_span(self.dialect, len(self._held), len(writers), len(writers) > 1):
            try:
                for shard in readers:  # read-only participants: released without preparing
                    # Nothing written is committed yet: given up, all is rolled back.
                    await self._commit_plain(shard, deadline, timeout, committed=False)
                if len(writers) == 1:
                    await self._commit_plain(writers[0], deadline, timeout, committed=None)
                elif writers:
                    await two_phase_commit(
                        self.txid,
                        [(s, self._held[s].conn) for s in writers],
                        self._pools,
                        deadline=deadline,
                        timeout=timeout,
                    )
            except BaseException:
                await self._abandon()
                raise
        await self._release()

    async def _commit_plain(
        self, shard: str, deadline: float, timeout: float, committed: bool | None
    ) -> None:
        """COMMIT on ``shard`` by ``deadline``; given up, ``committed`` is what is known."""
        try:
            async with bounded(deadline, timeout):
                await read_whole(self._held[shard].conn, "COMMIT", None, stream=False)
        except TimeoutError:
            hint = (
                "the shard did not answer its COMMIT: read the data to know"
                if committed is None
                else ""
            )
            raise CommitTimeoutError(timeout, (shard,), committed, hint) from None

    async def rollback(self) -> None:
        """Roll back on every shard joined (nothing to do once over).

        It raises nothing for a shard whose connection broke (a statement's
        failure on another shard cancels this one's, and psycopg closes a
        connection whose cancellation was interrupted): nothing is prepared
        before commit, so its pool closes the connection on return and the
        server rolls back with the session. The outcome is the rollback asked
        for, and the caller's error (the failed statement) is not masked.

        The shards roll back together, each within :data:`ROLLBACK_TIMEOUT`
        seconds: a host that stopped answering would hold a ROLLBACK forever.
        One not done in time is given up and its connection closed (see
        :mod:`~shardq.execute.deadline`); the server rolls back when it sees
        the session end.
        """
        if self.closed:
            return
        self.closed = True
        try:
            await self._roll_back_all()
        except BaseException:
            await self._abandon()
            raise
        await self._release()

    async def _roll_back_all(self) -> None:
        held = list(self._held.items())
        if len(held) == 1:
            await _roll_back(*held[0])
        elif held:
            await asyncio.gather(*(_roll_back(shard, part) for shard, part in held))

    async def _abandon(self) -> None:
        """After a failure at the end: roll back what can be, give every connection back."""
        with contextlib.suppress(Exception):
            await self._roll_back_all()
        await self._release()

    async def _release(self) -> None:
        held, self._held = self._held, {}
        errors = []
        for part in held.values():
            try:
                await part.cm.__aexit__(None, None, None)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


async def _roll_back(shard: str, held: _Held) -> None:
    """ROLLBACK on one shard in :data:`ROLLBACK_TIMEOUT` seconds; a failure is logged only."""
    try:
        async with bounded(time.monotonic() + ROLLBACK_TIMEOUT, ROLLBACK_TIMEOUT):
            await read_whole(held.conn, "ROLLBACK", None, stream=False)
    except Exception as exc:
        log.info(
            "shard %s: ROLLBACK failed (%s); the connection is discarded",
            shard,
            type(exc).__name__,
        )
