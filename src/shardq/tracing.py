"""OpenTelemetry spans: one per statement, a child per shard it runs on.

Optional: with ``opentelemetry-api`` installed (``pip install
'shardq[otel]'``), shardq asks the global API for its tracer
(``get_tracer("shardq", __version__)``) and the application's
``TracerProvider`` decides whether spans are recorded, as for any
instrumented library. Without the package the import below fails once, every
hook is a no-op and :func:`statement_span` returns the method it decorates
unchanged: a statement pays nothing. With the package and no SDK, a
statement pays for one non-recording span (measured in the README).

The spans:

- ``AsyncCursor.execute`` (the sync ``Cursor.execute`` runs it): one
  INTERNAL span named after the operation (``SELECT``, or ``SELECT items``
  when the statement reads or writes one table), with ``db.system`` (and
  ``db.system.name``), ``db.query.text``, ``db.operation.name``,
  ``db.collection.name``, ``db.response.returned_rows`` when the rows are
  already counted (a result read whole; a streamed one is counted by its
  reader, after the span), and shardq's own: ``shardq.plan`` (``routed``,
  ``multi-shard``, ``scatter``, ``reference``), ``shardq.shard_count``,
  ``shardq.shards``, ``shardq.statement_id`` (the ``statement_id`` of the
  ``shardq.engine`` log records) and ``shardq.cache.hit`` (when a cache
  region was asked). The span covers planning and the start on the shards,
  to the first answer of each; the rows of a streamed result come after it.
- under it, a CLIENT span per shard the statement starts on
  (``shardq.shard NAME``), with ``shardq.shard``, ``shardq.statement_id``
  and, for PostgreSQL, ``server.address``, ``server.port`` and
  ``shardq.host`` (``host:port``). A shard's failure or timeout sets its
  span's status to ERROR; a shard cancelled because another failed gets
  ``shardq.cancelled`` and no error of its own. The shard spans run in the
  scatter's tasks: a task copies the context of the code that creates it, so
  the statement span, current there, is their parent.
- ``shardq.batch`` for a whole ``execute_concurrent`` (and ``executemany``):
  one span, not one per statement, with ``shardq.batch.statements``,
  ``shardq.batch.failed`` and ``shardq.batch.concurrency``. A batch of a
  million lookups would otherwise emit a million spans, and its quick path
  runs each lookup with no task and no plan object precisely to be cheap.
- ``shardq.commit`` for a commit over several shards or one, with
  ``shardq.participants``, ``shardq.written`` and ``shardq.two_phase``.

What never goes into a span: a DSN, a password, a parameter value. The
query text is the statement's as written, with its literals replaced by
``?`` (the OpenTelemetry conventions' sanitization); a server's error
message may quote a value (``Key (id)=(42) already exists``), so a shard
error carrying a SQLSTATE is described by its class, shard and SQLSTATE,
and the exception events are given that description and a traceback without
the message.

No ``tracing = false`` configuration key: a library's spans are switched off
where the application configures OpenTelemetry (a sampler, or no SDK), and
:func:`set_tracer_provider` takes a provider for shardq alone (a
``NoOpTracerProvider`` silences it).
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlglot import TokenType
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import SqlglotError

from shardq.errors import MissingDependencyError, QueryTimeoutError, ShardError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from opentelemetry.trace import Span, Tracer, TracerProvider

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
except ImportError:  # the no-op path: see the module docstring
    _trace = None  # type: ignore[assignment]

__all__ = [
    "batch_span",
    "cache_hit",
    "commit_span",
    "query",
    "sanitize",
    "set_tracer_provider",
    "shard_span",
    "started",
    "statement_span",
]

_OPERATIONS = frozenset(
    {TokenType.SELECT, TokenType.INSERT, TokenType.UPDATE, TokenType.DELETE, TokenType.MERGE}
)
_SCHEMA = frozenset({TokenType.CREATE, TokenType.ALTER, TokenType.DROP, TokenType.TRUNCATE})
_P = ParamSpec("_P")
_T = TypeVar("_T")

#: db.system of each dialect (the OpenTelemetry database conventions' names).
_SYSTEMS = {"postgres": "postgresql", "sqlite": "sqlite"}


_tracer: Tracer | None = None  # None: not looked up yet, or no opentelemetry-api


def _get_tracer() -> Tracer | None:
    """shardq's tracer, from the global API the first time (``shardq`` is imported by then)."""
    global _tracer
    if _tracer is None and _trace is not None:
        from shardq import __version__

        _tracer = _trace.get_tracer("shardq", __version__)
    return _tracer


