"""Hand-written edge cases: shardq on four SQLite shards against one SQLite file.

Each query runs through shardq and on the single file holding every row
(:mod:`tests.fixtures.sqlite_edge`); the answers must be the same as
:mod:`tests.differential.sqlite_compare` defines it: column names as SQLite
writes them, rows, order where the ORDER BY fixes it, and Python types. The
cases are the ones issue 14 lists (collations, SQLite's arithmetic after a
merge, bare columns, column names, errors that are not refusals, functions
refused today), plus simple queries that must keep working.

A refusal fails a case, unless the case says ``refused``: then shardq must
raise :class:`shardq.UnsupportedQueryError` with a construct and a reason,
naming the part of the query it refuses. A case with ``error`` fails on the
single file too: shardq must fail with the same message, not answer.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.differential.sqlite_compare import (
    Fold,
    Twin,
    elements,
    nocase,
    number,
    rtrim,
    same_answer,
    same_value,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    from tests.fixtures.sqlite_edge import SqliteEdge


@dataclass(frozen=True)
class Case:
    """One query and how its answer is compared (see sqlite_compare's docstring)."""

    sql: str
    params: tuple[Any, ...] = ()
    ordered: bool = False
    loose: Mapping[int, Fold] = field(default_factory=dict)
    tie: Mapping[int, Fold] = field(default_factory=dict)
    refused: str | None = None  # a word the refusal must contain (what it refuses)
    error: str | None = None  # the single file's error, which shardq must raise too
    # What shardq gets wrong today (found by the random queries): the case must fail until
    # fixed (a strict xfail), then the mark goes.
    known: str | None = None


def _distinct_nocase(value: Any) -> Any:
    return elements(",")(nocase(value))


CASES: dict[str, Case] = {
    # -- collations: merged under the collation, not by code point
    "group-by-nocase": Case(
        "SELECT name COLLATE NOCASE, count(*) FROM ev GROUP BY name COLLATE NOCASE ORDER BY 1",
        ordered=True, loose={0: nocase}),
    "group-by-nocase-alias": Case(
        "SELECT name COLLATE NOCASE AS n, count(*) AS c, min(id) FROM ev GROUP BY n ORDER BY c, n",
        ordered=True, loose={0: nocase}),
    "group-by-nocase-shows-column": Case(
        "SELECT name, count(*) FROM ev GROUP BY name COLLATE NOCASE ORDER BY 2, 1 COLLATE NOCASE",
        ordered=True, loose={0: nocase}),
    "count-distinct-nocase": Case(
        "SELECT count(DISTINCT name COLLATE NOCASE), count(DISTINCT name) FROM ev"),
    "count-distinct-nocase-grouped": Case(
        "SELECT flag, count(DISTINCT name COLLATE NOCASE) FROM ev GROUP BY flag ORDER BY flag",
        ordered=True),
    "distinct-nocase": Case(
        "SELECT DISTINCT name COLLATE NOCASE FROM ev ORDER BY 1", ordered=True, loose={0: nocase}),
    "distinct-nocase-unordered": Case(
        "SELECT DISTINCT name COLLATE NOCASE FROM ev", loose={0: nocase}),
    "min-max-nocase": Case(
        "SELECT min(name COLLATE NOCASE), max(name COLLATE NOCASE), min(name), max(name) FROM ev",
        loose={0: nocase, 1: nocase}),
    "min-max-nocase-grouped": Case(
        "SELECT flag, min(name COLLATE NOCASE), max(note) FROM ev GROUP BY flag ORDER BY flag",
        ordered=True, loose={1: nocase, 2: nocase}),
    "order-by-alias-nocase": Case(
        "SELECT name COLLATE NOCASE AS n, id FROM ev ORDER BY n, id", ordered=True),
    "order-by-ordinal-nocase": Case(
        "SELECT name COLLATE NOCASE, id FROM ev ORDER BY 1 DESC, 2", ordered=True),
    "order-by-nocase-limit": Case(
        "SELECT name, id FROM ev ORDER BY name COLLATE NOCASE, id LIMIT 20 OFFSET 30",
        ordered=True),
    "group-by-declared-nocase": Case(
        "SELECT note, count(*) FROM ev GROUP BY note ORDER BY note", ordered=True,
        loose={0: nocase}),
    "distinct-declared-nocase": Case(
        "SELECT DISTINCT note FROM ev ORDER BY 1", ordered=True, loose={0: nocase}),
    "order-by-declared-nocase": Case("SELECT note, id FROM ev ORDER BY note, id", ordered=True),
    "count-distinct-declared-nocase": Case("SELECT count(DISTINCT note) FROM ev"),
    "group-by-rtrim": Case(
        "SELECT name COLLATE RTRIM, count(*) FROM ev GROUP BY 1 ORDER BY 1", ordered=True,
        loose={0: rtrim}),
    "group-by-declared-rtrim": Case(
        "SELECT tag, count(*) FROM ev2 GROUP BY tag ORDER BY tag", ordered=True, loose={0: rtrim}),
    "count-distinct-rtrim": Case(
        "SELECT count(DISTINCT tag), count(DISTINCT tag COLLATE BINARY) FROM ev2"),
    "group-by-binary-override": Case(
        "SELECT note COLLATE BINARY AS n, count(*) FROM ev GROUP BY n ORDER BY n", ordered=True),
    # -- values computed after a merge: SQLite's types and arithmetic
    "count-times-real": Case("SELECT count(*) * 1.0 / 3 FROM ev"),
    "max-times-real": Case("SELECT max(qty) * 1.5, max(amount) * 1.5, max(flag) * 1.5 FROM ev"),
    "sum-div-real": Case("SELECT sum(qty) / 3.0, sum(qty) + 0.5, sum(flag) + 0.5 FROM ev"),
    "sum-int-div": Case("SELECT sum(flag) / 3, sum(flag) % 3, sum(flag) / count(*) FROM ev"),
    "sum-real-mod": Case("SELECT sum(amount) % 7, total(qty) % 7, sum(qty) % 7 FROM ev"),
    "cast-avg-integer": Case(
        "SELECT CAST(avg(qty) AS INTEGER), CAST(avg(flag) AS INTEGER), "
        "CAST(-avg(qty) AS INTEGER), CAST(max(amount) AS TEXT) FROM ev WHERE id < 100"),
    "text-in-integer-column": Case(
        "SELECT sum(grp), typeof(sum(grp)), min(grp), max(grp), typeof(max(grp)) FROM ev"),
    "min-max-across-types": Case(
        "SELECT flag, sum(grp), max(grp), min(mixed), max(mixed), max(amount) FROM ev "
        "GROUP BY flag ORDER BY flag", ordered=True),
    "sum-overflow": Case("SELECT sum(big) FROM ev", error="integer overflow"),
    "sum-big-fits": Case("SELECT sum(big), count(big) FROM ev WHERE id IN (3, 140)"),
    "overflow-to-real": Case(
        "SELECT max(big) + 1, min(big) - 1, max(big) * 2, total(big), avg(big) FROM ev"),
    "overflow-rows": Case(
        "SELECT id, big + big, big * 1 FROM ev WHERE big IS NOT NULL ORDER BY id", ordered=True),
    "avg-total-mixed": Case("SELECT avg(grp), avg(mixed), total(mixed), sum(amount) FROM ev"),
    "group-by-untyped": Case(
        "SELECT mixed, count(*) FROM ev GROUP BY mixed ORDER BY 1", ordered=True,
        loose={0: number}),
    "distinct-untyped": Case("SELECT DISTINCT mixed FROM ev", loose={0: number}),
    "having-text-vs-number": Case(
        "SELECT name, count(*) FROM ev GROUP BY name HAVING name > 5 ORDER BY name", ordered=True),
    "having-aggregate-vs-number": Case(
        "SELECT flag, max(name) FROM ev GROUP BY flag HAVING max(name) > 5 ORDER BY 1",
        ordered=True),
    "where-untyped-equals": Case("SELECT id FROM ev WHERE mixed = 1 ORDER BY id", ordered=True),
    # -- bare columns: from the row holding the min or max, or refused
    "bare-column-max": Case(
        "SELECT name, max(id), amount FROM ev GROUP BY name ORDER BY name", ordered=True),
    "bare-column-min": Case(
        "SELECT grp, min(id), name, ts FROM ev GROUP BY grp ORDER BY 2", ordered=True),
    "bare-column-max-ungrouped": Case("SELECT max(id), name, amount FROM ev WHERE flag = 1"),
    "bare-column-arbitrary": Case("SELECT grp, name FROM ev GROUP BY grp", refused="name"),
    "bare-column-with-count": Case(
        "SELECT flag, count(*), amount FROM ev GROUP BY flag", refused="amount"),
    # -- column names: the text as written, merged or routed to one shard
    "names-aggregates": Case(
        "SELECT avg(id), count(CASE WHEN qty IS NOT NULL THEN 1 END),   avg( id ),Sum(qty) "
        "FROM ev"),
    "names-aggregates-routed": Case(
        "SELECT avg(id), count(CASE WHEN qty IS NOT NULL THEN 1 END),   avg( id ),Sum(qty) "
        "FROM ev WHERE id = 5"),
    "names-rows": Case(
        "SELECT trim(e.name), CAST(strftime('%s', ts) AS INTEGER), "
        "CASE WHEN flag THEN 'yes' ELSE 'no' END, e.id, upper( name ) FROM ev e ORDER BY e.id",
        ordered=True),
    "names-rows-routed": Case(
        "SELECT trim(e.name), CAST(strftime('%s', ts) AS INTEGER), "
        "CASE WHEN flag THEN 'yes' ELSE 'no' END, e.id, upper( name ) FROM ev e WHERE e.id = 5"),
    "names-rows-limit": Case(
        "SELECT length(name), round(amount, 1), iif(flag, 'y', 'n') FROM ev ORDER BY id LIMIT 3",
        ordered=True),
    "cast-numeric-rows": Case(
        "SELECT id, CAST(ts AS NUMERIC), CAST(mixed AS NUMERIC) FROM ev ORDER BY id LIMIT 20",
        ordered=True),
    "cast-keeps-collation": Case(
        "SELECT DISTINCT CAST(note AS TEXT) FROM ev ORDER BY 1", ordered=True, loose={0: nocase}),
    "names-grouped": Case(
        "SELECT CASE WHEN flag THEN 'yes' ELSE 'no' END, count(*) FROM ev GROUP BY 1 ORDER BY 1",
        ordered=True),
    # -- errors that are not refusals
    "having-select-alias": Case(
        "SELECT grp, count(*) AS c1 FROM ev GROUP BY grp HAVING c1 > 10 ORDER BY grp",
        ordered=True),
    "having-select-alias-empty": Case(
        "SELECT grp, count(*) AS c1 FROM ev GROUP BY grp HAVING c1 < 1"),
    "star-order-by-ordinal": Case("SELECT * FROM ev ORDER BY 3"),
    "star-order-by-ordinals": Case("SELECT * FROM ev ORDER BY 3, 1", ordered=True),
    "star-order-by-ordinal-limit": Case(
        "SELECT * FROM ev ORDER BY 3 DESC, 1 LIMIT 5", ordered=True),
    # -- SQLite's own functions after a merge
    "round-after-merge": Case(
        "SELECT round(avg(qty), 2), round(sum(amount)), round(avg(amount), 1), round(sum(flag)) "
        "FROM ev"),
    "total": Case("SELECT total(qty), total(grp), total(name), total(amount) FROM ev"),
    "total-empty": Case("SELECT total(qty), sum(qty), avg(qty), count(qty) FROM ev WHERE id < 0"),
    "group-concat": Case(
        "SELECT flag, group_concat(name, '|') FROM ev GROUP BY flag ORDER BY flag", ordered=True,
        loose={1: elements("|")}),
    "group-concat-default": Case(
        "SELECT group_concat(id), group_concat(qty) FROM ev WHERE id < 40",
        loose={0: elements(), 1: elements()}),
    "group-concat-distinct-nocase": Case(
        "SELECT group_concat(DISTINCT note) FROM ev", loose={0: _distinct_nocase}),
    "typeof-aggregates": Case(
        "SELECT typeof(sum(qty)), typeof(sum(flag)), typeof(avg(flag)), typeof(max(grp)), "
        "typeof(total(flag)), typeof(min(mixed)) FROM ev"),
    "julianday-of-max": Case(
        "SELECT julianday(max(ts)), julianday(min(ts)), strftime('%Y-%m', max(ts)), "
        "date(min(ts)) FROM ev WHERE ts LIKE '2024%'"),
    "substr-rows": Case("SELECT substr(name, 1, 2), id FROM ev ORDER BY id", ordered=True),
    "substr-of-max": Case("SELECT substr(max(name), 1, 2), substr(min(ts), 6) FROM ev"),
    "mod-is-fmod": Case(
        "SELECT id, mod(qty, 3), mod(amount, 2), qty % 3 FROM ev ORDER BY id", ordered=True),
    "mod-of-merged": Case(
        "SELECT flag, mod(sum(qty), 3), mod(max(amount), 2) FROM ev GROUP BY flag ORDER BY 1",
        ordered=True),
    "mod-grouped": Case("SELECT mod(qty, 3), count(*) FROM ev GROUP BY 1 ORDER BY 1", ordered=True),
    "substring-and-ceiling-kept": Case(
        "SELECT id, substring(name, 1, 2), ceiling(amount) FROM ev ORDER BY id LIMIT 9",
        ordered=True),
    "functions-of-merged": Case(
        "SELECT flag, substring(max(name), 1, 2), ceiling(avg(amount)), abs(sum(qty)), "
        "nullif(count(qty), 0), sum(qty) / nullif(count(qty), 0), "
        "CASE WHEN sum(qty) > 0 THEN 'pos' ELSE 'neg' END FROM ev GROUP BY flag ORDER BY 1",
        ordered=True),
    "having-text-literal-time": Case(
        "SELECT flag, min(ts) FROM ev GROUP BY flag HAVING min(ts) < '2024-03-05 10:00' "
        "ORDER BY 1", ordered=True),
    "comma-join": Case(
        "SELECT e.id, f.seq, f.tag FROM ev e, ev2 f WHERE e.id = f.id ORDER BY e.id, f.seq",
        ordered=True),
    "comma-join-aggregate": Case(
        "SELECT count(*), total(f.score), count(DISTINCT f.tag) FROM ev e, ev2 f WHERE e.id = f.id"
    ),
    "join-colocated-grouped": Case(
        "SELECT e.flag, count(f.id), total(f.score) FROM ev e JOIN ev2 f ON f.id = e.id "
        "GROUP BY e.flag ORDER BY 1", ordered=True),
    "join-reference-nocase": Case(
        "SELECT k.label, count(*) FROM ev e JOIN kind k ON k.code = e.grp GROUP BY k.label "
        "ORDER BY 1", ordered=True),
    "limit-minus-one": Case("SELECT id FROM ev ORDER BY id LIMIT -1", ordered=True),
    "limit-minus-one-offset": Case(
        "SELECT id FROM ev ORDER BY id LIMIT -1 OFFSET 3", ordered=True),
    "scalar-subquery": Case("SELECT count(*) FROM ev WHERE qty > (SELECT avg(qty) FROM ev)"),
    # -- simple things that must keep working
    "count-star": Case("SELECT count(*), count(name), count(mixed), count(big) FROM ev"),
    "nulls-first-ascending": Case("SELECT id, qty FROM ev ORDER BY qty, id", ordered=True),
    "nulls-last-descending": Case("SELECT id, qty FROM ev ORDER BY qty DESC, id", ordered=True),
    "nulls-last-explicit": Case(
        "SELECT id, ts FROM ev ORDER BY ts NULLS LAST, id", ordered=True),
    "order-across-types": Case(
        "SELECT id, amount, mixed FROM ev ORDER BY mixed, amount DESC, id", ordered=True),
    "limit-offset": Case(
        "SELECT id, amount FROM ev ORDER BY amount, id LIMIT 7 OFFSET 5", ordered=True),
    "distinct": Case("SELECT DISTINCT flag FROM ev ORDER BY 1", ordered=True),
    "distinct-pairs": Case("SELECT DISTINCT grp, flag FROM ev"),
    "params": Case(
        "SELECT id, name FROM ev WHERE grp = ? AND flag = ? ORDER BY id", (2, 1), ordered=True),
    "params-routed": Case("SELECT name, amount FROM ev WHERE id = ?", (5,)),
    "params-text": Case("SELECT count(*) FROM ev WHERE name = ? OR note = ?", ("ann", "red")),
    "grouped-plain": Case(
        "SELECT flag, count(*), sum(qty), min(ts), max(ts) FROM ev GROUP BY flag ORDER BY flag",
        ordered=True),
    # -- found in review (issue 14)
    "total-distinct": Case("SELECT total(DISTINCT grp), total(DISTINCT qty), count(*) FROM ev"),
    "total-distinct-grouped": Case(
        "SELECT flag, total(DISTINCT qty) FROM ev GROUP BY flag ORDER BY flag", ordered=True),
    "unary-plus-has-no-affinity": Case("SELECT count(*) FROM ev WHERE +grp > '2'"),
    "unary-plus-has-no-affinity-rows": Case(
        "SELECT id FROM ev WHERE +grp > '2' ORDER BY id LIMIT 50", ordered=True),
    "unary-plus-name": Case("SELECT id, +grp FROM ev ORDER BY id LIMIT 3", ordered=True),
    "cast-as-string-is-numeric": Case(
        "SELECT count(*) FROM ev WHERE CAST(amount AS STRING) > 5"),
    "cast-as-string-rows": Case(
        "SELECT id, CAST(amount AS STRING), CAST(ts AS LONG), CAST(name AS VARBINARY) FROM ev "
        "ORDER BY id LIMIT 5", ordered=True),
    "limit-offset-negative-params": Case(
        "SELECT id FROM ev ORDER BY id LIMIT ? OFFSET ?", (3, -2), ordered=True),
    "limit-param-offset-negative": Case(
        "SELECT id FROM ev ORDER BY id LIMIT ? OFFSET -2", (3,), ordered=True),
    "distinct-limit-minus-one-param": Case(
        "SELECT DISTINCT flag FROM ev ORDER BY 1 LIMIT ? OFFSET ?", (-1, 1), ordered=True),
    "order-by-expression-input-column-first": Case(
        "SELECT flag AS f, count(*) AS flag FROM ev GROUP BY f ORDER BY flag + 0", ordered=True),
    "order-by-expression-input-column-first-neg": Case(
        "SELECT flag AS f, -count(*) AS flag FROM ev GROUP BY f ORDER BY -flag", ordered=True),
    "having-declared-collation-under-binary-group": Case(
        "SELECT note COLLATE BINARY, count(*) FROM ev GROUP BY 1 HAVING note = 'RED'"),
    "having-declared-collation-group-by-binary": Case(
        "SELECT note, count(*) FROM ev GROUP BY note COLLATE BINARY HAVING note = 'RED'"),
    "bare-column-max-also-in-having": Case(
        "SELECT flag, max(id), name FROM ev GROUP BY flag HAVING max(id) > 3 ORDER BY 1",
        ordered=True),
    "bare-column-max-also-in-order-by": Case(
        "SELECT flag, max(id), name FROM ev GROUP BY flag ORDER BY max(id)", ordered=True),
    # -- found by the random queries
    "limit-negative-parameter-with-offset": Case(
        "SELECT id FROM ev ORDER BY id LIMIT ? OFFSET ?", (-1, 5), ordered=True),
    "total-distinct-with-sum": Case(
        "SELECT total(DISTINCT qty), total(DISTINCT flag), sum(DISTINCT flag) FROM ev"),
    "group-concat-distinct-separator": Case(
        "SELECT group_concat(DISTINCT note, ';') FROM ev",
        error="DISTINCT aggregates must have exactly one argument"),
    "count-with-distinct-aggregate-of-no-rows": Case(
        "SELECT count(*), count(*) + 0.5, total(qty), count(DISTINCT name) FROM ev "
        "WHERE qty > 1000"),
    # SQLite ranks GLOB/LIKE/IN/BETWEEN with =, below <: sqlglot does not (a random query).
    "glob-below-comparison": Case(
        "SELECT name GLOB '[a-z]*', count(*) FROM ev GROUP BY 1 "
        "HAVING name GLOB '[a-z]*' < ? ORDER BY 1", (2,), refused="without parentheses"),
    "equals-then-like": Case("SELECT count(*) FROM ev WHERE id = 3 LIKE 1",
                             refused="without parentheses"),
    "glob-parenthesized": Case(
        "SELECT name GLOB '[a-z]*', count(*) FROM ev GROUP BY 1 "
        "HAVING (name GLOB '[a-z]*') < ? ORDER BY 1", (2,), ordered=True),
    # -- an ordinal after *: the columns of tables, derived tables and CTEs
    "star-ordinal": Case("SELECT * FROM ev ORDER BY 3, 1 LIMIT 9", ordered=True),
    "star-ordinal-derived": Case(
        "SELECT * FROM (SELECT id, name, grp FROM ev) s ORDER BY 3, 1", ordered=True),
    "star-ordinal-cte": Case(
        "WITH s AS (SELECT id, qty * 2 AS q FROM ev) SELECT * FROM s ORDER BY 2 DESC, 1",
        ordered=True),
    # -- set operations: UNION ALL concatenated, the others counted per row across shards
    "union-all": Case("SELECT grp FROM ev UNION ALL SELECT seq FROM ev2"),
    "union-all-ordered-limit": Case(
        "SELECT id, grp FROM ev UNION ALL SELECT id, seq FROM ev2 ORDER BY 1 DESC, 2 LIMIT 7",
        ordered=True),
    "union": Case("SELECT grp FROM ev UNION SELECT seq FROM ev2 ORDER BY 1", ordered=True),
    "union-untyped": Case("SELECT mixed FROM ev UNION SELECT grp FROM ev", loose={0: number}),
    "union-declared-nocase": Case(
        "SELECT note FROM ev UNION SELECT label FROM kind ORDER BY 1", ordered=True,
        loose={0: nocase}),
    "union-expressions-named": Case(
        "SELECT grp + 1, qty IS NOT NULL FROM ev UNION SELECT 1, 0 ORDER BY 1, 2",
        ordered=True),
    "intersect": Case("SELECT grp FROM ev INTERSECT SELECT seq FROM ev2 ORDER BY 1",
                      ordered=True),
    "except": Case("SELECT qty FROM ev EXCEPT SELECT qty FROM ev WHERE flag = 1"),
    "except-reference": Case("SELECT code FROM kind EXCEPT SELECT grp FROM ev WHERE id < 40"),
    "union-all-reference": Case(
        "SELECT label FROM kind UNION ALL SELECT name FROM ev WHERE id < 10 ORDER BY 1",
        ordered=True, loose={0: nocase}),
    "union-collation-of-a-later-branch": Case(
        "SELECT upper(name) FROM ev UNION SELECT note FROM ev ORDER BY 1", ordered=True,
        loose={0: nocase}),
    "intersect-collation-first-column": Case(
        "SELECT name FROM ev INTERSECT SELECT note FROM ev", loose={0: nocase}),
    "union-offset": Case(
        "SELECT grp FROM ev UNION SELECT seq FROM ev2 ORDER BY 1 LIMIT 3 OFFSET 2",
        ordered=True),
    "aggregate-only-in-order-by": Case(
        "SELECT name FROM ev ORDER BY max(qty)", error="misuse of aggregate: max()"),
}  # fmt: skip

# No merge answers these: gathered to one shard (temporary tables declared with the columns'
# affinities and collations), then run there as written. Each must be gathered (checked
# below), and answer as the single file does: values, storage classes, names.
GATHERED: dict[str, Case] = {
    # -- windows whose partitions span shards
    "window-running-sum": Case(
        "SELECT id, qty, sum(qty) OVER (ORDER BY id) FROM ev ORDER BY id", ordered=True),
    "window-partition-affinity": Case(
        # grp holds '12' stored as 12 and 'abc' as text: the partitions are the real table's
        "SELECT id, grp, count(*) OVER (PARTITION BY grp), rank() OVER (PARTITION BY grp "
        "ORDER BY amount, id) FROM ev ORDER BY id", ordered=True),
    "window-partition-declared-nocase": Case(
        "SELECT id, note, count(*) OVER (PARTITION BY note), "
        "first_value(id) OVER (PARTITION BY note ORDER BY id) FROM ev ORDER BY id",
        ordered=True),
    "window-partition-declared-rtrim": Case(
        "SELECT id, seq, tag, dense_rank() OVER (ORDER BY tag) FROM ev2 ORDER BY id, seq",
        ordered=True),
    "window-lag-types": Case(
        "SELECT id, mixed, typeof(mixed), lag(mixed) OVER (ORDER BY mixed, id), "
        "typeof(amount), typeof(grp), big FROM ev ORDER BY id", ordered=True),
    "window-ordered-concatenation": Case(
        # SQLite 3.40 has no ORDER BY inside group_concat(): a window orders it instead
        "SELECT DISTINCT flag, group_concat(name, '|') OVER (PARTITION BY flag ORDER BY id "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) FROM ev ORDER BY 1",
        ordered=True),
    "window-filtered-pushdown": Case(
        "SELECT id, grp, lag(grp) OVER (ORDER BY id) FROM ev WHERE grp > '2' AND id < 120 "
        "ORDER BY id", ordered=True),
    "window-filter-cast-not-pushed": Case(
        "SELECT id, amount, row_number() OVER (ORDER BY id) FROM ev "
        "WHERE amount > CAST('5' AS STRING) ORDER BY id", ordered=True),
    "window-params": Case(
        "SELECT id, rank() OVER (PARTITION BY flag ORDER BY id) FROM ev WHERE qty > ? "
        "ORDER BY id", (2,), ordered=True),
    "window-over-reference-join": Case(
        "SELECT k.label, e.id, row_number() OVER (PARTITION BY k.label ORDER BY e.id) "
        "FROM ev e JOIN kind k ON k.code = e.grp ORDER BY 2", ordered=True),
    "window-in-grouped": Case(
        "SELECT flag, count(*), rank() OVER (ORDER BY count(*) DESC, flag) FROM ev "
        "GROUP BY flag ORDER BY flag", ordered=True),
    # -- joins of tables not co-located or not joined on their keys
    "join-not-on-key": Case(
        "SELECT e.id, f.id, f.seq FROM ev e JOIN ev2 f ON f.seq = e.flag WHERE e.id < 40 "
        "ORDER BY 1, 2, 3", ordered=True),
    "join-text-collation": Case(
        # f.tag = e.name compares under tag's RTRIM: 'x' matches 'x  '
        "SELECT e.id, e.name, f.id, f.seq, f.tag FROM ev e JOIN ev2 f ON f.tag = e.name "
        "ORDER BY 1, 3, 4"),
    "join-left-not-on-key": Case(
        "SELECT e.id, count(f.id) FROM ev e LEFT JOIN ev2 f ON f.seq = e.qty GROUP BY e.id "
        "ORDER BY e.id", ordered=True),
    "join-self-on-other-column": Case(
        "SELECT a.id, b.id FROM ev a JOIN ev b ON b.grp = a.grp AND b.id > a.id "
        "WHERE a.id < 30 ORDER BY 1, 2", ordered=True),
    "join-star": Case(
        "SELECT e.*, f.* FROM ev e JOIN ev2 f ON f.seq = e.qty ORDER BY e.id, f.id, f.seq",
        ordered=True),
    # -- subqueries correlated on other columns than the key
    "correlated-average": Case(
        "SELECT id FROM ev e WHERE qty > (SELECT avg(qty) FROM ev x WHERE x.flag = e.flag) "
        "ORDER BY id", ordered=True),
    "correlated-exists-collation": Case(
        # f.tag = e.note compares under tag's RTRIM, e.note's NOCASE does not apply
        "SELECT count(*), total(id) FROM ev e WHERE EXISTS "
        "(SELECT 1 FROM ev2 f WHERE f.tag = e.note)"),
    "correlated-select-list": Case(
        "SELECT id, (SELECT count(*) FROM ev2 f WHERE f.seq = e.flag) FROM ev e "
        "WHERE id < 50 ORDER BY id", ordered=True),
    "in-subquery-affinity": Case(
        # kind.code is INTEGER: compared with grp's values by affinity, not as shipped values
        "SELECT code, label FROM kind WHERE code IN (SELECT grp FROM ev WHERE id < 60) "
        "ORDER BY code", ordered=True),
    # -- whole rows, other merges refused
    "star-with-window": Case(
        "SELECT *, rank() OVER (ORDER BY mixed, id) FROM ev ORDER BY id", ordered=True),
    "group-concat-column-separator": Case(
        "SELECT flag, group_concat(note, name) FROM ev WHERE id < 3 GROUP BY flag "
        "ORDER BY flag", ordered=True),
    "bare-column-of-the-one-max-gathered": Case(
        "SELECT flag, max(id), name, count(*) OVER () FROM ev GROUP BY flag ORDER BY flag",
        ordered=True),
    "unknown-collation": Case(
        "SELECT note FROM ev ORDER BY note COLLATE my_collation",
        error="no such collation sequence: my_collation"),
}  # fmt: skip
CASES.update(GATHERED)
# Still refused, not gathered: a bare column SQLite takes from an arbitrary row, which the
# gathered shard need not take as the single file does.
CASES.update({
    "bare-column-under-a-window": Case(
        "SELECT grp, name, rank() OVER (ORDER BY grp) FROM ev GROUP BY grp",
        refused="the bare column name"),
    "bare-column-of-a-join-not-on-key": Case(
        "SELECT e.grp, f.tag FROM ev e JOIN ev2 f ON f.seq = e.flag GROUP BY e.grp",
        refused="the bare column f.tag"),
    "bare-column-in-a-window-argument": Case(
        "SELECT flag, sum(qty) OVER () FROM ev GROUP BY flag", refused="the bare column qty"),
    "bare-column-under-a-correlated-subquery": Case(
        "SELECT grp, name FROM ev e WHERE qty > (SELECT avg(qty) FROM ev x WHERE "
        "x.flag = e.flag) GROUP BY grp", refused="the bare column name"),
})  # fmt: skip


