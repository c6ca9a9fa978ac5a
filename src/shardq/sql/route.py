"""Routing: the shards a statement must run on.

A statement goes to fewer shards than all only when that is provably
correct: the shard key of its one distributed table is pinned by an equality
or an ``IN`` list of constants (literals or bound parameters) that every row of
the answer must satisfy, i.e. a top-level ``AND`` term of the ``WHERE``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import ProgrammingError, UnsupportedQueryError
from shardq.placement import has_utc_offset, is_canonical_uuid, is_iso_date, text_pins
from shardq.sql.analyze import Analysis, StatementKind, TableRef, normalize, volatile_call
from shardq.sql.catalog import implicit_columns
from shardq.sql.colocation import joined_on_keys
from shardq.sql.parse import POSITIONAL_PREFIX, placeholder_value

if TYPE_CHECKING:
    from collections.abc import Iterator

    from shardq.config import Config
    from shardq.sql.catalog import Columns

__all__ = [
    "KeyTerm",
    "Route",
    "RouteKind",
    "find_key_terms",
    "insert_columns",
    "key_assignment",
    "moved_to",
    "pinning_placeholder",
    "place",
    "route",
    "row_shards",
    "written_table",
]


class RouteKind(enum.Enum):
    ALL = "all"  # every shard
    ANY = "any"  # any one shard: the statement reads only reference tables
    SHARDS = "shards"  # exactly the listed shards


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    shards: tuple[str, ...] = ()

    def resolve(self, all_shards: tuple[str, ...], any_choice: str) -> tuple[str, ...]:
        """Return the concrete shard names, ``any_choice`` standing for ANY."""
        if self.kind is RouteKind.ALL:
            return all_shards
        if self.kind is RouteKind.ANY:
            return (any_choice,)
        return self.shards


ALL = Route(RouteKind.ALL)
ANY = Route(RouteKind.ANY)


@dataclass(frozen=True, slots=True)
class KeyTerm:
    """A term that confines a statement's rows to the listed shard-key values.

    Each value is a constant expression: a literal, a cast of one, or a
    placeholder resolved against the parameters at execution time.
    """

    values: tuple[exp.Expr, ...]


# Casts that cannot change a value's canonical key (see shardq.placement): a
# string read as a uuid, date or text, a whole number read as an integer type.
_TEXT_CASTS = frozenset({"text", "varchar", "nvarchar"})
_INTEGER_CASTS = frozenset({"int", "smallint", "bigint", "integer", "decimal", "numeric"})


def _safe_cast(node: exp.Cast) -> bool:
    target = node.to.this.value.lower() if isinstance(node.to, exp.DataType) else ""
    inner = node.this
    if isinstance(inner, exp.Placeholder):
        # The bound value's own type may differ from the cast's: checked once
        # it is known (see constant_value). SQLAlchemy writes such casts.
        return target in _INTEGER_CASTS or (target in _TEXT_CASTS and not node.to.expressions)
    if isinstance(inner, exp.Literal) and inner.is_string:
        if target in _TEXT_CASTS:
            return not node.to.expressions  # varchar(3) would truncate
        if target == "date":
            return is_iso_date(inner.this)
        if target == "uuid":
            return is_canonical_uuid(inner.this)
        return False
    if isinstance(inner, exp.Literal | exp.Neg) and _integer_literal(inner):
        return target in _INTEGER_CASTS
    return False


def _integer_literal(node: exp.Expr) -> bool:
    if isinstance(node, exp.Neg):
        return _integer_literal(node.this)
    return isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit()


def _constant(node: exp.Expr) -> bool:
    if isinstance(node, exp.Cast):
        return _safe_cast(node)
    if isinstance(node, exp.Literal) and node.is_string and has_utc_offset(node.this):
        return False  # its value depends on the column's type (timestamp or timestamptz)
    if isinstance(node, exp.Neg | exp.Paren):
        return _constant(node.this)
    return isinstance(node, exp.Literal | exp.Placeholder)


class UnpinnedValue(ValueError):
    """A bound value whose cast may change which key it is (``%s::int`` given ``'7'``)."""


def constant_value(node: exp.Expr, params: object, percent_escapes: bool = False) -> object:
    """Evaluate a constant expression accepted by :func:`find_key_terms`.

    Raises:
        UnpinnedValue: a cast placeholder's value is not of the cast's kind.
    """
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Placeholder):
        value = placeholder_value(node.this, params)
        target = node.to.this.value.lower() if isinstance(node.to, exp.DataType) else ""
        integral = isinstance(value, int) and not isinstance(value, bool)
        if value is None or (integral if target in _INTEGER_CASTS else isinstance(value, str)):
            return value
        raise UnpinnedValue(f"{value!r} cast to {target}")
    if isinstance(node, exp.Cast | exp.Paren):
        return constant_value(node.this, params, percent_escapes)
    if isinstance(node, exp.Neg):
        value = constant_value(node.this, params, percent_escapes)
        if isinstance(value, int | Decimal):
            return -value
        raise ProgrammingError(f"cannot negate {value!r}")
    if isinstance(node, exp.Placeholder):
        return placeholder_value(node, params)
    assert isinstance(node, exp.Literal)
    if node.is_string:
        # With parameters, psycopg turns "%%" into "%" everywhere, strings included.
        return node.this.replace("%%", "%") if percent_escapes else node.this
    text = node.this
    return int(text) if text.isdigit() else Decimal(text)


def _is_key(node: exp.Expr, ref: TableRef, qualified_only: bool, dialect: str) -> bool:
    if (
        ref.renames_columns
        or not isinstance(node, exp.Column)
        or normalize(node.this, dialect) != ref.table.shard_key
    ):
        return False
    if node.table:
        return normalize(node.args["table"], dialect) == ref.alias
    return not qualified_only


def find_key_terms(
    where: exp.Expr | None, ref: TableRef, qualified_only: bool, dialect: str = "postgres"
) -> list[KeyTerm]:
    """Return the top-level AND terms of ``where`` that pin ``ref``'s shard key.

    >>> import sqlglot
    >>> from shardq.config import TableConfig
    >>> sql = "SELECT 1 FROM t WHERE a > 1 AND t.k IN (1, 2) AND k = 3"
    >>> w = sqlglot.parse_one(sql).args["where"]
    >>> ref = TableRef(TableConfig("t", shard_key="k"), "t", sqlglot.exp.to_table("t"))
    >>> [[v.sql() for v in t.values] for t in find_key_terms(w, ref, qualified_only=False)]
    [['1', '2'], ['3']]
    """
    if where is None:
        return []
    condition = where.this if isinstance(where, exp.Where) else where
    terms = []
    for term in condition.flatten() if isinstance(condition, exp.And) else [condition]:
        term = term.unnest()
        if isinstance(term, exp.EQ):
            left, right = term.this, term.expression
            if _is_key(left, ref, qualified_only, dialect) and _constant(right):
                terms.append(KeyTerm((right,)))
            elif _is_key(right, ref, qualified_only, dialect) and _constant(left):
                terms.append(KeyTerm((left,)))
        elif (
            isinstance(term, exp.In) and not term.args.get("query") and not term.args.get("unnest")
        ):
            values = term.expressions
            pinned = values and all(map(_constant, values))
            if pinned and _is_key(term.this, ref, qualified_only, dialect):
                terms.append(KeyTerm(tuple(values)))
    return terms


def _terms(analysis: Analysis, ref: TableRef) -> list[KeyTerm]:
    """The key terms of ``ref`` in the statement's WHERE (memoized on the analysis)."""
    memo_key = ("key-terms", id(ref.node))
    terms: list[KeyTerm] | None = analysis.memo.get(memo_key)
    if terms is None:
        where = analysis.parsed.expression.args.get("where")
        terms = find_key_terms(
            where, ref, qualified_only=len(analysis.refs) > 1, dialect=analysis.parsed.dialect
        )
        analysis.memo[memo_key] = terms
    return terms


