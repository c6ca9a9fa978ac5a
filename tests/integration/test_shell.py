"""``shardq shell`` against real SQLite shards: statements, backslash commands, errors, Ctrl-C.

The :class:`Shell` core is driven line by line with its output in memory; a
few cases run the ``shardq shell`` command itself, its input piped.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import shardq
from shardq.cli.demo import create_dataset
from shardq.cli.shell import Shell, history_path
from tests.integration.test_cli import shardq_cli
from tests.unit.test_extras import run_without

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.servers import PgCluster
    from tests.fixtures.sqlite_edge import SqliteEdge


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_dataset(tmp_path_factory.mktemp("shell"), shards=3, customers=120)


class Session:
    """A shell on an in-memory screen: ``type`` lines, read what they printed."""

    def __init__(self, conn: shardq.Connection, **options: object):
        self.out, self.err = io.StringIO(), io.StringIO()
        self.shell = Shell(conn, out=self.out, err=self.err, **options)  # type: ignore[arg-type]

    def type(self, *lines: str) -> tuple[str, str]:
        """Feed ``lines``; return what they printed on out and on err."""
        start_out, start_err = self.out.tell(), self.err.tell()
        for line in lines:
            self.shell.feed(line)
        return self.out.getvalue()[start_out:], self.err.getvalue()[start_err:]


@pytest.fixture
def session(demo_config: Path) -> Iterator[Session]:
    with shardq.connect(demo_config) as conn:
        yield Session(conn)


@pytest.fixture
def edge_session(sqlite_edge: SqliteEdge) -> Iterator[Session]:
    with shardq.connect(sqlite_edge.config) as conn:
        yield Session(conn)


def test_a_statement_runs_once_its_semicolon_is_typed(session: Session) -> None:
    out, err = session.type("SELECT id, name", "FROM customers WHERE id IN (1, 2)")
    assert (out, err) == ("", "")
    assert session.shell.continues
    out, err = session.type("ORDER BY id;")
    assert err == ""
    assert out.splitlines() == [
        " id |    name",
        "----+------------",
        "  1 | customer 1",
        "  2 | customer 2",
        "(2 rows)",
    ]
    assert not session.shell.continues


def test_two_statements_on_a_line_run_in_order_and_a_quoted_semicolon_waits(
    session: Session,
) -> None:
    out, _ = session.type("SELECT 1 AS a; SELECT 'x;' AS b; SELECT 'open;")
    assert out.splitlines()[:3] == [" a", "---", " 1"]
    assert " x;" in out.splitlines()
    assert session.shell.continues
    out, _ = session.type("still open';")
    assert "open;↵still open" in out


def test_a_line_starting_with_a_backslash_inside_a_quote_is_text(session: Session) -> None:
    out, err = session.type("SELECT 'a", "\\x' AS s;")
    assert err == ""
    assert "a↵\\x" in out
    assert not session.shell.expanded


def test_blank_lines_and_comments_alone_run_nothing(session: Session) -> None:
    assert session.type("", "-- a comment", "/* and ; another */", "   ") == ("", "")
    assert not session.shell.continues


def test_d_lists_declared_tables_with_kind_key_and_colocation(edge_session: Session) -> None:
    out, err = edge_session.type("\\d")
    assert err == ""
    assert edge_session.type("\\dt") == (out, "")
    assert out.splitlines() == [
        "Declared tables",
        " table |    kind     | shard key | co-located with",
        "-------+-------------+-----------+-----------------",
        " ev    | distributed | id        | ∅",
        " ev2   | distributed | id        | ev",
        " kind  | reference   | ∅         | ∅",
        "(3 rows)",
    ]


def test_d_table_shows_its_columns_from_the_catalog(
    edge_session: Session, sqlite_edge: SqliteEdge
) -> None:
    out, err = edge_session.type("\\d ev2")
    assert err == ""
    with sqlite_edge.single_connection() as single:
        declared = single.execute("SELECT name, type FROM pragma_table_info('ev2')").fetchall()
    lines = out.splitlines()
    assert lines[0] == 'Table "ev2"'
    body = [tuple(part.strip() for part in line.split("|")) for line in lines[3:-4]]
    assert body == declared
    assert lines[-4] == f"({len(declared)} rows)"
    assert lines[-3:] == ["Distributed by: id", "Co-located with: ev", "Shards: s0, s1, s2, s3"]
    out, _ = edge_session.type("\\d kind;")
    assert "Reference table: every shard holds all its rows." in out


def test_d_of_an_undeclared_table_prints_shardqs_error_and_goes_on(session: Session) -> None:
    out, err = session.type("\\d nosuch", "SELECT count(*) AS n FROM countries;")
    assert err.startswith("ERROR: table 'nosuch' is not declared")
    assert "(1 row)" in out
    assert session.shell.failures == 1


def test_an_error_prints_and_the_next_statement_runs(session: Session) -> None:
    out, err = session.type("SELECT nope FROM customers;", "SELEC 1;", "SELECT 2 AS two;")
    errors = err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("ERROR: ")
    assert "nope" in errors[0]
    assert errors[1].startswith("ERROR: ")
    assert out.splitlines() == [" two", "-----", "   2", "(1 row)"]
    assert session.shell.failures == 2


def test_timing_toggles_and_prints_elapsed(session: Session) -> None:
    out, _ = session.type("\\timing", "SELECT 1 AS a;")
    assert out.splitlines()[0] == "Timing is on."
    last = out.splitlines()[-1]
    assert last.startswith("Time: ")
    assert last.endswith(" ms")
    assert float(last.split()[1]) > 0
    out, _ = session.type("\\timing off", "SELECT 1 AS a;")
    assert out.splitlines()[0] == "Timing is off."
    assert "Time:" not in out
    _, err = session.type("\\timing maybe")
    assert "on or off" in err


def test_x_shows_records_and_toggles_back(session: Session) -> None:
    out, _ = session.type("\\x", "SELECT id, name FROM customers WHERE id = 3;")
    assert out.splitlines() == [
        "Expanded display is on.",
        "-[ RECORD 1 ]----",
        "id   | 3",
        "name | customer 3",
        "(1 row)",
    ]
    out, _ = session.type("\\x", "SELECT id FROM customers WHERE id = 3;")
    assert out.splitlines()[:2] == ["Expanded display is off.", " id"]


def test_explain_prints_shardqs_explain(session: Session, demo_config: Path) -> None:
    sql = "SELECT count(*) FROM customers"
    out, err = session.type(f"\\explain {sql};")
    assert err == ""
    with shardq.connect(demo_config) as conn:
        assert out == conn.explain(sql).rstrip("\n") + "\n"
    _, err = session.type("\\explain")
    assert "needs a statement" in err


def test_explain_analyze_runs_the_statement(session: Session) -> None:
    out, err = session.type("\\explain analyze SELECT count(*) FROM customers;")
    assert err == ""
    # The plan, then what running it did: one row, and each shard's part.
    assert "Execution: 1 rows in" in out
    assert out.index("Execution:") > 0
    plain, _ = session.type("\\explain SELECT count(*) FROM customers;")
    assert "Execution:" not in plain


def test_e_edits_the_statement_being_typed_then_runs_it(session: Session) -> None:
    seen: list[str] = []

    def editor(path: Path) -> None:
        seen.append(path.read_text())
        path.write_text(path.read_text().replace("id = 1", "id = 2").rstrip("\n") + ";\n")

    session.shell.editor = editor
    out, _ = session.type("SELECT name FROM customers", "WHERE id = 1", "\\e")
    assert seen == ["SELECT name FROM customers\nWHERE id = 1\n"]
    assert "customer 2" in out
    assert "customer 1" not in out
    # with nothing typed, \e takes the last statement
    out, _ = session.type("\\e")
    assert seen[-1] == "SELECT name FROM customers\nWHERE id = 2;\n"
    assert "customer 2" in out


def test_e_runs_editor_from_the_environment(
    session: Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "edit.py"
    script.write_text("import sys\nopen(sys.argv[1], 'w').write('SELECT 41 + 1 AS answer;\\n')\n")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script}")
    out, err = session.type("\\e")
    assert err == ""
    assert out.splitlines()[-2:] == ["     42", "(1 row)"]
    monkeypatch.setenv("EDITOR", "false")
    _, err = session.type("\\e")
    assert err.startswith("the editor failed")


def test_q_ends_and_unknown_commands_are_named(session: Session) -> None:
    _, err = session.type("\\nope")
    assert err == "invalid command \\nope; try \\? for help\n"
    out, _ = session.type("\\?")
    assert "\\d TABLE" in out
    assert "\\explain SQL" in out
    assert session.shell.feed("\\q") is False


def test_a_long_result_goes_to_the_pager_only_on_a_terminal(demo_config: Path) -> None:
    paged: list[list[str]] = []
    with shardq.connect(demo_config) as conn:
        for terminal in (False, True):
            s = Session(
                conn,
                terminal=terminal,
                size=lambda: os.terminal_size((80, 24)),
                pager=paged.append,
            )
            out, _ = s.type("SELECT id FROM customers ORDER BY id LIMIT 30;")
            short, _ = s.type("SELECT id FROM customers ORDER BY id LIMIT 3;")
            assert "(3 rows)" in short
            if terminal:
                assert out == ""
                assert paged[0][-1] == "(30 rows)"
            else:
                assert "(30 rows)" in out
    assert len(paged) == 1


def test_writes_report_rows_affected(tmp_path: Path) -> None:
    config = create_dataset(tmp_path, shards=2, customers=20)
    with shardq.connect(config) as conn:
        out, err = Session(conn).type("UPDATE customers SET name = 'x' WHERE id = 5;")
    assert (out, err) == ("OK, 1 row affected\n", "")


def test_history_lives_in_the_xdg_state_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/tmp/state-here")
    assert str(history_path()) == "/tmp/state-here/shardq/history"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert str(history_path()) == "/home/someone/.local/state/shardq/history"


def test_piped_input_runs_every_statement_and_exits_1_after_a_failure(demo_config: Path) -> None:
    script = "SELECT count(*) AS n FROM countries;\n\\x\nSELECT 1 AS one\n"
    ok = shardq_cli("shell", "-c", str(demo_config), stdin=script)
    assert ok.returncode == 0, ok.stderr
    assert "(1 row)" in ok.stdout
    assert "one | 1" in ok.stdout
    failed = shardq_cli("shell", "-c", str(demo_config), stdin="SELECT nope;\nSELECT 1;\n")
    assert failed.returncode == 1
    assert failed.stderr.startswith("ERROR: ")
    assert "(1 row)" in failed.stdout


def test_ctrl_c_cancels_the_running_statement_and_the_shell_goes_on(demo_config: Path) -> None:
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
        "SELECT count(*) FROM c, customers WHERE customers.id = 1;"
    )
    env = {k: v for k, v in os.environ.items() if k != "SHARDQ_CONFIG"}
    with subprocess.Popen(
        [sys.executable, "-m", "shardq.cli", "shell", "-c", str(demo_config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(f"SELECT 'ready' AS r;\n{slow}\nSELECT 'after' AS next;\n")
            proc.stdin.flush()  # (communicate closes it)
            while proc.stdout.readline() not in ("(1 row)\n", ""):
                pass  # the shell is up: the slow statement starts
            time.sleep(0.5)
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "cancelled" in err, err
    assert " after" in out
    assert proc.returncode == 0
    assert took < 10  # cancelled on the shard, not run to its end


def test_a_missing_prompt_toolkit_names_the_shell_extra() -> None:
    found = run_without(
        ["prompt_toolkit"],
        """
        from shardq.cli import prompt
        prompt.require()
        """,
    )
    assert found["type"] == "MissingDependencyError"
    assert found["extra"] == "shell"
    assert "pip install 'shardq[shell]'" in found["message"]


@pytest.mark.postgres
def test_d_table_and_a_query_on_postgres_shards(pg_clusters: list[PgCluster]) -> None:
    clusters = pg_clusters[:2]
    for cluster in clusters:
        cluster.execute(
            "DROP TABLE IF EXISTS shell_t; "
            "CREATE TABLE shell_t (id integer PRIMARY KEY, amount numeric(10,2))"
        )
    config = {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": c.dsn()} for i, c in enumerate(clusters)],
        "tables": {"shell_t": {"shard_key": "id"}},
    }
    try:
        with shardq.connect(config) as conn:
            conn.execute("INSERT INTO shell_t VALUES (1, 1.5), (2, NULL)")
            s = Session(conn)
            out, err = s.type("\\d shell_t")
            assert err == ""
            types = [line.split("|")[1].strip() for line in out.splitlines()[3:5]]
            assert types == ["integer", "numeric(10,2)"]
            out, err = s.type("SELECT id, amount FROM shell_t ORDER BY id;")
            assert err == ""
            assert out.splitlines()[2:5] == ["  1 |   1.50", "  2 |      ∅", "(2 rows)"]
    finally:
        for cluster in clusters:
            cluster.execute("DROP TABLE IF EXISTS shell_t")


def test_the_readme_session_is_what_the_shell_prints_on_the_demo(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### `shardq shell`") :]
    start = section.index("```text\n") + len("```text\n")
    transcript = section[start : section.index("\n```", start)]
    lines = transcript.splitlines()
    assert lines[0] == "$ shardq shell"
    typed = [line[8:] for line in lines if line.startswith(("shardq=> ", "shardq-> "))]
    printed = [line for line in lines[1:] if not line.startswith(("shardq=> ", "shardq-> "))]
    with shardq.connect(create_dataset(tmp_path)) as conn:  # `shardq demo`'s data
        out, err = Session(conn).type(*typed)
    assert err == ""
    assert out.splitlines() == printed


def test_the_prompt_feeds_typed_lines_keeps_history_and_ends_on_ctrl_d(
    session: Session, tmp_path: Path
) -> None:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from shardq.cli import prompt

    history = tmp_path / "state" / "shardq" / "history"
    with create_pipe_input() as keys:
        # Enter before the ; goes on with the statement on a new line; Ctrl-C drops a
        # half-typed one; a backslash command runs at its Enter; Ctrl-D quits
        keys.send_text("SELECT 7\r AS seven\r;\rSELECT 'dropped'\r\x03\\x\r\x04")
        prompt.loop(session.shell, history, input=keys, output=DummyOutput())
    out = session.out.getvalue()
    assert "\n seven\n-------\n     7\n(1 row)\n" in out
    assert "dropped" not in out
    assert out.endswith("Expanded display is on.\n\n")
    assert not session.shell.continues
    saved = history.read_text()
    assert "\n+SELECT 7\n+ AS seven\n+;\n" in saved  # one entry: Up brings it back whole
    assert "dropped" not in saved
    assert "\n+\\x\n" in saved


def test_progress_counts_rows_per_shard_then_erases_its_line(
    demo_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardq.cli import progress

    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "_EVERY", 0.0)  # draw every batch
    with shardq.connect(demo_config) as conn:
        out, err = Session(conn, progress=True).type("SELECT id FROM customers;")
        assert conn.async_connection._engine.on_rows is None  # detached after the read
        placed = [conn.shard_for("customers", i) for i in range(1, 121)]
    assert "(120 rows)" in out
    assert err.endswith("\r\x1b[K")  # the line is erased before the result prints
    last = err.split("\r\x1b[K")[-2]
    total, _, shards = last.partition("  ")
    assert total == "rows received: 120"
    counts = dict(part.split(" ") for part in shards.split(" · "))
    assert counts == {name: str(placed.count(name)) for name in set(placed)}


def test_query_shows_progress_on_a_terminal_and_never_in_a_pipe(demo_config: Path) -> None:
    import pty

    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
        "SELECT customers.id, c.x FROM customers, c WHERE customers.id <= 3"
    )
    command = [sys.executable, "-m", "shardq.cli", "query", "-c", str(demo_config), "-f", "csv"]
    piped = shardq_cli(*command[3:], sql.format(n=1000))
    assert piped.returncode == 0
    assert piped.stdout.count("\n") == 3001
    assert piped.stderr == ""
    master, terminal = pty.openpty()
    try:
        # long enough to pass the display's delay: 300,000 rows
        long = sql.format(n=100_000)
        with subprocess.Popen([*command, long], stdout=subprocess.PIPE, stderr=terminal) as proc:
            os.close(terminal)
            out, _ = proc.communicate(timeout=120)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end is closed: all is read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert out.count(b"\n") == 300_001
    lines = drawn.decode().split("\r\x1b[K")
    assert lines[0] == ""
    assert lines[-1] == ""  # erased at the end
    assert all(line.startswith("rows received: ") for line in lines[1:-1])
    assert len(lines) > 3  # redrawn as the rows came
