"""The ``shardq`` command: demo, query (formats, stdin, exit codes) and check."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shardq.cli.demo import create_dataset
from tests.fixtures.shards import PG_DATABASE

if TYPE_CHECKING:
    from tests.fixtures.servers import PgCluster


def shardq_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardq.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_dataset(tmp_path_factory.mktemp("demo"), shards=3, customers=300)


def test_demo_runs_with_no_server_and_no_configuration(tmp_path: Path) -> None:
    result = shardq_cli("demo", "--dir", str(tmp_path / "d"), "--customers", "200")
    assert result.returncode == 0, result.stderr
    assert "customer 42 lives on shard" in result.stdout
    assert result.stdout.count("ran on") == 6
    assert "refused:" in result.stdout
    assert (tmp_path / "d" / "shardq.toml").exists()
    assert len(list((tmp_path / "d").glob("*.sqlite"))) == 4


def test_demo_in_a_temporary_folder_cleans_up() -> None:
    result = shardq_cli("demo", "--customers", "50", "--shards", "2")
    assert result.returncode == 0, result.stderr
    folder = result.stdout.split(" in ", 1)[1].split(" (", 1)[0]
    assert not Path(folder).exists()


def test_query_formats(demo_config: Path) -> None:
    sql = "SELECT id, name FROM customers WHERE id IN (1, 2, 3)"
    table = shardq_cli("query", "-c", str(demo_config), sql)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "|", "name"]
    assert lines[-1] == "(3 rows)"
    out = shardq_cli("query", "-c", str(demo_config), "--format", "csv", sql).stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["id", "name"]
    assert sorted(rows[1:]) == [
        ["1", "customer 1"],
        ["2", "customer 2"],
        ["3", "customer 3"],
    ]
    out = shardq_cli("query", "-c", str(demo_config), "-f", "json", sql).stdout
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == [1, 2, 3]


def test_query_reads_sql_from_stdin_and_binds_parameters(demo_config: Path) -> None:
    result = shardq_cli(
        "query", "-c", str(demo_config), "-f", "csv", "-p", "7", "-",
        stdin="SELECT id FROM customers WHERE id = ?",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["id", "7"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["SELECT * FORM customers"], 4, "syntax error at line 1"),
        (["SELECT * FROM nope"], 4, "'nope' is not declared"),
        (["SELECT string_agg(name, ',') FROM customers"], 4, "not supported"),
        (["SELECT missing_column FROM customers WHERE id = 1"], 1, "shard 's"),
        (
            [
                "--timeout",
                "0.2",
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                "SELECT count(*) FROM c",
            ],
            5,
            "timed out after 0.2 s",
        ),
    ],
)
def test_query_exit_codes(demo_config: Path, args: list[str], code: int, message: str) -> None:
    result = shardq_cli("query", "-c", str(demo_config), *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_config_and_usage_exit_codes(tmp_path: Path) -> None:
    missing = shardq_cli("query", "-c", str(tmp_path / "none.toml"), "SELECT 1")
    assert missing.returncode == 3
    assert "configuration file not found" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[shards]]\nname = "a"\n')
    invalid = shardq_cli("check", "-c", str(bad))
    assert invalid.returncode == 3
    assert "shards[0].dsn" in invalid.stderr
    assert shardq_cli("query").returncode == 2
    assert shardq_cli("frobnicate").returncode == 2


def test_a_write_reports_rows_affected(tmp_path: Path) -> None:
    config = create_dataset(tmp_path, shards=2, customers=20)
    result = shardq_cli("query", "-c", str(config), "DELETE FROM orders WHERE customer_id = 3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK, ")
    assert "affected" in result.stdout


def test_check_passes_then_reports_a_differing_table(tmp_path: Path) -> None:
    config = create_dataset(tmp_path, shards=3, customers=20)
    ok = shardq_cli("check", "-c", str(config))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("SQLite") == 3
    assert ok.stdout.strip().endswith("OK")
    with sqlite3.connect(tmp_path / "demo-s1.sqlite") as db:
        db.execute("ALTER TABLE orders ADD COLUMN note TEXT")
    db.close()
    bad = shardq_cli("check", "-c", str(config))
    assert bad.returncode == 1
    assert "table 'orders' differs" in bad.stdout
    assert "s1" in bad.stdout


def test_check_against_postgres_with_passwords_from_the_environment(
    pg_dataset: list[PgCluster], tmp_path: Path
) -> None:
    env = {f"SHARDQ_TEST_PW_{i}": c.password for i, c in enumerate(pg_dataset)}
    shards = "".join(
        f'[[shards]]\nname = "s{i}"\n'
        f'dsn = "postgresql://shardq:${{SHARDQ_TEST_PW_{i}}}@127.0.0.1:{c.port}/{PG_DATABASE}"\n'
        for i, c in enumerate(pg_dataset)
    )
    path = tmp_path / "shardq.toml"
    path.write_text(
        'dialect = "postgres"\n' + shards + '[tables.items]\nshard_key = "id"\n'
        "[tables.kinds]\nreference = true\n"
    )
    result = shardq_cli("check", "-c", str(path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PostgreSQL") == 4
    assert "round trip" in result.stdout
    query = shardq_cli(
        "query", "-c", str(path), "-f", "csv", "SELECT id FROM items WHERE id = 5", env=env
    )
    assert query.stdout.splitlines() == ["id", "5"]
    for password in env.values():
        assert password not in result.stdout + result.stderr + query.stdout + query.stderr


def test_explain_shows_shards_sql_and_merge(demo_config: Path) -> None:
    sql = (
        "SELECT country, count(*) AS n FROM customers GROUP BY country "
        "ORDER BY n DESC, country LIMIT 3"
    )
    plain = shardq_cli("explain", "-c", str(demo_config), sql)
    assert plain.returncode == 0, plain.stderr
    assert "Distributed query on 3 of 3 shards" in plain.stdout
    assert "SELECT country AS _shardq_g0, COUNT(*) AS _shardq_a0 FROM customers" in plain.stdout
    assert "regroup by column 1" in plain.stdout
    assert "keep rows 1 to 3" in plain.stdout
    analyzed = shardq_cli("explain", "-c", str(demo_config), "--analyze", sql)
    assert analyzed.returncode == 0, analyzed.stderr
    assert "Execution: 3 rows in" in analyzed.stdout
    assert analyzed.stdout.count("rows received") == 3
    pinned = shardq_cli("explain", "-c", str(demo_config), "-p", "5",
                        "SELECT * FROM customers WHERE id = ?")  # fmt: skip
    assert "Single-shard query" in pinned.stdout
    refused = shardq_cli("explain", "-c", str(demo_config),
                         "SELECT group_concat(name) FROM customers")  # fmt: skip
    assert refused.returncode == 4
    assert "GROUP_CONCAT" in refused.stderr


def test_a_connection_left_open_does_not_hang_the_interpreter_at_exit(demo_config: Path) -> None:
    script = (
        "import shardq\n"
        f"conn = shardq.connect({str(demo_config)!r})\n"
        "print(conn.execute('SELECT count(*) FROM customers').fetchall())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "300" in result.stdout


def test_batch_runs_a_file_in_order_with_progress(demo_config: Path, tmp_path: Path) -> None:
    statements = tmp_path / "statements.sql"
    lookups = [f"SELECT name FROM customers WHERE id = {i};" for i in range(1, 41)]
    statements.write_text(
        "-- a dashboard's queries, and lookups\n"
        "SELECT count(*) AS n FROM customers;\n" + "\n".join(lookups) + "\nSELECT ';' AS semi;\n"
    )
    done = shardq_cli("batch", "-c", str(demo_config), str(statements), "-j", "8", "--progress")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["statement"] for line in lines] == list(range(42))
    assert lines[0]["columns"] == ["n"]
    assert [line["rows"] for line in lines[1:41]] == [[[f"customer {i}"]] for i in range(1, 41)]
    assert lines[41]["rows"] == [[";"]]
    assert "42/42 done, 0 failed" in done.stderr
    assert "42 statements, 42 ok, 0 failed" in done.stderr


def test_batch_errors_stop_or_are_reported_in_place(demo_config: Path, tmp_path: Path) -> None:
    statements = tmp_path / "statements.sql"
    statements.write_text("SELECT 1 AS one;\nSELECT * FROM customers WHERE (;\nSELECT 2 AS two;")
    stopped = shardq_cli("batch", "-c", str(demo_config), str(statements))
    assert stopped.returncode == 4  # refused before running, as for one statement
    assert "syntax error" in stopped.stderr
    assert "statement 1 of the batch" in stopped.stderr
    assert stopped.stdout == ""  # a list is checked before any statement runs
    kept = shardq_cli(
        "batch", "-c", str(demo_config), "--continue-on-error", "-", stdin=statements.read_text()
    )
    assert kept.returncode == 1
    lines = [json.loads(line) for line in kept.stdout.splitlines()]
    assert [line["ok"] for line in lines] == [True, False, True]
    assert lines[1]["error"] == "SQLSyntaxError"
    assert lines[2]["rows"] == [[2]]
    assert "3 statements, 2 ok, 1 failed" in kept.stderr
