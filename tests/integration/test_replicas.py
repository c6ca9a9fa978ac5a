"""Replicas: reads spread over each shard's standbys by a read policy; the rest on primaries.

Two shards, each a primary with one streaming standby made by
``pg_basebackup -R``: what a production shard looks like. A read says which
host answered it with ``pg_is_in_recovery()``.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

import shardq
import shardq.execute.hosts
from tests.fixtures.servers import (
    PgCluster,
    ServerUnavailableError,
    _free_port,
    start_pg_clusters,
)
from tests.integration.test_cli import shardq_cli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

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


def _toml(config: dict[str, Any], path: Path) -> Path:
    """Write ``config`` (as :func:`_config` makes it) as a TOML file, for the command line."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in config.items() if k not in ("shards", "tables")]
    for shard in config["shards"]:
        lines += ["[[shards]]"] + [f"{k} = {json.dumps(v)}" for k, v in shard.items()]
    for table, fields in config["tables"].items():
        lines += [f"[tables.{table}]"] + [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


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
    path = _toml(config, tmp_path / "shardq.toml")
    printed = shardq_cli("check", "-c", str(path))
    assert printed.returncode == 0, printed.stderr
    assert "s0 replica 1 postgresql://shardq:***@127.0.0.1" in printed.stdout
    assert "standby, lag" in printed.stdout
    assert "writable" in printed.stdout
    assert hosts[0][0].password not in printed.stdout


def test_stats_probes_every_host_replicas_included(
    hosts: list[tuple[PgCluster, PgCluster]], tmp_path: Path
) -> None:
    path = _toml(_config(hosts), tmp_path / "shardq.toml")
    printed = shardq_cli("stats", "-c", str(path))
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0].split(" | ")[:4] == ["shard", "host     ", "address        ", "statements"]
    addresses = {
        ("s0", "primary"): hosts[0][0].port,
        ("s0", "replica 1"): hosts[0][1].port,
        ("s1", "primary"): hosts[1][0].port,
        ("s1", "replica 1"): hosts[1][1].port,
    }
    rows = [[cell.strip() for cell in line.split(" | ")] for line in lines[2:]]
    # The probe: SELECT 1 once on every host, in turn.
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (shard, host, f"127.0.0.1:{port}", "1") for (shard, host), port in addresses.items()
    ]
    assert all(r[4:7] == ["0", "0", "0"] for r in rows)  # errors, timeouts, retries
    assert "4 statements under read_policy 'round-robin', 4 ok, 0 failed" in printed.stderr
    assert hosts[0][0].password not in printed.stdout + printed.stderr
    # Given statements under a policy, several at once, as JSON: the pools were used.
    read = "SELECT count(*) FROM items"
    args = ["-n", "6", "-j", "3", "--read-policy", "replica-only", "--json", read]
    document = json.loads(shardq_cli("stats", "-c", str(path), *args).stdout)
    by_host = {(h["shard"], h["host"]): h for h in document["hosts"]}
    assert document["failed"] == 0
    assert [by_host[key]["statements"] for key in addresses] == [0, 6, 0, 6]
    assert all(by_host[(s, "replica 1")]["open"] >= 1 for s in ("s0", "s1"))
    assert by_host[("s0", "replica 1")]["address"] == f"127.0.0.1:{hosts[0][1].port}"


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


# A row that takes a while: the server makes a shard's rows over 1.5 s, so a read is
# still streaming when its host is killed, whatever the socket buffers hold.
SLOW_PAD = (
    "CREATE FUNCTION slow_pad(i integer) RETURNS text LANGUAGE sql VOLATILE "
    "AS $$ SELECT repeat('x', 500) FROM pg_sleep(0.01) $$"
)
VICTIMS = 300


