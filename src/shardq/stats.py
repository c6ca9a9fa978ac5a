"""Statistics of a connection's statements, per shard and host: ``conn.stats()``.

Counted where the engine starts a statement on its shards: statements,
errors (a shard's), timeouts, reads started again on another host
(retries), and the time each took to start (to a shard's first answer; a
streamed result's rows come after). Percentiles are of the last
:data:`SAMPLES` starts per host. Pool figures (in use, open, waiting) are
read when asked.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from shardq.execute.driver import ShardPool

__all__ = ["SAMPLES", "HostStats", "Stats"]

#: Start times kept per host for the percentiles.
SAMPLES = 1024


@dataclass(frozen=True, slots=True)
class HostStats:
    """One host's figures (times in seconds; None when nothing was measured)."""

    shard: str
    host: str
    statements: int
    errors: int
    timeouts: int
    retries: int
    in_use: int | None
    open: int | None
    waiting: int | None
    p50: float | None
    p95: float | None
    p99: float | None


class _Counts:
    __slots__ = ("errors", "retries", "starts", "statements", "timeouts")

    def __init__(self) -> None:
        self.statements = 0
        self.errors = 0
        self.timeouts = 0
        self.retries = 0
        self.starts: deque[float] = deque(maxlen=SAMPLES)


class Stats:
    """The counts of one engine, per pool (a host of a shard)."""

    def __init__(self, labels: Mapping[int, tuple[str, str]]):
        # id(pool) -> (shard, host), host being "primary" or "replica N".
        self._labels = dict(labels)
        self._counts: dict[int, _Counts] = {key: _Counts() for key in labels}
        self._pools: dict[int, ShardPool] = {}

    def _unwrap(self, pool: ShardPool) -> ShardPool:
        # A transaction's view of a pool (and a cursor's of that) wraps it.
        while id(pool) not in self._counts and hasattr(pool, "_pool"):
            pool = pool._pool
        self._pools.setdefault(id(pool), pool)
        return pool

    def _of(self, pool: ShardPool) -> _Counts | None:
        return self._counts.get(id(self._unwrap(pool)))

    def host(self, pool: ShardPool) -> str:
        """``primary`` or ``replica N``: which host of its shard ``pool`` reaches."""
        label = self._labels.get(id(self._unwrap(pool)))
        return "primary" if label is None else label[1]

    def started(self, pools: Iterable[ShardPool], seconds: float) -> None:
        for pool in pools:
            counts = self._of(pool)
            if counts is not None:
                counts.statements += 1
                counts.starts.append(seconds)

    def failed(self, pool: ShardPool | None, *, timeout: bool = False) -> None:
        counts = None if pool is None else self._of(pool)
        if counts is not None:
            counts.statements += 1
            if timeout:
                counts.timeouts += 1
            else:
                counts.errors += 1

    def retried(self, pool: ShardPool) -> None:
        counts = self._of(pool)
        if counts is not None:
            counts.retries += 1

    def report(self) -> list[HostStats]:
        out = []
        for key, (shard, host) in self._labels.items():
            counts = self._counts[key]
            pool = self._pools.get(key)
            usage = getattr(pool, "usage", None)
            waiting = getattr(pool, "waiting", None)
            starts = sorted(counts.starts)
            cuts = (
                statistics.quantiles(starts, n=100, method="inclusive") if len(starts) > 1 else None
            )
            out.append(
                HostStats(
                    shard,
                    host,
                    counts.statements,
                    counts.errors,
                    counts.timeouts,
                    counts.retries,
                    None if usage is None else usage[0],
                    None if usage is None else usage[1],
                    waiting,
                    starts[0] if len(starts) == 1 else (cuts[49] if cuts else None),
                    starts[0] if len(starts) == 1 else (cuts[94] if cuts else None),
                    starts[0] if len(starts) == 1 else (cuts[98] if cuts else None),
                )
            )
        return out
