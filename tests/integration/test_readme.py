"""The README's tour of the demo runs as written, so the README cannot drift from the code.

The tour is the section "A tour of the demo": its ``sh`` block runs line by line
in one shell, from an empty folder, as a new user would type it; its ``python``
blocks run in the folder the shell block ends in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shardq.cli import demo_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def tour(section: str = "A tour of the demo") -> list[tuple[str, str]]:
    """The (language, code) of each fenced block of a section, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.index("\n## ", start + 1)
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text[start:end])]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SHARDQ_CONFIG"}
    # the shardq command of the interpreter running the tests, first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_tour_has_every_part_the_readme_promises() -> None:
    blocks = tour()
    assert [language for language, _ in blocks] == ["sh", "python", "python"]
    shell, sync, asyncio = (code for _, code in blocks)
    for command in ("shardq demo", "shardq query", "shardq explain", " -p ", "shardq batch"):
        assert command in shell
    assert "shardq.connect(" in sync
    assert "execute_concurrent" in sync
    assert "shardq.AsyncConnection(" in asyncio
    assert "%s" not in shell + sync + asyncio  # the demo's SQLite shards take ?


def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    (shell_language, shell), *python = tour()
    assert shell_language == "sh"
    marker = "__shardq_tour_cwd__"
    script = f"set -euo pipefail\nset -x\n{shell}\necho {marker}$PWD\n"
    ran = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    out, err = ran.stdout, ran.stderr
    assert "Traceback" not in err
    assert "error" not in err.replace("+ ", "").lower().replace("--continue-on-error", "")
    lines = out.splitlines()
    folder = Path(lines[-1].removeprefix(marker))
    assert folder == tmp_path / "shardq-demo"
    # what each command shows: countries, customer 42's orders, two plans, a CSV, a batch
    assert "(8 rows)" in out
    assert "Single-shard query on s" in out
    assert "Distributed query on 4 of 4 shards" in out
    csv_at = lines.index("id,amount")
    assert len(lines[csv_at + 1 : csv_at + 4]) == 3
    amounts = [float(line.split(",")[1]) for line in lines[csv_at + 1 : csv_at + 4]]
    assert amounts == sorted(amounts, reverse=True)
    assert all(a > 990 for a in amounts)
    assert '"rows": [["customer 7"]]' in out
    assert "2 statements, 2 ok, 0 failed" in err

    for index, (language, code) in enumerate(python):
        assert language == "python"
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", code],
            cwd=folder,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"python block {index}:\n{code}\n{result.stderr}"
        assert result.stdout.strip(), f"python block {index} printed nothing"
        assert result.stderr == ""


def test_the_sqlalchemy_examples_run_as_written(tmp_path: Path) -> None:
    blocks = tour("SQLAlchemy and pandas")
    assert [language for language, _ in blocks] == ["python", "python"]
    made = subprocess.run(
        ["shardq", "demo"], cwd=tmp_path, env=_environment(), capture_output=True, timeout=300
    )
    assert made.returncode == 0, made.stderr
    for index, (_, code) in enumerate(blocks):
        # -W error: pandas warns when it is given a DB-API connection rather than an engine
        result = subprocess.run(
            [sys.executable, "-W", "error", "-c", code],
            cwd=tmp_path / "shardq-demo",
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"python block {index}:\n{code}\n{result.stderr}"
        assert result.stderr == ""
        assert result.stdout.strip()
    first, second = (code for _, code in blocks)
    assert "pd.read_sql(" in first
    assert ".to_sql(" in first
    assert "Session(engine)" in second


@pytest.mark.parametrize("section", ["Python: sync (PEP 249)", "Python: asyncio"])
def test_the_postgres_examples_say_they_are(section: str) -> None:
    text = README.read_text(encoding="utf-8")
    body = text[text.index(f"\n## {section}\n") :]
    assert "On PostgreSQL shards" in body[: body.index("```")]


@pytest.fixture
def open_workdir() -> Iterator[Path]:
    """An empty folder every user may enter: as root, the demo's servers run as another user.

    Every demo server still running in it at the end is stopped by its pid, and fails the test.
    """
    path = Path(tempfile.mkdtemp(prefix="shardq-readme-pg-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        left = demo_postgres.stop(path / "shardq-demo-pg")
        shutil.rmtree(path)
        assert left == [], f"demo servers left running: {left}"


def test_the_postgres_demo_runs_as_written(open_workdir: Path) -> None:
    [(language, shell)] = tour("The demo on PostgreSQL")
    assert language == "sh"
    assert shell.rstrip().splitlines()[-1].startswith("shardq demo --postgres --stop")
    ran = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nset -x\n{shell}"],
        cwd=open_workdir,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    out = ran.stdout
    table = out[: out.index("Distributed query")].rstrip().splitlines()  # customer 42's orders
    assert [cell.strip() for cell in table[0].split("|")] == ["id", "amount"]
    count = re.fullmatch(r"\((\d+) rows?\)", table[-1])
    assert count is not None
    assert len(table) == 3 + int(count.group(1))  # header, rule, rows, count
    assert "Distributed query on 4 of 4 shards" in out
    assert out.splitlines()[-1].startswith("Stopped 4 PostgreSQL servers of shardq-demo-pg")
