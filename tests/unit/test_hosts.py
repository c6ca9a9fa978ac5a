"""The choice of a host per read (shardq.execute.hosts), without servers.

The pools here are stand-ins: with no ``max_replica_lag`` a replica is never
asked anything, so the choice depends on the policy, the turns, the health
marks and the measured latencies only. Real standbys: tests/integration/test_replicas.py.
"""

from __future__ import annotations

from typing import Any

import pytest

import shardq
from shardq.execute import hosts as hosts_module
from shardq.execute.hosts import Hosts, host_failed


class Pool:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _hosts() -> tuple[Hosts, dict[str, Any]]:
    pools = {name: Pool(name) for name in ["p0", "r0a", "r0b", "p1"]}
    hosts = Hosts(
        {"s0": pools["p0"], "s1": pools["p1"]},  # type: ignore[dict-item]
        {"s0": [pools["r0a"], pools["r0b"]]},  # type: ignore[list-item]
    )
    return hosts, pools


async def _picks(hosts: Hosts, policy: str, count: int, shard: str = "s0") -> list[str]:
    return [str((await hosts.for_reads(policy, [shard]))[shard]) for _ in range(count)]


async def test_each_policy_picks_as_documented() -> None:
    hosts, _ = _hosts()
    assert await _picks(hosts, "primary", 2) == ["p0", "p0"]
    assert await _picks(hosts, "prefer-replica", 3) == ["r0a", "r0b", "r0a"]
    assert await _picks(hosts, "replica-only", 2) == ["r0a", "r0b"]
    assert await _picks(hosts, "round-robin", 4) == ["p0", "r0a", "r0b", "p0"]
    # A shard without replicas: its primary, except under replica-only.
    assert await _picks(hosts, "prefer-replica", 1, "s1") == ["p1"]
    with pytest.raises(shardq.ProgrammingError, match="'s1' has no replicas"):
        await hosts.for_reads("replica-only")  # a read of every shard


