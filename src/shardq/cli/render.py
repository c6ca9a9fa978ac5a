"""How ``shardq shell`` prints a result: aligned like psql, NULL made visible, paged when long.

A table's numbers are right-aligned and everything else left-aligned,
column widths count display cells (a CJK character takes two, a combining
accent none), and a row count closes it. NULL prints as ``∅`` (dimmed on a
terminal), so it cannot be taken for an empty string, which psql's default
shows the same as NULL. A newline inside a value prints as ``↵`` to keep
one row on one line. Expanded display (``\\x``) prints each row as a record
of ``name | value`` lines, as psql's does.

>>> print("\\n".join(table(["id", "name"], [(1, "Ann"), (12, None)])))
 id | name
----+------
  1 | Ann
 12 | ∅
(2 rows)
"""

from __future__ import annotations

import decimal
import os
import shlex
import shutil
import subprocess
import unicodedata
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_PAGER",
    "NULL",
    "cell",
    "expanded",
    "footer",
    "page",
    "table",
    "wants_pager",
    "width",
]

NULL = "∅"
DEFAULT_PAGER = "less -SRX"
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


def width(text: str) -> int:
    """The cells ``text`` takes on a terminal: wide characters two, combining marks none.

    >>> width("abc"), width("日本"), width("e\\u0301")
    (3, 4, 1)
    """
    total = 0
    for ch in text:
        if unicodedata.combining(ch) or ch in "\u200b\u200d":
            continue
        total += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
    return total


def cell(value: Any) -> str:
    """One value as the shell prints it (NULL aside: see :data:`NULL`).

    >>> import datetime
    >>> [cell(v) for v in [b"\\x01\\xff", True, 2.5, "a\\nb", datetime.date(2024, 5, 1)]]
    ['\\\\x01ff', 't', '2.5', 'a↵b', '2024-05-01']
    """
    if isinstance(value, bool):  # psql's t and f, not Python's True and False
        return "t" if value else "f"
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()
    text = str(value)
    if "\n" in text or "\r" in text:
        text = text.replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵")
    return text


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)


def _pad(text: str, size: int, right: bool) -> str:
    fill = " " * (size - width(text))
    return fill + text if right else text + fill


def footer(count: int) -> str:
    """psql's row count line.

    >>> footer(1), footer(0)
    ('(1 row)', '(0 rows)')
    """
    return f"({count} row{'' if count == 1 else 's'})"


def table(names: Sequence[str], rows: Sequence[Sequence[Any]], *, color: bool = False) -> list[str]:
    """The lines of ``rows`` as an aligned table: header, rule, rows, row count.

    A column is right-aligned when every value it holds that is not NULL is
    a number. Headers are centred over their columns, as psql's are.

    >>> print("\\n".join(table(["n", "word"], [(1.5, "日本"), (-20, "x")])))
      n  | word
    -----+------
     1.5 | 日本
     -20 | x
    (2 rows)
    """
    texts = [[NULL if v is None else cell(v) for v in row] for row in rows]
    right = [
        any(row[i] is not None for row in rows)
        and all(row[i] is None or _numeric(row[i]) for row in rows)
        for i in range(len(names))
    ]
    widths = [width(n) for n in names]
    for row in texts:
        widths = [max(w, width(t)) for w, t in zip(widths, row, strict=True)]
    null = f"{_DIM}{NULL}{_RESET}" if color else NULL

    def line(values: Sequence[str], raw: Sequence[Any] | None) -> str:
        parts = []
        for i, (text, size) in enumerate(zip(values, widths, strict=True)):
            if raw is None:  # the header
                left = (size - width(text)) // 2
                padded = " " * left + text + " " * (size - width(text) - left)
            else:
                padded = _pad(text, size, right[i])
                if raw[i] is None and color:
                    padded = padded.replace(NULL, null, 1)
            parts.append(padded)
        return (" " + " | ".join(parts)).rstrip()

    lines = [line(list(names), None), "-" + "-+-".join("-" * w for w in widths) + "-"]
    lines += [line(text, raw) for text, raw in zip(texts, rows, strict=True)]
    lines.append(footer(len(rows)))
    return lines


def expanded(
    names: Sequence[str], rows: Sequence[Sequence[Any]], *, color: bool = False
) -> list[str]:
    """The lines of ``rows`` as psql's expanded display prints them: one record per row.

    >>> print("\\n".join(expanded(["id", "name"], [(1, "Ann"), (2, None)])))
    -[ RECORD 1 ]-
    id   | 1
    name | Ann
    -[ RECORD 2 ]-
    id   | 2
    name | ∅
    (2 rows)
    """
    if not rows:
        return [footer(0)]
    key = max((width(n) for n in names), default=0)
    null = f"{_DIM}{NULL}{_RESET}" if color else NULL
    texts = [[null if v is None else cell(v) for v in row] for row in rows]
    value = max((width(t) for row in texts for t in row if t is not null), default=0)
    value = max(value, 1)
    lines = []
    for number, row in enumerate(texts, 1):
        head = f"-[ RECORD {number} ]"
        lines.append(head + "-" * max(1, key + value + 3 - len(head)))
        lines += [f"{_pad(n, key, False)} | {t}".rstrip() for n, t in zip(names, row, strict=True)]
    lines.append(footer(len(rows)))
    return lines


def wants_pager(lines: Sequence[str], *, terminal: bool, size: os.terminal_size) -> bool:
    """Whether the lines go through a pager: on a terminal, when taller than it.

    Lines wider than the terminal alone do not page: the terminal wraps them,
    and a pager would hide a short result behind a prompt of its own.

    >>> size = os.terminal_size((80, 24))
    >>> wants_pager(["x"] * 30, terminal=True, size=size)
    True
    >>> wants_pager(["x"] * 30, terminal=False, size=size)
    False
    >>> wants_pager(["x"] * 23, terminal=True, size=size)
    False
    """
    # one line is left for the prompt that follows
    return terminal and len(lines) > size.lines - 1


def page(lines: Sequence[str], out: TextIO, *, pager: str | None = None) -> None:
    """Show ``lines`` through ``pager`` (default ``$PAGER``, else ``less -SRX``).

    A pager that cannot be started is passed over: the lines are written to ``out``.
    """
    command = pager or os.environ.get("PAGER") or DEFAULT_PAGER
    text = "\n".join(lines) + "\n"
    argv = shlex.split(command)
    if not argv or shutil.which(argv[0]) is None:
        out.write(text)
        return
    out.flush()
    try:
        subprocess.run(argv, input=text, text=True, check=False)
    except OSError:
        out.write(text)
