"""The merge, without a database: k-way merge, regrouping, PostgreSQL arithmetic."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import shardq
from shardq.merge.aggregate import Regroup
from shardq.merge.drive import drive_sync
from shardq.merge.evaluate import compile_expr, semantics
from shardq.merge.numeric import numeric_div, numeric_round
from shardq.merge.order import kway, sort_key
from shardq.merge.pipeline import merger
from shardq.merge.steps import (
    Aggregation,
    Call,
    Col,
    Combine,
    Const,
    MergePlan,
    Output,
    SortKey,
    TypeRule,
)

PG = semantics("postgres")

values = st.one_of(st.none(), st.integers(-5, 5))
rows = st.lists(st.tuples(values, values), max_size=30)
keys = st.lists(
    st.builds(SortKey, st.integers(0, 1), st.booleans(), st.booleans()),
    min_size=1,
    max_size=2,
)


def _reference_compare(a: Any, b: Any, key: SortKey) -> int:
    """PostgreSQL's comparison of two values under one ORDER BY term, written plainly."""
    x, y = a[key.column], b[key.column]
    if x is None or y is None:
        if x is None and y is None:
            return 0
        return (-1 if key.nulls_first else 1) * (1 if x is None else -1)
    result = (x > y) - (x < y)
    return -result if key.descending else result


def _reference_sorted(data: list[Any], terms: list[SortKey]) -> list[Any]:
    def compare(a: Any, b: Any) -> int:
        for term in terms:
            c = _reference_compare(a, b, term)
            if c:
                return c
        return 0

    return sorted(data, key=functools.cmp_to_key(compare))


def _ordering(data: list[Any], terms: list[SortKey]) -> list[Any]:
    """The sequence of sort-key values (rows tied on the keys may come in any order)."""
    return [tuple(r[t.column] for t in terms) for r in data]


@given(data=rows, terms=keys)
def test_sort_key_orders_as_postgresql(data: list[Any], terms: list[SortKey]) -> None:
    key, reverse = sort_key(terms)
    got = sorted(data, key=key, reverse=reverse)
    assert _ordering(got, terms) == _ordering(_reference_sorted(data, terms), terms)


@given(
    parts=st.lists(rows, min_size=1, max_size=5),
    terms=keys,
    batch=st.integers(1, 4),
)
def test_kway_merge_of_sorted_shards_is_sorted(
    parts: list[list[Any]], terms: list[SortKey], batch: int
) -> None:
    shards = []
    for part in parts:
        ordered = _reference_sorted(part, terms)
        shards.append([ordered[i : i + batch] for i in range(0, len(ordered), batch)])
    got = drive_sync(kway(len(shards), terms), shards)
    everything = [r for part in parts for r in part]
    assert sorted(got, key=repr) == sorted(everything, key=repr)  # nothing lost or repeated
    assert _ordering(got, terms) == _ordering(_reference_sorted(everything, terms), terms)


@given(
    parts=st.lists(rows, min_size=1, max_size=4),
    terms=keys,
    limit=st.one_of(st.none(), st.integers(0, 12)),
    offset=st.integers(0, 3),
    computed=st.booleans(),
)
def test_sorting_after_the_merge_orders_as_postgresql(
    parts: list[list[Any]],
    terms: list[SortKey],
    limit: int | None,
    offset: int,
    computed: bool,
) -> None:
    # ORDER BY over rows the merge holds (as after a regroup): one term or
    # several, NULLs first or last, a full sort or a heap for a small LIMIT,
    # on output columns that are columns of the rows (columns swapped here,
    # sorted before they are taken) or computed ones.
    columns = (Col(1), Call("coalesce", (Col(0), Const(None)))) if computed else (Col(1), Col(0))
    plan = MergePlan(
        outputs=tuple(Output(f"c{i}", e, TypeRule()) for i, e in enumerate(columns)),
        sort=tuple(terms),
        offset=offset,
        limit=limit,
    )
    got = drive_sync(merger(plan, len(parts), PG), [[part] for part in parts])
    swapped = [(r[1], r[0]) for part in parts for r in part]
    end = None if limit is None else offset + limit
    expected = _reference_sorted(swapped, terms)[offset:end]
    assert _ordering(got, terms) == _ordering(expected, terms)
    # Rows tied at the LIMIT's edge may be any of the tied ones: each row
    # returned must be a row of the input, used once.
    unused = list(swapped)
    for row in got:
        unused.remove(row)
    assert len(got) == len(expected)


def _with_ties(ordered: list[Any], terms: list[SortKey], offset: int, limit: int) -> list[Any]:
    """PostgreSQL's OFFSET m FETCH FIRST n ROWS WITH TIES over rows already in order."""
    values = _ordering(ordered, terms)
    end = offset + limit
    while limit and offset < end < len(ordered) and values[end] == values[end - 1]:
        end += 1
    return ordered[offset:end] if limit else []


