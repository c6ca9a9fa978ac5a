"""Query results to bytes and back, for the result cache, without pickle.

A cache server is shared by many processes and must never be able to run code in
them, so a cached result is plain data in JSON (the stdlib module, whose C
accelerator does the bulk of the work). Decoding calls only constructors that
validate their input (``Decimal``, ``datetime``, ``ZoneInfo``...), picked by tag
from fixed tables; nothing is imported or evaluated by name from the data.

Format, version 1::

    b"SQC" VERSION FLAGS BODY      FLAGS bit 0: BODY is zlib-compressed
    BODY = JSON [description, rowcount, shards, nrows, columns]

``description`` is null or lists of the 7 :class:`Column` fields. Rows are stored
column-wise, each column in a form chosen from the set of types in it; ``nulls``
lists the rows holding None (the data holds a placeholder there):

``["j", values]``
    str, int, float, bool, None, and lists and str-keyed dicts of them, as JSON.
    Python's json keeps bool, int and float apart (a float is written with a
    ``.`` or an ``e``, or as NaN/Infinity, which only this decoder reads).
``["f", b64, nulls]``
    floats as little-endian float64 ``array`` bytes: json's float repr and
    parsing cost four times more (for ints the two are even).
``["S", tz, b64, nulls]`` / ``["T", tz, b64, nulls]``
    datetimes / times sharing one tzinfo: the 10 / 6-byte state records of their
    ``__reduce_ex__(4)`` (big-endian year:2, month | fold << 7, day, hour, minute,
    second, microsecond:3; a time's start at hour | fold << 7), sliced apart for
    the validating constructor (ISO strings: 3x slower to decode, 6x to encode).
``[tag, joined, nulls]``
    a type with a value tag (below): the values' strings joined by ``,``, which
    none contains; one JSON string is written and read twice as fast as a list.
``["v", values]``
    anything else, each value tagged.

A tagged value is a str, int, float, bool or null as it is, a dict as an object of
tagged values, anything else an array ``[tag, ...]`` (so a string that looks like
a tag is just a string): ``l`` / ``u`` then the tagged items of a list / tuple;
``D`` Decimal, ``b`` bytes (base64), ``d`` date, ``I`` timedelta (microseconds),
``U`` UUID (hex), ``4a 6a 4i 6i 4n 6n`` IPv4/6 address, interface, network, then
one string; ``S`` / ``T`` then a tz and one record. A tz is null, a ZoneInfo key,
or ``[offset in microseconds]`` (and its name, if any) for a ``timezone``.

>>> from decimal import Decimal
>>> decode(encode(None, [(1, Decimal("1.50"), None)], 1, ("s0",)))
(None, [(1, Decimal('1.50'), None)], 1, ('s0',))
"""

from __future__ import annotations

import binascii
import functools
import ipaddress as ip
import json
import struct
import sys
import zlib
from array import array
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any
from uuid import UUID
from zoneinfo import ZoneInfo

from shardq.execute.driver import Column

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CodecError", "decode", "encode", "encode_params"]


class CodecError(ValueError):
    """A value the codec cannot encode, or bytes that are not a valid encoding."""


_VERSION = 1
_HEADER = b"SQC" + bytes([_VERSION])
_PARAMS_HEADER = b"SQP" + bytes([_VERSION])
_ZLIB = 1
#: The most bytes a compressed result may inflate to (untrusted input).
MAX_DECODED = 256 * 1024 * 1024
#: The most rows of a result without columns (they take no bytes to send).
MAX_EMPTY_ROWS = 10_000_000
# Measured on a 100-row result: zlib (level 1) would take it from 6.9 to 3.3 KB but
# add half to its encode time (+120 us) and 15% to decode. Above this, bytes win.
_COMPRESS_ABOVE = 32 * 1024

_NONE = type(None)
_NATIVE = frozenset({str, int, float, bool, _NONE})
_JSONISH = _NATIVE | {list, dict}
_FIELD_TYPES = frozenset({str, int, bool, _NONE})
_US = timedelta(microseconds=1)
_SWAP = sys.byteorder == "big"  # blobs are little-endian on every host

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_unb64 = functools.partial(binascii.a2b_base64, strict_mode=True)
_tzinfo = attrgetter("tzinfo")
_args, _first = itemgetter(1), itemgetter(0)
_RECORD_SIZE = {"S": 10, "T": 6}
_BLANK = {"S": bytes([0, 1, 1, 1]) + bytes(6), "T": bytes(6)}  # 0001-01-01, midnight
_UNFOLD = bytes(i & 127 for i in range(256))

