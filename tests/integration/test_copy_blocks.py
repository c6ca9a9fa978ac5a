"""Bulk load on PostgreSQL: what the fast paths must keep exactly as the slow ones had it.

A CSV file's lines without a quote are taken a block at a time (key fields
by one regular expression, records sent as read); any other block is read
a record at a time. Rows of values are formatted a chunk at a time through
psycopg's own formatter. Each test loads more than one batch (5,000 rows),
mixes the paths, and reads every shard directly.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import pytest

import shardq

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.servers import PgCluster

DATABASE = "copyblocks"
NAMES = [f"s{i}" for i in range(4)]
SCHEMA = """
DROP TABLE IF EXISTS items, kinds, days;
CREATE TABLE items (id bigint PRIMARY KEY, grp text, val integer CHECK (val >= 0));
CREATE TABLE kinds (code text PRIMARY KEY, label text);
CREATE TABLE days (day date PRIMARY KEY, note text);
"""
# Values psycopg's text format escapes (tab, newline, backslash, \. , CR), and others.
AWKWARD = ["tab\there", "new\nline", "back\\slash", "\\.", "cr\rlf\r\n", "", "日本 ü", "'\"", None]


class Shards:
    def __init__(self, clusters: list[PgCluster]):
        self.clusters = clusters
        self.config: dict[str, Any] = {
            "dialect": "postgres",
            "shards": [
                {"name": n, "dsn": c.dsn(DATABASE)} for n, c in zip(NAMES, clusters, strict=True)
            ],
            "tables": {
                "items": {"shard_key": "id"},
                "kinds": {"reference": True},
                "days": {"shard_key": "day", "key_type": "date"},
            },
        }

    def rows(self, sql: str) -> dict[str, list[tuple[Any, ...]]]:
        return {
            n: [tuple(r) for r in c.execute(sql, DATABASE)]
            for n, c in zip(NAMES, self.clusters, strict=True)
        }

    def check_items(self, expected: list[tuple[Any, ...]]) -> None:
        """Every row on the shard placement gives it, exactly as given, and nothing else."""
        placement = shardq.load_config(self.config).placement
        wanted: dict[str, list[tuple[Any, ...]]] = {n: [] for n in NAMES}
        for row in expected:
            wanted[placement.shard_for(row[0])].append(row)
        got = self.rows("SELECT id, grp, val FROM items ORDER BY id")
        assert got == {n: sorted(rows) for n, rows in wanted.items()}

    def total(self) -> int:
        return sum(len(r) for r in self.rows("SELECT id FROM items").values())


@pytest.fixture(scope="module")
def module_shards(pg_clusters: list[PgCluster]) -> Shards:
    for cluster in pg_clusters:
        cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE)
    return Shards(pg_clusters)


@pytest.fixture
def pg(module_shards: Shards) -> Shards:
    for cluster in module_shards.clusters:
        cluster.execute(SCHEMA, DATABASE)
    return module_shards


def _csv_text(rows: list[tuple[int, str, int]], eol: str = "\n") -> str:
    return "".join(f"{i},{g},{v}{eol}" for i, g, v in rows)


def test_rows_with_awkward_text_arrive_as_given(pg: Shards) -> None:
    rows = [(i, AWKWARD[i % len(AWKWARD)], i % 5 or None) for i in range(1, 12_001)]
    with shardq.connect(pg.config) as conn:
        assert conn.copy_in("items", rows).rowcount == len(rows)
    pg.check_items(rows)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_csv_blocks_with_and_without_quotes(pg: Shards, eol: str) -> None:
    """Quoted, multi-line and NULL fields among thousands of plain lines, last line unended."""
    rows = [(i, f"g{i % 7}", i) for i in range(1, 16_001)]
    text = _csv_text(rows[:6000], eol)  # a first block without a quote
    text += f'6001,"quoted, with a comma",6001{eol}6002,"two{eol}lines",6002{eol}'
    text += f'6003,"",6003{eol}6004,,6004{eol}6005,back\\slash,{eol}6006,tab\there,6006{eol}'
    text += f"6007,\\.,6007{eol}6008,日本,6008{eol}"
    text += _csv_text(rows[6008:], eol).removesuffix(eol)
    expected = [
        *rows[:6000],
        (6001, "quoted, with a comma", 6001),
        (6002, f"two{eol}lines", 6002),
        (6003, "", 6003),
        (6004, None, 6004),
        (6005, "back\\slash", None),
        (6006, "tab\there", 6006),
        (6007, "\\.", 6007),
        (6008, "日本", 6008),
        *rows[6008:],
    ]
    with shardq.connect(pg.config) as conn:
        assert conn.copy_in("items", io.StringIO(text, newline="")).rowcount == len(expected)
    pg.check_items(expected)


def test_a_header_reorders_columns_in_plain_blocks(pg: Shards, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    rows = [(i, f"g{i}", i * 2) for i in range(1, 11_001)]
    path.write_text("val;grp;id\n" + "".join(f"{v};{g};{i}\n" for i, g, v in rows))
    with shardq.connect(pg.config) as conn:
        conn.copy_in("items", path, header=True, delimiter=";")
    pg.check_items(rows)


def test_a_reference_table_from_plain_blocks(pg: Shards) -> None:
    text = "".join(f"k{i},label {i}\n" for i in range(7000)) + "none,\n"
    with shardq.connect(pg.config) as conn:
        assert dict(conn.copy_in("kinds", io.StringIO(text)).shards) == dict.fromkeys(NAMES, 7001)
    expected = sorted([(f"k{i}", f"label {i}") for i in range(7000)] + [("none", None)])
    assert pg.rows("SELECT code, label FROM kinds ORDER BY code") == dict.fromkeys(NAMES, expected)


def test_a_refused_line_of_a_plain_block_is_named(pg: Shards) -> None:
    rows = [(i, "g", i) for i in range(1, 12_001)]
    rows[7776] = (7777, "g", -1)  # line 7777 violates CHECK (val >= 0)
    shard = shardq.load_config(pg.config).placement.shard_for(7777)
    with shardq.connect(pg.config) as conn:
        with pytest.raises(shardq.IntegrityError) as caught:
            conn.copy_in("items", io.StringIO(_csv_text(rows)))
        assert caught.value.shard == shard
        assert "line 7777 of the CSV input" in str(caught.value)
    assert pg.total() == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (",g,1", "no value for the shard key id"),
        ("9,g", "2 values for the 3 columns"),
        ("9,g,1,1", "4 values for the 3 columns"),
        ("9,g\r1", "2 values for the 3 columns"),  # a lone CR ends a line
    ],
)
def test_a_bad_line_inside_a_plain_block_is_named(pg: Shards, line: str, message: str) -> None:
    rows = [(i, "g", i) for i in range(10, 8010)]
    lines = _csv_text(rows).splitlines(keepends=True)
    lines.insert(6543, line + "\n")  # line 6544, in the second block
    text = "".join(lines)
    with (
        shardq.connect(pg.config) as conn,
        pytest.raises(shardq.DataError, match=rf"line 6544 of .*{message}"),
    ):
        conn.copy_in("items", io.StringIO(text, newline=""))
    assert pg.total() == 0


def test_a_declared_key_type_checks_text_in_plain_blocks(pg: Shards) -> None:
    good = "".join(f"2024-01-{d:02d},n\n" for d in range(1, 29))
    with shardq.connect(pg.config) as conn:
        with pytest.raises(shardq.DataError, match=r"line 29 of .*'20240229' as a date"):
            conn.copy_in("days", io.StringIO(good + "20240229,n\n"))
        conn.copy_in("days", io.StringIO(good))
    placement = shardq.load_config(pg.config).placement
    got = pg.rows("SELECT day::text FROM days ORDER BY day")
    assert sum(len(days) for days in got.values()) == 28
    assert all(placement.shard_for(day) == n for n, days in got.items() for (day,) in days)


@pytest.mark.parametrize("quote", ['"', "'"])
def test_a_line_that_is_backslash_dot_is_text_whatever_the_quote(pg: Shards, quote: str) -> None:
    """Unquoted, PostgreSQL would read it as the end of the data: it is sent quoted."""
    text = "bd1\n\\.\nbd2\n"
    with shardq.connect(pg.config) as conn:
        conn.execute("DELETE FROM kinds WHERE code LIKE 'bd%' OR code = '\\.'")
        conn.copy_in("kinds", io.StringIO(text), columns=["code"], quote=quote)
        stored = conn.execute("SELECT code FROM kinds WHERE label IS NULL ORDER BY code")
        assert stored.fetchall() == [("\\.",), ("bd1",), ("bd2",)]
        conn.execute("DELETE FROM kinds WHERE label IS NULL")
