"""Configuration: every mistake names the file, the field and what is expected."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import shardq
from shardq.config import load_config

if TYPE_CHECKING:
    from pathlib import Path

SHARDS = [{"name": "a", "dsn": "postgresql://u:pw@h1/db"}, {"name": "b", "dsn": "host=h2"}]


def config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "dialect": "postgres",
        "shards": [dict(s) for s in SHARDS],
        "tables": {"orders": {"shard_key": "customer_id"}, "countries": {"reference": True}},
    }
    raw.update(overrides)
    return raw


def test_a_valid_dict_loads() -> None:
    cfg = load_config(config())
    assert cfg.shard_names == ("a", "b")
    assert cfg.table("orders").shard_key == "customer_id"
    assert cfg.table("ORDERS").distributed
    assert cfg.table("public.countries").reference
    assert cfg.shard("a").pool_max_size == 4
    assert cfg.driver == "psycopg"
    assert cfg.commit_timeout == 5.0
    assert load_config(config(commit_timeout=2)).commit_timeout == 2.0


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "shardq.toml"
    path.write_text(
        'dialect = "sqlite"\n[[shards]]\nname = "s1"\ndsn = "one.db"\npool_max_size = 2\n'
        '[tables.t]\nshard_key = "id"\n[tables.u]\nshard_key = "id"\ncolocate_with = "t"\n'
    )
    cfg = load_config(path)
    assert cfg.source == str(path)
    # SQLite paths are relative to the file.
    assert cfg.shards[0].dsn == str(tmp_path / "one.db")
    assert cfg.table("u").colocate_with == "t"


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (config(extra=1), "extra", "unknown key 'extra'"),
        (config(dialect="mysql"), "dialect", "expected one of postgres, sqlite"),
        (config(commit_timeout=0), "commit_timeout", "positive number of seconds"),
        (config(shards=[]), "shards", "at least one"),
        (config(shards=[{"name": "a"}]), "shards[0].dsn", "missing required key 'dsn'"),
        (
            config(shards=[{"name": "a", "dsn": "host=x"}, {"name": "a", "dsn": "host=y"}]),
            "shards[1].name",
            "duplicate shard name 'a'",
        ),
        (
            config(shards=[{"name": "a", "dsn": "mysql://x"}]),
            "shards[0].dsn",
            "malformed PostgreSQL DSN",
        ),
        (
            config(shards=[{"name": "a", "dsn": "host=x", "pool_max_size": 0}]),
            "shards[0].pool_max_size",
            "integer >= 1",
        ),
        (
            config(shards=[{"name": "a", "dsn": "host=x", "colour": "red"}]),
            "shards[0].colour",
            "unknown key",
        ),
        (
            config(tables={"t": {"shard_key": "id", "reference": True}}),
            "tables.t",
            "not both",
        ),
        (config(tables={"t": {}}), "tables.t", "shard_key"),
        (
            config(tables={"t": {"shard_key": "id", "colocate_with": "nope"}}),
            "tables.t.colocate_with",
            "'nope' is not declared",
        ),
        (
            config(
                tables={"t": {"shard_key": "id", "colocate_with": "r"}, "r": {"reference": True}}
            ),
            "tables.t.colocate_with",
            "two distributed tables",
        ),
        (config(tables={"t": {"shard_key": "id", "size": 3}}), "tables.t.size", "unknown key"),
        (
            config(tables={"t": {"shard_key": "id", "key_type": "money"}}),
            "tables.t.key_type",
            "expected one of integer",
        ),
        (
            config(tables={"t": {"reference": True, "key_type": "date"}}),
            "tables.t.key_type",
            "distributed table",
        ),
    ],
)
def test_mistakes_name_the_field(raw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(shardq.ConfigError) as info:
        load_config(raw)
    assert info.value.field == field
    assert message in str(info.value)
    assert isinstance(info.value, shardq.InterfaceError)
    assert isinstance(info.value, ValueError)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(shardq.ConfigError, match="not found") as info:
        load_config(tmp_path / "missing.toml")
    assert info.value.file == str(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("dialect = \n")
    with pytest.raises(shardq.ConfigError, match="invalid TOML") as info:
        load_config(bad)
    assert str(bad) in str(info.value)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[shards]]\nname = "a"\ndsn = "a.db"\n[tables.t]\nkey = "id"\n')
    with pytest.raises(shardq.ConfigError) as info:
        load_config(wrong)
    assert str(info.value).startswith(f"{wrong}: tables.t.key: unknown key 'key'")


def test_environment_variables_are_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDQ_TEST_PW", "s3cr3t-value")
    raw = config(shards=[{"name": "a", "dsn": "postgresql://u:${SHARDQ_TEST_PW}@h/db"}])
    cfg = load_config(raw)
    assert cfg.shards[0].dsn == "postgresql://u:s3cr3t-value@h/db"
    assert "s3cr3t-value" not in repr(cfg)
    assert "s3cr3t-value" not in repr(cfg.shards[0])


def test_a_missing_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDQ_UNSET_VAR", raising=False)
    raw = config(shards=[{"name": "a", "dsn": "postgresql://u:${SHARDQ_UNSET_VAR}@h/db"}])
    with pytest.raises(shardq.ConfigError, match="SHARDQ_UNSET_VAR is not set") as info:
        load_config(raw)
    assert info.value.field == "shards[0].dsn"


def test_malformed_dsn_error_hides_the_password() -> None:
    raw = config(shards=[{"name": "a", "dsn": "postgresql://u:topsecret@h:99999/db"}])
    with pytest.raises(shardq.ConfigError) as info:
        load_config(raw)
    assert "topsecret" not in str(info.value)
    assert "***" in str(info.value)


def test_undeclared_table_says_so() -> None:
    cfg = load_config(config())
    with pytest.raises(shardq.UndeclaredTableError, match="'nope' is not declared"):
        cfg.table("nope")


def test_shard_for_refuses_reference_tables_and_null() -> None:
    cfg = load_config(config())
    with pytest.raises(ValueError, match="reference table"):
        cfg.shard_for("countries", 1)
    with pytest.raises(ValueError, match="NULL"):
        cfg.shard_for("orders", None)
    assert cfg.shard_for("orders", 1) in cfg.shard_names