@pytest.fixture(scope="module")
def conn(sqlite_edge: SqliteEdge) -> Iterator[shardq.Connection]:
    with shardq.connect(sqlite_edge.config) as connection:
        yield connection


@pytest.fixture(scope="module")
def single(sqlite_edge: SqliteEdge) -> Iterator[sqlite3.Connection]:
    db = sqlite_edge.single_connection()
    yield db
    db.close()


def _params(cases: Mapping[str, Case]) -> list[Any]:
    return [
        pytest.param(c, id=k, marks=pytest.mark.xfail(strict=True, reason=c.known))
        if c.known
        else pytest.param(c, id=k)
        for k, c in cases.items()
    ]


@pytest.mark.parametrize("case", _params(CASES))
def test_sqlite_edge_case(case: Case, conn: shardq.Connection, single: sqlite3.Connection) -> None:
    if case.refused is not None:
        with pytest.raises(shardq.UnsupportedQueryError) as refusal:
            conn.execute(case.sql, case.params or None).fetchall()
        assert refusal.value.construct, refusal.value
        assert refusal.value.reason, refusal.value
        assert case.refused in str(refusal.value), refusal.value
        assert "affinity" not in str(refusal.value), refusal.value
        return
    if case.error is not None:
        with pytest.raises(sqlite3.Error, match=case.error):
            single.execute(case.sql, case.params).fetchall()
        with pytest.raises(shardq.DatabaseError) as failure:
            conn.execute(case.sql, case.params or None).fetchall()
        assert not isinstance(failure.value, shardq.UnsupportedQueryError), failure.value
        assert case.error in str(failure.value), failure.value
        return
    same_answer(
        conn, single, case.sql, case.params, ordered=case.ordered, loose=case.loose, tie=case.tie
    )


