"""Rewriting a multi-shard read into per-shard SQL and a merge plan.

:func:`distribute` decides, from the SQL alone, what each shard runs and how
the merge turns the shards' rows into the single database's answer:

* rows that come whole from one shard (a filter, a co-located join) pass
  through; ORDER BY becomes a k-way merge on columns of the rows (helper
  columns are appended for sort expressions not in the select list); LIMIT
  ``n`` OFFSET ``m`` runs as ``LIMIT n + m`` on each shard (FETCH FIRST too,
  WITH TIES kept by the merge); DISTINCT runs on each shard and again over
  the merge (:mod:`.order`, :mod:`.limit`); DISTINCT ON an expression list
  holding the shard key runs on the shards as written (each set of rows lies
  on one shard);
* a set operation's branches each run on the shards: UNION ALL is
  concatenated, the others counted per row across shards (:mod:`.setops`);
* a grouped query whose groups contain the shard key runs whole on each
  shard (no group spans two shards), HAVING and window functions included;
* any other grouped query is split into partial aggregates and a final
  step computed after the merge: by shardq with PostgreSQL's rules
  (:mod:`.aggregates`), or on SQLite shards by SQLite itself over the
  partial rows (:mod:`.sqlite`);
* ``*`` is written as the columns it stands for (from the catalog) when a
  position in it matters (``ORDER BY 3``), and on SQLite every unaliased
  expression is named by its text as written, since the shards would name
  it by sqlglot's.

Whatever cannot be made exact is refused with an
:class:`~shardq.errors.UnsupportedQueryError` that names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import ProgrammingError, UnsupportedQueryError
from shardq.merge.steps import Call, Col, Const, Counting, Expr, MergePlan, Param, SortKey
from shardq.sql.affinity import Resolver, collation_name, from_sources
from shardq.sql.analyze import (
    Analysis,
    StatementKind,
    normalize,
    own_aggregates,
    table_refs,
    volatile_call,
)
from shardq.sql.locality import (
    Catalog,
    Relation,
    check_local,
    input_column,
    key_relation,
    row_preserving,
)
from shardq.sql.parse import placeholder_value
from shardq.sql.regenerate import regenerate
from shardq.sql.rewrite.aggregates import Decomposed, decompose
from shardq.sql.rewrite.groups import group_terms
from shardq.sql.rewrite.limit import WINDOW_WORDS, Window, push_window, split_window
from shardq.sql.rewrite.names import named_items, output_name
from shardq.sql.rewrite.order import (
    CODE_POINT_COLLATIONS,
    SQLITE_COLLATIONS,
    is_star,
    sort_terms,
)
from shardq.sql.rewrite.setops import any_all, branches, only_union_all, shape, tagged
from shardq.sql.rewrite.sqlite import finalize

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.sql.catalog import Columns

__all__ = ["Distributed", "distribute", "positional_as_named"]


@dataclass(frozen=True, slots=True)
class Distributed:
    """A multi-shard read, rewritten.

    Attributes:
        sql: what each shard runs, or ``None`` to run the statement as given.
        merge: the merge plan, its LIMIT and OFFSET still to be bound.
        window: the LIMIT and OFFSET, as written.
        strategy: one line saying how the query is distributed (for EXPLAIN).
    """

    sql: str | None
    merge: MergePlan
    window: Window
    strategy: str
    has_params: bool = False

    def bind(self, params: object) -> MergePlan:
        """The merge plan with the statement's parameters bound."""
        merge = self.merge
        if merge.final is not None:
            if not self.has_params:
                return merge
            named = (
                positional_as_named(params, len(params))
                if isinstance(params, Sequence) and not isinstance(params, str | bytes)
                else params
            )
            return dataclasses.replace(merge, final=dataclasses.replace(merge.final, params=named))
        if self.window.bounded:
            offset, limit = self.window.resolve(params)
            merge = dataclasses.replace(merge, offset=offset, limit=limit, ties=self.window.ties)
        if self.has_params:
            merge = dataclasses.replace(
                merge,
                having=_bind(merge.having, params) if merge.having is not None else None,
                outputs=tuple(
                    dataclasses.replace(o, expr=_bind(o.expr, params)) for o in merge.outputs or ()
                ),
            )
        return merge


