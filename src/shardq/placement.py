"""Placement: which shard holds the rows with a given shard-key value.

The rule is fixed and documented so that rows placed by any process, on any
machine, under any Python version, are found again:

1. The key value is put in a *canonical form* that depends on the value the
   database would compare, not on how it was spelled or bound:

   ========================================  =========================
   value                                     canonical bytes
   ========================================  =========================
   ``int``, integral ``Decimal``/``float``,  ``b"i:" + decimal digits``
   a string such as ``"42"`` or ``" -7 "``
   other ``Decimal``/``float``, ``"1.5"``    ``b"n:" + normalized decimal``
   ``uuid.UUID``, a string PostgreSQL        ``b"u:" + 16 raw bytes``
   accepts as a uuid (any case, braces,
   with or without hyphens)
   ``datetime.date``, ``"YYYY-MM-DD"``,      ``b"d:" + ISO date``
   a timestamp at midnight
   ``datetime.datetime``, an ISO             ``b"t:" + ISO timestamp`` (aware: in UTC)
   timestamp string (``T`` or space)
   ``bytes``                                 ``b"b:" + the bytes``
   any other string                          ``b"s:" + UTF-8``
   ========================================  =========================

   So ``WHERE id = 42``, ``WHERE id = '42'`` and a bound ``42`` agree, and so do
   ``'A0EEBC99-...'::uuid`` and ``uuid.UUID("a0eebc99-...")``. Two different
   keys may share a canonical form (the texts ``"7"`` and ``"007"``); that only
   puts them on the same shard, which is always correct. Limits: a text key
   compared under a case-insensitive collation (SQLite ``COLLATE NOCASE``)
   is hashed as written, and a ``timestamptz`` written without an offset is
   read as UTC, not in the session's time zone: bind aware datetimes.
2. The hash is the first 4 bytes of BLAKE2b (``digest_size=4``) of the canonical
   bytes, read as an unsigned big-endian 32-bit integer.
3. The 32-bit hash space is cut into one contiguous range per shard, in the
   order the shards are configured: shard ``i`` of ``n`` owns
   ``[i * 2**32 // n, (i + 1) * 2**32 // n)``. A later re-shard can split a
   range in two without moving the rows of any other range (as Citus does).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "HASH_SPACE",
    "KEY_TYPES",
    "HashRange",
    "Placement",
    "canonical_key",
    "key_hash",
    "text_pins",
]

HASH_SPACE = 2**32

_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?"
)
_UUID_CHARS = re.compile(r"\{?[0-9a-fA-F-]{32,36}\}?")


_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")


def is_iso_date(text: str) -> bool:
    """Whether ``text`` is a date in the one spelling placement parses (``YYYY-MM-DD``)."""
    return bool(_ISO_DATE.fullmatch(text))


def is_canonical_uuid(text: str) -> bool:
    """Whether ``text`` is a uuid in a spelling placement parses (8-4-4-4-12 or 32 digits)."""
    return bool(_CANONICAL_UUID.fullmatch(text.strip("{}")))


def has_utc_offset(text: str) -> bool:
    """Whether ``text`` is an ISO timestamp with an offset or ``Z``.

    Its value as a key depends on the column: ``timestamptz`` keeps the instant,
    ``timestamp`` drops the offset. Routing does not pin on such text.
    """
    match = _ISO_TIMESTAMP.fullmatch(text)
    return bool(match and match.group(3))


KEY_TYPES = ("integer", "numeric", "text", "uuid", "date", "timestamp", "timestamptz")


def text_pins(text: str, key_type: str | None) -> bool:
    """Whether text compared to a key of ``key_type`` hashes as the database reads it.

    The database converts text to the key column's type, and for most types it
    accepts spellings placement does not parse (``'20240131'`` and ``'today'``
    are dates). With the type declared, only spellings read alike both ways
    pin a shard; without it (``None``), text is taken as written.

    >>> text_pins("2024-01-31", "date"), text_pins("20240131", "date")
    (True, False)
    >>> text_pins("2024-01-31 10:00", "timestamptz"), text_pins("42", "integer")
    (False, True)
    """
    if key_type is None or key_type == "text":
        return True
    if key_type == "integer":
        return bool(_INTEGER.fullmatch(text))
    if key_type == "numeric":
        return bool(_DECIMAL.fullmatch(text))
    if key_type == "uuid":
        return is_canonical_uuid(text)
    if key_type == "date":
        return is_iso_date(text)
    if key_type == "timestamp":
        return is_iso_date(text) or (
            bool(_ISO_TIMESTAMP.fullmatch(text)) and not has_utc_offset(text)
        )
    if key_type == "timestamptz":
        return has_utc_offset(text)  # without an offset it is read in the session's zone
    return False


def _canonical_decimal(value: Decimal) -> bytes:
    if value == value.to_integral_value():
        return b"i:%d" % int(value)
    return b"n:" + str(value.normalize()).encode()


def _canonical_datetime(value: dt.datetime) -> bytes:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    if value.time() == dt.time(0):
        # A date equals the timestamp at its midnight, so both hash alike.
        return b"d:" + value.date().isoformat().encode()
    return b"t:" + value.isoformat().encode()


def _canonical_str(value: str) -> bytes:
    if value.isdigit() and value.isascii():
        # What _INTEGER matches, without the regex: a CSV file's keys come through here.
        return b"i:%d" % int(value)
    if _INTEGER.fullmatch(value):
        return b"i:%d" % int(value)
    if _DECIMAL.fullmatch(value):
        try:
            return _canonical_decimal(Decimal(value.strip()))
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            pass
    if _ISO_DATE.fullmatch(value):
        try:
            return b"d:" + dt.date.fromisoformat(value).isoformat().encode()
        except ValueError:
            pass
    if _ISO_TIMESTAMP.fullmatch(value):
        try:
            return _canonical_datetime(dt.datetime.fromisoformat(value))
        except ValueError:
            pass
    if _UUID_CHARS.fullmatch(value):
        hexdigits = value.strip("{}").replace("-", "")
        if len(hexdigits) == 32:
            return b"u:" + uuid.UUID(hex=hexdigits).bytes
    return b"s:" + value.encode()


def canonical_key(value: object) -> bytes:
    """Return the canonical bytes of a shard-key value (see the module docstring).

    >>> canonical_key(42) == canonical_key("42") == canonical_key(Decimal("42.0"))
    True
    >>> canonical_key(uuid.UUID(int=1)) == canonical_key("{00000000000000000000000000000001}")
    True
    >>> canonical_key(dt.date(2024, 1, 31)) == canonical_key("2024-01-31")
    True
    >>> canonical_key(None)
    Traceback (most recent call last):
    ...
    ValueError: a shard key cannot be NULL
    """
    if value is None:
        raise ValueError("a shard key cannot be NULL")
    if isinstance(value, bool):
        raise ValueError("a boolean cannot be a shard key")
    if isinstance(value, int):
        return b"i:%d" % value
    if isinstance(value, str):
        return _canonical_str(value)
    if isinstance(value, Decimal | float):
        decimal = Decimal(value) if isinstance(value, Decimal) else Decimal(repr(value))
        if not decimal.is_finite():
            raise ValueError(f"{value!r} cannot be a shard key")
        return _canonical_decimal(decimal)
    if isinstance(value, uuid.UUID):
        return b"u:" + value.bytes
    if isinstance(value, dt.datetime):
        return _canonical_datetime(value)
    if isinstance(value, dt.date):
        return b"d:" + value.isoformat().encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return b"b:" + bytes(value)
    raise ValueError(f"a value of type {type(value).__name__} cannot be a shard key")


def key_hash(value: object) -> int:
    """Return the 32-bit placement hash of a shard-key value.

    These values are pinned: changing them would strand every placed row.

    >>> key_hash(1), key_hash("alice"), key_hash(uuid.UUID(int=0))
    (2146342996, 3992532756, 1064001105)
    """
    # An int, the commonest key, skips canonical_key's dispatch (same bytes): a bulk
    # load places every row through here.
    canonical = b"i:%d" % value if type(value) is int else canonical_key(value)
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=4).digest(), "big")


@dataclass(frozen=True, slots=True)
class HashRange:
    """The hash values ``lo <= h < hi`` are stored on ``shard``."""

    lo: int
    hi: int
    shard: str


@dataclass(frozen=True, slots=True)
class Placement:
    """The hash ranges of a set of shards.

    >>> p = Placement.uniform(["a", "b", "c", "d"])
    >>> [(r.lo, r.shard) for r in p.ranges]
    [(0, 'a'), (1073741824, 'b'), (2147483648, 'c'), (3221225472, 'd')]
    >>> p.shard_for(1)
    'b'
    """

    ranges: tuple[HashRange, ...]
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _owners: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _start_digests: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(r.lo for r in self.ranges))
        object.__setattr__(
            self, "_start_digests", tuple(r.lo.to_bytes(4, "big") for r in self.ranges)
        )
        object.__setattr__(self, "_owners", tuple(r.shard for r in self.ranges))

    @classmethod
    def uniform(cls, shards: list[str] | tuple[str, ...]) -> Placement:
        """Cut the hash space into ``len(shards)`` equal contiguous ranges."""
        n = len(shards)
        bounds = [i * HASH_SPACE // n for i in range(n + 1)]
        return cls(tuple(HashRange(bounds[i], bounds[i + 1], s) for i, s in enumerate(shards)))

    def shard_for_hash(self, h: int) -> str:
        """Return the shard whose range holds the hash ``h``."""
        return self.ranges[bisect.bisect_right(self._starts, h) - 1].shard

    def shard_for(self, value: object) -> str:
        """Return the shard that holds rows whose shard key equals ``value``."""
        return self.shard_for_hash(key_hash(value))

    def shards_for(self, values: Iterable[object]) -> list[str]:
        """Return :meth:`shard_for` of each value, in order.

        The same rule without a call per value: a bulk load places every
        row of its source through here, and the per-value calls were a
        third of its time. Also measured faster, with the same results: an
        int, and a text of ASCII digits (a CSV file's integer key), skip
        :func:`canonical_key`'s dispatch (same bytes); each hash is a copy
        of one empty BLAKE2b state (its constructor's keyword parsing cost
        as much as the hash); and the 4-byte digest is looked up among the
        ranges' starts as 4-byte big-endian bytes, which sort as the numbers.

        >>> p = Placement.uniform(["a", "b", "c", "d"])
        >>> p.shards_for([1, "1", 2]) == [p.shard_for(1), p.shard_for("1"), p.shard_for(2)]
        True

        Raises:
            ValueError: a value cannot be placed (as :func:`canonical_key`).
        """
        starts, owners, bisect_right = self._start_digests, self._owners, bisect.bisect_right
        fresh = hashlib.blake2b(digest_size=4).copy
        found: list[str] = []
        append = found.append
        for value in values:
            if type(value) is int:
                canonical = b"i:%d" % value
            elif type(value) is str and value.isdigit() and value.isascii():
                canonical = b"i:%d" % int(value)
            else:
                canonical = canonical_key(value)
            state = fresh()
            state.update(canonical)
            append(owners[bisect_right(starts, state.digest()) - 1])
        return found
