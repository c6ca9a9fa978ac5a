"""shardq: run SQL across many database shards as if they were one database.

>>> import shardq
>>> shardq.apilevel, shardq.threadsafety
('2.0', 2)
"""

from __future__ import annotations

from shardq.adapter import from_connections
from shardq.aio import AsyncConnection, AsyncCursor, connect_async
from shardq.cache import CacheRegion
from shardq.config import Config, ShardConfig, TableConfig, load_config
from shardq.dbapi import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Connection,
    Cursor,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    connect,
)
from shardq.errors import (
    CommitTimeoutError,
    ConfigError,
    DatabaseError,
    DataError,
    Error,
    InFailedTransactionError,
    IntegrityError,
    InterfaceError,
    InternalError,
    MissingDependencyError,
    NotSupportedError,
    OperationalError,
    PartialResultWarning,
    ProgrammingError,
    QueryTimeoutError,
    ShardError,
    SQLSyntaxError,
    UndeclaredTableError,
    UnsupportedQueryError,
    Warning,
)
from shardq.execute.batch import ExecutionResult, Progress
from shardq.execute.copy import CopyProgress, CopyResult
from shardq.results import ResultSet
from shardq.rows import dict_row, namedtuple_row, tuple_row
from shardq.verify import VerifyResult

__version__ = "0.1.0.dev0"

#: PEP 249 module globals.
apilevel = "2.0"
#: Threads may share the module and connections (not cursors).
threadsafety = 2
#: The placeholder style of the postgres dialect (psycopg's). The sqlite
#: dialect uses "qmark" (``?``, and ``:name``); ``Connection.paramstyle`` tells.
paramstyle = "pyformat"

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "AsyncConnection",
    "AsyncCursor",
    "Binary",
    "CacheRegion",
    "CommitTimeoutError",
    "Config",
    "ConfigError",
    "Connection",
    "CopyProgress",
    "CopyResult",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "ExecutionResult",
    "InFailedTransactionError",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "MissingDependencyError",
    "NotSupportedError",
    "OperationalError",
    "PartialResultWarning",
    "ProgrammingError",
    "Progress",
    "QueryTimeoutError",
    "ResultSet",
    "SQLSyntaxError",
    "ShardConfig",
    "ShardError",
    "TableConfig",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "UndeclaredTableError",
    "UnsupportedQueryError",
    "VerifyResult",
    "Warning",
    "apilevel",
    "connect",
    "connect_async",
    "dict_row",
    "from_connections",
    "load_config",
    "namedtuple_row",
    "paramstyle",
    "threadsafety",
    "tuple_row",
]
