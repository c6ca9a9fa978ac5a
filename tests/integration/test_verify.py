"""``verify``: shardq's answer against an unsharded copy, on real servers and SQLite files.

PostgreSQL: a small table ``t`` on the four shard clusters and, on the
single-node cluster, in two databases: ``verify`` holds the same rows,
``verify_changed`` a copy that differs as a botched migration would (a
value changed, a row lost, ``n`` as a float, ``grp`` under another
collation). SQLite: the edge dataset, and copies of its single file changed
in a test.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

import shardq
from shardq.errors import OperationalError, ProgrammingError
from tests.integration.test_cli import shardq_cli

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.servers import PgCluster
    from tests.fixtures.sqlite_edge import SqliteEdge

DATABASE = "verify"
CHANGED = "verify_changed"
GROUPS = ["apple", "Banana", "cherry", "Apple", "banana"]
ROWS = [(i, GROUPS[i % 5], Decimal(i * 7 % 23) / 4, i / 10) for i in range(1, 41)]
SCHEMA = "CREATE TABLE t (id integer PRIMARY KEY, grp text, n numeric(8, 2), f double precision)"
# The copy a migration got wrong: ICU orders 'apple' < 'Apple' < 'Banana', C 'Apple' < 'apple'.
CHANGED_SCHEMA = (
    'CREATE TABLE t (id integer PRIMARY KEY, grp text COLLATE "und-x-icu", n double precision, '
    "f double precision)"
)


class PgVerify:
    def __init__(self, config: dict[str, Any], single: PgCluster):
        self.config = config
        self.single = single

    def against(self, database: str = DATABASE, password: str | None = None) -> str:
        dsn = self.single.dsn(database)
        return dsn if password is None else dsn.replace(self.single.password, password)


def _load(cluster: PgCluster, database: str, schema: str, rows: list[tuple[Any, ...]]) -> None:
    cluster.drop_database(database)
    cluster.create_database(database)
    with psycopg.connect(cluster.dsn(database), autocommit=True) as conn:
        conn.execute(schema)
        conn.cursor().executemany("INSERT INTO t VALUES (%s, %s, %s, %s)", rows)


@pytest.fixture(scope="module")
def pg(pg_clusters: list[PgCluster], pg_single: PgCluster, tmp_path_factory: Any) -> PgVerify:
    shards = [{"name": f"s{i}", "dsn": c.dsn(DATABASE)} for i, c in enumerate(pg_clusters)]
    config = {"dialect": "postgres", "shards": shards, "tables": {"t": {"shard_key": "id"}}}
    placement = shardq.load_config(config)
    for i, cluster in enumerate(pg_clusters):
        mine = [r for r in ROWS if placement.shard_for("t", r[0]) == f"s{i}"]
        _load(cluster, DATABASE, SCHEMA, mine)
    _load(pg_single, DATABASE, SCHEMA, ROWS)
    changed = [(i, "changed" if i == 5 else g, float(n), f) for i, g, n, f in ROWS if i != 7]
    _load(pg_single, CHANGED, CHANGED_SCHEMA, changed)
    return PgVerify(config, pg_single)


@pytest.mark.parametrize(
    ("sql", "params", "how"),
    [
        ("SELECT id, grp, n, f FROM t ORDER BY id", None, "in the order of id"),
        ("SELECT grp, count(*), sum(n), avg(f) FROM t GROUP BY grp", None, "as a multiset"),
        ("SELECT id, n FROM t WHERE id > %s ORDER BY n DESC, id LIMIT 5", [10], "of n, id"),
        ("SELECT grp, sum(f) AS s FROM t GROUP BY grp ORDER BY s", None, "in the order of s"),
    ],
)
def test_the_same_answer_on_postgres(pg: PgVerify, sql: str, params: Any, how: str) -> None:
    with shardq.connect(pg.config) as conn:
        result = conn.verify(sql, params, against=pg.against())
    assert result.ok, str(result)
    assert result.differences == ()
    assert result.shardq_rows
    assert len(result.shardq_rows) == len(result.single_rows)
    assert how in result.how
    assert str(result).startswith(f"same answer: {len(result.shardq_rows)} row")
    assert result.shardq_seconds > 0
    assert result.single_seconds > 0
    assert pg.single.password not in str(result) + result._repr_html_()
    assert "***" in result.against


def test_a_changed_value_and_a_lost_row_are_shown(pg: PgVerify) -> None:
    with shardq.connect(pg.config) as conn:
        result = conn.verify("SELECT id, grp FROM t ORDER BY id", against=pg.against(CHANGED))
    assert not result.ok
    first, *rest = result.differences
    assert first.kind.name == "VALUE"
    assert (first.row, first.column, first.shardq, first.single) == (4, "grp", "apple", "changed")
    assert first.message == (
        "row 4, column 'grp': shardq 'apple' (str) vs single 'changed' (str) (value)"
    )
    assert [d.kind.name for d in rest] == ["ROW_COUNT", "EXTRA"]
    assert rest[0].message.startswith("from row 6 on (ORDER BY id: shardq (7,) vs single (8,))")
    assert rest[1].shardq == (7, GROUPS[7 % 5])
    assert len(result.shardq_rows) == 40
    assert len(result.single_rows) == 39


def test_a_type_difference_is_shown_for_the_column_and_its_values(pg: PgVerify) -> None:
    with shardq.connect(pg.config) as conn:
        result = conn.verify(
            "SELECT id, n FROM t WHERE id IN (1, 2) ORDER BY id", against=pg.against(CHANGED)
        )
    kinds = [d.kind.name for d in result.differences]
    assert kinds == ["COLUMN_TYPE", "VALUE", "VALUE"]
    assert result.differences[0].message == (
        "column 'n' type: shardq numeric (1700) vs single float8 (701)"
    )
    assert result.differences[1].message == (
        "row 0, column 'n': shardq Decimal('1.75') (Decimal) vs single 1.75 (float) "
        "(type and value)"
    )


def test_an_order_difference_is_shown(pg: PgVerify) -> None:
    sql = "SELECT grp, count(*) AS c FROM t WHERE id NOT IN (5, 7) GROUP BY grp ORDER BY grp"
    with shardq.connect(pg.config) as conn:
        result = conn.verify(sql, against=pg.against(CHANGED))
    assert [d.kind.name for d in result.differences] == ["ORDER"]
    difference = result.differences[0]
    assert (difference.row, difference.shardq, difference.single) == (0, ("Apple",), ("apple",))
    assert "the same rows in another order" in str(result)
    assert sorted(result.shardq_rows) == sorted(result.single_rows)


def test_the_password_of_the_copy_never_shows(pg: PgVerify) -> None:
    wrong = "Wr0ng-s3cret"
    with shardq.connect(pg.config) as conn, pytest.raises(OperationalError) as caught:
        conn.verify("SELECT 1", against=pg.against(password=wrong))
    assert wrong not in str(caught.value)
    assert "could not answer" in str(caught.value)
    assert "shardq:***@" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_verify_refuses_a_write_before_running_it(pg: PgVerify) -> None:
    with shardq.connect(pg.config) as conn:
        with pytest.raises(ProgrammingError, match="verify compares reads"):
            conn.verify("DELETE FROM t", against=pg.against())
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (40,)


def _toml(config: dict[str, Any], path: Path) -> Path:
    lines = [f'dialect = "{config["dialect"]}"']
    for shard in config["shards"]:
        lines += ["[[shards]]", f'name = "{shard["name"]}"', f'dsn = "{shard["dsn"]}"']
    for table, options in config["tables"].items():
        lines.append(f"[tables.{table}]")
        for key, value in options.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_on_postgres(pg: PgVerify, tmp_path: Path) -> None:
    config = str(_toml(pg.config, tmp_path / "shardq.toml"))
    sql = "SELECT id, grp FROM t WHERE id > %s ORDER BY id"
    same = shardq_cli("verify", "-c", config, "--against", pg.against(), sql, "--params", "[30]")
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("same answer: 10 rows, 2 columns, compared in the order of id;")
    differs = shardq_cli(
        "verify", "-c", config, "--against", pg.against(CHANGED), "--json", "--limit", "1",
        "SELECT id, grp FROM t ORDER BY id",
    )  # fmt: skip
    assert differs.returncode == 6, differs.stderr
    report = json.loads(differs.stdout)
    assert report["ok"] is False
    assert report["ordered_by"] == ["id"]
    assert [d["message"] for d in report["differences"]] == [
        "row 4, column 'grp': shardq 'apple' (str) vs single 'changed' (str) (value)"
    ]
    failed = shardq_cli(
        "verify", "-c", config, "--against", pg.against(password="n0pe-pw"), sql, "--params", "[1]"
    )
    assert failed.returncode == 1
    assert "could not answer" in failed.stderr
    for run in (same, differs, failed):
        assert pg.single.password not in run.stdout + run.stderr
        assert "n0pe-pw" not in run.stdout + run.stderr


# -- SQLite


def _copy(edge: SqliteEdge, tmp_path: Path, *changes: str) -> Path:
    copy = tmp_path / "copy.sqlite"
    shutil.copy(edge.single, copy)
    with sqlite3.connect(copy) as db:
        for change in changes:
            db.executescript(change)
    db.close()
    return copy


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, name, amount, mixed FROM ev ORDER BY id",
        "SELECT grp, count(*), sum(qty), total(amount) FROM ev GROUP BY grp",
        "SELECT name, count(*) AS c FROM ev GROUP BY name ORDER BY c DESC, name LIMIT 4",
        "SELECT e.id, k.label FROM ev e JOIN kind k ON k.code = e.grp ORDER BY e.id",
    ],
)
def test_the_same_answer_on_sqlite(sqlite_edge: SqliteEdge, sql: str) -> None:
    with shardq.connect(sqlite_edge.config) as conn:
        result = conn.verify(sql, against=f"sqlite:///{sqlite_edge.single}")
    assert result.ok, str(result)
    assert result.shardq_rows
    assert result.against == f"sqlite:///{sqlite_edge.single}"


def test_sqlite_copy_differences(sqlite_edge: SqliteEdge, tmp_path: Path) -> None:
    copy = _copy(
        sqlite_edge,
        tmp_path,
        "UPDATE ev SET qty = 99 WHERE id = 4",
        "UPDATE ev SET mixed = 1.0 WHERE mixed = 1 AND typeof(mixed) = 'integer'",
    )
    with shardq.connect(sqlite_edge.config) as conn:
        changed = conn.verify("SELECT id, qty FROM ev ORDER BY id", against=str(copy))
        typed = conn.verify(
            "SELECT id, mixed FROM ev WHERE typeof(mixed) = 'integer' AND mixed = 1 ORDER BY id",
            against=str(copy),
        )
    assert [(d.kind.name, d.row, d.column, d.single) for d in changed.differences] == [
        ("VALUE", 3, "qty", 99)
    ]
    # The copy holds 1.0 where the shards hold 1: its WHERE finds none of them.
    assert typed.single_rows == []
    assert typed.differences[0].kind.name == "ROW_COUNT"
    with shardq.connect(sqlite_edge.config) as conn:
        typed = conn.verify("SELECT id, mixed FROM ev WHERE mixed = 1 ORDER BY id",
                            against=str(copy))  # fmt: skip
    assert typed.differences
    assert {d.kind.name for d in typed.differences} == {"VALUE"}
    assert all("shardq 1 (int) vs single 1.0 (float)" in d.message for d in typed.differences)


def test_sqlite_order_difference_from_a_collation(sqlite_edge: SqliteEdge, tmp_path: Path) -> None:
    # The copy's names compare NOCASE: the same rows, ordered otherwise.
    copy = _copy(
        sqlite_edge,
        tmp_path,
        "CREATE TABLE ev_new AS SELECT * FROM ev; DROP TABLE ev;"
        "CREATE TABLE ev (id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE, grp INTEGER, "
        "amount REAL, qty INTEGER, flag INTEGER, ts TEXT, note TEXT COLLATE NOCASE, mixed, "
        "big INTEGER); INSERT INTO ev SELECT * FROM ev_new; DROP TABLE ev_new;",
    )
    sql = "SELECT name, id FROM ev WHERE id <= 40 ORDER BY name, id"
    with shardq.connect(sqlite_edge.config) as conn:
        result = conn.verify(sql, against=f"sqlite:///{copy}")
    assert [d.kind.name for d in result.differences] == ["ORDER"]
    assert sorted(result.shardq_rows, key=str) == sorted(result.single_rows, key=str)
    parted = next(
        i for i, (g, w) in enumerate(zip(result.shardq_rows, result.single_rows, strict=True))
        if g != w
    )  # fmt: skip
    difference = result.differences[0]
    assert difference.row == parted
    assert str(difference) == (
        f"row {parted}: the same rows in another order: ORDER BY name, id is shardq "
        f"{result.shardq_rows[parted]!r} vs single {result.single_rows[parted]!r}"
    )


async def test_async_verify(sqlite_edge: SqliteEdge) -> None:
    async with await shardq.connect_async(sqlite_edge.config) as conn:
        result = await conn.verify(
            "SELECT id, name FROM ev WHERE id < ? ORDER BY id",
            [20],
            against=str(sqlite_edge.single),
        )
    assert result.ok
    assert len(result.shardq_rows) == 19


def test_cli_on_sqlite(sqlite_edge: SqliteEdge, tmp_path: Path) -> None:
    config = str(_toml(sqlite_edge.config, tmp_path / "shardq.toml"))
    copy = _copy(sqlite_edge, tmp_path, "DELETE FROM ev WHERE id IN (3, 4)")
    sql = "SELECT id, name FROM ev ORDER BY id"
    same = shardq_cli("verify", "-c", config, "--against", str(sqlite_edge.single), sql)
    assert same.returncode == 0, same.stderr
    assert "same answer: 160 rows" in same.stdout
    differs = shardq_cli("verify", "-c", config, "--against", f"sqlite:///{copy}", "-", stdin=sql)
    assert differs.returncode == 6, differs.stderr
    lines = differs.stdout.splitlines()
    assert lines[0].startswith("DIFFERS: 3 difference(s) shown")
    assert "shardq 160 rows, single 158 rows" in lines[0]
    assert lines[1].startswith("  from row 2 on (ORDER BY id: shardq (3,) vs single (5,))")
    assert lines[2].startswith("  extra: (3, ")
    assert lines[3].startswith("  extra: (4, ")
    usage = shardq_cli("verify", "-c", config, sql)  # no --against
    assert usage.returncode == 2
    assert "--against" in usage.stderr
    bad = shardq_cli("verify", "-c", config, "--against", "x.db", sql, "--params", "7")
    assert bad.returncode == 2
    missing = shardq_cli("verify", "-c", config, "--against", str(tmp_path / "none.db"), sql)
    assert missing.returncode == 1
    assert "could not answer" in missing.stderr


def test_cursor_renders_in_jupyter_without_consuming(sqlite_edge: SqliteEdge) -> None:
    with shardq.connect(sqlite_edge.config) as conn:
        cur = conn.execute("SELECT id, name FROM ev ORDER BY id")
        page = cur._repr_html_()
        assert "ran on s0, s1, s2, s3 in " in page
        assert "the first 50 rows (more not read yet)" in page
        assert cur.fetchone() == (1, "ann")
        assert len(cur.fetchall()) == 159
        small = conn.execute("SELECT id, note FROM ev WHERE id IN (1, 2) AND note IS NULL")
        rows = conn.execute(
            "SELECT id, note FROM ev WHERE id IN (1, 2) AND note IS NULL"
        ).fetchall()
        assert small._repr_html_().count("NULL") == len(rows)
        (results,) = [conn.execute(["SELECT count(*) FROM ev"])]
        assert results[0]._repr_html_().endswith(" ms</p>")


async def test_the_timeout_bounds_the_copy_too(sqlite_edge: SqliteEdge) -> None:
    from shardq.verify import run_single

    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    with pytest.raises(OperationalError, match="could not answer: OperationalError: interrupted"):
        await run_single("sqlite", str(sqlite_edge.single), endless, None, timeout=0.05)
