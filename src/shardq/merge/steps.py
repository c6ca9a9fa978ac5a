"""Merge plans: what is done to the shards' rows to make one result.

A :class:`MergePlan` is a value the planner builds from the SQL alone and the
merger follows, in this order:

1. *combine the sources*: concatenate them, or, when every shard returns its
   rows sorted (``order``), interleave them with a streaming k-way merge;
2. *regroup* (``aggregate``): fold the shards' partial aggregates by group key;
3. *filter* (``having``) and *project* (``outputs``) the merged groups, with
   expressions of the small language below;
4. *de-duplicate* (``distinct``), *sort* (``sort``) and apply the global
   ``offset`` and ``limit`` (and keep the rows tying with the last, ``ties``);
5. drop the last ``hidden`` columns (they only served sorting).

A set operation (``UNION``, ``INTERSECT``, ``EXCEPT`` and their ``ALL``
forms) over branches that need merging is ``setop`` instead of steps 2 and
3: the shards send each branch's rows tagged with the branch, the merge
counts each distinct row per branch and emits it as many times as the
operations say (:mod:`shardq.merge.setop`).

On SQLite shards a grouped merge is one :class:`FinalStep` instead of steps
2 to 5: SQLite computes it over the concatenated partial rows.

Expressions are :class:`Col` (a column of the row being projected),
:class:`Const` and :class:`Call` (an operator or function applied to
expressions); :mod:`shardq.merge.evaluate` gives them the database's meaning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Aggregation",
    "Call",
    "Col",
    "Combine",
    "Const",
    "Counting",
    "Expr",
    "FinalStep",
    "MergePlan",
    "Output",
    "Param",
    "SetOp",
    "SetOpKind",
    "SortKey",
    "TypeRule",
]


@dataclass(frozen=True, slots=True)
class SortKey:
    """One ORDER BY term: a column of the rows, its direction and where NULLs go."""

    column: int
    descending: bool = False
    nulls_first: bool = False
    # The term says COLLATE "C": its text compares by code point on any database.
    code_point: bool = False
    # SQLite shards: values compare as SQLite compares them (NULL, numbers, text,
    # blobs), text under this collation ("binary", "nocase" or "rtrim").
    collation: str | None = None


class Combine(enum.Enum):
    """How one column of partial results is folded across shards."""

    COUNT = "count"  # partial counts: their sum (0 when there is none)
    SUM = "sum"  # partial sums: their sum, NULL when every one is NULL
    MIN = "min"
    MAX = "max"
    BOOL_AND = "bool_and"
    BOOL_OR = "bool_or"
    SET = "set"  # the distinct non-NULL values (for COUNT(DISTINCT x) and kin)
    ANY = "any"  # a value equal in every partial row of the group (a function of its key)
    FLOAT_VAR = "float_var"  # [N, Sx, Sxx] float states, merged as PostgreSQL's float8_combine


@dataclass(frozen=True, slots=True)
class Aggregation:
    """Regrouping of partial rows: ``groups`` key columns, then one column per combine."""

    groups: int
    combines: tuple[Combine, ...]
    scalar: bool = False  # no GROUP BY: exactly one row, even from no rows
    # The shards send their partial rows sorted on the group key (``order``), in
    # the order the result wants: groups are merged and emitted as they close.
    sorted: bool = False


@dataclass(frozen=True, slots=True)
class Col:
    """The value of column ``index`` of the row."""

    index: int


@dataclass(frozen=True, slots=True)
class Const:
    """A literal value, typed as the database types it (``type_code``)."""

    value: Any
    type_code: Any = None


@dataclass(frozen=True, slots=True)
class Param:
    """A bound parameter of the statement, replaced by its value per call."""

    name: str


@dataclass(frozen=True, slots=True)
class Call:
    """An operator or function (``op``) over expressions."""

    op: str
    args: tuple[Expr, ...]


Expr = Col | Const | Param | Call


@dataclass(frozen=True, slots=True)
class TypeRule:
    """How an output column's ``type_code`` follows from the shards' description.

    ``copy`` names a source column whose type the output keeps; otherwise the
    type follows from ``op`` over the types of ``args`` (see ``evaluate``).
    """

    copy: int | None = None
    fixed: Any = None
    op: str | None = None
    args: tuple[TypeRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Output:
    """One column of the merged result: its name, value and type."""

    name: str
    expr: Expr
    type: TypeRule


class SetOpKind(enum.Enum):
    """A set operation (its ALL form is :attr:`SetOp.all`)."""

    UNION = "union"
    INTERSECT = "intersect"
    EXCEPT = "except"


@dataclass(frozen=True, slots=True)
class SetOp:
    """One set operation of a tree whose leaves are branch numbers."""

    kind: SetOpKind
    all: bool
    left: SetOp | int
    right: SetOp | int


@dataclass(frozen=True, slots=True)
class Counting:
    """A set operation merged by counting each row per branch across shards.

    The shards' rows end with the number of the branch they come from.
    ``replicated`` branches read reference tables only: every shard sends
    the same rows, counted once.
    """

    tree: SetOp
    branches: int
    replicated: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class FinalStep:
    """The last step of a merge on SQLite shards, computed by SQLite itself.

    The shards' rows are loaded into ``table`` (its ``columns`` definitions
    give each the affinity and collation of what it holds) of an in-memory
    SQLite database, and ``sql`` computes the result from them, with the
    statement's parameters (see :mod:`shardq.sql.rewrite.sqlite`).
    """

    table: str
    columns: tuple[str, ...]
    sql: str
    names: tuple[str, ...]
    params: Any = None


@dataclass(frozen=True, slots=True)
class MergePlan:
    """Everything the merger does, in order (see the module docstring).

    ``limit`` and ``offset`` are numbers: the planner resolves a LIMIT given
    as a bound parameter per call.
    """

    order: tuple[SortKey, ...] = ()
    aggregate: Aggregation | None = None
    having: Expr | None = None
    outputs: tuple[Output, ...] | None = None
    distinct: bool = False
    sort: tuple[SortKey, ...] = ()
    offset: int = 0
    limit: int | None = None
    # FETCH FIRST ... WITH TIES: after ``limit`` rows, the rows tying with the last
    # one in the ORDER BY (``order`` when rows pass through, ``sort`` after a regrouping).
    ties: bool = False
    hidden: int = 0
    # SQLite shards: the merge ends in SQLite (then nothing above applies).
    final: FinalStep | None = None
    # SQLite shards: the collation of each column DISTINCT compares ("binary", "nocase", ...).
    collations: tuple[str, ...] | None = None
    # A write to a reference table: every shard did the same, its result is one shard's.
    first_source_only: bool = False
    # A set operation counted across shards (then ``aggregate`` and ``outputs`` do not apply).
    setop: Counting | None = None

    @property
    def streaming(self) -> bool:
        """Whether rows flow through without the whole result being held in memory."""
        return (
            self.aggregate is None and not self.sort and self.final is None and self.setop is None
        )

    @property
    def compares(self) -> bool:
        """Whether the merge orders values (ORDER BY, sorting, MIN or MAX)."""
        return bool(self.order or self.sort) or (
            self.aggregate is not None
            and any(c in (Combine.MIN, Combine.MAX) for c in self.aggregate.combines)
        )

    @property
    def trivial(self) -> bool:
        """Whether the merge is a plain concatenation of the shards' rows."""
        return (
            not self.order
            and self.aggregate is None
            and self.outputs is None
            and not self.distinct
            and not self.sort
            and not self.offset
            and self.limit is None
            and not self.hidden
            and self.final is None
            and not self.first_source_only
            and self.setop is None
        )
