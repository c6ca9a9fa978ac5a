"""Hosts: a shard's primary and its replicas, and which one a read goes to.

A shard may list replicas (``replicas = ["postgresql://...", ...]`` beside
``dsn``), PostgreSQL standbys of its primary, each with a pool of its own.
Writes, transactions and everything shardq runs for itself (the catalog,
two-phase commit, recovery) go to the primary; a read outside a transaction
goes where the *read policy* says (the configuration's ``read_policy``, the
connection's, or the call's):

``primary`` (the default)
    the primary: every read sees every committed write.
``prefer-replica``
    the replicas in turn; the primary when the shard has none.
``replica-only``
    the replicas in turn; a shard without one is an error.
``round-robin``
    the primary and the replicas in turn.
``least-latency``
    the host, primary or replica, whose reads have started fastest lately
    (a moving average of the time to a read's first answer; a host not yet
    measured is tried first, so that every one is).

A replica answers with what it has replayed: a read on it may not see a
write committed on the primary a moment before (``primary`` and reads
inside a transaction always do). With ``max_replica_lag`` (seconds) in the
configuration, a replica further behind is passed over: its lag is asked
(``pg_last_xact_replay_timestamp()``, zero when it has replayed all it
received) at most once a second per replica, and a replica that cannot be
asked is passed over too until it is asked again. A read that finds no
replica fit goes to the primary, or, under ``replica-only``, fails saying
why.

Health, a circuit breaker per host: a host a read could not reach (refused,
lost, shut down: :func:`host_failed`) is marked down and skipped by the
policies that have another host to go to; it is tried again after a backoff
that doubles with each failure in a row (0.5 s, 1 s, 2 s, ... at most 30 s,
each with jitter), and is up again once a read succeeds there. Only reads
begun after the host was marked down move the mark: the reads an outage
catches in flight fail together (they are one failure, not many in a row),
and one that began before it and ends well says nothing of the host now. A
read that fails so before any row came back is started again on another
host of the same shard, each host at most once (the engine does it): it
fails only when its shard has no host left that it has not met; the primary
policy has no other host.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from typing import TYPE_CHECKING

from shardq.config import READ_POLICIES
from shardq.errors import Error, OperationalError, ProgrammingError, QueryTimeoutError, ShardError
from shardq.execute.driver import read_whole

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from shardq.execute.driver import ShardPool

__all__ = ["LAG_SQL", "READ_POLICIES", "Hosts", "check_policy", "host_failed"]

#: A standby's replay lag in seconds: 0 when it has replayed all it received.
LAG_SQL = (
    "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
)
#: Seconds a replica's measured lag is trusted.
LAG_TTL = 1.0
#: The weight of a new measure in a host's moving average of latency.
LATENCY_WEIGHT = 0.2
#: The first and the longest wait before a host marked down is tried again.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# SQLSTATEs of a host that is going or gone: connection exceptions (08...),
# admin_shutdown, crash_shutdown, cannot_connect_now.
_GONE = ("08", "57P01", "57P02", "57P03")


def host_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says its host could not serve (down, restarting, unreachable).

    Not a timeout (the host may be slow, and the call's time is spent) and
    not an error of the statement itself.
    """
    if not isinstance(exc, ShardError) or not isinstance(exc, OperationalError):
        return False
    if isinstance(exc, QueryTimeoutError):
        return False
    return exc.sqlstate is None or exc.sqlstate.startswith(_GONE)


def check_policy(policy: str) -> str:
    """``policy`` if it is a read policy; else a ProgrammingError naming the choices."""
    if policy not in READ_POLICIES:
        raise ProgrammingError(
            f"read_policy must be one of {', '.join(map(repr, READ_POLICIES))}, not {policy!r}"
        )
    return policy


