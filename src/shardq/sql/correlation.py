"""Which correlated subqueries decorrelation may rewrite: the checks.

:mod:`shardq.sql.decorrelate` rewrites a correlated subquery into a grouped
CTE only when that is provably the same answer; the checks it makes live
here, each raising :class:`Refused` with the reason (for EXPLAIN). Columns
are told apart with the catalog: a subquery's own (of one of its FROM
items) or the outer query's.

>>> import sqlglot
>>> harmless(sqlglot.parse_one("x < 0.2 * a + coalesce(b, 0)"), [])
True
>>> harmless(sqlglot.parse_one("x < 1 / a"), [])
False
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.sql.analyze import is_aggregate, normalize
from shardq.sql.colocation import conjuncts
from shardq.sql.gather import safe

if TYPE_CHECKING:
    from shardq.sql.analyze import Analysis, TableRef
    from shardq.sql.catalog import Columns

__all__ = [
    "Refused",
    "Scope",
    "aggregates",
    "check_body",
    "check_safe",
    "harmless",
    "split_where",
    "type_of",
    "where_conjunct",
]

_AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
# Declared types (format_type) whose GROUP BY and = agree, shipped back exactly.
_KEY_TYPES = ("smallint", "integer", "bigint", "numeric", "date")
_SUMMABLE = ("smallint", "integer", "bigint", "numeric")
# Types min and max are taken of: compared alike wherever the value goes.
_ORDERED = (*_KEY_TYPES, "real", "double precision", "timestamp", "time ")
_SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})
# Nodes whose evaluation cannot fail, whatever the values: the expression
# around the aggregates and the WHERE conjunct holding the subquery. The
# database evaluates a subquery's conjunct last (it costs the most); the
# decorrelated one may come first, on rows another conjunct would have dropped.
_HARMLESS = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.EQ,
    exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not, exp.Is, exp.In,
    exp.Between, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul, exp.Neg, exp.Coalesce,
    exp.Placeholder, exp.Length, exp.DataType, exp.DataTypeParam, exp.Var, exp.Interval,
    exp.Tuple,
)  # fmt: skip
_TEXT = (exp.DataType.Type.TEXT, exp.DataType.Type.VARCHAR, exp.DataType.Type.CHAR)
# Nodes a summed expression of numeric columns may hold: nothing that can fail.
_SUMMED = (exp.Column, exp.Identifier, exp.Literal, exp.Paren, exp.Add, exp.Sub, exp.Mul, exp.Neg)


def harmless(node: exp.Expr, leaves: list[exp.Expr]) -> bool:
    """Whether evaluating ``node`` cannot fail, whatever the values of ``leaves``.

    No division, no function but ``coalesce`` and ``length``, no cast but of a
    literal or to text, no subquery (but ``leaves``).
    """
    skip = {id(leaf) for leaf in leaves}
    for part in node.walk(prune=lambda n: id(n) in skip):
        if id(part) in skip:
            continue
        if isinstance(part, exp.Cast):
            if not (isinstance(part.this, exp.Literal) or part.to.this in _TEXT):
                return False
            continue
        if isinstance(part, exp.In) and (part.args.get("query") or part.args.get("unnest")):
            return False
        if isinstance(part, exp.Subquery) and isinstance(part.this, exp.Subquery):
            continue  # ((SELECT ...)): parentheses
        if not isinstance(part, _HARMLESS):
            return False
    return True


class Refused(Exception):
    """This subquery is not decorrelated (the reason, for EXPLAIN)."""


def type_of(column: exp.Column, ref: TableRef, columns: Columns) -> str:
    """The declared type of an own column, as ``format_type`` writes it ("" if unknown)."""
    name = normalize(column.this, "postgres")
    for info in columns.get(ref.table.name, ()):
        if info.name == name:
            return info.type.lower()
    return ""


class Scope:
    """The columns of one subquery: its own (by source) or the outer query's."""

    def __init__(self, body: exp.Select, analysis: Analysis, columns: Columns):
        self.body = body
        self.columns = columns
        refs = {id(r.node): r for r in analysis.refs}
        sources: list[exp.Expr] = []
        from_ = body.args.get("from_")
        if from_ is not None:
            sources.append(from_.this)
        for join in body.args.get("joins") or []:
            if join.side or join.args.get("method") or join.args.get("using"):
                raise Refused("it has an outer, natural or USING join")
            if str(join.args.get("kind") or "").upper() not in ("", "INNER", "CROSS"):
                raise Refused("it has a join other than an inner one")
            sources.append(join.this)
        if not sources:
            raise Refused("it has no FROM")
        # A CTE of the statement by a table's name is that CTE, not the table; moved
        # into a CTE of its own before it, the subquery would read the table.
        ctes = {
            normalize(c.args["alias"].this, "postgres")
            for c in analysis.parsed.expression.find_all(exp.CTE)
        }
        self.own: dict[str, TableRef] = {}
        for source in sources:
            ref = refs.get(id(source))
            if ref is None or ref.renames_columns or ref.node.db or ref.table.name not in columns:
                raise Refused("it reads something other than declared tables of known columns")
            if normalize(ref.node.this, "postgres") in ctes:
                raise Refused(f"it reads {ref.node.name}, also the name of a CTE")
            if ref.alias in self.own:
                raise Refused("it names two sources alike")
            self.own[ref.alias] = ref
        if not any(r.table.distributed for r in self.own.values()):
            raise Refused("it reads no distributed table")

    def own_type(self, column: exp.Column) -> str:
        """The declared type of ``column`` if it is an own column ("" if not, or unknown)."""
        owner = self.owner(column)
        return "" if owner is None else type_of(column, owner, self.columns)

    def owner(self, column: exp.Column) -> TableRef | None:
        """The own source of ``column``, or None when it is the outer query's."""
        if column.args.get("db") or column.args.get("catalog"):
            raise Refused("a column is named with its schema")
        if not isinstance(column.this, exp.Identifier):
            raise Refused("it has a whole-row or star reference")
        name = normalize(column.this, "postgres")
        if column.table:
            return self.own.get(normalize(column.args["table"], "postgres"))
        if name in _SYSTEM_COLUMNS:  # every table has them; the catalog does not list them
            raise Refused(f"it names the system column {name}")
        owners = [
            ref
            for ref in self.own.values()
            if any(c.name == name for c in self.columns[ref.table.name])
        ]
        if len(owners) > 1:
            raise Refused(f"the column {name} is ambiguous")
        return owners[0] if owners else None

    def outer(self, node: exp.Expr) -> bool:
        """Whether ``node`` names a column of the outer query."""
        return any(self.owner(c) is None for c in node.find_all(exp.Column))


