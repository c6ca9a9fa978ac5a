"""INSERT ... SELECT into a distributed table: on each shard, or routed by shardq.

One database's ``INSERT INTO t SELECT ...`` inserts the rows its SELECT
computes. Across shards there are two exact ways to do that:

* **co-located**: the SELECT reads distributed tables co-located with ``t``
  (``colocate_with``), plus reference tables, keeps each row it computes on
  its source rows' shard (:func:`~shardq.sql.locality.row_preserving`: no
  LIMIT, groups and DISTINCT keep the shard key, ...), and gives ``t``'s
  shard key the value of a source table's shard key, unchanged. Each row it
  computes then belongs to the shard it is computed on: the statement runs
  as written on every shard (or those its WHERE pins, routed like a read),
  and the shards commit together.
* **routed**: otherwise shardq runs the SELECT as a read of its own, merged
  exactly (ORDER BY, LIMIT, aggregates, ...), and inserts each row it returns
  on the shard its key value belongs to, in batches: one multi-row
  ``INSERT ... VALUES`` per shard and batch (:class:`Feed`, executed by
  :mod:`shardq.execute.feed`), all in one transaction.

A co-located SELECT with ORDER BY whose INSERT has RETURNING is routed too:
one database returns the rows in the order the SELECT gives them, which the
shards' concatenated RETURNING rows would not follow; routed, shardq puts
them back in that order.

With one shard the statement runs as written. SQLite shards cannot commit a
write on several shards together: there a co-located INSERT ... SELECT runs
only when its WHERE pins it to one shard, and a routed one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.analyze import Analysis, StatementKind, analyze
from shardq.sql.colocation import colocation_group, key_relation
from shardq.sql.dialects import generate
from shardq.sql.locality import row_preserving
from shardq.sql.parse import parse
from shardq.sql.regenerate import for_psycopg, regenerate
from shardq.sql.rewrite import positional_as_named
from shardq.sql.route import (
    ALL,
    Route,
    RouteKind,
    _refuse_key_assignments,
    insert_columns,
    route,
    written_table,
)

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.sql.analyze import TableRef
    from shardq.sql.catalog import Columns
    from shardq.sql.locality import Catalog

__all__ = ["MAX_ROWS_PER_INSERT", "Feed", "InsertSelect", "Inserts", "plan_insert_select"]

#: Rows per routed ``INSERT ... VALUES``: large enough that round trips do not
#: dominate, small enough that a batch of every shard fits in little memory.
MAX_ROWS_PER_INSERT = 1000
# PostgreSQL's protocol counts a statement's parameters in 16 bits.
_MAX_PARAMS = 65535
_VALUE_PREFIX = "_shardq_v"
_KEPT = 8  # statements kept per INSERT ... SELECT text


class Inserts:
    """The per-shard ``INSERT ... VALUES`` of a routed INSERT ... SELECT.

    The statement as written, its SELECT replaced by a VALUES list of
    placeholders (``_shardq_v<row>_<column>``) and its column list made
    explicit; its other clauses (``ON CONFLICT``, ``RETURNING``) are kept,
    with their parameters. Generated once per row count and width (a few
    kept): a routed INSERT sends full batches but for the last of each shard.
    """

    def __init__(
        self, statement: exp.Insert, columns: list[exp.Identifier], source: str, dialect: str
    ):
        self._statement = statement
        self._columns = columns
        self._source = source
        self._dialect = dialect
        self._made: dict[tuple[int, int], tuple[str, tuple[str, ...]]] = {}
        self._plain: dict[int, bool] = {}  # whether psycopg reads a width's text as written

    def statement(self, rows: int, width: int, escaped: bool) -> tuple[str, tuple[str, ...]]:
        """The INSERT of ``rows`` rows of the first ``width`` columns, and its value names.

        ``escaped``: the statement's strings were written for psycopg with
        parameters (``%%``), see :func:`~shardq.sql.regenerate.for_psycopg`.
        """
        found = self._made.get((rows, width))
        if found is not None:
            return found
        names = tuple(f"{_VALUE_PREFIX}{r}_{c}" for r in range(rows) for c in range(width))
        tuples = [
            exp.Tuple(
                expressions=[exp.Placeholder(this=n) for n in names[r * width : (r + 1) * width]]
            )
            for r in range(rows)
        ]
        insert = self._statement.copy()
        insert.set("with_", None)
        table = insert.this.this if isinstance(insert.this, exp.Schema) else insert.this
        insert.set(
            "this", exp.Schema(this=table, expressions=[c.copy() for c in self._columns[:width]])
        )
        insert.set("expression", exp.Values(expressions=tuples))
        if rows == 1:
            words = frozenset({"values", *(c.name.lower() for c in self._columns)})
            sql = regenerate(insert, self._source, self._dialect, extra=words)
            plain = sql
            if self._dialect == "postgres":
                sql = for_psycopg(sql, strings_escaped=escaped)
            self._plain[width] = plain == sql
        else:
            # More rows add only placeholders: the words are the one-row statement's
            # (checked once), and so are psycopg's escapes, if it has none.
            self.statement(1, width, escaped)
            sql = generate(insert, self._dialect)
            if self._dialect == "postgres" and not self._plain[width]:
                sql = for_psycopg(sql, strings_escaped=escaped)
        self._made[(rows, width)] = (sql, names)
        if len(self._made) > _KEPT:  # the last batches' sizes vary: keep a few texts only
            del self._made[next(k for k in self._made if k[0] > 1)]
        return sql, names

    @property
    def widest(self) -> int:
        """How many columns the target list has (the most a selected row may give)."""
        return len(self._columns)


@dataclass(frozen=True, slots=True)
class Feed:
    """An INSERT ... SELECT whose selected rows shardq routes to their shards.

    Attributes:
        select: the SELECT, as a read of its own (planned and merged as one).
        params: the parameters of the SELECT and of the INSERT's other
            clauses, by name (positional ones as ``_pN``).
        target: the table written.
        key: the position of its shard key among the selected columns.
        explicit: whether the INSERT names its columns (then a selected row
            must have exactly as many; else it fills the first ones).
        returning: whether the INSERT has RETURNING.
        inserts: the per-shard INSERT statements.
        escaped: whether the statement's strings hold ``%%`` (PostgreSQL).
    """

    select: str
    params: object
    target: TableRef
    key: int
    explicit: bool
    returning: bool
    inserts: Inserts = field(compare=False)
    escaped: bool = False

    def rows_per_insert(self, width: int) -> int:
        """How many rows one INSERT carries, under the protocol's limit on parameters."""
        own = len(self.params) if isinstance(self.params, dict) else 0
        return max(1, min(MAX_ROWS_PER_INSERT, (_MAX_PARAMS - own) // max(width, 1)))


@dataclass(frozen=True, slots=True)
class InsertSelect:
    """How an INSERT ... SELECT runs: where, in words, and the feed if shardq routes rows."""

    route: Route
    strategy: str
    feed: Feed | None = None


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the text alone says about an INSERT ... SELECT (memoized on its analysis)."""

    select: str
    analysis: Analysis
    key: int | None  # the key's position among the target columns, None if not among them
    columns: list[exp.Identifier]
    explicit: bool
    # None when co-located; else why not, in words (for EXPLAIN).
    not_colocated: str | None
    inserts: Inserts  # its statements made once, for every execution of the text


def _select_body(statement: exp.Insert) -> exp.Expr | None:
    body = statement.expression
    while isinstance(body, exp.Subquery) and not body.args.get("alias"):
        body = body.this
    return body if isinstance(body, exp.Select | exp.SetOperation) else None


def plan_insert_select(
    analysis: Analysis,
    params: object,
    config: Config,
    catalog: Catalog | None,
    columns: Columns,
) -> InsertSelect | None:
    """How ``INSERT ... SELECT`` into a distributed table runs; None for another statement.

    Raises:
        UnsupportedQueryError: it cannot run exactly (see the module docstring).
    """
    statement = analysis.parsed.expression
    if analysis.kind is not StatementKind.INSERT or not isinstance(statement, exp.Insert):
        return None
    body = _select_body(statement)
    if body is None:
        return None
    ref = written_table(analysis)
    assert ref is not None  # an INSERT's target is a declared table
    if not ref.table.distributed:
        return None  # every shard runs it, or it is refused: see route._replicated_write
    dialect = analysis.parsed.dialect
    _refuse_key_assignments(statement.args.get("conflict"), ref, dialect, "INSERT ... ON CONFLICT")
    if len(config.shards) == 1:
        return InsertSelect(ALL, "an INSERT ... SELECT on the one shard, as written")
    escaped = params is not None and dialect == "postgres"
    shape = _shape(analysis, body, ref, config, catalog, columns, escaped)
    if shape.key is None:
        key = ref.table.shard_key
        raise UnsupportedQueryError(
            "an INSERT ... SELECT without the shard key in its column list",
            f"shardq places rows by {ref.table.name}.{key}; name the columns, including {key}",
        )
    bound = positional_as_named(params, analysis.parsed.positional)
    if dialect == "postgres" and bound is None:
        bound = {}
    returning = statement.args.get("returning") is not None
    if shape.not_colocated is None:
        where = route(shape.analysis, bound, config)
        shards = config.shard_names if where.kind is RouteKind.ALL else where.shards
        if len(shards) > 1 and dialect == "sqlite":
            raise _sqlite_refusal(
                f"an INSERT ... SELECT that writes on {len(shards)} SQLite shards"
            )
        return InsertSelect(
            where,
            "an INSERT ... SELECT on each shard that holds the rows it selects (the tables "
            "read are co-located with the target and the shard key is carried through), "
            "committed on all of them or none (two-phase commit)",
        )
    if dialect == "sqlite":
        raise _sqlite_refusal(
            f"an INSERT ... SELECT whose rows shardq would route ({shape.not_colocated})"
        )
    if returning and statement.args.get("conflict") is not None:
        raise UnsupportedQueryError(
            "INSERT ... SELECT ... ON CONFLICT ... RETURNING whose rows shardq routes",
            "a shard returns no row for a row it skipped, so shardq could not put the "
            "returned rows in the order of the selected rows; drop RETURNING, or make the "
            "SELECT co-located with the target",
        )
    feed = Feed(
        shape.select, bound, ref, shape.key, shape.explicit, returning, shape.inserts, escaped
    )
    strategy = (
        f"the SELECT runs first as a query of its own ({shape.not_colocated}); each row it "
        f"returns is inserted on the shard of its {ref.table.name}.{ref.table.shard_key}, "
        f"up to {MAX_ROWS_PER_INSERT} rows per INSERT, all committed on every shard or none "
        "(two-phase commit)"
    )
    return InsertSelect(ALL, strategy, feed)


def _sqlite_refusal(construct: str) -> UnsupportedQueryError:
    return UnsupportedQueryError(
        construct,
        "SQLite cannot commit a write on several shards atomically (it has no two-phase "
        "commit); pin the SELECT to one shard with a shard-key condition, or insert one "
        "shard's rows per statement",
    )


def _shape(
    analysis: Analysis,
    body: exp.Expr,
    ref: TableRef,
    config: Config,
    catalog: Catalog | None,
    columns: Columns,
    escaped: bool,
) -> _Shape:
    memo_key = ("insert-select", escaped)
    found: _Shape | None = analysis.memo.get(memo_key)
    if found is not None:
        return found
    statement = analysis.parsed.expression
    assert isinstance(statement, exp.Insert)
    dialect = analysis.parsed.dialect
    select = body.copy()
    with_ = statement.args.get("with_")
    if with_ is not None and not select.args.get("with_"):
        select.set("with_", with_.copy())  # WITH ... INSERT ...: the SELECT reads the CTEs
    text = regenerate(select, analysis.parsed.source, dialect)
    if dialect == "postgres":
        # Sent with parameters always, so that psycopg reads every "%%" alike.
        text = for_psycopg(text, strings_escaped=escaped)
    selected = analyze(parse(text, dialect), config)
    named = insert_columns(analysis)
    if named:
        target = statement.this
        assert isinstance(target, exp.Schema)
        identifiers = [
            c.this.copy() if isinstance(c, exp.Column) else c.copy() for c in target.expressions
        ]
        names, explicit = named, True
    else:
        known = columns.get(ref.table.name, ())
        fold = dialect == "sqlite"
        names = [c.name.lower() if fold else c.name for c in known]
        identifiers = [exp.to_identifier(c.name, quoted=True) for c in known]
        explicit = False
        if not names:
            raise UnsupportedQueryError(
                f"an INSERT ... SELECT into {ref.table.name} without a column list",
                "shardq could not read the table's columns, so it cannot tell which selected "
                f"column is the shard key; name the columns, including {ref.table.shard_key}",
            )
    key_name = ref.table.shard_key
    key = names.index(key_name) if key_name in names else None
    why = None if key is None else _not_colocated(selected, ref, key, config, catalog, statement)
    inserts = Inserts(statement, identifiers, analysis.parsed.source, dialect)
    shape = _Shape(text, selected, key, identifiers, explicit, why, inserts)
    analysis.memo[memo_key] = shape
    return shape


def _not_colocated(
    selected: Analysis,
    ref: TableRef,
    key: int,
    config: Config,
    catalog: Catalog | None,
    insert: exp.Insert,
) -> str | None:
    """Why the SELECT's rows may not all belong to the shards that compute them; None if they do.

    >>> from shardq.config import load_config
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}], "tables": {
    ...     "t": {"shard_key": "k"}, "u": {"shard_key": "k", "colocate_with": "t"},
    ...     "x": {"shard_key": "k"}}})
    >>> def why(sql):
    ...     parsed = parse(sql, "sqlite")
    ...     insert = parsed.expression
    ...     selected = analyze(parse(insert.expression.sql("sqlite"), "sqlite"), cfg)
    ...     ref = written_table(analyze(parsed, cfg))
    ...     return _not_colocated(selected, ref, 0, cfg, None, insert)
    >>> why("INSERT INTO u (k, v) SELECT k, v FROM t WHERE v > 1") is None
    True
    >>> why("INSERT INTO u (k, v) SELECT k + 1, v FROM t")
    'the key is computed, not a source table key'
    >>> why("INSERT INTO u (k, v) SELECT k, v FROM x")
    'x is not co-located with u'
    >>> why("INSERT INTO u (k, v) SELECT k, count(*) FROM t GROUP BY v, k") is None
    True
    >>> why("INSERT INTO u (k, v) SELECT min(k), v FROM t GROUP BY v")
    'aggregates in the SELECT over distributed tables, not grouped by the shard key'
    """
    statement = selected.parsed.expression
    dialect = selected.parsed.dialect
    if not isinstance(statement, exp.Select):
        return f"a {statement.key.upper()} of rows"
    if statement.args.get("order") is not None and insert.args.get("returning") is not None:
        return "RETURNING rows in the order of its ORDER BY"
    if not selected.distributed:
        return "it reads no distributed table"
    try:
        relations = row_preserving(selected, config, catalog, "the SELECT")
    except UnsupportedQueryError as exc:
        return exc.construct
    group = colocation_group(config, ref.table.name)
    for relation in relations:
        if relation.group != group:
            return f"{relation.alias} is not co-located with {ref.table.name}"
    items = statement.expressions
    if any(
        isinstance(item, exp.Star) or (isinstance(item, exp.Column) and item.is_star)
        for item in items
    ):
        return "its select list has *"
    if key >= len(items):
        return "the key is not among the selected columns"
    item = items[key]
    value = item.this if isinstance(item, exp.Alias) else item
    if key_relation(value, relations, dialect) is None:
        return "the key is computed, not a source table key"
    return None