@given(
    parts=st.lists(rows, min_size=1, max_size=4),
    terms=keys,
    limit=st.integers(0, 12),
    offset=st.integers(0, 3),
    batch=st.integers(1, 3),
    regrouped=st.booleans(),
)
def test_with_ties_keeps_the_rows_tying_with_the_last(
    parts: list[list[Any]],
    terms: list[SortKey],
    limit: int,
    offset: int,
    batch: int,
    regrouped: bool,
) -> None:
    # FETCH FIRST n ROWS WITH TIES: from sorted shards (ties may run over batch
    # boundaries) and over rows the merge sorts itself (as after a regroup).
    if regrouped:
        outputs = tuple(Output(f"c{i}", Col(i), TypeRule()) for i in range(2))
        plan = MergePlan(outputs=outputs, sort=tuple(terms), offset=offset, limit=limit, ties=True)
        shards = [[part] for part in parts]
    else:
        plan = MergePlan(order=tuple(terms), offset=offset, limit=limit, ties=True)
        shards = []
        for part in parts:
            ordered = _reference_sorted(part, terms)
            shards.append([ordered[i : i + batch] for i in range(0, len(ordered), batch)])
    got = drive_sync(merger(plan, len(parts), PG), shards)
    everything = _reference_sorted([r for part in parts for r in part], terms)
    expected = _with_ties(everything, terms, offset, limit)
    assert _ordering(got, terms) == _ordering(expected, terms)


def test_limit_stops_asking_the_shards() -> None:
    plan = MergePlan(order=(SortKey(0),), limit=2)
    asked: list[int] = []
    source = [[[(1,)], [(3,)], [(5,)]], [[(2,)], [(4,)]]]

    def counting() -> Any:
        gen = merger(plan, 2, PG)
        request = next(gen)
        out = []
        try:
            while True:
                if isinstance(request, list):
                    out += request
                    request = gen.send(None)
                else:
                    asked.append(request.source)
                    queue = source[request.source]
                    request = gen.send(queue.pop(0) if queue else [])
        except StopIteration:
            return out

    assert counting() == [(1,), (2,)]
    assert len(asked) < 5  # the last batches were never requested


def test_regroup_folds_partials_and_keeps_empty_scalar_rows() -> None:
    spec = Aggregation(1, (Combine.COUNT, Combine.SUM, Combine.MIN, Combine.MAX, Combine.SET))
    r = Regroup(spec)
    r.feed([("a", 2, Decimal("1.10"), 5, "x", 1), (None, 1, None, None, None, None)])
    r.feed([("a", 3, Decimal("2.5"), 2, "y", 1), (None, 4, 7, 1, "z", 2)])
    assert sorted(r.rows(), key=repr) == sorted(
        [("a", 5, Decimal("3.60"), 2, "y", {1}), (None, 5, 7, 1, "z", {2})], key=repr
    )
    scalar = Regroup(Aggregation(0, (Combine.COUNT, Combine.SUM, Combine.SET), scalar=True))
    assert scalar.rows() == [(0, None, set())]


_key_values = st.one_of(
    st.none(),
    st.integers(-2, 2),
    st.sampled_from([1.0, -0.0, 0.0, Decimal("1"), Decimal("1.0"), True]),
    # NaN objects made afresh, as a driver makes them: each a new object
    st.builds(float, st.just("nan")),
    st.builds(Decimal, st.just("NaN")),
    st.sampled_from(["a", "b", "ab"]),
)


_partial = st.one_of(st.none(), st.integers(0, 9))


def _reference_regroup(
    partials: list[tuple[Any, ...]], width: int, combines: tuple[Combine, ...]
) -> dict[tuple[Any, ...], list[Any]]:
    """The regroup written plainly: a dict keyed by the whole key, one fold per combine.

    Every NaN of a type is one value, as in PostgreSQL: the first one seen stands for them.
    """
    expected: dict[tuple[Any, ...], list[Any]] = {}
    nans: dict[type, Any] = {}
    for row in partials:
        key = tuple(nans.setdefault(type(v), v) if v != v else v for v in row[:width])
        values = row[width:]
        state = expected.get(key)
        if state is None:
            expected[key] = [
                (set() if v is None else {v}) if c is Combine.SET else v
                for c, v in zip(combines, values, strict=True)
            ]
            continue
        for i, (c, v) in enumerate(zip(combines, values, strict=True)):
            if v is None:
                continue
            if c is Combine.SET:
                state[i].add(v)
            elif state[i] is None:
                state[i] = v
            else:
                fold = {Combine.MIN: min, Combine.MAX: max}.get(c, lambda a, b: a + b)
                state[i] = fold(state[i], v)
    for state in expected.values():
        for i, c in enumerate(combines):
            if c is Combine.COUNT and state[i] is None:
                state[i] = 0
    return expected