def _shards_of(
    terms: list[KeyTerm], params: object, config: Config, key_type: str | None
) -> tuple[str, ...] | None:
    escapes = params is not None and config.dialect == "postgres"
    chosen: set[str] | None = None
    for term in terms:
        shards = set()
        for node in term.values:
            try:
                value = constant_value(node, params, escapes)
            except UnpinnedValue:
                return None  # the database may read it as another key value
            if value is None:
                continue  # key = NULL matches no row
            if isinstance(value, str) and not text_pins(value, key_type):
                return None  # the database may read this text as another key value
            try:
                shards.add(config.placement.shard_for(value))
            except ValueError:
                return None  # not a usable key value: run everywhere
        chosen = shards if chosen is None else chosen & shards
    if chosen is None:
        return None
    order = config.shard_names
    if not chosen:
        # The terms contradict each other: no row can match, any shard answers.
        return order[:1]
    return tuple(s for s in order if s in chosen)


def _read_route(analysis: Analysis, params: object, config: Config) -> Route:
    # The common case, a read of one distributed table, decided once per text:
    # only the key values change from call to call.
    single: tuple[list[KeyTerm], str | None] | None = analysis.memo.get("single-table-terms")
    if single is not None:
        shards = _shards_of(single[0], params, config, single[1])
        return ALL if shards is None else Route(RouteKind.SHARDS, shards)
    distributed = analysis.distributed
    statement = analysis.parsed.expression
    if (
        len(distributed) == 1
        and isinstance(statement, exp.Select)
        and distributed[0].node.parent_select is statement
    ):
        ref = distributed[0]
        analysis.memo["single-table-terms"] = (_terms(analysis, ref), ref.table.key_type)
    return _read_route_of(analysis, params, config)


