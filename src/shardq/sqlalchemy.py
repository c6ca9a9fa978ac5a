"""SQLAlchemy dialects over shardq: ``shardq+postgresql://`` and ``shardq+sqlite://``.

``create_engine("shardq+sqlite:///shardq.toml")`` gives an engine whose
connections are :func:`shardq.connect` connections, so pandas, SQLAlchemy
Core and ORM sessions, and tools that take an engine see the shards as one
database. Each dialect is SQLAlchemy's own for the shards' database
(psycopg's PostgreSQL dialect, pysqlite's SQLite dialect) with shardq as its
DB-API module: SQL is compiled as for one database, and shardq plans it.

The URL names the configuration file as SQLite URLs name a database file:
``shardq+sqlite:///shardq.toml`` (three slashes) is relative to the working
directory, ``shardq+postgresql:////etc/shardq.toml`` (four) absolute. Or
``?config=/etc/shardq.toml``, or ``connect_args={"config": {...}}`` (a dict
or a :class:`shardq.Config`), or ``creator=lambda: shardq.connect(...)``.
``timeout``, ``fetch_size`` in the query string are passed to
:func:`shardq.connect`.

Transactions: SQLAlchemy begins one with each connection's first statement
and ends it with ``commit()`` or ``rollback()``: the shardq connection runs
with ``autocommit = False`` (two-phase commit when several shards are
written). ``isolation_level="AUTOCOMMIT"`` gives shardq's autocommit.
Savepoints (``Session.begin_nested()``) are the transaction's savepoints.

On PostgreSQL shards an ``executemany`` of a plain INSERT (``to_sql``'s)
is a COPY per shard when COPY stores what the INSERT would
(:meth:`ShardqPGDialect.do_executemany`, :mod:`shardq.insert_copy`); other
statements, and SQLite shards, use shardq's routed ``executemany``.

Reflection asks the system catalog of one shard (see
:func:`shardq.sql.analyze.table_refs`) and lists only the declared tables
and views: the others are not part of the sharded database.

Importing this module registers both dialects with SQLAlchemy (the package's
entry points do the same for an installed shardq).
"""

from __future__ import annotations

import sqlite3
import types
from typing import TYPE_CHECKING, Any

from sqlalchemy import pool, text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import reflection

import shardq
from shardq.errors import InterfaceError, NotSupportedError
from shardq.insert_copy import COLUMN_TYPES_SQL, CopyTarget, copy_agrees, copy_target

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sqlalchemy.engine import URL, Connection
    from sqlalchemy.engine.interfaces import DBAPIConnection, IsolationLevel

__all__ = ["ShardqPGDialect", "ShardqSQLiteDialect", "copy_rows"]

#: Keywords of :func:`shardq.connect` a URL's query string may give, and their types.
_CONNECT_OPTIONS = {"timeout": float, "fetch_size": int}


