"""A shard that stops answering at each step of a commit: the commit returns in time, and says so.

Every shard is reached through a :class:`~tests.fixtures.proxy.Proxy`; the
shard is blackholed right before the step under test, by the fault hook the
crash tests kill at (``twophase._fault``, here replaced so that it switches a
proxy instead), or before ``commit()`` for a plain one-shard commit. Each
case checks:

* the call returns within its bound (``commit_timeout``, or the statement's
  ``timeout=``) plus 10 % and :data:`~tests.integration.test_faults.SLACK`;
* the outcome is the documented one (:class:`shardq.CommitTimeoutError`'s
  ``committed``: False rolled back, None unknown; a two-phase commit whose
  decision was made succeeds, a warning naming ``recover()``);
* once the proxy is healed, ``recover()`` leaves no prepared transaction,
  the rows are there exactly once or not at all, as the outcome says, and no
  session of shardq's is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from shardq.execute import twophase
from tests.fixtures.proxy import Fault, proxied_config
from tests.fixtures.shards import PG_DATABASE, TABLES
from tests.integration.test_faults import APP, SLACK, _assert_no_sessions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.fixtures.proxy import Proxy
    from tests.fixtures.servers import PgCluster

TABLE = "commit_faults"
#: The configuration's commit_timeout in these tests (seconds).
COMMIT_TIMEOUT = 1.0


@pytest.fixture
def clusters(pg_dataset: list[PgCluster]) -> list[PgCluster]:
    """The dataset's clusters, with an empty table of this module's own on each."""
    for cluster in pg_dataset:
        cluster.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, note text); TRUNCATE {TABLE}",
            PG_DATABASE,
        )
    return pg_dataset


@pytest.fixture
async def conn(
    clusters: list[PgCluster], proxies: list[Proxy]
) -> AsyncIterator[shardq.AsyncConnection]:
    config = proxied_config(
        clusters, proxies, PG_DATABASE, APP, {**TABLES, TABLE: {"shard_key": "id"}}
    )
    config["commit_timeout"] = COMMIT_TIMEOUT
    connection = await shardq.connect_async(config)
    try:
        yield connection
    finally:
        for proxy in proxies:
            proxy.heal()
        await connection.close()
    _assert_no_sessions(clusters)
    assert _prepared(clusters) == []


def _prepared(clusters: list[PgCluster]) -> list[tuple[Any, ...]]:
    return [
        row for c in clusters for row in c.execute("SELECT gid FROM pg_prepared_xacts", PG_DATABASE)
    ]


def _stored(clusters: list[PgCluster]) -> list[tuple[Any, ...]]:
    """Every row of the table, read on the servers directly (a row twice would show twice)."""
    return sorted(
        r for c in clusters for r in c.execute(f"SELECT id, note FROM {TABLE}", PG_DATABASE)
    )


def _keys(conn: shardq.AsyncConnection, shards: list[str]) -> list[int]:
    """One key of the table on each of ``shards``, in that order."""
    found: dict[str, int] = {}
    for key in range(1, 1000):
        found.setdefault(conn.shard_for(TABLE, key), key)
    return [found[shard] for shard in shards]


def _within(elapsed: float, timeout: float) -> None:
    assert elapsed <= timeout * 1.1 + SLACK, f"{elapsed:.3f} s for timeout={timeout}"


def _silence_at(monkeypatch: pytest.MonkeyPatch, step: str, proxy: Proxy) -> list[str]:
    """Blackhole ``proxy`` when the two-phase commit reaches ``step``; return the steps seen."""
    seen: list[str] = []

    def fault(at: str) -> None:
        seen.append(at)
        if at == step:
            proxy.set(Fault.blackhole())

    monkeypatch.setattr(twophase, "_fault", fault)
    return seen


async def _write(conn: shardq.AsyncConnection, keys: list[int]) -> None:
    for key in keys:
        await conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", [key, f"row {key}"])


async def _recover(conn: shardq.AsyncConnection) -> shardq.aio.Recovery:
    """recover() until nothing is left in progress (a closed holder session ends in a moment)."""
    deadline = time.monotonic() + 10
    while True:
        report = await conn.recover()
        if not report.in_progress or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.05)


async def test_one_shard_commit_unanswered_is_unknown(
    conn: shardq.AsyncConnection, clusters: list[PgCluster], proxies: list[Proxy]
) -> None:
    """A plain COMMIT the shard never answers: given up in time, the outcome said to be unknown."""
    (key,) = _keys(conn, ["s1"])
    conn.autocommit = False
    await _write(conn, [key])
    proxies[1].set(Fault.blackhole())
    started = time.monotonic()
    with pytest.raises(shardq.CommitTimeoutError) as caught:
        await conn.commit()
    _within(time.monotonic() - started, COMMIT_TIMEOUT)
    assert caught.value.committed is None
    assert caught.value.shards == ("s1",)
    assert "may or may not have committed" in str(caught.value)
    assert "s1" in str(caught.value)
    assert not conn.in_transaction
    proxies[1].heal()
    # Unknown to the client; here the COMMIT never reached the server, whose
    # session ended when the client closed it: rolled back.
    _assert_no_transaction_left(clusters)
    assert _stored(clusters) == []
    conn.autocommit = True
    await _write(conn, [key])  # the connection is usable, and the key free
    assert _stored(clusters) == [(key, f"row {key}")]


def _assert_no_transaction_left(clusters: list[PgCluster]) -> None:
    """No session of shardq's is in a transaction any more (the given-up one has ended)."""
    deadline = time.monotonic() + 5
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'"
    while time.monotonic() < deadline:
        if not sum(c.execute(sql, "postgres", [APP])[0][0] for c in clusters):
            return
        time.sleep(0.05)
    raise AssertionError("a session is still in a transaction")