def pinning_placeholder(analysis: Analysis) -> tuple[str, int | None, str | None] | None:
    """The one placeholder that pins a one-table read to one shard, if it has that shape.

    For ``SELECT ... FROM t WHERE k = %s AND ...`` (one distributed table,
    one key term, its value a bare placeholder): the placeholder's name, its
    position (None for a named one) and the key's declared type. A batch then
    routes each parameter set by that value alone, without the general path
    (:func:`route` gives the same answer).
    """
    distributed = analysis.distributed
    statement = analysis.parsed.expression
    if (
        analysis.kind is not StatementKind.READ
        or len(distributed) != 1
        or not isinstance(statement, exp.Select)
        or distributed[0].node.parent_select is not statement
    ):
        return None
    terms = _terms(analysis, distributed[0])
    if len(terms) != 1 or len(terms[0].values) != 1:
        return None
    node = terms[0].values[0]
    if not isinstance(node, exp.Placeholder):
        return None
    name = node.name
    digits = name[len(POSITIONAL_PREFIX) :]
    position = int(digits) if name.startswith(POSITIONAL_PREFIX) and digits.isdigit() else None
    return name, position, distributed[0].table.key_type


def _read_route_of(analysis: Analysis, params: object, config: Config) -> Route:
    distributed = analysis.distributed
    if not distributed:
        if analysis.reads_catalog:
            # Always the same shard: the shards' catalogs describe the same tables
            # under different OIDs, and reflection passes the OIDs one query
            # found to the next (SQLAlchemy's primary key after the table's OID).
            return Route(RouteKind.SHARDS, config.shard_names[:1])
        return ANY
    statement = analysis.parsed.expression
    if not isinstance(statement, exp.Select):
        return ALL
    if len(distributed) > 1:
        # Co-located tables joined on their keys share one key value per joined
        # row: a condition pinning any of them pins them all.
        if not joined_on_keys(analysis, config):
            return ALL
        terms = [term for ref in distributed for term in _terms(analysis, ref)]
        key_types = {ref.table.key_type for ref in distributed}
        # Differing declared types: no text spelling is known to read alike for all.
        key_type = key_types.pop() if len(key_types) == 1 else "mixed"
        shards = _shards_of(terms, params, config, key_type)
        return ALL if shards is None else Route(RouteKind.SHARDS, shards)
    ref = distributed[0]
    if ref.node.parent_select is not statement:
        return ALL
    shards = _shards_of(_terms(analysis, ref), params, config, ref.table.key_type)
    return ALL if shards is None else Route(RouteKind.SHARDS, shards)


