"""Writing SQL back as each database reads it: sqlglot's generators, made faithful.

shardq sends SQL that sqlglot wrote from a rewritten tree, so what sqlglot
writes must mean what the user wrote. Its SQLite generator does not always:

* ``CAST(x AS numeric)`` comes back as ``CAST(x AS REAL)`` and
  ``CAST(x AS date)`` as ``DATE(x)``, other values altogether. A SQLite CAST
  depends only on the *affinity* of the type name, so shardq writes the
  affinity's own name (INTEGER, TEXT, BLOB, REAL or NUMERIC), which SQLite
  reads back to the same affinity.
* ``substr(x, 1, 2)`` comes back as ``SUBSTRING``, which old SQLite versions
  lack: written ``SUBSTR``; ``mod(a, b)`` (a real, fmod) as the integer
  operator ``a % b``: kept a plain call, as are ``substring`` and ``ceiling``.
* a comma join comes back as ``CROSS JOIN``, which in SQLite fixes the join
  order (a planner hint, same rows): written with a comma again;
* a unary ``+``, which in SQLite takes a column's affinity away, is dropped
  by sqlglot's parser: shardq's parser keeps it (:class:`UnaryPlus`).

Its PostgreSQL generator writes ``to_hex`` as ``HEX`` (no such function in
PostgreSQL), ``date_part('year', x)`` as ``EXTRACT(YEAR FROM x)`` (numeric,
not float8), ``substr(x, 1, 2)`` as ``SUBSTRING(x FROM 1 FOR 2)``, ``mod(a, b)``
as ``a % b`` (which the shards name ``?column?``, not ``mod``), ...:
shardq's PostgreSQL parser reads these calls as plain function calls, which
are written back as they were read.

>>> import sqlglot
>>> tree = sqlglot.parse_one("SELECT CAST(x AS numeric), substr(x, 2) FROM t, u", read="sqlite")
>>> generate(tree, "sqlite")
'SELECT CAST(x AS NUMERIC), SUBSTR(x, 2) FROM t, u'
>>> sql = "SELECT to_hex(k), date_part('year', ts), substr(x, 1, 2) FROM t"
>>> generate(sqlglot.parse_one(sql, read=sqlite_read("postgres")), "postgres")
"SELECT TO_HEX(k), DATE_PART('year', ts), SUBSTR(x, 1, 2) FROM t"
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlglot import TokenType, exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.dialects.sqlite import SQLite

__all__ = [
    "SQLITE_AFFINITY_WORDS",
    "ShardqPostgres",
    "ShardqSQLite",
    "UnaryPlus",
    "cast_affinity",
    "generate",
    "sqlite_affinity",
    "sqlite_read",
]

#: The type names shardq writes in a SQLite CAST, one per affinity.
SQLITE_AFFINITY_WORDS = frozenset({"integer", "text", "blob", "real", "numeric"})

_TEXT_TYPES = {"TEXT", "VARCHAR", "CHAR", "NCHAR", "NVARCHAR", "BPCHAR", "NAME", "CLOB"}
_REAL_TYPES = {"DOUBLE", "FLOAT", "REAL"}


def sqlite_affinity(type_name: str) -> str:
    """The affinity SQLite gives a declared type name (section 3.1 of its datatype page).

    >>> [sqlite_affinity(t) for t in ["BIGINT", "varchar(10)", "", "double", "boolean"]]
    ['INTEGER', 'TEXT', 'BLOB', 'REAL', 'NUMERIC']
    """
    name = type_name.upper()
    if "INT" in name:
        return "INTEGER"
    if "CHAR" in name or "CLOB" in name or "TEXT" in name:
        return "TEXT"
    if "BLOB" in name or not name.strip():
        return "BLOB"
    if "REAL" in name or "FLOA" in name or "DOUB" in name:
        return "REAL"
    return "NUMERIC"


def cast_affinity(to: exp.DataType) -> str:
    """The affinity of a parsed CAST target.

    From the type name as written when the tree was parsed by
    :class:`ShardqSQLite`, else from sqlglot's kind of type.
    """
    written = to.meta.get("sqlite_type")
    if written is not None:
        return sqlite_affinity(str(written))
    kind = to.this
    if kind == exp.DataType.Type.USERDEFINED:
        return sqlite_affinity(str(to.args.get("kind") or ""))
    name = kind.value.upper()
    if name in _TEXT_TYPES:
        return "TEXT"
    if name in _REAL_TYPES:
        return "REAL"
    if name in ("VARBINARY", "BLOB"):  # sqlglot reads SQLite's BLOB as VARBINARY
        return "BLOB"
    if name == "DECIMAL":
        return "NUMERIC"
    return sqlite_affinity(name)


class _SQLiteGenerator(SQLite.Generator):  # type: ignore[misc,valid-type]
    TRANSFORMS: ClassVar[dict[Any, Any]] = {
        **SQLite.Generator.TRANSFORMS,
        exp.Substring: lambda self, e: self.func(
            "SUBSTR", e.this, e.args.get("start"), e.args.get("length")
        ),
    }

    def cast_sql(self, expression: exp.Cast, safe_prefix: str | None = None) -> str:
        to = expression.to
        if not isinstance(to, exp.DataType):
            return str(super().cast_sql(expression, safe_prefix))
        return f"CAST({self.sql(expression, 'this')} AS {cast_affinity(to)})"

    def join_sql(self, expression: exp.Join) -> str:
        plain_cross = (
            expression.kind == "CROSS"
            and not expression.side
            and not expression.args.get("on")
            and not expression.args.get("using")
            and not expression.args.get("method")
        )
        if plain_cross:
            return f", {self.sql(expression, 'this')}"
        return str(super().join_sql(expression))


class UnaryPlus(exp.Expression, exp.Func):
    """SQLite's unary ``+``: the same value, without its affinity (sqlglot drops it).

    Written ``+(x)``, which any of sqlglot's generators writes and SQLite
    reads as the same operator.
    """

    arg_types: ClassVar[dict[str, bool]] = {"this": True}
    _sql_names: ClassVar[list[str]] = ["+"]


# SQLite's mod() is fmod (a real: mod(3.5, 3) is 0.5), which sqlglot writes as the integer
# operator % (3.5 % 3 is 0.0); substring() and ceiling() would come back renamed.
_SQLITE_PLAIN_CALLS = ("MOD", "SUBSTRING", "CEILING")


class _SQLiteParser(SQLite.Parser):  # type: ignore[misc,valid-type]
    FUNCTIONS: ClassVar[dict[str, Any]] = {
        k: v for k, v in SQLite.Parser.FUNCTIONS.items() if k not in _SQLITE_PLAIN_CALLS
    }
    FUNCTION_PARSERS: ClassVar[dict[str, Any]] = {
        k: v for k, v in SQLite.Parser.FUNCTION_PARSERS.items() if k not in _SQLITE_PLAIN_CALLS
    }
    UNARY_PARSERS: ClassVar[dict[Any, Any]] = {
        **SQLite.Parser.UNARY_PARSERS,
        TokenType.PLUS: lambda self: UnaryPlus(this=self._parse_unary()),
    }

    def _parse_types(self, *args: Any, **kwargs: Any) -> exp.Expr | None:
        # A CAST's meaning is its type name's affinity, which sqlglot's type
        # kinds do not keep (STRING is read as TEXT, SQLite gives it NUMERIC):
        # the name as written is kept with the type.
        start = self._index
        found: exp.Expr | None = super()._parse_types(*args, **kwargs)
        if isinstance(found, exp.DataType) and self._index > start:
            words = [t.text for t in self._tokens[start : self._index]]
            found.meta["sqlite_type"] = " ".join(words)
        return found


class ShardqSQLite(SQLite):
    """SQLite as sqlglot reads it, written back as the user wrote it (see the module)."""

    Parser = _SQLiteParser
    Generator = _SQLiteGenerator


# PostgreSQL functions sqlglot reads as another expression, which it writes
# back with another name or meaning: read as plain calls instead.
# (mod(k, 3), regexp_like(x, 'a') and power(a, b) would be named "?column?"; date_bin
# would lose the quotes of its third argument.)
_PG_PLAIN_CALLS = (
    "TO_HEX", "DATE_PART", "SUBSTR", "CHAR_LENGTH", "CHARACTER_LENGTH", "CEILING", "MOD",
    "STRPOS", "BTRIM", "REGEXP_LIKE", "DATE_BIN", "POW", "POWER", "LOG10",
)  # fmt: skip


class _PostgresParser(Postgres.Parser):  # type: ignore[misc,valid-type]
    FUNCTIONS: ClassVar[dict[str, Any]] = {
        k: v for k, v in Postgres.Parser.FUNCTIONS.items() if k not in _PG_PLAIN_CALLS
    }
    FUNCTION_PARSERS: ClassVar[dict[str, Any]] = {
        k: v for k, v in Postgres.Parser.FUNCTION_PARSERS.items() if k not in _PG_PLAIN_CALLS
    }


class _PostgresGenerator(Postgres.Generator):  # type: ignore[misc,valid-type]
    # substring(x FROM a FOR b) is the function substring(x, a, b) (substring(x, 'regex')
    # for a pattern), which also reads back the user's substring(x, a, b) without a FOR.
    TRANSFORMS: ClassVar[dict[Any, Any]] = {
        **Postgres.Generator.TRANSFORMS,
        exp.Substring: lambda self, e: self.func(
            "SUBSTRING", e.this, e.args.get("start"), e.args.get("length")
        ),
    }


class ShardqPostgres(Postgres):
    """PostgreSQL as sqlglot reads it, with the calls it would rename kept (see the module)."""

    Parser = _PostgresParser
    Generator = _PostgresGenerator


_GENERATORS: dict[str, Any] = {"sqlite": ShardqSQLite, "postgres": ShardqPostgres}


def sqlite_read(dialect: str) -> Any:
    """The dialect to parse ``dialect``'s SQL with (shardq's own, see the module)."""
    return _GENERATORS.get(dialect, dialect)


def generate(expression: exp.Expr, dialect: str) -> str:
    """``expression`` as SQL of ``dialect``, written faithfully (see the module docstring)."""
    return str(expression.sql(_GENERATORS.get(dialect, dialect)))
