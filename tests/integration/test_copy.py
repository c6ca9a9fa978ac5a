"""Bulk load (``copy_in``, ``shardq load``) on PostgreSQL and SQLite shards.

Every load is checked on the shards directly: each row where placement says,
a reference table's rows on every shard, and nothing at all after a load
that failed (a refused row, a NULL key, a malformed line, a rollback).
"""

from __future__ import annotations

import io
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.integration.test_cli import shardq_cli

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from tests.fixtures.servers import PgCluster

DATABASE = "copyload"
TABLES: dict[str, dict[str, Any]] = {
    "items": {"shard_key": "id"},
    "kinds": {"reference": True},
}
PG_SCHEMA = """
DROP TABLE IF EXISTS items, kinds;
CREATE TABLE items (id integer PRIMARY KEY, grp text NOT NULL, val integer CHECK (val >= 0));
CREATE TABLE kinds (code text PRIMARY KEY, label text);
"""
SQLITE_SCHEMA = """
DROP TABLE IF EXISTS items; DROP TABLE IF EXISTS kinds;
CREATE TABLE items (id INTEGER PRIMARY KEY, grp TEXT NOT NULL, val INTEGER CHECK (val >= 0));
CREATE TABLE kinds (code TEXT PRIMARY KEY, label TEXT);
"""
NAMES = [f"s{i}" for i in range(4)]


class Shards:
    """The four shards of one dialect: a configuration, and direct reads of each."""

    def __init__(self, config: dict[str, Any], direct: Callable[[int, str], list[Any]]):
        self.config = config
        self.direct = direct
        self.dialect = config["dialect"]

    def rows(self, table: str = "items") -> dict[str, list[tuple[Any, ...]]]:
        order = "id" if table == "items" else "code"
        return {
            name: [tuple(r) for r in self.direct(i, f"SELECT * FROM {table} ORDER BY {order}")]
            for i, name in enumerate(NAMES)
        }

    def total(self, table: str = "items") -> int:
        return sum(len(rows) for rows in self.rows(table).values())


@pytest.fixture(scope="module")
def pg_shards(pg_clusters: list[PgCluster]) -> Shards:
    for cluster in pg_clusters:
        cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE)
    config = {
        "dialect": "postgres",
        "shards": [
            {"name": n, "dsn": c.dsn(DATABASE)} for n, c in zip(NAMES, pg_clusters, strict=True)
        ],
        "tables": TABLES,
    }
    return Shards(config, lambda i, sql: pg_clusters[i].execute(sql, DATABASE))


@pytest.fixture(scope="module")
def sqlite_shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    folder = tmp_path_factory.mktemp("copy-sqlite")
    paths = [folder / f"{n}.db" for n in NAMES]

    def direct(i: int, sql: str) -> list[Any]:
        with sqlite3.connect(paths[i], isolation_level=None) as db:
            rows = db.executescript(sql).fetchall() if ";" in sql else db.execute(sql).fetchall()
        db.close()
        return rows

    for path in paths:
        sqlite3.connect(path).close()
    config = {
        "dialect": "sqlite",
        "shards": [{"name": n, "dsn": str(p)} for n, p in zip(NAMES, paths, strict=True)],
        "tables": TABLES,
    }
    return Shards(config, direct)


@pytest.fixture(params=["postgres", "sqlite"])
def shards(request: pytest.FixtureRequest) -> Shards:
    """Each dialect's shards, their tables made again empty."""
    name = {"postgres": "pg_shards", "sqlite": "sqlite_shards"}[request.param]
    found: Shards = request.getfixturevalue(name)
    schema = PG_SCHEMA if found.dialect == "postgres" else SQLITE_SCHEMA
    for i in range(4):
        found.direct(i, schema)
    return found


@pytest.fixture
def pg(pg_shards: Shards) -> Shards:
    for i in range(4):
        pg_shards.direct(i, PG_SCHEMA)
    return pg_shards