class Hosts:
    """The pools of every shard's replicas, and the choice of one per read."""

    def __init__(
        self,
        primaries: Mapping[str, ShardPool],
        replicas: Mapping[str, Sequence[ShardPool]],
        max_lag: float | None = None,
    ):
        self.primaries = dict(primaries)
        self.replicas = {name: list(pools) for name, pools in replicas.items() if pools}
        self.max_lag = max_lag
        # One turn per shard and policy, so that reads spread evenly.
        self._turns: dict[tuple[str, str], Iterator[ShardPool]] = {}
        # Per replica pool: (when asked, its lag in seconds, or None if it could not be asked).
        self._lags: dict[int, tuple[float, float | None]] = {}
        # Per pool marked down: (failures in a row, when it may be tried again, when marked).
        self._down: dict[int, tuple[int, float, float]] = {}
        # Per pool: a moving average of the seconds its reads took to start.
        self._latency: dict[int, float] = {}

    def measured(self, pool: ShardPool, seconds: float) -> None:
        """Note how long a read took to start on ``pool`` (for ``least-latency``)."""
        known = self._latency.get(id(pool))
        self._latency[id(pool)] = (
            seconds if known is None else known + LATENCY_WEIGHT * (seconds - known)
        )

    def latency(self, pool: ShardPool) -> float | None:
        """The moving average of the time ``pool``'s reads took to start, if measured."""
        return self._latency.get(id(pool))

    # -- health

    def failed(self, pool: ShardPool, began: float | None = None) -> None:
        """Mark ``pool``'s host down, to be tried again after a backoff.

        ``began`` (``time.monotonic()``, default now): when the read that
        failed began. One begun before the host was last marked down was in
        flight when the outage was seen, and adds no failure in a row while
        the host is still marked down: else the reads one outage catches at
        once would stretch the backoff to its longest at once. (After the
        backoff it counts, as a new try's failure: the read is then retried
        elsewhere, not on the host it just failed on.)
        """
        now = time.monotonic()
        known = self._down.get(id(pool))
        if known is not None and began is not None and began < known[2] and now < known[1]:
            return
        failures = (0 if known is None else known[0]) + 1
        wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
        self._down[id(pool)] = (failures, now + wait * random.uniform(0.75, 1.0), now)

    def succeeded(self, pools: Iterable[ShardPool], began: float | None = None) -> None:
        """A read begun at ``began`` (default now) succeeded on ``pools``: their hosts are up.

        Not a host marked down after the read began: a statement started
        before a crash may still end well, and the host is down all the same.
        """
        if self._down:
            for pool in pools:
                known = self._down.get(id(pool))
                if known is not None and (began is None or began >= known[2]):
                    del self._down[id(pool)]

    def _down_pools(self) -> list[ShardPool]:
        """The pools marked down (due for another try or not): for tests and ``check``."""
        every = [*self.primaries.values(), *self.pools()]
        return [pool for pool in every if id(pool) in self._down]

    def is_down(self, pool: ShardPool) -> bool:
        """Whether ``pool``'s host is marked down and not yet due for another try."""
        down = self._down.get(id(pool))
        return down is not None and time.monotonic() < down[1]

    def __bool__(self) -> bool:
        """Whether any shard has a replica (else every read goes to the primaries)."""
        return bool(self.replicas)

    def pools(self) -> Iterator[ShardPool]:
        """Every replica pool (to close them)."""
        for pools in self.replicas.values():
            yield from pools

    async def for_reads(
        self, policy: str, shards: Iterable[str] | None = None
    ) -> Mapping[str, ShardPool]:
        """A pool per shard (of ``shards``, or every shard) for one read under ``policy``."""
        names = self.primaries if shards is None else shards
        if policy == "primary" or not self:
            if policy == "replica-only":
                raise self._none(next(iter(names)))
            return self.primaries
        return {name: await self._pick(name, policy) for name in names}

    async def _pick(self, shard: str, policy: str) -> ShardPool:
        replicas = self.replicas.get(shard)
        if not replicas:
            if policy == "replica-only":
                raise self._none(shard)
            return self.primaries[shard]
        if policy == "least-latency":
            return await self._fastest(shard, replicas)
        turn = self._turns.get((shard, policy))
        if turn is None:
            hosts = replicas if policy != "round-robin" else [self.primaries[shard], *replicas]
            turn = self._turns[(shard, policy)] = itertools.cycle(hosts)
        count = len(replicas) + (policy == "round-robin")
        for _ in range(count):
            pool = next(turn)
            if self.is_down(pool):
                continue
            if pool is self.primaries[shard] or await self._fit(pool):
                return pool
        if policy == "replica-only":
            raise OperationalError(
                f"shard {shard!r}: read_policy 'replica-only', but no replica is fit to read: "
                + "; ".join(self._why(pool) for pool in replicas)
            )
        return self.primaries[shard]

    async def _fastest(self, shard: str, replicas: Sequence[ShardPool]) -> ShardPool:
        primary = self.primaries[shard]
        usable = [primary] if not self.is_down(primary) else []
        usable += [r for r in replicas if not self.is_down(r) and await self._fit(r)]
        if not usable:
            return primary
        # Not yet measured first (0.0), then the fastest; ties to the primary.
        return min(usable, key=lambda pool: self._latency.get(id(pool), 0.0))

    async def _fit(self, pool: ShardPool) -> bool:
        """Whether a replica may serve a read: reachable and within ``max_lag``."""
        if self.max_lag is None:
            return True
        lag = await self._lag(pool)
        return lag is not None and lag <= self.max_lag

    async def _lag(self, pool: ShardPool) -> float | None:
        """A replica's lag in seconds (asked at most once per LAG_TTL); None if unreachable."""
        now = time.monotonic()
        known = self._lags.get(id(pool))
        if known is not None and now - known[0] < LAG_TTL:
            cached: float | None = known[1]
            return cached
        lag: float | None
        try:
            async with pool.connection() as conn:
                rows = (await read_whole(conn, LAG_SQL, None)).rows
            # NULL: nothing replayed yet while WAL waits, or not a standby at all.
            lag = float(rows[0][0]) if rows and rows[0][0] is not None else math.inf
        except Error:
            lag = None
        self._lags[id(pool)] = (now, lag)
        return lag

    def _why(self, pool: ShardPool) -> str:
        if self.is_down(pool):
            return "a replica is down (a read could not reach it)"
        known = self._lags.get(id(pool))
        lag = None if known is None else known[1]
        if lag is None:
            return "a replica could not be reached"
        return f"a replica lags {lag:.1f} s (max_replica_lag = {self.max_lag} s)"

    @staticmethod
    def _none(shard: str) -> ProgrammingError:
        return ProgrammingError(
            f"read_policy 'replica-only', but shard {shard!r} has no replicas in the configuration"
        )