def set_tracer_provider(provider: TracerProvider | None) -> None:
    """Take shardq's spans from ``provider`` instead of the global one (None: the global again).

    For tests, which cannot set the global provider more than once per
    process, and for an application that wants shardq's spans apart (or
    none: ``NoOpTracerProvider()``).

    Raises:
        MissingDependencyError: opentelemetry-api is not installed.
    """
    global _tracer
    if _trace is None:
        raise MissingDependencyError("opentelemetry", "otel", "shardq.tracing")
    if provider is None:
        _tracer = None
    else:
        from shardq import __version__

        _tracer = provider.get_tracer("shardq", __version__)


class _Statement:
    """The statement being traced in this context: its span and its latest start."""

    __slots__ = ("dialect", "missed", "span", "statement_id")

    def __init__(self, span: Span, dialect: str):
        self.span = span
        self.dialect = dialect
        self.statement_id: int | None = None
        self.missed = False  # the result cache was asked, and computed the result


_current: ContextVar[_Statement | None] = ContextVar("shardq_statement", default=None)


@functools.cache
def _system(dialect: str) -> dict[str, str]:
    """The db.system attributes of ``dialect`` (copied by whoever adds to them)."""
    system = _SYSTEMS.get(dialect, dialect)
    return {"db.system": system, "db.system.name": system}


def _describe(exc: BaseException) -> str:
    """What a span says of ``exc``: never a server's message, which may quote a value."""
    name = type(exc).__name__
    if isinstance(exc, ShardError) and exc.sqlstate is not None:
        return f"shard {exc.shard!r}: {name} (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, TimeoutError) and not isinstance(exc, QueryTimeoutError):
        return f"{name}: timed out"
    return f"{name}: {exc}"


def _record(span: Span, exc: BaseException, description: str | None = None) -> None:
    """Record ``exc`` on ``span`` and set its status to ERROR, under ``description``."""
    description = description or _describe(exc)
    span.record_exception(
        exc,
        attributes={
            "exception.message": description,
            "exception.stacktrace": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )
    span.set_attribute("error.type", type(exc).__qualname__)
    if isinstance(exc, ShardError):
        span.set_attribute("shardq.failed_shard", exc.shard)
        if exc.sqlstate is not None:
            span.set_attribute("db.response.status_code", exc.sqlstate)
    elif isinstance(exc, QueryTimeoutError) and exc.shards:
        span.set_attribute("shardq.timed_out_shards", list(exc.shards))
    assert _trace is not None
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, description))