def _param_type(value: object) -> int | None:
    """The type PostgreSQL gives a parameter psycopg binds from ``value``."""
    if isinstance(value, bool):
        return 16
    if isinstance(value, int):
        for bits, oid in ((16, 21), (32, 23), (64, 20)):
            if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                return oid
        return 1700
    if isinstance(value, float):
        return 701
    if isinstance(value, Decimal):
        return 1700
    return 25 if isinstance(value, str) else None


def _bind(expr: Expr, params: object) -> Expr:
    if isinstance(expr, Param):
        value = placeholder_value(exp.Placeholder(this=expr.name), params)
        return Const(value, _param_type(value))
    if isinstance(expr, Call):
        return Call(expr.op, tuple(_bind(a, params) for a in expr.args))
    return expr


def _check_windows(
    select: exp.Select, analysis: Analysis, relations: list[Relation], allowed: bool
) -> bool:
    """Refuse window functions unless each partition lies on one shard."""
    dialect = analysis.parsed.dialect
    found = False
    for window in select.find_all(exp.Window):
        if window.parent_select is not select:
            continue
        found = True
        partition = window.args.get("partition_by") or []
        if not allowed or not any(key_relation(p, relations, dialect) for p in partition):
            raise UnsupportedQueryError(
                f"the window function {window.sql(dialect)} across shards",
                "its partitions may span shards; shardq runs a window function on the "
                "shards only when its PARTITION BY includes the shard key",
            )
    return found


def distribute(
    analysis: Analysis,
    config: Config,
    catalog: Catalog | None = None,
    columns: Columns | None = None,
) -> Distributed:
    """Rewrite a read that runs on several shards (see the module docstring).

    ``catalog`` and ``columns`` describe the declared tables' columns (see
    :mod:`shardq.sql.catalog`), when the engine has read them.
    """
    if isinstance(analysis.parsed.expression, exp.SetOperation):
        return _set_operation(analysis, config, catalog, columns or {})
    relations = check_local(analysis, config, catalog)
    select = analysis.parsed.expression
    assert isinstance(select, exp.Select)
    dialect = analysis.parsed.dialect
    if dialect == "sqlite":
        select = named_items(select, analysis.parsed.text)
    select, expanded = _expand_stars(select, analysis, columns or {})
    distinct = select.args.get("distinct")
    distinct_on = distinct is not None and distinct.args.get("on") is not None
    if distinct_on:
        _check_distinct_on(select, relations, dialect)
    window = split_window(select, dialect)
    groups = group_terms(
        select, dialect, analysis.parsed.source, input_column(analysis, config, catalog)
    )
    aggregates = [
        a
        for part in (*select.expressions, select.args.get("having"), select.args.get("order"))
        if part is not None
        for a in own_aggregates(part, select)
    ]
    if dialect == "sqlite" and not groups and not select.args.get("having"):
        _check_order_aggregates(select, aggregates)
    if (groups or aggregates or select.args.get("having")) and not any(
        key_relation(g, relations, dialect) for g in groups
    ):
        if distinct_on:
            raise UnsupportedQueryError(
                "DISTINCT ON over aggregates merged across shards",
                "its sets would be picked from groups that are merged after the shards "
                "answer; group by the shard key, or pin the query to one shard",
            )
        _check_windows(select, analysis, relations, allowed=False)
        if dialect == "sqlite":
            return _final_in_sqlite(select, analysis, groups, columns or {}, expanded)
        _check_collations(select, dialect)
        d = decompose(select, dialect, analysis.parsed.source, groups)
        order = _group_order(d) if distinct is None else ()
        aggregation = d.aggregation
        if order:
            # The result is ordered by the group key: the shards sort their
            # partial rows so, and the merge emits each group as it closes.
            aggregation = dataclasses.replace(aggregation, sorted=True)
            d.shard.set("order", exp.Order(expressions=[
                exp.Ordered(this=exp.Literal.number(k.column + 1), desc=k.descending,
                            nulls_first=k.nulls_first)
                for k in order
            ]))  # fmt: skip
        merge = MergePlan(
            order=order,
            aggregate=aggregation,
            having=d.having,
            outputs=d.outputs,
            distinct=distinct is not None,
            sort=d.sort,
            hidden=d.hidden,
        )
        strategy = "partial aggregates on each shard, regrouped after the merge"
        sql = regenerate(d.shard, analysis.parsed.source, dialect, expanded | d.words)
        return Distributed(sql, merge, window, strategy, d.params)
    _check_windows(select, analysis, relations, allowed=True)
    if distinct is not None and not distinct_on and dialect != "sqlite":
        _check_collations(select, dialect)
    return _rows(select, analysis, window, bool(groups), columns or {}, expanded)


