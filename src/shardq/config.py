"""Configuration: the shards, the tables and how each table is placed.

A configuration is a TOML file or the same structure as a dict::

    dialect = "postgres"            # or "sqlite"

    [[shards]]
    name = "s1"
    dsn = "postgresql://app:${S1_PASSWORD}@db1:5432/orders"
    pool_max_size = 10              # optional; pool_min_size too (default 0: lazy)
    replicas = ["postgresql://app:${S1_PASSWORD}@db1-replica/orders"]  # optional

    [tables.orders]
    shard_key = "customer_id"       # distributed by the hash of this column

    [tables.order_items]
    shard_key = "customer_id"
    colocate_with = "orders"        # joins with orders on the key stay on one shard

    [tables.events]
    shard_key = "day"
    key_type = "date"               # optional: how text compared to the key is read

    [tables.countries]
    reference = true                # a full copy on every shard

For SQLite the ``dsn`` is a file path, relative to the configuration file (or
to the working directory for a dict). ``${NAME}`` in a DSN is replaced by the
environment variable ``NAME``, so passwords stay out of files.

Every mistake raises :class:`~shardq.errors.ConfigError` naming the file, the
field and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from shardq.dsn import Secrets, check_postgres_dsn, redact
from shardq.errors import ConfigError, UndeclaredTableError
from shardq.placement import KEY_TYPES, Placement

__all__ = [
    "DEFAULT_COMMIT_TIMEOUT",
    "DIALECTS",
    "Config",
    "Dialect",
    "ShardConfig",
    "TableConfig",
    "load_config",
]

Dialect = Literal["postgres", "sqlite"]
DIALECTS: tuple[Dialect, ...] = ("postgres", "sqlite")
DEFAULT_DRIVERS: dict[str, str] = {"postgres": "psycopg", "sqlite": "sqlite"}

#: Seconds a commit may wait on the shards, when no statement's ``timeout=`` bounds it.
DEFAULT_COMMIT_TIMEOUT = 5.0
#: Rows a gathered read may move to its shard (see shardq.sql.gather) when not told otherwise.
DEFAULT_MAX_GATHER_ROWS = 1_000_000
DEFAULT_MAX_DECORRELATED_ROWS = 100_000
_DEFAULT_SCHEMA = {"postgres": "public", "sqlite": "main"}
_TOP_KEYS = frozenset(
    {
        "dialect",
        "driver",
        "shards",
        "tables",
        "cache",
        "recover_on_connect",
        "read_policy",
        "max_replica_lag",
        "read_your_writes",
        "commit_timeout",
        "max_gather_rows",
        "max_decorrelated_rows",
    }
)
#: Where reads outside a transaction go (see shardq.execute.hosts).
READ_POLICIES = ("primary", "prefer-replica", "replica-only", "round-robin", "least-latency")
_CACHE_KEYS = frozenset({"url", "ttl", "grace", "prefix", "lock_timeout", "max_bytes", "regions"})
_SHARD_KEYS = frozenset({"name", "dsn", "replicas", "pool_min_size", "pool_max_size"})
_TABLE_KEYS = frozenset({"shard_key", "key_type", "reference", "colocate_with"})
_ENV = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]*")


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """One shard. The repr never shows the DSN's password."""

    name: str
    dsn: str = field(repr=False)
    replicas: tuple[str, ...] = field(default=(), repr=False)
    pool_min_size: int = 0
    pool_max_size: int = 4

    def __repr__(self) -> str:
        return (
            f"ShardConfig(name={self.name!r}, dsn={redact(self.dsn)!r}, "
            f"replicas={len(self.replicas)}, pool_min_size={self.pool_min_size}, "
            f"pool_max_size={self.pool_max_size})"
        )


