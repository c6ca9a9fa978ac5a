"""The rows of a bulk load's source, read in batches (see :mod:`shardq.execute.copy`).

A source is one of:

* an iterable (or async iterable) of rows, each a sequence of values;
* a CSV file: a path, or a file object (text, or binary decoded with
  ``encoding``), read as PostgreSQL's ``COPY ... (FORMAT csv)`` reads it;
* an Arrow table or record batch, a pandas or a polars DataFrame: recognized
  by their type, read with their own library (so nothing more to install),
  a batch at a time; their column names are the load's columns.

A CSV record is parsed (to find its shard key and count its fields), and
also kept as read: a PostgreSQL shard receives the records unchanged, in a
``COPY ... (FORMAT csv)`` with the same options, so quoting, ``NULL`` and
escapes mean exactly what they mean to PostgreSQL. Lines are read a block
at a time: a block without a quote is parsed by one regular expression
(every line one record, its fields between delimiters); any other block
record by record, a quoted record by the standard library's reader. An
unquoted field equal to ``null`` (the empty string by default) is NULL and
a quoted one is text: Python's reader does not tell them apart, so the
record is scanned again (:func:`quoted_fields`), only when it has such a
field.

Positions name a row in errors: the 1-based line where a CSV record starts,
or a row's 0-based index in any other source.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import os
import re
from collections import deque
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from shardq.errors import ProgrammingError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

__all__ = ["Batch", "CsvFormat", "Shape", "Source", "open_source", "quoted_fields"]

#: Rows read from the source at a time.
BATCH_ROWS = 5000


@dataclass(frozen=True, slots=True)
class CsvFormat:
    """How a CSV source is written: PostgreSQL's ``COPY ... (FORMAT csv)`` options.

    Attributes:
        header: the first line names the columns (used as the load's columns
            unless ``columns=`` is given; then it is skipped).
        delimiter: one character between fields.
        quote: one character around a quoted field.
        escape: the character before a quote inside a quoted field; None is
            the quote itself (a doubled quote, PostgreSQL's default).
        null: an unquoted field equal to it is NULL ("" by default: an
            empty unquoted field; ``""`` quoted is the empty text).
        encoding: of a file given by path or opened in binary mode.
    """

    header: bool = False
    delimiter: str = ","
    quote: str = '"'
    escape: str | None = None
    null: str = ""
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        for name in ("delimiter", "quote") + (("escape",) if self.escape is not None else ()):
            value = getattr(self, name)
            if len(value) != 1 or value in "\r\n":
                raise ProgrammingError(f"the CSV {name} must be one character, not {value!r}")
        if self.delimiter == self.quote:
            raise ProgrammingError("the CSV delimiter and quote must differ")

    def copy_options(self) -> str:
        """The options of PostgreSQL's ``COPY ... FROM STDIN (...)`` reading this format.

        >>> CsvFormat(delimiter=";").copy_options()
        'FORMAT csv, DELIMITER \\';\\', QUOTE \\'"\\', ESCAPE \\'"\\', NULL \\'\\''
        """
        escape = self.quote if self.escape is None else self.escape

        def literal(text: str) -> str:
            return "'" + text.replace("'", "''") + "'"

        return (
            f"FORMAT csv, DELIMITER {literal(self.delimiter)}, QUOTE {literal(self.quote)}, "
            f"ESCAPE {literal(escape)}, NULL {literal(self.null)}"
        )

    def reader(self, lines: Iterable[str]) -> Any:
        """Python's CSV reader for this format (its lenient defaults, as PostgreSQL's)."""
        doubled = self.escape is None or self.escape == self.quote
        return csv.reader(
            lines,
            delimiter=self.delimiter,
            quotechar=self.quote,
            doublequote=doubled,
            escapechar=None if doubled else self.escape,
        )


def quoted_fields(record: str, fmt: CsvFormat) -> list[bool]:
    """Whether each field of one CSV record is quoted (PostgreSQL: then never NULL).

    >>> quoted_fields('1,"",,"a,b"\\n', CsvFormat())
    [False, True, False, True]
    >>> quoted_fields('"a""b",x', CsvFormat())
    [True, False]
    """
    quote, delimiter = fmt.quote, fmt.delimiter
    escape = quote if fmt.escape is None else fmt.escape
    flags = [record[:1] == quote]
    inside = flags[0]
    i, end = (1 if inside else 0), len(record)
    while i < end:
        char = record[i]
        if inside:
            if char == escape and i + 1 < end and record[i + 1] in (quote, escape):
                i += 2  # an escaped quote (a doubled one when escape is the quote)
                continue
            if char == quote:
                inside = False
        elif char == delimiter:
            flags.append(record[i + 1 : i + 2] == quote)
            inside = flags[-1]
            if inside:
                i += 1  # past the opening quote
        i += 1
    return flags


#: What a load needs of a CSV record sent as read: its key field's index, its number of fields.
Shape = tuple[int, int]


@dataclass(slots=True)
class Batch:
    """Rows of the source, read together.

    Attributes:
        positions: each row's position (see the module docstring).
        rows: each row's values (a CSV record's fields, as text); None
            when ``keys`` stands for them (see :meth:`Source.batches`).
        raw: each CSV record as read (with its line end), else None.
        keys: each CSV record's key field, when ``rows`` is None: every
            record has the fields the load's shape asked for, none quoted.
    """

    positions: Sequence[int]
    rows: list[Sequence[Any]] | None
    raw: list[str] | None = None
    keys: list[str] | None = None


class Source:
    """A source opened for reading: its columns (if it names them) and its batches."""

    #: The column names the source gives (a CSV header, a frame's), or None.
    columns: list[str] | None = None
    #: A CSV source: rows are fields as text, and raw records can be sent as they are.
    csv: CsvFormat | None = None

    def where(self, position: int) -> str:
        """The row at ``position``, for an error message."""
        return f"row {position} of the source (counting from 0)"

    def batches(self, shape: Shape | None = None) -> AsyncIterator[Batch]:
        """The rows, a batch at a time (reading closes what the source opened).

        With ``shape``, for a load that sends CSV records as read, a CSV
        source may give a batch as its records and their key fields only
        (``rows`` None, ``keys`` set), each record checked to have the
        shape's number of fields: they need not be split.
        """
        raise NotImplementedError

    def split(self, batch: Batch) -> list[Sequence[Any]]:
        """A batch's rows, when it was given without them."""
        assert batch.rows is not None
        return batch.rows

    def values(self, batch: Batch, index: int) -> Sequence[Any]:
        """Row ``index`` of ``batch`` as the values to insert (a CSV record: NULLs applied)."""
        return self.split(batch)[index]

    def is_null(self, batch: Batch, index: int, column: int) -> bool:
        """Whether the value of ``column`` in row ``index`` is NULL."""
        return self.split(batch)[index][column] is None

    def close(self) -> None:
        """Close what reading opened (a file read by path)."""


