"""Rows received per shard, on one line of a terminal, while a long read runs.

``shardq query`` and ``shardq shell`` show it on standard error when that
is a terminal, and only for a read still running after :data:`DELAY`
seconds, so a quick answer never flashes a line; the line is erased when
the read ends (its rows, an error or Ctrl-C). The counts come from the
engine's hook (:attr:`shardq.engine.Engine.on_rows`), called on the
connection's event loop thread for every batch a shard's rows are taken
in; with no display the hook is None and costs a test per batch.

>>> import io
>>> line = Progress(io.StringIO(), clock=iter([0.0, 1.0, 1.0]).__next__)
>>> line.rows("s0", 500); line.rows("s1", 1200)
>>> line.text()
'rows received: 1,700  s0 500 · s1 1,200'
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, TextIO, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from shardq.dbapi import Connection

__all__ = ["DELAY", "Progress", "showing", "until_first"]

T = TypeVar("T")

DELAY = 0.5  #: seconds a read runs before its progress shows
_EVERY = 0.1  #: seconds between redraws


class Progress:
    """The counts and their line; :meth:`rows` is the engine's hook."""

    def __init__(
        self,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        columns: int = 80,
    ):
        self.stream = stream
        self.counts: dict[str, int] = {}
        self._clock = clock
        self._columns = columns
        self._start = clock()
        self._drawn = -_EVERY
        self._shown = False
        self._lock = threading.Lock()  # drawn on the loop thread, erased on the caller's

    def text(self) -> str:
        """The line as it would be drawn, cut to the terminal's width."""
        total = sum(self.counts.values())
        shards = " · ".join(f"{name} {count:,}" for name, count in self.counts.items())
        line = f"rows received: {total:,}  {shards}"
        return line if len(line) < self._columns else line[: self._columns - 2] + "…"

    def rows(self, shard: str, count: int) -> None:
        """Count ``count`` more rows from ``shard``; redraw at most ten times a second."""
        self.counts[shard] = self.counts.get(shard, 0) + count
        now = self._clock()
        if now - self._start < DELAY or now - self._drawn < _EVERY:
            return
        self._drawn = now
        with self._lock:
            self.stream.write("\r\x1b[K" + self.text())
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Erase the line, if it was drawn."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False


@contextlib.contextmanager
def showing(conn: Connection, stream: TextIO, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """Show the progress of the reads run inside on ``stream``, if ``enabled``.

    Yields a function that stops the display early (before the rows print on
    the same terminal); leaving the block stops it too.
    """
    if not enabled:
        yield lambda: None
        return
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    columns = columns or 80  # a terminal that does not know its size says 0
    line = Progress(stream, columns=columns)
    engine = conn.async_connection._engine

    def stop() -> None:
        engine.on_rows = None
        line.clear()

    engine.on_rows = line.rows
    try:
        yield stop
    finally:
        stop()


def until_first(rows: Iterable[T], stop: Callable[[], None]) -> Iterator[T]:
    """``rows``, calling ``stop`` before the first one is handed on (or at their end).

    >>> list(until_first([1, 2], lambda: print("stop")))
    stop
    [1, 2]
    """
    iterator = iter(rows)
    for row in iterator:
        stop()
        yield row
        yield from iterator
        return
    stop()
