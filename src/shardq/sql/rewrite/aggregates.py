"""Aggregates: split a grouped query into per-shard partials and a final step.

Each shard runs the query grouped as written but selecting, per group, its
key and *partial* aggregates; the merge folds the partials by key and
computes what the query selects from them::

    SELECT g, avg(x), count(*) FILTER (WHERE y) / 2 FROM t GROUP BY g HAVING max(z) > 1

runs on every shard as::

    SELECT g AS _shardq_g0, SUM(x) AS _shardq_a0, COUNT(x) AS _shardq_a1,
           COUNT(*) FILTER(WHERE y) AS _shardq_a2, MAX(z) AS _shardq_a3
    FROM t GROUP BY g

and the merge sums the sums and counts, takes the maximum of the maxima, keeps
the groups where ``_a3 > 1``, and outputs ``g``, ``_a0 / _a1`` with
PostgreSQL's numeric division, and ``_a2 / 2`` with integer division.

COUNT, SUM, MIN, MAX, AVG, bool_and/bool_or, stddev and variance (also
with FILTER), and
COUNT/SUM/AVG(DISTINCT x) (whose distinct values are gathered: the shards
also group by ``x``) decompose. Any other aggregate is refused: its partial
results cannot be combined exactly. An expression of the group key alone is
computed on the shards (it is equal on every shard); arithmetic (dates,
timestamps and intervals included), comparisons, BETWEEN, IN lists, CASE,
``round``, ``coalesce``, ``nullif``, EXTRACT, ``date_part``, ``date_trunc``
and the functions of :mod:`shardq.merge.functions` over aggregates are
computed after the merge.

A string literal compared with an aggregate (``HAVING min(ts) < '2023-03-05
10:00'``) is, as in PostgreSQL, a value of the aggregate's type, read with
the session's settings (time zone, date style). The merge does not know that
type, nor how PostgreSQL reads the text: the shards read it, in a hidden
column ``CASE WHEN false THEN min(ts) ELSE '2023-03-05 10:00' END``, which
PostgreSQL types as the aggregate (its rules for an unknown literal in CASE
are the ones for an operator) and which the merge then compares as a value.
``to_hex`` of a negative value needs its type's width the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.merge import temporal
from shardq.merge.evaluate import BOOL, INT4, INT8, NUMERIC, TEXT
from shardq.merge.functions import FUNCTIONS
from shardq.merge.steps import (
    Aggregation,
    Call,
    Col,
    Combine,
    Const,
    Expr,
    Output,
    Param,
    SortKey,
    TypeRule,
)
from shardq.sql.analyze import is_aggregate, own_aggregates, volatile_call
from shardq.sql.rewrite.names import output_name
from shardq.sql.rewrite.order import is_star, sort_terms

__all__ = ["Decomposed", "decompose", "is_aggregate", "own_aggregates"]

_COMBINES: dict[type[exp.Expr], Combine] = {
    exp.Count: Combine.COUNT,
    exp.Sum: Combine.SUM,
    exp.Min: Combine.MIN,
    exp.Max: Combine.MAX,
    exp.LogicalAnd: Combine.BOOL_AND,
    exp.LogicalOr: Combine.BOOL_OR,
}
_ANONYMOUS: dict[str, type[exp.Expr]] = {
    "every": exp.LogicalAnd,
    "bool_and": exp.LogicalAnd,
    "bool_or": exp.LogicalOr,
}
# stddev and variance are the sample forms.
_VARIANCES: dict[type[exp.Expr], str] = {
    exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp",
    exp.StddevPop: "stddev_pop",
    exp.Variance: "var_samp",
    exp.VariancePop: "var_pop",
}
#: The words the partials of a variance add to the shards' statement.
VARIANCE_WORDS = frozenset({"array", "var_pop"})
_CASTS = {
    exp.DataType.Type.SMALLINT: "to_int2",
    exp.DataType.Type.INT: "to_int4",
    exp.DataType.Type.BIGINT: "to_int8",
    exp.DataType.Type.DECIMAL: "to_numeric",
    exp.DataType.Type.DOUBLE: "to_float8",
    exp.DataType.Type.FLOAT: "to_float4",
    exp.DataType.Type.DATE: "to_date",
}
_BINARY: dict[type[exp.Expr], str] = {
    exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%",
    exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=",
    exp.And: "and", exp.Or: "or",
}  # fmt: skip
_NOT_DECOMPOSABLE = (
    "its per-shard results cannot be combined into the exact answer; pin the query to "
    "one shard with a shard-key condition"
)


def _literal(node: exp.Expr) -> Const | None:
    if isinstance(node, exp.Null):
        return Const(None, TEXT)  # an untyped NULL in a select list is text
    if isinstance(node, exp.Boolean):
        return Const(bool(node.this), BOOL)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return Const(node.this, TEXT)
        text = node.name
        if text.isdigit():
            value = int(text)
            if value >= 2**63:  # too large for bigint: PostgreSQL reads it as numeric
                from decimal import Decimal

                return Const(Decimal(value), NUMERIC)
            return Const(value, INT4 if value < 2**31 else INT8)
        if all(c.isdigit() or c == "." for c in text) and text.count(".") == 1:
            from decimal import Decimal

            return Const(Decimal(text), NUMERIC)
    return None


def type_of(expr: Expr) -> TypeRule:
    """How the type of ``expr``'s result follows from the shard columns' types."""
    if isinstance(expr, Col):
        return TypeRule(copy=expr.index)
    if isinstance(expr, Const):
        return TypeRule(fixed=expr.type_code)
    if isinstance(expr, Param):
        return TypeRule()
    op = {"sum_set": "sum_of", "avg_set": "avg_of"}.get(expr.op, expr.op)
    return TypeRule(op=op, args=tuple(type_of(a) for a in expr.args))


@dataclass
class Decomposed:
    """A grouped query split into its per-shard query and the merge's steps."""

    shard: exp.Select
    aggregation: Aggregation
    outputs: tuple[Output, ...]
    having: Expr | None
    sort: tuple[SortKey, ...]
    hidden: int
    params: bool = False
    words: frozenset[str] = frozenset()  # words the rewrite adds to the shards' SQL


