"""Random correlated subqueries: decorrelated, gathered or run as written, one answer.

hypothesis draws a query over the edge fixture's ``pairs`` (distributed) and
``pair_ref`` (reference), whose WHERE holds a subquery over ``pairs``
correlated on one or two columns that are not the shard key (integers,
bigints, dates; NULLs in them, groups with no row, a group whose values are
all NULL), with an aggregate expression (count, sum, avg, min, max, around
them coalesce and arithmetic), or EXISTS / NOT EXISTS, and local conditions.
Whatever shardq chooses (decorrelation, a lookup, a gather), its answer must
be the single node's. ``SHARDQ_EXAMPLES`` sets the number of queries (40).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardq
from tests.differential.compare import same_result

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.edge import Edge

pytestmark = pytest.mark.postgres

# (FROM, the outer alias the subquery refers to, its numeric and date columns, selected)
OUTERS = [
    ("pair_ref r", "r", "r.x", "r.d", "r.a, r.b, r.t"),
    ("pairs o", "o", "o.q", "o.d", "o.id"),
    ("pairs o JOIN pair_ref r ON r.a = o.a AND r.b = o.b", "r", "o.q", "o.d", "o.id, r.t"),
    ("pairs o JOIN pair_ref r ON r.a = o.a AND r.b = o.b", "o", "r.x", "r.d", "o.id, r.t"),
    ("pair_ref r, pairs o", "r", "o.q", "o.d", "o.id, r.a, r.b"),
]
# (inner column, outer column name): integer, bigint, date; a bigint to an integer
CORRELATIONS = [("p.a", "a"), ("p.b", "b"), ("p.d", "d"), ("p.a", "b"), ("p.b", "a")]
NUMBERS = [
    "avg(p.q)", "sum(p.q)", "count(*)", "count(p.q)", "max(p.q)", "min(p.a)", "0.5 * sum(p.q)",
    "coalesce(max(p.q), 0) + count(*)", "sum(p.a + p.b)", "avg(p.b) - 1", "max(p.r)",
    "sum(p.q) / count(*)", "sum(p.r)",
]  # fmt: skip
LOCAL = ["p.q > 0", "p.b IS NOT NULL", "p.d >= DATE '2024-01-02'", "p.t = 'x'", "p.q <> p.a"]
OPERATORS = ["<", ">=", "=", "<>"]


@st.composite
def queries(draw: st.DrawFn) -> str:
    source, alias, number, date, selected = draw(st.sampled_from(OUTERS))
    pairs = draw(st.lists(st.sampled_from(CORRELATIONS), min_size=1, max_size=2, unique=True))
    local = draw(st.lists(st.sampled_from(LOCAL), max_size=2, unique=True))
    where = " AND ".join([f"{inner} = {alias}.{outer}" for inner, outer in pairs] + local)
    kind = draw(st.sampled_from(["number", "number", "date", "exists", "null"]))
    if kind == "exists":
        negated = draw(st.sampled_from(["", "NOT "]))
        condition = f"{negated}EXISTS (SELECT 1 FROM pairs p WHERE {where})"
    elif kind == "date":
        aggregate = draw(st.sampled_from(["min(p.d)", "max(p.d)"]))
        operator = draw(st.sampled_from(OPERATORS))
        condition = f"{date} {operator} (SELECT {aggregate} FROM pairs p WHERE {where})"
    else:
        aggregate = draw(st.sampled_from(NUMBERS))
        subquery = f"(SELECT {aggregate} FROM pairs p WHERE {where})"
        if kind == "null":
            condition = f"{subquery} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
        else:
            operator = draw(st.sampled_from(OPERATORS))
            condition = f"{number} {operator} {subquery}"
    if draw(st.booleans()):
        condition = f"({condition} OR {number} IS NULL)"
    return f"SELECT {selected} FROM {source} WHERE {condition}"


@pytest.fixture(scope="module")
def conn(edge: Edge) -> Iterator[shardq.Connection]:
    with shardq.connect(edge.config) as connection:
        yield connection


@settings(
    max_examples=int(os.environ.get("SHARDQ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sql=queries())
def test_random_correlated_subqueries_match_one_database(
    sql: str, edge: Edge, conn: shardq.Connection
) -> None:
    same_result(conn, edge.dsn, sql)