def _insert_route(
    analysis: Analysis, params: object, config: Config, known: Columns | None
) -> Route:
    ref = _target_ref(analysis, _insert_table(analysis))
    if not ref.table.distributed:
        return _replicated_write(analysis, config, "an INSERT into a reference table")
    shards = set(row_shards(analysis, params, config, known))
    statement = analysis.parsed.expression
    _refuse_key_assignments(
        statement.args.get("conflict"), ref, analysis.parsed.dialect, "INSERT ... ON CONFLICT"
    )
    if len(shards) > 1 and config.dialect == "sqlite":
        raise UnsupportedQueryError(
            f"an INSERT whose rows belong to {len(shards)} SQLite shards",
            "SQLite cannot commit a write on several shards atomically (it has no two-phase "
            "commit); insert one shard's rows per statement (executemany routes each "
            "parameter set to its shard)",
        )
    # Rows for several shards: the planner splits the VALUES by shard (see
    # shardq.sql.split); the parts commit together (two-phase commit).
    return Route(RouteKind.SHARDS, tuple(sorted(shards)))


def _insert_table(analysis: Analysis) -> exp.Expr:
    target: exp.Expr = analysis.parsed.expression.this
    return target.this if isinstance(target, exp.Schema) else target


def insert_columns(analysis: Analysis, known: Columns | None = None) -> list[str]:
    """The columns an INSERT fills (normalized), in order.

    Without a column list, the values fill the table's columns in order:
    the first ones of ``known`` (the catalog), empty if it is not known.
    """
    statement = analysis.parsed.expression
    target = statement.this
    dialect = analysis.parsed.dialect
    if isinstance(target, exp.Schema):
        return [normalize(c.this, dialect) for c in target.expressions]
    ref = _target_ref(analysis, target)
    return implicit_columns(
        statement, (known or {}).get(ref.table.name, ()), fold=dialect == "sqlite"
    )


def row_shards(
    analysis: Analysis, params: object, config: Config, known: Columns | None = None
) -> list[str]:
    """The shard of each row of an INSERT ... VALUES into a distributed table, in order."""
    statement = analysis.parsed.expression
    dialect = analysis.parsed.dialect
    ref = _target_ref(analysis, _insert_table(analysis))
    values = statement.expression
    if not isinstance(values, exp.Values):
        raise UnsupportedQueryError(
            "INSERT ... SELECT", "the rows it inserts are not known before it runs"
        )
    columns = insert_columns(analysis, known)
    key = ref.table.shard_key
    if key not in columns:
        raise UnsupportedQueryError(
            "an INSERT without the shard key in its column list",
            f"shardq places rows by {ref.table.name}.{key}; name the columns, including {key}",
        )
    position = columns.index(key)
    shards = []
    for row in values.expressions:
        node = row.expressions[position] if isinstance(row, exp.Tuple) else row
        if not _constant(node):
            raise UnsupportedQueryError(
                f"INSERT with {node.sql(dialect)!r} as the shard key",
                "the shard key of an inserted row must be a literal or a bound parameter",
            )
        try:
            value = constant_value(node, params, params is not None and dialect == "postgres")
        except UnpinnedValue as exc:
            raise UnsupportedQueryError(
                f"INSERT with {node.sql(dialect)!r} as the shard key",
                f"the value bound ({exc}) may become another key once cast; bind a value "
                "of the cast's type",
            ) from None
        shards.append(place(value, ref, config, "INSERT with"))
    return shards


