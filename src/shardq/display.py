"""Rows as an HTML table, for Jupyter's ``_repr_html_``.

Every value is escaped (text from a database is not markup), NULL is shown as
a distinct, greyed ``NULL`` (an empty string stays empty), numbers are
right-aligned, and only the first :data:`MAX_ROWS` rows are shown, with a note
saying how many there are: a notebook cell should not hold a million rows.
"""

from __future__ import annotations

import decimal
import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MAX_ROWS", "html_table", "ran_on", "seconds_text"]

#: Rows shown before the table is cut.
MAX_ROWS = 50
_NULL = '<td style="color: #888; font-style: italic">NULL</td>'


def _cell(value: Any) -> str:
    if value is None:
        return _NULL
    if isinstance(value, bytes | memoryview | bytearray):
        return f"<td>\\x{html.escape(bytes(value).hex())}</td>"
    text = html.escape(str(value))
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return f'<td style="text-align: right">{text}</td>'
    return f'<td style="text-align: left; white-space: pre">{text}</td>'


def seconds_text(seconds: float | None) -> str:
    """A duration for a person: milliseconds below a second.

    >>> seconds_text(0.0123), seconds_text(2.5), seconds_text(None)
    ('12.3 ms', '2.50 s', '')
    """
    if seconds is None:
        return ""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ran_on(shards: Sequence[str], seconds: float | None) -> str:
    """Where a statement ran and how long it took, for a caption.

    >>> ran_on(("s1", "s2"), 0.004), ran_on(("s1",), None)
    ('ran on s1, s2 in 4.0 ms', 'ran on s1')
    """
    took = f" in {seconds_text(seconds)}" if seconds is not None else ""
    return f"ran on {', '.join(shards)}{took}"


def html_table(
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    total: int | None = None,
    more: bool = False,
    caption: str = "",
    max_rows: int = MAX_ROWS,
) -> str:
    """An HTML table of ``rows`` (the first ``max_rows``) under ``names``.

    Args:
        total: how many rows there are, if more than ``rows`` holds; default ``len(rows)``.
        more: there are more rows than ``rows`` holds, how many is not known
            (a cursor's rows not read yet).
        caption: text (escaped here) shown under the table, e.g. the shards and the time.

    >>> print(html_table(["a<b"], [("<i>x</i>",), (None,)]))  # doctest: +NORMALIZE_WHITESPACE
    <table><thead><tr><th>a&lt;b</th></tr></thead><tbody>
    <tr><td style="text-align: left; white-space: pre">&lt;i&gt;x&lt;/i&gt;</td></tr>
    <tr><td style="color: #888; font-style: italic">NULL</td></tr>
    </tbody></table>
    <p>2 rows</p>
    """
    shown = rows[:max_rows]
    count = len(rows) if total is None else total
    head = "".join(f"<th>{html.escape(str(n))}</th>" for n in names)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in shown)
    note = f"{count} row{'s' if count != 1 else ''}"
    if more:
        note = f"the first {len(shown)} rows (more not read yet)"
    elif count > len(shown):
        note += f", the first {len(shown)} shown"
    if caption:
        note += f"; {caption}"
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>\n"
        f"<p>{html.escape(note)}</p>"
    )
