"""The fault-injecting proxy itself: each fault does what it is named, to plain psycopg.

The fault tests (``test_faults.py``) trust these behaviours; here each is
checked with a psycopg connection or, where the difference is on the wire (an
RST against a FIN, a byte count), with a raw socket speaking the start of the
PostgreSQL protocol.
"""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import time
from typing import TYPE_CHECKING

import psycopg
import pytest

from tests.fixtures.proxy import Fault, proxied_dsn
from tests.fixtures.shards import PG_DATABASE

if TYPE_CHECKING:
    from tests.fixtures.proxy import Proxy
    from tests.fixtures.servers import PgCluster

APP = "shardq-proxy-test"


def _dsn(clusters: list[PgCluster], proxies: list[Proxy]) -> str:
    return proxied_dsn(clusters[0], proxies[0], PG_DATABASE, APP)


def _startup(proxy: Proxy, user: str) -> socket.socket:
    """A raw connection through ``proxy`` that has sent a StartupMessage."""
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{PG_DATABASE}\0\0".encode()
    sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    return sock


def _received(sock: socket.socket) -> bytes:
    """Every byte until the other side closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _answers_within(conn: psycopg.Connection, seconds: float) -> bool:
    """Whether the server answers ``SELECT 1`` within ``seconds`` (sent without waiting)."""
    conn.pgconn.send_query(b"SELECT 1")
    conn.pgconn.flush()
    readable, _, _ = select.select([conn.fileno()], [], [], seconds)
    return bool(readable)


def _wait_closed(proxy: Proxy) -> None:
    deadline = time.monotonic() + 5
    while proxy.open_links and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.open_links == 0


def test_passing_forwards(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    with psycopg.connect(_dsn(pg_dataset, proxies)) as conn:
        assert conn.execute("SELECT count(*) > 0 FROM items").fetchone() == (True,)
        assert proxies[0].open_links == 1
    _wait_closed(proxies[0])  # the client's close reaches the server


def test_delay_adds_latency_both_ways(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    with psycopg.connect(_dsn(pg_dataset, proxies)) as conn:
        started = time.monotonic()
        conn.execute("SELECT 1")
        plain = time.monotonic() - started
        proxies[0].set(Fault.delayed(0.2))
        started = time.monotonic()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        delayed = time.monotonic() - started
    assert delayed >= 0.4 > plain  # one chunk each way, each 0.2 s late


def test_blackhole_open_connection(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    conn = psycopg.connect(_dsn(pg_dataset, proxies))
    try:
        proxies[0].set(Fault.blackhole())
        assert not _answers_within(conn, 0.5)
        assert not conn.closed  # accepted and read, never answered nor closed
    finally:
        conn.close()
    _wait_closed(proxies[0])


async def test_blackhole_new_connection(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    proxies[0].set(Fault.blackhole())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await psycopg.AsyncConnection.connect(_dsn(pg_dataset, proxies))
    sock = _startup(proxies[0], pg_dataset[0].user)
    with sock:
        readable, _, _ = select.select([sock], [], [], 0.3)
        assert not readable  # no reply, and no close either
    assert proxies[0].accepted == 2


def test_reset_open_and_new(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    conn = psycopg.connect(_dsn(pg_dataset, proxies))
    with conn:
        proxies[0].set(Fault.reset())
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert time.monotonic() - started < 1
    # On connect, send or receive: the RST comes at once.
    with pytest.raises(ConnectionResetError), _startup(proxies[0], pg_dataset[0].user) as sock:
        _received(sock)


def test_drop_open_and_new(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    conn = psycopg.connect(_dsn(pg_dataset, proxies))
    with conn:
        proxies[0].set(Fault.drop())
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    # A clean close (FIN), not a reset (a client that had sent bytes the proxy
    # had not read yet would get an RST from the kernel: so this one sends none).
    with socket.create_connection((proxies[0].host, proxies[0].port), timeout=5) as sock:
        assert _received(sock) == b""


def test_cut_after_bytes(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    with _startup(proxies[0], pg_dataset[0].user) as sock:
        whole = _received_some(sock)
    assert len(whole) > 10  # the server's first answer (its authentication request)
    proxies[0].set(Fault.cut(10))
    with _startup(proxies[0], pg_dataset[0].user) as sock:
        assert _received(sock) == whole[:10]
    proxies[0].heal()
    conn = psycopg.connect(_dsn(pg_dataset, proxies))
    with conn:
        proxies[0].set(Fault.cut(1000))  # an open connection: 1000 bytes from now
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT repeat('x', 100000)").fetchall()


def _received_some(sock: socket.socket) -> bytes:
    """What the server sends first (it then waits for the client)."""
    data = sock.recv(65536)
    while select.select([sock], [], [], 0.2)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_slow_close(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    conn = psycopg.connect(_dsn(pg_dataset, proxies))
    with conn:
        proxies[0].set(Fault.slow_close(0.5))
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # no answer, then the connection closes
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3


def test_fault_for_new_connections_only(pg_dataset: list[PgCluster], proxies: list[Proxy]) -> None:
    with psycopg.connect(_dsn(pg_dataset, proxies)) as conn:
        proxies[0].set(Fault.blackhole(), existing=False)
        assert conn.execute("SELECT 3").fetchone() == (3,)  # open before: still forwarded
        with _startup(proxies[0], pg_dataset[0].user) as sock:
            assert not select.select([sock], [], [], 0.3)[0]
        proxies[0].heal()
        assert conn.execute("SELECT 4").fetchone() == (4,)