def _check_distinct_on(select: exp.Select, relations: list[Relation], dialect: str) -> None:
    """Refuse DISTINCT ON unless one of its expressions is the shard key.

    Then rows of one set have one key, so they lie on one shard, and each
    shard's DISTINCT ON keeps the row one database keeps: the statement runs
    on the shards as written and its ORDER BY is merged. A name that is also
    an output column's alias names that column (as in ORDER BY), not the key.
    """
    on = select.args["distinct"].args["on"]
    terms = on.expressions if isinstance(on, exp.Tuple) else [on]
    aliases = {
        normalize(item.args["alias"].this, dialect): item.this
        for item in select.expressions
        if isinstance(item, exp.Alias)
    }

    def is_key(term: exp.Expr) -> bool:
        if isinstance(term, exp.Column) and not term.table:
            aliased = aliases.get(normalize(term.this, dialect))
            if aliased is not None and aliased != term:
                return False
        return key_relation(term, relations, dialect) is not None

    if not any(is_key(term) for term in terms):
        raise UnsupportedQueryError(
            "DISTINCT ON without the shard key across shards",
            "which row of each set is kept depends on rows of every shard; shardq runs "
            "DISTINCT ON on the shards when its expressions include the shard key; pin "
            "the query to one shard",
        )


def _set_operation(
    analysis: Analysis, config: Config, catalog: Catalog | None, columns: Columns
) -> Distributed:
    """A UNION, INTERSECT or EXCEPT [ALL] (see :mod:`.setops`)."""
    statement = analysis.parsed.expression
    dialect = analysis.parsed.dialect
    if statement.args.get("with_") is not None:
        raise UnsupportedQueryError(
            f"WITH before a {statement.key.upper()} across shards",
            "shardq merges a set operation whose branches are SELECTs; write the CTE in "
            "the branches that read it, or pin the query to one shard",
        )
    leaves = branches(statement)
    tree = shape(statement)
    replicated = set()
    for number, leaf in enumerate(leaves):
        distinct = leaf.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            raise UnsupportedQueryError(
                "DISTINCT ON in a branch of a set operation across shards",
                "which row of each set is kept depends on rows of every shard; pin the query "
                "to one shard",
            )
        parsed = dataclasses.replace(analysis.parsed, expression=leaf)
        branch = Analysis(parsed, StatementKind.READ, table_refs(leaf, config))
        if not branch.distributed:
            volatile = volatile_call(leaf)
            if volatile is not None:
                raise UnsupportedQueryError(
                    f"the volatile function {volatile.sql(dialect)} in a branch of a set "
                    "operation over reference tables",
                    "every shard computes the branch, and each would compute its own values",
                )
            replicated.add(number)
            continue
        row_preserving(branch, config, catalog, f"the branch {leaf.sql(dialect)}")
    first = leaves[0]
    shard = statement.copy()
    if dialect == "sqlite":
        # SQLite names the columns by the first branch's text as written.
        sent = branches(shard)[0]
        named = named_items(sent, analysis.parsed.text)
        if named is not sent:
            sent.replace(named)
    collations = None
    if dialect == "sqlite":
        if any(is_star(item) for item in first.expressions):
            raise UnsupportedQueryError(
                f"* in a {statement.key.upper()} across SQLite shards",
                "the merge compares each column under its collation; name the columns",
            )
        collations = tuple(
            _compound_collation(leaves, i, analysis, columns, statement.key.upper())
            for i in range(len(first.expressions))
        )
    keys = _set_order(statement, first, dialect, collations)
    window = split_window(statement, dialect)  # type: ignore[arg-type]
    if only_union_all(tree) and not replicated:
        if window.bounded:
            push_window(shard, window)  # type: ignore[arg-type]
        sql = None
        if window.bounded or dialect == "sqlite":
            sql = regenerate(shard, analysis.parsed.source, dialect, WINDOW_WORDS)
        strategy = "UNION ALL: each shard's rows of every branch, concatenated"
        if keys:
            strategy += "; ORDER BY merged k-way"
        return Distributed(sql, MergePlan(order=keys), window, strategy)
    if dialect != "sqlite":
        for leaf in leaves:  # the merge compares the rows' text by code point
            _check_collations(leaf, dialect)
    counted = tagged(shard, all_rows=any_all(tree))
    merge = MergePlan(
        setop=Counting(tree, len(leaves), frozenset(replicated)),
        sort=keys,
        hidden=1,
        collations=collations,
    )
    sql = regenerate(counted, analysis.parsed.source, dialect, frozenset({"union", "all"}))
    strategy = (
        f"{statement.key.upper()}: each branch's rows, tagged with the branch, counted per "
        "row across shards; the set operations applied to the counts"
    )
    return Distributed(sql, merge, window, strategy)


