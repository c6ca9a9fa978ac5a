"""Parsing: SQL text to a sqlglot tree, with the query's parameters located.

Parameters are always bound by the driver. Each dialect has one parameter
style, the one its driver speaks:

=========  ==========================  =============================
dialect    positional                  named
=========  ==========================  =============================
postgres   ``%s`` (``%%`` is a ``%``)  ``%(name)s``   (psycopg's)
sqlite     ``?``                       ``:name``      (sqlite3's)
=========  ==========================  =============================

To analyse a query shardq must know which value each placeholder stands for,
in the order the placeholders appear in the text. sqlglot does not keep
positions, so before parsing, positional placeholders are renamed, at the
exact offsets the sqlglot tokenizer reports, to named ones (``_p0``,
``_p1``, ...); the text sent to the shards is never this renamed copy unless
a plan rewrites the query.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import Token, TokenType, exp
from sqlglot.errors import ParseError, TokenError

from shardq.errors import ProgrammingError, SQLSyntaxError, UnsupportedQueryError
from shardq.sql.dialects import sqlite_read

__all__ = ["POSITIONAL_PREFIX", "Parsed", "parse", "placeholder_value"]

POSITIONAL_PREFIX = "_p"
_PSYCOPG_FORMATS = frozenset({"s", "b", "t"})


@dataclass(frozen=True, slots=True)
class Parsed:
    """One parsed statement.

    Attributes:
        text: the SQL as given.
        expression: the sqlglot tree (positional placeholders renamed ``_pN``).
        positional: how many positional placeholders the text has.
        names: the names of its named placeholders.
    """

    text: str
    dialect: str
    expression: exp.Expr
    positional: int
    names: frozenset[str]
    # psycopg binds a "%s" even inside a string literal or a comment: the text
    # has such placeholders, which only matter when parameters are given.
    hidden_placeholders: bool = False
    # The text sqlglot parsed (positional placeholders renamed): the offsets in
    # the tree's ``meta`` refer to it.
    source: str = ""


def _adjacent(a: Token, b: Token) -> bool:
    return b.start == a.end + 1


def _rename_postgres(text: str, tokens: list[Token]) -> tuple[str, int, set[str]]:
    out: list[str] = []
    last = 0
    count = 0
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.token_type == TokenType.MOD and nxt is not None and _adjacent(tok, nxt):
            if nxt.token_type == TokenType.MOD:
                # "%%" is a literal "%" once the driver has bound parameters.
                out += [text[last : tok.start], "%"]
                last = nxt.end + 1
                i += 2
                continue
            if nxt.text in _PSYCOPG_FORMATS and nxt.token_type == TokenType.VAR:
                out += [text[last : tok.start], f"%({POSITIONAL_PREFIX}{count})s"]
                last = nxt.end + 1
                count += 1
                i += 2
                continue
            if nxt.token_type == TokenType.L_PAREN and i + 4 < len(tokens):
                name_tok, close, fmt = tokens[i + 2], tokens[i + 3], tokens[i + 4]
                if close.token_type == TokenType.R_PAREN and fmt.text in _PSYCOPG_FORMATS:
                    names.add(name_tok.text)
                    out += [text[last : tok.start], f"%({name_tok.text})s"]
                    last = fmt.end + 1
                    i += 5
                    continue
        i += 1
    out.append(text[last:])
    return "".join(out), count, names


def _psycopg_placeholders(text: str) -> tuple[int, set[str]]:
    """Count placeholders the way psycopg does: over the raw text, strings and all."""
    count, names, i = 0, set(), 0
    while (i := text.find("%", i)) >= 0:
        nxt = text[i + 1 : i + 2]
        if nxt == "(":
            close = text.find(")", i)
            if close > 0:
                names.add(text[i + 2 : close])
                i = close + 2
                continue
        elif nxt in _PSYCOPG_FORMATS:
            count += 1
        i += 2
    return count, names


def _rename_sqlite(text: str, tokens: list[Token]) -> tuple[str, int, set[str]]:
    out: list[str] = []
    last = 0
    count = 0
    names: set[str] = set()
    for i, tok in enumerate(tokens):
        if tok.token_type == TokenType.PLACEHOLDER and tok.text == "?":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is not None and _adjacent(tok, nxt) and nxt.token_type == TokenType.NUMBER:
                raise ProgrammingError(
                    f"numbered placeholders such as ?{nxt.text} are not supported; "
                    "use ? (in order) or :name"
                )
            out += [text[last : tok.start], f":{POSITIONAL_PREFIX}{count}"]
            last = tok.end + 1
            count += 1
        elif tok.token_type == TokenType.COLON and i + 1 < len(tokens):
            nxt = tokens[i + 1]
            if _adjacent(tok, nxt) and nxt.token_type == TokenType.VAR:
                names.add(nxt.text)
    out.append(text[last:])
    return "".join(out), count, names


def _position(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of ``offset`` in ``text``."""
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)


