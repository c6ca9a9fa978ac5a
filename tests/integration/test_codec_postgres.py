"""The result cache's codec on values read from a real PostgreSQL server through psycopg 3.

Results are read as shardq's driver reads them (its ``_outcome``: description,
rows, rowcount), under a session time zone with daylight saving time, and must
come back from the codec equal and of the same types.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from shardq.cache.codec import CodecError, decode, encode
from shardq.execute.drivers.postgres import _outcome
from tests.unit.test_codec import same

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from shardq.execute.driver import Outcome
    from tests.fixtures.servers import PgCluster

pytestmark = pytest.mark.postgres

LITERALS = """
SELECT
    32767::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8,
    1.50::numeric AS n, 'NaN'::numeric AS n_nan, 'Infinity'::numeric AS n_inf,
    '-Infinity'::numeric AS n_minf, 0.000::numeric AS n_zero, 1e-30::numeric AS n_tiny,
    123456789012345678901234567890.123456789::numeric AS n_big, 1.5::float4 AS f4,
    1.0::float8 AS f8, 'NaN'::float8 AS f_nan, 'Infinity'::float8 AS f_inf,
    '-Infinity'::float8 AS f_minf, '-0'::float8 AS f_mzero, 1e300::float8 AS f_huge,
    'text, with "quotes" and ünïcödé' AS t, '' AS t_empty, 'NULL' AS t_null_word,
    'x'::varchar(3) AS vc, 'c'::"char" AS ch, 'name'::name AS nm, 42::oid AS o,
    '\\x00ff2c'::bytea AS b, ''::bytea AS b_empty, true AS yes, false AS no,
    '2024-02-29'::date AS d, '0001-01-01'::date AS d_min,
    '23:59:59.999999'::time AS tm, '12:34:56.789+05:30'::timetz AS tmtz,
    '2024-10-27 02:30:00'::timestamp AS ts,
    '2024-10-27 00:30:00+00'::timestamptz AS tstz_summer,
    '2024-10-27 01:30:00+00'::timestamptz AS tstz_winter,
    '1900-01-01 00:00:00+00'::timestamptz AS tstz_lmt,
    '1 day 02:03:04.000005'::interval AS iv, '-3 days -00:00:01'::interval AS iv_neg,
    '1 year 2 months'::interval AS iv_months,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
    '{"b": 1, "a": [1, 2.5, null, "x", true], "c": {"d": "e"}}'::json AS js,
    '{"b": 1, "a": [1, 2.5, null, "x", true], "c": {"d": "e"}}'::jsonb AS jsb,
    '[1, "two", 3.0]'::jsonb AS js_array, '"just a string"'::json AS js_string,
    'null'::jsonb AS js_null, '12345678901234567890'::jsonb AS js_bigint,
    '{1,NULL,3}'::int[] AS int_array, '{"a,b",NULL,"NULL",""}'::text[] AS text_array,
    '{{1,2},{3,NULL}}'::int[][] AS matrix, '{}'::int[] AS empty_array,
    '{1.50,NaN,NULL}'::numeric[] AS numeric_array,
    '{NaN,-Infinity,-0}'::float8[] AS float_array,
    ARRAY['2024-01-01 00:00+00'::timestamptz, NULL] AS tstz_array,
    ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid] AS uuid_array,
    '{10.0.0.1,10.0.0.0/8,NULL}'::inet[] AS inet_array, '{"\\\\x01",NULL}'::bytea[] AS bytea_array,
    '{{t,f},{NULL,t}}'::bool[] AS bool_array, '{2024-01-01}'::date[] AS date_array,
    '192.168.0.1'::inet AS host, '192.168.0.1/24'::inet AS iface,
    '2001:db8::1/64'::inet AS iface6, '::1'::inet AS host6,
    '10.0.0.0/8'::cidr AS net, '2001:db8::/32'::cidr AS net6,
    '(1,2)'::point AS pt, '<a>x</a>'::xml AS x, NULL AS nothing, NULL::int AS no_int