def _compound_collation(
    leaves: list[exp.Select], column: int, analysis: Analysis, columns: Columns, clause: str
) -> str:
    """The collation SQLite compares a compound SELECT's column under.

    The collation of that column in the leftmost branch that has one (a
    COLLATE, or a table column's declared one, BINARY by default), as
    SQLite's ``multiSelectCollSeq``; BINARY when no branch has one
    (expressions). An INTEGER PRIMARY KEY column (the rowid) has none, and
    the catalog does not say which column that is: where it could decide,
    the query is refused, unless every branch has the same collation there.
    """
    found = []
    for leaf in leaves:
        if column >= len(leaf.expressions) or is_star(leaf.expressions[column]):
            break
        resolver = Resolver(leaf, analysis, columns)
        node = _unaliased(leaf.expressions[column])
        bare = node
        while isinstance(bare, exp.Paren | exp.Cast):
            bare = bare.this
        collation = resolver.collation(node)
        info = resolver.column(bare) if isinstance(bare, exp.Column) else None
        if collation.explicit or (info is not None and info.type.lower() != "integer"):
            certain = True
        elif isinstance(bare, exp.Column):
            certain = False  # the rowid, or a column of a source shardq does not know
        else:
            continue  # an expression: no collation
        found.append((certain, _merged_collation(resolver, node, clause)))
    if len({name for _, name in found}) <= 1:
        return found[0][1] if found else "binary"
    certain, name = found[0]
    if not certain:
        raise UnsupportedQueryError(
            f"a {clause} of columns with different collations across SQLite shards",
            "SQLite compares by the leftmost branch's column collation, and an INTEGER "
            "PRIMARY KEY column has none; shardq cannot tell which column that is: add a "
            "COLLATE to the first branch's column",
        )
    return name


def _set_order(
    statement: exp.Expr, first: exp.Select, dialect: str, collations: tuple[str, ...] | None
) -> tuple[SortKey, ...]:
    """The sort keys of a set operation's ORDER BY: result columns, by name or position."""
    order = statement.args.get("order")
    if order is None:
        return ()
    probe = first.copy()
    probe.set("order", order.copy())
    keys = []
    for term in sort_terms(probe, dialect):
        if not isinstance(term.target, int):
            raise UnsupportedQueryError(
                f"ORDER BY {term.target.sql(dialect)} of a {statement.key.upper()}",
                "a set operation is ordered by its result columns, by name or position",
            )
        collation = collations[term.target] if collations is not None else None
        keys.append(
            SortKey(term.target, term.descending, term.nulls_first, term.code_point, collation)
        )
    return tuple(keys)


def _check_order_aggregates(select: exp.Select, aggregates: list[exp.Expr]) -> None:
    """Raise SQLite's error for an aggregate in the ORDER BY of a query that has none else.

    The final step would fail on it too, but in words of its own.
    """
    selected = [a for item in select.expressions for a in own_aggregates(item, select)]
    if aggregates and not selected:
        node = aggregates[0]
        node = node.this if isinstance(node, exp.Filter) else node
        name = str(node.this) if isinstance(node, exp.Anonymous) else str(node.key)
        raise ProgrammingError(f"misuse of aggregate: {name.lower()}()")


def _final_in_sqlite(
    select: exp.Select,
    analysis: Analysis,
    groups: list[exp.Expr],
    columns: Columns,
    expanded: frozenset[str],
) -> Distributed:
    """A grouped read on SQLite shards: partials there, the final step in SQLite."""
    resolver = Resolver(select, analysis, columns)
    split = finalize(select, analysis.parsed.text, groups, resolver)
    # avg() is taken apart into total() and count() on the shards.
    sql = regenerate(split.shard, analysis.parsed.source, "sqlite", expanded | {"total"})
    strategy = (
        "partial aggregates on each shard; the final step computed by SQLite over them, "
        "with SQLite's own arithmetic, collations and affinities"
    )
    return Distributed(sql, MergePlan(final=split.final), Window(), strategy, split.params)


