"""Results as HTML tables in Jupyter: escaping, NULL, truncation, the shards and the time."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from shardq.display import MAX_ROWS, html_table
from shardq.execute.driver import Column
from shardq.results import ResultSet


def test_values_and_names_are_escaped() -> None:
    page = html_table(["<th>", "a&b"], [("<script>alert(1)</script>", "\"q\" & 's'")])
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;th&gt;" in page
    assert "a&amp;b" in page
    assert "&quot;q&quot; &amp; &#x27;s&#x27;" in page


def test_null_is_shown_apart_from_an_empty_string() -> None:
    page = html_table(["v"], [(None,), ("",), ("NULL",)])
    cells = page.split("<tbody>")[1].split("</tbody>")[0].splitlines()[1:]
    assert cells[0] == '<tr><td style="color: #888; font-style: italic">NULL</td></tr>'
    assert cells[1] == '<tr><td style="text-align: left; white-space: pre"></td></tr>'
    assert cells[2] == '<tr><td style="text-align: left; white-space: pre">NULL</td></tr>'


def test_numbers_right_aligned_bytes_as_hex_other_values_as_text() -> None:
    page = html_table(["n", "d", "b", "t", "f"],
                      [(1, Decimal("2.50"), b"\x00\xff", dt.date(2024, 1, 2), True)])  # fmt: skip
    assert '<td style="text-align: right">1</td>' in page
    assert '<td style="text-align: right">2.50</td>' in page
    assert "<td>\\x00ff</td>" in page
    assert ">2024-01-02</td>" in page
    assert '<td style="text-align: left; white-space: pre">True</td>' in page


def test_long_results_are_cut_with_a_note() -> None:
    rows = [(i,) for i in range(MAX_ROWS + 25)]
    page = html_table(["i"], rows, caption="ran on s1")
    assert page.count("<tr>") == MAX_ROWS + 1  # the header and MAX_ROWS rows
    assert f">{MAX_ROWS - 1}</td>" in page
    assert f">{MAX_ROWS}</td>" not in page
    assert page.endswith(f"<p>{MAX_ROWS + 25} rows, the first {MAX_ROWS} shown; ran on s1</p>")
    unknown = html_table(["i"], rows[:MAX_ROWS], more=True)
    assert unknown.endswith(f"<p>the first {MAX_ROWS} rows (more not read yet)</p>")


def test_result_set_renders_its_rows_shards_and_time() -> None:
    rows = [(i, None if i % 2 else f"<{i}>") for i in range(120)]
    result = ResultSet((Column("id"), Column("v")), rows, 120, ("s1", "s3"), seconds=0.0042)
    page = result._repr_html_()
    assert "<th>id</th><th>v</th>" in page
    assert "&lt;0&gt;" in page
    assert "NULL" in page
    assert page.count("<tr>") == MAX_ROWS + 1
    assert page.endswith(f"<p>120 rows, the first {MAX_ROWS} shown; ran on s1, s3 in 4.2 ms</p>")


def test_result_set_of_dict_rows_and_of_a_write() -> None:
    result = ResultSet((Column("id"),), [{"id": 7}], 1, ("s1",))
    assert '<td style="text-align: right">7</td>' in result._repr_html_()
    assert result._repr_html_().endswith("<p>1 row; ran on s1</p>")
    write = ResultSet(None, [], 3, ("s1",))
    assert write._repr_html_() == "&lt;shardq.ResultSet rowcount=3 shards=[&#x27;s1&#x27;]&gt;"
