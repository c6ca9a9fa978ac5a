"""LazyPool's healing rules (see :mod:`shardq.execute.pool`), on stand-in connections.

The pool is generic over its connections; these stand-ins only record what
the pool did with them. The same rules on a restarted PostgreSQL server are
in ``tests/integration/test_healing.py``.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from dataclasses import dataclass, field
from itertools import count

from shardq.dsn import Secrets
from shardq.execute.drivers.postgres import socket_quiet
from shardq.execute.drivers.threaded import ThreadedConnection
from shardq.execute.pool import LazyPool

_numbers = count(1)


@dataclass(eq=False)
class Fake:
    number: int = field(default_factory=lambda: next(_numbers))
    alive: bool = True
    broken: bool = False
    closed: bool = False


def fake_pool(opened: list[Fake], max_size: int = 4, min_size: int = 0) -> LazyPool[Fake]:
    async def open_() -> Fake:
        await asyncio.sleep(0)
        conn = Fake()
        opened.append(conn)
        return conn

    async def close(conn: Fake) -> None:
        conn.closed = True

    return LazyPool(
        "s0",
        open=open_,
        close=close,
        reusable=lambda c: not c.broken,
        alive=lambda c: c.alive,
        broken=lambda c: c.broken,
        max_size=max_size,
        min_size=min_size,
    )


async def test_a_dead_idle_connection_is_closed_and_the_next_one_lent() -> None:
    opened: list[Fake] = []
    pool = fake_pool(opened, min_size=3)
    first = await pool.acquire()
    await pool.release(first)
    assert len(opened) == 3
    assert pool._idle[-1] is first
    first.alive = False  # the server ended it while it was idle

    lent = await pool.acquire()

    assert lent is not first
    assert lent in opened
    assert first.closed
    assert pool.discarded == 1
    assert pool.size == 2


async def test_when_every_idle_connection_is_dead_a_new_one_is_opened() -> None:
    opened: list[Fake] = []
    pool = fake_pool(opened, min_size=3)
    await pool.release(await pool.acquire())
    for conn in opened:
        conn.alive = False

    lent = await pool.acquire()

    assert lent is opened[-1]
    assert len(opened) == 4
    assert all(c.closed for c in opened[:3])
    assert pool.discarded == 3
    assert pool.size == 1


async def test_a_lost_connection_closes_the_idle_ones() -> None:
    opened: list[Fake] = []
    pool = fake_pool(opened, min_size=3)
    lost = await pool.acquire()
    idle = list(pool._idle)
    assert len(idle) == 2
    lost.broken = True  # its statement found the connection lost

    await pool.release(lost)

    assert pool._idle == []
    assert all(c.closed for c in [lost, *idle])
    assert pool.discarded == 2
    assert pool.size == 0


async def test_a_checkout_never_lends_what_a_lost_connection_closes() -> None:
    """A checkout closing a dead connection while a lost one's release closes the rest."""
    opened: list[Fake] = []
    pool = fake_pool(opened, max_size=5, min_size=4)
    lost = await pool.acquire()  # idle now: three
    dead = pool._idle[-1]
    dead.alive = False
    slow = asyncio.Event()
    close = pool._close

    async def slow_close(conn: Fake) -> None:
        if conn is dead:
            await slow.wait()
        await close(conn)

    pool._close = slow_close
    checkout = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)  # the checkout is closing the dead one
    lost.broken = True
    await pool.release(lost)  # closes the two others
    slow.set()
    lent = await checkout

    assert not lent.closed
    assert lent is opened[-1]
    assert len(opened) == 5


async def test_a_connection_closed_on_purpose_leaves_the_idle_ones() -> None:
    opened: list[Fake] = []
    pool = fake_pool(opened, min_size=3)
    conn = await pool.acquire()
    conn.alive = False
    pool._reusable = lambda c: c.alive  # not reusable (mid-transaction, say), not lost

    await pool.release(conn)

    assert conn.closed
    assert len(pool._idle) == 2
    assert pool.discarded == 0


async def test_a_warm_up_racing_with_checkouts_keeps_at_most_max_size() -> None:
    opened: list[Fake] = []
    pool = fake_pool(opened, max_size=4, min_size=4)

    async def use() -> None:
        conn = await pool.acquire()
        await asyncio.sleep(0)
        await pool.release(conn)

    await asyncio.gather(*(use() for _ in range(4)))

    assert len(opened) > 4  # the checkouts opened their own while the warm-up ran
    assert len(pool._idle) == pool.size == 4
    assert sum(c.closed for c in opened) == len(opened) - 4


def test_socket_quiet_tells_a_closed_peer() -> None:
    mine, theirs = socket.socketpair()
    try:
        assert socket_quiet(mine.fileno())
        theirs.sendall(b"E")  # a FATAL message's first byte
        assert not socket_quiet(mine.fileno())
        mine.recv(1)
        assert socket_quiet(mine.fileno())
        theirs.close()  # the end of the stream
        assert not socket_quiet(mine.fileno())
    finally:
        mine.close()
        theirs.close()


class _Psycopg2Like:
    """What psycopg2 says of a connection: ``closed`` 0, or 1 (closed) or 2 (lost)."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed = 1


async def test_a_threaded_connection_whose_driver_says_closed_is_not_lent() -> None:
    raw = _Psycopg2Like()
    conn = ThreadedConnection(
        "s0", Secrets(), lambda: raw, interrupt=None, commit_after=False, owned=False
    )
    await conn.open()
    try:
        assert conn.usable
        raw.closed = 2
        assert not conn.usable
    finally:
        await conn.close()


async def test_sqlite_connections_stay_usable() -> None:
    conn = ThreadedConnection(
        "s0",
        Secrets(),
        lambda: sqlite3.connect(":memory:", check_same_thread=False),
        interrupt=None,
        commit_after=False,
        owned=True,
    )
    await conn.open()
    try:
        assert conn.usable
    finally:
        await conn.close()
