"""ORDER BY: sort keys with the database's NULL placement, and the k-way merge.

Every shard returns its rows already sorted; the merge interleaves them
without holding more than one batch per shard. It works batch by batch: of
the rows at hand, every row that sorts no later than the smallest "last row"
of the shards' current batches can be emitted, because no shard has anything
earlier left to send. Those rows are sorted together (Timsort merges the
sorted runs in linear time) and emitted; the shard whose batch ran out sends
its next one.

Text is compared by code point, which is PostgreSQL's order under the ``C``
and ``C.UTF-8`` collations and SQLite's ``BINARY``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shardq.errors import NotSupportedError
from shardq.merge import Fetch, Merger, Rows

if TYPE_CHECKING:
    from shardq.merge.steps import SortKey

__all__ = ["kway", "sort_key", "sqlite_value"]

KeyFn = Callable[[Sequence[Any]], Any]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(collation: str) -> Callable[[str], str]:
    if collation == "nocase":  # SQLite folds ASCII letters only
        return lambda text: text.translate(_ASCII_LOWER)
    if collation == "rtrim":  # trailing spaces are ignored
        return lambda text: text.rstrip(" ")
    return lambda text: text


def sqlite_value(collation: str) -> Callable[[Any], tuple[int, Any]]:
    """A key ordering values as SQLite does: NULL, numbers, text (collated), blobs.

    Equal keys are values SQLite's DISTINCT and GROUP BY take as one.

    >>> key = sqlite_value("nocase")
    >>> sorted([b"x", "b", 2.5, "A", None, 1], key=key)
    [None, 1, 2.5, 'A', 'b', b'x']
    >>> key("ABC") == key("abc"), key("É") == key("é"), key(1) == key(1.0)
    (True, False, True)
    """
    fold = _fold(collation)

    def key(value: Any) -> tuple[int, Any]:
        if value is None:
            return (0, 0)
        if isinstance(value, str):
            return (2, fold(value))
        if isinstance(value, bytes | bytearray | memoryview):
            return (3, bytes(value))
        return (1, value)

    return key


class _Descending:
    """Inverts the order of a key component (for mixed ASC/DESC terms)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def _component(key: SortKey, is_float: bool = False) -> KeyFn:
    """One term, for mixed directions: (where NULL goes, [is NaN,] the value), DESC inverted."""
    i = key.column
    null_last = not key.nulls_first
    sqlite = sqlite_value(key.collation) if key.collation is not None else None

    def value(v: Any) -> Any:
        if sqlite is not None:
            return sqlite(v)
        # NaN after every number; every NaN one value (Python's NaNs compare
        # neither equal nor less, and a Decimal NaN refuses to be ordered).
        return (True, 0) if is_float and v != v else (False, v) if is_float else v

    if key.descending:
        return lambda row: ((row[i] is None) == null_last, _Descending(value(row[i])))
    return lambda row: ((row[i] is None) == null_last, value(row[i]))