# What data from outside can make the loaders raise: all become CodecError.
# ValueError covers json's, binascii's and UnicodeDecodeError, KeyError ZoneInfo's,
# ArithmeticError decimal's InvalidOperation and OverflowError.
_DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, IndexError)
_DECODE_ERRORS += (AttributeError, ArithmeticError, RecursionError, OSError)
_DECODE_ERRORS += (struct.error, zlib.error, MemoryError)


def _b64(data: bytes | bytearray | array[Any]) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _dump_tz(tz: object) -> str | list[Any] | None:
    if tz is None:
        return None
    if type(tz) is ZoneInfo:
        if tz.key is None:
            raise CodecError("cannot encode a ZoneInfo without a key (made from a file)")
        return tz.key
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        return [offset // _US] + ([] if name == timezone(offset).tzname(None) else [name])
    raise CodecError(f"cannot encode a tzinfo of type {type(tz).__qualname__}")


def _load_tz(data: Any) -> Any:
    if data is None:
        return None
    if type(data) is str:
        return ZoneInfo(data)
    return timezone(timedelta(microseconds=data[0]), *data[1:])


def _state(value: datetime | time) -> bytes:
    # (cls, (state[, tzinfo])); protocol 4 is the one that keeps the fold in the state.
    reduced: Any = value.__reduce_ex__(4)
    state: bytes = reduced[1][0]
    return state


def _records(tag: str, values: Sequence[Any], nulls: bool) -> tuple[str, list[int]]:
    """The state records of datetimes or times, and the rows holding None."""
    if not nulls:
        # Unbound method and map, in C: a comprehension of _state() costs twice as much.
        reduce = (datetime if tag == "S" else time).__reduce_ex__
        return _b64(b"".join(map(_first, map(_args, map(reduce, values, repeat(4)))))), []
    blank = _BLANK[tag]
    blob = b"".join([blank if v is None else _state(v) for v in values])
    return _b64(blob), [i for i, v in enumerate(values) if v is None]


def _load_records(tag: str, tz: Any, blob: bytes, n: int) -> list[Any]:
    """``n`` datetimes or times from their records; every field is checked by the class."""
    size = _RECORD_SIZE[tag]
    if len(blob) != size * n:
        raise CodecError("the records do not match the row count")
    tzinfo = _load_tz(tz)
    micros = bytearray(4 * n)  # the last 3 bytes of a record, as a big-endian uint32
    micros[1::4], micros[2::4], micros[3::4] = (blob[size - k :: size] for k in (3, 2, 1))
    fields: list[Any]
    if tag == "S":
        year = bytearray(2 * n)
        year[0::2], year[1::2] = blob[0::size], blob[1::size]
        folded = blob[2::size]
        fields = [struct.unpack(f">{n}H", year), folded.translate(_UNFOLD)]
        fields += [blob[3::size], blob[4::size], blob[5::size], blob[6::size]]
    else:
        folded = blob[0::size]
        fields = [folded.translate(_UNFOLD), blob[1::size], blob[2::size]]
    kind = datetime if tag == "S" else time
    values: list[Any] = list(map(kind, *fields, struct.unpack(f">{n}I", micros), repeat(tzinfo, n)))
    if n and max(folded) > 127:
        for i, byte in enumerate(folded):
            if byte > 127:
                values[i] = values[i].replace(fold=1)
    return values


# type -> (tag, value -> str without ",", str -> value). Decoding looks only here.
_SCALARS: dict[type, tuple[str, Callable[[Any], str], Callable[[str], Any]]] = {
    Decimal: ("D", Decimal.__str__, Decimal),
    bytes: ("b", _b64, _unb64),
    bytearray: ("b", _b64, _unb64),
    memoryview: ("b", lambda v: _b64(v.tobytes()), _unb64),
    date: ("d", date.isoformat, date.fromisoformat),
    timedelta: ("I", lambda v: str(v // _US), lambda s: timedelta(microseconds=int(s))),
    UUID: ("U", attrgetter("hex"), lambda s: UUID(hex=s)),
    ip.IPv4Address: ("4a", str, ip.IPv4Address),
    ip.IPv6Address: ("6a", str, ip.IPv6Address),
    ip.IPv4Interface: ("4i", str, ip.IPv4Interface),
    ip.IPv6Interface: ("6i", str, ip.IPv6Interface),
    ip.IPv4Network: ("4n", str, ip.IPv4Network),
    ip.IPv6Network: ("6n", str, ip.IPv6Network),
}
_LOADERS = {tag: load for tag, _, load in _SCALARS.values()}


def _plain(value: Any) -> bool:
    """Whether JSON gives ``value`` back as it is (lists, str-keyed dicts, scalars)."""
    kind = type(value)
    if kind in _NATIVE:
        return True
    if kind is list:
        return all(map(_plain, value))
    if kind is dict:
        return all(type(k) is str for k in value) and all(map(_plain, value.values()))
    return False


def _dump(value: Any) -> Any:
    """One value in the tagged form."""
    kind = type(value)
    if kind in _NATIVE:
        return value
    if kind is list or kind is tuple:
        return ["l" if kind is list else "u", *map(_dump, value)]
    if kind is dict:
        if not all(type(k) is str for k in value):
            raise CodecError("cannot encode a dict with keys that are not str")
        return {k: _dump(v) for k, v in value.items()}
    if kind is datetime or kind is time:
        tag = "S" if kind is datetime else "T"
        return [tag, _dump_tz(value.tzinfo), _b64(_state(value))]
    scalar = _SCALARS.get(kind)
    if scalar is None:
        raise CodecError(f"cannot encode a value of type {kind.__module__}.{kind.__qualname__}")
    return [scalar[0], scalar[1](value)]


def _load(data: Any) -> Any:
    """One value from the tagged form."""
    kind = type(data)
    if kind is list:
        tag = data[0]
        if tag == "l":
            return [_load(v) for v in data[1:]]
        if tag == "u":
            return tuple(_load(v) for v in data[1:])
        if tag == "S" or tag == "T":
            return _load_records(tag, data[1], _unb64(data[2]), 1)[0]
        return _LOADERS[tag](data[1])
    if kind is dict:
        return {k: _load(v) for k, v in data.items()}
    return data


def _column(values: tuple[Any, ...]) -> list[Any]:
    """One column's entry, its form chosen from the types of its values."""
    kinds = set(map(type, values))
    nulls = _NONE in kinds
    kinds.discard(_NONE)
    if len(kinds) == 1:
        (kind,) = kinds
        if kind is float:
            packed = array("d", [0.0 if v is None else v for v in values] if nulls else values)
            if _SWAP:
                packed.byteswap()
            blank = [i for i, v in enumerate(values) if v is None] if nulls else []
            return ["f", _b64(packed), blank]
        elif kind is datetime or kind is time:
            present = [v for v in values if v is not None] if nulls else values
            # By equality, as ZoneInfo compares by identity; but timezones are equal
            # whatever their names, so names need the check by identity.
            tzs = set(map(_tzinfo, present))
            tz = present[0].tzinfo
            if len(tzs) == 1 and (
                type(tz) is not timezone or len(set(map(id, map(_tzinfo, present)))) == 1
            ):
                tag = "S" if kind is datetime else "T"
                return [tag, _dump_tz(tz), *_records(tag, values, nulls)]
        elif scalar := _SCALARS.get(kind):
            tag, dump, _ = scalar
            if nulls:
                joined = ",".join(["" if v is None else dump(v) for v in values])
                blank = [i for i, v in enumerate(values) if v is None]
            else:
                joined, blank = ",".join(map(dump, values)), []
            if joined.count(",") == len(values) - 1:  # else an IPv6 scope held a ","
                return [tag, joined, blank]
    if kinds <= _NATIVE or (kinds <= _JSONISH and all(map(_plain, values))):
        return ["j", values]
    return ["v", list(map(_dump, values))]


def _load_column(entry: list[Any], nrows: int) -> list[Any]:
    tag = entry[0]
    values: list[Any]
    if tag == "j":
        values = entry[1]
        if type(values) is not list:
            raise CodecError("a column is not a list")
    elif tag == "v":
        values = list(map(_load, entry[1]))
    else:
        *head, data, nulls = entry[1:]
        if tag == "f":
            packed: array[Any] = array("d", _unb64(data))
            if _SWAP:
                packed.byteswap()
            values = packed.tolist()
        elif tag == "S" or tag == "T":
            values = _load_records(tag, head[0], _unb64(data), nrows)
        else:
            load, values = _LOADERS[tag], data.split(",") if nrows else []
        for i in nulls:
            values[i] = None
        if tag in _LOADERS:
            values = (
                [None if v is None else load(v) for v in values] if nulls else [*map(load, values)]
            )
    if len(values) != nrows:
        raise CodecError("a column's length does not match the row count")
    return values


def _load_description(data: Any) -> tuple[Column, ...] | None:
    if data is None:
        return None
    if (
        not set(map(type, data)) <= {list}
        or not set(map(len, data)) <= {7}
        or not set(map(type, chain.from_iterable(data))) <= _FIELD_TYPES
    ):
        raise CodecError("a description entry is not 7 fields of str, int, bool or None")
    return tuple(map(Column._make, data))


def encode(
    description: tuple[Column, ...] | None,
    rows: list[tuple[Any, ...]],
    rowcount: int,
    shards: tuple[str, ...],
) -> bytes:
    """Encode a whole result; :func:`decode` gives it back equal, with the same types.

    Raises:
        CodecError: a value of a type the codec does not know (the result is
            then not cached), rows that are not tuples of one length, ...
    """
    if type(rows) is not list or not set(map(type, rows)) <= {tuple}:
        raise CodecError("rows must be a list of tuples")
    if type(rowcount) is not int:
        raise CodecError("rowcount must be an int")
    if type(shards) is not tuple or not set(map(type, shards)) <= {str}:
        raise CodecError("shards must be a tuple of str")
    if description is not None and (
        type(description) is not tuple
        or not set(map(type, description)) <= {Column}
        or not set(map(type, chain.from_iterable(description))) <= _FIELD_TYPES
    ):
        raise CodecError("the description must be a tuple of Column of str, int, bool, None")
    columns = list(zip(*rows, strict=False))
    # zip stops at the shortest row: a longer one would lose values silently.
    if sum(map(len, rows)) != len(columns) * len(rows):
        raise CodecError("rows are not all of the same length")
    try:
        # json writes the tuples (description, shards, columns) as arrays.
        body = [description, rowcount, shards, len(rows), [_column(c) for c in columns]]
        # surrogatepass: a lone surrogate in a str comes back, as json.loads reads it.
        data = _dumps(body).encode("utf-8", "surrogatepass")
    except CodecError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        # An int beyond 4300 digits, a reference cycle, a tzinfo that cannot be hashed...
        raise CodecError(f"cannot encode the result: {exc}") from exc
    if len(data) > _COMPRESS_ABOVE:
        packed = zlib.compress(data, 1)
        if len(packed) < len(data):
            return _HEADER + bytes([_ZLIB]) + packed
    return _HEADER + b"\0" + data


def decode(
    data: bytes,
) -> tuple[tuple[Column, ...] | None, list[tuple[Any, ...]], int, tuple[str, ...]]:
    """Decode what :func:`encode` made: ``(description, rows, rowcount, shards)``.

    Raises:
        CodecError: ``data`` is not a valid encoding (truncated, corrupt, crafted,
            or from another version of the codec).
    """
    if data[:4] != _HEADER or len(data) < 5:
        if data[:3] == _HEADER[:3] and len(data) > 3:
            raise CodecError(f"unsupported codec version {data[3]}")
        raise CodecError("not a cached result")
    try:
        flags, body = data[4], data[5:]
        if flags & ~_ZLIB:
            raise CodecError(f"unknown flags {flags:#x}")
        if flags & _ZLIB:
            inflate = zlib.decompressobj()
            body = inflate.decompress(body, MAX_DECODED)
            if inflate.unconsumed_tail:
                raise CodecError(f"the result inflates beyond {MAX_DECODED} bytes")
        description, rowcount, shards, nrows, entries = json.loads(body)
        if type(rowcount) is not int or type(nrows) is not int or nrows < 0:
            raise CodecError("the row counts are not ints")
        if not entries and nrows > MAX_EMPTY_ROWS:
            # Rows without columns cost no bytes here: bound what they allocate.
            raise CodecError(f"{nrows} rows without columns")
        if type(shards) is not list or not set(map(type, shards)) <= {str}:
            raise CodecError("the shard names are not a list of str")
        if type(entries) is not list:
            raise CodecError("the columns are not a list")
        columns = [_load_column(e, nrows) for e in entries]
        rows = list(zip(*columns, strict=True)) if columns else [()] * nrows
        return _load_description(description), rows, rowcount, tuple(shards)
    except CodecError:
        raise
    except _DECODE_ERRORS as exc:
        raise CodecError(f"not a valid cached result: {type(exc).__name__}: {exc}") from exc


def encode_params(params: object) -> bytes:
    """Canonical bytes of a statement's parameters, for a cache key.

    Equal parameters give equal bytes, values a database tells apart (types
    included) different ones. The order of named parameters does not matter, that
    of a JSON value's keys does (``json`` keeps it). Tuple and list are alike only
    at the top (nested, a list is an array).

    >>> encode_params({"b": 1, "a": [2.5, None]}) == encode_params({"a": [2.5, None], "b": 1})
    True
    >>> len({encode_params([v]) for v in (1, True, 1.0, Decimal("1"), "1")})
    5

    Raises:
        CodecError: a value the codec cannot encode, or params that are not None,
            a tuple, a list or a dict with str keys.
    """
    body: Any
    try:
        if params is None:
            body = None
        elif isinstance(params, tuple | list):
            body = [_dump(v) for v in params]
        elif isinstance(params, dict):
            if not all(type(k) is str for k in params):
                raise CodecError("cannot encode parameters with names that are not str")
            body = {k: _dump(params[k]) for k in sorted(params)}
        else:
            raise CodecError(f"cannot encode parameters of type {type(params).__qualname__}")
        return _PARAMS_HEADER + _dumps(body).encode("utf-8", "surrogatepass")
    except CodecError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CodecError(f"cannot encode the parameters: {exc}") from exc
