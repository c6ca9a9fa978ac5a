"""The result cache's codec: exact round trips, canonical parameters, hostile bytes."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import math
import sys
import uuid
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardq.cache.codec import CodecError, decode, encode, encode_params
from shardq.execute.driver import Column

HEADER = b"SQC\x01\x00"
KEYS = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same type all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)  # exponent, sign of zero, NaN and sNaN included
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime | dt.time):
        wall = a.replace(tzinfo=None) == b.replace(tzinfo=None)
        return wall and a.fold == b.fold and same_tz(a.tzinfo, b.tzinfo)
    return bool(a == b)


def same_tz(a: dt.tzinfo | None, b: dt.tzinfo | None) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, ZoneInfo):
        assert isinstance(b, ZoneInfo)
        return a.key == b.key
    if isinstance(a, dt.timezone):
        return a.utcoffset(None) == b.utcoffset(None) and a.tzname(None) == b.tzname(None)
    return a is None


def round_trip(rows: list[tuple[Any, ...]], description: Any = None) -> list[tuple[Any, ...]]:
    got = decode(encode(description, rows, len(rows), ("s0",)))
    assert same(got, (description, rows, len(rows), ("s0",)))
    return got[1]


# --------------------------------------------------------------------------- strategies

offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)
)
tzinfos = st.one_of(
    st.none(),
    st.sampled_from(KEYS).map(ZoneInfo),
    st.just(dt.UTC),
    st.builds(dt.timezone, offsets),
    st.builds(dt.timezone, offsets, st.text(min_size=1, max_size=6)),
)
folds = st.integers(0, 1)
datetimes = st.builds(lambda d, f: d.replace(fold=f), st.datetimes(timezones=tzinfos), folds)
times = st.builds(lambda t, f: t.replace(fold=f), st.times(timezones=tzinfos), folds)
special_decimals = st.sampled_from(
    ["NaN", "-NaN", "sNaN", "NaN123", "Infinity", "-Infinity", "-0", "0E-10", "1.50", "1E+3"]
).map(Decimal)
decimals = st.one_of(
    st.decimals(),
    special_decimals,
    st.builds(
        lambda sign, digits, exp: Decimal((sign, digits, exp)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), min_size=1, max_size=40).map(tuple),
        st.integers(-40, 40),
    ),
)
floats = st.floats() | st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1.0, 1e16])
ints = st.integers() | st.sampled_from([2**63, -(2**63) - 1, 2**200])
texts = st.text() | st.sampled_from(["", ",", "j", "v", "l", "D", "S", "NaN", "null", "1"])


def _interface(address: Any, prefix: int) -> Any:
    return ipaddress.ip_interface((address, prefix % (address.max_prefixlen + 1)))


def _network(address: Any, prefix: int) -> Any:
    return ipaddress.ip_network((address, prefix % (address.max_prefixlen + 1)), strict=False)


ips = st.one_of(
    st.ip_addresses(),
    st.builds(_interface, st.ip_addresses(), st.integers(0, 128)),
    st.builds(_network, st.ip_addresses(), st.integers(0, 128)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
SCALARS = [
    ints,
    texts,
    floats,
    decimals,
    st.booleans(),
    st.binary(),
    st.dates(),
    times,
    datetimes,
    st.timedeltas(),
    st.uuids(),
    ips,
]
scalars = st.one_of(SCALARS)
arrays = st.recursive(st.none() | scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
anything = st.one_of(scalars, json_values, arrays)
# A column draws from one kind (the fast forms), perhaps with NULLs, or from all at once.
column_kinds = st.sampled_from([*SCALARS, json_values, arrays, anything])
columns = st.builds(
    Column,
    texts,
    st.none() | st.integers(),
    st.none() | st.integers(),
    st.none() | st.integers(),
    st.none() | st.integers(),
    st.none() | st.integers(),
    st.none() | st.booleans(),
)


@st.composite
def results(draw: st.DrawFn) -> tuple[Any, list[tuple[Any, ...]], int, tuple[str, ...]]:
    width, nrows = draw(st.integers(0, 5)), draw(st.integers(0, 6))
    values = []
    for _ in range(width):
        kind = draw(column_kinds)
        if draw(st.booleans()):
            kind = st.none() | kind
        values.append(draw(st.lists(kind, min_size=nrows, max_size=nrows)))
    rows = list(zip(*values, strict=True)) if values else [()] * nrows
    description = draw(st.none() | st.lists(columns, min_size=width, max_size=width).map(tuple))
    shards = draw(st.lists(texts, max_size=3).map(tuple))
    return description, rows, draw(st.integers(-1, 10**12)), shards


# --------------------------------------------------------------------------- round trips


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(result=results())
def test_every_result_comes_back_with_the_same_values_and_types(result: Any) -> None:
    assert same(decode(encode(*result)), result)


@given(values=st.lists(anything, max_size=5))
def test_any_values_in_one_column_come_back(values: list[Any]) -> None:
    round_trip([(v,) for v in values])


@pytest.mark.parametrize(
    "column",
    [
        [1.0, -0.0, math.nan, math.inf, -math.inf, None, 1e16],
        [True, False, None],
        [1, True, 1.0, "1", None, Decimal("1")],
        [Decimal("1.50"), Decimal("-0"), Decimal("NaN"), Decimal("-Infinity"), Decimal("1E+3")],
        [2**64, -(2**70), None],
        ["j", ["l", 1], {"D": "1.5"}, ["S", None, "AAE="], "", ","],
        ["\ud800 a lone surrogate", {"\udfff": ["\ud800"]}],
        [b"", b"\x00,", None, b"x" * 100],
        [ipaddress.ip_address("fe80::1%eth0,1"), ipaddress.ip_address("::1")],
    ],
)
def test_types_that_json_confuses_stay_apart(column: list[Any]) -> None:
    round_trip([(v,) for v in column])


def test_zoneinfo_keys_and_folds_survive() -> None:
    paris = ZoneInfo("Europe/Paris")
    first = dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris)
    second = first.replace(fold=1)  # the same wall time, one hour later
    (row,) = round_trip([(first, second, dt.time(2, 30, fold=1, tzinfo=paris))])
    assert row[1].tzinfo is paris
    assert row[1].fold == 1
    assert row[1].utcoffset() == dt.timedelta(hours=1)
    assert row[0].utcoffset() == dt.timedelta(hours=2)


def test_fixed_offsets_keep_their_names() -> None:
    named = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")
    rows = [(dt.datetime(2020, 1, 1, tzinfo=named),), (dt.datetime(2020, 1, 1, tzinfo=dt.UTC),)]
    got = round_trip(rows)
    assert got[0][0].tzname() == "IST"
    assert got[1][0].tzinfo is dt.UTC


def test_a_column_mixing_zones_comes_back() -> None:
    same_offset = dt.timezone(dt.timedelta(hours=1), "CET")
    values = [
        dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime(2020, 1, 1, tzinfo=same_offset),
        dt.datetime(2020, 1, 1, tzinfo=ZoneInfo("UTC")),
        dt.datetime(2020, 1, 1),
        None,
    ]
    round_trip([(v,) for v in values])


@pytest.mark.parametrize("blob", [bytearray(b"ab"), memoryview(b"ab"), memoryview(b"xaybz")[::2]])
def test_bytes_like_values_come_back_as_bytes(blob: Any) -> None:
    got = decode(encode(None, [(blob,), (None,)], 1, ()))
    assert got[1] == [(bytes(blob),), (None,)]
    assert type(got[1][0][0]) is bytes


def test_rows_without_columns_keep_their_count() -> None:
    assert decode(encode(None, [(), (), ()], 3, ())) == (None, [(), (), ()], 3, ())
    assert decode(encode(None, [], -1, ())) == (None, [], -1, ())


def test_a_large_result_is_compressed_and_a_small_one_is_not() -> None:
    row = (1, "some text that repeats", Decimal("12.50"), dt.datetime(2024, 1, 1), True, 2.5)
    small, large = encode(None, [row] * 100, 100, ()), encode(None, [row] * 5000, 5000, ())
    assert small[4] == 0
    assert large[4] == 1
    assert decode(large)[1] == [row] * 5000


# --------------------------------------------------------------------------- refusals


class Opaque:
    pass


class Level(int):
    pass


class OtherZone(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)


class UnhashableZone(OtherZone):
    def __eq__(self, other: object) -> bool:
        return other is self

    __hash__ = None  # type: ignore[assignment]


def unencodable() -> list[Any]:
    from psycopg.types.range import Range

    cycle: list[Any] = []
    cycle.append(cycle)
    with (
        next(p for p in map(Path, zoneinfo.TZPATH) if (p / "UTC").is_file())
        .joinpath("UTC")
        .open("rb") as tzif
    ):
        file_zone = ZoneInfo.from_file(tzif)  # a zone without a key
    return [
        Opaque(),
        Range(1, 5),
        {1: "int key"},
        [{"a": {2: "deep"}}],
        {1, 2},
        1j,
        Level(1),
        cycle,
        10**5000,
        dt.datetime(2020, 1, 1, tzinfo=file_zone),
        dt.time(1, tzinfo=OtherZone()),
        dt.datetime(2020, 1, 1, tzinfo=UnhashableZone()),
    ]


@pytest.mark.parametrize("value", unencodable(), ids=lambda v: type(v).__name__)
def test_unencodable_values_raise_codec_error(value: Any) -> None:
    for rows in ([(value,)], [(value,), (None,)], [(value,), (1,)]):
        with pytest.raises(CodecError):
            encode(None, rows, 1, ())
    with pytest.raises(CodecError):
        encode_params([value])


def test_the_message_names_the_type() -> None:
    from psycopg.types.range import Range

    with pytest.raises(CodecError, match="Range"):
        encode(None, [(Range(1, 5),)], 1, ())
    with pytest.raises(CodecError, match="Opaque"):
        encode_params({"x": Opaque()})


@pytest.mark.parametrize(
    "args",
    [
        (None, [[1]], 1, ()),
        (None, [(1, 2), (1,)], 1, ()),
        (None, [(1,), (1, 2)], 1, ()),
        (None, ((1,),), 1, ()),
        ((("a", None, None, None, None, None, None),), [], 0, ()),
        ((Column("a", 1.5),), [], 0, ()),
        (None, [], True, ()),
        (None, [], 0, ["s0"]),
    ],
)
def test_malformed_results_raise_codec_error(args: Any) -> None:
    with pytest.raises(CodecError):
        encode(*args)


@pytest.mark.parametrize("params", [{1: 2}, {1, 2}, "a string", 5, (x for x in ())])
def test_malformed_params_raise_codec_error(params: Any) -> None:
    with pytest.raises(CodecError):
        encode_params(params)


# --------------------------------------------------------------------------- parameters

DISTINCT = [
    1,
    True,
    1.0,
    Decimal("1"),
    Decimal("1.0"),
    "1",
    b"1",
    [1],
    (1,),
    {"1": 1},
    0,
    False,
    0.0,
    -0.0,
    None,
    "",
    b"",
    [],
    {},
    math.nan,
    dt.date(2020, 1, 1),
    dt.datetime(2020, 1, 1),
    dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2020, 1, 1, tzinfo=ZoneInfo("UTC")),
    dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(0), "Z")),
    dt.datetime(2020, 1, 1, fold=1),
    dt.time(0),
    dt.timedelta(0),
    dt.timedelta(microseconds=1),
    uuid.UUID(int=1),
    ipaddress.ip_address("0.0.0.1"),
    ipaddress.ip_interface("0.0.0.1/32"),
    ipaddress.ip_network("0.0.0.1/32"),
    ipaddress.ip_address("::1"),
    "D",
    ["D", "1"],
    ["l", 1],
]


def test_values_a_database_tells_apart_give_different_keys() -> None:
    keys = [encode_params([v]) for v in DISTINCT]
    assert len(set(keys)) == len(DISTINCT)


@given(values=st.lists(anything, max_size=4))
def test_equal_params_give_equal_bytes(values: list[Any]) -> None:
    copied = decode(encode(None, [(v,) for v in values], 0, ()))[1]
    assert encode_params(values) == encode_params(tuple(v for (v,) in copied))
    named = dict(zip(map(str, range(len(values))), values, strict=True))
    assert encode_params(named) == encode_params(dict(reversed(named.items())))


@given(a=anything, b=anything)
def test_different_params_give_different_bytes(a: Any, b: Any) -> None:
    assert (encode_params([a]) == encode_params([b])) == same(a, b)


def test_named_and_positional_params_differ() -> None:
    assert encode_params(None) != encode_params([]) != encode_params({})
    assert encode_params([[1, 2]]) != encode_params([1, 2])
    # Inside a JSON value key order is data: json (unlike jsonb) keeps it.
    assert encode_params([{"a": 1, "b": 2}]) != encode_params([{"b": 2, "a": 1}])


# --------------------------------------------------------------------------- hostile bytes

SAMPLE = encode(
    (Column("a", 23), Column("b", 25)),
    [
        (1, "x", Decimal("1.5"), dt.datetime(2020, 1, 1, tzinfo=ZoneInfo("UTC")), 1.5, [1, None]),
        (2, None, None, None, None, [Decimal(1)]),
    ],
    2,
    ("s0",),
)


def decodes_or_refuses(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(data)


@given(data=st.binary())
def test_random_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)
    decodes_or_refuses(HEADER + data)


@pytest.mark.parametrize("size", range(len(SAMPLE)))
def test_truncated_encodings_are_refused(size: int) -> None:
    with pytest.raises(CodecError):
        decode(SAMPLE[:size])


@given(data=st.data())
def test_mutated_encodings_decode_or_raise_codec_error(data: st.DataObject) -> None:
    mutated = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(SAMPLE) - 1))] = data.draw(st.integers(0, 255))
    decodes_or_refuses(bytes(mutated))


tag_strings = st.sampled_from(["j", "v", "f", "S", "T", "l", "u", "D", "b", "d", "I", "U", "4a"])
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | tag_strings,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=20,
)


@given(
    description=st.none() | json_junk,
    nrows=st.integers(-1, 3) | json_junk,
    entries=st.lists(st.lists(json_junk, max_size=4), max_size=3) | json_junk,
)
def test_crafted_json_decodes_or_raises_codec_error(
    description: Any, nrows: Any, entries: Any
) -> None:
    body = json.dumps([description, 1, ["s0"], nrows, entries]).encode()
    decodes_or_refuses(HEADER + body)


def crafted(*columns: Any, nrows: int = 1, description: Any = None) -> bytes:
    return HEADER + json.dumps([description, 1, ["s0"], nrows, list(columns)]).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"SQC\x02\x00[]",  # a later version
        b"SQC\x01\x04[]",  # unknown flags
        b"SQC\x01\x01not zlib",
        HEADER + b"[" * 100_000,
        crafted(["zz", "x", []]),
        crafted([["j"], [1]]),
        crafted(["j", [1, 2]]),
        crafted(["j", {"a": 1}]),
        crafted(["f", "AAAA", []]),
        crafted(["D", "1,2", []]),
        crafted(["D", "x", []]),
        crafted(["S", "../../../etc/passwd", "AAEBAQAAAAAAAA==", []]),
        crafted(["S", "No/Such_Zone", "AAEBAQAAAAAAAA==", []]),
        crafted(["S", None, "AAECHgAAAAAAAA==", []]),  # 0001-02-30
        crafted(["S", None, "AAENAQAAAAAAAA==", []]),  # month 13
        crafted(["T", [86400000000], "AAAAAAAA", []]),  # an offset of a whole day
        crafted(["T", None, "GAAAAAAA", []]),  # hour 24
        crafted(["v", [["S", None, "AAEBAQAAAAAAAAA="]]]),  # 11 bytes
        crafted(["v", [["nope", 1]]]),
        crafted(["v", [[["l"], 1]]]),
        crafted(["v", [[]]]),
        crafted(["j", [1]], nrows=-1),
        crafted(nrows=1.5),
        crafted(["j", [1]], description=[["a", 1, 2, 3, 4, 5]]),
        crafted(["j", [1]], description=[["a", 1, 2, 3, 4, 5, [6]]]),
    ],
)
def test_invalid_encodings_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)


def test_decoding_imports_nothing() -> None:
    before = set(sys.modules)
    decodes_or_refuses(crafted(["v", [["os", "system"]]]))
    decode(SAMPLE)
    assert set(sys.modules) == before


def test_crafted_sizes_are_refused_before_they_allocate() -> None:
    import zlib

    from shardq.cache import codec

    header = encode(None, [], 0, ())[:4]
    # Rows without columns cost no bytes to send: a huge count is refused.
    empty = json.dumps([None, 0, [], 2**40, []]).encode()
    with pytest.raises(CodecError, match="without columns"):
        decode(header + b"\x00" + empty)
    # A compressed body may not inflate past the bound.
    bomb = zlib.compress(b" " * (codec.MAX_DECODED + 1), 9)
    with pytest.raises(CodecError, match="inflates beyond"):
        decode(header + bytes([1]) + bomb)