class _ShardqDialect:
    """What both dialects share: the URL, the connection, transactions, declared names."""

    driver = "shardq"
    #: The isolation level of a shardq transaction (the servers' default).
    _default_isolation: IsolationLevel

    # SQLAlchemy runs an executemany without RETURNING as one multi-row INSERT
    # per 1000 rows when this is set; shardq's executemany routes each row to
    # its key's shard instead, and a multi-row INSERT over several SQLite
    # shards is refused there.
    use_insertmanyvalues_wo_returning = False

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        query = dict(url.query)
        config = query.pop("config", None) or url.database or None
        options: dict[str, Any] = {}
        for name, value in query.items():
            if name not in _CONNECT_OPTIONS or not isinstance(value, str):
                raise InterfaceError(
                    f"unknown option {name!r} in a shardq URL; the query string takes config, "
                    + ", ".join(_CONNECT_OPTIONS)
                )
            options[name] = _CONNECT_OPTIONS[name](value)
        if config is not None:
            options["config"] = config
        return [], options

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        if "config" not in cparams:
            raise InterfaceError(
                "a shardq URL names its configuration: shardq+sqlite:///shardq.toml, "
                "?config=..., or connect_args={'config': ...}"
            )
        conn = shardq.connect(*cargs, **cparams)
        conn.autocommit = False  # SQLAlchemy commits or rolls back what it began
        return conn  # type: ignore[return-value]  # (DBAPIConnection: a Protocol of psycopg's)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        # A shardq connection holds pools of its own; SQLAlchemy keeps a few of them.
        return pool.QueuePool

    def on_connect(self) -> Any:
        level = getattr(self, "isolation_level", None)
        if level is None:
            return None

        def set_level(conn: shardq.Connection) -> None:
            self.set_isolation_level(conn, level)

        return set_level

    def get_isolation_level_values(self, dbapi_conn: DBAPIConnection) -> Sequence[IsolationLevel]:
        return ["AUTOCOMMIT", self._default_isolation]

    def get_isolation_level(self, dbapi_connection: DBAPIConnection) -> IsolationLevel:
        return "AUTOCOMMIT" if dbapi_connection.autocommit else self._default_isolation

    def get_default_isolation_level(self, dbapi_conn: DBAPIConnection) -> IsolationLevel:
        return self._default_isolation

    def set_isolation_level(self, dbapi_connection: Any, level: IsolationLevel) -> None:
        if level not in self.get_isolation_level_values(dbapi_connection):
            raise NotSupportedError(
                f"isolation level {level!r}: a shardq connection runs "
                f"{self._default_isolation} transactions, or AUTOCOMMIT"
            )
        dbapi_connection.autocommit = level == "AUTOCOMMIT"

    def reset_isolation_level(self, dbapi_connection: Any) -> None:
        dbapi_connection.autocommit = False

    def do_ping(self, dbapi_connection: Any) -> bool:
        dbapi_connection.execute("SELECT 1").fetchall()
        return True

    def is_disconnect(self, e: Exception, connection: Any, cursor: Any) -> bool:
        # shardq's pools replace a lost server connection themselves.
        return connection is not None and bool(getattr(connection, "closed", False))

    # Savepoints (Session.begin_nested()): shardq's, on every shard the
    # transaction has joined and those it joins later; the SAVEPOINT statement
    # itself is not one shardq runs.

    def _savepoints(self, connection: Connection) -> tuple[shardq.Connection, dict[str, str]]:
        dbapi_connection = connection.connection.dbapi_connection
        assert isinstance(dbapi_connection, shardq.Connection)
        names: dict[str, str] = connection.connection.info.setdefault("shardq_savepoints", {})
        return dbapi_connection, names

    def do_savepoint(self, connection: Connection, name: str) -> None:
        conn, names = self._savepoints(connection)
        names[name] = conn.savepoint()

    def do_rollback_to_savepoint(self, connection: Connection, name: str) -> None:
        conn, names = self._savepoints(connection)
        conn.rollback_to_savepoint(names.pop(name))

    def do_release_savepoint(self, connection: Connection, name: str) -> None:
        conn, names = self._savepoints(connection)
        conn.release_savepoint(names.pop(name))

    @staticmethod
    def _declared(connection: Connection) -> dict[str, Any]:
        conn = connection.connection.dbapi_connection
        assert conn is not None
        tables: dict[str, Any] = conn.config.tables
        return tables

    def _only_declared(self, connection: Connection, names: list[str]) -> list[str]:
        declared = self._declared(connection)
        return [name for name in names if name in declared or name.lower() in declared]

    @reflection.cache
    def get_table_names(
        self, connection: Connection, schema: str | None = None, *args: Any, **kw: Any
    ) -> list[str]:
        names = super().get_table_names(connection, schema, *args, **kw)  # type: ignore[misc]
        return self._only_declared(connection, names)

    @reflection.cache
    def get_view_names(
        self, connection: Connection, schema: str | None = None, *args: Any, **kw: Any
    ) -> list[str]:
        names = super().get_view_names(connection, schema, *args, **kw)  # type: ignore[misc]
        return self._only_declared(connection, names)

    def has_table(
        self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> bool:
        if not self._only_declared(connection, [table_name]):
            return False
        found: bool = super().has_table(connection, table_name, schema, **kw)  # type: ignore[misc]
        return found


def _declared_only(name: str) -> Any:
    """A ``get_multi_*`` reflection method that leaves out undeclared tables.

    Asked with no ``filter_names`` (``inspector.get_multi_columns()``),
    PostgreSQL's answers for every table of the schema.
    """

    def method(self: _ShardqDialect, connection: Connection, **kw: Any) -> list[Any]:
        found = getattr(super(_ShardqDialect, self), name)(connection, **kw)
        declared = self._declared(connection)
        return [
            (key, value) for key, value in found if key[1] in declared or key[1].lower() in declared
        ]

    method.__name__ = name
    return method


for _name in (
    "get_multi_columns", "get_multi_pk_constraint", "get_multi_foreign_keys",
    "get_multi_indexes", "get_multi_unique_constraints", "get_multi_check_constraints",
    "get_multi_table_comment", "get_multi_table_options",
):  # fmt: skip
    setattr(_ShardqDialect, _name, _declared_only(_name))


def _copy_target(
    statement: str, parameters: Any, context: Any, conn: shardq.Connection
) -> CopyTarget | None:
    """The COPY an ``executemany`` INSERT can be, storing what it would store; else None."""
    compiled = getattr(context, "compiled", None)
    if compiled is None or not getattr(context, "isinsert", False) or compiled.effective_returning:
        return None
    target = copy_target(statement, parameters, conn.config)
    if target is None:
        return None
    # One catalog read, on one shard, in the open transaction: a table
    # altered since is read as it is now.
    with conn.execute(COLUMN_TYPES_SQL, [target.relation]) as cursor:
        types = {str(name): int(oid) for name, oid in cursor.fetchall()}
    return target if copy_agrees(target, types, parameters) else None


class ShardqPGDialect(_ShardqDialect, PGDialect_psycopg):
    """PostgreSQL shards: psycopg's dialect (types, compiler, ``%s`` placeholders) over shardq."""

    _default_isolation: IsolationLevel = "READ COMMITTED"
    supports_statement_cache = True  # SQLAlchemy asks each class itself
    use_native_hstore = False  # psycopg's hstore adapter needs a psycopg connection
    minimum_dbapi_version = None  # type: ignore[assignment]  # psycopg's minimum; shardq requires its own psycopg

    def __init__(self, copy_executemany: bool = True, **kwargs: Any):
        """``copy_executemany=False`` (a ``create_engine`` keyword): INSERTs row by row."""
        self.copy_executemany = copy_executemany
        # Not psycopg's __init__: it builds an adapters map from the DB-API
        # module, which is shardq here (shardq's psycopg pools adapt values).
        super(PGDialect_psycopg, self).__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._psycopg_adapters_map = None

    @classmethod
    def import_dbapi(cls) -> types.ModuleType:
        return shardq

    @property
    def _dbapi_version(self) -> tuple[int, ...]:
        import psycopg

        return tuple(int(part) for part in psycopg.__version__.split(".")[:3] if part.isdigit())

    def initialize(self, connection: Connection) -> None:
        PGDialect.initialize(self, connection)  # type: ignore[no-untyped-call]
        if not self.insert_returning:
            self.insert_executemany_returning = False

    def do_executemany(
        self, cursor: Any, statement: str, parameters: Any, context: Any = None
    ) -> None:
        """An INSERT of many rows into a distributed table is a COPY per shard, when exact.

        What ``DataFrame.to_sql`` and the ORM send (``INSERT INTO t (a, b)
        VALUES (%(a)s, %(b)s)`` with one parameter set per row, nothing
        returned) loads the same rows through :meth:`shardq.Cursor.copy_in`
        as the routed INSERTs would, in the same transaction, with column
        defaults and triggers as INSERT has them, one round trip per shard
        rather than one per row. COPY reads a value's text as its column's
        type, where the INSERT casts it to the type SQLAlchemy bound it as:
        the rows are checked first against the table's column types
        (:func:`shardq.insert_copy.copy_agrees`), and an INSERT whose values
        COPY would read otherwise (text into a date column bound as
        ``VARCHAR``, a float into an integer column) runs as the INSERT,
        row by row, storing or refusing what one PostgreSQL would. So do
        RETURNING, ON CONFLICT, a value computed in SQL, a reference table,
        and every INSERT with ``create_engine(..., copy_executemany=False)``.
        """
        conn = cursor.connection
        target = self.copy_executemany and _copy_target(statement, parameters, context, conn)
        if not target:
            super().do_executemany(cursor, statement, parameters, context)  # type: ignore[no-untyped-call]
            return
        # The cursor's rowcount is then what the routed INSERTs would have
        # reported (pandas returns it from to_sql).
        rows = ([row[n] for n in target.names] for row in parameters)
        cursor.copy_in(target.table, rows, target.columns)

    def _set_backslash_escapes(self, connection: Connection) -> None:
        # SHOW is not a statement shardq runs; current_setting() is a table-free read.
        setting = connection.execute(
            text("SELECT current_setting('standard_conforming_strings')")
        ).scalar()
        self._backslash_escapes = setting == "off"


def _sqlite_dbapi() -> types.ModuleType:
    """shardq as pysqlite's dialect expects its DB-API module: with ``sqlite_version_info``.

    SQLite shards run in this process through :mod:`sqlite3`, so its library's
    version is the shards'.
    """
    module = types.ModuleType("shardq", shardq.__doc__)
    module.__dict__.update(vars(shardq))
    module.paramstyle = "qmark"  # type: ignore[attr-defined]
    module.sqlite_version_info = sqlite3.sqlite_version_info  # type: ignore[attr-defined]
    module.sqlite_version = sqlite3.sqlite_version  # type: ignore[attr-defined]
    return module


class ShardqSQLiteDialect(_ShardqDialect, SQLiteDialect_pysqlite):
    """SQLite shards: pysqlite's dialect (types, compiler, ``?`` placeholders) over shardq."""

    _default_isolation: IsolationLevel = "SERIALIZABLE"
    supports_statement_cache = True  # SQLAlchemy asks each class itself

    @classmethod
    def import_dbapi(cls) -> types.ModuleType:
        return _sqlite_dbapi()

    def _get_server_version_info(self, connection: Connection) -> tuple[int, ...]:
        return sqlite3.sqlite_version_info

    def _get_table_pragma(
        self, connection: Connection, pragma: str, table_name: str, schema: str | None = None
    ) -> Any:
        # A PRAGMA statement is not one shardq runs; its table-valued function
        # (pragma_table_info(...)) is a table-free read, answered by one shard.
        args = "?, ?" if schema else "?"
        params = (table_name, schema) if schema else (table_name,)
        return connection.exec_driver_sql(f"SELECT * FROM pragma_{pragma}({args})", params)


def copy_rows(table: Any, conn: Connection, keys: list[str], rows: Iterable[Sequence[Any]]) -> int:
    """``DataFrame.to_sql(..., method=copy_rows)``: load the rows with shardq's bulk path.

    pandas' default sends an ``executemany`` through SQLAlchemy (a COPY per
    shard on PostgreSQL too when COPY stores what the INSERT would:
    :meth:`ShardqPGDialect.do_executemany`, after SQLAlchemy made a
    parameter dict per row); this hands pandas' rows to
    :meth:`shardq.Connection.copy_in` as they are, unchecked (each value read
    as COPY reads it, text into a date column too): split by shard key, one
    ``COPY`` per shard, in the connection's open transaction (SQLite shards,
    which have no two-phase commit, load on one shard per transaction).

    Returns:
        The number of rows loaded.
    """
    dbapi_connection = conn.connection.dbapi_connection
    assert isinstance(dbapi_connection, shardq.Connection)
    name = f"{table.schema}.{table.name}" if table.schema else table.name
    return int(dbapi_connection.copy_in(name, rows, keys))


registry.register("shardq.postgresql", "shardq.sqlalchemy", "ShardqPGDialect")
registry.register("shardq.sqlite", "shardq.sqlalchemy", "ShardqSQLiteDialect")