class _Rows(Source):
    """An iterable, or async iterable, of rows."""

    def __init__(self, rows: Iterable[Sequence[Any]] | AsyncIterable[Sequence[Any]]):
        self._rows = rows

    async def batches(self, shape: Shape | None = None) -> AsyncIterator[Batch]:
        start = 0
        rows = self._rows
        if isinstance(rows, AsyncIterable):
            batch: list[Sequence[Any]] = []
            async for row in rows:
                batch.append(row)
                if len(batch) >= BATCH_ROWS:
                    yield Batch(range(start, start + len(batch)), batch)
                    start += len(batch)
                    batch = []
            if batch:
                yield Batch(range(start, start + len(batch)), batch)
            return
        iterator = iter(rows)
        while batch := list(itertools.islice(iterator, BATCH_ROWS)):
            yield Batch(range(start, start + len(batch)), batch)
            start += len(batch)


class _Csv(Source):
    """A CSV file, by path or file object."""

    def __init__(self, file: str | os.PathLike[str] | Any, fmt: CsvFormat):
        self.csv = fmt
        self._file = file
        self._name = (
            os.fspath(file)
            if isinstance(file, str | os.PathLike)
            else str(getattr(file, "name", "the CSV input"))
        )
        self._null = fmt.null
        self._header_read = False
        self._opened: TextIO | None = None
        self._reader: Any = None
        self._pending: list[str] = []  # the lines of the quoted record being read
        self._pushed: str | None = None
        self._lines: Iterator[str] = iter(())
        self._ahead: deque[str] = deque()  # lines read in a block, not yet taken as records
        self._line = 0  # lines read so far
        self._eol: str | None = None  # the line end of the first record

    def where(self, position: int) -> str:
        return f"line {position} of {self._name}"

    def _open(self) -> TextIO:
        fmt = self.csv
        assert fmt is not None
        if isinstance(self._file, str | os.PathLike):
            try:
                return open(self._file, encoding=fmt.encoding, newline="")
            except OSError as exc:
                raise ProgrammingError(f"cannot read {self._name}: {exc.strerror}") from exc
        if isinstance(self._file, io.TextIOBase) or not hasattr(self._file, "readinto"):
            return self._file  # type: ignore[no-any-return]
        return io.TextIOWrapper(self._file, encoding=fmt.encoding, newline="")

    def _pull(self) -> str | None:
        """The next line: one a block read ahead, else the file's."""
        return self._ahead.popleft() if self._ahead else next(self._lines, None)

    def _feed(self) -> Iterator[str]:
        """The lines of a quoted record, for Python's reader: the first, then as it asks."""
        pending = self._pending
        while True:
            line = self._pushed
            self._pushed = None
            if line is None:
                line = self._pull()
                if line is None:
                    return
            pending.append(line)
            yield line

    def _next(self) -> tuple[int, list[str], str] | None:
        """The next record: its first line, fields and text as read.

        A line without a quote is one record, its fields split at the
        delimiter (in C, as PostgreSQL reads it); only a line with a quote
        goes through Python's reader, which takes the lines a quoted field
        spans.
        """
        line = self._pull()
        if line is None:
            return None
        first = self._line + 1
        assert self.csv is not None
        if self.csv.quote not in line:
            self._line = first
            return first, line.rstrip("\r\n").split(self.csv.delimiter), line
        self._pushed = line
        fields = next(self._reader, None)
        pending = self._pending
        raw = "".join(pending)
        self._line += len(pending)
        pending.clear()
        return first, fields if fields is not None else [], raw

    def read_header(self) -> None:
        """Open the file and read its header line, if it has one (names the columns)."""
        if self._reader is not None:
            return
        fmt = self.csv
        assert fmt is not None
        self._opened = self._open()
        self._lines = iter(self._opened)
        self._reader = fmt.reader(self._feed())
        if fmt.header:
            record = self._next()
            self.columns = [] if record is None else [f.strip() for f in record[1]]

    def close(self) -> None:
        opened, self._opened = self._opened, None
        by_path = isinstance(self._file, str | os.PathLike)
        if opened is not None and opened is not self._file:
            if isinstance(opened, io.TextIOWrapper) and not by_path:
                opened.detach()  # the caller's binary file stays open
            else:
                opened.close()

    async def batches(self, shape: Shape | None = None) -> AsyncIterator[Batch]:
        self.read_header()
        try:
            while True:
                if shape is not None and not self._ahead:
                    lines = list(itertools.islice(self._lines, BATCH_ROWS))
                    if not lines:
                        return
                    batch = self._block(lines, shape)
                    if batch is not None:
                        yield batch
                        continue
                    self._ahead.extend(lines)  # read again, a record at a time
                batch = self._records()
                if batch is None:
                    return
                yield batch
        finally:
            self.close()

    def _ended(self, text: str) -> str:
        """A record's text as COPY is to receive it: with a line end, never ``\\.``."""
        eol = self._eol
        if eol is None:
            eol = self._eol = "\r\n" if text.endswith("\r\n") else "\n"
        if not text.endswith(("\n", "\r")):
            return text + eol  # the last line, without its end
        if text.rstrip("\r\n") == "\\.":
            # PostgreSQL reads an unquoted \. line as the end of the data: quoted,
            # with the load's own quote character, it is the text \.
            assert self.csv is not None
            quote = self.csv.quote
            return quote + text.rstrip("\r\n") + quote + eol
        return text

    def _records(self) -> Batch | None:
        """The next batch, a record at a time (quoted fields and all)."""
        positions: list[int] = []
        rows: list[Sequence[Any]] = []
        raw: list[str] = []
        for _ in range(BATCH_ROWS):
            record = self._next()
            if record is None:
                break
            first, fields, text = record
            positions.append(first)
            rows.append(fields)
            raw.append(self._ended(text))
        return Batch(positions, rows, raw) if rows else None

    def _block(self, lines: list[str], shape: Shape) -> Batch | None:
        """Lines without a quote, as one batch of their key fields; None if they cannot be.

        Such a line is one record, its fields what lies between delimiters.
        One regular expression, in C, checks that every line has the number
        of fields and takes the key's: the batch's ``rows`` are left out.
        Lines with a quote, a ``\\.``, a line end other than ``\\n`` or
        ``\\r\\n``, or a wrong number of fields are read again a record at a
        time (which names a bad line).
        """
        fmt = self.csv
        assert fmt is not None
        if self._eol is None:
            self._eol = "\r\n" if lines[0].endswith("\r\n") else "\n"
        if not lines[-1].endswith(("\n", "\r")):
            lines[-1] += self._eol  # the last line, without its end
        block = "".join(lines)
        if fmt.quote in block or "\\." in block:
            return None
        keys = _fields_pattern(fmt.delimiter, *shape).findall(block)
        if len(keys) != len(lines):
            return None
        first = self._line + 1
        self._line += len(lines)
        return Batch(range(first, first + len(lines)), None, lines, keys)

    def split(self, batch: Batch) -> list[Sequence[Any]]:
        if batch.rows is None:  # a block of lines without a quote: fields between delimiters
            assert batch.raw is not None
            assert self.csv is not None
            delimiter = self.csv.delimiter
            batch.rows = [line.rstrip("\r\n").split(delimiter) for line in batch.raw]
        return batch.rows

    def _unquoted(self, batch: Batch, index: int) -> list[bool]:
        assert batch.raw is not None
        assert self.csv is not None
        record = batch.raw[index]
        if self.csv.quote not in record:
            return [True] * len(self.split(batch)[index])
        return [not quoted for quoted in quoted_fields(record, self.csv)]

    def values(self, batch: Batch, index: int) -> Sequence[Any]:
        fields = self.split(batch)[index]
        null = self._null
        if null not in fields:
            return fields
        unquoted = self._unquoted(batch, index)
        pairs = zip(fields, unquoted, strict=False)
        return [None if f == null and bare else f for f, bare in pairs]

    def is_null(self, batch: Batch, index: int, column: int) -> bool:
        value = self.split(batch)[index][column]
        return value == self._null and self._unquoted(batch, index)[column]


