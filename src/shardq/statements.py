"""Statements as users give them: SQL text, or SQLAlchemy Core objects.

A SQLAlchemy statement (``select(orders).where(orders.c.id == 5)``) is
compiled for the shards' dialect, with its bound values kept as parameters
(never rendered into the text), so the planner routes it by its key like any
parameterised statement and the driver binds the values. SQLAlchemy is
imported only when such an object is given.

>>> as_statement("SELECT 1", "postgres")
('SELECT 1', None)
>>> as_statement(("SELECT %s", [1]), "postgres")
('SELECT %s', [1])
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.sql.elements import ClauseElement

    #: A statement as ``execute`` takes it: SQL text or a SQLAlchemy Core statement.
    SQL = str | ClauseElement

from shardq.errors import ProgrammingError

__all__ = ["as_statement", "compiler", "statement_text"]

Statement = tuple[str, Any]


def _is_sqlalchemy(obj: object) -> bool:
    module = sys.modules.get("sqlalchemy.sql.elements")
    return module is not None and isinstance(obj, module.ClauseElement)


def as_statement(item: object, dialect: str) -> Statement:
    """``item`` as ``(sql, params)``: text, a SQLAlchemy statement, or either with parameters.

    Raises:
        ProgrammingError: ``item`` is none of these.
    """
    if isinstance(item, str):
        return item, None
    if _is_sqlalchemy(item):
        bind: Callable[[object], Statement] = compiler(item, dialect)
        return bind(None)
    if isinstance(item, (tuple, list)) and 1 <= len(item) <= 2:
        statement, params = item[0], (item[1] if len(item) == 2 else None)
        if isinstance(statement, str):
            return statement, params
        if _is_sqlalchemy(statement):
            bind_params: Callable[[object], Statement] = compiler(statement, dialect)
            return bind_params(params)
    raise ProgrammingError(
        "a statement is SQL text, a SQLAlchemy statement, or a (statement, parameters) "
        f"pair; got {type(item).__name__}"
    )


def compiler(statement: Any, dialect: str) -> Any:
    """Compile a SQLAlchemy statement once; return ``params -> (sql, params)``.

    ``params`` (a mapping, or None) gives values for the statement's bound
    parameters by name, over those written in the statement, as in
    SQLAlchemy's ``connection.execute(statement, params)``.
    """
    compiled = _compile(statement, dialect)
    sql = str(compiled)
    positions = compiled.positiontup

    def bind(params: object) -> Statement:
        if params is not None and not isinstance(params, Mapping):
            raise ProgrammingError(
                "the parameters of a SQLAlchemy statement are a mapping of its bound "
                f"parameters' names to values; got {type(params).__name__}"
            )
        values = compiled.construct_params(params)
        if positions is not None:  # a positional paramstyle (SQLite's "?")
            return sql, tuple(values[name] for name in positions)
        return sql, dict(values) if values else None

    return bind


def _compile(statement: Any, dialect: str) -> Any:
    if not _is_sqlalchemy(statement):
        raise ProgrammingError(f"not a SQLAlchemy statement: {type(statement).__name__}")
    return statement.compile(dialect=_dialect(dialect), compile_kwargs={"render_postcompile": True})


def statement_text(statement: object, dialect: str) -> str:
    """The SQL text of a statement: text as it is, a SQLAlchemy statement compiled, unbound."""
    return statement if isinstance(statement, str) else str(_compile(statement, dialect))


def _dialect(name: str) -> Any:
    if name == "postgres":
        from sqlalchemy.dialects.postgresql import psycopg

        return psycopg.dialect()  # type: ignore[no-untyped-call]
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import pysqlite

        return pysqlite.dialect()
    raise ProgrammingError(f"no SQLAlchemy dialect for shardq's dialect {name!r}")


def is_many(statements: object) -> bool:
    """Whether ``statements`` is a list of statements rather than one (``execute([...])``)."""
    return isinstance(statements, Sequence) and not isinstance(statements, (str, bytes))
