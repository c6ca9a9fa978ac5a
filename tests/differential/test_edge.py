"""Hand-written edge cases: shardq on four shards against one PostgreSQL.

Each query runs through shardq and on the single node holding every row; the
answers must be the same (rows, order where the ORDER BY fixes it, column
names and types). Queries whose ORDER BY leaves ties are compared as
multisets, or ordered by enough columns to make them total.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import shardq
from tests.differential.compare import same_result

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.edge import Edge

pytestmark = pytest.mark.postgres

# (sql, ordered): ordered when the ORDER BY fixes the order of every row.
CASES: list[tuple[str, bool]] = [
    # ORDER BY a name PostgreSQL gives an output column: CASE ... ELSE id END is "id"
    (
        "SELECT CASE WHEN id % 7 = 0 THEN NULL ELSE id END, id AS i2 FROM facts ORDER BY id, i2",
        True,
    ),
    ("SELECT CASE WHEN id > 5 THEN 1 END, id FROM facts ORDER BY id DESC LIMIT 9", True),
    # a table function joined to a distributed table: the same rows on every shard
    (
        "SELECT count(*), sum(g) FROM facts JOIN generate_series(1, 300, 7) AS g ON g = facts.id",
        True,
    ),
    ("SELECT f.id, g FROM facts f, generate_series(1, 2) AS g WHERE f.id < 4 ORDER BY 1, 2", True),
    # an ordinal after *: the columns * stands for, from the catalog
    ("SELECT * FROM facts ORDER BY 3, 1 LIMIT 7", True),
    ("SELECT f.*, 1 AS one FROM facts f ORDER BY 3 DESC, 1 OFFSET 2", True),
    ("SELECT DISTINCT * FROM sparse ORDER BY 2, 1", True),
    # ... and of derived tables, CTEs and renamed tables: from their select lists
    ("SELECT * FROM (SELECT id, k, grp FROM facts) s ORDER BY 3, 1", True),
    ("WITH s(a, b) AS (SELECT id, k FROM facts) SELECT * FROM s ORDER BY 2 DESC, 1", True),
    ("SELECT * FROM facts AS f(a, b, c) ORDER BY 3, 1 LIMIT 20", True),
    (
        'SELECT s.*, f.k FROM (SELECT id AS "Id", upper(grp), k * 2 AS k2 FROM facts) s '
        'JOIN facts f ON f.id = s."Id" ORDER BY 2, 3 DESC, 1',
        True,
    ),
    # aggregates without GROUP BY, over rows and over nothing
    ("SELECT count(*), count(k), sum(k), min(k), max(k), avg(k) FROM facts", True),
    ("SELECT count(*), sum(n), min(n), max(n), avg(n), sum(f), avg(f) FROM facts", True),
    (
        "SELECT count(*), count(n), sum(n), min(grp), max(ts), avg(n) FROM facts WHERE k > 10000",
        True,
    ),
    ("SELECT bool_and(flag), bool_or(flag), every(flag) FROM facts", True),
    ("SELECT count(*) FROM sparse", True),
    ("SELECT sum(v), avg(v), count(v) FROM sparse", True),
    # expressions over aggregates: integer division, numeric scale, rounding, NULLs
    (
        "SELECT sum(k) / count(*), sum(k) % 7, -sum(k), sum(n) / count(n), 100.00 * sum(n) / 7 "
        "FROM facts",
        True,
    ),
    ("SELECT round(avg(n), 2), round(avg(k)), round(avg(f)), round(sum(n), -2) FROM facts", True),
    (
        "SELECT avg(k)::int, sum(n)::bigint, avg(n)::numeric(10, 1), sum(k)::float, "
        "avg(f)::real, (sum(n) / 3)::numeric, max(f)::bigint, min(n)::smallint FROM facts",
        True,
    ),
    ("SELECT coalesce(max(k), 0) + 1, coalesce(sum(n), -1) FROM facts WHERE false", True),
    ("SELECT max(k) IS NULL, sum(n) IS NOT NULL, bool_and(flag) IS NOT TRUE FROM facts", True),
    (
        "SELECT count(*) FILTER (WHERE k > 0), sum(n) FILTER (WHERE flag), "
        "avg(k) FILTER (WHERE grp IS NULL) FROM facts",
        True,
    ),
    (
        "SELECT count(DISTINCT grp), count(DISTINCT k), sum(DISTINCT k), avg(DISTINCT n) "
        "FROM facts",
        True,
    ),
    # stddev and variance: numeric from exact sums (scale rules), float8 over floats
    (
        "SELECT stddev(n), variance(n), stddev_pop(n), var_pop(n), stddev_samp(k), "
        "var_samp(k), stddev(id), var_pop(id) FROM facts",
        True,
    ),
    (
        "SELECT stddev(f), variance(f), stddev_pop(f), var_pop(f), variance(f::real) FROM facts",
        True,
    ),
    (
        "SELECT grp, stddev(k), var_pop(n), stddev(f), variance(id) FROM facts GROUP BY grp "
        "ORDER BY grp",
        True,
    ),
    (
        "SELECT variance(n * 123456789.123456789), stddev(n / 7), var_samp(k * 1e-30), "
        "stddev(id::bigint * 922337203685477), var_pop(n * 1e40 + 1), stddev_pop(k + 0.000001) "
        "FROM facts",
        True,
    ),
    (
        "SELECT stddev(n) FILTER (WHERE k > 0), variance(k) FILTER (WHERE flag), "
        "round(stddev(n), 3), stddev(k) * 2, var_pop(k) IS NULL FROM facts",
        True,
    ),
    ("SELECT stddev(n), var_pop(n), variance(k), stddev_pop(f) FROM facts WHERE id < 3", True),
    (
        "SELECT variance(id * power(1.0001, id)), stddev(1 / id::numeric), "
        "var_pop(1e-20 / id) FROM facts",
        True,
    ),
    ("SELECT stddev(v), var_pop(v), variance(v) FROM sparse", True),
    ("SELECT stddev(f), variance(n), var_pop(f), stddev(id) FROM odd", True),
    ("SELECT variance(k), stddev(n) FROM facts WHERE k > 10000", True),
    (
        "SELECT k, variance(n), stddev_pop(n) FROM facts GROUP BY k HAVING variance(n) > 1 "
        "ORDER BY k",
        True,
    ),
    # GROUP BY: NULL groups, ordinals, aliases, expressions of the key, HAVING
    ("SELECT grp, count(*), sum(n), avg(k) FROM facts GROUP BY grp ORDER BY grp", True),
    ("SELECT grp, count(*) AS c FROM facts GROUP BY 1 ORDER BY c DESC, 1 NULLS FIRST", True),
    (
        "SELECT upper(grp) AS g, k, count(*) FROM facts GROUP BY grp, k "
        "ORDER BY grp DESC NULLS LAST, k",
        True,
    ),
    (
        "SELECT k, count(*) FROM facts GROUP BY k HAVING count(*) > 20 AND sum(n) IS NOT NULL "
        "ORDER BY 2 DESC, 1",
        True,
    ),
    ("SELECT k % 3 AS m, count(*), max(grp) FROM facts GROUP BY m ORDER BY m NULLS FIRST", True),
    (
        "SELECT date_trunc('day', ts) AS day, count(*), min(ts) FROM facts GROUP BY 1 ORDER BY 1",
        True,
    ),
    (
        "SELECT label, count(DISTINCT grp) AS kinds, count(*) FROM facts GROUP BY label "
        "ORDER BY kinds DESC, label",
        True,
    ),
    ("SELECT flag, count(*) FROM facts GROUP BY flag HAVING max(k) > 2 ORDER BY 1", True),
    ("SELECT grp, k FROM facts GROUP BY grp, k ORDER BY grp, k LIMIT 7 OFFSET 3", True),
    ("SELECT k, sum(k) FROM facts WHERE k < 0 GROUP BY k ORDER BY sum(k)", True),
    (
        "SELECT l.name, count(*) FROM facts f JOIN labels l ON l.code = f.label "
        "GROUP BY l.name ORDER BY 1",
        True,
    ),
    ("SELECT id, count(*), max(n) FROM facts GROUP BY id HAVING max(n) > 50 ORDER BY id", True),
    ("SELECT *, count(*) OVER (PARTITION BY id) FROM facts ORDER BY id LIMIT 3", True),
    ("SELECT DISTINCT count(*) FROM facts GROUP BY k", False),
    # ORDER BY merge: NULLS FIRST/LAST both ways, DESC, ties, text, timestamps
    ("SELECT id, k FROM facts ORDER BY k, id", True),
    ("SELECT id, k FROM facts ORDER BY k DESC, id DESC", True),
    ("SELECT id, k FROM facts ORDER BY k NULLS FIRST, id", True),
    ("SELECT id, k FROM facts ORDER BY k DESC NULLS LAST, id", True),
    ("SELECT id, grp FROM facts ORDER BY grp, id", True),
    ('SELECT id, grp FROM facts ORDER BY grp COLLATE "C" DESC, id', True),
    ("SELECT id, ts FROM facts ORDER BY ts DESC, id LIMIT 15", True),
    ("SELECT id, n FROM facts ORDER BY n, id DESC LIMIT 20", True),
    ("SELECT id FROM facts ORDER BY f * 2, id", True),
    ("SELECT * FROM facts ORDER BY n DESC, id LIMIT 5", True),
    ("SELECT id AS ident, k AS key FROM facts ORDER BY key, ident", True),
    ("SELECT id, k FROM facts ORDER BY 2, 1 LIMIT 10 OFFSET 5", True),
    ("SELECT k FROM facts ORDER BY k", True),
    # LIMIT and OFFSET edges
    ("SELECT id FROM facts ORDER BY id LIMIT 0", True),
    ("SELECT id FROM facts ORDER BY id OFFSET 1000", True),
    ("SELECT id FROM facts ORDER BY id LIMIT 5 OFFSET 238", True),
    ("SELECT id FROM facts ORDER BY id LIMIT ALL", True),
    ("SELECT id FROM facts ORDER BY id LIMIT NULL OFFSET 230", True),
    ("SELECT v FROM sparse ORDER BY v NULLS FIRST LIMIT 1", True),
    ("SELECT id FROM sparse ORDER BY id", True),
    # FETCH FIRST: as LIMIT, and WITH TIES kept by the merge (k has many ties)
    ("SELECT id FROM facts ORDER BY id FETCH FIRST 3 ROWS ONLY", True),
    ("SELECT id FROM facts ORDER BY id FETCH FIRST ROW ONLY", True),
    ("SELECT id, k FROM facts ORDER BY k, id OFFSET 5 ROWS FETCH NEXT 4 ROWS ONLY", True),
    ("SELECT k FROM facts ORDER BY k FETCH FIRST 3 ROWS WITH TIES", True),
    ("SELECT k, id FROM facts ORDER BY k DESC NULLS LAST FETCH FIRST 30 ROWS WITH TIES", False),
    # (with an OFFSET, which of the tied rows come first is not fixed: their k only)
    ("SELECT k FROM facts ORDER BY k OFFSET 50 FETCH FIRST 1 ROW WITH TIES", True),
    ("SELECT k FROM facts ORDER BY k FETCH FIRST 0 ROWS WITH TIES", True),
    ("SELECT k FROM facts ORDER BY k OFFSET 500 FETCH FIRST 2 ROWS WITH TIES", True),
    ("SELECT id FROM facts ORDER BY k NULLS FIRST FETCH FIRST 2 ROWS WITH TIES", False),
    ("SELECT id, grp FROM facts ORDER BY grp, f FETCH FIRST 12 ROWS WITH TIES", False),
    ("SELECT id FROM odd ORDER BY f DESC FETCH FIRST 1 ROWS WITH TIES", False),
    ("SELECT DISTINCT k FROM facts ORDER BY k FETCH FIRST 2 ROWS WITH TIES", True),
    (
        "SELECT grp, count(*) FROM facts GROUP BY grp ORDER BY count(*) DESC "
        "FETCH FIRST 2 ROWS WITH TIES",
        False,
    ),
    ("SELECT k, count(*) FROM facts GROUP BY k ORDER BY k FETCH FIRST 3 ROWS WITH TIES", True),
    # set operations: UNION ALL concatenated, the others counted per row across shards
    ("SELECT k FROM facts UNION ALL SELECT v FROM sparse", False),
    ("SELECT id, k FROM facts UNION ALL SELECT id, v FROM sparse ORDER BY 2 DESC, 1 LIMIT 9", True),
    ("SELECT id AS i FROM facts WHERE k > 1 UNION ALL SELECT id FROM facts ORDER BY i", True),
    ("SELECT k FROM facts UNION SELECT v FROM sparse", False),
    ("SELECT grp, k FROM facts UNION SELECT grp, k FROM facts ORDER BY 1, 2", True),
    ("SELECT k FROM facts INTERSECT SELECT v FROM sparse", False),
    ("SELECT k FROM facts INTERSECT ALL SELECT k FROM facts WHERE flag", False),
    ("SELECT k FROM facts EXCEPT SELECT k FROM facts WHERE flag", False),
    ("SELECT k FROM facts EXCEPT ALL SELECT k FROM facts WHERE flag ORDER BY k", True),
    ("SELECT grp FROM facts EXCEPT ALL SELECT name FROM labels", False),
    ("SELECT label FROM facts UNION ALL SELECT code FROM labels", False),
    ("SELECT label FROM facts INTERSECT ALL SELECT code FROM labels ORDER BY 1", True),
    ("SELECT code FROM labels EXCEPT ALL SELECT label FROM facts WHERE k = 5", False),
    (
        "SELECT k, flag FROM facts UNION SELECT v, NULL FROM sparse "
        "EXCEPT (SELECT k, flag FROM facts WHERE id < 50) ORDER BY 1 NULLS FIRST, 2",
        True,
    ),
    ("SELECT n FROM facts UNION ALL SELECT k FROM facts EXCEPT SELECT 0", False),
    # rows equal but written otherwise (0 and 0.000) are one row, shown as the first branch
    # writes it, as PostgreSQL's hashed set operations show the first of their first input
    ("SELECT k FROM facts INTERSECT SELECT n FROM facts ORDER BY 1", True),
    ("SELECT n FROM facts WHERE k > 0 UNION SELECT k FROM facts ORDER BY 1", True),
    ("SELECT k FROM facts UNION SELECT n FROM facts ORDER BY 1", True),
    # ... but UNION ALL keeps each row as its branch writes it, beside another operation too
    ("SELECT n FROM facts EXCEPT ALL SELECT k FROM facts UNION ALL SELECT k FROM facts", False),
    ("SELECT k FROM facts UNION ALL SELECT n FROM facts INTERSECT ALL SELECT k FROM facts", False),
    ("SELECT n FROM facts UNION ALL SELECT k FROM facts UNION SELECT 0", False),
    ("SELECT f FROM odd UNION SELECT f FROM odd", False),
    ("SELECT f FROM odd INTERSECT ALL SELECT f FROM odd WHERE id > 1", False),
    ("SELECT k FROM facts UNION SELECT v FROM sparse ORDER BY k LIMIT 3 OFFSET 1", True),
    (
        "SELECT k FROM facts UNION ALL SELECT v FROM sparse ORDER BY k "
        "FETCH FIRST 4 ROWS WITH TIES",
        True,
    ),
    ("SELECT k FROM facts EXCEPT ALL SELECT 2 ORDER BY 1 FETCH FIRST 9 ROWS WITH TIES", True),
    ("SELECT k, count(*) FROM facts GROUP BY id, k UNION SELECT 1, 1", False),
    ("SELECT grp FROM facts WHERE id = 3 UNION ALL SELECT grp FROM facts WHERE id = 4", False),
    # DISTINCT ON the shard key: each set on one shard, run there as written
    ("SELECT DISTINCT ON (id) id, k FROM facts ORDER BY id, k LIMIT 5", True),
    ("SELECT DISTINCT ON (k, id) k, id, grp FROM facts ORDER BY k NULLS FIRST, id", True),
    (
        "SELECT DISTINCT ON (f.id) f.id, n.v FROM facts f JOIN notes n ON n.fact_id = f.id "
        "ORDER BY f.id, n.v DESC OFFSET 3",
        True,
    ),
    ("SELECT DISTINCT ON (fact_id) fact_id, v FROM notes ORDER BY fact_id DESC, v", True),
    (
        "SELECT DISTINCT ON (id) id, grp FROM facts ORDER BY id FETCH FIRST 4 ROWS WITH TIES",
        True,
    ),
    ("SELECT DISTINCT ON (id, grp) grp, k FROM facts WHERE k > 0", False),
    # DISTINCT
    ("SELECT DISTINCT grp FROM facts", False),
    ("SELECT DISTINCT grp, label FROM facts ORDER BY grp, label", True),
    ("SELECT DISTINCT k FROM facts ORDER BY k DESC LIMIT 4", True),
    ("SELECT DISTINCT flag FROM facts ORDER BY flag NULLS FIRST", True),
    # review regressions: names that are both a column and an alias, implicit names,
    # keys of derived tables and of the NULL side of a LEFT JOIN, NaN, -0, literals
    ("SELECT count(*) AS grp FROM facts GROUP BY grp", False),
    ("SELECT k AS grp, count(*) FROM facts GROUP BY grp, k", False),
    ("SELECT upper(grp), count(*) FROM facts GROUP BY upper ORDER BY count DESC, upper", True),
    ("SELECT id, upper(grp) FROM facts ORDER BY upper, id LIMIT 7", True),
    ("SELECT id, count(*) FROM (SELECT k AS id FROM facts) s GROUP BY id", False),
    ("WITH s AS (SELECT k AS id FROM facts) SELECT id, count(*) FROM s GROUP BY id", False),
    (
        "SELECT n.fact_id, count(*) FROM facts f LEFT JOIN notes n ON n.fact_id = f.id "
        "GROUP BY n.fact_id ORDER BY 1 NULLS FIRST LIMIT 3",
        True,
    ),
    (
        "SELECT f.id, f.id IN (SELECT n.fact_id FROM facts f2 LEFT JOIN notes n "
        "ON n.fact_id = f2.id WHERE f2.id = 8) AS x FROM facts f ORDER BY 1",
        True,
    ),
    (
        "SELECT count(*) FROM facts f WHERE NOT (f.id IN (SELECT n.fact_id FROM facts f2 "
        "LEFT JOIN notes n ON n.fact_id = f2.id WHERE f2.id = 45))",
        True,
    ),
    ("SELECT id FROM odd ORDER BY f, id", True),
    ("SELECT id, f FROM odd ORDER BY f DESC NULLS LAST, id", True),
    # every NaN level with the others: the next term orders them, across shards
    ("SELECT id, f FROM odd ORDER BY f DESC NULLS FIRST, id LIMIT 5 OFFSET 1", True),
    ("SELECT id, f FROM odd ORDER BY f, id DESC", True),
    ("SELECT id, n FROM odd ORDER BY n DESC, id", True),
    ("SELECT id, n FROM odd ORDER BY n NULLS FIRST, id DESC", True),
    ("SELECT id FROM odd ORDER BY n DESC NULLS LAST, f, id DESC", True),
    ("SELECT n, f, id FROM odd ORDER BY n, f DESC, id", True),
    ("SELECT n, count(*) FROM odd GROUP BY n ORDER BY n DESC", True),
    ("SELECT n, count(*) FROM odd GROUP BY n ORDER BY n", True),  # was refused: NaN unordered
    ("SELECT count(DISTINCT f), max(id), max(f), min(f) FROM odd", True),
    ("SELECT e IS NULL, max(f), min(f) FROM odd GROUP BY 1", False),
    # NaN on two shards is one group and one DISTINCT value, as in PostgreSQL
    ("SELECT f, count(*) FROM odd GROUP BY f", False),
    ("SELECT id % 2, f, count(*) FROM odd GROUP BY 1, 2", False),
    ("SELECT f, n, count(*) FROM odd GROUP BY f, n", False),
    ("SELECT n, count(*) FROM odd GROUP BY n", False),
    ("SELECT DISTINCT f FROM odd", False),
    ("SELECT DISTINCT f FROM odd ORDER BY f", True),
    ("SELECT DISTINCT n FROM odd", False),
    ("SELECT count(*) + 9223372036854775808, 'x' AS c, NULL AS d FROM facts", True),
    (
        "SELECT round(sum(k), 1), round(count(*), 2), min(n) * 0, round(min(n) * 0.001, 2) "
        "FROM facts",
        True,
    ),
    ("SELECT min(k) > 0 AND max(k) < 100, count(*) > 0 OR false, CURRENT_DATE FROM facts", True),
    ("SELECT id FROM facts ORDER BY id LIMIT 2.5", True),
    ("SELECT * FROM (SELECT grp, count(*), count(*) FROM facts GROUP BY grp) s", False),
    (
        "SELECT s.grp FROM (SELECT grp, count(*), count(*) FROM facts GROUP BY grp) s ORDER BY 1",
        True,
    ),
    # a literal % in rewritten statements, with and without parameters (below)
    ("SELECT id, grp FROM facts WHERE grp LIKE 'a%' OR k % 2 = 1 ORDER BY id LIMIT 9", True),
    ("SELECT k % 3, count(*) FROM facts WHERE label LIKE '%' GROUP BY 1 ORDER BY 1", True),
    (
        "SELECT l.name FROM labels l WHERE l.code LIKE '%' AND l.code IN "
        "(SELECT label FROM facts WHERE k % 2 = 0) ORDER BY 1",
        True,
    ),
    # written back as the user wrote them (sqlglot writes BOOL_AND, HEX, EXTRACT, SUBSTRING)
    ("SELECT every(flag), every(k > 0) FILTER (WHERE k IS NOT NULL) FROM facts", True),
    ("SELECT every(flag), bool_or(flag) FROM facts WHERE k > 10000", True),
    ("SELECT id, to_hex(k) FROM facts ORDER BY id LIMIT 3", True),
    ("SELECT id, date_part('year', ts), date_part('day', ts) FROM facts ORDER BY 1 LIMIT 4", True),
    ("SELECT date_part('dow', ts), count(*) FROM facts GROUP BY 1 ORDER BY 1", True),
    (
        "SELECT id, substr(grp, 1, 2), substring(grp from 2), substring(grp, 2, 1), "
        "substring(grp from 'p+') FROM facts ORDER BY id LIMIT 9",
        True,
    ),
    ("SELECT substr(grp, 1, 1), count(*) FROM facts GROUP BY 1 ORDER BY 1", True),
    (
        "SELECT id, char_length(grp), ceiling(f), mod(k, 3), strpos(grp, 'p'), btrim(grp) "
        "FROM facts ORDER BY id LIMIT 9",
        True,
    ),
    ("SELECT mod(k, 3), count(*) FROM facts GROUP BY 1 ORDER BY 1", True),
    (
        "SELECT id, regexp_like(grp, 'p+'), date_bin('1 hour', ts, '2000-01-01'), pow(k, 2), "
        "log10(abs(k) + 1) FROM facts ORDER BY id LIMIT 9",
        True,
    ),
    # after the merge with PostgreSQL's types: dates, timestamps, intervals, typed literals
    ("SELECT max(ts) - min(ts), max(ts) - max(ts) FROM facts", True),
    ("SELECT grp, max(ts) - min(ts) AS span FROM facts GROUP BY grp ORDER BY grp", True),
    ("SELECT max(ts) - min(ts) FROM facts WHERE false", True),
    (
        "SELECT max(ts::date) - min(ts::date), max(ts::date) + 1, 2 + min(ts::date), "
        "max(ts::date) - 40, CAST(max(ts) AS date), min(ts)::date FROM facts",
        True,
    ),
    (
        "SELECT label, max(ts)::date - min(ts)::date FROM facts GROUP BY label "
        "HAVING max(ts) - min(ts) > min(ts) - min(ts) ORDER BY 1",
        True,
    ),
    (
        "SELECT grp, min(ts) FROM facts GROUP BY grp HAVING min(ts) < '2024-03-31 10:00' "
        "ORDER BY 1",
        True,
    ),
    (
        "SELECT k, max(ts) FROM facts GROUP BY k "
        "HAVING max(ts) BETWEEN '2024-04-01' AND '2024-04-02 12:00+05' ORDER BY 1",
        True,
    ),
    (
        "SELECT k, count(*) FROM facts GROUP BY k "
        "HAVING max(ts) IN ('2024-04-02 21:30+00', '2024-04-02 20:30+00') ORDER BY 1",
        True,
    ),
    (
        "SELECT max(ts) > '2024-04-01', min(ts) = '2024-03-29 22:30:00+00', "
        "max(grp) > 'b' FROM facts",
        True,
    ),
    (
        "SELECT date_trunc('day', ts) AS d, count(*) FROM facts GROUP BY 1 "
        "HAVING date_trunc('day', ts) >= '2024-04-01' ORDER BY 1",
        True,
    ),
    # a string literal takes the type of any expression it is compared with
    (
        "SELECT grp, max(ts)::date FROM facts GROUP BY grp "
        "HAVING max(ts)::date = '2024-04-02' ORDER BY 1",
        True,
    ),
    (
        "SELECT label, count(*) FROM facts GROUP BY label "
        "HAVING sum(n) > '10' OR sum(k) = '5' OR sum(k) + 1 <> '7' ORDER BY 1",
        True,
    ),
    ("SELECT label, max(f) = 0.25, sum(n) = 0.5::float8 FROM facts GROUP BY 1 ORDER BY 1", True),
    # EXTRACT (numeric) and date_part (float8) of merged dates and timestamps
    (
        "SELECT date_part('year', max(ts)), date_part('epoch', max(ts)), "
        "date_part('second', max(ts)), date_part('DOW', min(ts)) FROM facts",
        True,
    ),
    (
        "SELECT EXTRACT(year FROM max(ts)), EXTRACT(epoch FROM max(ts)), "
        "EXTRACT(second FROM min(ts)), EXTRACT(millisecond FROM min(ts)), "
        "EXTRACT(isodow FROM min(ts)), EXTRACT(quarter FROM max(ts)) FROM facts",
        True,
    ),
    (
        "SELECT grp, EXTRACT(day FROM max(ts)) - EXTRACT(day FROM min(ts)), "
        "date_part('hour', max(ts)) FROM facts GROUP BY grp ORDER BY 1",
        True,
    ),
    (
        "SELECT EXTRACT(epoch FROM max(ts::date)), date_part('week', min(ts::date)), "
        "EXTRACT(century FROM max(ts)), EXTRACT(doy FROM min(ts)) FROM facts WHERE k > 0",
        True,
    ),
    ("SELECT EXTRACT(year FROM max(ts)), date_part('day', min(ts)) FROM facts WHERE false", True),
    (
        "SELECT date_trunc('day', max(ts)), date_trunc('month', min(ts)), "
        "date_trunc('week', max(ts)), date_trunc('century', max(ts)), "
        "date_trunc('quarter', min(ts)), date_trunc('years', max(ts)), "
        "date_trunc('decade', min(ts::timestamp)), date_trunc('hour', max(ts::timestamp)) "
        "FROM facts",
        True,
    ),
    (
        "SELECT label, date_trunc('day', max(ts)) FROM facts GROUP BY label "
        "HAVING date_trunc('day', max(ts)) > '2024-04-01' ORDER BY 1",
        True,
    ),
    # scalar functions of merged values
    (
        "SELECT abs(min(k)), abs(sum(n)), abs(max(f)), abs(count(*)), floor(avg(n)), "
        "ceil(min(n)), ceiling(sum(f)), trunc(avg(k)), floor(sum(k)), sign(sum(n)), "
        "sign(min(k)), sign(max(f)), mod(sum(k), 7), mod(sum(n), 2) FROM facts",
        True,
    ),
    ("SELECT floor(avg(n)), abs(sum(k)), sign(max(f)) FROM facts WHERE false", True),
    (
        "SELECT to_hex(max(k)), to_hex(min(k)), to_hex(count(*)), to_hex(-count(*)), "
        "to_hex(sum(k)) FROM facts",
        True,
    ),
    ("SELECT label, to_hex(min(k) - 1) FROM facts GROUP BY label ORDER BY 1", True),
    ("SELECT to_hex(min(k)) FROM facts WHERE false", True),
    (
        "SELECT sqrt(count(*)), sqrt(max(f)), power(count(*), 2), pow(max(k), 0.5::float8), "
        "power(2, max(k) - 990) FROM facts",
        True,
    ),
    (
        "SELECT label, greatest(max(k), 3), least(min(k), sum(k)), greatest(max(n), 1, NULL), "
        "least(max(f), 1), greatest(max(grp), 'b') FROM facts GROUP BY label ORDER BY 1",
        True,
    ),
    (
        "SELECT grp, length(max(label)), char_length(grp), substr(max(label), 1, 2), "
        "substr(min(grp), 0, 3), substr(max(grp), 3) FROM facts GROUP BY grp ORDER BY 1",
        True,
    ),
    (
        "SELECT max(grp) || '-' || min(label), count(*) || 'x', sum(n) || '', "
        "concat(max(grp), count(*), NULL, sum(n), bool_and(flag)), count(*)::text, "
        "bool_or(flag)::text, bool_and(flag) || '' FROM facts",
        True,
    ),
    (
        "SELECT label, count(*)::text FROM facts GROUP BY label "
        "HAVING count(*)::text > '6' ORDER BY 1",
        True,
    ),
    # NULLIF, CASE, BETWEEN and IN over aggregates
    (
        "SELECT NULLIF(count(k), 0), sum(k) / NULLIF(count(k), 0), sum(n) / NULLIF(count(n), 0), "
        "NULLIF(max(grp), 'zebra') FROM facts",
        True,
    ),
    ("SELECT sum(k) / NULLIF(count(k), 0), NULLIF(min(k), NULL) FROM facts WHERE false", True),
    ("SELECT grp, sum(k) / NULLIF(count(k), 0) FROM facts GROUP BY grp ORDER BY 1", True),
    ("SELECT CASE WHEN sum(k) > 0 THEN 1 END FROM facts", True),
    ("SELECT md5(max(grp)) FROM facts", True),
    ("SELECT date_part('julian', max(ts)) FROM facts", True),
    (
        "SELECT grp, CASE WHEN sum(k) > 100 THEN 'big' WHEN sum(k) > 0 THEN 'small' "
        "ELSE 'none' END FROM facts GROUP BY grp ORDER BY 1",
        True,
    ),
    (
        "SELECT grp, CASE WHEN count(*) > 25 THEN sum(n) ELSE 0 END, "
        "CASE count(*) % 2 WHEN 0 THEN 'even' END, CASE WHEN count(*) > 25 THEN 1 ELSE 2.5 END, "
        "CASE WHEN max(f) > 0 THEN 1 ELSE NULL END FROM facts GROUP BY grp ORDER BY 1",
        True,
    ),
    (
        "SELECT CASE WHEN count(k) = 0 THEN 0 ELSE sum(k) / count(k) END FROM facts "
        "WHERE k > 10000",
        True,
    ),
    (
        "SELECT label, CASE WHEN min(ts) < '2024-03-30' THEN 'early' ELSE 'late' END AS w "
        "FROM facts GROUP BY label ORDER BY 1",
        True,
    ),
    (
        "SELECT max(k) IN (1000, 5), max(k) NOT IN (1000), min(k) NOT BETWEEN -3 AND 0 FROM facts",
        True,
    ),
    # empty results keep their columns
    ("SELECT id, grp FROM facts WHERE k > 10000 ORDER BY id", True),
    ("SELECT grp, count(*) FROM facts WHERE k > 10000 GROUP BY grp", True),
]


@pytest.fixture(scope="module")
def conn(edge: Edge) -> Iterator[shardq.Connection]:
    with shardq.connect(edge.config) as connection:
        yield connection


@pytest.mark.parametrize(("sql", "ordered"), CASES, ids=[c[0][:60] for c in CASES])
def test_same_answer_as_one_database(
    sql: str, ordered: bool, edge: Edge, conn: shardq.Connection
) -> None:
    same_result(conn, edge.dsn, sql, ordered=ordered)


def test_parameters_in_limit_and_having(edge: Edge, conn: shardq.Connection) -> None:
    sql = "SELECT id FROM facts ORDER BY id LIMIT %s OFFSET %s"
    for window in [(3, 0), (0, 4), (10, 235), (None, 238)]:
        same_result(conn, edge.dsn, sql, window, ordered=True)
    sql = "SELECT k FROM facts ORDER BY k OFFSET %s FETCH FIRST %s ROWS WITH TIES"
    for window in [(0, 3), (4, 20), (238, 1), (10, 0)]:
        same_result(conn, edge.dsn, sql, window, ordered=True)
    sql = "SELECT k, count(*) FROM facts GROUP BY k HAVING count(*) >= %(n)s ORDER BY k"
    for n in [0, 20, 10_000]:
        same_result(conn, edge.dsn, sql, {"n": n}, ordered=True)


def test_a_literal_percent_with_parameters(edge: Edge, conn: shardq.Connection) -> None:
    for sql in [
        "SELECT id FROM facts WHERE grp LIKE 'a%%' AND k %% 2 = %s ORDER BY id LIMIT 5",
        "SELECT k %% 3, count(*) FROM facts WHERE k > %s GROUP BY 1 ORDER BY 1",
        "SELECT l.name FROM labels l WHERE l.code LIKE '%%' AND l.code IN "
        "(SELECT label FROM facts WHERE k %% 2 = %s) ORDER BY 1",
        # gathered to one shard: the statement runs there as written, parameters too
        "SELECT grp, string_agg(grp, ',' ORDER BY id) FROM facts "
        "WHERE k %% 2 = %s AND grp LIKE 'a%%' GROUP BY grp ORDER BY grp",
        "SELECT grp, string_agg(grp, ',' ORDER BY id) FROM facts "
        "WHERE k %% 2 = %s AND grp || '%%' = 'a%%' GROUP BY grp ORDER BY grp",
    ]:
        same_result(conn, edge.dsn, sql, [0], ordered=True)


def test_a_limit_stops_reading_the_shards(conn: shardq.Connection) -> None:
    cur = conn.execute("SELECT id FROM facts ORDER BY id LIMIT 3")
    assert cur.fetchall() == [(1,), (2,), (3,)]


def test_values_python_cannot_group_are_a_clear_error(conn: shardq.Connection) -> None:
    for sql in ["SELECT j, count(*) FROM odd GROUP BY j", "SELECT DISTINCT j FROM odd"]:
        with pytest.raises(shardq.NotSupportedError, match="cannot merge these values"):
            conn.execute(sql).fetchall()


def test_an_ordinal_out_of_range_is_an_error(conn: shardq.Connection) -> None:
    with pytest.raises(shardq.ProgrammingError, match="position 3 is not in select list"):
        conn.execute("SELECT grp, count(*) FROM facts GROUP BY grp ORDER BY 3")


def test_merge_errors_are_the_databases(conn: shardq.Connection) -> None:
    with pytest.raises(shardq.DataError, match="division by zero"):
        conn.execute("SELECT sum(k) / 0 FROM facts").fetchall()
    with pytest.raises(shardq.DataError, match="integer out of range"):
        conn.execute("SELECT max(k) + 2147483647 FROM facts").fetchall()
    with pytest.raises(shardq.DataError, match="LIMIT must not be negative"):
        conn.execute("SELECT id FROM facts ORDER BY id LIMIT %s", [-1])


# No merge answers these exactly: each is gathered to one shard and run there as
# written (shardq.sql.gather), at planning or when its merge is refused at
# execution (the "type OID" and COLLATE orders). (sql, ordered) as in CASES.
GATHERED: list[tuple[str, bool]] = [
    ("SELECT string_agg(grp, ',' ORDER BY grp, id) FROM facts", True),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY n) FROM facts", True),
    ("SELECT array_agg(k ORDER BY id) FROM facts", True),
    ("SELECT stddev(n), variance(k) FROM facts", True),
    ("SELECT k, row_number() OVER (ORDER BY id) FROM facts", False),
    ("SELECT id, sum(k) OVER (PARTITION BY grp ORDER BY id) FROM facts ORDER BY id", True),
    ("SELECT DISTINCT ON (grp) grp, id FROM facts ORDER BY grp, id", True),
    ('SELECT id FROM facts ORDER BY grp COLLATE "POSIX", id', True),
    ("SELECT *, count(*) FROM facts GROUP BY id ORDER BY id", True),
    ("SELECT k, count(*) FROM facts GROUP BY ROLLUP (k)", False),
    ("SELECT CASE WHEN sum(k) > 0 THEN 1 END FROM facts", True),
    ("SELECT id FROM facts UNION SELECT id FROM sparse", False),
    ("SELECT * FROM facts f JOIN sparse s ON s.v = f.k", False),
    ("SELECT id FROM facts ORDER BY id FETCH FIRST 3 ROWS WITH TIES", True),
    # (as text: an enum's type OID differs between servers, its order does not)
    ("SELECT id, e::text FROM odd ORDER BY e, id", True),
    ("SELECT max(e)::text, min(e)::text FROM odd", True),
    ("SELECT id, k FROM facts ORDER BY (k, id) LIMIT 12", True),
    ("SELECT id, j FROM odd ORDER BY j, id", False),
    ("WITH c AS (SELECT iv FROM odd GROUP BY iv) SELECT iv::text FROM c ORDER BY 1", True),
    # (refused by the direct merges, which leave them to the gather)
    ("SELECT stddev(DISTINCT n) FROM facts", True),
    ("SELECT DISTINCT ON (id) k AS id, grp FROM facts ORDER BY id, grp", True),
    (
        "SELECT DISTINCT ON (n.fact_id) n.fact_id, f.k FROM facts f "
        "LEFT JOIN notes n ON n.fact_id = f.id ORDER BY n.fact_id, f.k",
        True,
    ),
    ("SELECT DISTINCT ON (grp) grp, count(*) FROM facts GROUP BY grp ORDER BY grp", True),
    ("SELECT * FROM (SELECT id, 1 FROM facts) s ORDER BY 2, 1", True),
    ("SELECT count(*) FROM facts UNION SELECT id FROM sparse", False),
    ("(SELECT id FROM facts ORDER BY id LIMIT 2) UNION SELECT id FROM sparse", False),
    (
        "SELECT l.name, count(f.id) FROM labels l LEFT JOIN facts f ON f.label = l.code "
        "WHERE NOT EXISTS (SELECT 1 FROM notes n WHERE n.fact_id = f.id) GROUP BY l.name",
        False,
    ),
    (
        "SELECT l.name, count(f.id) FROM labels l LEFT JOIN facts f ON f.label = l.code "
        "JOIN labels l2 ON l2.code = l.code AND f.id IS NULL GROUP BY l.name",
        False,
    ),
    ("SELECT id, iv FROM odd ORDER BY iv, id", True),
    ("SELECT id, to_hex(k) FROM facts ORDER BY id LIMIT 3", True),
    ("SELECT id, date_part('year', ts) FROM facts ORDER BY id LIMIT 2", True),
    # filters pushed down (or not) to the gathered tables
    (
        "SELECT f.grp, s.v, rank() OVER (PARTITION BY s.v ORDER BY f.id) FROM facts f "
        "JOIN sparse s ON s.v = f.k WHERE f.k > 3 AND s.id < 400 AND f.grp IS NOT NULL",
        False,
    ),
    (
        "SELECT f.id, s.id FROM facts f LEFT JOIN sparse s ON s.v = f.k "
        "WHERE s.id IS NULL ORDER BY f.id",
        True,
    ),
    (
        "SELECT grp, percentile_disc(0.5) WITHIN GROUP (ORDER BY k) FROM facts "
        "WHERE k BETWEEN 2 AND 40 OR grp LIKE 'a%' GROUP BY grp ORDER BY grp",
        True,
    ),
    # date and time over merged aggregates that the merge does not compute (the session's
    # calendar, time zone, DateStyle): refused when the shards' column types show them,
    # before any row is merged (they failed at the first row), so gathered
    ("SELECT max(ts) + (max(ts) - min(ts)) FROM facts", True),
    ("SELECT min(ts) = DATE '2024-03-31', max(ts)::text FROM facts", True),
    (
        "SELECT grp, max(ts) + interval '1 day', min(ts) - interval '90 minutes' FROM facts "
        "GROUP BY grp ORDER BY grp",
        True,
    ),
    (
        "SELECT grp, EXTRACT(epoch FROM max(ts) - min(ts)), date_part('day', max(ts) - min(ts)) "
        "FROM facts GROUP BY grp ORDER BY grp",
        True,
    ),
    ("SELECT k, max(ts)::date + interval '1 hour' FROM facts GROUP BY k ORDER BY k", True),
    (
        "SELECT grp, count(*) FROM facts GROUP BY grp "
        "HAVING min(ts) + interval '12 hours' < max(ts) ORDER BY grp",
        True,
    ),
    ("SELECT max(ts) + interval '1 day' FROM facts WHERE k > 10000", True),  # no row: its type
    ("SELECT date_trunc('day', max(ts)::date), greatest(max(ts), min(ts)::date) FROM facts", True),
    ("SELECT CASE WHEN count(*) > 0 THEN max(ts)::date ELSE min(ts) END FROM facts", True),
]


@pytest.mark.parametrize(("sql", "ordered"), GATHERED, ids=[c[0][:60] for c in GATHERED])
def test_what_no_merge_answers_is_gathered(
    sql: str, ordered: bool, edge: Edge, conn: shardq.Connection
) -> None:
    same_result(conn, edge.dsn, sql, ordered=ordered)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT grp, random() < 2 FROM facts GROUP BY grp",
        "SELECT grp, now() IS NOT NULL, count(*) FROM facts GROUP BY grp",
    ],
)
def test_volatile_functions_are_gathered(sql: str, edge: Edge, conn: shardq.Connection) -> None:
    # Evaluated once per row or statement, as one database evaluates them.
    assert "gathered to" in conn.explain(sql)
    same_result(conn, edge.dsn, sql)


REFUSED: list[tuple[str, str]] = [
    # a schema-qualified name is not shadowed by the temporary table: no gather
    ("SELECT DISTINCT ON (grp) grp, id FROM public.facts", "named with its schema"),
]


def test_fetch_percent_fails_as_on_one_database(conn: shardq.Connection) -> None:
    # PostgreSQL has no FETCH FIRST n PERCENT: an error, as the single node gives.
    with pytest.raises(shardq.Error, match="PERCENT"):
        conn.execute("SELECT id FROM facts ORDER BY id FETCH FIRST 10 PERCENT ROWS ONLY")


@pytest.mark.parametrize(("sql", "construct"), REFUSED, ids=[r[1] for r in REFUSED])
def test_what_cannot_be_exact_is_refused(sql: str, construct: str, conn: shardq.Connection) -> None:
    with pytest.raises(shardq.UnsupportedQueryError, match=construct) as info:
        conn.execute(sql)
    assert info.value.reason


def test_date_arithmetic_the_merge_cannot_reproduce_is_refused_whole(
    conn: shardq.Connection,
) -> None:
    # timestamptz + interval follows the session's calendar (daylight saving), a timestamp
    # compares with a date in the session's zone, its text follows DateStyle: not guessed.
    # Outside a transaction such a read is gathered (GATHERED above); inside one, refused
    # before any row is merged, naming what, not failed at its first row.
    refused = {
        "SELECT max(ts) + (max(ts) - min(ts)) FROM facts": "timestamptz \\+ interval",
        "SELECT min(ts) = DATE '2024-03-31' FROM facts": "timestamptz = date",
        "SELECT max(ts)::text FROM facts": "the text of timestamptz",
        "SELECT k FROM facts GROUP BY k HAVING EXTRACT(epoch FROM max(ts) - min(ts)) > 1": (
            "extract of interval"
        ),
    }
    for sql, construct in refused.items():
        with (
            pytest.raises(shardq.UnsupportedQueryError, match=construct) as info,
            conn.transaction(),
        ):
            conn.execute(sql)
        assert "session's calendar" in info.value.reason
    with pytest.raises(shardq.DataError, match="square root of a negative number"):
        conn.execute("SELECT sqrt(min(k)) FROM facts").fetchall()


# Subqueries correlated on another column than the shard key, decorrelated: each
# becomes a CTE grouped by its correlation columns, run first (shardq.sql.decorrelate).
# (sql, params): ordered by enough columns to fix every row's place.
DECORRELATED: list[tuple[str, list[object] | None]] = [
    # TPC-H Q17's shape: the outer column of a reference table joined to the distributed one
    (
        "SELECT count(*), sum(p.q) FROM pairs p, pair_ref r WHERE r.a = p.a AND r.b = p.b "
        "AND p.q < (SELECT 0.5 * avg(q) FROM pairs WHERE pairs.a = r.a)",
        None,
    ),
    (
        "SELECT p.id FROM pairs p JOIN pair_ref r ON r.a = p.a AND r.b = 1 "
        "WHERE p.q > (SELECT avg(i.q) FROM pairs i WHERE i.a = r.a) ORDER BY p.id",
        None,
    ),
    # the outer table distributed too, correlated on its own non-key column (NULLs in it)
    (
        "SELECT id FROM pairs o WHERE o.q >= (SELECT avg(i.q) FROM pairs i WHERE i.a = o.a) "
        "ORDER BY id",
        None,
    ),
    # two correlation columns (Q20's shape), of two integer types; groups with no row
    (
        "SELECT r.a, r.b, r.x FROM pair_ref r WHERE r.x < (SELECT sum(p.q) FROM pairs p "
        "WHERE p.a = r.a AND p.b = r.b AND p.q > -3) ORDER BY 1, 2",
        None,
    ),
    # count of no row is 0 (an empty group, a NULL correlation value), not NULL
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE (SELECT count(*) FROM pairs p "
        "WHERE p.a = r.a AND p.b = r.b) < 3 ORDER BY 1, 2",
        None,
    ),
    # count of a column whose group holds only NULLs (a = 4) is 0 too
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE (SELECT count(p.q) FROM pairs p "
        "WHERE p.a = r.a) = 0 ORDER BY 1, 2",
        None,
    ),
    # expressions that are not NULL when the aggregate is: evaluated on the same values
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE (SELECT coalesce(sum(p.q), 0) + count(*) "
        "FROM pairs p WHERE p.a = r.a) = 0 ORDER BY 1, 2",
        None,
    ),
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE coalesce((SELECT max(p.q) FROM pairs p "
        "WHERE p.a = r.a), -1) < 0 ORDER BY 1, 2",
        None,
    ),
    # numeric scale: avg's digits, as text
    (
        "SELECT r.a, r.b, (r.x * 2)::text FROM pair_ref r WHERE ((SELECT avg(p.q) FROM pairs p "
        "WHERE p.a = r.a))::text LIKE '%.%0' ORDER BY 1, 2",
        None,
    ),
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE length(((SELECT 3 * avg(p.q) FROM pairs p "
        "WHERE p.a = r.a))::text) > 18 ORDER BY 1, 2",
        None,
    ),
    # a date correlation column, min of it
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE r.d <= (SELECT min(p.d) FROM pairs p "
        "WHERE p.d = r.d AND p.b = r.b) ORDER BY 1, 2",
        None,
    ),
    # EXISTS and NOT EXISTS (Q22's shape)
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE NOT EXISTS (SELECT 1 FROM pairs p "
        "WHERE p.a = r.a AND p.q > 50) ORDER BY 1, 2",
        None,
    ),
    (
        "SELECT o.id FROM pairs o WHERE EXISTS (SELECT * FROM pairs i WHERE i.b = o.a AND i.q < 0) "
        "ORDER BY 1",
        None,
    ),
    # parameters, in the subquery and around it
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE r.x > %s AND r.x < (SELECT sum(p.q) FROM pairs p "
        "WHERE p.a = r.a AND p.q > %s) ORDER BY 1, 2",
        [0, "1.5"],
    ),
    # a literal percent sign, with parameters and without
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE r.t LIKE %s AND r.t NOT LIKE 'z%%' AND r.x < "
        "(SELECT sum(p.q) FROM pairs p WHERE p.a = r.a AND p.q > %s) ORDER BY 1, 2",
        ["%", -1],
    ),
    (
        "SELECT r.a, r.b FROM pair_ref r WHERE r.t NOT LIKE 'z%' AND r.x < "
        "(SELECT sum(p.q) FROM pairs p WHERE p.a = r.a) ORDER BY 1, 2",
        None,
    ),
    # the groups LEFT JOINed after the item the outer columns are of: a reference
    # table first (the join would repeat its rows per shard: looked up instead), *
    # (the join's columns would show), two subqueries, columns of two outer tables
    (
        "SELECT r.a, count(*) FROM pair_ref r, pairs p WHERE p.a = r.a AND p.q > "
        "(SELECT avg(i.q) FROM pairs i WHERE i.b = r.b) GROUP BY r.a ORDER BY 1",
        None,
    ),
    (
        "SELECT * FROM pair_ref r WHERE r.x < (SELECT sum(p.q) FROM pairs p WHERE p.a = r.a) "
        "ORDER BY a, b",
        None,
    ),
    (
        "SELECT r.a, r.b FROM pair_ref r LEFT JOIN labels l ON l.code = r.t "
        "WHERE r.x < (SELECT sum(p.q) FROM pairs p WHERE p.a = r.a) "
        "AND (SELECT count(*) FROM pairs p2 WHERE p2.b = r.b) > 20 ORDER BY 1, 2",
        None,
    ),
    (
        "SELECT count(*), sum(r.x) FROM pair_ref r, pair_ref s WHERE s.a = r.b "
        "AND r.x < (SELECT sum(p.q) FROM pairs p WHERE p.a = r.a AND p.b = s.b)",
        None,
    ),
    # an unqualified outer column; a bigint compared with an integer
    (
        "SELECT count(*), sum(x) FROM pair_ref WHERE x < (SELECT max(q) FROM pairs WHERE b = c)",
        None,
    ),
]


@pytest.mark.parametrize(("sql", "params"), DECORRELATED, ids=[c[0][:60] for c in DECORRELATED])
def test_correlated_subqueries_are_decorrelated(
    sql: str, params: list[object] | None, edge: Edge, conn: shardq.Connection
) -> None:
    assert "decorrelated" in conn.explain(sql, params)
    same_result(conn, edge.dsn, sql, params, ordered="ORDER BY" in sql)


NOT_DECORRELATED = [
    # a float sum depends on the order of its terms
    "SELECT r.a FROM pair_ref r WHERE r.x < (SELECT sum(p.r) FROM pairs p WHERE p.a = r.a)",
    # text: GROUP BY and = may disagree (a nondeterministic collation)
    "SELECT r.a FROM pair_ref r WHERE r.x < (SELECT max(p.q) FROM pairs p WHERE p.t = r.t)",
    # correlated by other than an equality, or under OR
    "SELECT r.a FROM pair_ref r WHERE r.x < (SELECT max(p.q) FROM pairs p WHERE p.a < r.a)",
    "SELECT r.a FROM pair_ref r WHERE r.x < (SELECT max(p.q) FROM pairs p "
    "WHERE p.a = r.a OR p.b = r.b)",
    "SELECT count(*) FROM pairs o WHERE EXISTS (SELECT * FROM pairs i WHERE i.b = o.a "
    "AND i.id <> o.id)",
    # a LIMIT, a condition that could fail on rows the subquery never reads
    "SELECT r.a FROM pair_ref r WHERE r.x < (SELECT max(p.q) FROM pairs p WHERE p.a = r.a LIMIT 1)",
    "SELECT r.a FROM pair_ref r WHERE r.x < (SELECT max(p.q) FROM pairs p WHERE p.a = r.a "
    "AND 10 / p.b > 1)",
    # a division beside it, which the database may now evaluate before r.b > 0
    "SELECT r.a FROM pair_ref r WHERE r.b > 0 AND 10 / r.b < (SELECT max(p.q) FROM pairs p "
    "WHERE p.a = r.a)",
    # in the select list (its column's name)
    "SELECT r.a, r.b, (SELECT max(p.q) FROM pairs p WHERE p.a = r.a) FROM pair_ref r",
]


@pytest.mark.parametrize("sql", NOT_DECORRELATED, ids=[s[:60] for s in NOT_DECORRELATED])
def test_correlated_subqueries_not_provably_the_same_are_gathered(
    sql: str, edge: Edge, conn: shardq.Connection
) -> None:
    assert "gathered to" in conn.explain(sql)
    same_result(conn, edge.dsn, sql)


def test_decorrelation_gathers_over_max_decorrelated_rows(edge: Edge) -> None:
    sql = DECORRELATED[3][0]
    with shardq.connect({**edge.config, "max_decorrelated_rows": 0}) as off:
        assert "gathered to" in off.explain(sql)
        same_result(off, edge.dsn, sql, ordered=True)
    # More groups than allowed, found when they come back: gathered instead.
    with shardq.connect({**edge.config, "max_decorrelated_rows": 2}) as small:
        assert "decorrelated" in small.explain(sql)
        same_result(small, edge.dsn, sql, ordered=True)
        assert "gathered to" in small.explain(sql, analyze=True)


def test_a_subquery_run_first_is_decorrelated_in_its_turn(
    edge: Edge, conn: shardq.Connection
) -> None:
    # Q20's shape: the correlated subquery is inside one run first.
    sql = (
        "SELECT r.t FROM pair_ref r WHERE r.a IN (SELECT r2.a FROM pair_ref r2 "
        "WHERE r2.x > (SELECT avg(p.q) FROM pairs p WHERE p.a = r2.a AND p.b = r2.b)) ORDER BY 1"
    )
    same_result(conn, edge.dsn, sql, ordered=True)