def where_conjunct(subquery: exp.Expr) -> exp.Expr | None:
    """The conjunct of the WHERE clause around ``subquery`` that holds it, or None.

    None when ``subquery`` is not in the WHERE of the SELECT around it.
    """
    node = subquery
    while node.parent is not None:
        if isinstance(node.parent, exp.Where):
            if not isinstance(node.parent.parent, exp.Select):
                return None
            for term in conjuncts(node.parent):
                if term is subquery or any(n is subquery for n in term.walk()):
                    return term
            return None
        if isinstance(node.parent, exp.Select):
            return None
        node = node.parent
    return None


def check_body(body: exp.Select) -> None:
    for arg in ("with_", "group", "having", "order", "limit", "offset", "fetch", "distinct",
                "qualify", "windows", "laterals", "pivots", "sample", "locks"):  # fmt: skip
        if body.args.get(arg):
            raise Refused(f"it has {arg.rstrip('_').upper()}")
    if any(node is not body for node in body.find_all(exp.Select)):
        raise Refused("it holds a subquery")
    if any(isinstance(n, exp.Window | exp.Lateral | exp.Unnest) for n in body.walk()):
        raise Refused("it has a window or a table function")


def check_safe(node: exp.Expr, what: str) -> None:
    if not safe(node, placeholders=True):
        raise Refused(
            f"its {what} {node.sql('postgres')} could fail on rows the subquery would never "
            "read (the groups cover every row)"
        )