def _as_database_says(dialect: str, near: str | None, line: int, column: int) -> str:
    """A syntax error worded as the dialect's own database words it, with the position.

    >>> _as_database_says("postgres", "FORM", 1, 10)
    'syntax error at or near "FORM" (line 1, column 10)'
    >>> _as_database_says("sqlite", None, 2, 5)
    'incomplete input (line 2, column 5)'
    """
    where = f"(line {line}, column {column})"
    if dialect == "sqlite":
        return f'near "{near}": syntax error {where}' if near else f"incomplete input {where}"
    return (
        f'syntax error at or near "{near}" {where}'
        if near
        else f"syntax error at end of input {where}"
    )


def _shown(fragment: str) -> str:
    fragment = fragment.strip()
    return fragment if len(fragment) <= 40 else fragment[:37] + "..."


def _foreign_placeholder(text: str, tokens: list[Token], dialect: str) -> Token | None:
    """A psycopg ``%s`` (or ``%(name)s``) written for SQLite, which takes ``?``."""
    if dialect != "sqlite":
        return None
    for tok, nxt in itertools.pairwise(tokens):
        adjacent = tok.token_type == TokenType.MOD and _adjacent(tok, nxt)
        if adjacent and (nxt.text in _PSYCOPG_FORMATS or nxt.token_type == TokenType.L_PAREN):
            return tok
    return None


def _unterminated(text: str, dialect: str) -> int | None:
    """The offset of the quote that opens an unterminated literal, if that is the error."""
    tokenizer = sqlglot.Dialect.get_or_raise(dialect).tokenizer()
    for offset in range(len(text) - 1, -1, -1):
        if text[offset] in "'\"`":
            try:
                tokenizer.tokenize(text[:offset])
            except TokenError:
                continue
            return offset
    return None


def _syntax_error(
    exc: ParseError | TokenError, text: str, dialect: str, tokens: list[Token] | None
) -> SQLSyntaxError:
    """``exc`` from sqlglot as the database would report it: no parser internals in it."""
    if isinstance(exc, TokenError):
        offset = _unterminated(text, dialect)
        if offset is None:
            return SQLSyntaxError("syntax error: the text cannot be split into SQL tokens")
        at_line, at_column = _position(text, offset)
        fragment = _shown(text[offset:])
        if dialect == "sqlite":
            message = f'unrecognized token: "{fragment}"'
        else:
            kind = "identifier" if text[offset] == '"' else "string"
            message = f'unterminated quoted {kind} at or near "{fragment}"'
        return SQLSyntaxError(
            f"{message} (line {at_line}, column {at_column})", line=at_line, column=at_column
        )
    first = exc.errors[0] if exc.errors else {}
    line: int | None = first.get("line")
    column: int | None = first.get("col")
    near = (first.get("highlight") or "").strip() or None
    description = first.get("description") or ""
    missing = description.startswith(("Required keyword", "Expected", "Expecting"))
    if near is not None and missing and not (first.get("end_context") or "").strip():
        near = None  # something is missing and nothing follows: the input ended early
    hint = ""
    foreign = _foreign_placeholder(text, tokens or [], dialect)
    if foreign is not None:
        line, column = _position(text, foreign.start)
        near = "%"
        hint = "; SQLite shards take ? placeholders (or :name), not %s"
    elif near is not None and column is not None:
        column = max(1, column - len(near) + 1)  # sqlglot points at the token's last character
    if line is None or column is None:
        return SQLSyntaxError(f"syntax error near {near!r}" if near else "syntax error")
    return SQLSyntaxError(
        _as_database_says(dialect, near and _shown(near), line, column) + hint,
        line=line,
        column=column,
    )


# SQLite ranks LIKE, GLOB, REGEXP, MATCH, BETWEEN and IN with = (below <, >,
# <=, >=, and left to right with =); sqlglot's parser ranks them above both.
_EQUALITY_RANK = (exp.Like, exp.ILike, exp.Glob, exp.RegexpLike, exp.Match, exp.Between, exp.In,
                  exp.SimilarTo)  # fmt: skip
_COMPARISONS = (exp.LT, exp.GT, exp.LTE, exp.GTE)
_EQUALITIES = (exp.EQ, exp.NEQ)


def _equality_rank(node: object) -> bool:
    if isinstance(node, exp.Not):
        node = node.this
    return isinstance(node, _EQUALITY_RANK)