@pytest.mark.parametrize("step", ["before-decision-row", "before-prepare"])
async def test_two_phase_commit_unanswered_before_the_decision_rolls_back(
    conn: shardq.AsyncConnection,
    clusters: list[PgCluster],
    proxies: list[Proxy],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """The decision row or a PREPARE unanswered: all rolled back, recover() clears the rest."""
    keys = _keys(conn, ["s0", "s1", "s2"])  # s0 holds the decision
    silent = 0 if step == "before-decision-row" else 2
    seen = _silence_at(monkeypatch, step, proxies[silent])
    conn.autocommit = False
    await _write(conn, keys)
    started = time.monotonic()
    with pytest.raises(shardq.CommitTimeoutError) as caught:
        await conn.commit()
    _within(time.monotonic() - started, COMMIT_TIMEOUT)
    assert step in seen
    assert caught.value.committed is False
    assert caught.value.shards == (f"s{silent}",)
    assert "rolled back" in str(caught.value)
    proxies[silent].heal()
    report = await _recover(conn)
    assert report.committed == []
    assert _prepared(clusters) == []
    assert _stored(clusters) == []


async def test_holder_commit_unanswered_is_unknown_until_recover(
    conn: shardq.AsyncConnection,
    clusters: list[PgCluster],
    proxies: list[Proxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decision holder's COMMIT unanswered: unknown; recover() finishes as it turned out."""
    keys = _keys(conn, ["s0", "s3"])
    seen = _silence_at(monkeypatch, "before-decision", proxies[0])
    conn.autocommit = False
    await _write(conn, keys)
    started = time.monotonic()
    with pytest.raises(shardq.CommitTimeoutError) as caught:
        await conn.commit()
    _within(time.monotonic() - started, COMMIT_TIMEOUT)
    assert "before-decision" in seen
    assert caught.value.committed is None
    assert caught.value.shards == ("s0",)
    assert "recover()" in str(caught.value)
    assert len(_prepared(clusters)) == 1  # s3's, waiting for the decision
    proxies[0].heal()
    # The COMMIT never reached s0, whose session then ended: the decision is
    # "aborted", and recover() rolls s3 back.
    report = await _recover(conn)
    assert (len(report.rolled_back), report.committed, report.in_progress) == (1, [], [])
    assert _prepared(clusters) == []
    assert _stored(clusters) == []


async def test_commit_prepared_unanswered_is_committed(
    conn: shardq.AsyncConnection,
    clusters: list[PgCluster],
    proxies: list[Proxy],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A COMMIT PREPARED unanswered after the decision: committed; recover() finishes the shard."""
    keys = _keys(conn, ["s0", "s1", "s2"])
    seen = _silence_at(monkeypatch, "after-decision", proxies[1])
    conn.autocommit = False
    await _write(conn, keys)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="shardq.twophase"):
        await conn.commit()  # committed: no error
    _within(time.monotonic() - started, COMMIT_TIMEOUT)
    assert "after-decision" in seen
    assert any("committed, but shard 's1' did not confirm" in m for m in caplog.messages)
    proxies[1].heal()
    report = await _recover(conn)
    assert report.committed  # s1's, at least (s2 had no time left when s1 took it all)
    assert report.rolled_back == report.in_progress == []
    assert _prepared(clusters) == []
    assert _stored(clusters) == sorted((key, f"row {key}") for key in keys)
    cur = await conn.execute(f"SELECT count(*) FROM {TABLE}")
    assert await cur.fetchall() == [(len(keys),)]


@pytest.mark.parametrize("step", ["before-prepare", "before-decision"])
async def test_a_statement_timeout_bounds_its_own_commit(
    conn: shardq.AsyncConnection,
    clusters: list[PgCluster],
    proxies: list[Proxy],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """A write on several shards outside a transaction: ``timeout=`` bounds it, commit too."""
    keys = _keys(conn, ["s0", "s1"])
    await _write(conn, keys)
    silent = 1 if step == "before-prepare" else 0
    _silence_at(monkeypatch, step, proxies[silent])
    timeout = 0.5  # below commit_timeout: the statement's own bound applies
    started = time.monotonic()
    with pytest.raises(shardq.CommitTimeoutError) as caught:
        await conn.execute(
            f"UPDATE {TABLE} SET note = 'changed' WHERE id IN (%s, %s)", keys, timeout=timeout
        )
    _within(time.monotonic() - started, timeout)
    assert caught.value.shards == (f"s{silent}",)
    assert caught.value.committed is (False if step == "before-prepare" else None)
    proxies[silent].heal()
    await _recover(conn)
    assert _prepared(clusters) == []
    assert _stored(clusters) == sorted((key, f"row {key}") for key in keys)


async def test_a_moving_update_on_a_silent_shard_times_out_in_time(
    conn: shardq.AsyncConnection, clusters: list[PgCluster], proxies: list[Proxy]
) -> None:
    """An UPDATE that moves a row between shards keeps ``timeout=`` with its grace."""
    old, new = _keys(conn, ["s1", "s2"])
    await _write(conn, [old])
    proxies[2].set(Fault.blackhole())
    timeout = 1.0
    started = time.monotonic()
    with pytest.raises(shardq.QueryTimeoutError) as caught:
        await conn.execute(f"UPDATE {TABLE} SET id = %s WHERE id = %s", [new, old], timeout=timeout)
    _within(time.monotonic() - started, timeout)
    assert "s2" in caught.value.shards
    proxies[2].heal()
    assert _stored(clusters) == [(old, f"row {old}")]
    await conn.execute(f"UPDATE {TABLE} SET id = %s WHERE id = %s", [new, old], timeout=5.0)
    assert _stored(clusters) == [(new, f"row {old}")]