class _Frame(Source):
    """An Arrow table or record batch, a pandas or a polars DataFrame."""

    def __init__(self, frame: Any, library: str):
        self._frame = frame
        self._library = library
        self.columns = [str(name) for name in frame.columns]
        if library == "pyarrow":
            self.columns = [str(name) for name in frame.schema.names]

    def where(self, position: int) -> str:
        return f"row {position} of the {self._library} frame (counting from 0)"

    def _parts(self) -> Iterator[list[Sequence[Any]]]:
        frame = self._frame
        if self._library == "pyarrow":
            parts = frame.to_batches(BATCH_ROWS) if hasattr(frame, "to_batches") else [frame]
            for part in parts:
                for start in range(0, part.num_rows, BATCH_ROWS):
                    piece = part.slice(start, BATCH_ROWS)
                    yield list(zip(*(column.to_pylist() for column in piece.columns), strict=True))
        elif self._library == "polars":
            for part in frame.iter_slices(BATCH_ROWS):
                yield part.rows()
        else:  # pandas: Python values, and None for every kind of missing value
            for start in range(0, len(frame), BATCH_ROWS):
                part = frame.iloc[start : start + BATCH_ROWS]
                columns = []
                for i in range(part.shape[1]):
                    series = part.iloc[:, i].astype(object)
                    columns.append(series.where(series.notna(), None).tolist())
                yield list(zip(*columns, strict=True)) if columns else [()] * len(part)

    async def batches(self, shape: Shape | None = None) -> AsyncIterator[Batch]:
        start = 0
        for rows in self._parts():
            if rows:
                yield Batch(range(start, start + len(rows)), rows)
                start += len(rows)