def place(value: object, ref: TableRef, config: Config, construct: str) -> str:
    """The shard of a row of ``ref``'s table whose key is ``value``.

    ``construct`` begins the refusal of a text the database may read as
    another value than placement does.
    """
    if isinstance(value, str) and not text_pins(value, ref.table.key_type):
        raise UnsupportedQueryError(
            f"{construct} the text {value!r} as a {ref.table.key_type} shard key",
            "the database may read it as another value than placement does; "
            "write it in ISO form or bind a typed value",
        )
    try:
        return config.placement.shard_for(value)
    except ValueError as exc:
        raise ProgrammingError(f"cannot place a row in {ref.table.name}: {exc}") from None


def _target_ref(analysis: Analysis, node: exp.Expr) -> TableRef:
    for ref in analysis.refs:
        if ref.node is node:
            return ref
    raise UnsupportedQueryError(
        f"a write to {node.sql(analysis.parsed.dialect)!r}", "it is not a declared table"
    )


def _key_assignments(holder: exp.Expr, ref: TableRef, dialect: str) -> Iterator[exp.EQ]:
    """The assignments of a SET list that set the shard key (alone or in a tuple)."""
    for assignment in holder.expressions:
        if not isinstance(assignment, exp.EQ):
            continue
        target = assignment.this
        columns = target.expressions if isinstance(target, exp.Tuple) else [target]
        if any(
            isinstance(column, exp.Column)
            and normalize(column.this, dialect) == ref.table.shard_key
            for column in columns
        ):
            yield assignment


def _refuse_key_assignments(
    holder: exp.Expr | None, ref: TableRef, dialect: str, construct: str
) -> None:
    """Refuse ``SET key = ...`` (also in a tuple assignment or an upsert)."""
    if holder is not None and next(_key_assignments(holder, ref, dialect), None) is not None:
        raise UnsupportedQueryError(
            f"{construct} that sets the shard key",
            "a changed key may belong to another shard; delete and re-insert the row",
        )


def written_table(analysis: Analysis) -> TableRef | None:
    """The declared table a write writes, if the statement is a write."""
    if not analysis.kind.is_write or analysis.kind is StatementKind.SCHEMA:
        return None
    target = analysis.parsed.expression.this
    node = target.this if isinstance(target, exp.Schema) else target
    return next((ref for ref in analysis.refs if ref.node is node), None)


def _replicated_write(analysis: Analysis, config: Config, construct: str) -> Route:
    """Every shard for a write to a reference table, when every copy stays the same."""
    if config.dialect == "sqlite" and len(config.shards) > 1:
        raise UnsupportedQueryError(
            construct,
            "a reference table is copied on every shard, and SQLite cannot commit a write on "
            "several shards atomically (it has no two-phase commit); write each copy directly",
        )
    statement = analysis.parsed.expression
    if analysis.distributed:
        raise UnsupportedQueryError(
            f"{construct} that reads a distributed table",
            "each shard would read only its own rows of it, so the copies would differ",
        )
    call = volatile_call(statement)
    if call is not None:
        raise UnsupportedQueryError(
            f"{construct} with {call.sql(analysis.parsed.dialect)}",
            "each shard would compute another value, so the copies would differ; bind "
            "the value as a parameter",
        )
    return ALL


def key_assignment(statement: exp.Expr, ref: TableRef, dialect: str) -> exp.Expr | None:
    """The value an UPDATE assigns to the shard key, or None if it leaves the key alone.

    Raises:
        UnsupportedQueryError: the key is assigned in a tuple assignment.
    """
    for assignment in _key_assignments(statement, ref, dialect):
        if isinstance(assignment.this, exp.Tuple):
            raise UnsupportedQueryError(
                "an UPDATE that sets the shard key in a tuple assignment",
                "shardq moves a row to the shard of its new key when the key is "
                "set on its own (SET key = <value>); write it so",
            )
        value: exp.Expr = assignment.expression
        return value
    return None


