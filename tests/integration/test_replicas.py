"""Replicas: reads spread over each shard's standbys by a read policy; the rest on primaries.

Two shards, each a primary with one streaming standby made by
``pg_basebackup -R``: what a production shard looks like. A read says which
host answered it with ``pg_is_in_recovery()``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.fixtures.servers import PgCluster, ServerUnavailableError, start_pg_clusters
from tests.integration.test_cli import shardq_cli

if TYPE_CHECKING:
    from collections.abc import Iterator

DATABASE = "replicas"
SCHEMA = "CREATE TABLE items (id integer PRIMARY KEY, v text)"


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[tuple[PgCluster, PgCluster]]]:
    try:
        primaries = start_pg_clusters(2, prefix="primary")
    except ServerUnavailableError as exc:
        pytest.fail(str(exc))
    standbys = [PgCluster(name=f"standby{i}") for i in range(2)]
    try:
        for primary in primaries:
            primary.create_database(DATABASE)
            primary.execute(SCHEMA, DATABASE)
        with ThreadPoolExecutor(max_workers=2) as pool:
            pairs = zip(standbys, primaries, strict=True)
            for future in [pool.submit(s.start_standby, p) for s, p in pairs]:
                future.result()
        yield list(zip(primaries, standbys, strict=True))
    finally:
        for cluster in [*standbys, *primaries]:
            cluster.stop()


def _config(hosts: list[tuple[PgCluster, PgCluster]], **extra: Any) -> dict[str, Any]:
    return {
        "dialect": "postgres",
        "shards": [
            {"name": f"s{i}", "dsn": p.dsn(DATABASE), "replicas": [s.dsn(DATABASE)]}
            for i, (p, s) in enumerate(hosts)
        ],
        "tables": {"items": {"shard_key": "id"}},
        **extra,
    }


def _replayed(hosts: list[tuple[PgCluster, PgCluster]]) -> None:
    """Wait until every standby has replayed what its primary wrote so far."""
    for primary, standby in hosts:
        (lsn,) = primary.execute("SELECT pg_current_wal_lsn()::text", DATABASE)[0]
        deadline = time.monotonic() + 20
        while True:
            (done,) = standby.execute(
                f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", DATABASE
            )[0]
            if done:
                break
            assert time.monotonic() < deadline, f"{standby.name} did not replay {lsn}"
            time.sleep(0.05)


def _in_recovery(conn: shardq.Connection, **kw: Any) -> bool:
    """Whether the host that answered a read is a standby (shards taken in turn)."""
    return bool(conn.execute("SELECT pg_is_in_recovery()", **kw).fetchall()[0][0])


def test_reads_go_where_the_policy_says_and_writes_to_the_primary(
    hosts: list[tuple[PgCluster, PgCluster]],
) -> None:
    with shardq.connect(_config(hosts)) as conn:
        assert conn.read_policy == "primary"
        conn.execute("DELETE FROM items")
        assert _in_recovery(conn) is False
        assert _in_recovery(conn, read_policy="replica-only") is True
        assert _in_recovery(conn, read_policy="prefer-replica") is True
        seen = {_in_recovery(conn, read_policy="round-robin") for _ in range(6)}
        assert seen == {True, False}
        # The connection's policy: reads on the standbys, writes on the primaries.
        conn.read_policy = "replica-only"
        cur = conn.cursor()
        cur.executemany(
            "INSERT INTO items (id, v) VALUES (%s, %s)", [(i, f"v{i}") for i in range(1, 101)]
        )
        conn.execute("INSERT INTO items (id, v) VALUES (%s, %s), (%s, %s)", [101, "a", 102, "b"])
        _replayed(hosts)
        assert conn.execute("SELECT count(*), sum(id) FROM items").fetchall() == [(102, 5253)]
        ordered = conn.execute("SELECT id FROM items ORDER BY id DESC LIMIT 3").fetchall()
        assert ordered == [(102,), (101,), (100,)]
        # A transaction reads its own writes: on the primaries, whatever the policy.
        with conn.transaction():
            conn.execute("UPDATE items SET v = 'changed' WHERE id = 7")
            assert conn.execute("SELECT v FROM items WHERE id = 7").fetchall() == [("changed",)]
            assert conn.execute("SELECT pg_is_in_recovery()").fetchall() == [(False,)]
        conn.execute("DELETE FROM items")


def test_policies_are_checked(hosts: list[tuple[PgCluster, PgCluster]]) -> None:
    with pytest.raises(shardq.ConfigError, match="read_policy"):
        shardq.connect(_config(hosts, read_policy="nearest"))
    with shardq.connect(_config(hosts, read_policy="prefer-replica")) as conn:
        assert conn.read_policy == "prefer-replica"
        assert conn.execute("SELECT pg_is_in_recovery()").fetchall() == [(True,)]
        with pytest.raises(shardq.ProgrammingError, match="read_policy must be one of"):
            conn.read_policy = "fastest"
    config = _config(hosts)
    for shard in config["shards"]:
        del shard["replicas"]
    with shardq.connect(config) as conn:
        # No replicas: prefer-replica reads the primaries; replica-only says what is missing.
        assert conn.execute(
            "SELECT pg_is_in_recovery()", read_policy="prefer-replica"
        ).fetchall() == [(False,)]
        with pytest.raises(shardq.ProgrammingError, match="no replicas"):
            conn.execute("SELECT 1", read_policy="replica-only")
    sqlite = {"shards": [{"name": "a", "dsn": "a.db", "replicas": ["b.db"]}], "tables": {}}
    with pytest.raises(shardq.ConfigError, match="SQLite shard has none"):
        shardq.load_config(sqlite)


def test_a_replica_lagging_beyond_max_replica_lag_is_passed_over(
    hosts: list[tuple[PgCluster, PgCluster]],
) -> None:
    standbys = [s for _, s in hosts]
    _replayed(hosts)  # (a standby behind on the last test's writes would lag already)
    with shardq.connect(_config(hosts, max_replica_lag=0.5)) as conn:
        assert _in_recovery(conn, read_policy="prefer-replica") is True
        for standby in standbys:
            standby.execute("SELECT pg_wal_replay_pause()", DATABASE)
        try:
            conn.execute("INSERT INTO items (id, v) VALUES (1, 'late'), (2, 'late')")
            time.sleep(1.6)  # past max_replica_lag, and past the lag's 1 s cache
            # Lagging: prefer-replica reads the primaries (and sees the rows) ...
            policy = {"read_policy": "prefer-replica"}
            assert _in_recovery(conn, **policy) is False
            assert conn.execute("SELECT count(*) FROM items", **policy).fetchall() == [(2,)]
            # ... and replica-only says why it cannot read.
            with pytest.raises(shardq.OperationalError, match=r"lags [\d.]+ s"):
                conn.execute("SELECT count(*) FROM items", read_policy="replica-only")
        finally:
            for standby in standbys:
                standby.execute("SELECT pg_wal_replay_resume()", DATABASE)
        _replayed(hosts)
        time.sleep(1.1)  # the lag asked again
        assert _in_recovery(conn, read_policy="prefer-replica") is True
        assert conn.execute(
            "SELECT count(*) FROM items", read_policy="replica-only"
        ).fetchall() == [(2,)]
        conn.execute("DELETE FROM items")


def test_read_your_writes_reads_a_written_shard_on_its_primary(
    hosts: list[tuple[PgCluster, PgCluster]],
) -> None:
    standbys = [s for _, s in hosts]
    config = _config(hosts, read_policy="prefer-replica")
    for standby in standbys:
        standby.execute("SELECT pg_wal_replay_pause()", DATABASE)
    try:
        with (
            shardq.connect({**config, "read_your_writes": True}) as writer,
            shardq.connect(config) as other,
        ):
            assert writer.read_your_writes
            writer.execute("INSERT INTO items (id, v) VALUES (1, 'mine')")
            home = writer.shard_for("items", 1)
            # The writer reads it back (its primary); another connection reads the
            # paused standby, which has not replayed it yet.
            assert writer.execute("SELECT v FROM items WHERE id = 1").fetchall() == [("mine",)]
            assert other.execute("SELECT v FROM items WHERE id = 1").fetchall() == []
            # Only the written shard: the other is still read on its standby.
            untouched = next(n for n in ("s0", "s1") if n != home)
            by_host = {(h.shard, h.host): h.statements for h in writer.stats()}
            assert by_host[(home, "primary")] >= 2
            before = by_host[(untouched, "replica 1")]
            writer.execute("SELECT count(*) FROM items").fetchall()
            after = {(h.shard, h.host): h.statements for h in writer.stats()}
            assert after[(untouched, "replica 1")] == before + 1
            writer.execute("DELETE FROM items")
    finally:
        for standby in standbys:
            standby.execute("SELECT pg_wal_replay_resume()", DATABASE)
        _replayed(hosts)


def test_check_shows_every_host(hosts: list[tuple[PgCluster, PgCluster]], tmp_path: Any) -> None:
    config = _config(hosts)
    with shardq.connect(config) as conn:
        conn.execute("SELECT count(*) FROM items", read_policy="replica-only").fetchall()
        report = conn.check()
    assert report.ok, report.problems
    roles = [(h.shard, h.role, h.in_recovery) for h in report.hosts]
    assert roles == [
        ("s0", "primary", False),
        ("s0", "replica 1", True),
        ("s1", "primary", False),
        ("s1", "replica 1", True),
    ]
    assert all(h.lag is not None and h.lag >= 0 for h in report.hosts if h.in_recovery)
    assert all(h.pool is not None and h.pool[2] == 4 for h in report.hosts)
    assert all(hosts[0][0].password not in h.address for h in report.hosts)
    path = tmp_path / "shardq.toml"
    lines = ['dialect = "postgres"']
    for shard in config["shards"]:
        lines += ["[[shards]]"] + [f"{k} = {json.dumps(v)}" for k, v in shard.items()]
    lines += ["[tables.items]", 'shard_key = "id"']
    path.write_text("\n".join(lines) + "\n")
    printed = shardq_cli("check", "-c", str(path))
    assert printed.returncode == 0, printed.stderr
    assert "s0 replica 1 postgresql://shardq:***@127.0.0.1" in printed.stdout
    assert "standby, lag" in printed.stdout
    assert "writable" in printed.stdout
    assert hosts[0][0].password not in printed.stdout


def test_a_replica_that_goes_down_is_skipped_and_taken_back(
    hosts: list[tuple[PgCluster, PgCluster]],
) -> None:
    """Last in the module: it stops a standby (and starts it again)."""
    standby = hosts[0][1]
    with shardq.connect(_config(hosts, read_policy="prefer-replica")) as conn:
        conn.execute("INSERT INTO items (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
        _replayed(hosts)
        engine = conn.async_connection._engine
        replica = engine.hosts.replicas["s0"][0]
        assert conn.execute("SELECT count(*) FROM items").fetchall() == [(4,)]
        standby.halt("fast")
        try:
            # The first read meets the stopped standby, marks it down, and is started
            # again on s0's primary; the next ones skip it. None fails.
            failures = 0
            for _ in range(20):
                try:
                    assert conn.execute("SELECT count(*) FROM items").fetchall() == [(4,)]
                except shardq.OperationalError:
                    failures += 1
            assert failures == 0
            assert engine.hosts.is_down(replica)
            by_host = {(h.shard, h.host): h for h in conn.stats()}
            assert by_host[("s0", "replica 1")].errors == 1
            assert by_host[("s0", "replica 1")].retries == 1
            assert by_host[("s0", "primary")].statements >= 20  # it took the reads over
            assert by_host[("s1", "replica 1")].statements >= 21
            assert by_host[("s1", "replica 1")].errors == 0
            p50, p99 = by_host[("s1", "replica 1")].p50, by_host[("s1", "replica 1")].p99
            assert p50 is not None
            assert p99 is not None
            assert 0 < p50 <= p99 < 5
            with pytest.raises(shardq.OperationalError, match="replica is down"):
                conn.execute("SELECT count(*) FROM items", read_policy="replica-only")
        finally:
            standby.resume()
        # Tried again after its backoff: reads reach it and it is up again.
        deadline = time.monotonic() + 40
        while engine.hosts.is_down(replica) or replica in engine.hosts._down_pools():
            assert time.monotonic() < deadline, "the standby was not taken back"
            assert conn.execute("SELECT count(*) FROM items").fetchall() == [(4,)]
            time.sleep(0.2)
        assert conn.execute(
            "SELECT count(*) FROM items", read_policy="replica-only"
        ).fetchall() == [(4,)]
        conn.execute("DELETE FROM items")


def test_a_promoted_replica_is_found_as_the_new_primary() -> None:
    """Failover outside shardq: the primary stops, its standby is promoted (as Patroni does)."""
    try:
        (primary,) = start_pg_clusters(1, prefix="failover")
    except ServerUnavailableError as exc:
        pytest.fail(str(exc))
    standby = PgCluster(name="failover-standby")
    try:
        primary.create_database(DATABASE)
        primary.execute(SCHEMA, DATABASE)
        standby.start_standby(primary)
        config = _config([(primary, standby)])
        with shardq.connect(config) as conn:
            insert = "INSERT INTO items (id, v) VALUES (%s, %s)"
            for i in range(1, 11):
                conn.execute(insert, [i, "before"])
            primary.halt("fast")  # its last WAL reaches the standby before it stops
            standby.execute("SELECT pg_promote()", DATABASE)
            # The same connection: writes and reads reach the promoted standby. The
            # pooled connections to the old primary are replaced at checkout.
            for i in range(11, 21):
                conn.execute(insert, [i, "after"])
            assert conn.execute("SELECT count(*), sum(id) FROM items").fetchall() == [(20, 210)]
            assert conn.execute("SELECT pg_is_in_recovery()").fetchall() == [(False,)]
    finally:
        standby.stop()
        primary.stop()
