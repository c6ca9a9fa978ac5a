"""The deadlines of :mod:`shardq.execute.deadline`, on a loop that runs late.

No server: a coroutine stands for psycopg's way with a cancelled statement
(the first cancel starts cancelling on the server, which a silent host makes
wait; the second gives up), and a blocking call makes the loop late.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shardq.execute.deadline import bounded, grace


async def _statement(started: list[float]) -> None:
    """A statement on a silent host, cancelled as psycopg does: 5 s of cancelling, then given up."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        started.append(time.monotonic())
        await asyncio.sleep(5)  # the cancel request, to a host that does not answer
        raise


@pytest.mark.parametrize("late", [0.0, 0.3])
async def test_the_grace_ends_the_wait_even_on_a_late_loop(late: float) -> None:
    """``late``: seconds the loop is blocked just before the deadline, past it and its grace."""
    timeout = 1.0
    deadline = time.monotonic() + timeout
    if late:
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + timeout - 0.01, time.sleep, late)
    cancelling: list[float] = []
    with pytest.raises(TimeoutError):
        async with bounded(deadline, timeout):
            await _statement(cancelling)
    ended = time.monotonic()
    assert cancelling, "the deadline's cancel came"
    # Ended once the grace was over: at most a few loop turns after it.
    assert ended - deadline <= grace(timeout) + late + 0.1, ended - deadline


async def test_nothing_is_left_scheduled_after_the_block() -> None:
    """A block done before its deadline leaves no timer that would cancel the task later."""
    async with bounded(time.monotonic() + 0.05, 0.05):
        pass
    await asyncio.sleep(0.2)  # both the deadline and its grace have passed: no cancel comes
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_no_deadline_bounds_nothing() -> None:
    async with bounded(None, None):
        await asyncio.sleep(0.01)