def moved_to(analysis: Analysis, params: object, config: Config) -> str | None:
    """The shard of the key an UPDATE sets, or None if it leaves the key alone.

    Raises:
        UnsupportedQueryError: the new key is not one value known before the
            statement runs (``SET key = key + 1``: each row may go elsewhere).
    """
    statement = analysis.parsed.expression
    dialect = analysis.parsed.dialect
    ref = _target_ref(analysis, statement.this)
    node = key_assignment(statement, ref, dialect)
    if node is None:
        return None
    construct = f"an UPDATE that sets the shard key to {node.sql(dialect)}"
    if not _constant(node):
        raise UnsupportedQueryError(
            construct,
            "each row could move to another shard; shardq moves rows whose new key is one "
            "literal or bound parameter (SET key = <value>); delete and re-insert the rows",
        )
    try:
        value = constant_value(node, params, params is not None and dialect == "postgres")
    except UnpinnedValue as exc:
        raise UnsupportedQueryError(
            construct,
            f"the value bound ({exc}) may become another key once cast; bind a value of the "
            "cast's type",
        ) from None
    return place(value, ref, config, "an UPDATE setting")


def _modify_route(analysis: Analysis, params: object, config: Config) -> Route:
    statement = analysis.parsed.expression
    ref = _target_ref(analysis, statement.this)
    verb = analysis.kind.name
    if not ref.table.distributed:
        return _replicated_write(analysis, config, f"{verb} of a reference table")
    if len(analysis.distributed) > 1:
        raise UnsupportedQueryError(
            f"{verb} that reads another distributed table",
            "only the written table and reference tables are known to be on its shard",
        )
    shards = _shards_of(_terms(analysis, ref), params, config, ref.table.key_type)
    if analysis.kind is StatementKind.UPDATE:
        target = moved_to(analysis, params, config)
        if target is not None and shards != (target,):
            if config.dialect == "sqlite":
                raise UnsupportedQueryError(
                    "an UPDATE that sets the shard key to a value of another shard",
                    "the row would move between SQLite shards, which SQLite cannot commit "
                    "atomically (it has no two-phase commit); delete the row and insert it "
                    "again with its new key",
                )
            # The rows move (see shardq.sql.move): every shard they may be on, and the
            # shard of the new key.
            sources = config.shard_names if shards is None else shards
            return Route(RouteKind.SHARDS, tuple(sorted({*sources, target})))
    if (shards is None or len(shards) > 1) and config.dialect == "sqlite":
        raise UnsupportedQueryError(
            f"{verb} without a {ref.table.name}.{ref.table.shard_key} = <value> condition "
            "that confines it to one shard",
            "it writes on several SQLite shards, which SQLite cannot commit atomically (it "
            "has no two-phase commit); write one shard's rows per statement",
        )
    # Several shards: each row is on one of them, so each runs the statement as
    # written; the engine commits them together (two-phase commit).
    return ALL if shards is None else Route(RouteKind.SHARDS, shards)


def route(
    analysis: Analysis, params: object, config: Config, columns: Columns | None = None
) -> Route:
    """Return where the statement runs, given its bound parameters.

    ``columns`` (the catalog) tells which column an INSERT without a column list puts
    each value in.
    """
    if analysis.kind is StatementKind.READ:
        return _read_route(analysis, params, config)
    if analysis.kind is StatementKind.INSERT:
        return _insert_route(analysis, params, config, columns)
    if analysis.kind is StatementKind.SCHEMA:
        return ALL  # the declared tables exist on every shard
    return _modify_route(analysis, params, config)