@functools.lru_cache(maxsize=8)
def _fields_pattern(delimiter: str, key: int, width: int) -> re.Pattern[str]:
    r"""Lines of ``width`` unquoted fields, ended by ``\n`` or ``\r\n``; group 1 the ``key``-th.

    >>> _fields_pattern(",", 1, 3).findall("1,a,2\n3,b,4\r\n5,c\n")
    ['a', 'b']
    """
    field = f"[^{re.escape(delimiter)}\r\n]*"
    sep = re.escape(delimiter)
    return re.compile(
        "^" + (field + sep) * key + f"({field})" + (sep + field) * (width - key - 1) + "\r?\n",
        re.MULTILINE,
    )


def _frame_library(source: object) -> str | None:
    """The library of a data frame, recognized by its type (no import needed)."""
    library = type(source).__module__.partition(".")[0]
    if library == "pyarrow" and hasattr(source, "schema") and hasattr(source, "slice"):
        return library
    if library in ("pandas", "polars") and hasattr(source, "columns"):
        return library
    return None


def open_source(source: object, fmt: CsvFormat) -> Source:
    """The :class:`Source` reading ``source`` (see the module docstring).

    Raises:
        ProgrammingError: ``source`` is none of the kinds a load reads.
    """
    if isinstance(source, str | os.PathLike) or hasattr(source, "read"):
        return _Csv(source, fmt)
    library = _frame_library(source)
    if library is not None:
        return _Frame(source, library)
    if isinstance(source, bytes | bytearray | memoryview):
        raise ProgrammingError("copy_in() reads rows, a CSV file or a data frame, not bytes")
    if isinstance(source, Iterable | AsyncIterable):
        return _Rows(source)
    raise ProgrammingError(
        f"copy_in() cannot read a {type(source).__name__}: give an iterable of rows, a CSV "
        "file (path or file object), or an Arrow table, pandas or polars DataFrame"
    )