def _items(count: int, start: int = 1) -> list[tuple[int, str, int]]:
    return [(i, f"g{i % 7}", i * 3) for i in range(start, start + count)]


def _check_placed(shards: Shards, expected: list[tuple[Any, ...]]) -> None:
    """Every row of ``expected`` on the shard placement gives it, and nothing else."""
    placement = shardq.load_config(shards.config).placement
    wanted: dict[str, list[tuple[Any, ...]]] = {name: [] for name in NAMES}
    for row in expected:
        wanted[placement.shard_for(row[0])].append(row)
    assert shards.rows() == {name: sorted(rows) for name, rows in wanted.items()}


def _atomic(shards: Shards) -> dict[str, Any]:
    """copy_in's arguments for a load over all four shards (SQLite: one transaction each)."""
    return {} if shards.dialect == "postgres" else {"atomic": False}


# -- loads that succeed


def test_rows_go_to_the_shard_placement_gives_them(shards: Shards) -> None:
    rows = _items(3000)
    with shardq.connect(shards.config) as conn:
        result = conn.copy_in("items", rows, **_atomic(shards))
    assert result.rowcount == int(result) == 3000
    placement = shardq.load_config(shards.config).placement
    counts = {name: sum(placement.shard_for(r[0]) == name for r in rows) for name in NAMES}
    assert dict(result.shards) == {name: n for name, n in counts.items() if n}
    _check_placed(shards, rows)


def test_a_reference_table_gets_every_row_on_every_shard(shards: Shards) -> None:
    rows = [(f"k{i:03d}", f"label {i}") for i in range(300)] + [("none", None)]
    with shardq.connect(shards.config) as conn:
        result = conn.copy_in("kinds", rows, ["code", "label"], **_atomic(shards))
    assert result.rowcount == 301
    assert dict(result.shards) == dict.fromkeys(NAMES, 301)
    assert shards.rows("kinds") == {name: sorted(rows) for name in NAMES}


def test_csv_with_header_quotes_and_nulls(shards: Shards, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "val,id,grp\n"  # the header names the columns, in its own order
        '1,10,"a, with a comma"\n'
        '2,11,"two\nlines"\n'
        '3,12,"say ""hi"""\n'
        ',13,""\n'  # val NULL (unquoted empty), grp the empty text (quoted)
        '"4",14,plain\n',
        encoding="utf-8",
    )
    with shardq.connect(shards.config) as conn:
        result = conn.copy_in("items", path, header=True, **_atomic(shards))
    assert result.rowcount == 5
    _check_placed(
        shards,
        [
            (10, "a, with a comma", 1),
            (11, "two\nlines", 2),
            (12, 'say "hi"', 3),
            (13, "", None),
            (14, "plain", 4),
        ],
    )


def test_csv_options_columns_and_a_null_marker(shards: Shards) -> None:
    text = "21;'x;y';\\N\n22;'';5\n"
    with shardq.connect(shards.config) as conn:
        conn.copy_in(
            "items", io.StringIO(text), ["id", "grp", "val"], delimiter=";", quote="'",
            null="\\N", **_atomic(shards),
        )  # fmt: skip
    _check_placed(shards, [(21, "x;y", None), (22, "", 5)])


async def test_the_async_api_and_an_async_source(shards: Shards) -> None:
    async def rows() -> AsyncIterator[tuple[int, str, int]]:
        for row in _items(500):
            yield row

    seen: list[shardq.CopyProgress] = []
    async with await shardq.connect_async(shards.config) as conn:
        result = await conn.copy_in("items", rows(), progress=seen.append, **_atomic(shards))
    assert result.rowcount == 500
    assert seen[-1].done
    assert seen[-1].rows == 500
    _check_placed(shards, _items(500))


