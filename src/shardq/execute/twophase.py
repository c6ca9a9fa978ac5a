"""Two-phase commit over PostgreSQL shards, and the recovery of what it leaves in doubt.

The decision record (Citus's design, with the client as coordinator): of
the shards a transaction wrote, the first in the configuration's order is
its *decision holder*. Inside the
holder's own transaction shardq inserts a row naming the transaction into
``shardq_commit_decisions`` and learns the holder transaction's id; every
other written shard then runs ``PREPARE TRANSACTION`` (all at once) with a
global id naming the transaction, the participant, the holder and that id::

    shardq:<txid>:<participant>:<holder>:<holder xid>

Then the holder runs a plain ``COMMIT``: that commit *is* the decision,
durable on the holder's server; only after it are the prepared participants
asked to ``COMMIT PREPARED`` (the first alone, the others at once). So
whatever dies when:

* before the holder's commit, the holder's transaction aborts (its session
  ends, or it is rolled back): every prepared participant must roll back;
* after it, the decision row exists and the holder's transaction is
  committed: every prepared participant must commit.

:func:`recover` finds shardq's prepared transactions on every shard and asks
the holder the status of the holder's transaction (``txid_status``): still
in progress, leave it alone (its coordinator is committing it now); aborted,
or unknown to a server that crashed before the id reached its disk, roll
back; otherwise the decision row answers: there, commit; not there (the id
was given to another transaction after such a crash), roll back. Safe to run
at any time, beside running transactions, and any number of times.

A decision row is needed while a participant of its transaction is left
prepared. Once every one has committed, the row is deleted by the same
holder's next decision, in the statement that writes that decision (a
round trip saved at every commit), or by :func:`recover`, which deletes the
rows no prepared transaction names.

Every step waits on the shards by one deadline (the commit's timeout, see
:mod:`shardq.execute.transaction`); a shard silent past it is given up, and
the outcome follows from the step: before the holder's commit (the checks,
the decision row, a ``PREPARE``), everything is rolled back (a ``PREPARE``
the shard may have run is rolled back by :func:`recover`); at the holder's
commit, the outcome is unknown until :func:`recover` decides; after it, the
transaction is committed, and a ``COMMIT PREPARED`` not confirmed is left
to :func:`recover` (a warning), as Citus does.

A commit over two shards costs four sequential round trips (five over more):
the decision row (whose transaction id names the PREPAREs), the PREPAREs at
once, the holder's COMMIT, the COMMIT PREPAREDs. A hand-written ``tpc_*``
commit costs two, and leaves nothing to decide a crash between them by.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shardq.errors import CommitTimeoutError, NotSupportedError, OperationalError, ShardError
from shardq.execute.deadline import ROLLBACK_TIMEOUT, bounded
from shardq.execute.driver import read_whole

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine, Mapping, Sequence

    from shardq.execute.driver import ShardConnection, ShardPool

__all__ = ["DECISIONS", "RECOVERY_WAIT", "Recovery", "begin_tagged", "recover", "two_phase_commit"]

log = logging.getLogger("shardq.twophase")

#: The table of commit decisions, on every shard that held one.
DECISIONS = "shardq_commit_decisions"
_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {DECISIONS} "
    "(txid text PRIMARY KEY, decided timestamptz NOT NULL DEFAULT now())"
)
_PREFIX = "shardq:"
_LIST_PREPARED = (
    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'shardq:%%'"
)
_T = TypeVar("_T")
# Sessions still inside a transaction of shardq's (see begin_tagged), and
# those running a PREPARE TRANSACTION of shardq's: a dead coordinator's PREPARE
# may still be on its way through such a session when recover() looks.
_LIST_SESSIONS = (
    "SELECT pid, application_name, state, query FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND (application_name LIKE '%%shardq:%%' "
    "OR (state = 'active' AND query LIKE 'PREPARE TRANSACTION ''shardq:%%'))"
)
_TAG = re.compile(r"shardq:([0-9a-f]{16})$")
_PREPARING = re.compile(r"PREPARE TRANSACTION '(shardq:[^']*)'")
#: How long :func:`recover` waits for the sessions of a transaction it rolled
#: back to end (a killed coordinator's, which their servers close once they
#: see the socket gone), before it terminates them.
RECOVERY_WAIT = 2.0
# The decision row, the holder transaction's id, and a durable commit: with
# synchronous_commit off, COMMIT returns before its WAL record is flushed, so a
# crash of the holder's server could lose a decision whose participants were
# already told to commit (PREPARE and COMMIT PREPARED always flush). Made
# 'local' for this one transaction, in the same round trip; a stronger setting
# ('on', 'remote_apply') is kept.
_DECIDE = (
    f"WITH done AS (DELETE FROM {DECISIONS} WHERE txid = ANY(%s)) "
    f"INSERT INTO {DECISIONS} (txid) VALUES (%s) RETURNING txid_current(), "
    "CASE WHEN current_setting('synchronous_commit') = 'off' "
    "THEN set_config('synchronous_commit', 'local', true) END"
)
# What COMMIT/ROLLBACK PREPARED answers when another session finishes the same
# transaction: "is busy" while it does, "does not exist" once it has. SQLSTATEs,
# not messages: the messages follow the server's lc_messages.
_BUSY = "55000"  # object_not_in_prerequisite_state
_UNDEFINED_OBJECT = "42704"
_INVALID_PARAMETER_VALUE = "22023"  # txid_status of an id the server has not given out
# A concurrent CREATE TABLE of the decisions table, met (depending on timing) on the
# catalog's unique index, on its row type's name, or on its own name.
_UNIQUE_VIOLATION = "23505"
_DUPLICATE_OBJECT = "42710"
_DUPLICATE_TABLE = "42P07"
_CREATED_MEANWHILE = (_UNIQUE_VIOLATION, _DUPLICATE_OBJECT, _DUPLICATE_TABLE)
# (id of the pool, shard, as holder): checked, and as holder the table made too.
_ready: set[tuple[int, str, bool]] = set()
# Decision rows no longer needed (every participant committed), per holder pool:
# deleted by the next decision on that holder, in the same statement, rather
# than by a round trip of their own at the end of each commit.
_spent: dict[int, list[str]] = {}


class _Silent(Exception):
    """A shard did not answer a step of the commit by its deadline."""

    def __init__(self, shard: str):
        super().__init__(f"shard {shard!r} did not answer in time")
        self.shard = shard


async def _timed(
    shard: str, deadline: float | None, timeout: float | None, step: Awaitable[_T]
) -> _T:
    """Await ``step`` on ``shard`` by ``deadline`` (and its grace); :class:`_Silent` after."""
    try:
        async with bounded(deadline, timeout):
            return await step
    except TimeoutError:
        raise _Silent(shard) from None


def _tag(txid: str) -> str:
    return f"shardq:{txid[:16]}"


def begin_tagged(txid: str) -> str:
    """``BEGIN`` on a PostgreSQL shard, naming transaction ``txid`` in the session's name.

    Until the transaction ends (committed, rolled back or prepared), the
    session's ``application_name`` ends in ``shardq:`` and the first 16
    characters of ``txid`` (what the session was called before is kept in
    front, cut to 39 characters: PostgreSQL shows 63). :func:`recover` reads
    it in ``pg_stat_activity``: a coordinator killed while its PREPAREs were
    on their way leaves sessions that may still prepare after recovery has
    looked, and so recovery waits for the sessions of a transaction it rolls
    back. Sent as one simple query with the ``BEGIN``: no round trip more.
    """
    return (
        "BEGIN; SELECT set_config('application_name', concat_ws(' ', "
        f"nullif(left(current_setting('application_name'), 39), ''), '{_tag(txid)}'), true)"
    )


def _gid(txid: str, participant: str, holder: str, holder_xid: int) -> str:
    gid = f"{_PREFIX}{txid}:{participant}:{holder}:{holder_xid}"
    if len(gid) >= 200 or "'" in gid:
        raise NotSupportedError(
            f"the shard names {participant!r} and {holder!r} make a two-phase commit id "
            "PostgreSQL does not take (200 characters at most, no quote)"
        )
    return gid


def _parse_gid(gid: str) -> tuple[str, str, str, int] | None:
    parts = gid[len(_PREFIX) :].split(":")
    if not gid.startswith(_PREFIX) or len(parts) != 4 or not parts[3].isdigit():
        return None
    return parts[0], parts[1], parts[2], int(parts[3])


def _fault(step: str) -> None:
    """Fault injection for the crash tests: die here when ``SHARDQ_CRASH_AT`` names ``step``.

    Never set outside tests; then this costs one dictionary look-up.
    """
    if os.environ.get("SHARDQ_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


async def _check_shard(
    shard: str, conn: ShardConnection, pools: Mapping[str, ShardPool], holder: bool
) -> None:
    """Check ``shard`` takes prepared transactions, and make the decisions table (once).

    On the transaction's own connection: a pool may have no other to lend.
    The table is made inside the holder's transaction, when missing.
    """
    pool = id(pools[shard])
    if (pool, shard, True) in _ready or (pool, shard, holder) in _ready:
        return
    rows = (await read_whole(conn, "SHOW max_prepared_transactions", None)).rows
    if not rows or str(rows[0][0]) == "0":
        raise NotSupportedError(
            f"shard {shard!r} has max_prepared_transactions = 0, so it cannot take part "
            "in a transaction that writes on several shards (two-phase commit); set it "
            "above 0 in its postgresql.conf (it takes a restart), for example to "
            "max_connections"
        )
    if holder:
        rows = (await read_whole(conn, f"SELECT to_regclass('{DECISIONS}')", None)).rows
        if not rows or rows[0][0] is None:
            await _create_decisions(conn)
    _ready.add((pool, shard, holder))


async def _create_decisions(conn: ShardConnection) -> None:
    """Make the decisions table in the holder's transaction, whoever else makes it too.

    ``CREATE TABLE IF NOT EXISTS`` does not guard against a concurrent
    creator: the second waits for the first's commit, then fails on the
    catalog's unique index or says its type or the table already exists (a
    holder's first commits, from several connections at once). Then the
    table is there, committed: the savepoint undoes the failed CREATE and the
    transaction goes on.
    """
    await read_whole(conn, "SAVEPOINT shardq_decisions", None, stream=False)
    try:
        await read_whole(conn, _CREATE, None, stream=False)
    except ShardError as exc:
        if exc.sqlstate not in _CREATED_MEANWHILE:
            raise
        await read_whole(conn, "ROLLBACK TO SAVEPOINT shardq_decisions", None, stream=False)
    await read_whole(conn, "RELEASE SAVEPOINT shardq_decisions", None, stream=False)


async def _together(
    calls: list[Coroutine[Any, Any, _T]],
) -> list[_T | BaseException]:
    """Await ``calls`` concurrently, each to its end: results, or the exceptions raised.

    Unlike a task group, a failure cancels none of the others: a PREPARE
    cancelled in flight may or may not have happened. One call is awaited
    as it is (no task).
    """
    if not calls:
        return []
    if len(calls) == 1:
        try:
            return [await calls[0]]
        except Exception as exc:
            return [exc]
    return await asyncio.gather(*calls, return_exceptions=True)


async def two_phase_commit(
    txid: str,
    participants: Sequence[tuple[str, ShardConnection]],
    pools: Mapping[str, ShardPool],
    *,
    deadline: float | None = None,
    timeout: float | None = None,
) -> None:
    """Commit the open transactions of ``participants`` atomically (see the module docstring).

    The first participant holds the decision. Every step waits by
    ``deadline`` (``time.monotonic()``; ``timeout`` is the bound it came
    from). Raises if the transaction was rolled back, or may have been: a
    :class:`~shardq.errors.CommitTimeoutError` says which. A failure after the
    decision (a ``COMMIT PREPARED`` that did not arrive, or not in time) is
    logged and left to :func:`recover`: the transaction is committed.
    """
    holder_name = participants[0][0]
    try:
        for i, (shard, conn) in enumerate(participants):
            await _timed(shard, deadline, timeout, _check_shard(shard, conn, pools, i == 0))
    except _Silent as silent:
        raise CommitTimeoutError(timeout or 0.0, (silent.shard,), committed=False) from None
    spent = _spent.setdefault(id(pools[holder_name]), [])
    # Taken, so that concurrent decisions never wait on each other's deletes;
    # given back if this decision is not made.
    deleting, spent[:] = spent[:], []
    try:
        prepared = await _decide(txid, participants, deleting, deadline, timeout)
    except BaseException:
        spent.extend(deleting)
        raise
    _fault("after-decision")

    async def commit(shard: str, conn: ShardConnection, gid: str) -> bool:
        """COMMIT PREPARED; whether it is known done (else the decision row stays)."""
        try:
            sql = f"COMMIT PREPARED '{gid}'"
            await _timed(shard, deadline, timeout, read_whole(conn, sql, None, stream=False))
        except Exception as exc:
            sqlstate = exc.sqlstate if isinstance(exc, ShardError) else None
            if sqlstate == _UNDEFINED_OBJECT:
                # A recover() running beside us committed it: after the decision
                # that is all it can do.
                return True
            if sqlstate != _BUSY:  # busy: a recover() is committing it now
                log.warning(
                    "two-phase commit %s: committed, but shard %r did not confirm (%s); "
                    "recover() finishes it",
                    txid,
                    shard,
                    "no answer in time" if isinstance(exc, _Silent) else type(exc).__name__,
                )
            return False
        return True

    # The first alone, then the others at once: the crash tests stop a
    # coordinator between two COMMIT PREPAREDs at the fault below.
    first, *rest = prepared
    done = await commit(*first)
    _fault("between-commits")
    for confirmed in await _together([commit(*part) for part in rest]):
        done = done and confirmed is True
    if done:
        # Its row is deleted with the holder's next decision (or by recover()).
        spent.append(txid)


async def _decide(
    txid: str,
    participants: Sequence[tuple[str, ShardConnection]],
    deleting: list[str],
    deadline: float | None,
    timeout: float | None,
) -> list[tuple[str, ShardConnection, str]]:
    """The decision row, the PREPAREs, the holder's COMMIT; return the prepared participants.

    The statement writing the decision row also deletes ``deleting``, the
    rows of earlier transactions every participant of which has committed.
    Each waits by ``deadline``.
    """
    holder_name, holder = participants[0]
    _fault("before-decision-row")
    try:
        decided = read_whole(holder, _DECIDE, (deleting, txid), stream=False)
        rows = (await _timed(holder_name, deadline, timeout, decided)).rows
    except _Silent as silent:
        raise CommitTimeoutError(timeout or 0.0, (silent.shard,), committed=False) from None
    holder_xid = int(rows[0][0])
    prepared: list[tuple[str, ShardConnection, str]] = []

    async def prepare(shard: str, conn: ShardConnection) -> None:
        gid = _gid(txid, shard, holder_name, holder_xid)
        _fault("before-prepare")
        sql = f"PREPARE TRANSACTION '{gid}'"
        await _timed(shard, deadline, timeout, read_whole(conn, sql, None, stream=False))
        prepared.append((shard, conn, gid))
        _fault("after-prepare")

    try:
        # All at once: nothing is decided until every one has answered.
        outcomes = await _together([prepare(shard, conn) for shard, conn in participants[1:]])
        late = tuple(o.shard for o in outcomes if isinstance(o, _Silent))
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, _Silent):
                raise outcome
        if late:
            raise CommitTimeoutError(
                timeout or 0.0,
                late,
                committed=False,
                hint="recover() rolls back a PREPARE that reached the shard unanswered",
            )
    except BaseException:
        # No decision: the holder rolls back, so do the prepared participants
        # (recover() finishes any this cannot reach).
        await _together([_roll_back_prepared(txid, *part) for part in prepared])
        raise
    _fault("before-decision")
    try:
        await _timed(
            holder_name, deadline, timeout, read_whole(holder, "COMMIT", None, stream=False)
        )
    except _Silent:
        raise CommitTimeoutError(
            timeout or 0.0,
            (holder_name,),
            committed=None,
            hint=f"shard {holder_name!r} holds the decision; recover() (shardq recover) "
            "finishes the transaction either way, as that commit turned out",
        ) from None
    except Exception as exc:
        raise OperationalError(
            f"the commit of a transaction over several shards may or may not have happened: "
            f"the commit on shard {holder_name!r}, which decides it, did not answer "
            f"({exc}); recover() (shardq recover) finishes it either way"
        ) from exc
    return prepared


async def _roll_back_prepared(txid: str, shard: str, conn: ShardConnection, gid: str) -> None:
    """ROLLBACK PREPARED in :data:`ROLLBACK_TIMEOUT`; one not done is left to recover()."""
    sql = f"ROLLBACK PREPARED '{gid}'"
    deadline = time.monotonic() + ROLLBACK_TIMEOUT
    try:
        await _timed(shard, deadline, ROLLBACK_TIMEOUT, read_whole(conn, sql, None, stream=False))
    except Exception:
        log.warning("two-phase commit %s: the rollback on %r is left to recover()", txid, shard)


@dataclass
class Recovery:
    """What :func:`recover` did, per shard: prepared transactions committed, rolled back, left."""

    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.committed)} committed, {len(self.rolled_back)} rolled back, "
            f"{len(self.in_progress)} left to the transactions committing them"
        )


async def _status(pool: ShardPool, txid: str, xid: int) -> str:
    """The fate of a holder's transaction: committed, aborted or in progress.

    ``txid_status`` tells whether the holder's transaction is still running.
    Whether it committed, the decision row tells, read after ``txid_status``
    answered (so a row our holder committed is seen): a transaction id that
    never reached the holder's disk before its server crashed is handed out
    again after the restart, and may then belong to another transaction,
    which may commit. The row is kept until every participant has committed,
    so it is there while any is left prepared.
    """
    async with pool.connection() as conn:
        try:
            rows = (await read_whole(conn, "SELECT txid_status(%s)", (xid,))).rows
        except ShardError as exc:
            if exc.sqlstate != _INVALID_PARAMETER_VALUE:
                raise
            # "transaction ID ... is in the future": the holder's server restarted
            # without a trace of it, so it never committed.
            return "aborted"
        status = rows[0][0] if rows else None
        if status in ("in progress", "aborted"):
            return str(status)
        # Committed, or too old for txid_status to know.
        rows = (await read_whole(conn, f"SELECT 1 FROM {DECISIONS} WHERE txid = %s", (txid,))).rows
        return "committed" if rows else "aborted"


async def recover(pools: Mapping[str, ShardPool], *, wait: float = RECOVERY_WAIT) -> Recovery:
    """Finish every two-phase commit shardq left prepared on the shards (see the module).

    A coordinator killed between two PREPAREs can leave one on its way
    through a participant's server after the first was answered: the holder's
    transaction aborts, recovery rolls back what is prepared, and that
    PREPARE lands afterwards, holding its locks until the next recovery. So
    the sessions of every transaction rolled back here that are still inside
    it (named by :func:`begin_tagged`, or seen running its PREPARE) are waited
    for, up to ``wait`` seconds, then terminated (their transaction's fate is
    decided: rolled back), and whatever they prepared meanwhile is rolled back
    too. Left out: a session of such a transaction that has not yet read its
    PREPARE while none of its siblings was prepared: nothing on the servers
    says yet which transaction it belongs to.
    """
    report = Recovery()
    aborted: set[str] = set()
    give_up = time.monotonic() + wait
    terminated = False
    while True:
        in_progress: list[str] = []
        doomed = await _recover_once(pools, report, in_progress, aborted)
        if not doomed:
            break
        if time.monotonic() < give_up:
            await asyncio.sleep(0.01)
            continue
        if terminated:  # not ended by a second wait after pg_terminate_backend
            in_progress += [f"{shard}: session {p}" for shard, ps in doomed.items() for p in ps]
            break
        await _terminate(pools, doomed)
        terminated = True
        give_up = time.monotonic() + wait
    report.in_progress = in_progress
    await _sweep(pools)
    return report


async def _recover_once(
    pools: Mapping[str, ShardPool],
    report: Recovery,
    in_progress: list[str],
    aborted: set[str],
) -> dict[str, list[int]]:
    """One look at every shard: finish what is prepared; the sessions still to wait for.

    ``aborted`` gathers the tags of transactions known rolled back, over the
    passes. Each shard's sessions are listed before its prepared
    transactions: a session that prepares in between is in both lists.
    """
    statuses: dict[tuple[str, str, int], str] = {}

    async def status(txid: str, holder: str, xid: int) -> str:
        if (txid, holder, xid) not in statuses:
            statuses[txid, holder, xid] = await _status(pools[holder], txid, xid)
        return statuses[txid, holder, xid]

    sessions: dict[str, list[tuple[int, str]]] = {}
    for shard, pool in pools.items():
        async with pool.connection() as conn:
            listed = (await read_whole(conn, _LIST_SESSIONS, None)).rows
            rows = (await read_whole(conn, _LIST_PREPARED, None)).rows
        for pid, name, state, query in listed:
            tag = _TAG.search(str(name or ""))
            preparing = _PREPARING.match(str(query or "")) if state == "active" else None
            parsed = _parse_gid(preparing.group(1)) if preparing else None
            if parsed is not None and parsed[2] in pools:
                txid, _participant, holder, xid = parsed
                if await status(txid, holder, xid) == "aborted":
                    aborted.add(_tag(txid))
                sessions.setdefault(shard, []).append((int(pid), _tag(txid)))
            elif tag is not None:
                sessions.setdefault(shard, []).append((int(pid), f"shardq:{tag.group(1)}"))
        for (gid,) in rows:
            parsed = _parse_gid(str(gid))
            if parsed is None:
                continue
            txid, _participant, holder, xid = parsed
            if holder not in pools:
                log.warning("prepared transaction %s names an unknown shard %r", gid, holder)
                continue
            decided = await status(txid, holder, xid)
            if decided == "in progress":
                in_progress.append(f"{shard}: {gid}")
                continue
            if decided == "aborted":
                aborted.add(_tag(txid))
            verb = "COMMIT" if decided == "committed" else "ROLLBACK"
            async with pool.connection() as conn:
                try:
                    await read_whole(conn, f"{verb} PREPARED '{gid}'", None, stream=False)
                except ShardError as exc:
                    if exc.sqlstate == _BUSY:  # its coordinator (or another recover) is on it
                        in_progress.append(f"{shard}: {gid}")
                        continue
                    if exc.sqlstate == _UNDEFINED_OBJECT:  # finished meanwhile: fine
                        continue
                    raise
            (report.committed if verb == "COMMIT" else report.rolled_back).append(f"{shard}: {gid}")
    doomed: dict[str, list[int]] = {}
    for shard, found in sessions.items():
        pids = sorted({pid for pid, tag in found if tag in aborted})
        if pids:
            doomed[shard] = pids
    return doomed


async def _terminate(pools: Mapping[str, ShardPool], doomed: Mapping[str, list[int]]) -> None:
    """End the sessions of rolled-back transactions that outlived the wait."""
    for shard, pids in doomed.items():
        log.warning(
            "recover: terminating %d session(s) on shard %r of a rolled-back transaction",
            len(pids),
            shard,
        )
        async with pools[shard].connection() as conn:
            await read_whole(
                conn, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,)
            )


async def _sweep(pools: Mapping[str, ShardPool]) -> None:
    """Delete the decision rows no prepared transaction needs any more.

    A row is committed after every participant of its transaction prepared,
    so a row read first, with no prepared transaction of its txid on any
    shard listed after, belongs to a transaction committed everywhere (its
    coordinator would have deleted it with its next decision, had it lived).
    """
    rows_of: dict[str, list[str]] = {}
    for shard, pool in pools.items():
        async with pool.connection() as conn:
            found = (await read_whole(conn, f"SELECT to_regclass('{DECISIONS}')", None)).rows
            if found and found[0][0] is not None:
                rows = (await read_whole(conn, f"SELECT txid FROM {DECISIONS}", None)).rows
                rows_of[shard] = [str(row[0]) for row in rows]
    if not any(rows_of.values()):
        return
    needed: set[str] = set()
    for pool in pools.values():
        async with pool.connection() as conn:
            listed = (await read_whole(conn, _LIST_PREPARED, None)).rows
        needed.update(parsed[0] for (gid,) in listed if (parsed := _parse_gid(str(gid))))
    for shard, txids in rows_of.items():
        gone = [txid for txid in txids if txid not in needed]
        if gone:
            async with pools[shard].connection() as conn:
                await read_whole(
                    conn, f"DELETE FROM {DECISIONS} WHERE txid = ANY(%s)", (gone,), stream=False
                )