@given(
    width=st.integers(1, 3),
    combines=st.lists(
        st.sampled_from([Combine.COUNT, Combine.SUM, Combine.MIN, Combine.MAX, Combine.SET]),
        min_size=1,
        max_size=3,
    ),
    data=st.data(),
    batches=st.integers(1, 5),
)
def test_regroup_groups_as_a_dict_of_whole_keys(
    width: int, combines: list[Combine], data: st.DataObject, batches: int
) -> None:
    # With several key columns the groups are found by the first column, then
    # the rest compared; a group seen once is its row until a second comes.
    # The groups must be a plain dict's keyed by the whole key (identity, then
    # ==: 1, 1.0, True and Decimal("1.0") meet; every NaN of a type too), with
    # the key values seen first, whichever batches the rows come in.
    row = st.tuples(*[_key_values] * width, *[_partial] * len(combines))
    partials = data.draw(st.lists(row, max_size=40))
    expected = _reference_regroup(partials, width, tuple(combines))
    regroup = Regroup(Aggregation(width, tuple(combines)), scalar_keys=True)
    size = max(1, len(partials) // batches)
    for start in range(0, len(partials), size):
        regroup.feed(partials[start : start + size])
    got = regroup.rows()
    assert len(got) == len(expected)
    for merged in got:
        assert list(merged[width:]) == expected[merged[:width]]
        first_key = next(k for k in expected if k == merged[:width])  # the values seen first
        assert all(a is b for a, b in zip(merged[:width], first_key, strict=True))


def test_regroup_refuses_containers_in_later_key_columns() -> None:
    # JSON true and 1 (or arrays [true] and [1]) are == in Python but two groups
    # to the database: unless the later key columns are known scalars, the whole
    # key is hashed, and a container cannot be (the merge refuses the query).
    rows = [(1, {"f": True}, 1), (1, {"f": 1}, 1)]
    with pytest.raises(TypeError):
        Regroup(Aggregation(2, (Combine.COUNT,))).feed(rows)


def test_numeric_sums_are_exact_beyond_28_digits() -> None:
    r = Regroup(Aggregation(0, (Combine.SUM,), scalar=True))
    big = Decimal("12345678901234567890123456789.123456789")
    r.feed([(big,), (big,), (Decimal("0.000000001"),)])
    assert r.rows() == [(Decimal("24691357802469135780246913578.246913579"),)]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [  # each expected value is what PostgreSQL 15 returns
        ("7", "3", "2.3333333333333333"),
        ("1", "3.0", "0.33333333333333333333"),
        ("500.00", "7", "71.4285714285714286"),
        ("3", "2", "1.5000000000000000"),
        ("-2", "3", "-0.66666666666666666667"),
        ("123456789", "0.001", "123456789000.00000000"),
        ("0", "5", "0E-20"),
    ],
)
def test_numeric_division_matches_postgresql(a: str, b: str, expected: str) -> None:
    result = numeric_div(Decimal(a), Decimal(b))
    assert str(result) == expected


def test_numeric_rounding_and_integer_arithmetic() -> None:
    assert str(numeric_round(Decimal("2.345"), 2)) == "2.35"
    assert str(numeric_round(Decimal("-2.5"), 0)) == "-3"
    assert str(numeric_round(Decimal("1234.5"), -2)) == "1200"
    f = compile_expr(Call("/", (Col(0), Col(1))), PG)
    assert f((-7, 2)) == -3  # truncates toward zero
    assert compile_expr(Call("%", (Col(0), Col(1))), PG)((-7, 2)) == -1
    assert compile_expr(Call("round", (Col(0),)), PG)((2.5,)) == 2.0  # rint: half to even
    with pytest.raises(shardq.DataError, match="division by zero"):
        f((1, 0))
    with pytest.raises(shardq.DataError, match="bigint out of range"):
        compile_expr(Call("*", (Col(0), Const(2))), PG)((2**62,))
    sqlite = semantics("sqlite")
    assert compile_expr(Call("/", (Col(0), Col(1))), sqlite)((1, 0)) is None
    assert compile_expr(Call("avg", (Col(0), Col(1))), sqlite)((3, 2)) == 1.5


def test_three_valued_logic() -> None:
    both = compile_expr(Call("and", (Col(0), Col(1))), PG)
    either = compile_expr(Call("or", (Col(0), Col(1))), PG)
    assert both((None, False)) is False
    assert both((None, True)) is None
    assert either((None, True)) is True
    assert either((None, False)) is None
    assert compile_expr(Call(">", (Col(0), Const(1))), PG)((None,)) is None


@given(
    parts=st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=8), min_size=1, max_size=4
    ),
)
def test_float_variance_states_combine_as_one(parts: list[list[float]]) -> None:
    # Each shard's [N, Sx, var_pop * N], combined as float8_combine, is the variance of all.
    import statistics

    from shardq.merge.variance import float_combine, variance

    state = None
    for part in parts:
        shard = [float(len(part)), sum(part), statistics.pvariance(part) * len(part)] if part else [
            0.0, None, None]  # fmt: skip
        state = float_combine(state, shard)
    values = [v for part in parts for v in part]
    got = variance("var_pop", len(values), 0.0, None, state)
    if not values:
        assert got is None
    else:
        assert got == pytest.approx(statistics.pvariance(values), rel=1e-9, abs=1e-6)