async def test_a_host_marked_down_is_skipped_until_its_backoff_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts, pools = _hosts()
    now = [1000.0]
    monkeypatch.setattr(hosts_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(hosts_module.random, "uniform", lambda a, b: 1.0)
    hosts.failed(pools["r0a"])
    assert hosts.is_down(pools["r0a"])
    assert await _picks(hosts, "prefer-replica", 3) == ["r0b", "r0b", "r0b"]
    now[0] += 0.6  # past the first backoff (0.5 s): tried again
    assert not hosts.is_down(pools["r0a"])
    hosts.failed(pools["r0a"])  # failed again: 1 s now
    now[0] += 0.6
    assert hosts.is_down(pools["r0a"])
    now[0] += 0.5
    assert not hosts.is_down(pools["r0a"])
    hosts.succeeded([pools["r0a"]])
    hosts.failed(pools["r0a"])  # a success reset the count: 0.5 s again
    now[0] += 0.6
    assert not hosts.is_down(pools["r0a"])
    for _ in range(20):
        hosts.failed(pools["r0b"])
    now[0] += 29.0
    assert hosts.is_down(pools["r0b"])  # at most 30 s
    now[0] += 1.5
    assert not hosts.is_down(pools["r0b"])
    # Every replica down: prefer-replica reads the primary, replica-only says why.
    hosts.failed(pools["r0a"])
    hosts.failed(pools["r0b"])
    assert await _picks(hosts, "prefer-replica", 1) == ["p0"]
    with pytest.raises(shardq.OperationalError, match="replica is down"):
        await hosts.for_reads("replica-only", ["s0"])


async def test_least_latency_measures_every_host_then_takes_the_fastest() -> None:
    hosts, pools = _hosts()
    seen = []
    for seconds in {"p0": 0.004, "r0a": 0.001, "r0b": 0.009}.values():
        pick = (await hosts.for_reads("least-latency", ["s0"]))["s0"]
        seen.append(str(pick))
        hosts.measured(pick, seconds)
    assert sorted(seen) == ["p0", "r0a", "r0b"]  # each measured once
    assert await _picks(hosts, "least-latency", 2) == ["r0a", "r0a"]
    for _ in range(20):  # r0a slows down: the moving average follows
        hosts.measured(pools["r0a"], 0.02)
    assert await _picks(hosts, "least-latency", 1) == ["p0"]
    hosts.failed(pools["p0"])
    assert await _picks(hosts, "least-latency", 1) == ["r0b"]


def test_only_a_host_going_or_gone_counts_as_failed() -> None:
    from shardq.errors import QueryTimeoutError, shard_error

    gone = shard_error("s0", shardq.OperationalError, "server closed the connection")
    assert host_failed(gone)
    assert host_failed(shard_error("s0", shardq.OperationalError, "x", sqlstate="08006"))
    assert host_failed(shard_error("s0", shardq.OperationalError, "x", sqlstate="57P01"))
    assert not host_failed(shard_error("s0", shardq.OperationalError, "x", sqlstate="57014"))
    assert not host_failed(shard_error("s0", shardq.ProgrammingError, "no such column"))
    assert not host_failed(QueryTimeoutError(1.0, ("s0",)))
    assert not host_failed(ValueError("x"))


def test_failover_conninfo_joins_hosts_that_share_credentials() -> None:
    pytest.importorskip("psycopg")
    from shardq.execute.drivers.postgres import failover_conninfo

    primary = "postgresql://app:pw@10.0.0.1:5432/shop"
    joined = failover_conninfo(primary, ["postgresql://app:pw@10.0.0.2:5433/shop"])
    assert joined is not None
    assert "host=10.0.0.1,10.0.0.2" in joined
    assert "port=5432,5433" in joined
    assert "target_session_attrs=read-write" in joined
    assert failover_conninfo(primary, []) is None
    # One conninfo has one user, password and database: hosts that differ get no failover.
    assert failover_conninfo(primary, ["postgresql://other:pw@10.0.0.2/shop"]) is None
    assert failover_conninfo(primary, ["postgresql://app:other@10.0.0.2/shop"]) is None
    assert failover_conninfo(primary, ["postgresql://app:pw@10.0.0.2/other"]) is None
    # What the user set is theirs: several hosts, or their own target_session_attrs.
    several = "host=10.0.0.1,10.0.0.3 user=app password=pw dbname=shop"
    assert failover_conninfo(several, ["postgresql://app:pw@10.0.0.2/shop"]) is None
    own = primary + "?target_session_attrs=any"
    assert failover_conninfo(own, ["postgresql://app:pw@10.0.0.2/shop"]) is None


async def test_reads_in_flight_when_a_host_is_marked_down_leave_the_mark_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outage fails every read then on the host at once: one failure, not many in a row.

    Seen in benchmarks/soak.py: the reads a killed standby had in flight took its
    backoff to 30 s within 0.1 s, and one begun before the kill that ended well
    marked the dead host up again.
    """
    hosts, pools = _hosts()
    replica = pools["r0a"]
    now = [1000.0]
    monkeypatch.setattr(hosts_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(hosts_module.random, "uniform", lambda a, b: 1.0)
    in_flight = now[0]  # reads begun before the outage was seen
    now[0] += 0.01
    hosts.failed(replica, in_flight)  # the first to fail marks the host down: 0.5 s
    for _ in range(20):
        hosts.failed(replica, in_flight)  # the others caught in the same outage
    hosts.succeeded([replica], in_flight)  # one that had its answer before the crash
    assert hosts.is_down(replica)
    now[0] += 0.6
    assert not hosts.is_down(replica)  # 0.5 s, not 30 s
    hosts.failed(replica, now[0])  # a read begun after the mark: a failure in a row, 1 s
    now[0] += 0.6
    assert hosts.is_down(replica)
    now[0] += 0.5
    assert not hosts.is_down(replica)
    # A read begun before the last mark failing after its backoff counts (as a new try's).
    hosts.failed(replica, in_flight)
    now[0] += 1.5
    assert hosts.is_down(replica)  # 2 s
    now[0] += 0.6
    assert not hosts.is_down(replica)
    hosts.succeeded([replica], now[0])  # a read begun after the mark: up again
    assert hosts._down_pools() == []
