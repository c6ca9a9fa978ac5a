"""Cache keys: what makes two lookups the same.

A key is a hash of

- the connecting **identity**: the dialect and each shard's name and DSN
  without its password (user, host, port, database), so that users with
  different privileges, or different databases, never read each other's rows;
- the statement's **canonical form**: sqlglot's SQL for the parsed statement,
  without comments, so whitespace, keyword case and comments do not matter;
- the **parameters**, encoded by :func:`shardq.cache.codec.encode_params`
  (1, True, 1.0 and '1' are different keys);

or, for a key the caller supplies, the identity and that key.

>>> from shardq.config import load_config
>>> def of(dsn):
...     return load_config({"dialect": "postgres", "shards": [{"name": "s1", "dsn": dsn}]})
>>> config, same = of("postgresql://app:pw@db/x"), of("postgresql://app:other@db/x")
>>> other = of("postgresql://admin:pw@db/x")
>>> identity(config) == identity(same), identity(config) == identity(other)
(True, False)
>>> p = statement_prefix(identity(config), "SELECT * FROM t WHERE id = %s")
>>> key(p, [1]) == key(p, (1,)), key(p, [1]) == key(p, [True])
(True, False)
"""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
from typing import TYPE_CHECKING

from shardq.cache import codec
from shardq.dsn import redact

if TYPE_CHECKING:
    from shardq.config import Config

__all__ = ["identity", "key", "statement_prefix", "user_prefix"]

_VERSION = b"shardq-cache-1\0"


# What libpq takes from the environment when a DSN leaves it out: the user
# (and so the privileges) may come from there.
_LIBPQ_ENV = ("PGUSER", "PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS")


def identity(config: Config) -> bytes:
    """Who asks, and of which databases: the same for the same user on the same shards.

    Shards given as ready connections (the PEP 249 adapter) carry no DSN to
    tell who they are: their identity is unique to the configuration object,
    so their results are shared by no other connection.
    """
    h = hashlib.blake2b(_VERSION, digest_size=16)
    h.update(config.dialect.encode() + b"\0")
    if config.driver == "pep249":
        h.update(b"adapter\0" + secrets.token_bytes(16))
    for shard in config.shards:
        h.update(f"{shard.name}\0{redact(shard.dsn)}\0".encode())
    if config.dialect == "postgres":
        # libpq's defaults: the operating-system user, then its environment.
        h.update(f"{getpass.getuser()}\0".encode())
        for name in _LIBPQ_ENV:
            h.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return h.digest()


def statement_prefix(who: bytes, canonical_sql: str) -> bytes:
    """The part of a key that depends on the statement's text alone (computed once per text)."""
    return hashlib.blake2b(who + b"sql\0" + canonical_sql.encode(), digest_size=16).digest()


def user_prefix(who: bytes, user_key: str) -> bytes:
    """The key the caller chose, for this identity."""
    return hashlib.blake2b(who + b"key\0" + user_key.encode(), digest_size=16).digest()


def key(prefix: bytes, params: object) -> str:
    """The key of a statement (its prefix) with ``params`` bound."""
    if params is None:
        return prefix.hex()
    return hashlib.blake2b(prefix + codec.encode_params(params), digest_size=16).hexdigest()