@dataclass(frozen=True, slots=True)
class TableConfig:
    """How one table is placed: distributed by ``shard_key`` or a reference copy."""

    name: str
    shard_key: str | None = None
    reference: bool = False
    colocate_with: str | None = None
    key_type: str | None = None

    @property
    def distributed(self) -> bool:
        return self.shard_key is not None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The result cache (``[cache]``): where it lives and how long results stay.

    ``regions`` are named regions (``[cache.regions.NAME]``), each with the
    same keys, unset ones taken from ``[cache]``.
    """

    url: str = "memory://"  #: ``memory://``, ``redis://...`` or ``rediss://...``
    ttl: float = 60.0  #: seconds a result is fresh
    grace: float = 0.0  #: seconds a stale result is still served while one caller refreshes it
    prefix: str = "shardq:"  #: of every Redis key
    lock_timeout: float = 10.0  #: seconds before others take over from a computer that died
    max_bytes: int = 64 * 1024 * 1024  #: the memory backend's bound
    regions: Mapping[str, CacheConfig] = field(default_factory=dict)

    def __repr__(self) -> str:  # the URL may hold a password
        return f"CacheConfig(url={redact(self.url)!r}, ttl={self.ttl}, grace={self.grace})"


@dataclass(frozen=True, slots=True)
class Config:
    """A validated configuration. Build it with :func:`load_config`."""

    dialect: Dialect
    shards: tuple[ShardConfig, ...]
    tables: Mapping[str, TableConfig]
    driver: str
    source: str | None = None
    cache: CacheConfig | None = None
    #: Finish the two-phase commits left in doubt when a connection opens.
    recover_on_connect: bool = False
    #: Where reads outside a transaction go: one of READ_POLICIES.
    read_policy: str = "primary"
    #: Seconds a replica may lag behind its primary and still serve reads (None: any).
    max_replica_lag: float | None = None
    #: Reads of a shard a connection wrote go to its primary (see AsyncConnection).
    read_your_writes: bool = False
    #: Seconds a commit may wait on the shards (see shardq.execute.transaction).
    commit_timeout: float = DEFAULT_COMMIT_TIMEOUT
    #: The most rows a gathered read may move (estimated before it starts; see shardq.sql.gather).
    max_gather_rows: int = DEFAULT_MAX_GATHER_ROWS
    #: The most groups a decorrelated subquery may ship back (0: never decorrelate; see
    #: shardq.sql.decorrelate); over it, the read is gathered instead.
    max_decorrelated_rows: int = DEFAULT_MAX_DECORRELATED_ROWS
    placement: Placement = field(init=False, repr=False, compare=False)
    secrets: Secrets = field(init=False, repr=False, compare=False)
    #: The shards' names, in order.
    shard_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", Placement.uniform([s.name for s in self.shards]))
        dsns = [s.dsn for s in self.shards] + [r for s in self.shards for r in s.replicas]
        if self.cache is not None:
            dsns += [self.cache.url, *(r.url for r in self.cache.regions.values())]
        object.__setattr__(self, "secrets", Secrets.of(*dsns))
        object.__setattr__(self, "shard_names", tuple(s.name for s in self.shards))

    def shard(self, name: str) -> ShardConfig:
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(name)

    def table(self, name: str, *, resolved: bool = False) -> TableConfig:
        """Return the declared table ``name`` (``schema.table`` or ``table``).

        Declared names are unquoted identifiers, so ``name`` is compared
        case-insensitively, unless ``resolved`` says it is already as the
        database resolves it (a quoted ``"Orders"`` is then not ``orders``).
        ``public.orders`` (``main.`` for SQLite) finds a table declared as
        ``orders``; another schema does not.

        Raises:
            UndeclaredTableError: the configuration does not declare it.
        """
        key = name if resolved and self.dialect == "postgres" else name.lower()
        found = self.tables.get(key)
        if found is None and "." in key:
            # A table declared without a schema lives in the default one.
            schema, _, bare = key.rpartition(".")
            if schema == _DEFAULT_SCHEMA[self.dialect]:
                found = self.tables.get(bare)
        if found is None:
            raise UndeclaredTableError(name)
        return found

    def shard_for(self, table: str, key_value: object) -> str:
        """Return the name of the shard that holds ``table``'s rows whose key is ``key_value``.

        Raises:
            UndeclaredTableError: ``table`` is not declared.
            ValueError: ``table`` is a reference table (on every shard), or the
                value cannot be a shard key (NULL, a boolean).
        """
        declared = self.table(table)
        if not declared.distributed:
            raise ValueError(f"table {table!r} is a reference table: every shard holds its rows")
        return self.placement.shard_for(key_value)


def _interpolate(value: str, *, file: str | None, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if not _NAME.fullmatch(name):
            raise ConfigError(f"${{{name}}} is not a valid variable name", file=file, field=where)
        if name not in os.environ:
            raise ConfigError(
                f"environment variable {name} is not set (referenced as ${{{name}}})",
                file=file,
                field=where,
            )
        return os.environ[name]

    return _ENV.sub(replace, value)


class _Reader:
    """Validates the raw structure; every error names the file and the field."""

    def __init__(self, file: str | None, base: Path):
        self.file = file
        self.base = base

    def error(self, message: str, where: str) -> ConfigError:
        return ConfigError(message, file=self.file, field=where)

    def check_keys(self, raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
        for key in raw:
            if key not in allowed:
                expected = ", ".join(sorted(allowed))
                path = f"{where}.{key}" if where else key
                raise self.error(f"unknown key {key!r} (expected one of: {expected})", path)

    def mapping(self, raw: object, where: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.error(f"expected a table of keys, got {type(raw).__name__}", where)
        return cast("Mapping[str, Any]", raw)

    def string(self, raw: object, where: str) -> str:
        if not isinstance(raw, str) or not raw:
            raise self.error(f"expected a non-empty string, got {raw!r}", where)
        return raw

    def size(self, raw: object, where: str, minimum: int) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < minimum:
            raise self.error(f"expected an integer >= {minimum}, got {raw!r}", where)
        return raw

    def dsn(self, raw: object, dialect: Dialect, where: str) -> str:
        text = _interpolate(self.string(raw, where), file=self.file, where=where)
        if dialect == "postgres":
            try:
                check_postgres_dsn(text)
            except ValueError as exc:
                raise self.error(
                    f"malformed PostgreSQL DSN {redact(text)!r}: {exc}; expected "
                    "'postgresql://user:password@host:port/dbname' or 'host=... dbname=...'",
                    where,
                ) from None
            return text
        if "://" in text and not text.startswith("file:"):
            raise self.error(f"malformed SQLite DSN {redact(text)!r}: expected a file path", where)
        path = Path(text).expanduser()
        return str(path if path.is_absolute() else self.base / path)

    def shard(self, raw: object, index: int, dialect: Dialect) -> ShardConfig:
        where = f"shards[{index}]"
        entry = self.mapping(raw, where)
        self.check_keys(entry, _SHARD_KEYS, where)
        for required in ("name", "dsn"):
            if required not in entry:
                raise self.error(f"missing required key {required!r}", f"{where}.{required}")
        name = self.string(entry["name"], f"{where}.name")
        replicas = entry.get("replicas", [])
        if not isinstance(replicas, list):
            raise self.error("expected a list of DSNs", f"{where}.replicas")
        if replicas and dialect != "postgres":
            raise self.error(
                "replicas are PostgreSQL standbys; a SQLite shard has none", f"{where}.replicas"
            )
        min_size = self.size(entry.get("pool_min_size", 0), f"{where}.pool_min_size", 0)
        max_size = self.size(entry.get("pool_max_size", 4), f"{where}.pool_max_size", 1)
        if min_size > max_size:
            raise self.error(
                f"pool_min_size ({min_size}) is larger than pool_max_size ({max_size})",
                f"{where}.pool_min_size",
            )
        return ShardConfig(
            name=name,
            dsn=self.dsn(entry["dsn"], dialect, f"{where}.dsn"),
            replicas=tuple(
                self.dsn(r, dialect, f"{where}.replicas[{i}]") for i, r in enumerate(replicas)
            ),
            pool_min_size=min_size,
            pool_max_size=max_size,
        )

    def boolean(self, raw: object, where: str) -> bool:
        if not isinstance(raw, bool):
            raise self.error(f"expected true or false, got {raw!r}", where)
        return raw

    def read_policy(self, raw: object, where: str) -> str:
        if raw not in READ_POLICIES:
            raise self.error(
                f"expected one of {', '.join(map(repr, READ_POLICIES))}, got {raw!r}", where
            )
        return str(raw)

    def seconds(self, raw: object, where: str, *, positive: bool) -> float:
        number = isinstance(raw, int | float) and not isinstance(raw, bool)
        if not number or raw < 0 or (positive and raw == 0):  # type: ignore[operator]
            kind = "a positive" if positive else "a non-negative"
            raise self.error(f"expected {kind} number of seconds, got {raw!r}", where)
        return float(raw)  # type: ignore[arg-type]

    def cache(self, raw: object, where: str, parent: CacheConfig | None = None) -> CacheConfig:
        entry = self.mapping(raw, where)
        self.check_keys(entry, _CACHE_KEYS if parent is None else _CACHE_KEYS - {"regions"}, where)
        base = parent or CacheConfig()
        url = base.url
        if "url" in entry:
            url = _interpolate(
                self.string(entry["url"], f"{where}.url"), file=self.file, where=where
            )
            scheme = url.split("://", 1)[0].lower() if "://" in url else ""
            if scheme not in ("memory", "redis", "rediss", "unix"):
                raise self.error(
                    f"expected memory://, redis://... or rediss://..., got {redact(url)!r}",
                    f"{where}.url",
                )
        out = CacheConfig(
            url=url,
            ttl=self.seconds(entry.get("ttl", base.ttl), f"{where}.ttl", positive=True),
            grace=self.seconds(entry.get("grace", base.grace), f"{where}.grace", positive=False),
            prefix=self.string(entry.get("prefix", base.prefix), f"{where}.prefix"),
            lock_timeout=self.seconds(
                entry.get("lock_timeout", base.lock_timeout), f"{where}.lock_timeout", positive=True
            ),
            max_bytes=self.size(entry.get("max_bytes", base.max_bytes), f"{where}.max_bytes", 1),
        )
        if parent is None:
            regions_raw = self.mapping(entry.get("regions", {}), f"{where}.regions")
            regions = {
                name: self.cache(value, f"{where}.regions.{name}", out)
                for name, value in regions_raw.items()
            }
            out = CacheConfig(
                out.url, out.ttl, out.grace, out.prefix, out.lock_timeout, out.max_bytes, regions
            )
        return out

    def table(self, name: str, raw: object) -> TableConfig:
        where = f"tables.{name}"
        entry = self.mapping(raw, where)
        self.check_keys(entry, _TABLE_KEYS, where)
        shard_key = entry.get("shard_key")
        reference = entry.get("reference", False)
        if not isinstance(reference, bool):
            raise self.error(f"expected true or false, got {reference!r}", f"{where}.reference")
        if shard_key is not None and reference:
            raise self.error(
                "a table is either distributed (shard_key) or a reference table "
                "(reference = true), not both",
                where,
            )
        if shard_key is None and not reference:
            raise self.error(
                "expected shard_key = '<column>' (distributed) or reference = true", where
            )
        colocate = entry.get("colocate_with")
        key_type = entry.get("key_type")
        if key_type is not None and (shard_key is None or key_type not in KEY_TYPES):
            raise self.error(
                f"expected one of {', '.join(KEY_TYPES)} for a distributed table, got {key_type!r}",
                f"{where}.key_type",
            )
        return TableConfig(
            name=name.lower(),
            shard_key=None
            if shard_key is None
            else self.string(shard_key, f"{where}.shard_key").lower(),
            reference=reference,
            colocate_with=None
            if colocate is None
            else self.string(colocate, f"{where}.colocate_with").lower(),
            key_type=key_type,
        )

    def config(self, raw: Mapping[str, Any]) -> Config:
        self.check_keys(raw, _TOP_KEYS, "")
        dialect = raw.get("dialect", "sqlite")
        if dialect not in DIALECTS:
            raise self.error(f"expected one of {', '.join(DIALECTS)}, got {dialect!r}", "dialect")
        dialect = cast("Dialect", dialect)
        driver = raw.get("driver", DEFAULT_DRIVERS[dialect])
        driver = self.string(driver, "driver")
        shards_raw = raw.get("shards")
        if not isinstance(shards_raw, list) or not shards_raw:
            raise self.error("expected at least one [[shards]] entry", "shards")
        shards = [self.shard(entry, i, dialect) for i, entry in enumerate(shards_raw)]
        seen: dict[str, int] = {}
        for i, shard in enumerate(shards):
            if shard.name in seen:
                raise self.error(
                    f"duplicate shard name {shard.name!r} (also shards[{seen[shard.name]}])",
                    f"shards[{i}].name",
                )
            seen[shard.name] = i
        tables_raw = self.mapping(raw.get("tables", {}), "tables")
        tables: dict[str, TableConfig] = {}
        for name, entry in tables_raw.items():
            table = self.table(name, entry)
            if table.name in tables:
                raise self.error("declared twice (table names are case-insensitive)", name)
            tables[table.name] = table
        for table in tables.values():
            target = table.colocate_with
            if target is None:
                continue
            where = f"tables.{table.name}.colocate_with"
            if target not in tables:
                raise self.error(f"table {target!r} is not declared", where)
            if not table.distributed or not tables[target].distributed:
                raise self.error("only two distributed tables can be co-located", where)
            if table.key_type != tables[target].key_type:
                raise self.error(
                    f"co-located tables need the same key_type ({table.key_type!r} here, "
                    f"{tables[target].key_type!r} for {target!r}): keys compared across "
                    "types may be equal on different shards",
                    where,
                )
        cache = self.cache(raw["cache"], "cache") if "cache" in raw else None
        recover_on_connect = raw.get("recover_on_connect", False)
        if not isinstance(recover_on_connect, bool):
            raise self.error(f"expected true or false, got {recover_on_connect!r}",
                             "recover_on_connect")  # fmt: skip
        return Config(
            dialect=dialect,
            shards=tuple(shards),
            tables=tables,
            driver=driver,
            source=self.file,
            cache=cache,
            recover_on_connect=recover_on_connect,
            read_policy=self.read_policy(raw.get("read_policy", "primary"), "read_policy"),
            read_your_writes=self.boolean(raw.get("read_your_writes", False), "read_your_writes"),
            commit_timeout=self.seconds(
                raw.get("commit_timeout", DEFAULT_COMMIT_TIMEOUT), "commit_timeout", positive=True
            ),
            max_replica_lag=(
                self.seconds(raw["max_replica_lag"], "max_replica_lag", positive=False)
                if "max_replica_lag" in raw
                else None
            ),
            max_gather_rows=self.size(
                raw.get("max_gather_rows", DEFAULT_MAX_GATHER_ROWS), "max_gather_rows", 0
            ),
            max_decorrelated_rows=self.size(
                raw.get("max_decorrelated_rows", DEFAULT_MAX_DECORRELATED_ROWS),
                "max_decorrelated_rows",
                0,
            ),
        )


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | Config) -> Config:
    """Read and validate a configuration from a TOML file path or a dict.

    Raises:
        ConfigError: the file is missing or unreadable, or a field is invalid.
    """
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return _Reader(None, Path.cwd()).config(source)
    path = Path(source)
    file = str(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("configuration file not found", file=file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=file) from None
    return _Reader(file, path.resolve().parent).config(raw)