ANSWERED = {k: c for k, c in CASES.items() if c.refused is None and c.error is None}


@pytest.mark.parametrize("case", ANSWERED.values(), ids=ANSWERED.keys())
def test_sqlite_edge_case_between_two_files(
    case: Case, sqlite_edge: SqliteEdge, single: sqlite3.Connection
) -> None:
    # The comparison's own check: the twin file holds the same rows stored in another order,
    # so it picks other spellings and orders where SQLite may; its answer must pass.
    twin = sqlite_edge.twin_connection()
    try:
        same_answer(Twin(twin), single, case.sql, case.params, ordered=case.ordered,
                    loose=case.loose, tie=case.tie)  # fmt: skip
    finally:
        twin.close()


@pytest.mark.parametrize("case", GATHERED.values(), ids=GATHERED.keys())
def test_what_no_merge_answers_is_gathered(case: Case, conn: shardq.Connection) -> None:
    # The cases above test the gather only if that is how they are answered.
    assert "gathered to shard s" in conn.explain(case.sql, case.params or None)


@pytest.mark.skipif(
    sqlite3.sqlite_version_info < (3, 44), reason="ORDER BY inside an aggregate: SQLite 3.44"
)
def test_an_ordered_group_concat_is_gathered(
    conn: shardq.Connection, single: sqlite3.Connection
) -> None:
    sql = "SELECT flag, group_concat(name, '|' ORDER BY name, id) FROM ev GROUP BY flag ORDER BY 1"
    assert "gathered to shard s" in conn.explain(sql)
    same_answer(conn, single, sql, ordered=True)


