"""The differential check: shardq's answer against one PostgreSQL holding every row.

Two answers are the same when their column names and type codes match and
their rows match value for value, with the same Python types. Rows are
compared in order when the query's ORDER BY fixes the order, as a multiset
otherwise. Floats are the one tolerance: a sum of floats depends on the order
of its terms (on one server too, with parallel workers), so they match to
1e-9 relative.

The value rules (:func:`shardq.compare.same_value`, and the sort key for the
multiset comparison) are shardq's own, shared with ``shardq verify``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

# The rules live in shardq, where ``shardq verify`` applies them too.
from shardq.compare import row_key as _key
from shardq.compare import same_value as _same_value

if TYPE_CHECKING:
    import shardq


def same_rows(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]], ordered: bool) -> None:
    """Assert two row lists are the same (see the module docstring)."""
    if not ordered:
        got, want = sorted(got, key=_key), sorted(want, key=_key)
    assert len(got) == len(want), f"{len(got)} rows, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        same = len(g) == len(w) and all(_same_value(a, b) for a, b in zip(g, w, strict=True))
        assert same, f"row {i}: {g!r} != expected {w!r}"


def single_node(dsn: str, sql: str, params: Any = None) -> tuple[list[Any], list[tuple[Any, ...]]]:
    """Description ``(name, type_code)`` pairs and rows from the single node."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        assert cur.description is not None
        return [(d.name, d.type_code) for d in cur.description], cur.fetchall()


def same_result(
    conn: shardq.Connection, dsn: str, sql: str, params: Any = None, *, ordered: bool = False
) -> list[tuple[Any, ...]]:
    """Run ``sql`` through shardq and on the single node; assert the answers are the same."""
    want_description, want = single_node(dsn, sql, params)
    cur = conn.execute(sql, params)
    got = cur.fetchall()
    assert cur.description is not None
    got_description = [(d.name, d.type_code) for d in cur.description]
    assert got_description == want_description, sql
    same_rows(got, want, ordered)
    return got