async def test_a_replica_killed_mid_read(
    hosts: list[tuple[PgCluster, PgCluster]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads streaming from a replica when it is killed; reads after; reads much later.

    s0 has two replicas (the module's standby and one of this test's, the one
    killed), s1 one; reads are ``replica-only``. A read that has rows from the
    killed replica fails, naming s0: starting it again would repeat rows. A
    read that starts after the kill meets it at once and is started again on
    the other replica; the replica is marked down and later reads skip it
    (its backoff made longer than the test, so that they all find it down).
    """
    monkeypatch.setattr(shardq.execute.hosts, "BACKOFF_FIRST", 60.0)
    (p0, s0), (p1, _) = hosts
    for primary in (p0, p1):
        primary.execute(f"CREATE TABLE victims (id integer PRIMARY KEY); {SLOW_PAD}", DATABASE)
    killed = PgCluster(name="standby-killed")
    try:
        killed.start_standby(p0)
        config = _config(hosts, read_policy="replica-only")
        config["shards"][0]["replicas"].append(killed.dsn(DATABASE))
        for shard in config["shards"]:
            shard["pool_max_size"] = 16
        config["tables"] = {"victims": {"shard_key": "id"}}
        async with shardq.AsyncConnection(config, fetch_size=5) as conn:
            ids = list(range(1, VICTIMS + 1))
            await conn.execute(
                f"INSERT INTO victims (id) VALUES {', '.join(f'({i})' for i in ids)}"
            )
            _replayed([*hosts, (p0, killed)])
            on_s0 = {i for i in ids if conn.shard_for("victims", i) == "s0"}
            read = "SELECT id, inet_server_port() AS port, slow_pad(id) FROM victims ORDER BY id"
            quick = "SELECT id, inet_server_port() AS port FROM victims ORDER BY id"

            def exact(rows: list[tuple[Any, ...]]) -> None:
                assert [r[0] for r in rows] == ids
                assert all(r[2:] in [("x" * 500,), ()] for r in rows)
                # s0's rows from the replica that stayed; never from the killed one.
                assert {r[1] for r in rows if r[0] in on_s0} == {s0.port}

            async def started() -> tuple[shardq.AsyncCursor, list[tuple[Any, ...]]]:
                """A read with rows from s0 already received (so, from the host it is on)."""
                cur = await conn.cursor().execute(read)
                seen: list[tuple[Any, ...]] = []
                while not any(r[0] in on_s0 for r in seen):
                    batch = await cur.next_batch()
                    assert batch, "the read ended before any of s0's rows"
                    seen += batch
                return cur, seen

            # Six reads streaming: s0's replicas taken in turn, three on each.
            streaming = await asyncio.gather(*(started() for _ in range(6)))
            on_killed = [
                next(r[1] for r in seen if r[0] in on_s0) == killed.port for _, seen in streaming
            ]
            assert on_killed.count(True) == 3
            killed.halt("immediate")

            async def finish(cur: shardq.AsyncCursor, seen: list[Any]) -> list[Any] | Exception:
                try:
                    return seen + await cur.fetchall()
                except shardq.Error as exc:
                    return exc

            async def fresh(sql: str = read) -> list[Any] | Exception:
                try:
                    return list(await (await conn.execute(sql)).fetchall())
                except shardq.Error as exc:
                    return exc

            # The streaming reads finish while four new ones start.
            outcomes = await asyncio.gather(
                *(finish(cur, seen) for cur, seen in streaming), *(fresh() for _ in range(4))
            )
            failed = [o for o in outcomes if isinstance(o, Exception)]
            print(
                f"\n{len(failed)} of {len(outcomes)} reads failed, mid-stream on the killed host:"
            )
            for exc in failed:
                print(f"  {type(exc).__name__}: {exc}")
            assert len(failed) == 3
            for outcome, was_on_killed in zip(outcomes, on_killed + [False] * 4, strict=True):
                if was_on_killed:
                    assert isinstance(outcome, shardq.ShardError), outcome
                    assert outcome.shard == "s0"
                    assert "'s0'" in str(outcome)
                    assert killed.password not in str(outcome)
                else:
                    assert isinstance(outcome, list), outcome
                    exact(outcome)
            engine = conn._engine
            down = engine.hosts.replicas["s0"][1]
            assert engine.hosts.is_down(down)
            by_host = {(h.shard, h.host): h for h in conn.stats()}
            killed_stats = by_host[("s0", "replica 2")]
            # The new reads that met it (at least the first; those after it skip it).
            assert 1 <= killed_stats.retries == killed_stats.errors <= 2
            # Later reads skip the down replica, and all succeed.
            before = killed_stats.statements
            later = await asyncio.gather(*(fresh(quick) for _ in range(4)))
            for outcome in later:
                assert isinstance(outcome, list), outcome
                exact(outcome)
            assert {(h.shard, h.host): h for h in conn.stats()}[
                ("s0", "replica 2")
            ].statements == before
        # The command line, in a process of its own, finds it down as well: its probe's
        # read there is started again on another host, and succeeds.
        printed = shardq_cli("stats", "-c", str(_toml(config, tmp_path / "shardq.toml")))
        assert printed.returncode == 0, printed.stderr
        row = next(line for line in printed.stdout.splitlines() if f":{killed.port} " in line)
        cells = [cell.strip() for cell in row.split(" | ")]
        assert cells[:7] == ["s0", "replica 2", f"127.0.0.1:{killed.port}", "1", "1", "0", "1"]
        assert "6 statements under read_policy 'round-robin', 6 ok, 0 failed" in printed.stderr
    finally:
        killed.stop()
        for primary in (p0, p1):
            primary.execute("DROP TABLE victims; DROP FUNCTION slow_pad", DATABASE)


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "partial"])
def test_a_read_goes_on_past_every_host_that_cannot_serve(
    hosts: list[tuple[PgCluster, PgCluster]], monkeypatch: pytest.MonkeyPatch, partial: bool
) -> None:
    """Two replicas of s0 gone (nothing listens on their ports): its primary still serves.

    The read meets one, then the other, each marked down, and is started on
    the primary: a read fails only when no host of its shard is left to try.
    A partial read (allow_partial) does the same for the shard its scatter
    left out, started again alone, and leaves nothing out, with no warning.
    (The backoff outlasts the test: the later reads find both down.)
    """
    monkeypatch.setattr(shardq.execute.hosts, "BACKOFF_FIRST", 60.0)
    config = _config(hosts, read_policy="prefer-replica")
    gone = [f"postgresql://shardq:pw@127.0.0.1:{_free_port()}/{DATABASE}" for _ in range(2)]
    config["shards"][0]["replicas"] = gone
    with shardq.connect(config, allow_partial=partial) as conn, warnings.catch_warnings():
        warnings.simplefilter("error", shardq.PartialResultWarning)
        cur = conn.execute("SELECT count(*) FROM items")
        assert cur.fetchall() == [(0,)]
        assert cur.missing_shards == ()
        engine = conn.async_connection._engine
        assert all(engine.hosts.is_down(pool) for pool in engine.hosts.replicas["s0"])
        by_host = {(h.shard, h.host): h for h in conn.stats()}
        for host in ("replica 1", "replica 2"):
            assert (by_host[("s0", host)].errors, by_host[("s0", host)].retries) == (1, 1)
        assert by_host[("s0", "primary")].statements == 1
        # The next reads skip both; none fails.
        for _ in range(3):
            assert conn.execute("SELECT count(*) FROM items").fetchall() == [(0,)]
        assert {(h.shard, h.host): h.statements for h in conn.stats()}[("s0", "primary")] == 4
        with pytest.raises(shardq.OperationalError, match="replica is down"):
            conn.execute("SELECT count(*) FROM items", read_policy="replica-only")


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