def sort_key(keys: Sequence[SortKey], floats: frozenset[int] = frozenset()) -> tuple[KeyFn, bool]:
    """A key function and a ``reverse`` flag that sort rows as the ORDER BY does.

    When every term goes the same way the key is one flat tuple,
    ``(row[i] is None, row[i], ...)``, built by a function compiled for
    these terms, and ``reverse`` says DESC: no Python-level comparison runs.
    Columns in ``floats`` hold floating-point or numeric values: their key
    also says whether the value is NaN, which PostgreSQL sorts after every
    number, and puts every NaN level with the others (rows then ordered by
    the next term).

    >>> from shardq.merge.steps import SortKey
    >>> rows = [(1, "b"), (None, "a"), (2, "a"), (1, "a")]
    >>> key, reverse = sort_key([SortKey(0), SortKey(1, descending=True, nulls_first=True)])
    >>> sorted(rows, key=key, reverse=reverse)
    [(1, 'b'), (1, 'a'), (2, 'a'), (None, 'a')]
    >>> key, reverse = sort_key([SortKey(0, descending=True, nulls_first=True)])
    >>> sorted(rows, key=key, reverse=reverse)[0]
    (None, 'a')
    """
    reverse = all(k.descending for k in keys)
    if reverse or not any(k.descending for k in keys):
        parts = []
        namespace: dict[str, Any] = {}
        for n, k in enumerate(keys):
            # In ascending terms (before any reversal), is NULL after the values?
            null_last = k.nulls_first if reverse else not k.nulls_first
            i = int(k.column)
            parts.append(f"r[{i}] is None" if null_last else f"r[{i}] is not None")
            if k.collation is not None:  # SQLite: storage classes, then the collation
                namespace[f"k{n}"] = sqlite_value(k.collation)
                parts.append(f"k{n}(r[{i}])")
                continue
            if i in floats:
                # NaN after every number, all NaNs one value: ties go on to the
                # next term (a NaN is neither equal to another nor less).
                parts.append(f"r[{i}] != r[{i}]")
                parts.append(f"(r[{i}] if r[{i}] == r[{i}] else 0)")
                continue
            parts.append(f"r[{i}]")
        # Only integers are formatted into the source: it cannot hold anything else.
        return eval(f"lambda r: ({', '.join(parts)},)", namespace), reverse
    components = [_component(k, k.column in floats) for k in keys]
    return (lambda row: tuple(c(row) for c in components)), False


def _cut(batch: Rows, bound: Any, key: KeyFn, reverse: bool) -> int:
    """How many leading rows of a sorted ``batch`` sort no later than ``bound``."""
    after = operator.lt if not reverse else operator.gt
    lo, hi = 0, len(batch)
    while lo < hi:
        mid = (lo + hi) // 2
        if after(bound, key(batch[mid])):
            hi = mid
        else:
            lo = mid + 1
    return lo


def kway(sources: int, keys: Sequence[SortKey], floats: frozenset[int] = frozenset()) -> Merger:
    """Merge ``sources`` already-sorted streams into one sorted stream.

    >>> from shardq.merge.drive import drive_sync
    >>> from shardq.merge.steps import SortKey
    >>> a = [[(1,), (4,)], [(9,)]]
    >>> b = [[(2,), (3,), (10,)]]
    >>> drive_sync(kway(2, [SortKey(0)]), [a, b, []])
    [(1,), (2,), (3,), (4,), (9,), (10,)]
    """
    key, reverse = sort_key(keys, floats)
    same_way = reverse or not any(k.descending for k in keys)
    nan_free = not any(k.column in floats or k.collation is not None for k in keys)
    plain = operator.itemgetter(*(k.column for k in keys)) if same_way and nan_free else None
    columns = [operator.itemgetter(k.column) for k in keys]
    pending: dict[int, Rows] = {}
    for source in range(sources):
        batch = yield Fetch(source)
        if batch:
            pending[source] = batch
    while pending:
        if len(pending) == 1:  # one shard left: its rows pass straight through
            ((source, batch),) = pending.items()
            while batch:
                yield batch
                batch = (yield Fetch(source)) or []
            return
        lasts = [key(b[-1]) for b in pending.values()]
        bound = max(lasts) if reverse else min(lasts)
        ready: Rows = []
        runs = 0
        exhausted = []
        for source, batch in pending.items():
            cut = _cut(batch, bound, key, reverse)
            if cut:
                runs += 1
                if cut == len(batch):
                    ready += batch
                    exhausted.append(source)
                else:
                    ready += batch[:cut]
                    pending[source] = batch[cut:]
        if not exhausted:
            # The shard holding the bound must have sent nothing after it: its
            # rows are not in the order shardq compares in.
            raise NotSupportedError(
                "the shards returned rows in an order shardq's merge does not reproduce "
                "(a type or collation whose order differs from shardq's comparison); "
                "order by built-in scalar types, or pin the query to one shard"
            )
        if runs == 1:
            yield ready
        elif plain is not None and not any(None in map(g, ready) for g in columns):
            # No NULL among the sort values: order by the values themselves, in C.
            yield sorted(ready, key=plain, reverse=reverse)
        else:
            yield sorted(ready, key=key, reverse=reverse)
        for source in exhausted:
            batch = yield Fetch(source)
            if batch:
                pending[source] = batch
            else:
                del pending[source]
