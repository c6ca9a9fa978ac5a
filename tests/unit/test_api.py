"""The public surface: exports, PEP 249 globals, the exception tree, merging."""

from __future__ import annotations

import subprocess
import sys

import pytest

import shardq
from shardq.merge.concat import concat
from shardq.merge.drive import drive_sync


def test_exported_members() -> None:
    assert set(shardq.__all__) == {
        "AsyncConnection", "AsyncCursor", "BINARY", "Binary", "CacheRegion", "CommitTimeoutError",
        "Config", "ConfigError", "CopyProgress", "CopyResult",
        "Connection", "Cursor", "DATETIME", "DataError", "DatabaseError", "Date", "DateFromTicks",
        "Error", "ExecutionResult", "InFailedTransactionError", "IntegrityError",
        "InterfaceError", "InternalError", "NUMBER",
        "MissingDependencyError", "NotSupportedError", "OperationalError", "PartialResultWarning",
            "ProgrammingError",
        "Progress",
        "QueryTimeoutError", "ROWID", "ResultSet", "SQLSyntaxError", "STRING", "ShardConfig",
        "ShardError", "TableConfig", "Time", "TimeFromTicks", "Timestamp", "TimestampFromTicks",
        "UndeclaredTableError", "UnsupportedQueryError", "VerifyResult", "Warning", "apilevel",
        "connect", "connect_async", "dict_row", "from_connections", "load_config", "namedtuple_row",
        "paramstyle", "threadsafety", "tuple_row",
    }  # fmt: skip
    for name in shardq.__all__:
        assert hasattr(shardq, name), name


def test_pep249_globals() -> None:
    assert shardq.apilevel == "2.0"
    assert shardq.threadsafety in (0, 1, 2, 3)
    assert shardq.paramstyle in ("qmark", "numeric", "named", "format", "pyformat")


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (shardq.Warning, Exception),
        (shardq.Error, Exception),
        (shardq.InterfaceError, shardq.Error),
        (shardq.DatabaseError, shardq.Error),
        (shardq.DataError, shardq.DatabaseError),
        (shardq.OperationalError, shardq.DatabaseError),
        (shardq.IntegrityError, shardq.DatabaseError),
        (shardq.InternalError, shardq.DatabaseError),
        (shardq.ProgrammingError, shardq.DatabaseError),
        (shardq.NotSupportedError, shardq.DatabaseError),
        (shardq.ConfigError, shardq.InterfaceError),
        (shardq.ConfigError, ValueError),
        (shardq.MissingDependencyError, shardq.InterfaceError),
        (shardq.MissingDependencyError, ModuleNotFoundError),
        (shardq.SQLSyntaxError, shardq.ProgrammingError),
        (shardq.UndeclaredTableError, shardq.ProgrammingError),
        (shardq.UnsupportedQueryError, shardq.NotSupportedError),
        (shardq.QueryTimeoutError, shardq.OperationalError),
        (shardq.QueryTimeoutError, TimeoutError),
        (shardq.CommitTimeoutError, shardq.QueryTimeoutError),
        (shardq.ShardError, shardq.DatabaseError),
    ],
)
def test_exception_hierarchy(child: type, parent: type) -> None:
    assert issubclass(child, parent)


def test_connection_exposes_the_exceptions() -> None:
    for name in ("Error", "ProgrammingError", "OperationalError", "NotSupportedError"):
        assert getattr(shardq.Connection, name) is getattr(shardq, name)


def test_cursors_and_connections_have_what_they_honour_and_nothing_that_always_raises() -> None:
    # PEP 249: an optional method that cannot be honoured is left out, so hasattr tells the truth.
    cursor_members = (
        "description", "rowcount", "arraysize", "close", "execute", "executemany",
        "fetchone", "fetchmany", "fetchall", "setinputsizes", "setoutputsize",
    )  # fmt: skip
    for name in cursor_members:
        assert hasattr(shardq.Cursor, name), name
    for name in ("close", "commit", "rollback", "cursor", "autocommit"):
        assert hasattr(shardq.Connection, name), name
        assert hasattr(shardq.AsyncConnection, name), name
    assert not hasattr(shardq.Cursor, "callproc")
    assert not hasattr(shardq.AsyncCursor, "callproc")


def test_type_objects_compare_with_postgres_type_codes() -> None:
    assert shardq.NUMBER == 23
    assert shardq.STRING == 25
    assert shardq.DATETIME == 1184
    assert shardq.BINARY == 17
    assert shardq.NUMBER != 25
    assert shardq.Date(2024, 1, 2).isoformat() == "2024-01-02"
    assert shardq.Binary(b"ab") == b"ab"


def test_import_loads_no_driver() -> None:
    code = (
        "import sys, shardq; print(sorted(m for m in ('psycopg', 'sqlite3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_concat_merges_sources_in_order_batch_by_batch() -> None:
    sources = [[[(1,), (2,)], [(3,)]], [], [[(4,)], [(5,), (6,)]]]
    assert drive_sync(concat(3), sources) == [(i,) for i in range(1, 7)]
    assert drive_sync(concat(0), []) == []
