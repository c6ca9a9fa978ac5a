"""OpenTelemetry spans on real shards: a statement's span, one child per shard it touched.

The spans go to the SDK's in-memory exporter through a provider given to
shardq alone (:func:`shardq.tracing.set_tracer_provider`): the global
provider can be set once per process, and no other test should see these.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import shardq
from shardq import tracing
from tests.fixtures.shards import ITEMS, TABLES, pg_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.fixtures.servers import PgCluster


class Spans:
    """What the exporter received, with the lookups the tests need."""

    def __init__(self, exporter: InMemorySpanExporter, provider: TracerProvider):
        self.exporter = exporter
        self.provider = provider

    def all(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def clear(self) -> None:
        self.exporter.clear()

    def statement(self) -> ReadableSpan:
        """The one statement span (whichever its name) among those finished."""
        found = [s for s in self.all() if s.attributes and "shardq.shard" not in s.attributes]
        found = [s for s in found if s.name not in ("shardq.batch", "shardq.commit", "request")]
        assert len(found) == 1, [s.name for s in self.all()]
        return found[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        assert parent.context is not None
        return [
            s
            for s in self.all()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]

    def shard_children(self, parent: ReadableSpan) -> dict[str, ReadableSpan]:
        shards = [
            s for s in self.children(parent) if s.attributes and "shardq.shard" in s.attributes
        ]
        by_name = {str(s.attributes["shardq.shard"]): s for s in shards if s.attributes}
        assert len(by_name) == len(shards), "two spans for one shard"
        return by_name

    def assert_clean(self, *secrets: str) -> None:
        """No secret (a password, a DSN, a parameter value) in any attribute or event."""
        texts: list[str] = []
        for span in self.all():
            texts.append(span.name)
            texts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
            texts.append(span.status.description or "")
            for event in span.events:
                texts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
        for secret in secrets:
            leaks = [text for text in texts if secret in text]
            assert not leaks, f"{secret!r} in {leaks}"


@pytest.fixture
def spans() -> Iterator[Spans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        yield Spans(exporter, provider)
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


#: A parameter value (10 characters long) that must not be found in any span.
SECRET = "ten-chars!"


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def passwords(clusters: list[PgCluster]) -> list[str]:
    return [c.password for c in clusters] + [c.dsn("contract") for c in clusters]


# -- PostgreSQL


@pytest.mark.postgres
async def test_routed_read_has_one_shard_child(pg_dataset: list[PgCluster], spans: Spans) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        cur = await conn.execute("SELECT val FROM items WHERE id = %s", [7])
        assert await cur.fetchall() == [(70,)]
        shard = conn.shard_for("items", 7)
    statement = spans.statement()
    assert statement.name == "SELECT items"
    assert statement.kind is SpanKind.INTERNAL
    top = attrs(statement)
    assert top["db.system"] == "postgresql"
    assert top["db.query.text"] == "SELECT val FROM items WHERE id = %s"
    assert top["db.operation.name"] == "SELECT"
    assert top["shardq.plan"] == "routed"
    assert top["shardq.shard_count"] == 1
    assert top["shardq.shards"] == (shard,)
    assert isinstance(top["shardq.statement_id"], int)
    children = spans.shard_children(statement)
    assert list(children) == [shard]
    child = children[shard]
    assert child.kind is SpanKind.CLIENT
    assert child.context is not None
    assert statement.context is not None
    assert child.context.trace_id == statement.context.trace_id
    cluster = pg_dataset[int(shard[1:])]
    assert attrs(child) == {
        "db.system": "postgresql",
        "db.system.name": "postgresql",
        "shardq.shard": shard,
        "shardq.statement_id": top["shardq.statement_id"],
        "server.address": cluster.host,
        "server.port": cluster.port,
        "shardq.host": f"{cluster.host}:{cluster.port}",
    }
    assert statement.status.status_code is StatusCode.UNSET
    spans.assert_clean(*passwords(pg_dataset))


@pytest.mark.postgres
async def test_scatter_has_a_child_per_shard_in_its_task(
    pg_dataset: list[PgCluster], spans: Spans
) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        cur = await conn.execute("SELECT grp, count(*) FROM items WHERE val > 5 GROUP BY grp")
        assert len(await cur.fetchall()) == 5
    statement = spans.statement()
    top = attrs(statement)
    assert top["shardq.plan"] == "scatter"
    assert top["shardq.shard_count"] == 4
    assert top["db.query.text"] == "SELECT grp, count(*) FROM items WHERE val > ? GROUP BY grp"
    children = spans.shard_children(statement)
    assert sorted(children) == ["s0", "s1", "s2", "s3"]
    for child in children.values():
        # Each started in a task of the scatter's TaskGroup: parented all the same.
        assert child.start_time is not None
        assert statement.start_time is not None
        assert statement.start_time <= child.start_time
        assert child.status.status_code is StatusCode.UNSET
        assert attrs(child)["shardq.statement_id"] == top["shardq.statement_id"]


@pytest.mark.postgres
async def test_a_failing_shard_is_named_and_both_spans_are_errors(
    pg_dataset: list[PgCluster], spans: Spans
) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        shard = conn.shard_for("items", 10)
        with pytest.raises(shardq.DataError) as raised:
            # Division by zero on the shard holding val = 100 only.
            await conn.execute("SELECT id, 1 / (val - length(%s) * 10) FROM items", [SECRET])
    assert isinstance(raised.value, shardq.ShardError)
    assert raised.value.shard == shard
    statement = spans.statement()
    assert statement.status.status_code is StatusCode.ERROR
    assert repr(shard) in (statement.status.description or "")
    assert attrs(statement)["shardq.failed_shard"] == shard
    assert attrs(statement)["db.response.status_code"] == "22012"
    children = spans.shard_children(statement)
    failed = children[shard]
    assert failed.status.status_code is StatusCode.ERROR
    assert repr(shard) in (failed.status.description or "")
    (event,) = [e for e in failed.events if e.name == "exception"]
    assert attrs_of(event)["exception.type"].endswith("ShardDataError")
    # The others either finished or were cancelled: no error of their own.
    for name, child in children.items():
        if name != shard:
            assert child.status.status_code is StatusCode.UNSET, name
    spans.assert_clean(*passwords(pg_dataset), SECRET)


def attrs_of(event: Any) -> dict[str, Any]:
    return dict(event.attributes or {})


@pytest.mark.postgres
async def test_a_stopped_shard_fails_its_span(pg_dataset: list[PgCluster], spans: Spans) -> None:
    with socket.socket() as sock:  # a port nothing listens on: a stopped server
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    config = pg_config(pg_dataset)
    down = pg_dataset[2]
    config["shards"][2]["dsn"] = f"postgresql://shardq:{down.password}@127.0.0.1:{closed}/contract"
    async with shardq.AsyncConnection(config) as conn:
        with pytest.raises(shardq.OperationalError):
            await conn.execute("SELECT count(*) FROM items")
    statement = spans.statement()
    assert statement.status.status_code is StatusCode.ERROR
    assert "'s2'" in (statement.status.description or "")
    child = spans.shard_children(statement)["s2"]
    assert child.status.status_code is StatusCode.ERROR
    assert attrs(child)["server.port"] == closed
    spans.assert_clean(*passwords(pg_dataset), down.password)


@pytest.mark.postgres
async def test_a_shard_that_times_out_is_the_error(
    pg_dataset: list[PgCluster], spans: Spans
) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        slow = conn.shard_for("items", 10)
        with pytest.raises(shardq.QueryTimeoutError):
            await conn.execute(
                "SELECT id, pg_sleep(CASE WHEN id = 10 THEN 5 ELSE 0 END) FROM items",
                timeout=0.5,
            )
    statement = spans.statement()
    assert statement.status.status_code is StatusCode.ERROR
    assert attrs(statement)["shardq.timed_out_shards"] == (slow,)
    children = spans.shard_children(statement)
    assert children[slow].status.status_code is StatusCode.ERROR
    assert "timed out" in (children[slow].status.description or "")
    assert all(
        child.status.status_code is StatusCode.UNSET
        for name, child in children.items()
        if name != slow
    )


@pytest.mark.postgres
def test_sync_api_spans_nest_under_the_callers_span(
    pg_dataset: list[PgCluster], spans: Spans
) -> None:
    """The portal's loop thread runs the call in the caller's context (contextvars)."""
    tracer = spans.provider.get_tracer("test")
    with shardq.connect(pg_config(pg_dataset)) as conn:
        cur = conn.cursor()
        with tracer.start_as_current_span("request") as request:
            cur.execute("SELECT label FROM kinds WHERE code = %s", ["b"])
            assert cur.fetchall() == [("beta",)]
    statement = spans.statement()
    assert statement.parent is not None
    assert statement.parent.span_id == request.get_span_context().span_id
    assert attrs(statement)["shardq.plan"] == "reference"
    assert len(spans.shard_children(statement)) == 1


@pytest.mark.postgres
async def test_cache_hit_is_an_attribute(pg_dataset: list[PgCluster], spans: Spans) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset), cache=True) as conn:
        sql = "SELECT count(*) FROM items WHERE grp = %s"
        await conn.execute(sql, ["g2"])
        miss = spans.statement()
        assert len(spans.shard_children(miss)) == 4  # computed on every shard
        spans.clear()
        cur = await conn.execute(sql, ["g2"])
        assert await cur.fetchall() == [(sum(1 for row in ITEMS if row[1] == "g2"),)]
        hit = spans.statement()
    assert attrs(miss)["shardq.cache.hit"] is False
    assert attrs(hit)["shardq.cache.hit"] is True
    assert attrs(hit)["db.response.returned_rows"] == 1
    assert spans.children(hit) == []  # no shard touched


@pytest.mark.postgres
async def test_a_write_on_several_shards_commits_under_its_statement(
    pg_dataset: list[PgCluster], spans: Spans
) -> None:
    keys = list(range(9001, 9009))
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        try:
            values = ", ".join(f"({key}, 'n')" for key in keys)
            await conn.execute(f"INSERT INTO writes VALUES {values}")
            statement = spans.statement()
            written = {conn.shard_for("writes", key) for key in keys}
        finally:
            await conn.execute("DELETE FROM writes WHERE id >= 9001 AND id <= 9008")
    assert statement.name == "INSERT writes"
    assert attrs(statement)["shardq.rowcount"] == len(keys)
    assert "9001" not in attrs(statement)["db.query.text"]
    (commit,) = [s for s in spans.children(statement) if s.name == "shardq.commit"]
    assert attrs(commit)["shardq.two_phase"] is (len(written) > 1)
    assert attrs(commit)["shardq.written"] == len(written)
    assert attrs(commit)["shardq.participants"] == len(written)
    assert set(spans.shard_children(statement)) == written


@pytest.mark.postgres
async def test_a_batch_is_one_span(pg_dataset: list[PgCluster], spans: Spans) -> None:
    async with shardq.AsyncConnection(pg_config(pg_dataset)) as conn:
        results = await conn.execute_concurrent(
            [("SELECT val FROM items WHERE id = %s", [key]) for key in (1, 2, 3, 4, 5)]
            + [("SELECT val FROM nowhere WHERE id = %s", [1])],
            raise_on_first_error=False,
        )
    assert [r.success for r in results] == [True] * 5 + [False]
    (batch,) = spans.all()
    assert batch.name == "shardq.batch"
    assert attrs(batch)["shardq.batch.statements"] == 6
    assert attrs(batch)["shardq.batch.failed"] == 1
    assert batch.status.status_code is StatusCode.UNSET


# -- SQLite


def sqlite_config(paths: list[Path]) -> dict[str, Any]:
    return {
        "dialect": "sqlite",
        "shards": [{"name": f"s{i}", "dsn": str(p)} for i, p in enumerate(paths)],
        "tables": TABLES,
    }


async def test_sqlite_scatter_and_routed(sqlite_dataset: list[Path], spans: Spans) -> None:
    async with shardq.AsyncConnection(sqlite_config(sqlite_dataset)) as conn:
        cur = await conn.execute("SELECT count(*) FROM items")
        assert await cur.fetchall() == [(len(ITEMS),)]
        scatter = spans.statement()
        assert sorted(spans.shard_children(scatter)) == ["s0", "s1", "s2", "s3"]
        spans.clear()
        await conn.execute("SELECT val FROM items WHERE id = ?", [3])
        routed = spans.statement()
    assert attrs(scatter)["db.system"] == "sqlite"
    assert attrs(scatter)["shardq.plan"] == "scatter"
    assert attrs(routed)["shardq.plan"] == "routed"
    (child,) = spans.shard_children(routed).values()
    assert "server.address" not in attrs(child)  # a file, no server
    assert attrs(child)["db.system"] == "sqlite"


async def test_sqlite_shard_that_cannot_open_is_the_error(
    sqlite_dataset: list[Path], spans: Spans, tmp_path: Path
) -> None:
    config = sqlite_config(sqlite_dataset)
    config["shards"][1]["dsn"] = str(tmp_path / "missing" / "s1.db")
    async with shardq.AsyncConnection(config) as conn:
        with pytest.raises(shardq.ShardError) as raised:
            await conn.execute("SELECT count(*) FROM items")
    assert raised.value.shard == "s1"
    statement = spans.statement()
    assert statement.status.status_code is StatusCode.ERROR
    assert "'s1'" in (statement.status.description or "")
    children = spans.shard_children(statement)
    assert children["s1"].status.status_code is StatusCode.ERROR


@pytest.fixture
def global_provider() -> Iterator[InMemorySpanExporter]:
    """An SDK provider set globally, as an application sets it; the globals reset after.

    The reset is what opentelemetry's own tests do
    (``opentelemetry.test.globals_test.reset_trace_globals``).
    """
    from opentelemetry.util._once import Once

    def reset() -> None:
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None
        tracing.set_tracer_provider(None)  # shardq looks its tracer up again

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset()
    tracing._get_tracer()  # taken before the application configures OpenTelemetry
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        reset()
        provider.shutdown()


async def test_the_global_provider_decides(
    sqlite_dataset: list[Path], global_provider: InMemorySpanExporter
) -> None:
    """shardq's tracer comes from the global API: configured later, it records all the same."""
    async with shardq.AsyncConnection(sqlite_config(sqlite_dataset)) as conn:
        cur = await conn.execute("SELECT count(*) FROM items")
        assert await cur.fetchall() == [(len(ITEMS),)]
    names = sorted(span.name for span in global_provider.get_finished_spans())
    assert names == ["SELECT items"] + [f"shardq.shard s{i}" for i in range(4)]
    scopes = {span.instrumentation_scope for span in global_provider.get_finished_spans()}
    assert {(s.name, s.version) for s in scopes if s is not None} == {
        ("shardq", shardq.__version__)
    }
