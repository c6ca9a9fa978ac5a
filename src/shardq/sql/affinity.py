"""SQLite's typing of expressions: affinity, collation and result names.

SQLite computes with *affinities* and *collations* that belong to
expressions, not values: a column has its declared type's affinity and its
declared collation, ``CAST`` gives its type's affinity, ``x COLLATE c``
gives an explicit collation that wins over a declared one, and most other
expressions have neither. To merge on SQLite shards exactly as one SQLite
database computes, shardq gives each merged column the affinity and the
collation of the expression it came from (see :mod:`shardq.sql.rewrite.sqlite`).

The rules followed are those of SQLite's datatype page (sections 3.2, 4.2 and
7.1) and of ``sqlite3ExprCollSeq``: a collation is carried up through CAST,
parentheses and unary plus, and an *explicit* collation also through
operators and function arguments (the leftmost wins); a declared one is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.sql.analyze import normalize
from shardq.sql.dialects import UnaryPlus, cast_affinity, sqlite_affinity

if TYPE_CHECKING:
    from shardq.sql.analyze import Analysis
    from shardq.sql.catalog import ColumnInfo, Columns

__all__ = ["Collation", "Resolver", "collation_name", "from_sources", "shippable"]


@dataclass(frozen=True, slots=True)
class Collation:
    """An expression's collation, and whether a COLLATE clause gave it."""

    name: str = "binary"
    explicit: bool = False


_BINARY = Collation()


def _explicit(node: exp.Expr) -> Collation | None:
    """The leftmost explicit COLLATE of ``node``, outside subqueries, if any."""
    if isinstance(node, exp.Collate):
        return Collation(collation_name(node), True)
    if isinstance(node, exp.Subquery | exp.Select | exp.Exists):
        return None
    for child in node.iter_expressions():
        found = _explicit(child)
        if found is not None:
            return found
    return None


def collation_name(node: exp.Collate) -> str:
    """The collation ``x COLLATE name`` names, lower case, unquoted."""
    name = node.expression
    if isinstance(name, exp.Column | exp.Identifier | exp.Literal | exp.Var):
        return str(name.name).lower()
    return str(name.sql()).strip('"').lower()


class Resolver:
    """Resolves the columns of one SELECT against the catalog.

    ``sources`` maps each alias in the SELECT's FROM (lower case) to the
    columns of its table, in order, when the table is declared and known.
    """

    def __init__(self, select: exp.Select, analysis: Analysis, columns: Columns):
        self.sources: dict[str, tuple[ColumnInfo, ...] | None] = {}
        statement = analysis.parsed.expression
        # ``select`` may be a rewritten copy of the statement: its tables are
        # found by the names the query uses for them.
        refs = {r.alias.lower(): r for r in analysis.refs if r.node.parent_select is statement}
        refs.update((r.alias.lower(), r) for r in analysis.refs if r.node.parent_select is select)
        for source in from_sources(select):
            alias = source.alias_or_name.lower()
            found = None
            if isinstance(source, exp.Table):
                ref = refs.get(alias)
                if ref is not None and not ref.renames_columns:
                    found = columns.get(ref.table.name)
            self.sources[alias] = found

    def column(self, node: exp.Column) -> ColumnInfo | None:
        """The declared column ``node`` names, if it is one of the FROM's tables'."""
        name = node.name.lower()
        table = normalize(node.args.get("table"), "sqlite") if node.table else None
        candidates = [self.sources.get(table)] if table is not None else self.sources.values()
        for columns in candidates:
            for info in columns or ():
                if info.name.lower() == name:
                    return info
        return None

    def has_input_column(self, name: str) -> bool | None:
        """Whether the FROM has a column ``name`` (None: some source is not known)."""
        if any(columns is None for columns in self.sources.values()):
            return None
        lowered = name.lower()
        return any(i.name.lower() == lowered for cs in self.sources.values() for i in cs or ())

    def affinity(self, node: exp.Expr) -> str:
        """The affinity of ``node``'s value: INTEGER, TEXT, BLOB (none), REAL or NUMERIC."""
        while isinstance(node, exp.Paren | exp.Collate):
            node = node.this
        if isinstance(node, exp.Column):
            info = self.column(node)
            return sqlite_affinity(info.type) if info is not None else "BLOB"
        if isinstance(node, exp.Cast) and isinstance(node.to, exp.DataType):
            return cast_affinity(node.to)
        return "BLOB"

    def collation(self, node: exp.Expr) -> Collation:
        """The collation comparisons of ``node`` use (see the module docstring)."""
        explicit = _explicit(node)
        if explicit is not None:
            return explicit
        while isinstance(node, exp.Paren | exp.Cast | UnaryPlus):
            node = node.this
        if isinstance(node, exp.Column):
            info = self.column(node)
            if info is not None:
                return Collation(info.collation, False)
        return _BINARY

    def name(self, item: exp.Expr, text: str | None) -> str:
        """The name SQLite gives the result column of select-list ``item``.

        An alias as written; a column by its declared name; anything else by
        its ``text`` as written.
        """
        if isinstance(item, exp.Alias):
            return str(item.alias)
        inner = item
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if isinstance(inner, exp.Column) and isinstance(inner.this, exp.Identifier):
            info = self.column(inner)
            return info.name if info is not None else str(inner.name)
        return text if text is not None else item.sql("sqlite")


def from_sources(select: exp.Select) -> list[exp.Expr]:
    """The relations in ``select``'s FROM and joins, in order."""
    from_ = select.args.get("from_") or select.args.get("from")
    sources = [from_.this] if from_ is not None else []
    sources += [join.this for join in select.args.get("joins") or []]
    return sources


def shippable(select: exp.Select, analysis: Analysis, columns: Columns) -> bool:
    """Whether ``select``'s rows compare the same when shipped back as parameters.

    On SQLite a parameter has no affinity and the BINARY collation: so must
    every column of a subquery whose rows shardq ships back in its place.
    """
    if not isinstance(select, exp.Select):
        return False
    resolver = Resolver(select, analysis, columns)
    for item in select.expressions:
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Star) or (
            isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
        ):
            return False
        if isinstance(node, exp.Column) and resolver.column(node) is None:
            return False  # a column of a derived table: its affinity is not known here
        if resolver.affinity(node) != "BLOB" or resolver.collation(node) != _BINARY:
            return False
    return True
