"""The ``shardq`` command: demo, query (formats, stdin, exit codes) and check."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from shardq.cli.__main__ import build_parser
from shardq.cli.demo import create_dataset
from tests.fixtures.shards import PG_DATABASE

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.servers import PgCluster


def shardq_cli(
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    if env is None or "SHARDQ_CONFIG" not in env:
        environment.pop("SHARDQ_CONFIG", None)  # the caller's own must not leak in
    return subprocess.run(
        [sys.executable, "-m", "shardq.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=cwd,
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


def _printed_commands(stdout: str) -> list[list[str]]:
    """The indented command lines the demo prints at its end, split as a shell would."""
    tail = stdout[stdout.index("Query it yourself") :]
    return [shlex.split(line) for line in tail.splitlines() if line.startswith("  ")]


def test_demo_stays_in_a_default_folder_and_its_next_commands_run_as_printed(
    tmp_path: Path,
) -> None:
    first = shardq_cli("demo", "--customers", "200", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Created 4 SQLite shards with 200 customers in shardq-demo")
    folder = tmp_path / "shardq-demo"
    assert sorted(p.name for p in folder.iterdir()) == [
        *(f"demo-s{i}.sqlite" for i in range(4)),
        "shardq.toml",
    ]
    query, cd, explain = _printed_commands(first.stdout)
    assert query[:3] == ["shardq", "query", "-c"]
    ran = shardq_cli(*query[1:], cwd=tmp_path)  # as printed, from the same directory
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "(8 rows)"
    assert cd == ["cd", "shardq-demo"]
    inside = shardq_cli(*explain[1:], cwd=tmp_path / cd[1])  # finds ./shardq.toml
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.startswith("Single-shard query on s")

    built = (folder / "demo-s0.sqlite").stat().st_mtime_ns
    again = shardq_cli("demo", "--customers", "200", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Reusing the demo in shardq-demo: 4 SQLite shards")
    assert "--fresh rebuilds it" in again.stdout
    assert (folder / "demo-s0.sqlite").stat().st_mtime_ns == built
    assert again.stdout.count("ran on") == 6

    fresh = shardq_cli("demo", "--customers", "200", "--fresh", cwd=tmp_path)
    assert fresh.stdout.startswith("Rebuilt 4 SQLite shards with 200 customers")
    other = shardq_cli("demo", "--customers", "50", "--shards", "2", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert other.stdout.startswith("Rebuilt 2 SQLite shards with 50 customers in shardq-demo")
    assert "it held 4 shards and 200 customers" in other.stdout.splitlines()[0]
    assert sorted(p.name for p in folder.iterdir()) == [
        "demo-s0.sqlite",
        "demo-s1.sqlite",
        "shardq.toml",
    ]  # no stale shard file of the earlier demo stays


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "0"], "argument --shards: must be at least 1, not 0"),
        (["--customers", "0"], "argument --customers: must be at least 1, not 0"),
        (["--customers", "many"], "argument --customers: not a whole number: 'many'"),
        (["--dir", "/proc/shardq-demo"], "cannot write the demo into /proc/shardq-demo"),
    ],
)
def test_demo_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = shardq_cli("demo", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: shardq demo")
    assert f"shardq demo: error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "shardq-demo").exists()


def test_demo_into_a_folder_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = shardq_cli("demo", "--dir", str(tmp_path / "a-file" / "demo"))
    assert result.returncode == 2
    assert "a-file/demo for the demo: Not a directory; choose --dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_never_overwrites_a_configuration_of_its_own(tmp_path: Path) -> None:
    mine = tmp_path / "shardq.toml"
    mine.write_text('dialect = "sqlite"\n')
    result = shardq_cli("demo", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "shardq.toml exists and was not written by shardq demo" in result.stderr
    assert mine.read_text() == 'dialect = "sqlite"\n'


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


@pytest.mark.parametrize("command", _commands(build_parser()), ids=" ".join)
def test_every_help_reads_as_plain_text(command: tuple[str, ...]) -> None:
    result = shardq_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: shardq {' '.join(command)}".rstrip())
    for markup in ("``", ":mod:", ":meth:", ":func:", "::", "%("):
        assert markup not in result.stdout


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
    ("params", "sql", "expected"),
    [
        # a number compares as a number, though the column is REAL and the product too
        (["995"], "SELECT count(*) AS n FROM orders WHERE amount * 1 > ?", None),
        (["3"], "SELECT id FROM orders ORDER BY id LIMIT ?", ["id", "1", "2", "3"]),
        (["2.5"], "SELECT typeof(?) AS t", ["t", "real"]),
        (['"42"'], "SELECT typeof(?) AS t", ["t", "text"]),
        (["null"], "SELECT ? IS NULL AS t", ["t", "1"]),
        (["true"], "SELECT ? AS t", ["t", "1"]),
        (["DE"], "SELECT code FROM countries WHERE code = ?", ["code", "DE"]),
        (["007"], "SELECT ? AS t", ["t", "007"]),  # not JSON: text as written
    ],
)
def test_parameters_are_bound_with_their_json_type(
    demo_config: Path, params: list[str], sql: str, expected: list[str] | None
) -> None:
    args = [a for p in params for a in ("-p", p)]
    result = shardq_cli("query", "-c", str(demo_config), "-f", "csv", *args, sql)
    assert result.returncode == 0, result.stderr
    if expected is None:  # the same count as with the number written in the SQL
        inline = shardq_cli("query", "-c", str(demo_config), "-f", "csv",
                            sql.replace("?", params[0]))  # fmt: skip
        assert result.stdout == inline.stdout
        assert int(result.stdout.splitlines()[1]) > 0
    else:
        assert result.stdout.splitlines() == expected
    explained = shardq_cli("explain", "-c", str(demo_config), *args, sql)
    assert explained.returncode == 0, explained.stderr


def test_a_json_array_parameter_is_a_usage_error(demo_config: Path) -> None:
    result = shardq_cli("query", "-c", str(demo_config), "-p", "[1, 2]", "SELECT ?")
    assert result.returncode == 2
    assert "argument -p/--param: a placeholder takes one value, not a JSON array" in result.stderr


def test_the_configuration_is_found_by_option_environment_or_directory(
    demo_config: Path, tmp_path: Path
) -> None:
    sql = "SELECT count(*) AS n FROM countries"
    here = shardq_cli("query", "-f", "csv", sql, cwd=demo_config.parent)
    assert here.stdout.splitlines() == ["n", "8"], here.stderr
    env = {"SHARDQ_CONFIG": str(demo_config)}
    for command in (["query", "-f", "csv", sql], ["explain", sql], ["check"]):
        found = shardq_cli(*command, env=env, cwd=tmp_path)
        assert found.returncode == 0, found.stderr
    batch = shardq_cli("batch", "-", stdin=sql, env=env, cwd=tmp_path)
    assert json.loads(batch.stdout)["rows"] == [[8]]
    # -c first, then the environment, then the directory
    other = create_dataset(tmp_path / "other", shards=2, customers=10)
    with sqlite3.connect(other.parent / "demo-s0.sqlite") as db:
        db.execute("DELETE FROM countries WHERE code = 'DE'")
    db.close()
    chosen = shardq_cli("query", "-c", str(other), "-f", "csv", sql, env=env,
                        cwd=demo_config.parent)  # fmt: skip
    assert chosen.stdout.splitlines() == ["n", "7"]
    chosen = shardq_cli("query", "-f", "csv", sql, env={"SHARDQ_CONFIG": str(other)},
                        cwd=demo_config.parent)  # fmt: skip
    assert chosen.stdout.splitlines() == ["n", "7"]
    missing = shardq_cli("query", sql, env={"SHARDQ_CONFIG": str(tmp_path / "no.toml")})
    assert missing.returncode == 3
    assert "no.toml: configuration file not found" in missing.stderr


def test_no_configuration_anywhere_names_the_three_places(tmp_path: Path) -> None:
    for command in (["query", "SELECT 1"], ["explain", "SELECT 1"], ["check"],
                    ["batch", "-"], ["cache", "stats"]):  # fmt: skip
        result = shardq_cli(*command, cwd=tmp_path, stdin="")
        assert result.returncode == 3, command
        assert "no configuration found: give -c PATH, set $SHARDQ_CONFIG, or run where a " \
            "shardq.toml is" in result.stderr  # fmt: skip
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["SELECT * FORM customers"], 4, 'near "customers": syntax error (line 1, column 15)'),
        (["SELECT * FROM nope"], 4, "'nope' is not declared"),
        (["SELECT country, name FROM customers GROUP BY country"], 4, "not supported"),
        # Gathered to one shard, where SQLite itself has no such function.
        (["SELECT string_agg(name, ',') FROM customers"], 1, "no such function: string_agg"),
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


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT * FROM orders WHERE customer_id = %s",
            'near "%": syntax error (line 1, column 42); SQLite shards take ? placeholders',
        ),
        ("SELECT * FROM orders WHERE (", "incomplete input (line 1, column 28)"),
        (
            "SELECT name FROM customers\nWHERE id = = 3",
            'near "=": syntax error (line 2, column 12)',
        ),
        ("SELECT 'abc FROM customers", 'unrecognized token: "\'abc FROM customers" (line 1'),
    ],
)
def test_syntax_errors_read_like_sqlites_own(demo_config: Path, sql: str, message: str) -> None:
    result = shardq_cli("query", "-c", str(demo_config), "-p", "42", sql)
    assert result.returncode == 4
    assert result.stderr.startswith(f"shardq: error: {message}")
    for leak in ("sqlglot", "Required keyword", "<class", "Traceback"):
        assert leak not in result.stderr


def test_config_and_usage_exit_codes(tmp_path: Path) -> None:
    missing = shardq_cli("query", "-c", str(tmp_path / "none.toml"), "SELECT 1")
    assert missing.returncode == 3
    assert "configuration file not found" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[shards]]\nname = "a"\n')
    invalid = shardq_cli("check", "-c", str(bad))
    assert invalid.returncode == 3
    assert "shards[0].dsn" in invalid.stderr
    assert shardq_cli("query").returncode == 2  # no SQL
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
    assert "load the shards' rows into an in-memory SQLite table" in plain.stdout
    assert "GROUP BY _shardq_g0 ORDER BY n DESC, country LIMIT 3" in plain.stdout
    analyzed = shardq_cli("explain", "-c", str(demo_config), "--analyze", sql)
    assert analyzed.returncode == 0, analyzed.stderr
    assert "Execution: 3 rows in" in analyzed.stdout
    assert analyzed.stdout.count("rows received") == 3
    pinned = shardq_cli("explain", "-c", str(demo_config), "-p", "5",
                        "SELECT * FROM customers WHERE id = ?")  # fmt: skip
    assert "Single-shard query" in pinned.stdout
    refused = shardq_cli("explain", "-c", str(demo_config),
                         "SELECT country, name FROM customers GROUP BY country")  # fmt: skip
    assert refused.returncode == 4
    assert "the bare column name" in refused.stderr


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
    assert "incomplete input (line 1, column 31)" in stopped.stderr  # as SQLite says it
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


def test_a_failure_stops_the_batch_after_printing_every_statement_that_ran(
    tmp_path: Path,
) -> None:
    config = create_dataset(tmp_path / "d", shards=3, customers=30)
    lookups = [f"SELECT name FROM customers WHERE id = {i};" for i in range(1, 6)]
    inserts = [
        f"INSERT INTO customers (id, name, country, signed_up) VALUES ({i}, 'n', 'DE', '2024');"
        for i in (100, 101, 102)
    ]
    statements = tmp_path / "statements.sql"
    statements.write_text(
        "\n".join([*lookups, "SELECT nope FROM customers WHERE id = 3;", *inserts])
    )
    # One at a time: the five lookups, then the failure; the inserts never start.
    one = shardq_cli("batch", "-c", str(config), "-j", "1", str(statements))
    assert one.returncode == 1, one.stderr
    lines = [json.loads(line) for line in one.stdout.splitlines()]
    assert [line["statement"] for line in lines] == list(range(6))
    assert [line["rows"] for line in lines[:5]] == [[[f"customer {i}"]] for i in range(1, 6)]
    assert lines[5]["ok"] is False
    assert "no such column: nope" in lines[5]["message"]
    assert one.stderr.startswith("shardq: error: shard 's")
    assert "(statement 5 of the batch, counting from 0)" in one.stderr
    assert "stopped at the first failure: 6 of 9 statements ran (5 ok, 1 failed), 3 not run" in (
        one.stderr
    )
    counted = shardq_cli("query", "-c", str(config), "-f", "csv",
                         "SELECT count(*) AS n FROM customers WHERE id >= 100")  # fmt: skip
    assert counted.stdout.splitlines() == ["n", "0"]
    # All at once: every statement ran before the failure was known; all are printed, in order.
    many = shardq_cli("batch", "-c", str(config), str(statements))
    assert many.returncode == 1, many.stderr
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert [line["statement"] for line in lines] == list(range(len(lines)))
    assert [line["ok"] for line in lines[:6]] == [True] * 5 + [False]
    assert all(line["ok"] for line in lines[6:])
    ran = len(lines)
    assert f"{ran} of 9 statements ran ({ran - 1} ok, 1 failed)" in many.stderr


def test_a_refusal_stops_the_batch_without_a_coroutine_left_unawaited(
    demo_config: Path,
) -> None:
    sql = (
        "SELECT 1 AS one;\nSELECT country, name FROM customers GROUP BY country;\nSELECT 2 AS two;"
    )
    for args in ([], ["-j", "1"]):
        result = shardq_cli("batch", "-c", str(demo_config), *args, "-", stdin=sql,
                            env={"PYTHONWARNINGS": "error::RuntimeWarning"})  # fmt: skip
        assert result.returncode == 4, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert lines[0] == {"statement": 0, "ok": True, "rowcount": 1, "columns": ["one"],
                            "rows": [[1]]}  # fmt: skip
        assert lines[1]["error"] == "UnsupportedQueryError"
        assert "never awaited" not in result.stderr
        assert "RuntimeWarning" not in result.stderr
        assert "the bare column name" in result.stderr


def _stats_table(stdout: str) -> dict[tuple[str, str], dict[str, str]]:
    """``shardq stats``'s table read back: (shard, host) -> column -> cell."""
    head, rule, *rows = stdout.splitlines()
    names = [n.strip() for n in head.split(" | ")]
    assert set(rule) <= {"-", "+"}
    table = {}
    for row in rows:
        cells = dict(zip(names, (c.strip() for c in row.split(" | ")), strict=True))
        table[(cells["shard"], cells["host"])] = cells
    return table


