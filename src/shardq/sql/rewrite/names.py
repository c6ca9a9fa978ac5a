"""Output column names: what the database would call each column of a result.

A merged result's columns are computed by shardq, not by a shard, so their
names are chosen here the way PostgreSQL's ``FigureColname`` chooses them: the
alias if there is one, a column's name, a function's name (``count``,
``round``), ``case`` for CASE, the inner name of a cast (``x::int`` is ``x``),
and ``?column?`` for anything else. SQLite names an unaliased expression by
its text as written, which shardq takes from the parsed text.

>>> import sqlglot
>>> def name(sql):
...     return output_name(sqlglot.parse_one(sql, read="postgres").expressions[0], "postgres")
>>> [name(s) for s in ["SELECT count(*)", "SELECT t.A", "SELECT sum(x) / 2",
...                     "SELECT round(avg(x), 2)", "SELECT avg(x)::int", "SELECT 1 AS \\"N\\""]]
['count', 'a', '?column?', 'round', 'avg', 'N']
"""

from __future__ import annotations

import functools
import re

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.errors import ParseError, TokenError

from shardq.sql.analyze import normalize

__all__ = ["item_texts", "named_items", "output_name"]

# Tokens that end a select list at depth 0.
_LIST_ENDS = frozenset(
    {TokenType.FROM, TokenType.WHERE, TokenType.GROUP_BY, TokenType.HAVING, TokenType.ORDER_BY,
     TokenType.LIMIT, TokenType.WINDOW, TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT,
     TokenType.SEMICOLON, TokenType.OFFSET}
)  # fmt: skip

_UNKNOWN = "?column?"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_TYPE_NAMES = {
    "INT": "int4", "INTEGER": "int4", "BIGINT": "int8", "SMALLINT": "int2",
    "DOUBLE": "float8", "DOUBLE PRECISION": "float8", "FLOAT": "float8", "REAL": "float4",
    "DECIMAL": "numeric", "NUMERIC": "numeric", "TEXT": "text", "VARCHAR": "varchar",
    "BOOLEAN": "bool", "DATE": "date", "TIMESTAMP": "timestamp", "TIMESTAMPTZ": "timestamptz",
}  # fmt: skip


def _figure(node: exp.Expr, dialect: str, strong: bool = False, source: str = "") -> str | None:
    """PostgreSQL's name for ``node``; with ``strong``, only a name from a column or a call.

    FigureColname ranks names: a column's or a function's is strong, a
    cast's type name or ``case`` weak; a CASE takes its ELSE's name when
    that is strong (``CASE ... ELSE id END`` is named ``id``). A function is
    named as written in ``source`` when known (``variance(x)`` is
    ``variance``, which sqlglot reads as ``VAR_SAMP``).
    """
    if isinstance(node, exp.Alias):
        return normalize(node.args["alias"], dialect)
    if isinstance(node, exp.Column):
        return normalize(node.this, dialect) if isinstance(node.this, exp.Identifier) else None
    if isinstance(node, exp.Paren | exp.Filter):
        return _figure(node.this, dialect, strong, source)
    if isinstance(node, exp.Cast):
        inner = _figure(node.this, dialect, strong, source)
        if inner is not None or strong:
            return inner
        kind = node.to.sql("postgres").upper().split("(")[0]
        return _TYPE_NAMES.get(kind, kind.lower())
    if isinstance(node, exp.Case):
        default = node.args.get("default")
        named = None if default is None else _figure(default, dialect, True, source)
        return named if named is not None or strong else "case"
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Connector | exp.Binary | exp.Predicate | exp.Unary):
        return None  # operators (AND, =, +, NOT, ...) are ?column?
    if isinstance(node, exp.Func):
        start, end = node.meta.get("start"), node.meta.get("end")
        if source and start is not None and end is not None:
            written = source[start : end + 1]
            if _NAME.fullmatch(written):
                return written.lower()
        text = node.sql(dialect)
        match = _CALL.match(text)
        if match:
            return match.group(1).lower()
        return text.lower() if text.replace("_", "").isalpha() else None  # CURRENT_DATE
    return None


