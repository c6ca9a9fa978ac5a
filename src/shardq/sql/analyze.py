"""Analysis: what a statement is and which declared tables it touches."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from shardq.errors import UnsupportedQueryError

if TYPE_CHECKING:
    from shardq.config import Config, TableConfig
    from shardq.sql.parse import Parsed

__all__ = [
    "AGGREGATE_NAMES",
    "VOLATILE",
    "Analysis",
    "StatementKind",
    "TableRef",
    "analyze",
    "is_aggregate",
    "own_aggregates",
    "table_refs",
    "volatile_call",
]


class StatementKind(enum.Enum):
    """The kinds of statement shardq distinguishes."""

    READ = "read"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    #: CREATE/ALTER/DROP TABLE, INDEX or VIEW, TRUNCATE, COMMENT ON TABLE: on every shard.
    SCHEMA = "schema change"

    @property
    def is_write(self) -> bool:
        return self is not StatementKind.READ


@dataclass(frozen=True, slots=True)
class TableRef:
    """One use of a declared table in the statement.

    Attributes:
        table: the table's configuration.
        alias: the name the query uses for it (its alias, or its name).
        node: the sqlglot node.
    """

    table: TableConfig
    alias: str
    node: exp.Table
    # ``FROM orders AS o(a, b)`` renames columns: its names are not the table's.
    renames_columns: bool = False


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the planner needs to know about a parsed statement."""

    parsed: Parsed
    kind: StatementKind
    refs: tuple[TableRef, ...]
    #: Whether it reads a system catalog (then it has no declared table: :func:`table_refs`).
    reads_catalog: bool = False
    # Facts derived from the text alone (key terms, refusals), computed once
    # per cached analysis rather than once per call.
    memo: dict[object, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def distributed(self) -> tuple[TableRef, ...]:
        return tuple(r for r in self.refs if r.table.distributed)

    @property
    def reference(self) -> tuple[TableRef, ...]:
        return tuple(r for r in self.refs if not r.table.distributed)


_READS = (exp.Select, exp.SetOperation, exp.Values)
_KINDS: dict[type[exp.Expr], StatementKind] = {
    exp.Insert: StatementKind.INSERT,
    exp.Update: StatementKind.UPDATE,
    exp.Delete: StatementKind.DELETE,
}


def _check_no_hidden_writes(statement: exp.Expr) -> None:
    """Refuse writes a reader would not see: ``SELECT ... INTO``, data-modifying CTEs."""
    if isinstance(statement, exp.Select) and statement.args.get("into"):
        raise UnsupportedQueryError(
            "SELECT ... INTO", "it creates a table on every shard it runs on; use CREATE TABLE"
        )
    for node in statement.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge):
        if node is not statement:
            raise UnsupportedQueryError(
                f"a {node.key.upper()} inside another statement",
                "shardq routes a write by its own shard-key condition; run it as a "
                "statement of its own",
            )


def _schema_change(statement: exp.Expr) -> bool:
    """Whether ``statement`` changes the schema of declared tables (see StatementKind.SCHEMA)."""
    if isinstance(statement, exp.TruncateTable):
        return True
    if not isinstance(statement, exp.Create | exp.Drop | exp.Alter | exp.Comment):
        return False
    kind = str(statement.args.get("kind") or "").upper()
    if kind not in ("TABLE", "INDEX", "VIEW"):
        return False
    if kind == "VIEW":
        properties = statement.args.get("properties")
        if statement.args.get("materialized") or (
            properties is not None and properties.find(exp.MaterializedProperty)
        ):
            raise UnsupportedQueryError(
                "a materialized view",
                "each shard would store the rows of its own query, refreshed apart; create a "
                "plain view (each shard's view reads its own rows when it is read)",
            )
        return True
    if isinstance(statement, exp.Create) and statement.args.get("expression") is not None:
        raise UnsupportedQueryError(
            "CREATE TABLE ... AS",
            "each shard would fill the table with the rows of its own query; create the "
            "table, then insert the rows",
        )
    return True


def _kind(statement: exp.Expr) -> StatementKind:
    _check_no_hidden_writes(statement)
    if isinstance(statement, _READS):
        return StatementKind.READ
    if _schema_change(statement):
        return StatementKind.SCHEMA
    for klass, kind in _KINDS.items():
        if isinstance(statement, klass):
            return kind
    name = statement.key.upper()
    raise UnsupportedQueryError(
        f"a {name} statement",
        "shardq runs SELECT, INSERT, UPDATE and DELETE, and schema changes of tables, "
        "indexes and views (CREATE, ALTER, DROP, TRUNCATE, COMMENT); run other statements on each "
        "shard directly",
    )


