"""Tests of the real-server fixtures themselves (tests/fixtures/servers.py)."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.servers import PgCluster, RedisServer

if TYPE_CHECKING:
    from pathlib import Path


_NO_RETRY = Retry(NoBackoff(), retries=0)


def _pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.postgres
def test_all_shard_clusters_answer_with_the_password(pg_clusters: list[PgCluster]) -> None:
    assert len(pg_clusters) == 4
    assert len({c.port for c in pg_clusters}) == 4
    assert len({c.datadir for c in pg_clusters}) == 4
    for cluster in pg_clusters:
        assert cluster.running
        assert cluster.dsn() == (
            f"postgresql://shardq:{cluster.password}@127.0.0.1:{cluster.port}/postgres"
        )
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert cluster.execute("select current_user, current_database()") == [
            ("shardq", "postgres")
        ]
        assert cluster.execute("show max_prepared_transactions") == [("50",)]


@pytest.mark.postgres
def test_reference_cluster_is_a_separate_server(
    pg_single: PgCluster, pg_clusters: list[PgCluster]
) -> None:
    assert pg_single.port not in {c.port for c in pg_clusters}
    assert pg_single.execute("select 1") == [(1,)]
    passwords = {c.password for c in [pg_single, *pg_clusters]}
    assert len(passwords) == 5
    assert all(p.startswith("pw-") for p in passwords)


@pytest.mark.postgres
def test_wrong_password_is_refused(pg_clusters: list[PgCluster]) -> None:
    cluster = pg_clusters[0]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=cluster.host,
            port=cluster.port,
            user=cluster.user,
            password="not-the-password",
            dbname="postgres",
            connect_timeout=10,
        )


@pytest.mark.postgres
def test_password_is_not_in_repr(pg_clusters: list[PgCluster]) -> None:
    cluster = pg_clusters[0]
    assert cluster.password not in repr(cluster)


@pytest.mark.postgres
def test_databases_can_be_created_and_dropped(pg_clusters: list[PgCluster]) -> None:
    cluster = pg_clusters[1]
    name = "shardq_fixture_check"
    cluster.drop_database(name)
    cluster.create_database(name)
    cluster.execute("create table t (x int); insert into t values (1), (2)", name)
    assert cluster.execute("select sum(x) from t", name) == [(2 + 1,)]
    assert cluster.execute("select x from t where x = %s", name, params=[2]) == [(2,)]

    # An open session and a prepared transaction would each block a plain DROP DATABASE.
    with (
        psycopg.connect(cluster.dsn(name), autocommit=True) as idle,
        psycopg.connect(cluster.dsn(name), autocommit=True) as preparer,
    ):
        preparer.execute("begin")
        preparer.execute("insert into t values (3)")
        preparer.execute("prepare transaction 'shardq_fixture_gid'")
        cluster.drop_database(name)
        assert idle.closed or idle.broken or _query_fails(idle)

    assert cluster.execute("select 1 from pg_database where datname = %s", params=[name]) == []
    assert cluster.execute("select gid from pg_prepared_xacts") == []
    cluster.drop_database(name)  # dropping what is gone is a no-op


def _query_fails(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    try:
        conn.execute("select 1")
    except psycopg.OperationalError:
        return True
    return False


@pytest.mark.redis
def test_redis_answers_ping_with_auth(redis_server: RedisServer) -> None:
    assert redis_server.url == (f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/0")
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        client.set("shardq-fixture-key", b"v")
        assert client.get("shardq-fixture-key") == b"v"
    finally:
        client.close()


@pytest.mark.redis
def test_redis_refuses_without_the_password(redis_server: RedisServer) -> None:
    # No retries: redis-py 8 retries authentication errors with backoff (about 4 s) by default.
    client = redis.Redis(host=redis_server.host, port=redis_server.port, retry=_NO_RETRY)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()
    client = redis.Redis(
        host=redis_server.host, port=redis_server.port, password="wrong", retry=_NO_RETRY
    )
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()
    assert redis_server.password not in repr(redis_server)


def _port_is_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


@pytest.mark.postgres
def test_pg_cluster_stop_ends_the_server_and_removes_its_files() -> None:
    cluster = PgCluster(name="lifecycle")
    cluster.start()
    try:
        pid, port, basedir = cluster.pid, cluster.port, cluster.basedir
        assert pid is not None
        assert basedir is not None
        assert basedir.is_dir()
        # The pid is the postmaster's own (not a runuser wrapper's).
        assert cluster.execute("select pg_backend_pid() <> %s", params=[pid]) == [(True,)]
        assert _postmaster_pid(cluster) == pid
    finally:
        cluster.stop()
    assert cluster.pid is None
    assert not cluster.running
    assert _pid_is_gone(pid)
    assert not basedir.exists()
    assert _port_is_closed(port)
    cluster.stop()  # stopping twice is harmless


def _postmaster_pid(cluster: PgCluster) -> int:
    datadir: Path | None = cluster.datadir
    assert datadir is not None
    return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])


@pytest.mark.redis
def test_redis_stop_ends_the_server_and_removes_its_files() -> None:
    server = RedisServer()
    server.start()
    try:
        pid, port, basedir = server.pid, server.port, server.basedir
        assert pid is not None
        assert basedir is not None
    finally:
        server.stop()
    assert _pid_is_gone(pid)
    assert not basedir.exists()
    assert _port_is_closed(port)
