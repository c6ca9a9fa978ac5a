"""Result formats of ``shardq query``: an aligned table, CSV or JSON lines."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import uuid
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["FORMATS", "write_rows"]

FORMATS = ("table", "csv", "json")
_TABLE_SAMPLE = 1000  # rows used to size the table's columns; the rest stream


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.time | dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _write_table(out: TextIO, names: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    iterator = iter(rows)
    sample = []
    for row in iterator:
        sample.append([_text(v) for v in row])
        if len(sample) >= _TABLE_SAMPLE:
            break
    widths = [len(n) for n in names]
    for row in sample:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]

    def line(values: Sequence[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out.write(line(names) + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    count = 0
    for row in sample:
        out.write(line(row) + "\n")
        count += 1
    for raw in iterator:
        out.write(line([_text(v) for v in raw]) + "\n")
        count += 1
    out.write(f"({count} row{'s' if count != 1 else ''})\n")
    return count


def write_rows(out: TextIO, fmt: str, names: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write ``rows`` in ``fmt``, streaming; return how many were written."""
    if fmt == "table":
        return _write_table(out, names, rows)
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if v is None else _text(v) for v in row])
            count += 1
        return count
    for row in rows:  # json: one object per line
        out.write(json.dumps(dict(zip(names, row, strict=True)), default=_json_default) + "\n")
        count += 1
    return count
