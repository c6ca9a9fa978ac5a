"""Regenerated SQL: what sqlglot writes for a rewritten tree, checked against the original.

A rewritten statement is sent as sqlglot writes it, and sqlglot does not
always write back what it read: PostgreSQL's ``to_hex`` comes back as
``HEX``, ``date_part`` as ``EXTRACT`` (numeric, not float8), ``now()`` as
``CURRENT_TIMESTAMP``. A word in the regenerated text that the original
text does not have, and that shardq's own rewrite does not add, means the
query may not mean the same any more: it is refused, never sent changed.

>>> import sqlglot
>>> tree = sqlglot.parse_one("SELECT to_hex(v) FROM t", read="postgres")
>>> regenerate(tree, "SELECT to_hex(v) FROM t", "postgres")
Traceback (most recent call last):
...
shardq.errors.UnsupportedQueryError: the query as shardq would send it (with HEX) ...
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import TokenType
from sqlglot.errors import ParseError, TokenError

from shardq.errors import UnsupportedQueryError
from shardq.sql.dialects import SQLITE_AFFINITY_WORDS, generate

if TYPE_CHECKING:
    from sqlglot import exp

__all__ = ["check_regenerated", "for_psycopg", "regenerate"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words shardq's rewrites add, and spellings sqlglot uses for the same thing.
_OURS = frozenset(
    {
        "as", "select", "from", "where", "group", "by", "limit", "filter", "count", "sum",
        "min", "max", "cast", "unnest", "and",
        # type names in casts sqlglot spells differently (numeric -> DECIMAL, ...)
        "decimal", "int", "bigint", "smallint", "double", "precision", "varchar", "char",
        "text", "boolean", "timestamptz", "timestamp", "date", "time", "uuid", "bytea",
        "real", "float", "interval", "inner", "join", "on", "nulls", "first", "last",
        "year", "month", "week", "day", "hour", "minute", "second", "s", "order", "desc",
        "asc",
    }
)  # fmt: skip


def _words(text: str, dialect: str) -> set[str]:
    """The words of ``text`` outside strings and comments, lower case."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
    except (TokenError, ParseError):
        return {w.lower() for w in _WORD.findall(text)}
    return {
        t.text.lower()
        for t in tokens
        if t.token_type not in (TokenType.STRING, TokenType.NATIONAL_STRING)
        and _WORD.fullmatch(t.text)
    }


def regenerate(
    expression: exp.Expr, original: str, dialect: str, extra: frozenset[str] = frozenset()
) -> str:
    """``expression`` as SQL of ``dialect``, refused if it reads differently from ``original``.

    ``extra`` are more words (lower case) the caller's rewrite adds.
    """
    return check_regenerated(generate(expression, dialect), original, dialect, extra)


def check_regenerated(
    sql: str, original: str, dialect: str, extra: frozenset[str] = frozenset()
) -> str:
    """:func:`regenerate`'s check of ``sql``, written by sqlglot from ``original``'s tree."""
    new = _words(sql, dialect) - _words(original, dialect) - _OURS - extra
    if dialect == "sqlite":
        # A CAST is written with its affinity's name; ifnull(a, b) is coalesce(a, b).
        new -= SQLITE_AFFINITY_WORDS | {"coalesce"}
    new = {w for w in new if not w.startswith("_shardq_") and not re.fullmatch(r"_p\d+|c\d+", w)}
    if new:
        shown = ", ".join(sorted(w.upper() for w in new))
        raise UnsupportedQueryError(
            f"the query as shardq would send it (with {shown})",
            "a query merged across shards is rewritten and written back by sqlglot, which "
            "would write this one with words it did not have, and so perhaps another "
            "meaning; pin the query to one shard",
        )
    return sql


@functools.lru_cache(maxsize=1024)
def for_psycopg(sql: str, strings_escaped: bool) -> str:
    """``sql`` as psycopg reads it with parameters: every literal ``%`` doubled.

    A regenerated statement is always sent with parameters, so psycopg reads
    ``%%`` as ``%`` and ``%(name)s`` as a parameter. The modulo operator is
    doubled; so is a ``%`` in a string, unless the strings were written for
    parameters already (``strings_escaped``: the caller passed parameters, so
    they hold ``%%``).

    >>> for_psycopg("SELECT a % 2 FROM t WHERE b LIKE 'x%' AND c = %(_p0)s", False)
    "SELECT a %% 2 FROM t WHERE b LIKE 'x%%' AND c = %(_p0)s"
    >>> for_psycopg("SELECT 1 FROM t WHERE b LIKE 'x%%' AND c = %(_p0)s", True)
    "SELECT 1 FROM t WHERE b LIKE 'x%%' AND c = %(_p0)s"
    """
    tokens = sqlglot.Dialect.get_or_raise("postgres").tokenize(sql)
    edits: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.token_type == TokenType.MOD:
            follows = tokens[i + 1 : i + 5]
            placeholder = (
                len(follows) == 4
                and follows[0].token_type == TokenType.L_PAREN
                and follows[0].start == token.end + 1
                and follows[2].token_type == TokenType.R_PAREN
                and follows[3].text == "s"
                and follows[3].start == follows[2].end + 1
            )
            if placeholder:
                i += 5
                continue
            edits.append((token.start, token.end + 1, "%%"))
        elif token.token_type == TokenType.STRING and not strings_escaped:
            text = sql[token.start : token.end + 1]
            if "%" in text:
                edits.append((token.start, token.end + 1, text.replace("%", "%%")))
        i += 1
    for start, end, text in reversed(edits):
        sql = sql[:start] + text + sql[end:]
    return sql
