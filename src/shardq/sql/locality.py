"""Locality: whether every row a multi-shard read computes comes from one shard.

Merging (aggregates, ORDER BY, DISTINCT, ...) works on the rows each shard
computes, so those must be the rows one database would compute, split
between the shards. :func:`check_local` proves it, scope by scope, or
refuses the query:

* a *distributed relation* of a SELECT is a distributed table in its FROM,
  or a derived table (a subquery in FROM, or a CTE it reads) whose own rows
  are local and which keeps each row on its shard: no LIMIT, its groups
  contain the shard key, its DISTINCT keeps the key;
* the distributed relations of one SELECT must be co-located and joined by
  equalities of their keys (in the WHERE or an inner join's ON, or a LEFT
  join's ON towards the nullable side), so each joined row is on one shard;
* a subquery elsewhere (WHERE, select list) that reads a distributed table
  must be tied to the outer rows' shard: correlated by ``inner.key =
  outer.key`` (the outer column qualified), or ``outer_key IN (SELECT key
  ...)``;
* an outer join must not preserve a reference table (every shard would add
  its unmatched rows).

Inside one SELECT an unqualified name equal to the key of exactly one of its
distributed relations can only name that key (any other table with such a
column would make the name ambiguous, which the database refuses). Whether
an unqualified name in a subquery is its own column or an outer reference
takes the schema: the engine reads the declared tables' columns once (the
*catalog*); without it such a name is taken for the subquery's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.analyze import is_aggregate, normalize, own_aggregates
from shardq.sql.colocation import (
    Relation,
    conjuncts,
    joined_on_keys,
    key_relation,
    link,
    table_relation,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from shardq.config import Config
    from shardq.sql.analyze import Analysis, TableRef

__all__ = [
    "Catalog",
    "Relation",
    "check_local",
    "input_column",
    "joined_on_keys",
    "key_relation",
    "link",
    "row_preserving",
    "run_first",
]

Catalog = dict[str, frozenset[str]]
"""The columns of each declared table (by its configured name), as the database names them."""

_REASON = "shardq cannot merge it exactly yet; pin it to one shard with a shard-key condition"
_OUTER_REASON = (
    "every shard would return the rows of the preserved side that find no match, so they "
    "would repeat once per shard; write the distributed table first and LEFT JOIN the "
    "reference tables to it, or pin the query to one shard"
)


class _Checker:
    def __init__(
        self,
        analysis: Analysis,
        config: Config,
        collect: bool = False,
        catalog: Catalog | None = None,
    ):
        self.analysis = analysis
        self.config = config
        self.catalog = catalog
        self.dialect = analysis.parsed.dialect
        self.refs: dict[int, TableRef] = {id(r.node): r for r in analysis.refs}
        self.ctes = self._ctes(analysis.parsed.expression)
        # Collect mode: subqueries that cannot run on the shards as part of the
        # query are recorded, to be run first on their own (recursive planning).
        self.collect = collect
        self.first: list[exp.Select] = []
        self._first_ids: set[int] = set()

    def _run_first(self, body: exp.Expr, error: UnsupportedQueryError) -> None:
        """Record ``body`` to run first, or raise ``error`` if that cannot help."""
        if not self.collect or not isinstance(body, exp.Select) or self._correlated_outside(body):
            raise error
        if id(body) not in self._first_ids:
            # Subqueries inside it, recorded while checking it, run as part of it.
            self.first = [f for f in self.first if not any(a is body for a in _ancestors(f, None))]
            self._first_ids = {id(f) for f in self.first} | {id(body)}
            self.first.append(body)

    # -- column resolution with the catalog

    def _columns(self, source: exp.Expr) -> frozenset[str] | None:
        """The columns ``source`` (a FROM item) offers, or None if not known."""
        ref = self.refs.get(id(source))
        if ref is not None:
            if self.catalog is None or ref.renames_columns:
                return None
            return self.catalog.get(ref.table.name)
        body: exp.Expr | None = None
        if isinstance(source, exp.Subquery):
            body = source.this
        elif isinstance(source, exp.Table) and not source.db:
            body = self.ctes.get(normalize(source.this, self.dialect))
        if not isinstance(body, exp.Select):
            return None
        renames = source.args["alias"].args.get("columns") if source.args.get("alias") else None
        if renames:
            return frozenset(normalize(c, self.dialect) for c in renames)
        names = [self._output(item) for item in body.expressions]
        return None if any(n is None for n in names) else frozenset(n for n in names if n)

    def own_column(self, body: exp.Select, name: str) -> bool | None:
        """Whether an unqualified ``name`` in ``body`` is one of its own sources' columns.

        None when some source's columns are not known (no catalog, ``*``).
        """
        found = [self._columns(s) for s in self._sources(body)]
        if any(columns is None for columns in found):
            return None
        return any(name in columns for columns in found if columns is not None)

    def _unqualified_outer(self, body: exp.Select) -> bool:
        """Whether ``body`` names, unqualified, a column none of its sources has."""
        return any(
            self.own_column(body, normalize(c.this, self.dialect)) is False
            for c in body.find_all(exp.Column)
            if not c.table and isinstance(c.this, exp.Identifier) and c.parent_select is body
        )

    def _correlated_outside(self, body: exp.Select) -> bool:
        """Whether ``body`` names a column of a table that is not its own (an outer one)."""
        if self._unqualified_outer(body):
            return True
        inner = {
            normalize(t.args["alias"].this, self.dialect)
            if t.args.get("alias") is not None and t.args["alias"].this
            else normalize(t.this, self.dialect)
            if isinstance(t.this, exp.Identifier)
            else ""
            for t in body.find_all(exp.Table, exp.Subquery)
            if t.parent_select is body
        }
        return any(
            normalize(c.args["table"], self.dialect) not in inner
            for c in body.find_all(exp.Column)
            if c.table and c.parent_select is body
        )

    def _ctes(self, statement: exp.Expr) -> dict[str, exp.Expr]:
        with_ = statement.args.get("with_") or statement.args.get("with")
        if not isinstance(with_, exp.With):
            return {}
        return {normalize(c.args["alias"].this, self.dialect): c.this for c in with_.expressions}

    def distributed_inside(
        self, node: exp.Expr, seen: frozenset[int] = frozenset()
    ) -> list[TableRef]:
        """The distributed tables ``node`` reads, through the CTEs it names too."""
        found = []
        seen = seen | {id(node)}
        for table in node.find_all(exp.Table):
            if self._first_ids and any(id(a) in self._first_ids for a in _ancestors(table, node)):
                continue  # inside a subquery that runs first
            ref = self.refs.get(id(table))
            if ref is not None and ref.table.distributed:
                found.append(ref)
            elif ref is None and not table.db and isinstance(table.this, exp.Identifier):
                body = self.ctes.get(normalize(table.this, self.dialect))
                if body is not None and id(body) not in seen and id(body) not in self._first_ids:
                    found += self.distributed_inside(body, seen)
        return found

    # -- one SELECT

    def scope(self, select: exp.Select) -> list[Relation]:
        """Check ``select``; return its distributed relations."""
        relations: list[Relation] = []
        sources = self._sources(select)
        for source in sources:
            relation = self._relation(source)
            if relation is not None:
                relations.append(relation)
        self._check_outer_joins(select, sources, relations)
        if not link(select, relations, self.dialect):
            names = ", ".join(sorted({r.alias for r in relations}))
            raise UnsupportedQueryError(
                f"a query over several distributed tables ({names})",
                "they are not co-located (colocate_with) and joined on their shard keys, so "
                "matching rows may be on different shards; " + _REASON,
            )
        for subquery in self._subqueries(select):
            self._tied(select, subquery, relations)
        # The key of a table on the NULL-extended side of a LEFT JOIN is NULL in
        # the rows it does not match, and those rows are on every shard: it does
        # not keep a group, a partition or a DISTINCT row on one shard.
        nullable = {
            id(j.this) for j in select.args.get("joins") or () if (j.side or "").upper() == "LEFT"
        }
        return [
            Relation(r.node, r.alias, frozenset(), r.group) if id(r.node) in nullable else r
            for r in relations
        ]

    def _sources(self, select: exp.Select) -> list[exp.Expr]:
        from_ = select.args.get("from_") or select.args.get("from")
        sources = [from_.this] if isinstance(from_, exp.From) else []
        sources += [join.this for join in select.args.get("joins") or ()]
        return sources

    def _relation(self, source: exp.Expr) -> Relation | None:
        ref = self.refs.get(id(source))
        if ref is not None:
            if not ref.table.distributed:
                return None
            return table_relation(ref, self.config)
        body: exp.Expr | None = None
        alias = source.args.get("alias")
        if isinstance(source, exp.Subquery):
            body = source.this
        elif (
            isinstance(source, exp.Table)
            and not source.db
            and isinstance(source.this, exp.Identifier)  # not a table function
        ):
            body = self.ctes.get(normalize(source.this, self.dialect))
        if body is None:
            if self.distributed_inside(source):
                raise UnsupportedQueryError(
                    f"{source.sql(self.dialect)} across shards",
                    "shardq cannot tell whether its rows stay on their shards; " + _REASON,
                )
            return None
        if not self.distributed_inside(body):
            return None
        try:
            return self._derived(source, body, alias)
        except UnsupportedQueryError as exc:
            self._run_first(body, exc)
            return None

    def _derived(self, source: exp.Expr, body: exp.Expr, alias: exp.Expr | None) -> Relation | None:
        if not isinstance(body, exp.Select):
            for join in body.find_all(exp.Join):
                side = (join.side or "").upper()
                if side in ("LEFT", "RIGHT", "FULL"):
                    raise UnsupportedQueryError(
                        f"a nested {side} JOIN across shards", _OUTER_REASON
                    )
            what = "a parenthesized join" if isinstance(body, exp.Table) else body.key.upper()
            raise UnsupportedQueryError(f"{what} over distributed tables in FROM", _REASON)
        inner = self.scope(body)
        if not inner:
            return None  # what it read of distributed tables runs first
        keys = self._preserving(body, inner, "a derived table")
        name = (
            normalize(alias.this, self.dialect)
            if alias is not None and alias.this
            else normalize(source.this, self.dialect)
            if isinstance(source, exp.Table)
            else ""
        )
        renames = alias.args.get("columns") if alias is not None else None
        if renames:
            renamed = [normalize(c, self.dialect) for c in renames]
            positions = {i for i, item in enumerate(body.expressions) if self._output(item) in keys}
            keys = frozenset(renamed[i] for i in positions if i < len(renamed))
        return Relation(source, name, keys, inner[0].group)

    def _is_key_item(self, item: exp.Expr, inner: list[Relation]) -> bool:
        expression = item.this if isinstance(item, exp.Alias) else item
        return key_relation(expression, inner, self.dialect) is not None

    def _output(self, item: exp.Expr) -> str | None:
        if isinstance(item, exp.Alias):
            return normalize(item.args["alias"], self.dialect)
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Identifier):
            return normalize(item.this, self.dialect)
        return None

    def _preserving(self, body: exp.Select, inner: list[Relation], what: str) -> frozenset[str]:
        """Check that ``body`` keeps each row on its shard; return its key output names."""
        for arg, clause in (("limit", "LIMIT"), ("offset", "OFFSET")):
            if body.args.get(arg):
                raise UnsupportedQueryError(
                    f"{clause} in {what} over distributed tables",
                    "it picks rows across every shard; " + _REASON,
                )
        keys = frozenset(
            name
            for item in body.expressions
            for name in [self._output(item)]
            if name is not None and self._is_key_item(item, inner)
        )
        group = body.args.get("group")
        grouped = group is not None or bool(own_aggregates(body, body))
        if grouped and not (
            group is not None
            and any(key_relation(g, inner, self.dialect) for g in group.expressions)
        ):
            raise UnsupportedQueryError(
                f"aggregates in {what} over distributed tables, not grouped by the shard key",
                "its groups may span shards, and shardq does not yet run such a subquery "
                "first and substitute its result; " + _REASON,
            )
        distinct = body.args.get("distinct")
        if distinct is not None and (distinct.args.get("on") is not None or not keys):
            raise UnsupportedQueryError(
                f"DISTINCT in {what} over distributed tables without the shard key",
                "equal rows of different shards would each be kept; " + _REASON,
            )
        for window in body.find_all(exp.Window):
            if window.parent_select is body and not any(
                key_relation(p, inner, self.dialect) for p in window.args.get("partition_by") or []
            ):
                raise UnsupportedQueryError(
                    f"the window function {window.sql(self.dialect)} across shards",
                    "its partitions may span shards; " + _REASON,
                )
        return keys

    # -- subqueries outside FROM

    def _subqueries(self, select: exp.Select) -> list[exp.Select]:
        found = []
        from_sources = {id(s) for s in self._sources(select)}
        for node in select.find_all(exp.Select):
            if node is select or node.parent_select is not select:
                continue
            holder = node.parent
            if isinstance(holder, exp.Subquery) and id(holder) in from_sources:
                continue  # a derived table: checked as a relation
            if any(n is node for cte in self.ctes.values() for n in cte.walk()):
                continue
            found.append(node)
        return found

    def _tied(self, select: exp.Select, body: exp.Select, outer: list[Relation]) -> None:
        self._check_outer_aggregates(select, body)
        if not self.distributed_inside(body):
            return
        try:
            self._tie(body, outer)
        except UnsupportedQueryError as exc:
            self._run_first(body, exc)

    def _tie(self, body: exp.Select, outer: list[Relation]) -> None:
        names = ", ".join(sorted({r.table.name for r in self.distributed_inside(body)}))
        if not outer:
            raise UnsupportedQueryError(
                f"a correlated subquery over the distributed table {names}",
                "the outer query reads no distributed table, so the subquery cannot run on "
                "the outer row's shard, and it refers to the outer query, so it cannot run "
                "first on its own; " + _REASON,
            )
        inner = self.scope(body)
        if self._correlated(body, inner, outer):
            return
        holder = body.parent
        in_ = holder.parent if isinstance(holder, exp.Subquery) else holder
        if (
            isinstance(in_, exp.In)
            and _filters_rows(in_)
            and key_relation(in_.this, outer, self.dialect) is not None
            and len(body.expressions) == 1
        ):
            keys = self._preserving(body, inner, "an IN subquery")
            if keys and {r.group for r in inner} == {r.group for r in outer}:
                return
        raise UnsupportedQueryError(
            f"a correlated subquery over the distributed table {names}",
            "it is not tied to the outer row's shard, and it refers to the outer query, so "
            "it cannot run first on its own: correlate it on the shard key with the outer "
            "column qualified (inner.key = outer_table.key); " + _REASON,
        )

    def _correlated(self, body: exp.Select, inner: list[Relation], outer: list[Relation]) -> bool:
        own = {r.alias for r in inner} | {
            normalize(s.args["alias"].this, self.dialect)
            if s.args.get("alias") is not None and s.args["alias"].this
            else normalize(s.this, self.dialect)
            if isinstance(s, exp.Table)
            else ""
            for s in self._sources(body)
        }
        visible = [r for r in outer if r.alias not in own]
        for term in conjuncts(body.args.get("where")):
            if not isinstance(term, exp.EQ):
                continue
            for mine, theirs in ((term.this, term.expression), (term.expression, term.this)):
                here = key_relation(mine, inner, self.dialect)
                if here is None or not isinstance(theirs, exp.Column):
                    continue
                if not theirs.table and (
                    not isinstance(theirs.this, exp.Identifier)
                    or self.own_column(body, normalize(theirs.this, self.dialect)) is not False
                ):
                    continue  # unqualified, and maybe the subquery's own column
                there = key_relation(theirs, visible, self.dialect)
                if there is not None and there.group == here.group:
                    return True
        return False

    def _check_outer_aggregates(self, select: exp.Select, body: exp.Select) -> None:
        """Refuse an aggregate in a select-list subquery that may aggregate the outer rows.

        Aggregates are not allowed in WHERE, so there an inner aggregate is the
        subquery's own; in the select list one over outer columns only would
        make the outer query an aggregate query.
        """
        child: exp.Expr = body
        while child.parent is not None and child.parent is not select:
            child = child.parent
        if child.arg_key not in ("expressions", "having", "order", "group"):
            return
        for node in own_aggregates(body, body):
            if is_aggregate(node) and self._may_aggregate_outer(node, body):
                raise UnsupportedQueryError(
                    f"the aggregate {node.sql(self.dialect)} in a subquery across shards",
                    "it may aggregate the outer query's rows (a column of the outer query "
                    "makes it an aggregate of the outer query); " + _REASON,
                )

    def _may_aggregate_outer(self, node: exp.Expr, inner: exp.Select) -> bool:
        """Whether an aggregate in a subquery might refer only to the outer query's columns.

        A column qualified by a table of the subquery's own FROM, or (with the
        catalog) an unqualified one that a source of the subquery has, is its own.
        """
        own = {
            (t.alias_or_name or "").lower()
            for t in inner.find_all(exp.Table, exp.Subquery)
            if t.parent_select is inner
        }
        if not own:
            return True
        for column in node.find_all(exp.Column):
            if column.table:
                if column.table.lower() not in own:
                    return True
            elif not isinstance(column.this, exp.Identifier) or not self.own_column(
                inner, normalize(column.this, self.dialect)
            ):
                return True
        return False

    # -- outer joins

    def _check_outer_joins(
        self, select: exp.Select, sources: list[exp.Expr], relations: list[Relation]
    ) -> None:
        """Refuse outer joins whose preserved side is not distributed."""
        if not relations:
            return
        distributed = {id(r.node) for r in relations}
        first_is_distributed = bool(sources) and id(sources[0]) in distributed
        top = select.args.get("joins") or []
        for join in select.find_all(exp.Join):
            if join.parent_select is select and not any(join is j for j in top):
                side = (join.side or "").upper()
                if side in ("LEFT", "RIGHT", "FULL"):
                    raise UnsupportedQueryError(
                        f"a nested {side} JOIN across shards", _OUTER_REASON
                    )
        for join in top:
            side = (join.side or "").upper()
            if side in ("RIGHT", "FULL"):
                raise UnsupportedQueryError(f"a {side} JOIN across shards", _OUTER_REASON)
            if side == "LEFT" and not first_is_distributed:
                why = self._unmatched_rows_matter(select, join, sources, relations)
                if why is not None:
                    raise UnsupportedQueryError(
                        f"a {side} JOIN across shards", f"{_OUTER_REASON} ({why})"
                    )

    def _unmatched_rows_matter(
        self, select: exp.Select, join: exp.Join, sources: list[exp.Expr], relations: list[Relation]
    ) -> str | None:
        """Why the unmatched rows a LEFT JOIN repeats on every shard would change the answer.

        ``ref LEFT JOIN dist`` gives, on each shard, every reference row with
        that shard's matches, or once NULL-extended: across shards a reference
        row without a match on some shard repeats. Those extra rows are
        harmless to a grouped query whose groups are reference columns, whose
        WHERE reads only reference columns, and whose aggregates only count or
        combine values of the distributed table (``count(o.id)``, ``sum(o.x)``:
        NULLs are skipped), never ``count(*)``. Returns None when that holds.
        """
        if len(relations) != 1 or relations[0].node is not join.this:
            return "it must join one distributed table to reference tables"
        if len([j for j in select.args.get("joins") or [] if (j.side or "")]) != 1:
            return "only one outer join is checked"
        nullable = relations[0]
        aggregates = own_aggregates(select, select)
        if not aggregates:
            return "only grouped queries can ignore the repeated rows"
        for node in aggregates:
            agg = node.this if isinstance(node, exp.Filter) else node
            if isinstance(node, exp.Filter) or not isinstance(
                agg, exp.Count | exp.Sum | exp.Min | exp.Max | exp.Avg
            ):
                return f"{node.sql(self.dialect)} is not checked for NULL rows"
            argument = agg.this.expressions[0] if isinstance(agg.this, exp.Distinct) else agg.this
            if not self._strict_in(argument, nullable, select):
                return f"{node.sql(self.dialect)} counts the repeated rows"
        group = select.args.get("group")
        parts: list[exp.Expr] = list(group.expressions) if group is not None else []
        parts += [i for i in select.expressions if not own_aggregates(i, select)]
        if select.args.get("where") is not None:
            parts.append(select.args["where"].this)
        # Other joins' conditions decide which rows survive, as the WHERE does.
        parts += [
            j.args["on"]
            for j in select.args.get("joins") or ()
            if j is not join and j.args.get("on") is not None
        ]
        for part in parts:
            if any(True for _ in part.find_all(exp.Select)):
                return "a subquery may read the repeated NULL rows"
            for column in part.find_all(exp.Column):
                if self._side(column, nullable, select) != "kept":
                    return f"{column.sql(self.dialect)} may read the repeated NULL rows"
        return None

    def _side(self, column: exp.Column, nullable: Relation, select: exp.Select) -> str | None:
        """``"nullable"``, ``"kept"`` (a preserved table's column) or None if unknown."""
        if column.table:
            return (
                "nullable"
                if normalize(column.args["table"], self.dialect) == nullable.alias
                else "kept"
            )
        if not isinstance(column.this, exp.Identifier):
            return None
        name = normalize(column.this, self.dialect)
        sides = set()
        for source in self._sources(select):
            columns = self._columns(source)
            if columns is None:
                return None
            if name in columns:
                sides.add("nullable" if source is nullable.node else "kept")
        return sides.pop() if len(sides) == 1 else None

    def _strict_in(self, argument: exp.Expr, nullable: Relation, select: exp.Select) -> bool:
        """Whether ``argument`` is NULL on a NULL-extended row: columns of the nullable table
        under arithmetic only."""
        if isinstance(argument, exp.Column):
            return self._side(argument, nullable, select) == "nullable"
        if isinstance(argument, exp.Paren):
            return self._strict_in(argument.this, nullable, select)
        if isinstance(argument, exp.Add | exp.Sub | exp.Mul | exp.Div):
            sides = [argument.this, argument.expression]
            return any(self._strict_in(a, nullable, select) for a in sides) and all(
                self._strict_in(a, nullable, select) or isinstance(a, exp.Literal) for a in sides
            )
        return False


def _filters_rows(node: exp.Expr) -> bool:
    """Whether ``node`` is a top-level AND term of a WHERE (only its truth matters there).

    ``key IN (subquery)`` on one shard is FALSE where the whole subquery would
    make it NULL (a NULL on another shard); in a WHERE both drop the row, but
    under NOT, OR, in a select list or a CASE they differ.
    """
    parent = node.parent
    while isinstance(parent, exp.And | exp.Paren):
        parent = parent.parent
    return isinstance(parent, exp.Where)


def _ancestors(node: exp.Expr, top: exp.Expr | None) -> list[exp.Expr]:
    found = []
    current = node.parent
    while current is not None and current is not top:
        found.append(current)
        current = current.parent
    return found


def check_local(
    analysis: Analysis, config: Config, catalog: Catalog | None = None
) -> list[Relation]:
    """Raise :class:`UnsupportedQueryError` unless every row the read computes is local.

    >>> from shardq.config import load_config
    >>> from shardq.sql.analyze import analyze
    >>> from shardq.sql.parse import parse
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}],
    ...                    "tables": {"t": {"shard_key": "k"}, "u": {"shard_key": "k"}}})
    >>> local = analyze(parse("SELECT count(*) FROM t WHERE x > 1", "sqlite"), cfg)
    >>> [r.alias for r in check_local(local, cfg)]
    ['t']
    >>> check_local(analyze(parse("SELECT * FROM t JOIN u USING (k)", "sqlite"), cfg), cfg)
    Traceback (most recent call last):
    ...
    shardq.errors.UnsupportedQueryError: a query over several distributed tables (t, u) ...
    """
    statement = analysis.parsed.expression
    if not isinstance(statement, exp.Select):
        raise UnsupportedQueryError(f"{statement.key.upper()} across shards", _REASON)
    checker = _Checker(analysis, config, catalog=catalog)
    relations = checker.scope(statement)
    if not relations and checker.distributed_inside(statement):
        names = ", ".join(sorted({r.table.name for r in checker.distributed_inside(statement)}))
        raise UnsupportedQueryError(f"a subquery over the distributed table {names}", _REASON)
    return relations


def row_preserving(
    analysis: Analysis, config: Config, catalog: Catalog | None, what: str
) -> list[Relation]:
    """The distributed relations of a read whose every row stays on its source rows' shard.

    :func:`check_local`'s proof, and what a derived table needs besides (no
    LIMIT or OFFSET, groups containing the shard key, a DISTINCT that keeps
    it, windows partitioned by it): the read run on each shard then returns
    exactly the rows one database computes from that shard's rows. ``what``
    names the read in a refusal.

    >>> from shardq.config import load_config
    >>> from shardq.sql.analyze import analyze
    >>> from shardq.sql.parse import parse
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}],
    ...                    "tables": {"t": {"shard_key": "k"}}})
    >>> [r.alias for r in row_preserving(
    ...     analyze(parse("SELECT k, count(*) FROM t GROUP BY k", "sqlite"), cfg), cfg, None, "it")]
    ['t']
    >>> row_preserving(analyze(parse("SELECT count(*) FROM t", "sqlite"), cfg), cfg, None, "it")
    Traceback (most recent call last):
    ...
    shardq.errors.UnsupportedQueryError: aggregates in it over distributed tables, not grouped ...
    """
    statement = analysis.parsed.expression
    if not isinstance(statement, exp.Select):
        raise UnsupportedQueryError(f"{statement.key.upper()} in {what}", _REASON)
    checker = _Checker(analysis, config, catalog=catalog)
    relations = checker.scope(statement)
    if not relations:
        raise UnsupportedQueryError(f"{what} without a distributed table in its FROM", _REASON)
    checker._preserving(statement, relations, what)
    return relations


def input_column(
    analysis: Analysis, config: Config, catalog: Catalog | None
) -> Callable[[str], bool | None]:
    """A function telling whether the statement's FROM has a column (None: not known)."""
    checker = _Checker(analysis, config, catalog=catalog)
    statement = analysis.parsed.expression
    assert isinstance(statement, exp.Select)
    return lambda name: checker.own_column(statement, name)


def run_first(
    analysis: Analysis, config: Config, catalog: Catalog | None = None
) -> list[exp.Select]:
    """The subqueries to run first, on their own, so that the rest of the read is local.

    A CTE, derived table or uncorrelated subquery over distributed tables that
    cannot run on the shards as part of the query (its groups span shards,
    it is not tied to the outer row's shard, the outer query reads only
    reference tables) is run first as a distributed query of its own; its
    result then replaces it (:mod:`shardq.sql.subplans`). Returns them in the
    order they must run (an empty list if the query is local as it is).

    Raises:
        UnsupportedQueryError: the query is not local for another reason, or a
            subquery refers to a table of the outer query.
    """
    statement = analysis.parsed.expression
    if not isinstance(statement, exp.Select):
        raise UnsupportedQueryError(f"{statement.key.upper()} across shards", _REASON)
    checker = _Checker(analysis, config, collect=True, catalog=catalog)
    checker.scope(statement)
    return checker.first