def aggregates(item: exp.Expr, scope: Scope) -> list[exp.Expr]:
    """The aggregates of the select item, checked (see the module docstring)."""
    found: list[exp.Expr] = []
    for node in item.walk():
        if isinstance(node, exp.Filter | exp.WithinGroup):
            raise Refused("an aggregate has FILTER or WITHIN GROUP")
        if not is_aggregate(node):
            continue
        if type(node) not in _AGGREGATES:
            raise Refused(f"the aggregate {node.sql('postgres')} is not count, sum, avg, min, max")
        argument = node.this
        if isinstance(argument, exp.Distinct) or node.args.get("expressions"):
            raise Refused(f"the aggregate {node.sql('postgres')} has DISTINCT or more arguments")
        if isinstance(node, exp.Count) and isinstance(argument, exp.Star):
            found.append(node)
            continue
        if scope.outer(argument):
            raise Refused(f"the aggregate {node.sql('postgres')} names an outer column")
        if isinstance(node, exp.Sum | exp.Avg):
            for part in argument.walk():
                if not isinstance(part, _SUMMED):
                    raise Refused(f"the aggregate {node.sql('postgres')} sums an expression")
                if isinstance(part, exp.Column):
                    kind = scope.own_type(part)
                    if not kind.startswith(_SUMMABLE):
                        raise Refused(
                            f"the aggregate {node.sql('postgres')} sums a column that is not "
                            "an integer or numeric (a float sum depends on its order)"
                        )
                    if part is not argument and not kind.startswith("numeric"):
                        raise Refused(
                            f"the aggregate {node.sql('postgres')} sums integer arithmetic, "
                            "which could overflow on rows the subquery would never read"
                        )
        elif not isinstance(argument, exp.Column):
            raise Refused(f"the aggregate {node.sql('postgres')} is over an expression")
        elif isinstance(node, exp.Min | exp.Max):
            kind = scope.own_type(argument)
            if not kind.startswith(_ORDERED):
                raise Refused(
                    f"the aggregate {node.sql('postgres')} is of a column that is not a number, "
                    "date or time (text keeps its column's collation only where it is)"
                )
        found.append(node)
    if any(isinstance(node, exp.Column) for node in item.walk(prune=is_aggregate)):
        raise Refused("its select list has a column outside the aggregates")
    if not harmless(item, found):
        raise Refused(f"the expression {item.sql('postgres')} could fail (a division, a function)")
    if not found:
        raise Refused("its select list has no aggregate")
    return found


def split_where(
    body: exp.Select, scope: Scope
) -> tuple[list[tuple[exp.Column, exp.Column]], list[exp.Expr]]:
    """The WHERE of ``body`` as correlation pairs (own, outer) and its own conjuncts."""
    pairs: list[tuple[exp.Column, exp.Column]] = []
    local: list[exp.Expr] = []
    for term in conjuncts(body.args.get("where")):
        if not scope.outer(term):
            check_safe(term, "condition")
            local.append(term)
            continue
        if isinstance(term, exp.EQ):
            for mine, theirs in ((term.this, term.expression), (term.expression, term.this)):
                if not (isinstance(mine, exp.Column) and isinstance(theirs, exp.Column)):
                    continue
                owner = scope.owner(mine)
                if owner is None or scope.owner(theirs) is not None:
                    continue
                if not type_of(mine, owner, scope.columns).startswith(_KEY_TYPES):
                    raise Refused(
                        f"it is correlated on {mine.sql('postgres')}, not an integer, numeric "
                        "or date column"
                    )
                pairs.append((mine, theirs))
                break
            else:
                raise Refused(f"it refers to the outer query in {term.sql('postgres')}")
            continue
        raise Refused(f"it refers to the outer query in {term.sql('postgres')}")
    if not pairs:
        raise Refused("it is not correlated by an equality")
    return pairs, local