def normalize(identifier: exp.Identifier | str | None, dialect: str) -> str:
    """An identifier as the database resolves it.

    PostgreSQL folds unquoted names to lower case and keeps quoted ones as
    written; SQLite compares names case-insensitively, quoted or not.

    >>> normalize(exp.to_identifier("Orders"), "postgres")
    'orders'
    >>> normalize(exp.to_identifier("Orders", quoted=True), "postgres")
    'Orders'
    """
    if identifier is None:
        return ""
    if isinstance(identifier, str):
        return identifier.lower()
    text = str(identifier.this)
    return text if identifier.quoted and dialect == "postgres" else text.lower()


def _with_of(node: exp.Expr) -> exp.With | None:
    found = node.args.get("with_") or node.args.get("with")
    return found if isinstance(found, exp.With) else None


def _is_cte_reference(node: exp.Table, name: str, dialect: str) -> bool:
    """Whether ``node`` names a CTE visible where it stands (PostgreSQL's scoping).

    A CTE is visible in its statement's body and in the bodies of the CTEs
    listed after it; in its own body only if the WITH is RECURSIVE.
    """
    child: exp.Expr = node
    parent = node.parent
    while parent is not None:
        with_ = _with_of(parent)
        if with_ is not None and child is not with_:
            # The node is in the statement's body: every CTE of this WITH is visible.
            if any(normalize(c.args["alias"].this, dialect) == name for c in with_.expressions):
                return True
        elif with_ is not None:
            # The node is inside one of this WITH's CTE bodies.
            ctes = with_.expressions
            inside = next(i for i, c in enumerate(ctes) if any(n is node for n in c.walk()))
            visible = ctes if with_.args.get("recursive") else ctes[:inside]
            if any(normalize(c.args["alias"].this, dialect) == name for c in visible):
                return True
        child, parent = parent, parent.parent
    return False


def _dml_target(statement: exp.Expr) -> exp.Table | None:
    target = statement.this if isinstance(statement, exp.Insert | exp.Update | exp.Delete) else None
    if isinstance(target, exp.Schema):
        target = target.this
    return target if isinstance(target, exp.Table) else None


