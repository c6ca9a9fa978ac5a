"""shardq.tracing without a server: no-op when not configured, nothing when not installed.

The spans of real statements are checked in ``tests/integration/test_tracing.py``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import shardq
from shardq import tracing
from shardq.errors import QueryTimeoutError, shard_error
from shardq.sql.route import ALL

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


class _Pool:
    name = "s0"
    server = ("db.internal", 5432)


def test_hooks_outside_a_statement_record_nothing(exporter: InMemorySpanExporter) -> None:
    """A scatter run outside a cursor's statement (no statement span) makes no orphan span."""
    tracing.query("SELECT 1")
    tracing.cache_hit(True)
    tracing.started(ALL, ("s0", "s1"), 1)
    with tracing.shard_span(_Pool()):
        pass
    assert exporter.get_finished_spans() == ()


def test_a_user_span_is_left_alone(exporter: InMemorySpanExporter) -> None:
    """The hooks annotate shardq's statement span only, never whatever span is current."""
    tracer = trace.get_tracer("app", tracer_provider=TracerProvider())
    with tracer.start_as_current_span("request") as request:
        tracing.query("SELECT name FROM items WHERE id = 7")
        tracing.started(ALL, ("s0",), 1)
    assert not request.attributes  # type: ignore[attr-defined]


async def test_not_configured_is_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The global API with no SDK configured: statements run, and no statement is traced."""
    tracing.set_tracer_provider(None)  # the global API's tracer, as an application gets it
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    seen: list[object] = []
    started = tracing.started

    def probe(*args: Any) -> None:  # the engine's hook, called as a statement starts
        seen.append(tracing._current.get())
        started(*args)

    monkeypatch.setattr(tracing, "started", probe)
    for i in range(2):  # shardq opens shard files, never creates them
        sqlite3.connect(tmp_path / f"s{i}.db").close()
    config = {
        "dialect": "sqlite",
        "shards": [{"name": f"s{i}", "dsn": str(tmp_path / f"s{i}.db")} for i in range(2)],
        "tables": {"t": {"shard_key": "id"}},
    }
    async with shardq.AsyncConnection(config) as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        await conn.execute("INSERT INTO t VALUES (?)", [1])
        cur = await conn.execute("SELECT id FROM t WHERE id = ?", [1])
        assert await cur.fetchall() == [(1,)]
    # Every start saw no statement being traced: the hooks did nothing.
    assert seen
    assert all(statement is None for statement in seen)


@pytest.mark.parametrize(
    ("sql", "dialect", "text"),
    [
        (
            "SELECT * FROM items WHERE id = 42 AND name = 'Ann' AND k = %(key)s",
            "postgres",
            "SELECT * FROM items WHERE id = ? AND name = ? AND k = %(key)s",
        ),
        ("SELECT $$secret$$, E'x\\'y', 1.5e3", "postgres", "SELECT ?, ?, ?"),
        ("SELECT x'00ff', -7 FROM t WHERE a = ?", "sqlite", "SELECT ?, -? FROM t WHERE a = ?"),
        ("SELECT a FROM t LIMIT :n", "sqlite", "SELECT a FROM t LIMIT :n"),
    ],
)
def test_literals_never_reach_the_query_text(sql: str, dialect: str, text: str) -> None:
    sanitized = tracing.sanitize(sql, dialect)
    assert sanitized is not None
    assert sanitized[0] == text


@pytest.mark.parametrize(
    ("sql", "operation", "table"),
    [
        ("select * from public.items i where id = 1", "SELECT", "public.items"),
        ("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT", None),
        ("SELECT * FROM a, b", "SELECT", None),
        ("SELECT (SELECT max(id) FROM b) FROM a", "SELECT", "a"),
        ("WITH w AS (SELECT 1) SELECT * FROM w", "SELECT", "w"),
        ("DELETE FROM items WHERE id = 1", "DELETE", "items"),
        ("INSERT INTO items SELECT * FROM staging", "INSERT", "items"),
        ("CREATE INDEX i ON items (id)", "CREATE", None),
    ],
)
def test_operation_and_table(sql: str, operation: str, table: str | None) -> None:
    sanitized = tracing.sanitize(sql, "postgres")
    assert sanitized is not None
    assert sanitized[1:] == (operation, table)


def test_a_server_message_is_not_a_span_description() -> None:
    """A server's message may quote a value: a SQLSTATE error is described without it."""
    error = shard_error("s2", "duplicate key value: Key (id)=(4242) already exists", "23505")
    described = tracing._describe(error)
    assert "4242" not in described
    assert "'s2'" in described
    assert "23505" in described
    assert "timed out" in tracing._describe(QueryTimeoutError(1.0, ("s1",)))


# Runs with opentelemetry unimportable, as if never installed; prints what it saw.
NOT_INSTALLED = """
import asyncio, json, sqlite3, sys, tempfile
sys.modules["opentelemetry"] = None
import shardq
from shardq import tracing
from shardq.aio import AsyncCursor

seen = {"wrapped": hasattr(AsyncCursor.execute, "__wrapped__")}
try:
    tracing.set_tracer_provider(None)
except shardq.MissingDependencyError as exc:
    seen["set_provider"] = str(exc)

folder = tempfile.mkdtemp()
for i in range(2):
    sqlite3.connect(f"{folder}/s{i}.db").close()
config = {
    "dialect": "sqlite",
    "shards": [{"name": f"s{i}", "dsn": f"{folder}/s{i}.db"} for i in range(2)],
    "tables": {"t": {"shard_key": "id"}},
}

async def main():
    async with shardq.AsyncConnection(config) as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        await conn.execute("INSERT INTO t VALUES (?)", [5])
        cur = await conn.execute("SELECT id FROM t")
        return await cur.fetchall()

seen["rows"] = asyncio.run(main())
seen["otel_loaded"] = [m for m in sys.modules if m.startswith("opentelemetry.")]
print(json.dumps(seen))
"""


def test_not_installed_leaves_execute_undecorated() -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NOT_INSTALLED)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    seen: dict[str, Any] = json.loads(out)
    assert seen["wrapped"] is False
    assert "pip install 'shardq[otel]'" in seen["set_provider"]
    assert seen["rows"] == [[5]]
    assert seen["otel_loaded"] == []


def test_execute_is_decorated_when_installed() -> None:
    assert hasattr(shardq.AsyncCursor.execute, "__wrapped__")
