"""shardq.compare and shardq.verify's pure parts: what counts as the same answer."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import sqlglot

from shardq.compare import DifferenceKind, compare_rows, unmatched
from shardq.verify import Answer, VerifyResult, compare_answers, order_keys


def kinds(differences: list[object]) -> list[str]:
    return [d.kind.name for d in differences]  # type: ignore[attr-defined]


def test_unordered_rows_in_another_order_are_the_same() -> None:
    got = [(2, "b"), (1, "a"), (None, "c"), (1, "a")]
    want = [(1, "a"), (None, "c"), (1, "a"), (2, "b")]
    assert compare_rows(["id", "v"], got, want) == []


def test_unordered_missing_and_extra_rows_are_counted_and_shown() -> None:
    got = [(1,), (2,), (2,), (4,)]
    want = [(1,), (2,), (3,)]
    found = compare_rows(["id"], got, want)
    assert kinds(found) == ["ROW_COUNT", "MISSING", "EXTRA", "EXTRA"]
    assert "1 row(s) of the single database missing" in found[0].message
    assert "2 row(s) in shardq's answer not in" in found[0].message
    assert "(here shardq has 4 rows, single 3)" in found[0].message
    assert found[1].single == (3,)
    assert {d.shardq for d in found[2:]} == {(2,), (4,)}


def test_floats_match_to_1e_9_relative_and_nan_matches_nan() -> None:
    got = [(0.1 + 0.2,), (math.nan,), (1e10 + 1e-3,)]
    want = [(0.3,), (math.nan,), (1e10,)]
    assert compare_rows(["f"], got, want) == []
    assert kinds(compare_rows(["k", "f"], [(0, 1.0)], [(0, 1.0001)], order_keys=[0])) == ["VALUE"]


def test_float_tolerance_survives_sorting_apart() -> None:
    # Sorted, 0.3 and 0.30000000000000004 fall on either side of nothing: paired one by one.
    assert unmatched([(0.1 + 0.2, "x"), (0.3, "y")], [(0.3, "y"), (0.3, "x")]) == ([], [])


def test_a_type_difference_names_both_types() -> None:
    found = compare_rows(["id", "n"], [(1, 1)], [(1, 1.0)], order_keys=[0])
    assert kinds(found) == ["VALUE"]
    assert found[0].row == 0
    assert found[0].column == "n"
    assert "shardq 1 (int) vs single 1.0 (float) (type and value)" in found[0].message


def test_decimals_match_at_the_same_scale_only() -> None:
    found = compare_rows(["n"], [(Decimal("1.50"),)], [(Decimal("1.5"),)], order_keys=[0])
    assert kinds(found) == ["VALUE"]
    assert "Decimal('1.50') (Decimal) vs single Decimal('1.5')" in found[0].message
    assert compare_rows(["n"], [(Decimal("1.5"),)], [(Decimal("1.5"),)]) == []
    assert kinds(compare_rows(["n"], [(Decimal("1.50"),)], [(Decimal("1.5"),)]))[0] == "MISSING"


def test_the_same_rows_in_another_order_is_an_order_difference() -> None:
    got = [(1, "a"), (3, "c"), (2, "b")]
    want = [(1, "a"), (2, "b"), (3, "c")]
    found = compare_rows(["id", "v"], got, want, order_keys=[0])
    assert kinds(found) == ["ORDER"]
    assert found[0].row == 1
    assert found[0].shardq == (3,)
    assert found[0].single == (2,)


def test_rows_tied_on_the_order_by_key_may_come_in_any_order() -> None:
    got = [(1, "b"), (1, "a"), (2, "c")]
    want = [(1, "a"), (1, "b"), (2, "c")]
    assert compare_rows(["k", "v"], got, want, order_keys=[0]) == []
    # ... but the group must hold the same rows.
    found = compare_rows(["k", "v"], [(1, "b"), (1, "x"), (2, "c")], want, order_keys=[0])
    assert kinds(found) == ["MISSING", "MISSING", "EXTRA"]
    assert "rows 0-1 (tied on the ORDER BY key (1,))" in found[0].message


def test_ordered_value_difference_names_row_and_column() -> None:
    got = [(1, "a", 10), (2, "b", 20), (3, "c", 30)]
    want = [(1, "a", 10), (2, "b", 21), (3, "c", 30)]
    found = compare_rows(["id", "v", "n"], got, want, order_keys=[0])
    assert [(d.row, d.column, d.shardq, d.single) for d in found] == [(1, "n", 20, 21)]
    assert found[0].message == "row 1, column 'n': shardq 20 (int) vs single 21 (int) (value)"


def test_a_missing_row_in_an_ordered_answer_is_reported_from_where_it_parts() -> None:
    got = [(1,), (2,), (3,), (4,)]
    want = [(1,), (2,), (4,)]
    found = compare_rows(["id"], got, want, order_keys=[0])
    assert kinds(found) == ["ROW_COUNT", "EXTRA"]
    assert found[0].message.startswith("from row 2 on (ORDER BY id: shardq (3,) vs single (4,))")
    assert found[1].shardq == (3,)


def test_limit_without_order_by_compares_the_count_only() -> None:
    assert compare_rows(["id"], [(1,), (2,)], [(3,), (4,)], cut=True) == []
    assert kinds(compare_rows(["id"], [(1,)], [(3,), (4,)], cut=True)) == ["ROW_COUNT"]


def test_a_difference_at_the_limit_cut_is_reported_and_explained() -> None:
    found = compare_rows(["k", "v"], [(1, "a"), (2, "x")], [(1, "a"), (2, "y")], order_keys=[0],
                         cut=True)  # fmt: skip
    assert kinds(found) == ["VALUE"]
    assert "at the LIMIT/OFFSET's cut" in found[0].message


def test_the_limit_caps_the_differences() -> None:
    got = [(i, i) for i in range(50)]
    want = [(i, -i) for i in range(50)]
    assert len(compare_rows(["id", "v"], got, want, order_keys=[0], limit=3)) == 3


@pytest.mark.parametrize(
    ("sql", "names", "expected"),
    [
        ("SELECT a, b FROM t", ["a", "b"], (None, False, False)),
        ("SELECT a, b FROM t ORDER BY b DESC, a", ["a", "b"], ([1, 0], False, False)),
        ("SELECT a, b AS x FROM t ORDER BY 2", ["a", "x"], ([1], False, False)),
        ("SELECT a, lower(b) FROM t ORDER BY lower(b)", ["a", "lower"], ([1], False, False)),
        ("SELECT a FROM t ORDER BY a, lower(b), a", ["a"], ([0], False, False)),
        ("SELECT a FROM t ORDER BY c", ["a"], (None, False, False)),
        ("SELECT a FROM t LIMIT 3 OFFSET 2", ["a"], (None, True, True)),
        ("SELECT a FROM t UNION SELECT b FROM u ORDER BY a LIMIT 1", ["a"], ([0], True, False)),
    ],
)
def test_order_keys_from_the_outermost_order_by(
    sql: str, names: list[str], expected: tuple[object, ...]
) -> None:
    assert order_keys(sqlglot.parse_one(sql), names) == expected


Rows = list[tuple[object, ...]]


def answer(names: tuple[str, ...], types: tuple[object, ...], rows: Rows) -> Answer:
    return Answer(names, types, rows, 0.001)


def test_column_names_and_types_are_compared() -> None:
    tree = sqlglot.parse_one("SELECT a, b FROM t")
    got = answer(("a", "b"), (23, 1700), [(1, Decimal(1))])
    want = answer(("a", "c"), (23, 20), [(1, Decimal(1))])
    found, ordered, how = compare_answers(got, want, tree, type_name=lambda oid: f"t{oid}")
    assert kinds(found) == ["COLUMNS", "COLUMN_TYPE"]
    assert found[0].message == "columns: shardq ['a', 'b'] vs single ['a', 'c']"
    assert found[1].message == "column 'b' type: shardq t1700 vs single t20"
    assert ordered is None
    assert "multiset" in how


def result(differences: list[object], rows: list[tuple[object, ...]]) -> VerifyResult:
    return VerifyResult(
        sql="SELECT id, v FROM t ORDER BY id",
        differences=tuple(differences),  # type: ignore[arg-type]
        shardq_rows=rows,
        single_rows=rows,
        shardq_seconds=0.0123,
        single_seconds=0.002,
        names=("id", "v"),
        ordered=("id",),
        how="compared in the order of id",
        shards=("s1", "s2"),
        against="postgresql://u:***@h/db",
    )


def test_verify_result_reads_well() -> None:
    same = result([], [(1, "<b>")])
    assert same.ok
    assert bool(same)
    assert str(same) == (
        "same answer: 1 row, 2 columns, compared in the order of id; shardq 12.3 ms on 2 shards, "
        "single 2.0 ms (postgresql://u:***@h/db)"
    )
    rows = [(1, "a"), (2, "b")]
    differs = result(compare_rows(["id", "v"], rows, [(1, "a"), (2, "c")], order_keys=[0]), rows)
    assert not differs.ok
    lines = str(differs).splitlines()
    assert lines[0].startswith("DIFFERS: 1 difference(s) shown, compared in the order of id;")
    assert lines[1] == "  row 1, column 'v': shardq 'b' (str) vs single 'c' (str) (value)"
    page = differs._repr_html_()
    assert "DIFFERS" in page
    assert "row 1, column &#x27;v&#x27;" in page
    assert "<b>" not in same._repr_html_().replace("<b style", "")  # the value is escaped
    assert differs.to_dict()["differences"][0] == {
        "kind": DifferenceKind.VALUE.value, "message": lines[1].strip(), "row": 1,
        "column": "v", "shardq": "'b'", "single": "'c'",
    }  # fmt: skip