def _rows(
    select: exp.Select,
    analysis: Analysis,
    window: Window,
    grouped: bool,
    columns: Columns,
    expanded: frozenset[str],
) -> Distributed:
    dialect = analysis.parsed.dialect
    terms = sort_terms(select, dialect)
    extra = [t.target for t in terms if not isinstance(t.target, int)]
    # SQLite: the merge compares as SQLite does, under each term's collation.
    resolver = Resolver(select, analysis, columns) if dialect == "sqlite" else None
    keys = []
    helper = 0
    for term in terms:
        if isinstance(term.target, int):
            column = term.target
        else:
            column = helper - len(extra)  # helper columns are the last ones
            helper += 1
        collation = None
        if resolver is not None:
            node = term.target
            if isinstance(node, int):
                node = _unaliased(select.expressions[node])
            collation = _merged_collation(resolver, node, "ORDER BY")
        keys.append(SortKey(column, term.descending, term.nulls_first, term.code_point, collation))
    shard = select.copy()
    for i, node in enumerate(extra):
        shard.select(exp.alias_(node.copy(), f"_shardq_o{i}"), append=True, copy=False)
    if window.bounded:
        push_window(shard, window)
    # DISTINCT ON the shard key: each set of rows lies on one shard, which keeps its row.
    found = select.args.get("distinct")
    distinct = found is not None and found.args.get("on") is None
    collations = None
    if resolver is not None and distinct:
        collations = tuple(
            _merged_collation(resolver, _unaliased(item), "DISTINCT") for item in select.expressions
        )
    merge = MergePlan(
        order=tuple(keys), distinct=distinct, hidden=len(extra), collations=collations
    )
    if grouped:
        strategy = "the groups contain the shard key: each shard computes whole groups"
    else:
        strategy = "each row comes from one shard"
    if keys:
        strategy += "; ORDER BY merged k-way"
    changed = bool(extra) or window.bounded
    words = expanded | WINDOW_WORDS if window.negative_is_none or window.ties else expanded
    sql = regenerate(shard, analysis.parsed.source, dialect, words) if changed else None
    return Distributed(sql, merge, window, strategy)


def _check_collations(select: exp.Select, dialect: str) -> None:
    """Refuse a merge that would compare text under a collation shardq does not reproduce.

    On PostgreSQL the merge groups, de-duplicates and takes min/max by code
    point, the order of the C collation; an explicit COLLATE of another
    collation in the select list or HAVING (``min(name COLLATE "de-x-icu")``,
    a nondeterministic collation in GROUP BY) would be merged otherwise than
    the database computes.
    """
    parts = [*select.expressions, select.args.get("having"), select.args.get("group")]
    for part in parts:
        if part is None:
            continue
        for node in part.find_all(exp.Collate):
            if node.parent_select is not select:
                continue
            if collation_name(node) not in CODE_POINT_COLLATIONS:
                raise UnsupportedQueryError(
                    f"{node.sql(dialect)} in a query merged across shards",
                    "the merge groups, de-duplicates and compares text by code point, which "
                    'is the C collation only; use COLLATE "C", or pin the query to one shard',
                )


def _unaliased(item: exp.Expr) -> exp.Expr:
    return item.this if isinstance(item, exp.Alias) else item


def _merged_collation(resolver: Resolver, node: exp.Expr, clause: str) -> str:
    """The collation the merge compares ``node`` under (SQLite), refusing unknown ones."""
    collation = resolver.collation(node).name
    if collation not in SQLITE_COLLATIONS:
        raise UnsupportedQueryError(
            f"{clause} under the collation {collation.upper()} across shards",
            "the merge compares text under SQLite's built-in collations BINARY, NOCASE and "
            "RTRIM only; pin the query to one shard",
        )
    return collation


