"""``verify``: a query through shardq and on an unsharded copy, the answers compared.

A team moving data onto shards can check shardq, and their own migration, on
their own queries: :meth:`shardq.aio.AsyncConnection.verify` (and the sync
``Connection.verify``, and ``shardq verify``) runs the statement through
shardq, then on one database holding every row (``against``: a PostgreSQL DSN,
or a SQLite file for a SQLite configuration), and compares the answers as the
differential suite does (:mod:`shardq.compare`).

Whether the order is compared comes from the statement itself: the outermost
ORDER BY terms that name output columns (by name, alias, position or the
same expression) are the keys whose sequence must match; without an ORDER BY
the rows are compared as a multiset. The ``against`` DSN is shown redacted
and its passwords are scrubbed from every error (:mod:`shardq.dsn`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlglot import exp

from shardq.compare import Difference, DifferenceKind, compare_rows
from shardq.display import html_table, seconds_text
from shardq.dsn import Secrets, redact
from shardq.errors import OperationalError, ProgrammingError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shardq.aio import AsyncConnection

__all__ = ["Answer", "VerifyResult", "compare_answers", "order_keys", "run_single", "verify"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What one side returned: column names, type codes, rows and the time it took."""

    names: tuple[str, ...]
    types: tuple[Any, ...]
    rows: list[tuple[Any, ...]]
    seconds: float

    @classmethod
    def of(cls, description: Sequence[Sequence[Any]], rows: list[Any], seconds: float) -> Answer:
        return cls(
            tuple(c[0] for c in description),
            tuple(c[1] for c in description),
            [tuple(r) for r in rows],
            seconds,
        )


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :meth:`~shardq.aio.AsyncConnection.verify`.

    Attributes:
        ok: True when the answers are the same (no differences).
        differences: the first differences found, in order (at most ``limit``).
        shardq_rows: shardq's rows, as tuples.
        single_rows: the single database's rows.
        shardq_seconds: the time shardq took (run and fetch).
        single_seconds: the time the single database took.
        names: the columns (shardq's names).
        ordered: the ORDER BY keys whose order was compared, or None when the
            rows were compared as a multiset.
        how: how the answers were compared, for a person.
        shards: the shards the statement ran on.
        against: the single database, redacted.
    """

    sql: str
    differences: tuple[Difference, ...]
    shardq_rows: list[tuple[Any, ...]] = field(repr=False)
    single_rows: list[tuple[Any, ...]] = field(repr=False)
    shardq_seconds: float
    single_seconds: float
    names: tuple[str, ...]
    ordered: tuple[str, ...] | None
    how: str
    shards: tuple[str, ...]
    against: str

    @property
    def ok(self) -> bool:
        return not self.differences

    def __bool__(self) -> bool:
        return self.ok

    def _times(self) -> str:
        shards = f"{len(self.shards)} shard{'s' if len(self.shards) != 1 else ''}"
        return (
            f"shardq {seconds_text(self.shardq_seconds)} on {shards}, "
            f"single {seconds_text(self.single_seconds)} ({self.against})"
        )

    def __str__(self) -> str:
        if self.ok:
            return (
                f"same answer: {_count(len(self.shardq_rows), 'row')}, "
                f"{_count(len(self.names), 'column')}, "
                f"{self.how}; {self._times()}"
            )
        lines = [
            f"DIFFERS: {len(self.differences)} difference(s) shown, {self.how}; "
            f"shardq {len(self.shardq_rows)} rows, single {len(self.single_rows)} rows; "
            f"{self._times()}"
        ]
        lines += [f"  {d}" for d in self.differences]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        status = "same answer" if self.ok else "DIFFERS"
        color = "green" if self.ok else "#b00"
        parts = [
            f'<p><b style="color: {color}">{status}</b>: '
            f"{html.escape(self.how)}; {html.escape(self._times())}</p>"
        ]
        if self.differences:
            items = "".join(f"<li>{html.escape(str(d))}</li>" for d in self.differences)
            parts.append(f"<ul>{items}</ul>")
        parts.append(html_table(self.names, self.shardq_rows, caption="shardq's rows"))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``shardq verify --json``): values as their ``repr``."""
        return {
            "ok": self.ok,
            "ordered_by": list(self.ordered) if self.ordered is not None else None,
            "how": self.how,
            "shardq_rows": len(self.shardq_rows),
            "single_rows": len(self.single_rows),
            "shardq_seconds": self.shardq_seconds,
            "single_seconds": self.single_seconds,
            "shards": list(self.shards),
            "against": self.against,
            "differences": [
                {
                    "kind": d.kind.value,
                    "message": d.message,
                    "row": d.row,
                    "column": d.column,
                    "shardq": None if d.shardq is None else repr(d.shardq),
                    "single": None if d.single is None else repr(d.single),
                }
                for d in self.differences
            ],
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def order_keys(tree: exp.Expr, names: Sequence[str]) -> tuple[list[int] | None, bool, bool]:
    """The output columns the outermost ORDER BY sorts on, and whether LIMIT/OFFSET cut.

    Returns ``(keys, cut, cut_start)``: ``keys`` the indexes of the leading
    ORDER BY terms that are output columns (None without an ORDER BY, or when
    the first term is no output column: the order cannot be checked then);
    ``cut`` whether a LIMIT or OFFSET keeps only some rows, ``cut_start``
    whether an OFFSET does.

    >>> import sqlglot
    >>> order_keys(sqlglot.parse_one("SELECT a, b AS x FROM t ORDER BY x, 1 LIMIT 3"), ["a", "x"])
    ([1, 0], True, False)
    >>> order_keys(sqlglot.parse_one("SELECT a FROM t ORDER BY lower(b), a"), ["a"])
    (None, False, False)
    """
    order = tree.args.get("order")
    cut_start = tree.args.get("offset") is not None
    cut = tree.args.get("limit") is not None or cut_start
    if not isinstance(order, exp.Order):
        return None, cut, cut_start
    projections = tree.selects if isinstance(tree, exp.Select) else []
    keys: list[int] = []
    for term in order.expressions:
        index = _output_index(term.this, names, projections)
        if index is None:
            break
        keys.append(index)
    return (keys or None), cut, cut_start


def _output_index(
    term: exp.Expr, names: Sequence[str], projections: Sequence[exp.Expr]
) -> int | None:
    if isinstance(term, exp.Literal) and term.is_int:
        position = int(term.this) - 1
        return position if 0 <= position < len(names) else None
    if isinstance(term, exp.Column) and not term.table:
        matches = [i for i, n in enumerate(names) if n == term.name]
        if len(matches) == 1:
            return matches[0]
    text = term.sql()
    for i, projection in enumerate(projections):
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        if inner.sql() == text and i < len(names):
            return i
    return None


def compare_answers(
    got: Answer,
    want: Answer,
    tree: exp.Expr,
    *,
    limit: int = 10,
    type_name: Any = None,
) -> tuple[list[Difference], tuple[str, ...] | None, str]:
    """The differences between shardq's answer and the single database's.

    Returns the differences, the ORDER BY keys whose order was compared, and
    how the rows were compared, for a person.
    """
    found: list[Difference] = []
    if got.names != want.names:
        found.append(
            Difference(
                DifferenceKind.COLUMNS,
                f"columns: shardq {list(got.names)} vs single {list(want.names)}",
                shardq=got.names,
                single=want.names,
            )
        )
    for name, g, w in zip(got.names, got.types, want.types, strict=False):
        if g != w:
            shown_g, shown_w = (type_name(g), type_name(w)) if type_name else (g, w)
            found.append(
                Difference(
                    DifferenceKind.COLUMN_TYPE,
                    f"column {name!r} type: shardq {shown_g} vs single {shown_w}",
                    column=name,
                    shardq=g,
                    single=w,
                )
            )
    keys, cut, cut_start = order_keys(tree, want.names)
    found += compare_rows(
        got.names, got.rows, want.rows, order_keys=keys, cut=cut, cut_start=cut_start, limit=limit
    )
    ordered = None if keys is None else tuple(want.names[i] for i in keys)
    if ordered is not None:
        how = f"compared in the order of {', '.join(ordered)}"
    elif cut:
        how = "only the number of rows compared: a LIMIT without ORDER BY keeps any rows"
    elif isinstance(tree.args.get("order"), exp.Order):
        how = "compared as a multiset: the ORDER BY's first term is not an output column"
    else:
        how = "compared as a multiset (no ORDER BY)"
    return found[:limit], ordered, how


def postgres_type_name(oid: Any) -> str:
    """A PostgreSQL type OID as its name, where psycopg knows it (``23`` -> ``int4``)."""
    import psycopg

    info = psycopg.adapters.types.get(oid) if isinstance(oid, int) else None
    return f"{info.name} ({oid})" if info is not None else str(oid)


def shown_dsn(dialect: str, against: str) -> str:
    """``against`` as it may be shown: a PostgreSQL DSN redacted, a SQLite file as given."""
    return redact(against) if dialect == "postgres" else against


async def run_single(
    dialect: str, against: str, sql: str, params: Any, *, timeout: float | None = None
) -> Answer:
    """Run ``sql`` on the single database ``against`` (a PostgreSQL DSN or a SQLite file).

    ``timeout`` bounds the statement there too (PostgreSQL's ``statement_timeout``,
    SQLite's interrupt).

    Raises:
        OperationalError: it could not connect or the statement failed there;
            the message names the database redacted, never its password.
    """
    secrets = Secrets.of(against)
    shown = shown_dsn(dialect, against)
    try:
        if dialect == "postgres":
            return await _run_postgres(against, sql, params, timeout)
        return await asyncio.to_thread(_run_sqlite, _sqlite_path(against), sql, params, timeout)
    except ProgrammingError:
        raise
    except Exception as exc:
        message = secrets.scrub(f"{type(exc).__name__}: {exc}".strip())
        raise OperationalError(
            f"the single database {shown} could not answer: {message}"
        ) from None  # the driver's exception may carry the DSN


async def _run_postgres(dsn: str, sql: str, params: Any, timeout: float | None) -> Answer:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # A copy to compare with is read, never written: refuse a write rather than run it.
        await conn.execute("SET default_transaction_read_only = on")
        if timeout is not None:
            await conn.execute(f"SET statement_timeout = {max(1, round(timeout * 1000))}")
        start = time.perf_counter()
        cur = await conn.execute(sql, params)
        rows = await cur.fetchall() if cur.description is not None else []
        seconds = time.perf_counter() - start
        if cur.description is None:
            raise ProgrammingError("verify compares reads: the statement returned no rows")
        return Answer.of([(d.name, d.type_code) for d in cur.description], rows, seconds)


def _sqlite_path(against: str) -> str:
    """``sqlite:///path`` or a path, as the read-only URI sqlite3 opens.

    As SQLAlchemy spells it, ``sqlite:///`` is followed by the path: relative,
    or absolute with a fourth slash.

    >>> _sqlite_path("sqlite:////data/all rows.db"), _sqlite_path("sqlite:///copy.db")
    ('file:/data/all%20rows.db?mode=ro', 'file:copy.db?mode=ro')
    >>> _sqlite_path("/data/copy.db")
    'file:/data/copy.db?mode=ro'
    """
    path = against.removeprefix("sqlite:///").removeprefix("file:")
    return f"file:{quote(path)}?mode=ro"


def _run_sqlite(uri: str, sql: str, params: Any, timeout: float | None) -> Answer:
    import sqlite3  # not at import time: ``import shardq`` loads no driver

    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    if timeout is not None:
        deadline = time.monotonic() + timeout
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        start = time.perf_counter()
        cur = db.execute(sql, params or ())
        rows = cur.fetchall()
        seconds = time.perf_counter() - start
        if cur.description is None:
            raise ProgrammingError("verify compares reads: the statement returned no rows")
        return Answer.of([(d[0], d[1]) for d in cur.description], rows, seconds)
    finally:
        db.close()


async def verify(
    conn: AsyncConnection,
    sql: str,
    params: Any = None,
    *,
    against: str,
    limit: int = 10,
    timeout: float | None = None,
) -> VerifyResult:
    """Run ``sql`` through ``conn`` and on ``against``; compare (see the module docstring).

    Raises:
        ProgrammingError: the statement is a write (verify runs reads only), or refused.
        OperationalError: the single database could not answer (its DSN redacted).
    """
    from shardq.rows import tuple_row

    analysis = conn._engine.planner.analyze(sql)
    if analysis.kind.is_write:
        raise ProgrammingError(
            "verify compares reads: a write would change the shards and not the copy"
        )
    cursor = conn.cursor(row_factory=tuple_row)
    start = time.perf_counter()
    # Never from the result cache: verify checks what the shards answer now.
    await cursor.execute(sql, params, timeout=timeout, cache=False)
    rows = await cursor.fetchall()
    seconds = time.perf_counter() - start
    if cursor.description is None:
        raise ProgrammingError("verify compares reads: the statement returned no rows")
    got = Answer.of(cursor.description, rows, seconds)
    shards = cursor.shards
    await cursor.close()
    want = await run_single(conn.config.dialect, against, sql, params, timeout=timeout)
    type_name = postgres_type_name if conn.config.dialect == "postgres" else None
    differences, ordered, how = compare_answers(
        got, want, analysis.parsed.expression, limit=limit, type_name=type_name
    )
    return VerifyResult(
        sql=sql,
        differences=tuple(differences),
        shardq_rows=got.rows,
        single_rows=want.rows,
        shardq_seconds=got.seconds,
        single_seconds=want.seconds,
        names=got.names,
        ordered=ordered,
        how=how,
        shards=shards,
        against=shown_dsn(conn.config.dialect, against),
    )