def _check_sqlite_precedence(statement: exp.Expr) -> None:
    """Refuse what SQLite and shardq's parser would read with different operands.

    SQLite reads ``name GLOB 'a*' < 2`` as ``name GLOB ('a*' < 2)`` and
    ``a = b LIKE c`` as ``(a = b) LIKE c``; sqlglot the other way. shardq
    routes and merges by the tree it parsed, so such a statement would be
    answered otherwise than SQLite answers it: it is refused, and written
    with parentheses it runs.

    >>> parse("SELECT * FROM t WHERE (a LIKE 'x%') < 2", "sqlite").expression is not None
    True
    >>> parse("SELECT * FROM t WHERE a LIKE 'x%' < 2", "sqlite")
    Traceback (most recent call last):
    ...
    shardq.errors.UnsupportedQueryError: a LIKE 'x%' < 2 without parentheses is not supported: ...
    """
    for node in statement.find_all(*_COMPARISONS, *_EQUALITIES):
        left, right = node.this, node.expression
        divergent = _equality_rank(right) or (
            isinstance(node, _COMPARISONS) and _equality_rank(left) and not isinstance(left, exp.In)
        )
        if divergent:
            written = re.sub(rf":{POSITIONAL_PREFIX}\d+\b", "?", node.sql("sqlite"))
            raise UnsupportedQueryError(
                f"{written} without parentheses",
                "SQLite ranks LIKE, GLOB, REGEXP, MATCH, BETWEEN and IN with = and below <, >, "
                "<= and >= (it reads a LIKE b < c as a LIKE (b < c)), where the parser shardq "
                "routes and merges by does not; add parentheses to say which you mean",
            )


def parse(text: str, dialect: str) -> Parsed:
    """Parse one SQL statement written in ``dialect``.

    Raises:
        SQLSyntaxError: the text is not valid SQL for the dialect.
        ProgrammingError: the text holds no statement or more than one, or it
            mixes positional and named placeholders.

    >>> p = parse("SELECT * FROM t WHERE a = %s AND b = %s LIMIT %s", "postgres")
    >>> p.positional, p.expression.sql("postgres")
    (3, 'SELECT * FROM t WHERE a = %(_p0)s AND b = %(_p1)s LIMIT %(_p2)s')
    >>> parse("SELECT * FROM t WHERE a = :a", "sqlite").names
    frozenset({'a'})
    >>> parse("SELECT * FORM t", "postgres")
    Traceback (most recent call last):
    ...
    shardq.errors.SQLSyntaxError: syntax error at or near "t" (line 1, column 15)
    >>> parse("SELECT * FROM t WHERE a = %s", "sqlite")
    Traceback (most recent call last):
    ...
    shardq.errors.SQLSyntaxError: near "%": syntax error (line 1, column 27); SQLite shards take ...
    """
    tokens: list[Token] | None = None
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
        if dialect == "postgres":
            renamed, count, names = _rename_postgres(text, tokens)
        else:
            renamed, count, names = _rename_sqlite(text, tokens)
        statements = [
            s
            for s in sqlglot.parse(renamed, read=sqlite_read(dialect))
            if s is not None and not isinstance(s, exp.Semicolon)  # "; -- a comment"
        ]
    except (ParseError, TokenError) as exc:
        try:  # report positions in the text as given, not the renamed copy
            sqlglot.parse(text, read=sqlite_read(dialect))
        except (ParseError, TokenError) as original:
            raise _syntax_error(original, text, dialect, tokens) from None
        raise _syntax_error(exc, text, dialect, tokens) from None
    if not statements:
        raise ProgrammingError("the SQL text holds no statement")
    if len(statements) > 1:
        raise ProgrammingError(
            f"the SQL text holds {len(statements)} statements; execute them one at a time"
        )
    statement = statements[0]
    if isinstance(statement, exp.Command):
        raise SQLSyntaxError(
            f"unrecognised statement {statement.name!r}: shardq parses SQL before "
            "sending it to the shards, and could not parse this one"
        )
    if count and names:
        raise ProgrammingError("a statement cannot mix positional and named placeholders")
    if dialect == "sqlite":
        _check_sqlite_precedence(statement)
    hidden = dialect == "postgres" and _psycopg_placeholders(text) != (count, names)
    return Parsed(text, dialect, statement, count, frozenset(names), hidden, renamed)


def placeholder_value(node: exp.Placeholder, params: object) -> object:
    """Return the bound value a placeholder of a parsed tree stands for.

    Raises:
        ProgrammingError: ``params`` has no value for the placeholder.
    """
    name = node.name
    if isinstance(params, Mapping) and name in params:
        return params[name]  # a named parameter, or a positional one a rewrite renamed
    if name.startswith(POSITIONAL_PREFIX) and name[len(POSITIONAL_PREFIX) :].isdigit():
        index = int(name[len(POSITIONAL_PREFIX) :])
        sequence = isinstance(params, Sequence) and not isinstance(params, str | bytes)
        if sequence and index < len(params):  # type: ignore[arg-type]
            return params[index]  # type: ignore[index]
        raise ProgrammingError(f"no value bound for positional placeholder {index + 1}")
    raise ProgrammingError(f"no value bound for placeholder {name!r}")