def test_the_data_reaches_the_merge(
    conn: shardq.Connection, sqlite_edge: SqliteEdge, single: sqlite3.Connection
) -> None:
    # The collation cases mean something only if a word's spellings sit on several shards,
    # and the comparison only if it tells answers apart: check both on known values.
    for spelling in ["Ann", "ann", "b  "]:
        on = [p for p in sqlite_edge.shards if _count(p, spelling)]
        assert len(on) > 1, (spelling, on)
    sql = "SELECT name, count(*) FROM ev WHERE name IN ('Ann', 'ann') GROUP BY name ORDER BY 1"
    assert same_answer(conn, single, sql, ordered=True).rows == [("Ann", 10), ("ann", 10)]
    assert same_value(1, 1)
    assert same_value(0.1 + 0.2, 0.3)
    for a, b in [(1, 1.0), ("1", 1), (0.3, 0.31), (None, 0), (b"a", "a")]:
        assert not same_value(a, b), (a, b)


def _count(path: Path, name: str) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM ev WHERE name = ?", (name,)).fetchone()
    db.close()
    return int(count)


# Queries one SQLite file answers: shardq must give the same answer or refuse clearly,
# never fail on a shard with an error the single file does not raise.
ANSWER_OR_REFUSAL = {
    "where-alias-grouped": "SELECT flag * 2 AS f2, count(*) FROM ev WHERE f2 > 1 GROUP BY f2 "
    "ORDER BY 1",
}


@pytest.mark.parametrize("sql", ANSWER_OR_REFUSAL.values(), ids=ANSWER_OR_REFUSAL.keys())
def test_sqlite_edge_answer_or_refusal(
    sql: str, conn: shardq.Connection, single: sqlite3.Connection
) -> None:
    refusal: shardq.UnsupportedQueryError | None = None
    try:
        same_answer(conn, single, sql, ordered=" ORDER BY " in sql)
    except shardq.UnsupportedQueryError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.construct, refusal
        assert refusal.reason, refusal


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT flag, count(*) + ? FROM ev GROUP BY flag",
        "SELECT flag, count(*) FROM ev GROUP BY flag HAVING sum(qty) > ?",
    ],
)
def test_sqlite_edge_missing_parameter_is_a_programming_error(
    sql: str, conn: shardq.Connection, single: sqlite3.Connection
) -> None:
    # The single file raises sqlite3.ProgrammingError; the merge must not call it operational.
    with pytest.raises(sqlite3.ProgrammingError):
        single.execute(sql).fetchall()
    with pytest.raises(shardq.ProgrammingError):
        conn.execute(sql).fetchall()