def _expand_stars(
    select: exp.Select, analysis: Analysis, columns: Columns
) -> tuple[exp.Select, frozenset[str]]:
    """``select`` with ``*`` and ``t.*`` written as the columns they stand for.

    An ordinal after a ``*`` (``SELECT * ... ORDER BY 3``) and a merged
    group need each column by position. The columns come from the catalog, in
    the tables' order (derived tables and CTEs: their select lists'); when a
    source's columns are not known, or a join has USING or NATURAL (its
    ``*`` merges columns), the statement is returned as it is. Also returns
    the column names added.
    """
    items = select.expressions
    if not columns or not any(is_star(i) for i in items):
        return select, frozenset()
    grouped = select.args.get("group") is not None and analysis.parsed.dialect == "sqlite"
    if select.args.get("order") is None and not grouped and not select.args.get("distinct"):
        # (On PostgreSQL, SELECT * of a grouped query stays refused: each of its
        # columns must be grouped, which the merge would not check.)
        return select, frozenset()
    joins = select.args.get("joins") or []
    if any(j.args.get("using") or j.args.get("method") for j in joins):
        return select, frozenset()
    known_columns = Resolver(select, analysis, columns).sources
    sources: list[tuple[exp.Expr, tuple[str, ...]]] = []
    for source in from_sources(select):
        known = known_columns.get(source.alias_or_name.lower())
        names = (
            tuple(c.name for c in known)
            if isinstance(source, exp.Table) and known
            else _source_names(source, analysis, columns)
        )
        if names is None:
            return select, frozenset()
        alias = source.args.get("alias")
        name = alias.this if alias is not None and alias.this else source.this
        if not isinstance(name, exp.Identifier):
            return select, frozenset()
        sources.append((name, names))
    expanded: list[exp.Expr] = []
    added: set[str] = set()
    for item in items:
        if not is_star(item):
            expanded.append(item)
            continue
        table = item.table if isinstance(item, exp.Column) else ""
        for name, names in sources:
            if table and name.name.lower() != table.lower():
                continue
            for column in names:
                expanded.append(
                    exp.Column(this=exp.to_identifier(column, quoted=True), table=name.copy())
                )
                added.add(column.lower())
    select = select.copy()
    select.set("expressions", expanded)
    return select, frozenset(added)


def _source_names(source: exp.Expr, analysis: Analysis, columns: Columns) -> tuple[str, ...] | None:
    """The column names a FROM item that is not a plain declared table offers, if known.

    A table renaming its columns (``facts AS f(a, b)``), a derived table or a
    CTE of SELECTs whose columns all have names of their own (no ``*``, no
    ``?column?``, none twice).
    """
    dialect = analysis.parsed.dialect
    alias = source.args.get("alias")
    renamed = [c.name for c in alias.columns] if alias is not None and alias.columns else []
    body: exp.Expr | None = None
    if isinstance(source, exp.Subquery):
        body = source.this
    elif isinstance(source, exp.Table):
        statement = analysis.parsed.expression
        with_ = statement.args.get("with_")
        ctes = {c.alias_or_name.lower(): c for c in with_.expressions} if with_ else {}
        cte = ctes.get(source.name.lower()) if not source.db else None
        if cte is not None:
            body = cte.this
            cte_alias = cte.args.get("alias")
            if not renamed and cte_alias is not None and cte_alias.columns:
                renamed = [c.name for c in cte_alias.columns]
        elif renamed:
            ref = next((r for r in analysis.refs if r.node is source), None)
            known = columns.get(ref.table.name) if ref is not None else None
            if not known or len(renamed) > len(known):
                return None
            return (*renamed, *(c.name for c in known[len(renamed) :]))
    if not isinstance(body, exp.Select) or any(is_star(i) for i in body.expressions):
        return None
    names = [output_name(item, dialect, analysis.parsed.source) for item in body.expressions]
    names[: len(renamed)] = renamed
    folded = [n.lower() if dialect == "sqlite" else n for n in names]
    if len(set(folded)) != len(folded) or "?column?" in names or len(renamed) > len(names):
        return None
    return tuple(names)


def _group_order(d: Decomposed) -> tuple[SortKey, ...]:
    """The shard-row sort keys that give the result's order, if it is by the group key.

    When the ORDER BY starts with every group column (each once, any order),
    rows sorted on those columns are in the result's order, and a group's
    partial rows are adjacent.
    """
    groups = d.aggregation.groups
    if not groups or len(d.sort) < groups:
        return ()
    keys = []
    for key in d.sort[:groups]:
        expr = d.outputs[key.column].expr
        if not isinstance(expr, Col) or expr.index >= groups or key.code_point:
            return ()
        keys.append(SortKey(expr.index, key.descending, key.nulls_first))
    if len({k.column for k in keys}) != groups:
        return ()
    return tuple(keys)


def positional_as_named(params: object, count: int) -> object:
    """Positional parameters as the ``_pN`` names a rewritten statement uses."""
    if count and isinstance(params, Sequence) and not isinstance(params, str | bytes):
        return {f"_p{i}": value for i, value in enumerate(params)}
    return params
