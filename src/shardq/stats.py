"""Statistics of a connection's statements, per shard and host: ``conn.stats()``.

Counted where the engine starts a statement on its shards: statements,
errors (a shard's), timeouts, reads started again on another host
(retries), and the time each took to start (to a shard's first answer; a
streamed result's rows come after). Percentiles are of the last
:data:`SAMPLES` starts per host. Pool figures (in use, open, waiting) are
read when asked. :func:`format_table` lays a report out for a person
(``shardq stats``, ``shardq query --stats``).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from shardq.execute.driver import ShardPool

__all__ = ["SAMPLES", "HostStats", "Stats", "format_table"]

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
        """Every host's figures, a shard's hosts together (its primary, then its replicas)."""
        shards: dict[str, int] = {}  # each shard's place: where it first appears
        for shard, _ in self._labels.values():
            shards.setdefault(shard, len(shards))
        order = sorted(self._labels.items(), key=lambda item: shards[item[1][0]])
        out = []
        for key, (shard, host) in order:
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


#: The columns of :func:`format_table`, after shard, host (and address).
_COLUMNS = (
    "statements", "errors", "timeouts", "retries",
    "p50 ms", "p95 ms", "p99 ms", "in use", "open", "waiting",
)  # fmt: skip


def _cells(row: HostStats) -> list[str]:
    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.2f}"

    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    return [
        str(row.statements), str(row.errors), str(row.timeouts), str(row.retries),
        ms(row.p50), ms(row.p95), ms(row.p99),
        count(row.in_use), count(row.open), count(row.waiting),
    ]  # fmt: skip


def format_table(
    rows: Sequence[HostStats], addresses: Mapping[tuple[str, str], str] | None = None
) -> str:
    """``rows`` (``conn.stats()``) as an aligned table, one line per shard and host.

    Times are in milliseconds; ``-`` is a figure not measured (no start yet,
    or a pool that does not count). ``addresses`` maps (shard, host) to where
    the host is (:func:`shardq.dsn.address`: host and port, no credentials),
    shown in a column of its own.

    >>> row = HostStats("s0", "replica 1", 3, 1, 0, 1, 0, 2, 0, 0.0012, 0.004, 0.0051)
    >>> print(format_table([row], {("s0", "replica 1"): "db2:5432"}))
    shard | host      | address  | statements | errors | timeouts | retries | p50 ms | p95 ms | p99 ms | in use | open | waiting
    ------+-----------+----------+------------+--------+----------+---------+--------+--------+--------+--------+------+--------
    s0    | replica 1 | db2:5432 |          3 |      1 |        0 |       1 |   1.20 |   4.00 |   5.10 |      0 |    2 |       0
    """  # noqa: E501
    names = ["shard", "host", *(["address"] if addresses is not None else []), *_COLUMNS]
    lines = []
    for row in rows:
        where = [] if addresses is None else [addresses.get((row.shard, row.host), "")]
        lines.append([row.shard, row.host, *where, *_cells(row)])
    widths = [max(len(line[i]) for line in [names, *lines]) for i in range(len(names))]
    left = len(names) - len(_COLUMNS)  # text columns, the rest are numbers

    def join(cells: Sequence[str]) -> str:
        return " | ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    head = " | ".join(name.ljust(width) for name, width in zip(names, widths, strict=True))
    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([head.rstrip(), rule, *(join(line) for line in lines)])
