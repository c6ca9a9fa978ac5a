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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import Token, TokenType, exp
from sqlglot.errors import ParseError, TokenError

from shardq.errors import ProgrammingError, SQLSyntaxError

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


def _syntax_error(exc: ParseError | TokenError, text: str) -> SQLSyntaxError:
    if isinstance(exc, ParseError) and exc.errors:
        first = exc.errors[0]
        line, col = first.get("line"), first.get("col")
        description = first.get("description") or "invalid syntax"
        context = (first.get("start_context", "") + first.get("highlight", "")).strip()
        near = f" near {context[-40:]!r}" if context else ""
        return SQLSyntaxError(
            f"syntax error at line {line}, column {col}{near}: {description}",
            line=line,
            column=col,
        )
    return SQLSyntaxError(f"syntax error: {exc}")


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
    shardq.errors.SQLSyntaxError: syntax error at line 1, column 15 near 'SELECT * FORM t': ...
    """
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
        if dialect == "postgres":
            renamed, count, names = _rename_postgres(text, tokens)
        else:
            renamed, count, names = _rename_sqlite(text, tokens)
        statements = [
            s
            for s in sqlglot.parse(renamed, read=dialect)
            if s is not None and not isinstance(s, exp.Semicolon)  # "; -- a comment"
        ]
    except (ParseError, TokenError) as exc:
        try:  # report positions in the text as given, not the renamed copy
            sqlglot.parse(text, read=dialect)
        except (ParseError, TokenError) as original:
            raise _syntax_error(original, text) from None
        raise _syntax_error(exc, text) from None
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