def test_stats_probes_every_shard_and_prints_a_table(demo_config: Path) -> None:
    result = shardq_cli("stats", "-c", str(demo_config))
    assert result.returncode == 0, result.stderr
    table = _stats_table(result.stdout)
    assert list(table) == [(f"s{i}", "primary") for i in range(3)]  # demo_config's shards
    for (shard, _), cells in table.items():
        assert cells["statements"] == "1"  # the probe: one SELECT 1 per host
        assert cells["errors"] == cells["timeouts"] == cells["retries"] == "0"
        assert float(cells["p50 ms"]) > 0
        assert cells["address"] == str(demo_config.parent / f"demo-{shard}.sqlite")
    assert "3 statements under read_policy 'round-robin', 3 ok, 0 failed" in result.stderr
    # --repeat runs the round again; --concurrency does not change what runs.
    again = shardq_cli("stats", "-c", str(demo_config), "-n", "3", "-j", "4", "--json")
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert (document["statements"], document["ok"], document["failed"]) == (9, 9, 0)
    assert [h["statements"] for h in document["hosts"]] == [3, 3, 3]
    assert all(0 < h["p50"] <= h["p95"] <= h["p99"] for h in document["hosts"])


def test_stats_runs_given_statements_and_counts_failures(demo_config: Path) -> None:
    scatter = "SELECT count(*) FROM orders"
    pinned = "SELECT name FROM customers WHERE id = 7"
    args = ["stats", "-c", str(demo_config), "--json", "-n", "5", "-j", "3"]
    result = shardq_cli(*args, scatter, pinned)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["statements"], document["failed"]) == (10, 0)
    assert document["read_policy"] == "primary"  # the configuration's
    by_shard = {h["shard"]: h["statements"] for h in document["hosts"]}
    home = next(s for s, n in by_shard.items() if n == 10)  # customer 7's shard, and the scatter
    assert by_shard == {s: 10 if s == home else 5 for s in by_shard}
    # From standard input, split at semicolons; a runtime failure on a shard (integer
    # overflow) is counted and exits 1, and every statement still runs.
    overflow = "SELECT abs(-9223372036854775807 - 1) FROM customers WHERE id = 7"
    failing = shardq_cli(*args[:3], "-n", "2", "-", stdin=f"{pinned};\n{overflow};\n")
    assert failing.returncode == 1, failing.stderr
    assert _stats_table(failing.stdout)[(home, "primary")]["errors"] == "2"
    assert f"shardq: ShardOperationalError (2 times): shard '{home}'" in failing.stderr
    assert "4 statements under read_policy 'primary', 2 ok, 2 failed" in failing.stderr
    # A timeout is counted as one, and exits 5; bad SQL runs nothing and exits 4.
    forever = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    timed_out = shardq_cli(*args[:3], "-t", "0.2", forever)
    assert timed_out.returncode == 5, timed_out.stderr
    assert sum(int(c["timeouts"]) for c in _stats_table(timed_out.stdout).values()) == 1
    refused = shardq_cli(*args[:3], pinned, "SELECT * FORM customers")
    assert refused.returncode == 4
    assert "syntax error" in refused.stderr
    assert refused.stdout == ""
    assert shardq_cli(*args[:3], "-n", "0").returncode == 2


def test_query_stats_prints_the_table_on_stderr(demo_config: Path) -> None:
    result = shardq_cli("query", "-c", str(demo_config), "--stats", "SELECT count(*) FROM orders")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "count(*)"
    table = _stats_table(result.stderr)
    assert [cells["statements"] for cells in table.values()] == ["1"] * 3
