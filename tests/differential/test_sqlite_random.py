"""Property-based differential test on SQLite shards: random queries, one answer.

hypothesis draws SELECTs over the SQLite edge dataset
(:func:`tests.differential.sqlite_queries.queries`: SQLite's functions,
collations, aggregates, mixed integer and real arithmetic, HAVING, LIMIT,
shard-key pins, ``?`` parameters); shardq's answer on the four shard files
must be the single file's, as :mod:`tests.differential.sqlite_compare` defines
it. A refusal (``UnsupportedQueryError``) passes and is counted; any other
error, or any answer that differs, fails. ``SHARDQ_EXAMPLES`` sets the number
of queries (default 1000, about 15 s); the counts (same, refused by construct,
failed) are printed at the end of the module.

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
from tests.differential.sqlite_compare import Twin
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
