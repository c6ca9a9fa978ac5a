"""Planning: a statement and its parameters to a :class:`QueryPlan`.

Planning is pure: it reads the configuration, never a database. Parsing and
analysis depend only on the SQL text, so they are cached (an LRU keyed by the
text); routing depends on the bound parameters and is redone per call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import ProgrammingError, UnsupportedQueryError
from shardq.merge.steps import MergePlan
from shardq.placement import text_pins
from shardq.sql.affinity import shippable
from shardq.sql.analyze import Analysis, StatementKind, analyze, normalize
from shardq.sql.catalog import implicit_columns
from shardq.sql.decorrelate import (
    Decorrelated,
    decorrelate,
    decorrelated_columns,
    decorrelated_ctes,
)
from shardq.sql.gather import Gather, plan_gather
from shardq.sql.insert_select import Feed, plan_insert_select
from shardq.sql.locality import Catalog, run_first
from shardq.sql.move import Move, plan_move
from shardq.sql.parse import parse
from shardq.sql.regenerate import for_psycopg
from shardq.sql.rewrite import Distributed, distribute, positional_as_named
from shardq.sql.rewrite.order import is_star
from shardq.sql.route import (
    Route,
    RouteKind,
    moved_to,
    pinning_placeholder,
    route,
    row_shards,
    written_table,
)
from shardq.sql.split import Split, split_insert
from shardq.sql.subplans import Deferred, Result, defer

if TYPE_CHECKING:
    from collections.abc import Callable

    from shardq.config import Config
    from shardq.sql.catalog import Columns

__all__ = ["Planner", "QueryPlan"]

_PASS_THROUGH = MergePlan()
_REPLICATED = MergePlan(first_source_only=True)


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """What to run where, and how to merge it.

    Attributes:
        sql: the statement each target shard runs (rewritten for a merge).
        params: the parameters bound to it.
        kind: read or which write.
        route: the target shards (resolved against the pools at execution).
        merge: how the shards' results are combined.
        strategy: how the statement is distributed, in words (for EXPLAIN).
    """

    sql: str
    params: object
    kind: StatementKind
    route: Route
    merge: MergePlan
    strategy: str = "runs as written"
    # Subqueries to run first; the statement is then planned again with their
    # results in place (see shardq.sql.subplans).
    deferred: Deferred | None = None
    # An INSERT whose rows belong to several shards: one part per shard.
    split: Split | None = None
    # An UPDATE that moves rows to the shard of the key it sets.
    move: Move | None = None
    # An INSERT ... SELECT whose selected rows shardq routes to their shards.
    feed: Feed | None = None
    # A read gathered to one shard and run there as written (see shardq.sql.gather).
    gather: Gather | None = None


class Planner:
    """Plans statements for one configuration, with an LRU of analyses.

    The rewrite of a multi-shard read depends only on the text, so it is
    cached with the analysis; binding the parameters (routing, LIMIT values)
    is redone per call and costs microseconds.
    """

    def __init__(self, config: Config, *, cache_size: int = 512):
        self.config = config
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._cache_size = cache_size
        self.catalog: Catalog | None = None
        self.columns: Columns = {}

    def forget_catalog(self) -> None:
        """Drop the catalog (after a schema change): it is read again when next needed."""
        self.catalog = None
        self.columns = {}
        self._cache.clear()

    def set_catalog(self, catalog: Catalog, columns: Columns | None = None) -> None:
        """Give the planner the declared tables' columns (plans made before are dropped).

        ``catalog`` holds each table's column names as the database resolves
        them; ``columns`` the columns themselves, in order, with their
        declared types (and, on SQLite, collations).
        """
        self.catalog = catalog
        self.columns = columns if columns is not None else {}
        self._cache.clear()

    def wants_catalog(self, sql: str) -> bool:
        """Whether planning ``sql`` may use the catalog, and it is not loaded yet.

        Subqueries over distributed tables need it, to tell an outer column
        from the subquery's own; outer joins, to tell which side a column is
        on; GROUP BY, to tell an input column from a select-list name.
        """
        if self.catalog is not None:
            return False
        analysis = self.analyze(sql)
        wanted: bool | None = analysis.memo.get("wants-catalog")
        if wanted is None:
            statement = analysis.parsed.expression
            written = written_table(analysis)
            wanted = (
                written is not None
                # its columns: a reference table's all given, or where VALUES put the key
                and (not written.table.distributed or not isinstance(statement.this, exp.Schema))
            ) or (
                bool(analysis.distributed)
                and (
                    # SQLite merges with the columns' affinities and collations.
                    self.config.dialect == "sqlite"
                    or any(ref.node.parent_select is not statement for ref in analysis.distributed)
                    or any(join.side for join in statement.find_all(exp.Join))
                    or statement.args.get("group") is not None  # a name: a column or an alias?
                    # SELECT * ... ORDER BY 3: the columns * stands for
                    or any(is_star(item) for item in statement.expressions)
                )
            )
            analysis.memo["wants-catalog"] = wanted
        return wanted

    def analyze(self, sql: str) -> Analysis:
        """Parse and analyse ``sql`` (cached). Raises before any shard is contacted."""
        found = self._cache.get(sql)
        if found is not None:
            self._cache.move_to_end(sql)
            return found
        analysis = analyze(parse(sql, self.config.dialect), self.config)
        self._cache[sql] = analysis
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return analysis

    def router(self, sql: str) -> Callable[[object], str | None] | None:
        """A quick router for many parameter sets of ``sql`` (memoized per text), or None.

        Given a parameter set, it returns the one shard the statement runs on
        unchanged (what :meth:`plan` would choose, with the SQL and the
        parameters passed through), or None: that parameter set takes the
        general path. Only one-table reads pinned by one placeholder have a
        router: a batch of lookups by key spends its time on the shards, not
        planning.
        """
        analysis = self.analyze(sql)
        memo = analysis.memo
        if "router" in memo:
            router: Callable[[object], str | None] | None = memo["router"]
            return router
        router = None
        found = pinning_placeholder(analysis)
        if found is not None and not analysis.parsed.hidden_placeholders:
            name, position, key_type = found
            shard_for = self.config.placement.shard_for

            def router(params: object) -> str | None:
                if position is not None and type(params) in (tuple, list):
                    if position >= len(params):  # type: ignore[arg-type]
                        return None
                    value = params[position]  # type: ignore[index]
                elif type(params) is dict:
                    value = params.get(name)
                else:
                    return None
                kind = type(value)
                if kind is int or (kind is str and text_pins(value, key_type)):
                    return shard_for(value)
                return None  # None, a cast, another type: the general path decides

        memo["router"] = router
        return router

    def distributed(self, analysis: Analysis) -> Distributed:
        """The multi-shard rewrite of a read (cached; refusals too)."""
        found = analysis.memo.get("distributed")
        if found is None:
            try:
                found = distribute(analysis, self.config, self.catalog, self.columns)
            except UnsupportedQueryError as exc:
                found = exc
            analysis.memo["distributed"] = found
        if isinstance(found, UnsupportedQueryError):
            raise UnsupportedQueryError(found.construct, found.reason, gatherable=found.gatherable)
        return found

    def deferred(self, analysis: Analysis, refusal: UnsupportedQueryError) -> Deferred:
        """The recursive plan of a read that is not local as it stands (cached).

        Raises ``refusal`` when running subqueries first cannot make it local.
        """
        found = analysis.memo.get("deferred")
        if found is None:
            try:
                statement = analysis.parsed.expression
                first = (  # (a set operation's own refusal says what it refuses)
                    run_first(analysis, self.config, self.catalog)
                    if isinstance(statement, exp.Select)
                    else []
                )
                if (
                    first
                    and self.config.dialect == "sqlite"
                    and not all(shippable(body, analysis, self.columns) for body in first)
                ):
                    # SQLite compares by column affinity, which rows shipped back as
                    # parameters do not have: '010' = 10 would change its answer.
                    body = next(b for b in first if not shippable(b, analysis, self.columns))
                    raise UnsupportedQueryError(
                        f"the subquery ({body.sql('sqlite')}) across shards",
                        "it is not tied to the outer row's shard, so it would have to run "
                        "first on its own and its rows be shipped back to the shards; on "
                        "SQLite shards shardq does that only for columns without affinity "
                        "or collation (aggregates, arithmetic), as SQLite compares by them "
                        "and shipped values have neither; run the subquery first yourself, "
                        "or pin the query to one shard",
                    )
                found = (
                    defer(
                        analysis.parsed.expression,
                        first,
                        self.config.dialect,
                        analysis.parsed.positional,
                        analysis.parsed.source,
                        analysis.parsed.text,
                    )
                    if first
                    else refusal
                )
            except UnsupportedQueryError as exc:
                found = exc
            analysis.memo["deferred"] = found
        if isinstance(found, UnsupportedQueryError):
            raise UnsupportedQueryError(found.construct, found.reason, gatherable=found.gatherable)
        return found

    def decorrelated(
        self, analysis: Analysis, params: object, why: UnsupportedQueryError
    ) -> QueryPlan | None:
        """The plan of a read whose correlated subqueries are decorrelated, or None.

        See :mod:`shardq.sql.decorrelate`: the statement is rewritten, its
        new CTEs run first (each a distributed GROUP BY) and their groups put
        in their place, and the statement is then planned again. None when
        nothing is decorrelated, or when the statement would still be
        gathered then (gathering the original is cheaper), or when
        ``max_decorrelated_rows`` is 0.
        """
        limit = self.config.max_decorrelated_rows
        if limit == 0 or self.catalog is None:
            return None
        bound = positional_as_named(params, analysis.parsed.positional)
        chosen = None
        for joined in (True, False):  # LEFT JOINs of the groups, or else lookups
            key = ("decorrelated", joined, len(self.columns))
            found: tuple[Decorrelated, Deferred] | UnsupportedQueryError | None
            found = analysis.memo.get(key)
            if found is None:
                try:
                    decorrelated = decorrelate(analysis, self.columns, joined=joined)
                    rewritten = self.analyze(decorrelated.sql)
                    deferred = defer(
                        rewritten.parsed.expression,
                        decorrelated_ctes(rewritten.parsed.expression, decorrelated.ctes),
                        self.config.dialect,
                        rewritten.parsed.positional,
                        rewritten.parsed.source,
                        rewritten.parsed.text,
                    )
                    subplans = tuple(replace(s, max_rows=limit) for s in deferred.subplans)
                    found = (decorrelated, replace(deferred, subplans=subplans))
                except UnsupportedQueryError as exc:
                    found = exc
                analysis.memo[key] = found
            if isinstance(found, UnsupportedQueryError):
                return None
            # Planned with no group in place (whether it is gathered depends on the
            # text, not on the groups): if even then the statement would be
            # gathered, gather the original.
            gathers: bool | None = analysis.memo.get((*key, "gathers"))
            if gathers is None:
                empty = [
                    Result(names, (20,) * len(names), [])
                    for names in (decorrelated_columns(s.sql) for s in found[1].subplans)
                ]
                dry_sql, dry_params = found[1].substitute(empty, bound)
                escaped = for_psycopg(dry_sql, strings_escaped=bound is not None)
                gathers = self.plan(escaped, dry_params).gather is not None
                analysis.memo[(*key, "gathers")] = gathers
            if not gathers:
                chosen = found
                break
        if chosen is None:
            return None
        decorrelated, deferred = chosen
        strategy = (
            f"decorrelated ({why.construct}): {'; '.join(decorrelated.subqueries)}; each "
            "grouped by the columns it is correlated on and run first as a distributed query "
            "of its own; the statement is then planned again with the groups as parameters"
        )
        target = route(analysis, params, self.config, self.columns)
        return QueryPlan(
            decorrelated.sql, bound, analysis.kind, target, _PASS_THROUGH, strategy, deferred
        )

    def gathered(
        self,
        sql: str,
        params: object = None,
        target: Route | None = None,
        why: UnsupportedQueryError | None = None,
        *,
        everything: bool = False,
    ) -> QueryPlan:
        """The plan of a multi-shard read gathered to one shard (see :mod:`shardq.sql.gather`).

        The fallback when no merge answers it exactly, at planning or, for a
        refusal met at execution (a correlated subquery, an order the merge
        cannot reproduce), then; ``why`` is that refusal, told in the strategy.
        Its columns are pruned with the catalog when it is loaded (all of them
        otherwise). ``everything``: its reference tables are gathered too (in
        a transaction).
        """
        analysis = self.analyze(sql)
        key = ("gather", len(self.columns), everything)
        gather: Gather | None = analysis.memo.get(key)
        if gather is None:
            gather = analysis.memo[key] = plan_gather(analysis, self.columns, everything=everything)
        if target is None:
            target = route(analysis, params, self.config, self.columns)
        because = (
            ""
            if why is None
            else f" as no merge answers it exactly ({why.construct}: {why.reason})"
        )
        strategy = f"gathered to one shard{because}"
        return QueryPlan(sql, params, analysis.kind, target, _PASS_THROUGH, strategy, gather=gather)

    def _gathered_instead(
        self, analysis: Analysis, deferred: Deferred, sql: str, params: object, target: Route
    ) -> QueryPlan | None:
        """The gather of a read whose run-first derived tables would themselves be gathered.

        Run first, such a table is gathered to one shard, its rows (all of
        them: the statement filters, joins or ranks them afterwards) brought
        back to the client and shipped out again as parameters. When they hold
        every distributed table the statement reads, gathering the whole
        statement moves the same base rows once and reads them where they are
        (a window over half a million rows: 3.4 s run first, 1.0 s gathered
        whole). When the statement reads another distributed table, that one
        would move too, where run first it stays on its shards: run first it
        is. A subquery read as a value or a list stays run first as well: its
        result is usually small, and the statement around it distributed.
        """
        if self.config.dialect != "postgres" or not any(s.table for s in deferred.subplans):
            return None
        named = positional_as_named(params, analysis.parsed.positional)
        gathered = []
        for subplan in deferred.subplans:
            if not subplan.table:
                continue
            try:
                inner = self.plan(subplan.sql, named)
            except (UnsupportedQueryError, ProgrammingError):
                continue
            if inner.gather is not None:
                gathered.append(subplan)
        inside = sum(len(self.analyze(s.sql).distributed) for s in gathered)
        if not gathered or inside < len(analysis.distributed):
            return None
        why = UnsupportedQueryError(
            f"the derived table ({gathered[0].sql})",
            "no merge answers it exactly, so it would be gathered to one shard, its rows "
            "brought back and shipped out again; the whole read is gathered instead",
        )
        try:
            return self.gathered(sql, params, target, why)
        except UnsupportedQueryError:
            return None  # (a name the gather cannot shadow): run first, as before

    def _check_defaults(self, analysis: Analysis, table: str) -> None:
        """Refuse an INSERT into a reference table that leaves a column to its default.

        A default (a serial, now()) is computed by each shard: the copies could differ.
        """
        statement = analysis.parsed.expression
        if analysis.kind is not StatementKind.INSERT:
            return
        target = statement.this
        known = self.columns.get(table)
        fold = self.config.dialect == "sqlite"
        if isinstance(target, exp.Schema):
            given = {
                normalize(c.this, self.config.dialect) if isinstance(c, exp.Column | exp.Identifier)
                else c.name.lower()
                for c in target.expressions
            }  # fmt: skip
        else:  # no column list: the values fill the table's first columns
            given = set(implicit_columns(statement, known or (), fold=fold))
        if known is None:
            missing = ["(the table's columns are not known)"]
        else:
            missing = [c.name for c in known if (c.name.lower() if fold else c.name) not in given]
        if missing:
            raise UnsupportedQueryError(
                f"an INSERT into the reference table {table} without {', '.join(missing)}",
                "a column left to its default (a serial, now()) would get its value from each "
                "shard, so the copies could differ; give every column a value",
            )

    def _check_view(self, analysis: Analysis) -> None:
        """Refuse a view whose rows would not be placed as its declaration says.

        A view is declared like a table. Declared distributed, each shard's
        view must hold only rows of that shard, each once, with the shard key
        carried through: its query must run on every shard as written with
        nothing to merge (no aggregate, DISTINCT, ORDER BY or LIMIT across
        shards), and the view's key column must be the key of a distributed
        table it reads. Declared reference, it must read reference tables only.
        """
        statement = analysis.parsed.expression
        body = statement.args.get("expression")
        if not isinstance(statement, exp.Create) or body is None:
            return
        dialect = self.config.dialect
        schema = statement.this
        view_node = schema.this if isinstance(schema, exp.Schema) else schema
        view = next(ref for ref in analysis.refs if ref.node is view_node).table
        read = [ref for ref in analysis.distributed if ref.node is not view_node]
        if not view.distributed:
            if read:
                raise UnsupportedQueryError(
                    f"the view {view.name}, declared a reference table, over the distributed "
                    f"table {read[0].table.name}",
                    "each shard's view would show only its own rows, so the copies would "
                    "differ; declare the view distributed by a shard key it carries",
                )
            return
        body_sql = body.sql(dialect)
        inner = self.plan(body_sql)
        construct = f"the view {view.name}, declared distributed by {view.shard_key}"
        if not read:
            raise UnsupportedQueryError(
                construct,
                "it reads reference tables only, so every shard's view would hold every row "
                "and a read would see each row once per shard; declare it a reference table",
            )
        if (
            inner.deferred is not None
            or inner.gather is not None
            or not inner.merge.trivial
            or inner.sql != body_sql
        ):
            raise UnsupportedQueryError(
                construct,
                "its query is merged across shards (an aggregate, DISTINCT, ORDER BY, LIMIT "
                "or a subquery run first), so each shard's view would not hold that shard's "
                "rows only; a distributed view must be a query each shard answers for its "
                "own rows (filters, projections, joins on the shard key)",
            )
        columns = (
            [normalize(c, dialect) for c in schema.expressions] if schema is not view_node else []
        )
        items = body.selects if isinstance(body, exp.Select) else []
        names = columns or [normalize(item.alias_or_name, dialect) for item in items]
        if view.shard_key not in names or len(items) != len(names):
            raise UnsupportedQueryError(construct, f"it has no column {view.shard_key}")
        item = items[names.index(view.shard_key)].unalias()
        keys = {(ref.alias, ref.table.shard_key): ref.table for ref in read}
        source = None
        if isinstance(item, exp.Column):
            qualifier = normalize(item.args.get("table"), dialect) if item.table else None
            column = normalize(item.this, dialect)
            matches = [
                table
                for (alias, key), table in keys.items()
                if key == column and (qualifier is None or qualifier == alias)
            ]
            source = matches[0] if len(matches) == 1 or (matches and len(read) == 1) else None
        if source is None or source.key_type != view.key_type:
            raise UnsupportedQueryError(
                construct,
                f"its column {view.shard_key} must be the shard key of a distributed table it "
                "reads, of the same key type, so that each row of the view is on the shard "
                "its key says",
            )

    def plan(self, sql: str, params: object = None) -> QueryPlan:
        """Return the plan of ``sql`` with ``params`` bound."""
        analysis = self.analyze(sql)
        if params is not None and analysis.parsed.hidden_placeholders:
            raise ProgrammingError(
                "the statement has a placeholder (%s) inside a string literal or a comment, "
                "which psycopg would bind too; write %% there for a literal percent sign"
            )
        chosen = plan_insert_select(analysis, params, self.config, self.catalog, self.columns)
        if chosen is not None:
            return QueryPlan(
                sql, params, analysis.kind, chosen.route, _PASS_THROUGH, chosen.strategy,
                feed=chosen.feed,
            )  # fmt: skip
        target = route(analysis, params, self.config, self.columns)
        if analysis.kind is StatementKind.UPDATE:
            new_home = moved_to(analysis, params, self.config)
            if new_home is not None and target.shards != (new_home,):
                why = (
                    f"an UPDATE that sets the shard key: rows on other shards move to "
                    f"{new_home} (updated and deleted there, inserted on {new_home}), "
                    "committed on all of them or none (two-phase commit)"
                )
                move = plan_move(analysis, params, new_home)
                return QueryPlan(sql, params, analysis.kind, target, _PASS_THROUGH, why, move=move)
        many = target.kind is RouteKind.ALL or len(target.shards) > 1
        if not (many and analysis.kind is StatementKind.READ and len(self.config.shards) > 1):
            if analysis.kind is StatementKind.SCHEMA:
                self._check_view(analysis)
                why = (
                    "a schema change on every shard, committed on all of them or none "
                    "(two-phase commit; on SQLite shards, or CONCURRENTLY, one after another)"
                )
                return QueryPlan(sql, params, analysis.kind, target, _REPLICATED, why)
            written = written_table(analysis)
            if written is not None and not written.table.distributed:
                self._check_defaults(analysis, written.table.name)
                why = (
                    f"an {analysis.kind.value.upper()} of a reference table on every shard, "
                    "committed on all of them or none (two-phase commit); its result is one "
                    "shard's"
                )
                return QueryPlan(sql, params, analysis.kind, target, _REPLICATED, why)
            if analysis.kind is StatementKind.INSERT and many:
                split = split_insert(
                    analysis, params, row_shards(analysis, params, self.config, self.columns)
                )
                why = (
                    f"an INSERT split by shard key into {len(split.parts)} INSERTs, one per "
                    "shard, committed on all of them or none (two-phase commit); RETURNING "
                    "rows in the order of the VALUES"
                )
                return QueryPlan(
                    sql, params, analysis.kind, target, _PASS_THROUGH, why, split=split
                )
            if analysis.kind.is_write and many and len(self.config.shards) > 1:
                why = (
                    f"an {analysis.kind.value.upper()} on every shard that can hold its rows, "
                    "committed on all of them or none (two-phase commit)"
                )
            elif analysis.kind.is_write:
                why = f"an {analysis.kind.value.upper()} routed by its shard key"
            elif target.kind is RouteKind.ANY:
                why = "it reads only reference tables: any one shard answers it whole"
            elif len(self.config.shards) == 1:
                why = "there is one shard"
            else:
                why = "its shard-key condition pins it to the shards that hold the keys"
            return QueryPlan(sql, params, analysis.kind, target, _PASS_THROUGH, why)
        try:
            rewritten = self.distributed(analysis)
        except UnsupportedQueryError as refusal:
            try:
                deferred = self.deferred(analysis, refusal)
            except UnsupportedQueryError as why:
                if not why.gatherable:
                    raise
                if self.config.dialect == "postgres":
                    decorrelated = self.decorrelated(analysis, params, why)
                    if decorrelated is not None:
                        return decorrelated
                return self.gathered(sql, params, target, why)
            gathered = self._gathered_instead(analysis, deferred, sql, params, target)
            if gathered is not None:
                return gathered
            strategy = (
                f"subqueries run first ({len(deferred.subplans)}), each as a distributed "
                "query of its own; the statement is then planned again with their results "
                "as parameters"
            )
            return QueryPlan(sql, params, analysis.kind, target, _PASS_THROUGH, strategy, deferred)
        merge = rewritten.bind(params)
        if rewritten.sql is None:
            return QueryPlan(sql, params, analysis.kind, target, merge, rewritten.strategy)
        sql, bound = rewritten.sql, positional_as_named(params, analysis.parsed.positional)
        if self.config.dialect == "postgres":
            # Sent with parameters always, so that psycopg reads every "%%" alike.
            sql = for_psycopg(sql, strings_escaped=params is not None)
            bound = {} if bound is None else bound
        return QueryPlan(sql, bound, analysis.kind, target, merge, rewritten.strategy)