def statement_span(
    method: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Awaitable[_T]]:
    """Decorate ``AsyncCursor.execute``: its call is the statement's span.

    The cursor (first argument) gives the dialect, and its ``rowcount`` and
    ``description`` after the call the rows returned, when counted already.
    """
    if _trace is None:
        return method
    trace = _trace

    @functools.wraps(method)
    async def traced(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        tracer = _tracer or _get_tracer()
        assert tracer is not None
        cursor: Any = args[0]
        dialect = cursor.connection.config.dialect
        span = tracer.start_span(
            "shardq.execute", kind=trace.SpanKind.INTERNAL, attributes=_system(dialect)
        )
        if not span.is_recording() and not span.get_span_context().is_valid:
            return await method(*args, **kwargs)  # no SDK: nothing to record or propagate
        token = _context.attach(trace.set_span_in_context(span))
        own = _current.set(_Statement(span, dialect) if span.is_recording() else None)
        try:
            result = await method(*args, **kwargs)
        except Exception as exc:
            if span.is_recording():
                _record(span, exc)
            raise
        else:
            if span.is_recording() and cursor.rowcount >= 0:
                if cursor.description is not None:
                    span.set_attribute("db.response.returned_rows", cursor.rowcount)
                else:
                    span.set_attribute("shardq.rowcount", cursor.rowcount)
            return result
        finally:
            _current.reset(own)
            _context.detach(token)
            span.end()

    return traced


@functools.lru_cache(maxsize=256)
def sanitize(sql: str, dialect: str) -> tuple[str, str | None, str | None] | None:
    """``sql`` with its literals replaced by ``?``, its operation and its one table.

    None when sqlglot cannot tokenize it. The table is given for a write and
    for a read of one table with no join, else None (the conventions'
    ``db.collection.name`` names a single collection or none).

    >>> sanitize("SELECT name FROM items WHERE id = 42 AND tag = 'a'", "postgres")
    ('SELECT name FROM items WHERE id = ? AND tag = ?', 'SELECT', 'items')
    >>> sanitize("INSERT INTO items (id) VALUES (%s)", "postgres")[1:]
    ('INSERT', 'items')
    >>> sanitize("WITH t AS (SELECT 1) SELECT * FROM t JOIN u ON true", "postgres")[1:]
    ('SELECT', None)
    >>> sanitize('UPDATE "Items" SET price = 1.5 WHERE id = ?', "sqlite")
    ('UPDATE "Items" SET price = ? WHERE id = ?', 'UPDATE', 'Items')
    """
    try:
        tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    except SqlglotError:
        return None
    literal = {
        TokenType.STRING, TokenType.NUMBER, TokenType.BIT_STRING, TokenType.HEX_STRING,
        TokenType.BYTE_STRING, TokenType.NATIONAL_STRING, TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING, TokenType.UNICODE_STRING,
    }  # fmt: skip
    pieces, last = [], 0
    operation: str | None = None
    table: list[str] = []  # the parts of its dotted name
    depth = 0
    expect: str | None = None  # "name" after FROM, INTO or UPDATE; "dot" after a part
    several = False
    for token in tokens:
        kind = token.token_type
        if kind in literal:
            pieces += [sql[last : token.start], "?"]
            last = token.end + 1
        if kind is TokenType.L_PAREN:
            depth += 1
        elif kind is TokenType.R_PAREN:
            depth -= 1
        if depth:
            continue
        if operation is None:
            if kind in _OPERATIONS:
                operation = token.text.upper()
                expect = "name" if kind is TokenType.UPDATE else None
            continue
        if expect == "name" and kind in (TokenType.VAR, TokenType.IDENTIFIER):
            table.append(token.text)
            expect = "dot"
        elif (expect == "dot" and kind is TokenType.DOT) or (
            kind in (TokenType.FROM, TokenType.INTO) and not table
        ):
            expect = "name"
        else:
            expect = None
            several = several or (kind in (TokenType.JOIN, TokenType.COMMA) and bool(table))
    pieces.append(sql[last:])
    if operation is None and tokens and tokens[0].token_type in _SCHEMA:
        operation = tokens[0].text.upper()  # CREATE, ALTER, DROP, TRUNCATE
    name = ".".join(table) if table and not (several and operation == "SELECT") else None
    return "".join(pieces), operation, name


def query(sql: str) -> None:
    """Name the current statement's span after ``sql``; set its sanitized text."""
    statement = _current.get()
    if statement is None:
        return
    sanitized = sanitize(sql, statement.dialect)
    if sanitized is None:
        return
    text, operation, table = sanitized
    span = statement.span
    # "db.statement", "db.operation": the conventions' names before 1.25.
    attributes: dict[str, Any] = {"db.query.text": text, "db.statement": text}
    if operation is not None:
        attributes["db.operation.name"] = attributes["db.operation"] = operation
        if table is not None:
            attributes["db.collection.name"] = table
        span.update_name(operation if table is None else f"{operation} {table}")
    span.set_attributes(attributes)


def cache_hit(hit: bool) -> None:
    """Say whether the result cache served the current statement; a miss said first stays."""
    statement = _current.get()
    if statement is not None and not statement.missed:
        statement.missed = not hit
        statement.span.set_attribute("shardq.cache.hit", hit)


def started(route: Any, shards: Sequence[str], statement_id: int) -> None:
    """The engine starts a plan (its ``route``) on ``shards``, as ``statement_id`` of the logs.

    A statement started more than once (its subqueries first) keeps the
    last: the statement's own.
    """
    statement = _current.get()
    if statement is None:
        return
    statement.statement_id = statement_id
    kind = route.kind.value
    plan = (
        "scatter" if kind == "all"
        else "reference" if kind == "any"
        else "routed" if len(shards) == 1
        else "multi-shard"
    )  # fmt: skip
    statement.span.set_attributes(
        {
            "shardq.plan": plan,
            "shardq.shard_count": len(shards),
            "shardq.shards": list(shards),
            "shardq.statement_id": statement_id,
        }
    )


@contextlib.contextmanager
def _shard(statement: _Statement, pool: Any) -> Iterator[None]:
    tracer = _tracer or _get_tracer()
    assert _trace is not None
    assert tracer is not None
    shard = pool.name
    attributes: dict[str, Any] = {**_system(statement.dialect), "shardq.shard": shard}
    if statement.statement_id is not None:
        attributes["shardq.statement_id"] = statement.statement_id
    server = getattr(pool, "server", None)
    if server is not None:
        host, port = server
        attributes["server.address"] = host
        attributes["server.port"] = port
        attributes["shardq.host"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    span = tracer.start_span(
        f"shardq.shard {shard}", kind=_trace.SpanKind.CLIENT, attributes=attributes
    )
    token = _context.attach(_trace.set_span_in_context(span))
    try:
        yield
    except Exception as exc:
        described = _describe(exc)
        _record(
            span, exc, described if isinstance(exc, ShardError) else f"shard {shard!r}: {described}"
        )
        raise
    except BaseException as exc:  # cancelled: another shard failed, or the caller gave up
        span.set_attribute("shardq.cancelled", True)
        span.add_event("cancelled", {"exception.type": type(exc).__qualname__})
        raise
    finally:
        _context.detach(token)
        span.end()


_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


def shard_span(pool: Any) -> contextlib.AbstractContextManager[None]:
    """The span of the current statement on ``pool``'s shard (nothing outside a statement)."""
    statement = _current.get()
    if statement is None:
        return _NOTHING
    return _shard(statement, pool)


class _Batch:
    """The span of a batch, counting its statements as their results are taken."""

    __slots__ = ("failed", "span", "statements")

    def __init__(self, span: Span | None):
        self.span = span
        self.statements = 0
        self.failed = 0

    def count(self, success: bool) -> None:
        self.statements += 1
        if not success:
            self.failed += 1


@contextlib.contextmanager
def batch_span(dialect: str, concurrency: int) -> Iterator[_Batch]:
    """The span of one batch (see the module docstring).

    It is not made current: it lives in an async generator, which may be
    closed from another context than the one it started in.
    """
    tracer = _tracer or _get_tracer()
    if tracer is None:
        yield _Batch(None)
        return
    assert _trace is not None
    span = tracer.start_span(
        "shardq.batch",
        kind=_trace.SpanKind.INTERNAL,
        attributes={**_system(dialect), "shardq.batch.concurrency": concurrency},
    )
    batch = _Batch(span)
    try:
        yield batch
    except Exception as exc:
        if span.is_recording():
            _record(span, exc)
        raise
    finally:
        span.set_attribute("shardq.batch.statements", batch.statements)
        span.set_attribute("shardq.batch.failed", batch.failed)
        span.end()


@contextlib.contextmanager
def commit_span(dialect: str, participants: int, written: int, two_phase: bool) -> Iterator[None]:
    """The span of a transaction's commit (made current: a driver's own spans go under it)."""
    tracer = _tracer or _get_tracer()
    if tracer is None:
        yield
        return
    assert _trace is not None
    span = tracer.start_span(
        "shardq.commit",
        kind=_trace.SpanKind.INTERNAL,
        attributes={
            **_system(dialect),
            "shardq.participants": participants,
            "shardq.written": written,
            "shardq.two_phase": two_phase,
        },
    )
    token = _context.attach(_trace.set_span_in_context(span))
    try:
        yield
    except Exception as exc:
        if span.is_recording():
            _record(span, exc)
        raise
    finally:
        _context.detach(token)
        span.end()
