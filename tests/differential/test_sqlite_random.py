"""Property-based differential test on SQLite shards: random queries, one answer.

hypothesis draws SELECTs over the SQLite edge dataset
(:func:`tests.differential.sqlite_queries.queries`: SQLite's functions,
collations, aggregates, mixed integer and real arithmetic, co-located and
reference joins, scalar subqueries, HAVING, LIMIT/OFFSET, shard-key pins,
``?`` parameters of every type); shardq's answer on the four shard files must
be the single file's, as :mod:`tests.differential.sqlite_compare` defines it
(the order checked against the query's ORDER BY, so that float keys summed
in another order may swap when they are near-tied). A refusal
(``UnsupportedQueryError``) passes and is counted; any other error, or any
answer that differs, fails. ``SHARDQ_EXAMPLES`` sets the number of queries
(default 1000, about 15 s); the counts (same, refused by construct, failed)
are printed at the end of the module.

``python -m tests.differential.sqlite_survey -n 1000`` runs the same queries
without stopping at the first failure and prints the failures by kind.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings

import shardq
from tests.differential.sqlite_compare import Twin, row_keys, same_rows
from tests.differential.sqlite_order import Term
from tests.differential.sqlite_queries import Query, outcome, queries

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterator

    from tests.fixtures.sqlite_edge import SqliteEdge

STATS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def conn(sqlite_edge: SqliteEdge) -> Iterator[shardq.Connection]:
    with shardq.connect(sqlite_edge.config) as connection:
        yield connection


@pytest.fixture(scope="module")
def single(sqlite_edge: SqliteEdge) -> Iterator[sqlite3.Connection]:
    db = sqlite_edge.single_connection()
    yield db
    db.close()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    STATS.clear()
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not STATS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for key, count in sorted(STATS.items(), key=lambda kv: (-kv[1], kv[0])):
            reporter.write_line(f"sqlite random queries: {count:5d}  {key}")


@settings(
    max_examples=int(os.environ.get("SHARDQ_EXAMPLES", "1000")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(query=queries())
def test_random_sqlite_queries_match_one_file(
    query: Query, conn: shardq.Connection, single: sqlite3.Connection
) -> None:
    result = outcome(conn, single, query)
    STATS[result.kind] += 1
    if result.kind == "refused":
        STATS[f"refused: {result.detail}"] += 1
    assert result.kind in ("same", "refused"), f"{result.kind}: {result.detail}\n{query.sql}"


@settings(
    max_examples=int(os.environ.get("SHARDQ_EXAMPLES", "1000")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(query=queries())
def test_the_comparison_accepts_what_sqlite_leaves_open(
    query: Query, sqlite_edge: SqliteEdge, single: sqlite3.Connection
) -> None:
    # Another SQLite file with the same rows stored in another order picks other spellings of a
    # group, ties and concatenations: if the comparison were stricter than SQLite's own
    # freedom, it would fail here, where both answers are SQLite's.
    twin = sqlite_edge.twin_connection()
    try:
        result = outcome(Twin(twin), single, query)
    finally:
        twin.close()
    assert result.kind == "same", f"{result.kind}: {result.detail}\n{query.sql}"


def test_the_order_check_tells_a_near_tie_from_a_wrong_order() -> None:
    # ORDER BY total DESC, name: 5.9 and 5.8999999999999995 are one key computed in two orders.
    order = (Term(1, descending=True), Term(0))
    want = [("a", 7.0), ("c", 5.9), ("b", 5.8999999999999995), ("d", 1.0)]
    swapped = [("a", 7.0), ("b", 5.9), ("c", 5.8999999999999995), ("d", 1.0)]
    same_rows(swapped, want, ordered=True, order=order)
    with pytest.raises(AssertionError, match="row 1"):
        same_rows(swapped, want, ordered=True)  # row by row, as hand-written cases compare
    wrong = [
        [("d", 1.0), ("c", 5.9), ("b", 5.8999999999999995), ("a", 7.0)],  # not sorted
        [("a", 7.0), ("c", 5.9), ("b", 5.8999999999999995), ("d", 1.5)],  # another value
        [("a", 7.0), ("c", 5.9), ("c", 5.8999999999999995), ("d", 1.0)],  # another row
    ]
    for rows in wrong:
        with pytest.raises(AssertionError):
            same_rows(rows, want, ordered=True, order=order)
    # Where the order is fully determined, row i is row i: ("d", 1.0) and ("e", 1.0) tie on
    # the first term but the second decides.
    with pytest.raises(AssertionError, match="out of order"):
        same_rows([("e", 1.0), ("d", 1.0)], [("d", 1.0), ("e", 1.0)], ordered=True, order=order)
    # A LIMIT that cuts between near-tied rows may keep either.
    same_rows([("a", 7.0), ("b", 5.9)], want[:2], ordered=True, order=order, cut=True)
    with pytest.raises(AssertionError):
        same_rows([("a", 7.0), ("d", 1.0)], want[:2], ordered=True, order=order, cut=True)
    # A key outside the select list: shardq's rows take the single file's keys.
    got, want_rows, keys = [("x",), ("y",)], [("y",), ("x",)], [(1,), (2,)]
    with pytest.raises(AssertionError, match="out of order"):
        same_rows(got, want_rows, ordered=True, order=(Term(1),),
                  keys=(row_keys(got, want_rows, keys), keys))  # fmt: skip