# The words of the hidden column that types a literal (see the module docstring).
_TYPED_LITERAL_WORDS = frozenset({"case", "when", "false", "then", "else", "end"})
_COMPARISON_NODES = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)


@dataclass
class _Decomposer:
    select: exp.Select
    dialect: str
    groups: list[exp.Expr] = field(default_factory=list)  # per-shard select items
    group_by: list[exp.Expr] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)  # expression text -> group column
    partials: list[exp.Expr] = field(default_factory=list)
    combines: list[Combine] = field(default_factory=list)
    seen: dict[tuple[str, Combine], int] = field(default_factory=dict)
    params: bool = False
    words: set[str] = field(default_factory=set)  # words the partials add (see regenerate)

    def text(self, node: exp.Expr) -> str:
        return node.sql(self.dialect)

    # -- the group key

    def add_groups(self, terms: list[exp.Expr]) -> None:
        group = self.select.args.get("group")
        for node in group.expressions if group is not None else []:
            if isinstance(node, exp.Rollup | exp.Cube | exp.GroupingSets):
                raise UnsupportedQueryError(
                    f"GROUP BY {node.key.upper().replace('GROUPINGSETS', 'GROUPING SETS')} "
                    "across shards",
                    _NOT_DECOMPOSABLE,
                )
        for index, expression in enumerate(terms):
            self.groups.append(exp.alias_(expression.copy(), f"_shardq_g{index}"))
            self.group_by.append(expression.copy())
            self.keys.setdefault(self.text(expression), index)

    # -- partial columns

    def partial(self, node: exp.Expr, combine: Combine) -> Col:
        key = (self.text(node), combine)
        found = self.seen.get(key)
        if found is None:
            found = len(self.partials)
            self.seen[key] = found
            self.partials.append(exp.alias_(node, f"_shardq_a{found}"))
            self.combines.append(combine)
            if combine is Combine.SET:
                self.group_by.append(node.copy())
        return Col(len(self.groups) + found)

    def aggregate(self, node: exp.Expr) -> Expr:
        agg, condition = (node.this, node.expression) if isinstance(node, exp.Filter) else (
            node, None)  # fmt: skip
        distinct = isinstance(agg.this, exp.Distinct)
        kind: type[exp.Expr] = type(agg)
        if isinstance(agg, exp.Anonymous) and agg.name.lower() in _ANONYMOUS:
            # every(x), and bool_and/bool_or where sqlglot keeps them as plain calls: the
            # shards run the call as written (sqlglot would write every() as BOOL_AND).
            if len(agg.expressions) != 1 or isinstance(agg.expressions[0], exp.Distinct):
                raise UnsupportedQueryError(f"{agg.sql(self.dialect)}", "it takes one argument")
            kind = _ANONYMOUS[agg.name.lower()]
        if kind in _COMBINES and not distinct:
            return self.partial(node.copy(), _COMBINES[kind])
        if kind in _VARIANCES and not distinct:
            return self.variance(_VARIANCES[kind], agg.this, condition)
        if kind is exp.Avg and not distinct:
            total: exp.Expr = exp.Sum(this=agg.this.copy())
            count: exp.Expr = exp.Count(this=agg.this.copy())
            if condition is not None:
                total = exp.Filter(this=total, expression=condition.copy())
                count = exp.Filter(this=count, expression=condition.copy())
            return Call("avg", (self.partial(total, Combine.SUM),
                                self.partial(count, Combine.COUNT)))  # fmt: skip
        if distinct and condition is None and len(agg.this.expressions) == 1:
            (arg,) = agg.this.expressions
            if kind in (exp.Min, exp.Max):
                return self.partial(kind(this=arg.copy()), _COMBINES[kind])
            ops: dict[type[exp.Expr], str] = {
                exp.Count: "count_set", exp.Sum: "sum_set", exp.Avg: "avg_set"
            }  # fmt: skip
            op = ops.get(kind)
            if op is not None:
                return Call(op, (self.partial(arg.copy(), Combine.SET),))
        raise UnsupportedQueryError(
            f"the aggregate {node.sql(self.dialect)} across shards", _NOT_DECOMPOSABLE
        )

    def variance(self, kind: str, x: exp.Expr, condition: exp.Expr | None) -> Expr:
        """A variance or standard deviation from its partials (see :mod:`shardq.merge.variance`).

        Exact sums for integers and numerics (count, sum, sum of squares in
        numeric), and the float state ``[N, Sx, Sxx]`` for floats; the merge
        picks by the sum's type.
        """

        def each(node: exp.Expr) -> exp.Expr:
            return exp.Filter(this=node, expression=condition.copy()) if condition else node

        def cast(to: str) -> exp.Expr:
            return exp.Cast(this=exp.Paren(this=x.copy()), to=exp.DataType.build(to))

        count = each(exp.Count(this=x.copy()))
        squares = each(exp.Sum(this=exp.Mul(this=cast("numeric"), expression=cast("numeric"))))
        state = exp.Array(
            expressions=[
                exp.Cast(this=count.copy(), to=exp.DataType.build("double")),
                each(exp.Sum(this=cast("double"))),
                exp.Mul(this=each(exp.VariancePop(this=cast("double"))), expression=count.copy()),
            ]
        )
        self.words |= VARIANCE_WORDS
        return Call(
            "variance",
            (
                Const(kind, TEXT),
                self.partial(count, Combine.COUNT),
                self.partial(each(exp.Sum(this=x.copy())), Combine.SUM),
                self.partial(squares, Combine.SUM),
                self.partial(state, Combine.FLOAT_VAR),
            ),
        )

    # -- expressions over groups and aggregates

    def cast(self, node: exp.Cast) -> Expr:
        kind = node.to.this
        inner = self.translate(node.this)
        target = _CASTS.get(kind)
        if target is None:
            raise UnsupportedQueryError(
                f"the cast {node.sql(self.dialect)} over aggregates across shards",
                "shardq casts merged aggregates to integer, numeric, floating-point and "
                "date types only; pin the query to one shard",
            )
        if target != "to_numeric" or not node.to.expressions:
            return Call(target, (inner,))
        params = [int(e.name) for e in node.to.expressions]
        precision, scale = params[0], params[1] if len(params) > 1 else 0
        if scale < 0:
            raise UnsupportedQueryError(
                f"the cast {node.sql(self.dialect)}", "a negative numeric scale is not merged"
            )
        return Call("to_numeric", (inner, Const(precision), Const(scale)))

    def operand(self, node: exp.Expr, other: exp.Expr) -> Expr:
        """``node``, compared with ``other``: a string literal takes ``other``'s type."""
        other = other.unnest()
        typed = (
            isinstance(node, exp.Literal)
            and node.is_string
            and not isinstance(other, exp.Literal | exp.Null | exp.Placeholder)
        )
        if not typed:
            return self.translate(node)
        self.words |= _TYPED_LITERAL_WORDS
        ifs = [exp.If(this=exp.false(), true=other.copy())]
        return self.partial(exp.Case(ifs=ifs, default=node.copy()), Combine.ANY)

    def case(self, node: exp.Case) -> Expr:
        """CASE as (condition, result) pairs and the ELSE result; NULL results are untyped."""

        def result(value: exp.Expr | None) -> Expr:
            if value is None or isinstance(value, exp.Null):
                return Const(None, None)
            return self.translate(value)

        subject = node.this
        args: list[Expr] = []
        for branch in node.args.get("ifs") or []:
            test = branch.this
            if subject is not None:  # CASE x WHEN v ...: x = v
                args.append(Call("=", (self.translate(subject), self.operand(test, subject))))
            else:
                args.append(self.translate(test))
            args.append(result(branch.args.get("true")))
        args.append(result(node.args.get("default")))
        return Call("case", tuple(args))

    def function(self, name: str, node: exp.Expr) -> Expr:
        """A call of one of :data:`~shardq.merge.functions.FUNCTIONS`, if it takes these args."""
        args = node.expressions if isinstance(node, exp.Anonymous) else list(
            node.iter_expressions())  # fmt: skip
        if isinstance(node, exp.Cast):
            args = [node.this]
        if len(args) not in FUNCTIONS[name].arity:
            raise UnsupportedQueryError(
                f"the expression {node.sql(self.dialect)} over aggregates across shards",
                f"shardq computes {name}() with {FUNCTIONS[name].arity[0]} argument(s) after "
                "a merge, not with these; pin the query to one shard",
            )
        return Call(name, tuple(
            Const(None, None) if isinstance(a, exp.Null) else self.translate(a) for a in args
        ))  # fmt: skip

    def to_hex(self, arg: exp.Expr) -> Expr:
        """to_hex(x), and the width of x's type for a negative x.

        The width is the shards' ``to_hex`` of -1 in x's type, a hidden column
        ``to_hex(CASE WHEN false THEN x ELSE -1 END)``: PostgreSQL types it.
        """
        self.words |= _TYPED_LITERAL_WORDS
        ifs = [exp.If(this=exp.false(), true=arg.copy())]
        typed = exp.Case(ifs=ifs, default=exp.Literal.number(-1))
        width = self.partial(exp.Anonymous(this="to_hex", expressions=[typed]), Combine.ANY)
        return Call("to_hex", (self.translate(arg), width))

    def date_trunc(self, node: exp.TimestampTrunc) -> Expr:
        """date_trunc of a unit shardq truncates to."""
        unit = node.args.get("unit")
        field = temporal.field_name(unit.name) if isinstance(unit, exp.Var | exp.Literal) else None
        if field not in temporal.TRUNC_FIELDS or node.args.get("zone") is not None:
            raise UnsupportedQueryError(
                f"the expression {node.sql(self.dialect)} over aggregates across shards",
                f"shardq truncates to {', '.join(sorted(temporal.TRUNC_FIELDS))} after a "
                "merge; pin the query to one shard",
            )
        return Call("date_trunc", (Const(field), self.translate(node.this)))

    def extract(self, node: exp.Extract | exp.Anonymous) -> Expr:
        """EXTRACT (numeric) or date_part (float8) of a field shardq computes."""
        if isinstance(node, exp.Extract):
            op, unit, source = "extract", node.this, node.expression
        elif len(node.expressions) == 2:
            op, (unit, source) = "date_part", node.expressions
        else:
            op, unit, source = "date_part", None, node
        field = temporal.field_name(unit.name) if isinstance(unit, exp.Var | exp.Literal) else None
        if field is None:
            raise UnsupportedQueryError(
                f"the expression {node.sql(self.dialect)} over aggregates across shards",
                f"shardq extracts {', '.join(sorted(temporal.FIELDS))} after a merge; "
                "pin the query to one shard",
            )
        return Call(op, (Const(field), self.translate(source)))

    def translate(self, node: exp.Expr) -> Expr:
        if isinstance(node, exp.Alias):
            return self.translate(node.this)
        key = self.keys.get(self.text(node))
        if key is not None:
            return Col(key)
        if is_aggregate(node):
            return self.aggregate(node)
        if not own_aggregates(node, self.select):
            literal = _literal(node)
            if literal is not None:
                return literal
            if isinstance(node, exp.Placeholder):
                self.params = True
                return Param(node.name)
            if volatile_call(node) is not None:
                raise UnsupportedQueryError(
                    f"the volatile expression {node.sql(self.dialect)} in a grouped query "
                    "across shards",
                    "each shard would compute a different value for the same group",
                )
            # A function of the group key: every shard computes the same value.
            return self.partial(node.copy(), Combine.ANY)
        if isinstance(node, exp.Paren):
            return self.translate(node.this)
        if isinstance(node, _COMPARISON_NODES):
            left, right = node.this, node.expression
            return Call(_BINARY[type(node)], (self.operand(left, right), self.operand(right, left)))
        if isinstance(node, exp.Between):
            subject = node.this
            low = Call(">=", (self.translate(subject), self.operand(node.args["low"], subject)))
            high = Call("<=", (self.translate(subject), self.operand(node.args["high"], subject)))
            return Call("and", (low, high))
        if isinstance(node, exp.In) and node.expressions and not node.args.get("query"):
            subject = node.this
            tests = [Call("=", (self.translate(subject), self.operand(e, subject)))
                     for e in node.expressions]  # fmt: skip
            return tests[0] if len(tests) == 1 else Call("or", tuple(tests))
        if isinstance(node, exp.Nullif):
            first, second = node.this, node.expression
            return Call("nullif", (self.translate(first), self.operand(second, first)))
        if isinstance(node, exp.Case):
            return self.case(node)
        if isinstance(node, exp.Anonymous) and node.name.lower() == "mod" and len(
                node.expressions) == 2:  # fmt: skip
            return Call("%", tuple(self.translate(a) for a in node.expressions))
        if isinstance(node, exp.Anonymous) and node.name.lower() == "to_hex" and len(
                node.expressions) == 1:  # fmt: skip
            return self.to_hex(node.expressions[0])
        function = _function_name(node)
        if function is not None:
            return self.function(function, node)
        if isinstance(node, exp.TimestampTrunc):
            return self.date_trunc(node)
        if isinstance(node, exp.Extract) or (
            isinstance(node, exp.Anonymous) and node.name.lower() == "date_part"
        ):
            return self.extract(node)
        op = _BINARY.get(type(node))
        if op is not None:
            return Call(op, (self.translate(node.this), self.translate(node.expression)))
        if isinstance(node, exp.Neg):
            return Call("neg", (self.translate(node.this),))
        if isinstance(node, exp.Not):
            return Call("not", (self.translate(node.this),))
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null | exp.Boolean):
            test = "null" if isinstance(node.expression, exp.Null) else (
                "true" if node.expression.this else "false")  # fmt: skip
            test = f"is_not_{test}" if node.args.get("negate") else f"is_{test}"
            return Call(test, (self.translate(node.this),))
        if isinstance(node, exp.Coalesce):
            args = [node.this, *node.expressions]
            return Call("coalesce", tuple(self.translate(a) for a in args))
        if isinstance(node, exp.Cast) and isinstance(node.to, exp.DataType):
            return self.cast(node)
        if isinstance(node, exp.Round):
            args = [node.this] + ([node.args["decimals"]] if node.args.get("decimals") else [])
            return Call("round", tuple(self.translate(a) for a in args))
        raise UnsupportedQueryError(
            f"the expression {node.sql(self.dialect)} over aggregates across shards",
            "shardq computes arithmetic, comparisons, AND/OR/NOT, IS NULL, CASE, EXTRACT and a "
            "few functions (round, coalesce, nullif, abs, greatest, substr, ...) over merged "
            "aggregates, and not this yet; pin the query to one shard",
        )


