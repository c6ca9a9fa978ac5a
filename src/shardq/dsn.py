"""Connection strings: validation and redaction.

shardq never prints a DSN as given: every message, log line and repr goes
through :func:`redact`, and :class:`Secrets` scrubs the passwords out of
messages that come back from a driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["Secrets", "address", "check_postgres_dsn", "redact", "server_of"]

_URL_SCHEMES = ("postgresql", "postgres")
# A conninfo "key=value" pair; values may be single-quoted with backslash escapes.
_KV = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")
_SECRET_KEYS = frozenset({"password", "sslpassword"})


def _split_conninfo(dsn: str) -> list[tuple[str, str, tuple[int, int]]]:
    """Split a ``key=value`` conninfo into (key, raw value, value span)."""
    pairs = []
    pos = 0
    while pos < len(dsn):
        if dsn[pos:].strip() == "":
            break
        match = _KV.match(dsn, pos)
        if not match:
            raise ValueError(f"expected key=value at character {pos + 1}")
        pairs.append((match.group(1), match.group(2), match.span(2)))
        pos = match.end()
    return pairs


def check_postgres_dsn(dsn: str) -> None:
    """Raise ValueError (without the secret) unless ``dsn`` looks like a libpq DSN.

    >>> check_postgres_dsn("postgresql://u:pw@localhost:5432/db")
    >>> check_postgres_dsn("host=localhost dbname=db password='a b'")
    >>> check_postgres_dsn("mysql://x")
    Traceback (most recent call last):
    ...
    ValueError: URL scheme must be postgresql:// or postgres://, not 'mysql://'
    """
    if "://" in dsn:
        scheme = dsn.split("://", 1)[0]
        if scheme not in _URL_SCHEMES:
            raise ValueError(
                f"URL scheme must be postgresql:// or postgres://, not {scheme + '://'!r}"
            )
        try:
            port = urlsplit(dsn).port
        except ValueError:
            raise ValueError("the port in the URL is not a number") from None
        if port is not None and not 0 < port < 65536:
            raise ValueError("the port in the URL is out of range")
        return
    if not dsn.strip():
        raise ValueError("the DSN is empty")
    _split_conninfo(dsn)


def _secrets_in(dsn: str) -> list[str]:
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return []
        found = []
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        for item in parts.query.split("&"):
            key, _, value = item.partition("=")
            if key in _SECRET_KEYS and value:
                found += [value, unquote(value)]
        return found
    try:
        pairs = _split_conninfo(dsn)
    except ValueError:
        return []
    found = []
    for key, raw, _span in pairs:
        if key in _SECRET_KEYS and raw:
            found.append(raw)
            if raw.startswith("'"):
                found.append(re.sub(r"\\(.)", r"\1", raw[1:-1]))
    return found


def redact(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``.

    >>> redact("postgresql://app:s3cret@db:5432/orders")
    'postgresql://app:***@db:5432/orders'
    >>> redact("host=db password='a b' user=app")
    'host=db password=*** user=app'
    >>> redact("/var/lib/shards/s1.db")
    '/var/lib/shards/s1.db'
    """
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return "<unparsable DSN>"
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostinfo}"
        query = "&".join(
            f"{key}=***" if key in _SECRET_KEYS else item
            for item in parts.query.split("&")
            if item
            for key in [item.partition("=")[0]]
        )
        return parts._replace(netloc=netloc, query=query).geturl()
    try:
        pairs = _split_conninfo(dsn)
    except ValueError:
        return "<unparsable DSN>" if "password" in dsn else dsn
    out, last = [], 0
    for key, _raw, (start, end) in pairs:
        if key in _SECRET_KEYS:
            out += [dsn[last:start], "***"]
            last = end
    out.append(dsn[last:])
    return "".join(out)


def address(dsn: str) -> str:
    """Where ``dsn`` connects, as ``host:port``, with no user, password or options.

    What an operator needs to tell hosts apart, safe to print anywhere.
    A DSN that names no server (a SQLite file) is returned redacted.

    >>> address("postgresql://app:s3cret@db1:5433/orders?sslmode=require")
    'db1:5433'
    >>> address("postgresql://app:s3cret@db1,[::1]:5433/orders")
    'db1:5432,[::1]:5433'
    >>> address("host=db1 port=6432 password=s3cret dbname=orders")
    'db1:6432'
    >>> address("dbname=orders")
    'localhost:5432'
    >>> address("/var/lib/shards/s1.db")
    '/var/lib/shards/s1.db'
    """
    if "://" in dsn:
        if dsn.split("://", 1)[0] not in _URL_SCHEMES:
            return redact(dsn)
        hostinfo = urlsplit(dsn).netloc.rpartition("@")[2] or "localhost"
        return ",".join(_with_port(h) for h in hostinfo.split(","))
    try:
        pairs = {key: raw.strip("'") for key, raw, _span in _split_conninfo(dsn)}
    except ValueError:
        pairs = {}
    if not pairs.keys() & {"host", "hostaddr", "port", "dbname", "user", "service"}:
        return redact(dsn)  # a file name, not a conninfo
    hosts = (pairs.get("host") or pairs.get("hostaddr") or "localhost").split(",")
    ports = (pairs.get("port") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    return ",".join(_with_port(h, p) for h, p in zip(hosts, ports, strict=False))


def _with_port(host: str, port: str = "") -> str:
    """``host:port``, with libpq's default port when none is written (``[::1]`` has none)."""
    if port:
        return f"{host}:{port}"
    written = host.rpartition(":")[2].isdigit() and not host.endswith("]")
    return host if written else f"{host}:5432"


def server_of(dsn: str) -> tuple[str, int] | None:
    """The one server (host, port) a PostgreSQL DSN names, without its credentials.

    For traces (:mod:`shardq.tracing`): :func:`address` taken apart; None
    when the DSN names several hosts (libpq picks one) or is not one.

    >>> server_of("postgresql://app:s3cret@db.internal:6432/orders")
    ('db.internal', 6432)
    >>> server_of("host=10.0.0.5 password='a b' dbname=orders")
    ('10.0.0.5', 5432)
    >>> server_of("host=a,b port=5432,5433") is None
    True
    >>> server_of("postgresql://[::1]:5433/orders")
    ('::1', 5433)
    """
    where = address(dsn)
    host, _, port = where.rpartition(":")
    if "," in where or not host or not port.isdigit():
        return None
    return unquote(host.removeprefix("[").removesuffix("]")), int(port)


@dataclass(frozen=True, slots=True)
class Secrets:
    """The secrets of a set of DSNs, to scrub from any text shown to a person."""

    values: tuple[str, ...] = ()

    @classmethod
    def of(cls, *dsns: str) -> Secrets:
        found = {secret for dsn in dsns for secret in _secrets_in(dsn) if secret}
        # Longest first, so a secret containing another is replaced whole.
        return cls(tuple(sorted(found, key=len, reverse=True)))

    def scrub(self, text: str) -> str:
        """Replace every known secret in ``text`` with ``***``.

        >>> Secrets.of("postgresql://u:hunter2@h/db").scrub("auth failed: hunter2")
        'auth failed: ***'
        """
        for secret in self.values:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"Secrets(<{len(self.values)} hidden>)"