#: System catalogs: every shard has its own, describing the same declared tables.
_CATALOG_SCHEMAS = {"postgres": frozenset({"pg_catalog", "information_schema"})}
_CATALOG_TABLES = {
    "sqlite": frozenset(
        {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
    )
}


def _system_catalog(name: str, schema: str, config: Config) -> bool:
    """Whether a table name is a system catalog's (``pg_catalog.pg_class``, ``sqlite_master``).

    PostgreSQL searches ``pg_catalog`` before the schemas of the search path
    unless the path names it, so an unqualified ``pg_class`` is the catalog's
    (unless the configuration declares a table of that name). SQLite reserves
    names starting ``sqlite_``.
    """
    dialect = config.dialect
    if schema in _CATALOG_SCHEMAS.get(dialect, ()):
        return True
    if dialect == "postgres" and not schema and name.startswith("pg_"):
        return name not in config.tables
    return name in _CATALOG_TABLES.get(dialect, ())


def table_refs(statement: exp.Expr, config: Config) -> tuple[TableRef, ...]:
    """Return every declared table the statement reads or writes.

    CTE names (where the CTE is visible) and table-valued functions
    (``generate_series(...)``) are not tables; the target of INSERT, UPDATE
    or DELETE always is. A table the configuration does not declare raises
    :class:`~shardq.errors.UndeclaredTableError`.

    A read of system catalogs only (``pg_catalog``, ``information_schema``,
    ``sqlite_master``: what SQLAlchemy's reflection and BI tools ask) touches
    no declared table, so it runs on one shard: every shard's catalog
    describes the same declared tables (schema changes run on all of them),
    though under OIDs of its own, so it is always the first shard
    (:attr:`Analysis.reads_catalog`). A catalog beside a declared table, or written, is
    refused: its rows would be one shard's, joined to every shard's.
    """
    return _refs_and_catalogs(statement, config)[0]


def _refs_and_catalogs(
    statement: exp.Expr, config: Config
) -> tuple[tuple[TableRef, ...], list[str]]:
    """:func:`table_refs`, and the system catalogs the statement reads."""
    dialect = config.dialect
    if isinstance(statement, exp.Drop) and str(statement.args.get("kind")).upper() == "INDEX":
        return (), []  # it names an index, not a table
    target = _dml_target(statement)
    refs = []
    catalogs = []
    for node in statement.find_all(exp.Table):
        if not isinstance(node.this, exp.Identifier):
            continue  # a table function such as generate_series(...)
        name = normalize(node.this, dialect)
        if not node.db and node is not target and _is_cte_reference(node, name, dialect):
            continue
        schema = normalize(node.args["db"], dialect) if node.db else ""
        if _system_catalog(name, schema, config):
            catalogs.append(f"{schema}.{name}" if schema else name)
            continue
        table = config.table(f"{schema}.{name}" if schema else name, resolved=True)
        alias = node.args.get("alias")
        refs.append(
            TableRef(
                table,
                normalize(alias.this, dialect) if alias and alias.this else name,
                node,
                renames_columns=bool(alias and alias.columns),
            )
        )
    if catalogs and (refs or not isinstance(statement, _READS)):
        raise UnsupportedQueryError(
            f"the system catalog {catalogs[0]} in a write or beside a declared table",
            "every shard has its own catalog: shardq reads one shard's in a statement of its "
            "own; read the catalog apart from the tables",
        )
    return tuple(refs), catalogs


def analyze(parsed: Parsed, config: Config) -> Analysis:
    """Classify a parsed statement and resolve its tables against ``config``."""
    statement = parsed.expression
    kind = _kind(statement)  # (first: it refuses what it cannot classify)
    refs, catalogs = _refs_and_catalogs(statement, config)
    return Analysis(parsed, kind, refs, reads_catalog=bool(catalogs))


# Aggregates sqlglot parses as plain function calls (exp.Anonymous). A
# user-defined aggregate cannot be told from a function by its text: the
# README says so.
AGGREGATE_NAMES = frozenset(
    {
        "array_agg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "every",
        "group_concat", "json_agg", "json_group_array", "json_group_object", "json_object_agg",
        "jsonb_agg", "jsonb_object_agg", "range_agg", "range_intersect_agg", "string_agg",
        "total", "xmlagg", "mode", "percentile_cont", "percentile_disc", "regr_count",
        "regr_avgx", "regr_avgy", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
        "regr_sxy", "regr_syy", "corr", "covar_pop", "covar_samp", "stddev", "stddev_pop",
        "stddev_samp", "variance", "var_pop", "var_samp", "any_value",
        "count", "sum", "avg", "min", "max", "json_agg_strict", "jsonb_agg_strict",
        "json_object_agg_strict", "json_object_agg_unique", "json_object_agg_unique_strict",
        "jsonb_object_agg_strict", "jsonb_object_agg_unique", "jsonb_object_agg_unique_strict",
        "json_arrayagg", "json_objectagg", "jsonb_group_array", "jsonb_group_object",
        "percentile", "median",
    }
)  # fmt: skip


# Functions whose value differs per call: computed per shard, they would differ.
VOLATILE = frozenset(
    {"random", "rand", "randomblob", "nextval", "setval", "clock_timestamp", "timeofday",
     "gen_random_uuid", "uuid_generate_v4", "txid_current", "pg_backend_pid", "changes",
     "last_insert_rowid", "random_normal",
     # Stable within one transaction, but every shard runs its own.
     "now", "current_timestamp", "currenttimestamp", "statement_timestamp",
     "transaction_timestamp", "localtimestamp", "current_time", "currenttime", "localtime"}
)  # fmt: skip


def volatile_call(node: exp.Expr) -> exp.Func | None:
    """The first call in ``node`` whose value differs from call to call (or shard to shard)."""
    for call in node.find_all(exp.Func):
        name = str(call.this) if isinstance(call, exp.Anonymous) else call.sql_name()
        if name.lower() in VOLATILE or isinstance(call, exp.Rand):
            return call
    return None


def is_aggregate(node: exp.Expr) -> bool:
    """Whether ``node`` is an aggregate call (FILTER and WITHIN GROUP included)."""
    if isinstance(node, exp.AggFunc):
        return True
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower() in AGGREGATE_NAMES
    return isinstance(node, exp.Filter | exp.WithinGroup)


def own_aggregates(node: exp.Expr, select: exp.Select) -> list[exp.Expr]:
    """The aggregates in ``node`` that belong to ``select`` (not to a subquery)."""
    return [
        n
        for n in node.find_all(exp.Func, exp.Filter, exp.WithinGroup)
        if n.parent_select is select and is_aggregate(n) and not _in_window(n)
    ]


def _in_window(node: exp.Expr) -> bool:
    """Whether ``node`` is the function of a window (``count(*) OVER (...)``)."""
    parent = node.parent
    while isinstance(parent, exp.Filter):
        node, parent = parent, parent.parent
    return isinstance(parent, exp.Window) and parent.this is node