_FUNCTION_NODES: dict[type[exp.Expr], str] = {
    exp.Abs: "abs", exp.Floor: "floor", exp.Ceil: "ceil", exp.Trunc: "trunc", exp.Sign: "sign",
    exp.Greatest: "greatest", exp.Least: "least", exp.Length: "length", exp.Substring: "substr",
    exp.DPipe: "||", exp.Concat: "concat", exp.Sqrt: "sqrt", exp.Pow: "power",
}  # fmt: skip


def _function_name(node: exp.Expr) -> str | None:
    """The name in :data:`~shardq.merge.functions.FUNCTIONS` of the call ``node``, if one."""
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        return name if name in FUNCTIONS else None
    if isinstance(node, exp.Cast) and isinstance(node.to, exp.DataType):
        plain = node.to.this == exp.DataType.Type.TEXT
        return "text" if plain else None
    return _FUNCTION_NODES.get(type(node))


def _plain_groups(select: exp.Select) -> list[exp.Expr]:
    group = select.args.get("group")
    return list(group.expressions) if group is not None else []


def decompose(
    select: exp.Select, dialect: str, source: str = "", groups: list[exp.Expr] | None = None
) -> Decomposed:
    """Split the grouped query ``select`` (see the module docstring)."""
    for item in select.expressions:
        if is_star(item):
            raise UnsupportedQueryError(
                "SELECT * in a grouped query across shards",
                "shardq must know each column of a merged group; list the columns",
            )
    d = _Decomposer(select, dialect)
    d.add_groups(groups if groups is not None else list(_plain_groups(select)))
    outputs = [
        Output(output_name(item, dialect, source), expr, type_of(expr))
        for item in select.expressions
        for expr in [d.translate(item)]
    ]
    having_node = select.args.get("having")
    having = d.translate(having_node.this) if having_node is not None else None
    sort = []
    visible = len(outputs)
    for term in sort_terms(select, dialect):
        target = term.target
        if not isinstance(target, int):
            expr = d.translate(target)
            outputs.append(Output("?column?", expr, type_of(expr)))
            target = len(outputs) - 1
        sort.append(SortKey(target, term.descending, term.nulls_first, term.code_point))
    shard = select.copy()
    for arg in ("having", "order", "limit", "offset", "distinct"):
        shard.set(arg, None)
    shard.set("expressions", [*d.groups, *d.partials] or [exp.Count(this=exp.Star())])
    shard.set("group", exp.Group(expressions=d.group_by) if d.group_by else None)
    return Decomposed(
        shard=shard,
        aggregation=Aggregation(
            len(d.groups), tuple(d.combines), scalar=select.args.get("group") is None
        ),
        outputs=tuple(outputs),
        having=having,
        sort=tuple(sort),
        hidden=len(outputs) - visible,
        params=d.params,
        words=frozenset(d.words),
    )