"""

# Sixty rows, each column of one type with NULLs here and there, across the night
# Paris leaves summer time: the columns take the codec's fast forms.
SERIES = """
SELECT
    i::int8 AS id,
    CASE WHEN i % 5 <> 0 THEN i * 1.25 END::numeric(10, 2) AS total,
    CASE WHEN i % 3 <> 0
        THEN timestamptz '2024-10-26 23:00:00+00' + i * interval '3 minutes 3.5 seconds' END
        AS at,
    timestamp '2024-03-31 01:00' + i * interval '1 minute' AS local_at,
    CASE WHEN i % 4 <> 0 THEN 'name ' || i END AS name,
    i % 2 = 0 AS even,
    CASE WHEN i % 7 <> 0 THEN i / 7.0::float8 END AS ratio,
    CASE WHEN i % 6 <> 0 THEN date '2024-01-01' + i END AS day,
    md5(i::text)::uuid AS key,
    CASE WHEN i % 8 <> 0 THEN time '00:00' + i * interval '7 minutes 0.25 seconds' END AS tm,
    (time with time zone '10:00+02') + i * interval '1 second' AS tmtz,
    inet '10.0.0.0' + i AS ip,
    decode(md5(i::text), 'hex') AS blob,
    make_interval(secs => i * -1.5) AS span,
    CASE WHEN i % 9 <> 0 THEN jsonb_build_object('i', i, 'half', i / 2.0) END AS doc,
    ARRAY[i, NULL, i * 2] AS arr
FROM generate_series(1, 60) AS i
"""


@pytest.fixture
async def paris(pg_clusters: list[PgCluster]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A session on the first cluster whose time zone changes offset in the year."""
    conn = await psycopg.AsyncConnection.connect(pg_clusters[0].dsn(), autocommit=True)
    try:
        await conn.execute("SET TimeZone TO 'Europe/Paris'")
        yield conn
    finally:
        await conn.close()


async def read(conn: psycopg.AsyncConnection[Any], sql: str) -> Outcome:
    cursor = conn.cursor()
    await cursor.execute(sql)
    return await _outcome(cursor)


def assert_round_trip(outcome: Outcome) -> None:
    result = (outcome.description, outcome.rows, outcome.rowcount, ("s0", "s1"))
    assert same(decode(encode(*result)), result)


async def test_literals_of_every_type_come_back_exactly(
    paris: psycopg.AsyncConnection[Any],
) -> None:
    outcome = await read(paris, LITERALS)
    assert_round_trip(outcome)
    assert outcome.description is not None
    (row,) = outcome.rows
    got = dict(zip([c.name for c in outcome.description], row, strict=True))
    # The values are the kinds the codec promises to keep; check psycopg gave them.
    assert got["f_mzero"] == 0.0
    assert str(got["n_nan"]) == "NaN"
    assert got["n_zero"].as_tuple().exponent == -3
    assert got["tstz_summer"].tzinfo == ZoneInfo("Europe/Paris")
    assert (got["tstz_summer"].fold, got["tstz_winter"].fold) == (0, 1)
    assert got["tmtz"].tzinfo == dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert isinstance(got["iface"], ipaddress.IPv4Interface)
    assert isinstance(got["net6"], ipaddress.IPv6Network)
    assert got["iv_neg"] < dt.timedelta(0)
    assert isinstance(got["js"], dict)
    assert got["numeric_array"][0] == Decimal("1.50")
    assert got["matrix"] == [[1, 2], [3, None]]


async def test_columns_of_one_type_with_nulls_come_back_exactly(
    paris: psycopg.AsyncConnection[Any],
) -> None:
    outcome = await read(paris, SERIES)
    assert len(outcome.rows) == 60
    assert_round_trip(outcome)
    folds = {row[2].fold for row in outcome.rows if row[2] is not None}
    assert folds == {0, 1}  # the column crosses the repeated hour


async def test_a_range_is_refused(paris: psycopg.AsyncConnection[Any]) -> None:
    outcome = await read(paris, "SELECT int4range(1, 5) AS r, 1 AS one")
    with pytest.raises(CodecError, match="Range"):
        encode(outcome.description, outcome.rows, outcome.rowcount, ("s0",))
