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

__all__ = ["Analysis", "StatementKind", "TableRef", "analyze", "table_refs"]


class StatementKind(enum.Enum):
    """The kinds of statement shardq distinguishes."""

    READ = "read"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"

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


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the planner needs to know about a parsed statement."""

    parsed: Parsed
    kind: StatementKind
    refs: tuple[TableRef, ...]
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


def _kind(statement: exp.Expr) -> StatementKind:
    _check_no_hidden_writes(statement)
    if isinstance(statement, _READS):
        return StatementKind.READ
    for klass, kind in _KINDS.items():
        if isinstance(statement, klass):
            return kind
    name = statement.key.upper()
    raise UnsupportedQueryError(
        f"a {name} statement",
        "shardq runs SELECT, INSERT, UPDATE and DELETE statements; run schema changes "
        "and session commands on each shard directly",
    )


def _cte_names(statement: exp.Expr) -> set[str]:
    return {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}


def _table_name(node: exp.Table) -> str:
    return f"{node.db}.{node.name}" if node.db else node.name


def table_refs(statement: exp.Expr, config: Config) -> tuple[TableRef, ...]:
    """Return every declared table the statement reads or writes.

    CTE names and table-valued functions (``generate_series(...)``) are not
    tables. A table the configuration does not declare raises
    :class:`~shardq.errors.UndeclaredTableError`.
    """
    ctes = _cte_names(statement)
    refs = []
    for node in statement.find_all(exp.Table):
        if not isinstance(node.this, exp.Identifier):
            continue  # a table function such as generate_series(...)
        name = _table_name(node)
        if not node.db and name.lower() in ctes:
            continue
        table = config.table(name)
        refs.append(TableRef(table, (node.alias or node.name).lower(), node))
    return tuple(refs)


def analyze(parsed: Parsed, config: Config) -> Analysis:
    """Classify a parsed statement and resolve its tables against ``config``."""
    statement = parsed.expression
    return Analysis(parsed, _kind(statement), table_refs(statement, config))
