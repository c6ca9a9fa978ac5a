"""The engine: plan, then execute on the shards, then merge, on one screen.

Everything a statement goes through is here in order; the result cache will
sit between planning and execution.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from shardq.errors import ConfigError, ProgrammingError, ShardError, UnsupportedQueryError
from shardq.execute.driver import ShardPool, get_driver
from shardq.execute.scatter import Scatter
from shardq.execute.textorder import (
    ORDERABLE_TYPES,
    TEXT_TYPES,
    code_point_order,
    collation_name,
)
from shardq.merge.drive import drive
from shardq.merge.evaluate import semantics
from shardq.merge.pipeline import compared_columns, merger
from shardq.results import AsyncResult
from shardq.rows import tuple_row
from shardq.sql.explain import Analyzed, ShardRun, explain
from shardq.sql.plan import Planner, QueryPlan
from shardq.sql.regenerate import for_psycopg
from shardq.sql.rewrite import positional_as_named
from shardq.sql.subplans import Result

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shardq.config import Config
    from shardq.merge import Rows
    from shardq.rows import RowFactory

__all__ = ["DEFAULT_FETCH_SIZE", "Engine"]

DEFAULT_FETCH_SIZE = 2000


class Engine:
    """Runs statements for one configuration over one pool per shard."""

    def __init__(
        self,
        config: Config,
        pools: Mapping[str, ShardPool],
        *,
        fetch_size: int = DEFAULT_FETCH_SIZE,
    ):
        if fetch_size < 1:
            raise ValueError("fetch_size must be at least 1")
        self.config = config
        self.pools = dict(pools)
        self.planner = Planner(config)
        self.fetch_size = fetch_size
        self._semantics = semantics(config.dialect)
        # Each shard's default text order, asked once: "code point" or its collation.
        self._text_order: dict[str, str] = {}
        # Reads of reference tables only go to one shard, taken in turn.
        self._turn = itertools.cycle(config.shard_names)

    @classmethod
    def from_config(cls, config: Config, *, fetch_size: int = DEFAULT_FETCH_SIZE) -> Engine:
        """Build the pools with the driver the configuration names."""
        try:
            driver = get_driver(config.driver)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0]), file=config.source, field="driver") from None
        return cls(
            config, {s.name: driver(config, s) for s in config.shards}, fetch_size=fetch_size
        )

    def plan(self, sql: str, params: object = None) -> QueryPlan:
        """Plan a statement; raises on bad SQL before any shard is contacted."""
        return self.planner.plan(sql, params)

    async def plan_async(self, sql: str, params: object = None) -> QueryPlan:
        """Plan a statement, reading the catalog first if its subqueries need it."""
        if self.planner.wants_catalog(sql):
            await self._load_catalog()
        return self.planner.plan(sql, params)

    async def _load_catalog(self) -> None:
        """Read the declared tables' columns from the first shard, once."""
        pool = self.pools[self.config.shard_names[0]]
        catalog: dict[str, frozenset[str]] = {}
        async with pool.connection() as conn:
            for table in self.config.tables:
                stream = await conn.execute(*pool.columns_query(table), fetch_size=10_000)
                names: list[str] = []
                try:
                    while batch := await stream.fetch():
                        names += [str(row[0]) for row in batch]
                finally:
                    await stream.aclose()
                if names:
                    fold = self.config.dialect == "sqlite"  # SQLite names ignore case
                    catalog[table] = frozenset(n.lower() if fold else n for n in names)
        self.planner.set_catalog(catalog)

    async def execute(
        self,
        sql: str,
        params: object = None,
        *,
        timeout: float | None,
        row_factory: RowFactory,
    ) -> AsyncResult:
        """Run one statement and return its merged, streaming result."""
        plan = await self.plan_async(sql, params)
        if plan.deferred is not None:
            return await self._execute_deferred(plan, timeout=timeout, row_factory=row_factory)
        shards = plan.route.resolve(self.config.shard_names, next(self._turn))
        scatter, types = await self._start(plan, shards, timeout)
        merge = merger(plan.merge, len(shards), self._semantics, types)
        return await AsyncResult.start(scatter, merge, row_factory, plan.merge, self._semantics)

    async def _start(
        self, plan: QueryPlan, shards: tuple[str, ...], timeout: float | None
    ) -> tuple[Scatter, list[Any]]:
        """Start ``plan`` on ``shards``; return the scatter and the shards' column types.

        A merge that orders values is refused here, before any row is merged,
        when the shards order them otherwise than the merge would.
        """
        if plan.merge.compares:
            await self._learn_text_order(shards)
        scatter = Scatter(self.pools, shards, timeout)
        await scatter.start(
            plan.sql, plan.params, fetch_size=self.fetch_size, stream=not plan.kind.is_write
        )
        types = [c.type_code for c in scatter.description or ()]
        if plan.merge.compares:
            try:
                self._check_text_order(plan, shards, types)
            except BaseException:
                await scatter.close()
                raise
        return scatter, types

    async def _execute_deferred(
        self, plan: QueryPlan, *, timeout: float | None, row_factory: RowFactory
    ) -> AsyncResult:
        """Run a plan's subqueries first, then the statement with their results in place."""
        assert plan.deferred is not None
        deferred = plan.deferred
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        params = positional_as_named(plan.params, deferred.positional)
        results = []
        escaped = plan.params is not None
        for subplan in deferred.subplans:
            sub_sql = subplan.sql
            if self.config.dialect == "postgres" and escaped:
                sub_sql = for_psycopg(sub_sql, strings_escaped=True)  # its "%" operators
            try:
                result = await self.execute(sub_sql, params, timeout=left(), row_factory=tuple_row)
                rows = await result.fetchall()
            except ShardError as exc:
                if exc.sqlstate in ("42703", "42P01") or "no such column" in str(exc):
                    raise UnsupportedQueryError(
                        f"the subquery {subplan.sql}",
                        "run on its own it names a column it does not have, so it refers to "
                        "the outer query (a correlated subquery); shardq runs a correlated "
                        "subquery over distributed tables only when it is correlated on the "
                        "shard key, with the outer column qualified",
                    ) from exc
                raise
            description = result.description or ()
            results.append(
                Result(
                    tuple(c.name for c in description),
                    tuple(c.type_code for c in description),
                    rows,
                )
            )
        sql, bound = deferred.substitute(results, plan.params)
        if self.config.dialect == "postgres":
            sql = for_psycopg(sql, strings_escaped=escaped)
        return await self.execute(sql, bound, timeout=left(), row_factory=row_factory)

    async def _learn_text_order(self, shards: tuple[str, ...]) -> None:
        """Ask each shard not asked before how it orders text (see :mod:`.textorder`)."""
        for shard in shards:
            if shard in self._text_order:
                continue
            pool = self.pools[shard]
            sql = getattr(pool, "collation_sql", None)
            if sql is None:
                self._text_order[shard] = "code point"
                continue
            async with pool.connection() as conn:
                stream = await conn.execute(sql, None, fetch_size=10)
                try:
                    rows = await stream.fetch()
                finally:
                    await stream.aclose()
            row = rows[0] if rows else ()
            self._text_order[shard] = "code point" if code_point_order(row) else collation_name(row)

    def _check_text_order(self, plan: QueryPlan, shards: tuple[str, ...], types: list[Any]) -> None:
        """Refuse a merge that would order values in another order than the shards'."""
        compared = compared_columns(plan.merge, types, self._semantics)
        for type_code in compared:
            if isinstance(type_code, int) and type_code not in ORDERABLE_TYPES:
                raise UnsupportedQueryError(
                    f"ordering values of type OID {type_code} across shards",
                    "shardq's merge orders built-in numbers, text, booleans, dates and times, "
                    "uuids and bytes the way PostgreSQL does; enums, records, arrays, JSON and "
                    "other types it cannot: cast the column, or pin the query to one shard",
                )
        if not any(t in TEXT_TYPES for t in compared):
            return
        other = {self._text_order[s] for s in shards} - {"code point"}
        if other:
            raise UnsupportedQueryError(
                f"ordering text across shards under the collation {sorted(other)[0]!r}",
                "shardq merges text in code-point order, which is the order of the C and "
                'C.UTF-8 collations only; order by the text COLLATE "C", or create the '
                "shard databases with LC_COLLATE C.UTF-8",
            )

    async def explain(
        self, sql: str, params: object = None, *, analyze: bool = False, timeout: float | None
    ) -> str:
        """The plan of a statement in words; with ``analyze``, run it and add what happened."""
        plan = await self.plan_async(sql, params)
        shards = plan.route.resolve(self.config.shard_names, next(self._turn))
        total = len(self.config.shards)
        if not analyze:
            return explain(plan, shards, total=total)
        if plan.kind.is_write:
            raise ProgrammingError("EXPLAIN ANALYZE runs the statement; shardq analyzes reads only")
        began = time.perf_counter()
        if plan.deferred is not None:
            result = await self._execute_deferred(plan, timeout=timeout, row_factory=tuple_row)
            count = len(await result.fetchall())
            analyzed = Analyzed((), count, time.perf_counter() - began)
            return explain(plan, shards, total=total, analyzed=analyzed)
        received = [0] * len(shards)
        done: list[float | None] = [None] * len(shards)
        waited = 0.0
        scatter, types = await self._start(plan, shards, timeout)
        try:
            started = time.perf_counter()

            async def fetch(source: int) -> Rows:
                nonlocal waited
                asked = time.perf_counter()
                rows = await scatter.fetch(source)
                now = time.perf_counter()
                waited += now - asked
                received[source] += len(rows)
                if not rows and done[source] is None:
                    done[source] = now - began
                return rows

            rows = 0
            merge = merger(plan.merge, len(shards), self._semantics, types)
            async for batch in drive(merge, fetch):
                rows += len(batch)
            ended = time.perf_counter()
        finally:
            await scatter.close()
        runs = tuple(ShardRun(name, received[i], done[i]) for i, name in enumerate(shards))
        analyzed = Analyzed(runs, rows, ended - began, merge_seconds=(ended - started) - waited)
        return explain(plan, shards, total=total, analyzed=analyzed)

    async def close(self) -> None:
        """Close every pool (every pool is closed even if one fails)."""
        errors = []
        for pool in self.pools.values():
            try:
                await pool.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
