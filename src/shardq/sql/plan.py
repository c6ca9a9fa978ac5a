"""Planning: a statement and its parameters to a :class:`QueryPlan`.

Planning is pure: it reads the configuration, never a database. Parsing and
analysis depend only on the SQL text, so they are cached (an LRU keyed by the
text); routing depends on the bound parameters and is redone per call.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardq.sql.analyze import Analysis, StatementKind, analyze
from shardq.sql.mergeable import check_concatenable
from shardq.sql.parse import parse
from shardq.sql.route import Route, RouteKind, route

if TYPE_CHECKING:
    from shardq.config import Config
from shardq.errors import ProgrammingError, UnsupportedQueryError

__all__ = ["MergeKind", "Planner", "QueryPlan"]

_UNCHECKED = object()


class MergeKind(enum.Enum):
    """How the shards' results become one result."""

    CONCAT = "concat"  # the shards' rows one shard after the other


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """What to run where, and how to merge it.

    Attributes:
        sql: the statement each target shard runs.
        params: the parameters bound to it, as given.
        kind: read or which write.
        route: the target shards (resolved against the pools at execution).
        merge: how the shards' results are combined.
    """

    sql: str
    params: object
    kind: StatementKind
    route: Route
    merge: MergeKind


class Planner:
    """Plans statements for one configuration, with an LRU of analyses."""

    def __init__(self, config: Config, *, cache_size: int = 512):
        self.config = config
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._cache_size = cache_size

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

    def plan(self, sql: str, params: object = None) -> QueryPlan:
        """Return the plan of ``sql`` with ``params`` bound."""
        analysis = self.analyze(sql)
        if params is not None and analysis.parsed.hidden_placeholders:
            raise ProgrammingError(
                "the statement has a placeholder (%s) inside a string literal or a comment, "
                "which psycopg would bind too; write %% there for a literal percent sign"
            )
        target = route(analysis, params, self.config)
        many = target.kind is RouteKind.ALL or len(target.shards) > 1
        if many and analysis.kind is StatementKind.READ and len(self.config.shards) > 1:
            refusal = analysis.memo.get("refusal", _UNCHECKED)
            if refusal is _UNCHECKED:
                try:
                    check_concatenable(analysis, self.config)
                    refusal = None
                except UnsupportedQueryError as exc:
                    refusal = (exc.construct, exc.reason)
                analysis.memo["refusal"] = refusal
            if refusal is not None:
                raise UnsupportedQueryError(*refusal)
        return QueryPlan(
            sql=sql,
            params=params,
            kind=analysis.kind,
            route=target,
            merge=MergeKind.CONCAT,
        )