def test_a_large_source_streams_through(pg: Shards) -> None:
    """Rows reach the shards while the source is still being read (bounded memory)."""
    total = 200_000
    seen: list[int] = []

    def rows() -> Iterator[tuple[int, str, int]]:
        for i in range(1, total + 1):
            # Three quarters read: more than a load ever holds back (a few chunks per
            # shard), so the shards must be copying rows in already.
            if i == total * 3 // 4:
                progress = "SELECT coalesce(sum(tuples_processed), 0) FROM pg_stat_progress_copy"
                seen.append(sum(int(pg.direct(s, progress)[0][0]) for s in range(4)))
            yield (i, "g", i)

    with shardq.connect(pg.config) as conn:
        result = conn.copy_in("items", rows())
        assert result.rowcount == total
        assert conn.execute("SELECT count(*), sum(val) FROM items").fetchone() == (
            total,
            total * (total + 1) // 2,
        )
    assert seen
    assert seen[0] > 0


# -- loads that fail: nothing committed


def test_a_row_a_shard_refuses_commits_nothing_and_is_named(shards: Shards) -> None:
    rows = _items(2000)
    bad = 1234
    rows[bad] = (rows[bad][0], "g", -1)  # violates CHECK (val >= 0)
    shard = shardq.load_config(shards.config).placement.shard_for(rows[bad][0])
    with shardq.connect(shards.config) as conn:
        with pytest.raises(shardq.IntegrityError) as caught:
            conn.copy_in("items", rows, **_atomic(shards))
        assert isinstance(caught.value, shardq.ShardError)
        assert caught.value.shard == shard
        assert f"row {bad} of the source" in str(caught.value)
        assert repr(shard) in str(caught.value)
    assert shards.total() == 0


def test_a_refused_csv_line_is_named_after_multi_line_records(shards: Shards) -> None:
    text = '1,"a\nb",1\n2,"c\nd",2\n3,e,-1\n4,f,4\n'
    with (
        shardq.connect(shards.config) as conn,
        pytest.raises(shardq.IntegrityError, match=r"line 5 of the CSV input"),
    ):
        conn.copy_in("items", io.StringIO(text), **_atomic(shards))
    assert shards.total() == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,a,1\n2,b,2\n,c,3\n4,d,4\n", r"line 3 of .*no value for the shard key id"),
        ('1,a,1\n"2",b\n', r"line 2 of .*2 values for the 3 columns"),
        ("1,a,1\n2,b,2,9\n", r"line 2 of .*4 values for the 3 columns"),
    ],
)
def test_bad_csv_input_names_its_line_and_commits_nothing(
    shards: Shards, text: str, message: str
) -> None:
    # Enough good rows first that some reached the shards before the bad one.
    good = "".join(f"{i},g,{i}\n" for i in range(100, 12_100))
    lines = good.count("\n")
    with shardq.connect(shards.config) as conn:
        expected = message.replace("line 3", f"line {lines + 3}").replace(
            "line 2", f"line {lines + 2}"
        )
        with pytest.raises(shardq.DataError, match=expected):
            conn.copy_in("items", io.StringIO(good + text), **_atomic(shards))
    assert shards.total() == 0


def test_a_null_key_in_rows_names_the_row(shards: Shards) -> None:
    rows: list[tuple[Any, ...]] = [*_items(10), (None, "g", 1)]
    with (
        shardq.connect(shards.config) as conn,
        pytest.raises(shardq.DataError, match=r"row 10 of the source.*shard key id"),
    ):
        conn.copy_in("items", rows, **_atomic(shards))
    assert shards.total() == 0


def test_inside_a_transaction_rollback_undoes_the_load(pg: Shards) -> None:
    with shardq.connect(pg.config) as conn:
        conn.autocommit = False
        conn.copy_in("items", _items(400))
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (400,)  # its own rows
        assert pg.total() == 0  # others do not see them yet
        conn.rollback()
        assert pg.total() == 0
        with conn.transaction():
            conn.execute("INSERT INTO items (id, grp, val) VALUES (%s, %s, %s)", [9999, "x", 1])
            conn.copy_in("items", _items(400))
        _check_placed(pg, [*_items(400), (9999, "x", 1)])