def _span(node: exp.Expr, source: str) -> str | None:
    """The text ``node`` was parsed from, if its tokens' offsets are known."""
    offsets = [(n.meta["start"], n.meta["end"]) for n in node.walk() if "start" in n.meta]
    if not offsets or not source:
        return None
    start = min(s for s, _ in offsets)
    end = max(e for _, e in offsets) + 1
    # The closing parentheses of calls carry no offsets: take as many as are open.
    depth = source[start:end].count("(") - source[start:end].count(")")
    while depth > 0 and end < len(source):
        if source[end] == ")":
            depth -= 1
        elif not source[end].isspace():
            return None
        end += 1
    return source[start:end] if depth == 0 else None


@functools.lru_cache(maxsize=256)
def item_texts(source: str, dialect: str) -> tuple[str, ...] | None:
    """The text of each select-list item of the statement's main SELECT, as written.

    SQLite names an unaliased result column by the text of its expression,
    spaces inside kept; this finds that text from the tokens (None when the
    text cannot be split so).

    >>> item_texts("SELECT DISTINCT avg( id ) , CASE WHEN a THEN 'y' END, f(a, b) x FROM t",
    ...            "sqlite")
    ('avg( id )', "CASE WHEN a THEN 'y' END", 'f(a, b) x')
    """
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(source)
    except (TokenError, ParseError):
        return None
    depth = 0
    start = None
    for i, token in enumerate(tokens):
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and token.token_type == TokenType.SELECT:
            start = i + 1
            break
    if start is None:
        return None
    while start < len(tokens) and tokens[start].token_type in (TokenType.DISTINCT, TokenType.ALL):
        start += 1
    items: list[str] = []
    first = start
    depth = 0
    for i in range(start, len(tokens) + 1):
        kind = tokens[i].token_type if i < len(tokens) else None
        if kind is not None:
            if kind == TokenType.L_PAREN:
                depth += 1
                continue
            if kind == TokenType.R_PAREN:
                depth -= 1
                continue
            if depth or not (kind == TokenType.COMMA or kind in _LIST_ENDS):
                continue
        if first >= i:
            return None
        items.append(source[tokens[first].start : tokens[i - 1].end + 1])
        if kind != TokenType.COMMA:
            break
        first = i + 1
    return tuple(items)


def output_name(node: exp.Expr, dialect: str, source: str = "") -> str:
    """The name the database gives the select-list item ``node``.

    ``source`` is the text the tree was parsed from; SQLite names an
    unaliased expression by its text.
    """
    if dialect == "sqlite":
        if isinstance(node, exp.Alias):
            return str(node.alias)
        if isinstance(node, exp.Column):
            return str(node.name)
        return _span(node, source) or node.sql("sqlite")
    return _figure(node, dialect, source=source) or _UNKNOWN


def named_items(select: exp.Select, text: str) -> exp.Select:
    """``select`` with each unaliased expression named as SQLite names it: by its text.

    A rewritten statement is written back by sqlglot, in other words than the
    user's (``NOT x IS NULL`` for ``x IS NOT NULL``); the shards would name
    its columns by those.
    """
    texts = item_texts(text, "sqlite")
    items = select.expressions
    if texts is None or len(texts) != len(items):
        return select
    named = []
    for item, written in zip(items, texts, strict=True):
        plain = isinstance(item, exp.Alias | exp.Star) or (isinstance(_bare(item), exp.Column))
        named.append(item if plain else exp.alias_(item.copy(), written, quoted=True))
    if all(a is b for a, b in zip(named, items, strict=True)):
        return select
    select = select.copy()
    select.set("expressions", named)
    return select


def _bare(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node
