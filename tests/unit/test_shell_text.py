"""``shardq shell`` without a database: where statements end, how results print, when to page."""

from __future__ import annotations

import datetime as dt
import decimal
import os

import pytest

from shardq.cli import render
from shardq.cli.split import is_blank, split


@pytest.mark.parametrize(
    ("text", "statements", "rest"),
    [
        ("SELECT 1", [], "SELECT 1"),
        ("SELECT 1;", ["SELECT 1;"], ""),
        ("SELECT 1;\nSELECT 2;  ", ["SELECT 1;", "\nSELECT 2;"], "  "),
        # quotes: '' inside text, "identifiers", SQLite's [names] and `names`
        ("SELECT 'a;''b';", ["SELECT 'a;''b';"], ""),
        ("SELECT 'it''s", [], "SELECT 'it''s"),
        ('SELECT "x;y" FROM t;', ['SELECT "x;y" FROM t;'], ""),
        ("SELECT [a;b], `c;d`;", ["SELECT [a;b], `c;d`;"], ""),
        # PostgreSQL's E'' takes backslash escapes; a plain '' does not
        ("SELECT E'\\';';", ["SELECT E'\\';';"], ""),
        ("SELECT '\\';", ["SELECT '\\';"], ""),
        ("SELECT name';", [], "SELECT name';"),
        # dollar quotes, with and without a tag; $1 is a parameter
        ("SELECT $$;$$;", ["SELECT $$;$$;"], ""),
        ("SELECT $fn$ $$ ; $fn$;", ["SELECT $fn$ $$ ; $fn$;"], ""),
        ("SELECT $body$ ;", [], "SELECT $body$ ;"),
        ("SELECT $1; SELECT $2;", ["SELECT $1;", " SELECT $2;"], ""),
        ("SELECT a$b$c; x", ["SELECT a$b$c;"], " x"),
        # comments
        ("SELECT 1 -- ; no\n;", ["SELECT 1 -- ; no\n;"], ""),
        ("SELECT 1 /* ; /* ; */ ; */;", ["SELECT 1 /* ; /* ; */ ; */;"], ""),
        ("SELECT 1 /* ;", [], "SELECT 1 /* ;"),
    ],
)
def test_statements_end_at_a_semicolon_outside_quotes_and_comments(
    text: str, statements: list[str], rest: str
) -> None:
    assert split(text) == (statements, rest)


@pytest.mark.parametrize(
    ("text", "blank"),
    [("", True), (" \n", True), ("-- c\n/* d */", True), ("-- c", True), ("/* /* */", False)],
)
def test_blank_is_only_whitespace_and_closed_comments(text: str, blank: bool) -> None:
    assert is_blank(text) is blank


def test_numbers_align_right_and_text_left_with_null_visible() -> None:
    lines = render.table(
        ["n", "word", "price"],
        [(1, "a", decimal.Decimal("10.50")), (None, None, None), (-300, "longer", 2.0)],
    )
    assert lines == [
        "  n   |  word  | price",
        "------+--------+-------",
        "    1 | a      | 10.50",
        "    ∅ | ∅      |     ∅",
        " -300 | longer |   2.0",
        "(3 rows)",
    ]


def test_a_column_of_text_that_looks_numeric_stays_left_aligned() -> None:
    lines = render.table(["code"], [("7",), ("123",)])
    assert lines[2:4] == [" 7", " 123"]


def test_wide_characters_take_two_cells_and_combining_marks_none() -> None:
    lines = render.table(["w", "n"], [("日本語", 1), ("e\u0301te\u0301", 22), ("x", 3)])
    assert lines[2:5] == [" 日本語 |  1", " e\u0301te\u0301    | 22", " x      |  3"]
    assert {render.width(line) for line in lines[2:5]} == {12}


def test_values_print_as_psql_prints_them() -> None:
    values = [True, False, b"\x00\xab", "two\nlines", dt.datetime(2024, 5, 1, 12, 30)]
    assert [render.cell(v) for v in values] == [
        "t",
        "f",
        "\\x00ab",
        "two↵lines",
        "2024-05-01 12:30:00",
    ]


def test_null_is_dimmed_only_for_a_terminal() -> None:
    plain = render.table(["x"], [(None,)])
    coloured = render.table(["x"], [(None,)], color=True)
    assert "\x1b" not in "".join(plain)
    assert coloured[2] == " \x1b[2m∅\x1b[0m"


def test_no_rows_still_print_header_and_count() -> None:
    assert render.table(["a", "bb"], []) == [" a | bb", "---+----", "(0 rows)"]
    assert render.expanded(["a"], []) == ["(0 rows)"]


def test_expanded_display_prints_one_record_per_row() -> None:
    # the record's rule spans the names, " | " and the widest value
    lines = render.expanded(["id", "description"], [(1, "short"), (2, None)])
    assert lines == [
        "-[ RECORD 1 ]------",
        "id          | 1",
        "description | short",
        "-[ RECORD 2 ]------",
        "id          | 2",
        "description | ∅",
        "(2 rows)",
    ]


@pytest.mark.parametrize(
    ("rows", "terminal", "height", "paged"),
    [
        (10, True, 24, False),
        (23, True, 24, False),
        (24, True, 24, True),
        (1000, False, 24, False),  # a pipe or a file never pages
        (5, True, 5, True),
    ],
)
def test_a_pager_only_for_a_terminal_shorter_than_the_result(
    rows: int, terminal: bool, height: int, paged: bool
) -> None:
    lines = ["x"] * rows
    size = os.terminal_size((80, height))
    assert render.wants_pager(lines, terminal=terminal, size=size) is paged


def test_the_pager_is_pager_from_the_environment_and_its_absence_prints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    import io
    from pathlib import Path

    seen = Path(tmp_path) / "seen"
    monkeypatch.setenv("PAGER", f"tee {seen}")
    out = io.StringIO()
    render.page(["a", "b"], out)
    assert seen.read_text() == "a\nb\n"
    monkeypatch.setenv("PAGER", "no-such-pager-anywhere")
    render.page(["c"], out)
    assert out.getvalue() == "c\n"


def test_progress_waits_redraws_at_most_ten_times_a_second_and_clears() -> None:
    import io

    from shardq.cli.progress import Progress

    now = [0.0]
    stream = io.StringIO()
    line = Progress(stream, clock=lambda: now[0], columns=60)
    line.rows("s0", 10)
    line.clear()
    assert stream.getvalue() == ""  # a quick read shows nothing, and nothing to erase
    now[0] = 0.6
    line.rows("s1", 5)
    now[0] = 0.65
    line.rows("s0", 1)  # too soon after the last redraw
    assert stream.getvalue() == "\r\x1b[Krows received: 15  s0 10 · s1 5"
    now[0] = 0.8
    line.rows("s0", 1)
    line.clear()
    assert stream.getvalue().endswith("\r\x1b[Krows received: 17  s0 12 · s1 5\r\x1b[K")


def test_progress_fits_the_terminal() -> None:
    import io

    from shardq.cli.progress import Progress

    line = Progress(io.StringIO(), columns=40)
    for i in range(20):
        line.rows(f"shard-{i}", 1000)
    assert len(line.text()) == 39
    assert line.text().endswith("…")
