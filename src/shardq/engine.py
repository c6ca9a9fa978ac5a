"""The engine: plan, then execute on the shards, then merge, on one screen.

Everything a statement goes through is here in order; the result cache will
sit between planning and execution.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from shardq import tracing
from shardq.cache.backend import Result as CachedResult
from shardq.errors import (
    ConfigError,
    Error,
    ProgrammingError,
    QueryTimeoutError,
    ShardError,
    UnsupportedQueryError,
    missing_dependency,
)
from shardq.execute import arrowread
from shardq.execute.arrowread import ColumnarRead
from shardq.execute.cursor import cursor_pools
from shardq.execute.deadline import bounded
from shardq.execute.driver import Column, Row, ShardPool, Statement, get_driver, read_whole
from shardq.execute.feed import feed_rows
from shardq.execute.gather import GatherPool, choose
from shardq.execute.hosts import Hosts, host_failed
from shardq.execute.scatter import Scatter, unavailable
from shardq.execute.sqlite_gather import SQLiteGatherPool
from shardq.execute.tasks import first_failure
from shardq.execute.textorder import (
    ORDERABLE_TYPES,
    TEXT_TYPES,
    code_point_order,
    collation_name,
)
from shardq.merge.arrowtypes import NumericSpecial, columns_of, prepare
from shardq.merge.columnar import finish, unsupported, unsupported_plan
from shardq.merge.drive import drive, drive_sync
from shardq.merge.evaluate import semantics, uncomputable
from shardq.merge.pipeline import compared_columns, describe, merger
from shardq.results import AsyncResult, ResultSet, StoredResult
from shardq.rows import is_tuple_factory, tuple_row
from shardq.sql.analyze import StatementKind
from shardq.sql.catalog import ColumnInfo, Columns, sqlite_columns
from shardq.sql.explain import Analyzed, ShardRun, explain
from shardq.sql.gather import bind_gather
from shardq.sql.move import ROWS, TIDS
from shardq.sql.plan import Planner, QueryPlan
from shardq.sql.regenerate import for_psycopg
from shardq.sql.rewrite import positional_as_named
from shardq.sql.subplans import Result
from shardq.stats import Stats

if TYPE_CHECKING:
    from collections.abc import (
        Awaitable,
        Callable,
        Collection,
        Coroutine,
        Iterable,
        Mapping,
        Sequence,
    )

    import pyarrow

    from shardq.config import Config
    from shardq.execute.driver import Outcome
    from shardq.execute.lanes import Lanes
    from shardq.execute.transaction import Transaction
    from shardq.merge import Rows
    from shardq.rows import RowFactory

__all__ = ["DEFAULT_FETCH_SIZE", "Engine"]

DEFAULT_FETCH_SIZE = 2000

log = logging.getLogger("shardq.engine")
# Statement ids in log records: one count per process.
_STATEMENT_IDS = itertools.count(1)

_R = TypeVar("_R")


def _prepared(table: pyarrow.Table, zone: str) -> tuple[pyarrow.Table, tuple[Column, ...] | str]:
    """A shard's ADBC table with the row path's types (in its read's thread), and its columns."""
    columns = columns_of(table.schema)
    if isinstance(columns, str):
        return table, columns
    return prepare(table, columns, zone), columns


async def _fetch_all(scatter: Scatter, source: int) -> list[Row]:
    """All the rows of one shard of ``scatter``."""
    rows: list[Row] = []
    while batch := await scatter.fetch(source):
        rows += batch
    return rows


async def _together(runs: Iterable[Coroutine[Any, Any, _R]]) -> list[_R]:
    """Run ``runs`` at once; the first failure cancels the others, waits for them, is raised."""
    with first_failure():
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run) for run in runs]
    return [task.result() for task in tasks]


