"""Health checks: every shard reachable, every declared table the same everywhere."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shardq.dsn import redact
from shardq.errors import Error
from shardq.execute.driver import read_whole
from shardq.execute.hosts import LAG_SQL

if TYPE_CHECKING:
    from shardq.engine import Engine
    from shardq.execute.driver import ShardPool

__all__ = ["CheckReport", "HostReport", "ShardReport", "check"]


@dataclass(frozen=True, slots=True)
class ShardReport:
    """What one shard answered (``error`` set if it could not be reached)."""

    shard: str
    version: str | None = None
    round_trip: float | None = None
    error: str | None = None
    tables: dict[str, list[tuple[str, str]] | None] = field(default_factory=dict)
    #: PostgreSQL's max_prepared_transactions (None: not PostgreSQL, or not known).
    prepared_transactions: int | None = None


@dataclass(frozen=True, slots=True)
class HostReport:
    """One host of a shard with replicas: its role, health, lag and pool.

    Attributes:
        shard: the shard.
        role: ``primary`` or ``replica N`` as configured.
        address: the host's DSN, without its password.
        in_recovery: whether the server is a standby now (None: not reached).
        lag: a standby's replay lag in seconds.
        down: marked down by a failed read, and not yet tried again.
        pool: connections lent, open, and at most open (None if not known).
        error: why the host could not be reached.
    """

    shard: str
    role: str
    address: str
    in_recovery: bool | None = None
    lag: float | None = None
    down: bool = False
    pool: tuple[int, int, int] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The shards' reports and every inconsistency found between them."""

    shards: tuple[ShardReport, ...]
    problems: tuple[str, ...]
    #: What works otherwise than it could, without being inconsistent.
    notes: tuple[str, ...] = ()
    #: Every host of the shards that have replicas (none when no shard has one).
    hosts: tuple[HostReport, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


async def _inspect(engine: Engine, shard: str) -> ShardReport:
    """Ask one shard, over one connection, for its version and the declared tables' columns."""
    pool = engine.pools[shard]
    tables: dict[str, list[tuple[str, str]] | None] = {}
    try:
        async with pool.connection() as conn:
            start = time.perf_counter()
            version = (await read_whole(conn, pool.info_sql, None)).rows
            round_trip = time.perf_counter() - start
            for name in engine.config.tables:
                columns = (await read_whole(conn, *pool.columns_query(name))).rows
                tables[name] = [(str(r[0]), str(r[1])) for r in columns] or None
            prepared = None
            if engine.config.dialect == "postgres":
                rows = (await read_whole(conn, "SHOW max_prepared_transactions", None)).rows
                prepared = int(rows[0][0]) if rows else None
    except Error as exc:
        return ShardReport(shard, error=str(exc))
    return ShardReport(
        shard,
        str(version[0][0]) if version else None,
        round_trip,
        tables=tables,
        prepared_transactions=prepared,
    )


def _problems(reports: tuple[ShardReport, ...], tables: list[str]) -> list[str]:
    problems = [f"shard {r.shard!r} is unreachable: {r.error}" for r in reports if r.error]
    reachable = [r for r in reports if r.error is None]
    for table in tables:
        missing = [r.shard for r in reachable if r.tables.get(table) is None]
        if missing:
            problems.append(f"table {table!r} does not exist on {', '.join(missing)}")
        shapes = {r.shard: r.tables[table] for r in reachable if r.tables.get(table) is not None}
        if len({tuple(cols or ()) for cols in shapes.values()}) > 1:
            first_shard, first = next(iter(shapes.items()))
            for shard, cols in shapes.items():
                if cols != first:
                    problems.append(
                        f"table {table!r} differs between {first_shard} {first} and {shard} {cols}"
                    )
    return problems


_HOST_SQL = f"SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN ({LAG_SQL}) END"


async def _host(engine: Engine, shard: str, role: str, dsn: str, pool: ShardPool) -> HostReport:
    usage = getattr(pool, "usage", None)
    down = engine.hosts.is_down(pool)
    try:
        async with pool.connection() as conn:
            rows = (await read_whole(conn, _HOST_SQL, None)).rows
    except Error as exc:
        return HostReport(shard, role, redact(dsn), down=down, pool=usage, error=str(exc))
    recovery, lag = rows[0] if rows else (None, None)
    return HostReport(
        shard,
        role,
        redact(dsn),
        None if recovery is None else bool(recovery),
        None if lag is None else float(lag),
        down,
        usage,
    )


async def _hosts(engine: Engine) -> list[HostReport]:
    """Every host of every shard, when some shard has replicas."""
    if not engine.hosts:
        return []
    asks = []
    for shard in engine.config.shards:
        asks.append(_host(engine, shard.name, "primary", shard.dsn, engine.pools[shard.name]))
        replicas = engine.hosts.replicas.get(shard.name, [])
        for i, (dsn, pool) in enumerate(zip(shard.replicas, replicas, strict=True), 1):
            asks.append(_host(engine, shard.name, f"replica {i}", dsn, pool))
    return list(await asyncio.gather(*asks))


async def check(engine: Engine) -> CheckReport:
    """Inspect every shard concurrently; compare the declared tables' columns and types."""
    reports = tuple(
        await asyncio.gather(*(_inspect(engine, name) for name in engine.config.shard_names))
    )
    hosts = tuple(await _hosts(engine))
    notes = tuple(
        f"shard {r.shard!r} has max_prepared_transactions = 0: a transaction writing on it "
        "and on another shard is refused (two-phase commit needs it above 0)"
        for r in reports
        if r.prepared_transactions == 0
    )
    notes += tuple(
        f"shard {h.shard!r}: {h.role} ({h.address}) is "
        + ("a standby, not the primary" if h.role == "primary" else "not a standby")
        for h in hosts
        if h.in_recovery is not None and h.in_recovery != (h.role != "primary")
    )
    problems = _problems(reports, list(engine.config.tables))
    problems += [
        f"shard {h.shard!r}: {h.role} is unreachable: {h.error}"
        for h in hosts
        if h.error and h.role != "primary"
    ]
    return CheckReport(reports, tuple(problems), notes, hosts)