def test_a_failed_load_aborts_the_open_transaction(pg: Shards) -> None:
    def load_twice(conn: shardq.Connection) -> None:
        with conn.transaction():
            conn.copy_in("items", _items(50))
            conn.copy_in("items", [(1, "again", 1)])  # a duplicate key

    with shardq.connect(pg.config) as conn:
        with pytest.raises(shardq.IntegrityError):
            load_twice(conn)
        assert not conn.in_transaction
    assert pg.total() == 0


def test_the_cache_forgets_the_table_after_a_load(pg: Shards) -> None:
    with shardq.connect(pg.config, cache=True) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)
        conn.copy_in("items", _items(30))
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (30,)


# -- SQLite: atomic on one shard only


def test_sqlite_refuses_an_atomic_load_over_several_shards(sqlite_shards: Shards) -> None:
    for i in range(4):
        sqlite_shards.direct(i, SQLITE_SCHEMA)
    with shardq.connect(sqlite_shards.config) as conn:
        with pytest.raises(shardq.NotSupportedError, match="two-phase commit") as caught:
            conn.copy_in("items", _items(100))
        assert "atomic=False" in "".join(caught.value.__notes__)
        assert sqlite_shards.total() == 0
        # Rows that all belong to one shard load atomically.
        placement = conn.config.placement
        home = [r for r in _items(200) if placement.shard_for(r[0]) == "s2"]
        assert conn.copy_in("items", home).shards == {"s2": len(home)}
    _check_placed(sqlite_shards, home)


# -- sources that need a library


def test_arrow_pandas_and_polars_frames(pg: Shards) -> None:
    pa = pytest.importorskip("pyarrow")
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    with shardq.connect(pg.config) as conn:
        conn.copy_in("items", pa.table({"id": [1, 2], "grp": ["a", "b"], "val": [1, None]}))
        # A nullable integer column (plain pandas would make [3, None] floats, 3.0).
        frame = pd.DataFrame({"id": [3, 4], "grp": ["c", "d"], "val": [3, None]})
        conn.copy_in("items", frame.astype({"val": "Int64"}))
        conn.copy_in("items", pl.DataFrame({"id": [5, 6], "grp": ["e", "f"], "val": [5, None]}))
    _check_placed(
        pg,
        [(1, "a", 1), (2, "b", None), (3, "c", 3), (4, "d", None), (5, "e", 5), (6, "f", None)],
    )


# -- the command


def test_shardq_load_command(pg: Shards, tmp_path: Path) -> None:
    import json

    config = tmp_path / "shardq.toml"
    lines = ['dialect = "postgres"']
    for shard in pg.config["shards"]:
        lines += [
            "[[shards]]",
            f"name = {json.dumps(shard['name'])}",
            f"dsn = {json.dumps(shard['dsn'])}",
        ]
    lines += ["[tables.items]", 'shard_key = "id"', "[tables.kinds]", "reference = true"]
    config.write_text("\n".join(lines) + "\n")
    data = tmp_path / "items.csv"
    data.write_text("id\tval\tgrp\n" + "".join(f"{i}\t{i}\tg{i}\n" for i in range(1, 501)))
    done = shardq_cli(
        "load", "-c", str(config), "items", str(data), "--header", "--delimiter", "\\t"
    )
    assert done.returncode == 0, done.stderr
    assert "loaded 500 rows into items" in done.stderr
    assert "\r" not in done.stderr  # no progress display when stderr is not a terminal
    _check_placed(pg, [(i, f"g{i}", i) for i in range(1, 501)])

    bad = tmp_path / "bad.csv"
    bad.write_text("1000,g,1\n1001,g,-5\n")
    failed = shardq_cli("load", "-c", str(config), "items", str(bad), "--columns", "id,grp,val")
    assert failed.returncode == 1
    assert "line 2 of" in failed.stderr
    assert pg.total() == 500
    missing = shardq_cli("load", "-c", str(config), "nope", str(bad))
    assert missing.returncode == 4
    assert "not declared" in missing.stderr