async def _all(runs: Iterable[Awaitable[Outcome]]) -> list[Outcome]:
    """Await ``runs`` together; the first failure withdraws the others and is raised."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _result(
    description: tuple[Column, ...] | None,
    rows: list[Any],
    rowcount: int,
    shards: tuple[str, ...],
    row_factory: RowFactory,
    began: float | None = None,
) -> ResultSet:
    """A batch statement's :class:`ResultSet` from its (merged) rows.

    ``began``: when the statement started (``time.monotonic()``), for its ``seconds``.
    """
    if description is not None:
        rowcount = len(rows)
        if not is_tuple_factory(row_factory):
            make = row_factory(description)
            rows = [make(row) for row in rows]
    seconds = None if began is None else time.monotonic() - began
    return ResultSet(description, rows, rowcount, shards, seconds)


class Engine:
    """Runs statements for one configuration over one pool per shard."""

    def __init__(
        self,
        config: Config,
        pools: Mapping[str, ShardPool],
        *,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        replicas: Mapping[str, Sequence[ShardPool]] | None = None,
    ):
        if fetch_size < 1:
            raise ValueError("fetch_size must be at least 1")
        self.config = config
        self.pools = dict(pools)
        self.hosts = Hosts(self.pools, replicas or {}, config.max_replica_lag)
        labels = {id(pool): (name, "primary") for name, pool in self.pools.items()}
        for name, standbys in (replicas or {}).items():
            labels.update({id(pool): (name, f"replica {i}") for i, pool in enumerate(standbys, 1)})
        self.stats = Stats(labels)
        self.planner = Planner(config)
        #: Given to each read's scatter (see :attr:`Scatter.on_rows`): the CLI's progress.
        self.on_rows: Callable[[str, int], None] | None = None
        self.fetch_size = fetch_size
        self._semantics = semantics(config.dialect)
        # How a read is gathered to one shard: by COPY, or on SQLite by rows.
        self._gather_pool: type[GatherPool] = (
            SQLiteGatherPool if config.dialect == "sqlite" else GatherPool
        )
        # Each shard's default text order, asked once: "code point" or its collation.
        self._text_order: dict[str, str] = {}
        # Reads of reference tables only go to one shard, taken in turn.
        self._turn = itertools.cycle(config.shard_names)
        self._recent_router: tuple[str, Callable[[object], str | None] | None] | None = None
        # Results still reading shards where such a reader makes a write wait
        # (SQLite's locks): read into memory before a write, see _before_write.
        self._readers_block_writers = any(
            getattr(pool, "readers_block_writers", False) for pool in self.pools.values()
        )
        self._reading: weakref.WeakSet[AsyncResult] = weakref.WeakSet()
        # ADBC's connections for reads into Arrow, opened on the first one.
        self._arrow: arrowread.ArrowReader | None = None
        # Gathers at once, at most the smallest pool's size: each holds one
        # connection of its shard while it waits for one of every other shard,
        # so more of them, gathering to different shards, could hold every
        # connection and wait for each other (see GatherPool).
        self._gathers = asyncio.Semaphore(
            min((getattr(p, "max_size", 1) for p in self.pools.values()), default=1)
        )

    @classmethod
    def from_config(cls, config: Config, *, fetch_size: int = DEFAULT_FETCH_SIZE) -> Engine:
        """Build the pools with the driver the configuration names."""
        try:
            driver = get_driver(config.driver)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0]), file=config.source, field="driver") from None
        except ImportError as exc:
            needed_for = f'dialect = "{config.dialect}" (its driver {config.driver!r})'
            hint = missing_dependency(exc, needed_for)
            if hint is None:
                raise
            raise hint from exc
        replicas = {
            s.name: [
                driver(config, dataclasses.replace(s, dsn=dsn, replicas=())) for dsn in s.replicas
            ]
            for s in config.shards
        }
        return cls(
            config,
            {s.name: driver(config, s) for s in config.shards},
            fetch_size=fetch_size,
            replicas=replicas,
        )

    def plan(self, sql: str, params: object = None) -> QueryPlan:
        """Plan a statement; raises on bad SQL before any shard is contacted."""
        return self.planner.plan(sql, params)

    async def plan_async(
        self,
        sql: str,
        params: object = None,
        lanes: Lanes | None = None,
        transaction: Transaction | None = None,
    ) -> QueryPlan:
        """Plan a statement, reading the catalog first if its subqueries need it."""
        if self.planner.wants_catalog(sql):
            await self._load_catalog(lanes, transaction)
        return self.planner.plan(sql, params)

    async def _query(
        self,
        shard: str,
        sql: str,
        params: object,
        lanes: Lanes | None,
        transaction: Transaction | None = None,
        pools: Mapping[str, ShardPool] | None = None,
    ) -> list[Row]:
        """The rows of a small query of shardq's own on ``shard``.

        In a batch it goes through the batch's lanes, which may hold every
        connection the pool has; in a transaction, through its connection;
        else through ``pools`` (the statement's hosts), by default the primaries.
        """
        if lanes is not None:
            outcome = await lanes.run(shard, Statement(sql, params), deadline=None, timeout=None)
            return outcome.rows
        if pools is None:
            pools = self.pools if transaction is None else transaction.view()
        async with pools[shard].connection() as conn:
            return (await read_whole(conn, sql, params)).rows

    async def _load_catalog(
        self, lanes: Lanes | None = None, transaction: Transaction | None = None
    ) -> None:
        """Read the declared tables' columns, once: from the first shard that can answer.

        Every shard has the same tables; one that is down (unreachable, shut
        down, its file missing) is passed over for the next, so that a read
        of the others does not fail for it.
        """
        names = self.config.shard_names
        for shard in names:
            try:
                await self._read_catalog(shard, lanes, transaction)
                return
            except Error as exc:
                if shard == names[-1] or not unavailable(exc, connecting=True):
                    raise
                log.info("catalog not read from shard %s: %s", shard, exc, extra={"shard": shard})

    async def _read_catalog(
        self, shard: str, lanes: Lanes | None, transaction: Transaction | None
    ) -> None:
        pool = self.pools[shard]
        catalog: dict[str, frozenset[str]] = {}
        columns: Columns = {}
        sqlite = self.config.dialect == "sqlite"
        for table in self.config.tables:
            rows = await self._query(shard, *pool.columns_query(table), lanes, transaction)
            names = [str(row[0]) for row in rows]
            if names:
                # SQLite names ignore case
                catalog[table] = frozenset(n.lower() if sqlite else n for n in names)
                columns[table] = (
                    sqlite_columns(rows)
                    if sqlite
                    else tuple(ColumnInfo(str(r[0]), str(r[1] or "")) for r in rows)
                )
        self.planner.set_catalog(catalog, columns)

    async def read_all(self, sql: str, params: object, *, timeout: float | None) -> CachedResult:
        """Run a read and receive it whole, rows as tuples (what the cache stores)."""
        result = await self.execute(sql, params, timeout=timeout, row_factory=tuple_row)
        try:
            rows = await result.fetchall()
        finally:
            await result.close()
        return CachedResult(result.description, rows, len(rows), result.shards)

    async def execute(
        self,
        sql: str,
        params: object = None,
        *,
        timeout: float | None,
        row_factory: RowFactory,
        transaction: Transaction | None = None,
        read_policy: str = "primary",
        primary_for: Collection[str] = (),
        allow_partial: bool = False,
        max_gather_rows: int | None = None,
    ) -> AsyncResult | StoredResult:
        """Run one statement and return its merged, streaming result.

        In a ``transaction`` the statement runs on the transaction's
        connections (its result received whole), and a failure aborts it.
        A read outside one goes to the hosts ``read_policy`` picks
        (:mod:`shardq.execute.hosts`), except on the shards ``primary_for``
        names (a connection reading its own writes); everything else goes to
        the primaries. With ``allow_partial``, such a read leaves out the
        shards that cannot answer (see :class:`~shardq.execute.scatter.Scatter`)
        and names them in the result's ``missing_shards``; it changes nothing
        for a write or in a transaction. ``max_gather_rows`` overrides the
        configuration's for a read gathered to one shard.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if deadline is None or not self.planner.wants_catalog(sql):
            plan = await self.plan_async(sql, params, transaction=transaction)
        else:
            # Reading the catalog first is part of the statement's time.
            try:
                async with bounded(deadline, timeout):
                    plan = await self.plan_async(sql, params, transaction=transaction)
            except TimeoutError:
                raise QueryTimeoutError(timeout or 0.0, self.config.shard_names[:1]) from None
        if plan.deferred is not None:
            try:
                return await self._execute_deferred(
                    plan,
                    timeout=timeout,
                    row_factory=row_factory,
                    transaction=transaction,
                    read_policy=read_policy,
                    primary_for=primary_for,
                    allow_partial=allow_partial,
                )
            except UnsupportedQueryError as refused:
                # Refused on the way (a subquery correlated on another column):
                # gathered instead, when it can be.
                if not (refused.gatherable and self._can_gather(plan, transaction)):
                    raise
                plan = self.planner.gathered(sql, params, why=refused)
        if plan.gather is not None:
            return await self._execute_gather(
                plan, timeout, deadline, row_factory, transaction, max_gather_rows
            )
        # Writes whose rows span shards, run as several statements: one transaction.
        steps = (
            self._execute_move if plan.move is not None
            else self._execute_split if plan.split is not None
            else self._execute_feed if plan.feed is not None
            else None
        )  # fmt: skip
        if steps is not None:
            await self._before_write()
            if transaction is None:
                return await self._own_transaction(
                    lambda own: steps(plan, timeout, row_factory, own), timeout
                )
            return await steps(plan, timeout, row_factory, transaction)
        shards = plan.route.resolve(self.config.shard_names, next(self._turn))
        if plan.kind is StatementKind.SCHEMA:
            self.planner.forget_catalog()  # read again after the change
            if transaction is None and len(shards) > 1 and self._one_by_one(sql):
                return await self._schema_one_by_one(plan, shards, row_factory)
        if plan.kind.is_write:
            await self._before_write()
            if transaction is None and len(shards) > 1:
                # Each shard's part commits with the others or none does
                # (two-phase commit); rowcount is the total, RETURNING rows
                # come from every shard.
                return await self._own_transaction(
                    lambda own: self.execute(
                        sql, params, timeout=timeout, row_factory=row_factory, transaction=own
                    ),
                    timeout,
                )
        if transaction is None:
            if plan.kind.is_write:
                scatter, types = await self._start(plan, shards, timeout, deadline=deadline)
            else:
                try:
                    scatter, types = await self._start_read(
                        plan,
                        shards,
                        timeout,
                        read_policy,
                        primary_for,
                        deadline=deadline,
                        partial=allow_partial,
                    )
                except UnsupportedQueryError as refused:
                    # Refused before any row was merged (an order the merge
                    # cannot reproduce): gathered instead, when it can be.
                    if len(shards) < 2 or not (
                        refused.gatherable and self._can_gather(plan, transaction)
                    ):
                        raise
                    return await self._execute_gather(
                        self.planner.gathered(sql, params, why=refused),
                        timeout,
                        deadline,
                        row_factory,
                        transaction,
                        max_gather_rows,
                    )
        else:
            write = plan.kind.is_write
            transaction.check(shards, write)
            try:
                scatter, types = await self._start(
                    plan, shards, timeout, transaction, deadline=deadline
                )
            except BaseException as exc:
                transaction.fail(exc)
                raise
            transaction.note(shards, write)
        merge = merger(plan.merge, len(shards), self._semantics, types)
        result = await AsyncResult.start(scatter, merge, row_factory, plan.merge, self._semantics)
        if transaction is None and not plan.kind.is_write:
            result.columnar = self._columnar(
                plan, shards, scatter, timeout, deadline, allow_partial, (sql, params)
            )
        if self._readers_block_writers and not result.in_memory:
            self._reading.add(result)
        return result

    def _columnar(
        self,
        plan: QueryPlan,
        shards: tuple[str, ...],
        scatter: Scatter,
        timeout: float | None,
        deadline: float | None,
        partial: bool,
        statement: tuple[str, object],
    ) -> ColumnarRead | str:
        """How a started read can be read again into Arrow, or why it cannot."""
        why = self._columnar_refused(plan, partial or bool(scatter.missing))
        if why is None and scatter.description is not None:
            why = unsupported(plan.merge, scatter.description, self._semantics)
        return why or ColumnarRead(plan, shards, timeout, deadline, *statement)

    def _columnar_refused(self, plan: QueryPlan, partial: bool) -> str | None:
        """Why a read's plan keeps it from ADBC and the columnar merge, whatever its columns.

        ADBC reads PostgreSQL primaries only (no replicas to pick among),
        whole (not partial), without bound parameters (psycopg binds them;
        ADBC's placeholders are others).
        """
        why = (
            f"{self.config.dialect} shards" if self.config.dialect != "postgres"
            else "adbc-driver-postgresql is not installed (shardq[adbc])"
            if not arrowread.available()
            else "a statement that is not a plain read"
            if plan.kind is not StatementKind.READ or plan.gather is not None
            or plan.deferred is not None or plan.move is not None or plan.split is not None
            or plan.feed is not None
            else "bound parameters" if plan.params
            else "a partial read" if partial
            else "shards with replicas" if self.hosts
            else None
        )  # fmt: skip
        return why or unsupported_plan(plan.merge)

    async def read_arrow(
        self, sql: str, params: object = None, *, timeout: float | None
    ) -> pyarrow.Table | str:
        """Run a read straight into Arrow (ADBC, merged on Arrow data), or say why not.

        Nothing is read when the plan stands against it; a reason returned
        after reading (a column type the columnar merge does not carry) means
        the caller reads the rows instead (:class:`~shardq.aio.AsyncConnection.read_arrow`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async with bounded(deadline, timeout):
                plan = await self.plan_async(sql, params)
        except TimeoutError:
            raise QueryTimeoutError(timeout or 0.0, self.config.shard_names[:1]) from None
        why = self._columnar_refused(plan, False)
        if why is not None:
            return why
        shards = plan.route.resolve(self.config.shard_names, next(self._turn))
        if plan.merge.compares:
            try:
                async with bounded(deadline, timeout):
                    await self._learn_text_order(shards)
            except TimeoutError:
                raise QueryTimeoutError(timeout or 0.0, shards) from None
        return await self.read_columnar(ColumnarRead(plan, shards, timeout, deadline))

    async def read_columnar(self, read: ColumnarRead) -> pyarrow.Table | str:
        """Run ``read`` on its shards into Arrow and merge it; or why the rows must answer."""
        try:
            return await self._read_columnar(read)
        except NumericSpecial:
            # No Arrow decimal holds it, but it may be in a sort key or partial
            # aggregate the answer does not show: the row path refuses it only
            # in a column shown.
            return "a numeric NaN or infinity"

    async def _read_columnar(self, read: ColumnarRead) -> pyarrow.Table | str:
        if not read.shards:
            return "no shard to read"
        if self._arrow is None:
            self._arrow = arrowread.ArrowReader(self.config)
        plan = read.plan
        # Without parameters psycopg sends a statement as it is, with (an empty set of)
        # them it reads %% as % first: ADBC gets what PostgreSQL would.
        sql = plan.sql if plan.params is None else plan.sql.replace("%%", "%")
        read_in = await arrowread.read_all(
            self._arrow, sql, read.shards, read.timeout, read.deadline, _prepared
        )
        for _, found in read_in:
            if isinstance(found, str):
                return found
        columns = read_in[0][1]
        assert not isinstance(columns, str)
        if any(found != columns for _, found in read_in[1:]):
            return "shards that describe the columns differently"
        why = unsupported(plan.merge, columns, self._semantics)
        if why is not None:
            return why
        try:
            self._check_merge(plan, read.shards, [c.type_code for c in columns])
        except UnsupportedQueryError as refused:
            return str(refused)  # the row path answers it (by gathering, or refuses it)
        description = describe(plan.merge, columns, self._semantics)
        assert description is not None
        tables = [table for table, _ in read_in]
        return finish(tables, columns, plan.merge, description, self._semantics)

    def _can_gather(self, plan: QueryPlan, transaction: Transaction | None) -> bool:
        """Whether a read refused at execution can be gathered to one shard instead."""
        return (
            not plan.kind.is_write
            and (transaction is None or self.config.dialect == "postgres")
            and (transaction is None or transaction.failed is None)
            and len(self.config.shards) > 1
            and plan.gather is None
        )

    async def _gather_setup(
        self,
        plan: QueryPlan,
        deadline: float | None,
        timeout: float | None,
        max_gather_rows: int | None,
        *,
        check: bool = True,
        transaction: Transaction | None = None,
    ) -> tuple[QueryPlan, GatherPool, int]:
        """Estimate a gather, choose its shard, refuse it over ``max_gather_rows`` (``check``).

        Returns the plan (made again with the catalog, to move only the
        columns the statement uses), the chosen shard's pool and the rows
        estimated to move.

        In a ``transaction``, the statement runs on a session of its own, not
        the transaction's, so that no temporary table touches the transaction
        (PostgreSQL would refuse its PREPARE TRANSACTION); the rows are read
        through the transaction's connections, to see its writes: every
        shard's rows, the chosen one's too, and the reference tables the
        statement reads, from one shard.
        """
        if self.planner.catalog is None:
            await self._load_catalog()
        if self.planner.catalog is not None or transaction is not None:
            again = self.planner.gathered(plan.sql, plan.params, everything=transaction is not None)
            plan = dataclasses.replace(again, strategy=plan.strategy)  # (its why)
        gather = plan.gather
        assert gather is not None
        if gather.placeholders:
            gather = bind_gather(gather, plan.params)
            plan = dataclasses.replace(plan, gather=gather)
        names = self.config.shard_names
        # In a transaction, through its connections: it may hold the tables locked.
        views = self.pools if transaction is None else transaction.view()
        try:
            async with bounded(deadline, timeout):
                counts = await _together(
                    self._gather_pool.estimate(views[shard], gather.tables) for shard in names
                )
        except TimeoutError:
            raise QueryTimeoutError(timeout or 0.0, names) from None
        target, moving = choose(dict(zip(names, counts, strict=True)))
        if transaction is not None:  # every row moves, a reference table's once
            moving = sum(
                count
                for shard, shard_counts in zip(names, counts, strict=True)
                for table, count in zip(gather.tables, shard_counts, strict=True)
                if not table.reference or shard == target
            )
        limit = self.config.max_gather_rows if max_gather_rows is None else max_gather_rows
        if moving > limit and check:
            raise UnsupportedQueryError(
                f"gathering about {moving:,} rows to one shard",
                f"no merge answers this read exactly, so its tables' rows would be gathered "
                f"to shard {target}, which is more than max_gather_rows ({limit:,}) allows; "
                "filter it further, or raise max_gather_rows (configuration, or per call)",
            )
        if transaction is None:
            sources = {s: self.pools[s] for s in names if s != target}
        else:
            size = getattr(self.pools[target], "max_size", 2)
            if size < 2:
                raise UnsupportedQueryError(
                    "a read gathered to one shard, in a transaction, with pool_max_size 1",
                    f"no merge answers it exactly, so shardq would gather its tables' rows to "
                    f"shard {target} on a session of its own, beside the transaction's "
                    f"connection there, and the shard's pool_max_size ({size}) allows one "
                    "connection; raise pool_max_size to 2 or more, or run it outside the "
                    "transaction",
                )
            sources = {s: views[s] for s in sorted(names, key=lambda s: s != target)}
        pool = self._gather_pool(
            self.pools[target],
            gather,
            sources,
            deadline=deadline,
            own=transaction is None,
            slots=self._gathers,
        )
        return plan, pool, moving

    async def _execute_gather(
        self,
        plan: QueryPlan,
        timeout: float | None,
        deadline: float | None,
        row_factory: RowFactory,
        transaction: Transaction | None,
        max_gather_rows: int | None,
    ) -> AsyncResult:
        """A read gathered to one shard (see :mod:`shardq.execute.gather`).

        The statement runs as written on one connection of the chosen shard,
        its result streamed as any other; the deadline bounds the estimate,
        the rows' move and the statement alike. In a transaction (see
        :meth:`_gather_setup`), a failure before the first row aborts the
        transaction, as it would on one database.
        """
        if transaction is not None and self.config.dialect != "postgres":
            raise UnsupportedQueryError(
                "a read gathered to one shard, in a transaction on SQLite shards",
                "no merge answers it exactly, so shardq would gather its tables' rows to one "
                "shard, which on SQLite it does outside transactions only (the gather's "
                "connection would not see the transaction's writes); run it outside the "
                "transaction",
            )
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        if transaction is not None:
            transaction.check(self.config.shard_names, False)
        try:
            plan, pool, _ = await self._gather_setup(
                plan, deadline, timeout, max_gather_rows, transaction=transaction
            )
            shards = (pool.name,)
            scatter, types = await self._start(
                plan, shards, timeout, pools={pool.name: pool}, deadline=deadline
            )
        except UnsupportedQueryError:
            raise  # refused before anything ran (max_gather_rows)
        except BaseException as exc:
            if transaction is not None:
                transaction.fail(exc)
            raise
        merge = merger(plan.merge, 1, self._semantics, types)
        result = await AsyncResult.start(scatter, merge, row_factory, plan.merge, self._semantics)
        if self._readers_block_writers and not result.in_memory:
            # Its transaction holds the chosen file's shared lock until it ends.
            self._reading.add(result)
        return result

    async def _before_write(self) -> None:
        """Read into memory the results still reading shards where they would block a write.

        On SQLite a statement not read to its end holds its file's lock, and
        a write on another connection waits for it, then fails ("database is
        locked"): reading a result while writing, a common loop, must work.
        The result keeps the rows it started with, as PostgreSQL's snapshot
        does; memory holds the rest of it, only in this case.
        """
        if self._readers_block_writers:
            for result in list(self._reading):
                if not result.in_memory:
                    await result.receive()

    def _one_by_one(self, sql: str) -> bool:
        """Whether a schema change runs shard after shard rather than in one transaction.

        On SQLite shards (no two-phase commit), and for what PostgreSQL runs
        outside a transaction only (``CREATE INDEX CONCURRENTLY``).
        """
        statement = self.planner.analyze(sql).parsed.expression
        return self.config.dialect == "sqlite" or bool(statement.args.get("concurrently"))

    async def _schema_one_by_one(
        self, plan: QueryPlan, shards: tuple[str, ...], row_factory: RowFactory
    ) -> StoredResult:
        # (Its result, no rows, is a StoredResult: what a cursor reads alike.)
        """Run a schema change on ``shards`` one after another; say which have it if one fails."""
        done: list[str] = []
        for shard in shards:
            try:
                async with self.pools[shard].connection() as conn:
                    await read_whole(conn, plan.sql, plan.params, stream=False)
            except Error as exc:
                have = ", ".join(done) if done else "none"
                exc.add_note(
                    f"the schema change ran shard after shard: done on {have}; not on "
                    f"{', '.join(s for s in shards if s not in done)}"
                )
                raise
            done.append(shard)
        return StoredResult(None, [], -1, shards, row_factory)

    async def _own_transaction(
        self, run: Callable[[Transaction], Awaitable[_R]], timeout: float | None
    ) -> _R:
        """Run a write on several shards outside a transaction in one of its own, committed.

        ``timeout`` bounds the whole call, the commit included.
        """
        from shardq.execute.transaction import Transaction

        commit_timeout = self.config.commit_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        transaction = Transaction(self.pools, self.config.dialect, commit_timeout=commit_timeout)
        try:
            result = await run(transaction)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit(timeout, deadline=deadline)
        return result

    async def _execute_split(
        self,
        plan: QueryPlan,
        timeout: float | None,
        row_factory: RowFactory,
        transaction: Transaction,
    ) -> StoredResult:
        """An INSERT split by shard: its parts run at once, RETURNING rows in VALUES order."""
        split = plan.split
        assert split is not None
        shards = split.shards
        transaction.check(shards, True)
        scatter = Scatter(transaction.view(), shards, timeout)
        each = {part.shard: (part.sql, part.params) for part in split.parts}
        try:
            await scatter.start("", None, fetch_size=self.fetch_size, stream=False, each=each)
            returned = [await _fetch_all(scatter, i) for i in range(len(shards))]
            description, rowcount = scatter.description, scatter.rowcount
        except BaseException as exc:
            transaction.fail(exc)
            raise
        finally:
            await scatter.close()
        transaction.note(shards, True)
        rows: list[Any] = split.in_order(returned) if split.returning else []
        return StoredResult(description, rows, rowcount, shards, row_factory)

    async def _execute_move(
        self,
        plan: QueryPlan,
        timeout: float | None,
        row_factory: RowFactory,
        transaction: Transaction,
    ) -> StoredResult:
        """An UPDATE that sets the shard key: rows move to the new key's shard.

        The statements are :class:`~shardq.sql.move.Move`'s: the UPDATE as
        written on the target, at the same time the changed rows picked (and
        deleted) on the other shards, then inserted on the target.
        """
        move = plan.move
        assert move is not None
        shards = plan.route.shards
        transaction.check(shards, True)
        views = transaction.view()

        async def run(shard: str, sql: str, params: object) -> Outcome:
            async with views[shard].connection() as conn:
                return await read_whole(conn, sql, params, stream=False)

        async def pick(shard: str) -> Outcome:
            picked = await run(shard, move.pick, move.params)
            if picked.rows:
                await run(shard, move.delete, {TIDS: [str(row[0]) for row in picked.rows]})
            return picked

        others = [shard for shard in shards if shard != move.target]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            async with bounded(deadline, timeout):
                here, *picked = await _together(
                    [run(move.target, move.update, move.params), *map(pick, others)]
                )
                rows = [row[1] for outcome in picked for row in outcome.rows]
                moved = await run(move.target, move.insert, {ROWS: rows}) if rows else None
        except TimeoutError:
            transaction.fail(QueryTimeoutError(timeout or 0.0, shards))
            raise QueryTimeoutError(timeout or 0.0, shards) from None
        except BaseException as exc:
            transaction.fail(exc)
            raise
        transaction.note(shards, True)
        returned = here.rows + (moved.rows if moved is not None else [])
        rowcount = here.rowcount + (moved.rowcount if moved is not None else 0)
        return StoredResult(here.description, returned, rowcount, shards, row_factory)

    async def _execute_feed(
        self,
        plan: QueryPlan,
        timeout: float | None,
        row_factory: RowFactory,
        transaction: Transaction,
    ) -> StoredResult:
        """An INSERT ... SELECT whose rows shardq routes (see :mod:`shardq.execute.feed`).

        The SELECT is read by cursors on the transaction's connections, the
        rows inserted on them between two batches: memory holds a batch.
        """
        feed = plan.feed
        assert feed is not None
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        try:
            selected = await self._read_by_cursors(feed.select, feed.params, left(), transaction)
            try:
                return await feed_rows(
                    feed,
                    selected,
                    transaction,
                    self.config,
                    row_factory,
                    batch=self.fetch_size,
                    timeout=left(),
                )
            finally:
                await selected.close()
        except BaseException as exc:
            transaction.fail(exc)
            raise

    async def _read_by_cursors(
        self, sql: str, params: object, timeout: float | None, transaction: Transaction
    ) -> AsyncResult | StoredResult:
        """A read in ``transaction`` streamed by cursors (:mod:`shardq.execute.cursor`).

        Its subqueries that run first are read whole, as their rows become
        parameters; the statement itself then streams.
        """
        plan = await self.plan_async(sql, params, transaction=transaction)
        while plan.deferred is not None:

            async def subquery(sub_sql: str, sub_params: object) -> Result:
                result = await self.execute(
                    sub_sql, sub_params, timeout=timeout, row_factory=tuple_row,
                    transaction=transaction,
                )  # fmt: skip
                description = result.description or ()
                return Result(
                    tuple(c.name for c in description),
                    tuple(c.type_code for c in description),
                    await result.fetchall(),
                )

            sql, params = await self._substitute(plan, subquery)
            plan = await self.plan_async(sql, params, transaction=transaction)
        if plan.gather is not None:
            return await self._execute_gather(plan, timeout, None, tuple_row, transaction, None)
        shards = plan.route.resolve(self.config.shard_names, next(self._turn))
        transaction.check(shards, False)
        pools = cursor_pools(transaction.view())
        scatter, types = await self._start(plan, shards, timeout, transaction, pools)
        transaction.note(shards, False)
        merge = merger(plan.merge, len(shards), self._semantics, types)
        return await AsyncResult.start(scatter, merge, tuple_row, plan.merge, self._semantics)

    def submit(
        self,
        sql: str,
        params: object,
        *,
        lanes: Lanes,
        timeout: float | None,
        row_factory: RowFactory,
        done: Callable[[Any, BaseException | None], None],
    ) -> bool:
        """Queue a statement of a batch that goes to one shard unchanged; whether it could.

        The quick path of a batch of lookups: the planner's per-text router
        picks the shard from the parameters, and the lane's worker builds the
        :class:`ResultSet` and calls ``done`` with it (or with the error),
        with no task and no plan object. A statement the router cannot place
        (False) goes through :meth:`run`.
        """
        recent = self._recent_router
        if recent is not None and recent[0] == sql:
            router = recent[1]  # a batch mostly repeats one text
        else:
            router = self.planner.router(sql)
            self._recent_router = (sql, router)
        shard = None if router is None else router(params)
        if shard is None:
            return False
        shards = (shard,)
        began = time.monotonic()

        def result(outcome: Outcome) -> ResultSet:
            return _result(
                outcome.description, outcome.rows, outcome.rowcount, shards, row_factory, began
            )

        deadline = None if timeout is None else time.monotonic() + timeout
        lanes.submit(
            shard,
            Statement(sql, params),
            deadline=deadline,
            timeout=timeout,
            convert=result,
            done=done,
        )
        return True

    async def run(
        self,
        sql: str,
        params: object = None,
        *,
        lanes: Lanes,
        timeout: float | None,
        row_factory: RowFactory,
    ) -> ResultSet:
        """Run one statement of a batch through ``lanes`` and read its whole result.

        The plan and the merge are those of :meth:`execute`; the shards' rows
        are gathered whole by the lanes' workers, then merged in memory.
        """
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        plan = await self.plan_async(sql, params, lanes)
        if plan.deferred is not None:
            result = await self._run_deferred(plan, lanes, timeout, deadline, row_factory)
            result.seconds = time.monotonic() - began  # every step's, not only the last
            return result
        if plan.gather is not None:
            return await self._run_gather(plan, timeout, deadline, row_factory, began)
        shards = plan.route.resolve(self.config.shard_names, next(self._turn))
        if plan.kind.is_write and len(shards) > 1:
            raise UnsupportedQueryError(
                "a write on several shards in a batch",
                "it must commit on all of them or none (two-phase commit), which a batch's "
                "concurrent statements do not do; run it with execute()",
            )
        if plan.kind.is_write:
            await self._before_write()
        statement = Statement(plan.sql, plan.params, plan.kind.is_write)
        if len(shards) == 1:
            outcomes = [await lanes.run(shards[0], statement, deadline=deadline, timeout=timeout)]
        else:
            if plan.merge.compares:
                await self._learn_text_order(shards, lanes)
            outcomes = await _all(
                lanes.run(shard, statement, deadline=deadline, timeout=timeout) for shard in shards
            )
        description = next((o.description for o in outcomes if o.description is not None), None)
        if plan.merge.trivial:
            rows: list[Any] = [row for o in outcomes for row in o.rows]
            counts = [o.rowcount for o in outcomes]
            rowcount = -1 if -1 in counts else sum(counts)
        else:
            types = [c.type_code for c in description or ()]
            try:
                self._check_merge(plan, shards, types)
            except UnsupportedQueryError as refused:
                if len(shards) < 2 or not (refused.gatherable and self._can_gather(plan, None)):
                    raise
                gathered = self.planner.gathered(sql, params, why=refused)
                return await self._run_gather(gathered, timeout, deadline, row_factory, began)
            merge = merger(plan.merge, len(shards), self._semantics, types)
            rows = drive_sync(merge, [[o.rows] for o in outcomes])
            description = describe(plan.merge, description, self._semantics)
            rowcount = len(rows)
        return _result(description, rows, rowcount, shards, row_factory, began)

    async def _run_gather(
        self,
        plan: QueryPlan,
        timeout: float | None,
        deadline: float | None,
        row_factory: RowFactory,
        began: float | None = None,
    ) -> ResultSet:
        """:meth:`_execute_gather` for a batch: read whole.

        Not through the lanes: a gather holds a connection of every shard,
        from the pools, while the lanes' workers hold theirs only while their
        queues have work, so it waits for them at worst.
        """
        result = await self._execute_gather(plan, timeout, deadline, tuple_row, None, None)
        try:
            rows = await result.fetchall()
        finally:
            await result.close()
        return _result(result.description, rows, len(rows), result.shards, row_factory, began)

    async def _run_deferred(
        self,
        plan: QueryPlan,
        lanes: Lanes,
        timeout: float | None,
        deadline: float | None,
        row_factory: RowFactory,
    ) -> ResultSet:
        """:meth:`_execute_deferred` for a batch: each step through the lanes."""

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        async def step(sql: str, params: object, factory: RowFactory) -> ResultSet:
            return await self.run(sql, params, lanes=lanes, timeout=left(), row_factory=factory)

        async def subquery(sql: str, params: object) -> Result:
            result = await step(sql, params, tuple_row)
            description = result.description or ()
            return Result(
                tuple(c.name for c in description),
                tuple(c.type_code for c in description),
                result.rows,
            )

        sql, bound = await self._substitute(plan, subquery)
        return await step(sql, bound, row_factory)

    async def _read_pools(
        self, policy: str, shards: tuple[str, ...], primary_for: Collection[str]
    ) -> Mapping[str, ShardPool]:
        """The pools of one read: the policy's, the primary where ``primary_for`` says."""
        wanted = [shard for shard in shards if shard not in primary_for]
        pools = dict(await self.hosts.for_reads(policy, wanted)) if wanted else {}
        for shard in shards:
            if shard in primary_for:
                pools[shard] = self.pools[shard]
        return pools

    def _log(
        self,
        level: int,
        statement: int,
        shard: str,
        pool: ShardPool | None,
        message: str,
        *args: object,
    ) -> None:
        """A record about one statement on one shard, with both as fields (and its host)."""
        host = "primary" if pool is None else self.stats.host(pool)
        log.log(
            level,
            "statement %d on shard %s (%s): " + message,
            statement,
            shard,
            host,
            *args,
            extra={"shard": shard, "host": host, "statement_id": statement},
        )

    async def _start_read(
        self,
        plan: QueryPlan,
        shards: tuple[str, ...],
        timeout: float | None,
        policy: str,
        primary_for: Collection[str] = (),
        *,
        deadline: float | None = None,
        partial: bool = False,
    ) -> tuple[Scatter, list[Any]]:
        """:meth:`_start` of a read on the hosts ``policy`` picks (:mod:`.hosts`).

        A host that cannot serve is marked down; the read, which has returned
        no row yet, is started again on the hosts picked then, as long as that
        gives its shard a host this read has not met yet (each at most once),
        within the same deadline. ``partial``: a shard that cannot answer is
        left out (after those retries).
        """
        pools = await self._read_pools(policy, shards, primary_for)
        if not self.hosts:  # no replicas: the primaries, nothing else to try
            return await self._start(
                plan, shards, timeout, pools=pools, deadline=deadline, partial=partial
            )
        began = time.monotonic()
        if deadline is None and timeout is not None:
            deadline = began + timeout
        attempt = began  # when the attempt that a failure belongs to began
        met: set[int] = set()  # the hosts that could not serve this read
        while True:
            try:
                started = await self._start(
                    plan, shards, timeout, pools=pools, deadline=deadline, partial=partial
                )
                break
            except ShardError as exc:
                failed = pools.get(exc.shard)
                if failed is None or not host_failed(exc):
                    raise
                self.hosts.failed(failed, attempt)
                met.add(id(failed))
                again = await self._read_pools(policy, shards, primary_for)
                if id(again[exc.shard]) in met:
                    raise
                self.stats.retried(failed)
                attempt = time.monotonic()
                pools = again
        begun = dict.fromkeys(shards, attempt)
        if started[0].missing:
            pools = await self._start_again(
                plan, started[0], pools, policy, primary_for, met, begun
            )
        missing = started[0].missing
        for shard in shards:
            if shard not in missing:
                self.hosts.succeeded((pools[shard],), begun[shard])
        if len(shards) == 1:  # (a scatter's time is its slowest shard's)
            self.hosts.measured(pools[shards[0]], time.monotonic() - began)
        return started

    async def _start_again(
        self,
        plan: QueryPlan,
        scatter: Scatter,
        pools: Mapping[str, ShardPool],
        policy: str,
        primary_for: Collection[str],
        met: set[int],
        begun: dict[str, float],
    ) -> Mapping[str, ShardPool]:
        """Start the shards a partial read left out again on other hosts; the pools used.

        As a read that fails: a shard whose host could not serve goes on to a
        host of its own this read has not ``met``, each at most once.
        ``begun`` holds when each shard's last attempt began (updated).
        """
        while True:
            lost = [
                shard
                for shard, exc in scatter.missing.items()
                if host_failed(exc) and id(pools[shard]) not in met
            ]
            for shard in lost:
                self.hosts.failed(pools[shard], begun[shard])
                met.add(id(pools[shard]))
            if not lost:
                return pools
            again = await self._read_pools(policy, tuple(lost), primary_for)
            moved = {shard: again[shard] for shard in lost if id(again[shard]) not in met}
            if not moved:
                return pools
            for shard in moved:
                self.stats.retried(pools[shard])
            began = time.monotonic()
            await scatter.restart(moved, plan.sql, plan.params, fetch_size=self.fetch_size)
            seconds = time.monotonic() - began
            begun.update(dict.fromkeys(moved, began))
            for shard, pool in moved.items():
                if shard in scatter.missing:
                    self._failed(scatter.statement, shard, pool, scatter.missing[shard])
                else:
                    self.stats.started((pool,), seconds)
            pools = {**pools, **moved}

    async def _start(
        self,
        plan: QueryPlan,
        shards: tuple[str, ...],
        timeout: float | None,
        transaction: Transaction | None = None,
        pools: Mapping[str, ShardPool] | None = None,
        *,
        deadline: float | None = None,
        partial: bool = False,
    ) -> tuple[Scatter, list[Any]]:
        """Start ``plan`` on ``shards``; return the scatter and the shards' column types.

        A merge that orders values is refused here, before any row is merged,
        when the shards order them otherwise than the merge would. ``pools``
        replaces the pools (or the transaction's view of them). ``deadline``
        (``time.monotonic()``) when the statement started earlier (default:
        ``timeout`` from now). ``partial``: a shard that cannot answer is
        left out, not an error (the scatter's ``missing``).
        """
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        if pools is None:
            pools = self.pools if transaction is None else transaction.view()
        scatter = Scatter(pools, shards, timeout, deadline=deadline, partial=partial)
        scatter.on_rows = self.on_rows
        statement = scatter.statement = next(_STATEMENT_IDS)
        tracing.started(plan.route, shards, statement)
        prepare = None
        if plan.merge.compares:
            # How each shard orders text, asked in its own task before its
            # statement, under the statement's deadline: a shard that does not
            # answer would otherwise hold the call for its connect_timeout, or
            # (partial) use up the others' time.
            async def prepare(shard: str, pool: ShardPool) -> None:
                await self._learn_text_order((shard,), transaction=transaction, pools={shard: pool})

        # In a transaction a result is received whole: its shard's one connection
        # serves the transaction's next statement.
        stream = not plan.kind.is_write and transaction is None
        began = time.monotonic()
        try:
            await scatter.start(
                plan.sql, plan.params, fetch_size=self.fetch_size, stream=stream, prepare=prepare
            )
        except QueryTimeoutError as exc:
            for shard in exc.shards:
                self._failed(statement, shard, pools.get(shard), exc)
            raise
        except ShardError as exc:
            self._failed(statement, exc.shard, pools.get(exc.shard), exc)
            raise
        seconds = time.monotonic() - began
        answered = [shard for shard in shards if shard not in scatter.missing]
        self.stats.started((pools[shard] for shard in answered), seconds)
        for shard, failure in scatter.missing.items():
            self._failed(statement, shard, pools.get(shard), failure)
        if log.isEnabledFor(logging.DEBUG):
            for shard in answered:
                self._log(
                    logging.DEBUG,
                    statement,
                    shard,
                    pools[shard],
                    "started in %.1f ms",
                    seconds * 1000,
                )
        types = [c.type_code for c in scatter.description or ()]
        try:
            self._check_merge(plan, tuple(answered), types)
        except BaseException:
            await scatter.close()
            raise
        return scatter, types

    def _failed(
        self, statement: int, shard: str, pool: ShardPool | None, exc: BaseException
    ) -> None:
        """Count and log a shard's failure to start a statement."""
        if isinstance(exc, QueryTimeoutError):
            self.stats.failed(pool, timeout=True)
            self._log(logging.INFO, statement, shard, pool, "timed out")
        else:
            self.stats.failed(pool)
            self._log(logging.INFO, statement, shard, pool, "failed: %s", exc)

    async def _execute_deferred(
        self,
        plan: QueryPlan,
        *,
        timeout: float | None,
        row_factory: RowFactory,
        transaction: Transaction | None = None,
        read_policy: str = "primary",
        primary_for: Collection[str] = (),
        allow_partial: bool = False,
        counts: list[int] | None = None,
    ) -> AsyncResult | StoredResult:
        """Run a plan's subqueries first, then the statement with their results in place.

        A partial read is partial for the shards its subqueries left out too.
        ``counts``, when given, receives each subquery's number of rows (EXPLAIN).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        missing: dict[str, BaseException] = {}

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        def run(sql: str, params: object, factory: RowFactory) -> Awaitable[Any]:
            return self.execute(
                sql,
                params,
                timeout=left(),
                row_factory=factory,
                transaction=transaction,
                read_policy=read_policy,
                primary_for=primary_for,
                allow_partial=allow_partial,
            )

        async def subquery(sql: str, params: object) -> Result:
            result = await run(sql, params, tuple_row)
            rows = await result.fetchall()
            missing.update(result.missing)
            if counts is not None:
                counts.append(len(rows))
            description = result.description or ()
            return Result(
                tuple(c.name for c in description),
                tuple(c.type_code for c in description),
                rows,
            )

        sql, bound = await self._substitute(plan, subquery)
        result: AsyncResult | StoredResult = await run(sql, bound, row_factory)
        if missing:
            result.left_out(missing)
        return result

    async def _substitute(
        self, plan: QueryPlan, subquery: Callable[[str, object], Awaitable[Result]]
    ) -> tuple[str, object]:
        """Run a deferred plan's subqueries with ``subquery``; return the statement to run."""
        assert plan.deferred is not None
        deferred = plan.deferred
        params = positional_as_named(plan.params, deferred.positional)
        results = []
        escaped = plan.params is not None
        for subplan in deferred.subplans:
            sub_sql = subplan.sql
            if self.config.dialect == "postgres" and escaped:
                sub_sql = for_psycopg(sub_sql, strings_escaped=True)  # its "%" operators
            try:
                result = await subquery(sub_sql, params)
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
            if subplan.max_rows is not None and len(result.rows) > subplan.max_rows:
                # (execute() then gathers the statement, when it can be.)
                raise UnsupportedQueryError(
                    f"a decorrelated subquery of {len(result.rows):,} groups",
                    f"shardq ships at most max_decorrelated_rows ({subplan.max_rows:,}) groups "
                    "back to the shards; more move fewer rows gathered to one shard",
                )
            results.append(result)
        sql, bound = deferred.substitute(results, plan.params)
        if self.config.dialect == "postgres":
            sql = for_psycopg(sql, strings_escaped=escaped)
        return sql, bound

    async def _learn_text_order(
        self,
        shards: tuple[str, ...],
        lanes: Lanes | None = None,
        transaction: Transaction | None = None,
        pools: Mapping[str, ShardPool] | None = None,
    ) -> None:
        """Ask each shard not asked before how it orders text (see :mod:`.textorder`).

        On the hosts of ``pools`` when given (a replica orders text as its
        primary does: it is a copy of its files).
        """
        for shard in shards:
            if shard in self._text_order:
                continue
            sql = getattr(self.pools[shard], "collation_sql", None)
            if sql is None:
                self._text_order[shard] = "code point"
                continue
            rows = await self._query(shard, sql, None, lanes, transaction, pools)
            row = rows[0] if rows else ()
            self._text_order[shard] = "code point" if code_point_order(row) else collation_name(row)

    def _check_merge(self, plan: QueryPlan, shards: tuple[str, ...], types: list[Any]) -> None:
        """Refuse, before any row is merged, a merge that would compute or order values
        otherwise than one database (a read is then gathered to one shard instead)."""
        why = uncomputable(plan.merge, types, self._semantics)
        if why is not None:
            raise UnsupportedQueryError(
                f"{why} over values merged across shards",
                "PostgreSQL computes it with the session's calendar, time zone or date style, "
                "which shardq's merge does not reproduce; pin the query to one shard",
            )
        if plan.merge.compares:
            self._check_text_order(plan, shards, types)

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
        if plan.gather is not None:
            return await self._explain_gather(plan, analyze=analyze, timeout=timeout)
        if not analyze:
            return explain(plan, shards, total=total)
        if plan.kind.is_write:
            raise ProgrammingError("EXPLAIN ANALYZE runs the statement; shardq analyzes reads only")
        began = time.perf_counter()
        if plan.deferred is not None:
            counts: list[int] = []
            try:
                result = await self._execute_deferred(
                    plan, timeout=timeout, row_factory=tuple_row, counts=counts
                )
            except UnsupportedQueryError as refused:
                if not self._can_gather(plan, None):
                    raise
                gathered = self.planner.gathered(sql, params, why=refused)
                return await self._explain_gather(gathered, analyze=analyze, timeout=timeout)
            count = len(await result.fetchall())
            notes = tuple(f"run first: {i}. {n:,} rows" for i, n in enumerate(counts, 1))
            analyzed = Analyzed((), count, time.perf_counter() - began, notes=notes)
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

    async def _explain_gather(
        self, plan: QueryPlan, *, analyze: bool, timeout: float | None
    ) -> str:
        """EXPLAIN of a gathered read: the shard chosen, the pushdowns; the rows moved."""
        total = len(self.config.shards)
        deadline = None if timeout is None else time.monotonic() + timeout
        plan, pool, moving = await self._gather_setup(plan, deadline, timeout, None, check=False)
        gather = plan.gather
        assert gather is not None
        limit = self.config.max_gather_rows
        over = f", over max_gather_rows ({limit:,}): refused" if moving > limit else ""
        strategy = plan.strategy.replace(
            "gathered to one shard",
            f"gathered to shard {pool.name} (it holds the most of the rows; about {moving:,} "
            f"rows to move{over})",
            1,
        )
        plan = dataclasses.replace(plan, strategy=strategy)
        if not analyze:
            return explain(plan, (pool.name,), total=total)
        began = time.perf_counter()
        scatter, _ = await self._start(
            plan, (pool.name,), timeout, pools={pool.name: pool}, deadline=deadline
        )
        rows = 0
        try:
            while batch := await scatter.fetch(0):
                rows += len(batch)
        finally:
            await scatter.close()
        notes = tuple(
            f"rows moved: {name} {pool.moved.get(name, 0)} from the other shards, "
            f"{pool.local.get(name, 0)} of its own"
            for name in (t.name for t in gather.tables)
        )
        analyzed = Analyzed((), rows, time.perf_counter() - began, notes=notes)
        return explain(plan, (pool.name,), total=total, analyzed=analyzed)

    async def close(self) -> None:
        """Close every pool (every pool is closed even if one fails)."""
        errors = []
        if self._arrow is not None:
            await self._arrow.close()
        for pool in [*self.pools.values(), *self.hosts.pools()]:
            try:
                await pool.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
