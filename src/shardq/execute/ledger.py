"""Which row of a bulk load's source each shard received (see :mod:`shardq.execute.copy`).

A shard that refuses a row of a ``COPY`` names it by its number in what the
shard received; a load names it by its line in the source. The
:class:`Ledger` keeps what maps one to the other, about a byte per row,
without the rows.
"""

from __future__ import annotations

import array
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Ledger"]


class _Positions:
    """Growing source positions, about a byte each: a batch's, when not consecutive.

    Each is stored as its distance from the one before: one byte, or a
    marker and the full value when the gap is large.
    """

    __slots__ = ("_big", "_count", "_deltas")

    def __init__(self, positions: Sequence[int]) -> None:
        self._deltas = bytearray()
        self._big: dict[int, int] = {}
        deltas, big, last, count = self._deltas, self._big, -1, 0
        for position in positions:
            gap = position - last
            if gap < 255:
                deltas.append(gap)
            else:
                deltas.append(255)
                big[count] = position
            last = position
            count += 1
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self._count:
            raise IndexError(index)
        position = -1
        for i in range(index + 1):
            gap = self._deltas[i]
            position = self._big[i] if gap == 255 else position + gap
        return position


class Ledger:
    """Which row of the source each shard received, about a byte per row.

    A shard names a refused row by its number in what it received; this maps
    that number back to the row's position in the source without keeping the
    rows. Per batch it keeps the positions (a ``range`` when consecutive, as
    they mostly are) and each row's shard, as a byte (the shard's index), or
    nothing when every shard received every row (a reference table). Noted
    per batch in C (``bytes(map(...))``), searched only for an error.

    >>> ledger = Ledger(["a", "b"])
    >>> ledger.add(range(4), ["a", "b", "b", "a"])
    >>> ledger.add([10, 12, 400], ["b", "a", "b"])  # lines: gaps
    >>> ledger.add([401, 402], None)  # every shard
    >>> [ledger.nth("b", i) for i in range(6)], ledger.nth("a", 2), ledger.nth("a", 4)
    ([1, 2, 10, 400, 401, 402], 12, 402)
    >>> ledger.nth("b", 6) is None
    True
    """

    __slots__ = ("_batches", "_codes")

    def __init__(self, shards: Sequence[str]) -> None:
        self._codes = {name: code for code, name in enumerate(shards)}
        self._batches: list[tuple[range | _Positions, Sequence[int] | None]] = []

    def add(self, positions: Sequence[int], shards: Sequence[str] | None) -> None:
        """Note a batch's positions, and each row's shard (None: every shard, every row)."""
        kept: range | _Positions
        if isinstance(positions, range):
            kept = positions
        elif positions and positions[-1] - positions[0] == len(positions) - 1:
            kept = range(positions[0], positions[-1] + 1)  # they grow: so consecutive
        else:
            kept = _Positions(positions)
        codes: Sequence[int] | None = None
        if shards is not None:
            found = map(self._codes.__getitem__, shards)
            codes = bytes(found) if len(self._codes) <= 256 else array.array("I", found)
        self._batches.append((kept, codes))

    def nth(self, shard: str, index: int) -> int | None:
        """The position of the ``index``-th row (from 0) sent to ``shard``, if it was sent."""
        code = self._codes[shard]
        for positions, codes in self._batches:
            if index < 0:
                break
            if codes is None:
                if index < len(positions):
                    return positions[index]
                index -= len(positions)
                continue
            count = codes.count(code)
            if index < count:
                j = -1
                for _ in range(index + 1):
                    j = codes.index(code, j + 1)
                return positions[j]
            index -= count
        return None
