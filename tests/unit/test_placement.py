"""Placement is stable: pinned values, and the same in every process."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest

from shardq.placement import HASH_SPACE, HashRange, Placement, canonical_key, key_hash

# Changing any of these strands every row already placed: they must never change.
PINNED = {
    1: 2146342996,
    -1: 3787425912,
    2**40: 3072260429,
    "alice": 3992532756,
    "": 3167121771,
    "日本": 3025624156,
    uuid.UUID(int=0): 1064001105,
    dt.date(2024, 2, 29): 1951333335,
    b"\x00\x01": 3547269868,
}


@pytest.mark.parametrize(("value", "expected"), list(PINNED.items()))
def test_pinned_hashes(value: object, expected: int) -> None:
    assert key_hash(value) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (42, "42"),
        (42, " 42 "),
        (42, Decimal("42.00")),
        (42, 42.0),
        (-7, "-7"),
        (Decimal("1.50"), "1.5"),
        (uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
        (uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "{a0eebc999c0b4ef8bb6d6bb9bd380a11}"),
        (dt.date(2024, 1, 31), "2024-01-31"),
        (
            dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC),
        ),
    ],
)
def test_equal_values_hash_alike_however_spelled(a: object, b: object) -> None:
    assert canonical_key(a) == canonical_key(b)


def test_different_texts_are_kept_apart() -> None:
    assert canonical_key("abc") != canonical_key("abd")
    assert canonical_key("42") != canonical_key("42a")


@pytest.mark.parametrize("bad", [None, True, float("nan"), object()])
def test_values_that_cannot_be_keys(bad: object) -> None:
    with pytest.raises(ValueError, match="shard key"):
        key_hash(bad)


def test_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import uuid, datetime as dt; from shardq.placement import key_hash; "
        "print([key_hash(v) for v in (1, 'alice', uuid.UUID(int=0), dt.date(2024, 2, 29))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = [PINNED[1], PINNED["alice"], PINNED[uuid.UUID(int=0)], PINNED[dt.date(2024, 2, 29)]]
    assert out.strip() == str(expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_ranges_are_contiguous_and_cover_the_hash_space(n: int) -> None:
    placement = Placement.uniform([f"s{i}" for i in range(n)])
    ranges = placement.ranges
    assert ranges[0].lo == 0
    assert ranges[-1].hi == HASH_SPACE
    assert all(a.hi == b.lo for a, b in itertools.pairwise(ranges))
    for r in ranges:
        assert placement.shard_for_hash(r.lo) == r.shard
        assert placement.shard_for_hash(r.hi - 1) == r.shard


def test_keys_spread_over_the_shards() -> None:
    placement = Placement.uniform(["a", "b", "c", "d"])
    counts: dict[str, int] = {}
    for key in range(10_000):
        shard = placement.shard_for(key)
        counts[shard] = counts.get(shard, 0) + 1
    assert all(2_200 < c < 2_800 for c in counts.values()), counts


def test_shards_for_places_many_values_as_shard_for_places_each() -> None:
    placement = Placement(
        (HashRange(0, 2**30, "a"), HashRange(2**30, 2**31, "b"), HashRange(2**31, HASH_SPACE, "a"))
    )
    texts = ["42", "007", " 42 ", "-7", "+3", "1_000", "\u00b2", "\u0664\u0662", "", "1.5", "abc"]
    values: list[object] = [
        *range(-50, 50),
        *PINNED,
        *texts,
        2**70,
        Decimal("4.0"),
        3.0,
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
    ]
    assert placement.shards_for(values) == [placement.shard_for(v) for v in values]
    assert placement.shards_for([]) == []
    # Ranges cut anywhere (a digest compared as bytes), many keys of both kinds.
    cuts = [0, 1, 255, 256, 2**24 - 1, 2**31 + 12345, HASH_SPACE - 1, HASH_SPACE]
    odd = Placement(tuple(HashRange(lo, hi, f"r{lo}") for lo, hi in itertools.pairwise(cuts)))
    many = [*range(20_000), *map(str, range(0, 2**40, 2**40 // 5000))]
    assert odd.shards_for(many) == [odd.shard_for(v) for v in many]
    for bad in (None, True, float("nan")):
        with pytest.raises(ValueError, match="shard key"):
            placement.shards_for([1, bad, 2])
