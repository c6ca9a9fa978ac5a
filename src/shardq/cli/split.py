"""Where a statement typed at ``shardq shell`` ends: at a ``;`` outside quotes and comments.

The shell reads lines as they are typed and must know, after each one,
whether the statements so far are complete, so it cannot wait for a whole
file as :func:`shardq.cli.batch.split_statements` does, and an unclosed
quote is not an error here but a statement that goes on. This scanner
knows just enough SQL to find the ends: ``'text'`` (``''`` inside it, and
PostgreSQL's ``E'..\\'..'``), ``"identifiers"``, SQLite's ``[names]`` and
```names```, ``-- comments`` to the end of the line, ``/* comments */``
(nested, as PostgreSQL reads them) and dollar quotes (``$$ .. $$``,
``$tag$ .. $tag$``; ``$1`` is a parameter, not a quote).

>>> split("SELECT 1; SELECT ';' -- ;\\n; SELECT 'go")
(['SELECT 1;', " SELECT ';' -- ;\\n;"], " SELECT 'go")
"""

from __future__ import annotations

import re

__all__ = ["is_blank", "is_open", "split"]

_TAG = re.compile(r"\$([A-Za-z_\x80-\U0010ffff][\w\x80-\U0010ffff]*)?\$")
_CLOSERS = {'"': '"', "`": "`", "[": "]"}


def split(text: str) -> tuple[list[str], str]:
    """The complete statements of ``text`` (each with its ``;``) and what follows the last.

    The rest is an unfinished statement (or only blanks and comments).

    >>> split("SELECT $$a;b$$, $1; SELECT E'it\\\\'s;'; /* a /* nested; */ ; */")
    (['SELECT $$a;b$$, $1;', " SELECT E'it\\\\'s;';"], ' /* a /* nested; */ ; */')
    >>> split("SELECT $f$ $$; $f$ ;")
    (['SELECT $f$ $$; $f$ ;'], '')
    >>> split('SELECT "a;b", [c;d], `e;f`;')
    (['SELECT "a;b", [c;d], `e;f`;'], '')
    """
    statements: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == ";":
            statements.append(text[start : i + 1])
            start = i = i + 1
        elif c == "'":
            escapes = i > 0 and text[i - 1] in "eE" and not _word_before(text, i - 1)
            i = _end_of_string(text, i + 1, escapes)
        elif c in _CLOSERS:
            end = text.find(_CLOSERS[c], i + 1)
            i = n if end < 0 else end + 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = _end_of_comment(text, i + 2)
            i = n if end < 0 else end
        elif c == "$" and not _word_before(text, i) and (tag := _TAG.match(text, i)):
            end = text.find(tag.group(0), tag.end())
            i = n if end < 0 else end + len(tag.group(0))
        else:
            i += 1
    return statements, text[start:]


def _word_before(text: str, i: int) -> bool:
    # E'..' only as a prefix (not the end of `some'`), $tag$ not inside a name (a$b$).
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_$")


def _end_of_string(text: str, i: int, escapes: bool) -> int:
    n = len(text)
    while i < n:
        c = text[i]
        if escapes and c == "\\":
            i += 2
        elif c == "'":
            if text.startswith("'", i + 1):  # '' stands for one quote
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _end_of_comment(text: str, i: int) -> int:
    """The index after the ``*/`` that closes the comment open before ``i``; -1 if none does."""
    depth = 1
    n = len(text)
    while i < n and depth:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
        else:
            i += 1
    return -1 if depth else i


def is_blank(text: str) -> bool:
    """Whether ``text`` holds no SQL: only blanks and complete comments.

    >>> is_blank("  -- nothing\\n /* here */ "), is_blank("-- x\\nSELECT"), is_blank("/* open")
    (True, False, False)
    """
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            i = _end_of_comment(text, i + 2)
            if i < 0:
                return False
        else:
            return False
    return True


def is_open(text: str) -> bool:
    """Whether ``text`` ends inside a quote, a dollar quote or a ``/* comment``.

    A line typed there is part of the statement, even one that starts with ``\\``.

    >>> is_open("SELECT $$"), is_open("SELECT 'a''"), is_open("SELECT 1 -- it's"), is_open("")
    (True, True, False, False)
    """
    return not is_blank(split(text + "\n;")[1])
