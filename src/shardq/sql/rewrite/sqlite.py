"""SQLite: partial aggregates on the shards, the final step computed by SQLite itself.

On SQLite shards every value a grouped query computes after the merge must
be the value, and the Python type, one SQLite database computes: SQLite's
arithmetic (``count(*) * 1.0 / 3`` is a float), its functions (``round``,
``typeof``, ``julianday``, ...), its collations (``GROUP BY name COLLATE
NOCASE``) and its affinities (``HAVING name > 5`` compares as text when
``name`` is a TEXT column). So the final step is not re-implemented: each
shard computes per group its key and partial aggregates, the merge loads
those rows into a table of an in-memory SQLite database whose columns carry
the affinity and collation of the expressions they came from, and runs
there the query as written over that table, each aggregate replaced by the
aggregate of its partials::

    SELECT name COLLATE NOCASE AS n, avg(x) * 2, count(*) FROM ev GROUP BY 1 HAVING n > 'b'

runs on every shard as::

    SELECT name COLLATE NOCASE AS _shardq_g0, TOTAL(x) AS _shardq_a0, COUNT(x) AS _shardq_a1,
           COUNT(*) AS _shardq_a2 FROM ev GROUP BY name COLLATE NOCASE

and the merge runs, over the table ``_shardq_p`` of those rows::

    SELECT _shardq_g0 COLLATE NOCASE AS n, TOTAL(_shardq_a0) / SUM(_shardq_a1) * 2 AS
    "avg(x) * 2", SUM(_shardq_a2) AS "count(*)" FROM _shardq_p
    GROUP BY _shardq_g0 COLLATE NOCASE HAVING n > 'b'

count, sum, total, avg, min, max and group_concat decompose (also with
FILTER), and with DISTINCT one argument (its distinct values are gathered:
the shards also group by it). A *bare column* (neither grouped nor
aggregated) takes, as SQLite documents, its value from the row holding the
query's one min() or max(): each shard sends its own such row's value, and
the final step picks the shard row holding the overall min or max, so the
answer is exact. A bare column in a query without exactly one min() or max()
comes from an arbitrary row and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import ProgrammingError, UnsupportedQueryError
from shardq.merge.steps import FinalStep
from shardq.sql.analyze import is_aggregate, normalize
from shardq.sql.regenerate import regenerate
from shardq.sql.rewrite.names import item_texts

if TYPE_CHECKING:
    from shardq.sql.affinity import Resolver

__all__ = ["TABLE", "finalize"]

#: The table of partial rows the final step reads.
TABLE = "_shardq_p"
# Words the final statement adds to the query's own.
_FINAL_WORDS = frozenset(
    {"total", "sum", "_shardq_p", "collate", "distinct", "min", "max", "coalesce"}
)

_NAMES = {"groupconcat": "group_concat"}
_NOT_DECOMPOSABLE = (
    "its per-shard results cannot be combined into the exact answer; pin the query to "
    "one shard with a shard-key condition"
)


@dataclass
class _Finalizer:
    select: exp.Select
    resolver: Resolver
    shard_items: list[exp.Expr] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # column definitions of the table
    shard_groups: list[exp.Expr] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # key text -> its column
    # The key's text without its COLLATE -> its column.
    collated: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)  # shard expression text -> its column
    bare: list[str] = field(default_factory=list)
    # The distinct min() and max() aggregates (SQLite counts one written twice once).
    min_max: set[str] = field(default_factory=set)

    def text(self, node: exp.Expr) -> str:
        return node.sql("sqlite")

    def add_column(
        self, prefix: str, node: exp.Expr, typed: bool, like: exp.Expr | None = None
    ) -> str:
        """A column of the table holding ``node`` as each shard computes it.

        The column has ``node``'s affinity if ``typed``, and the collation of
        ``like`` (min and max compare under their argument's), else ``node``'s.
        """
        text = f"{prefix}:{self.text(node)}"
        found = self.seen.get(text)
        if found is not None:
            return found
        name = f"_shardq_{prefix}{sum(c.startswith(f'_shardq_{prefix}') for c in self.columns)}"
        self.seen[text] = name
        self.shard_items.append(exp.alias_(node.copy(), name))
        definition = name
        affinity = self.resolver.affinity(node) if typed else "BLOB"
        if affinity != "BLOB":
            definition += f" {affinity}"
        collation = self.resolver.collation(like if like is not None else node)
        if not collation.explicit and collation.name != "binary":
            definition += f" COLLATE {collation.name.upper()}"
        self.columns.append(definition)
        return name

    def reference(self, name: str, node: exp.Expr) -> exp.Expr:
        """The column ``name`` standing for ``node``, with ``node``'s explicit collation."""
        column: exp.Expr = exp.column(name)
        collation = self.resolver.collation(node)
        if collation.explicit:
            column = exp.Collate(this=column, expression=exp.var(collation.name.upper()))
        return column

    # -- the group key

    def add_group(self, term: exp.Expr) -> None:
        name = self.add_column("g", term, typed=True)
        self.shard_groups.append(term.copy())
        self.keys.setdefault(self.text(term), name)
        self.collated.setdefault(self.text(_strip_collate(term)), name)

    # -- aggregates

    def aggregate(self, node: exp.Expr) -> exp.Expr:
        agg, condition = (node.this, node.expression) if isinstance(node, exp.Filter) else (
            node, None)  # fmt: skip
        name = str(agg.this).lower() if isinstance(agg, exp.Anonymous) else _NAMES.get(
            agg.key, agg.key)  # fmt: skip
        if isinstance(agg.this, exp.Order) or any(
            isinstance(a, exp.Order) for a in agg.expressions
        ):
            # group_concat(x, ',' ORDER BY y) (SQLite 3.44): each shard would
            # order its own values only, and their concatenation would not be.
            raise UnsupportedQueryError(
                f"the aggregate {self.text(node)} across shards",
                "its ORDER BY orders the values of each shard's partial only; " + _NOT_DECOMPOSABLE,
            )
        args = _arguments(agg)
        distinct = _is_distinct(agg)
        if distinct:
            if isinstance(agg, exp.GroupConcat) and agg.args.get("separator") is not None:
                raise ProgrammingError("DISTINCT aggregates must have exactly one argument")
            return self._distinct(node, agg, name, args, condition)
        if name == "count":
            # 0 over no rows: the shards send no partial row at all when they also
            # group by a DISTINCT aggregate's argument.
            partial = self.add_column("a", node, typed=False)
            return exp.Coalesce(
                this=exp.func("SUM", exp.column(partial)), expressions=[exp.Literal.number(0)]
            )
        if name in ("sum", "total"):
            partial = self.add_column("a", node, typed=False)
            return exp.func(name.upper(), exp.column(partial))
        if name == "avg" and len(args) == 1:
            total = self._filtered(exp.func("TOTAL", args[0].copy()), condition)
            count = self._filtered(exp.Count(this=args[0].copy()), condition)
            total_column = self.add_column("a", total, typed=False)
            count_column = self.add_column("a", count, typed=False)
            # typed and safe: SQLite's own division, which sqlglot writes as it is.
            return exp.Div(
                this=exp.func("TOTAL", exp.column(total_column)),
                expression=exp.func("SUM", exp.column(count_column)),
                typed=True,
                safe=True,
            )
        if name in ("min", "max") and len(args) == 1:
            self.min_max.add(self.text(node))
            partial = self.add_column("a", node, typed=False, like=args[0])
            return exp.func(name.upper(), self.reference(partial, args[0]))
        if name == "group_concat" and len(args) in (1, 2):
            if len(args) == 2 and not _constant(args[1]):
                raise UnsupportedQueryError(
                    f"the aggregate {self.text(node)} across shards",
                    "its separator is not a constant; pin the query to one shard",
                )
            partial = self.add_column("a", node, typed=False)
            return exp.func("GROUP_CONCAT", exp.column(partial), *(a.copy() for a in args[1:]))
        raise UnsupportedQueryError(f"the aggregate {self.text(node)} across shards",
                                    _NOT_DECOMPOSABLE)  # fmt: skip

    def _filtered(self, agg: exp.Expr, condition: exp.Expr | None) -> exp.Expr:
        return exp.Filter(this=agg, expression=condition.copy()) if condition else agg

    def _distinct(
        self,
        node: exp.Expr,
        agg: exp.Expr,
        name: str,
        args: list[exp.Expr],
        condition: exp.Expr | None,
    ) -> exp.Expr:
        """count/sum/total/avg/min/max/group_concat(DISTINCT x): over x's distinct values."""
        if condition is not None or len(args) != 1 or name not in (
            "count", "sum", "total", "avg", "min", "max", "group_concat"
        ):  # fmt: skip
            raise UnsupportedQueryError(
                f"the aggregate {self.text(node)} across shards", _NOT_DECOMPOSABLE
            )
        (arg,) = args
        column = self.add_column("d", arg, typed=True)
        if arg.sql("sqlite") not in {g.sql("sqlite") for g in self.shard_groups}:
            self.shard_groups.append(arg.copy())
        if name in ("min", "max"):
            self.min_max.add(self.text(node))
        return exp.func(name.upper(), exp.Distinct(expressions=[self.reference(column, arg)]))

    # -- expressions over groups and aggregates

    def translate(self, node: exp.Expr, aliases: frozenset[str] = frozenset()) -> exp.Expr:
        """``node`` as the final step computes it from the table's columns.

        ``aliases`` are the output names a bare name may refer to instead of
        an input column.
        """

        def replace(n: exp.Expr) -> exp.Expr:
            if isinstance(n, exp.Identifier | exp.DataType | exp.Var):
                return n  # parts of names and types, never values
            if (
                isinstance(n, exp.Column)
                and not n.table
                and isinstance(n.this, exp.Identifier)
                and normalize(n.this, "sqlite") in aliases
            ):
                return n  # an output name, resolved by the final step as by SQLite
            key = self.keys.get(self.text(n))
            if key is not None:
                return self.reference(key, n)
            if isinstance(n, exp.Collate):
                # A key under another collation: the same value, compared so.
                key = self.keys.get(self.text(_strip_collate(n)))
                if key is not None:
                    return exp.Collate(this=exp.column(key), expression=n.expression.copy())
                return n
            if self.text(n) in self.collated:
                # The key without the COLLATE it is grouped under (GROUP BY note COLLATE
                # BINARY, then note): a value of the group, compared under its own
                # collation, as SQLite shows some row's value of the group.
                return exp.column(self.add_column("k", n, typed=True))
            if is_aggregate(n):  # subqueries and windows are replaced before their insides
                return self.aggregate(n)
            if isinstance(n, exp.Subquery | exp.Exists) or (
                isinstance(n, exp.In) and n.args.get("query") is not None
            ):
                if n.find(exp.Table) is None and not _outer_columns(n, self.resolver):
                    # Rows shipped back in its place (a VALUES list): the final step
                    # computes it, also over no partial rows at all.
                    return n.copy()
                return self._shard_computed(n)
            if isinstance(n, exp.Column) and isinstance(n.this, exp.Identifier):
                column = self.add_column("b", n, typed=True)
                self.bare.append(self.text(n))
                return exp.column(column)
            if isinstance(n, exp.Window):
                raise UnsupportedQueryError(
                    f"the window function {self.text(n)} in a grouped query across shards",
                    "its partitions may span shards",
                )
            return n

        return node.copy().transform(replace, copy=False)

    def _shard_computed(self, node: exp.Expr) -> exp.Expr:
        """A subquery, computed on the shards (it reads tables the final step lacks)."""
        column = self.add_column("b", node, typed=False)
        if _outer_columns(node, self.resolver):
            self.bare.append(self.text(node))
        return exp.column(column)


def _inline_aliases(shard: exp.Select, items: list[exp.Expr], resolver: Resolver) -> None:
    """Write the select-list aliases ``shard``'s WHERE uses as their expressions.

    SQLite lets WHERE name an output column that is not an input column; the
    shards' select list is another one, without those aliases.
    """
    where = shard.args.get("where")
    if where is None:
        return
    aliased = {
        str(item.alias).lower(): item.this
        for item in items
        if isinstance(item, exp.Alias) and resolver.has_input_column(str(item.alias)) is False
    }
    if not aliased:
        return

    def inline(node: exp.Expr) -> exp.Expr:
        if (
            isinstance(node, exp.Column)
            and not node.table
            and isinstance(node.this, exp.Identifier)
            and node.parent_select is shard
            and normalize(node.this, "sqlite") in aliased
        ):
            return exp.Paren(this=aliased[normalize(node.this, "sqlite")].copy())
        return node

    where.transform(inline, copy=False)


def _strip_collate(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Collate | exp.Paren):
        node = node.this
    return node


def _is_distinct(agg: exp.Expr) -> bool:
    """Whether ``agg`` aggregates distinct values, ``total(DISTINCT x)`` included."""
    if isinstance(agg, exp.Anonymous):
        # sqlglot does not know total(): its DISTINCT is the call's first argument.
        return bool(agg.expressions) and isinstance(agg.expressions[0], exp.Distinct)
    return isinstance(agg.this, exp.Distinct)


def _arguments(agg: exp.Expr) -> list[exp.Expr]:
    if isinstance(agg, exp.Anonymous):
        args = list(agg.expressions)
        if args and isinstance(args[0], exp.Distinct):
            return [*args[0].expressions, *args[1:]]
        return args
    first = agg.this
    if isinstance(first, exp.Distinct):
        return list(first.expressions)
    args = [first] if first is not None and not isinstance(first, exp.Star) else []
    if isinstance(agg, exp.GroupConcat) and agg.args.get("separator") is not None:
        args.append(agg.args["separator"])
    args += list(agg.expressions) if agg.expressions else []
    return args


def _constant(node: exp.Expr) -> bool:
    return node.find(exp.Column) is None and node.find(exp.Select) is None


def _outer_columns(node: exp.Expr, resolver: Resolver) -> bool:
    """Whether the subquery ``node`` refers to the outer query's tables."""
    inner = {t.alias_or_name.lower() for t in node.find_all(exp.Table)}
    return any(
        column.table and column.table.lower() in resolver.sources
        and column.table.lower() not in inner
        for column in node.find_all(exp.Column)
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Finalized:
    """A grouped query split into the shards' query and the final step."""

    shard: exp.Select
    final: FinalStep
    params: bool


def finalize(
    select: exp.Select, source: str, groups: list[exp.Expr], resolver: Resolver
) -> Finalized:
    """Split the grouped query ``select`` (see the module docstring)."""
    f = _Finalizer(select, resolver)
    for term in groups:
        f.add_group(term)
    texts = item_texts(source, "sqlite")
    items = select.expressions
    if texts is not None and len(texts) != len(items):
        texts = None
    names = []
    for i, item in enumerate(items):
        if isinstance(item, exp.Star) or (
            isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
        ):
            raise UnsupportedQueryError(
                "SELECT * in a grouped query across shards",
                "shardq must know each column of a merged group; list the columns",
            )
        names.append(resolver.name(item, texts[i] if texts is not None else None))
    aliases = frozenset(n.lower() for n in names)
    final_items = [
        exp.alias_(f.translate(item.this if isinstance(item, exp.Alias) else item), name,
                   quoted=True)
        for item, name in zip(items, names, strict=True)
    ]  # fmt: skip
    final = exp.Select(expressions=final_items).from_(TABLE)
    if groups:
        final.set("group", exp.Group(expressions=[f.translate(g) for g in groups]))
    # SQLite resolves a name in HAVING, or inside an ORDER BY expression, to an input
    # column first, then to an output name; a whole ORDER BY term that is a name, to
    # an output name first.
    inputs = {n for n in aliases if resolver.has_input_column(n)}
    having = select.args.get("having")
    if having is not None:
        final.set("having", exp.Having(this=f.translate(having.this, aliases - inputs)))
    order = select.args.get("order")
    if order is not None:
        terms = []
        for ordered in order.expressions:
            term = ordered.copy()
            target = term.this
            if not (isinstance(target, exp.Literal) and not target.is_string):
                named = isinstance(_strip_collate(target), exp.Column)
                term.set("this", f.translate(target, aliases if named else aliases - inputs))
            terms.append(term)
        final.set("order", exp.Order(expressions=terms))
    for arg in ("limit", "offset", "distinct"):
        if select.args.get(arg) is not None:
            final.set(arg, select.args[arg].copy())
    if f.bare and len(f.min_max) != 1:
        raise UnsupportedQueryError(
            f"the bare column {f.bare[0]} in a grouped query across shards",
            "SQLite takes a column that is neither grouped nor aggregated from an arbitrary "
            "row of the group (from the row holding the minimum or maximum only when the "
            "query has exactly one min() or max()), which shardq cannot reproduce across "
            "shards; add it to GROUP BY or aggregate it",
            # Gathered, SQLite would take it from another arbitrary row than one
            # file does: no answer to compare, so none is given.
            gatherable=False,
        )
    shard = select.copy()
    for arg in ("having", "order", "limit", "offset", "distinct"):
        shard.set(arg, None)
    _inline_aliases(shard, items, resolver)
    shard.set("expressions", f.shard_items or [exp.alias_(exp.Count(this=exp.Star()), "_shardq_n")])
    shard.set("group", exp.Group(expressions=f.shard_groups) if f.shard_groups else None)
    if not f.shard_items:
        f.columns.append("_shardq_n")
    ours = _FINAL_WORDS | {c.lower() for c in f.seen.values()} | {n.lower() for n in names}
    sql = regenerate(final, source, "sqlite", extra=ours)
    params = final.find(exp.Placeholder) is not None
    return Finalized(shard, FinalStep(TABLE, tuple(f.columns), sql, tuple(names)), params)
