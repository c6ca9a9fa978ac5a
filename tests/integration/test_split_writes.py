"""Writes whose rows belong to several shards, on every backend.

A multi-row INSERT is split by shard key (RETURNING in VALUES order); an
UPDATE that changes a row's key moves the row; INSERT ... SELECT runs on each
shard when source and target are co-located, and otherwise routes the
selected rows. On PostgreSQL the parts commit together (two-phase commit);
SQLite shards refuse what would write on several of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.integration.test_transactions import _keys_on_distinct_shards, _prepared, _stored

if TYPE_CHECKING:
    from tests.fixtures.shards import Backend


# Tests of what SQLite shards refuse (the tests on every backend check the refusal).
POSTGRES = pytest.mark.parametrize("backend", ["postgres", "pep249-psycopg2"], indirect=True)


def _values(backend: Backend, count: int) -> str:
    marks = ", ".join(["({}, {})"] * count)
    return backend.sql(f"INSERT INTO writes (id, note) VALUES {marks}")


def test_a_multi_row_insert_is_split_by_shard(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 4)
        # Out of key order, two rows on one shard, so that VALUES order is not shard order.
        keys = [keys[2], keys[0], keys[3], keys[0] + 4000, keys[1]]
        params = [v for k in keys for v in (k, f"n{k}")]
        if backend.dialect == "sqlite":
            with pytest.raises(shardq.UnsupportedQueryError, match="two-phase commit"):
                conn.execute(_values(backend, len(keys)), params)
            assert _stored(backend) == []
            return
        cur = conn.execute(_values(backend, len(keys)) + " RETURNING id, note", params)
        assert cur.rowcount == len(keys)
        assert cur.fetchall() == [(k, f"n{k}") for k in keys]  # in VALUES order
        assert _stored(backend) == sorted((k, f"n{k}") for k in keys)
        for i in range(4):
            for (key,) in backend.direct(i, "SELECT id FROM writes"):
                assert conn.shard_for("writes", key) == backend.shard_names[i]
        # Literals, not parameters.
        a, b = keys[0] + 8000, keys[1] + 8000
        cur = conn.execute(f"INSERT INTO writes (id, note) VALUES ({a}, 'x%'), ({b}, 'y')")
        assert cur.rowcount == 2
        assert conn.execute(
            f"SELECT note FROM writes WHERE id IN ({a}, {b}) ORDER BY note"
        ).fetchall() == [("x%",), ("y",)]
        assert _prepared(backend) == []


@POSTGRES
def test_a_split_insert_commits_on_every_shard_or_none(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 3)
        conn.execute(backend.sql("INSERT INTO writes (id, note) VALUES ({}, 'first')"), [keys[2]])
        # The last row collides with the row already there: no row of the statement stays.
        params = [keys[0], "a", keys[1], "b", keys[2], "c"]
        with pytest.raises(shardq.IntegrityError) as caught:
            conn.execute(_values(backend, 3), params)
        assert conn.shard_for("writes", keys[2]) in str(caught.value)
        assert _stored(backend) == [(keys[2], "first")]
        assert _prepared(backend) == []
        # Inside a transaction, a split INSERT is undone by the rollback.
        conn.autocommit = False
        conn.execute(_values(backend, 2), [keys[0], "a", keys[1], "b"])
        assert conn.execute("SELECT count(*) FROM writes").fetchall() == [(3,)]
        conn.rollback()
        conn.autocommit = True
        assert _stored(backend) == [(keys[2], "first")]


@POSTGRES
def test_returning_with_on_conflict_across_shards_is_refused(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 2)
        sql = _values(backend, 2) + " ON CONFLICT (id) DO NOTHING"
        params = [keys[0], "a", keys[1], "b"]
        with pytest.raises(shardq.UnsupportedQueryError, match="VALUES list"):
            conn.execute(sql + " RETURNING id", params)
        assert _stored(backend) == []
        assert conn.execute(sql, params).rowcount == 2
        assert conn.execute(sql, params).rowcount == 0  # both skipped, on their shards
        assert _stored(backend) == [(keys[0], "a"), (keys[1], "b")]


@POSTGRES
async def test_a_split_insert_through_the_async_api(empty_writes: Backend) -> None:
    backend = empty_writes
    async with await backend.connect_async() as conn:
        keys = _keys_on_distinct_shards(conn, 4)
        named = ", ".join(f"(%(k{i})s, %(n{i})s)" for i in range(4))
        params: dict[str, Any] = {f"k{i}": k for i, k in enumerate(keys)}
        params.update({f"n{i}": str(k) for i, k in enumerate(keys)})
        cur = await conn.execute(
            f"INSERT INTO writes (id, note) VALUES {named} RETURNING note", params
        )
        assert await cur.fetchall() == [(str(k),) for k in keys]
    assert _stored(backend) == [(k, str(k)) for k in keys]


def test_an_update_of_the_shard_key_moves_the_row(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 4)
        for key in keys:
            conn.execute(backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})"), [key, "n"])
        old, new = keys[0], keys[1] + 4000
        assert conn.shard_for("writes", new) != conn.shard_for("writes", old)
        move = backend.sql("UPDATE writes SET id = {}, note = note || {} WHERE id = {}")
        if backend.dialect == "sqlite":
            with pytest.raises(shardq.UnsupportedQueryError, match="two-phase commit"):
                conn.execute(move, [new, "m%", old])
            assert _stored(backend) == [(k, "n") for k in keys]
            return
        cur = conn.execute(move + " RETURNING id, note", [new, "m%", old])
        assert cur.rowcount == 1
        assert cur.fetchall() == [(new, "nm%")]
        expected = sorted([(k, "n") for k in keys[1:]] + [(new, "nm%")])
        assert _stored(backend) == expected
        home = backend.shard_names.index(conn.shard_for("writes", new))
        assert backend.direct(home, f"SELECT note FROM writes WHERE id = {new}") == [("nm%",)]
        assert _prepared(backend) == []


@POSTGRES
def test_an_unpinned_update_of_the_key_gathers_rows_on_the_new_shard(
    empty_writes: Backend,
) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 4)
        for key in keys:
            conn.execute(f"INSERT INTO writes (id, note) VALUES ({key}, 'n{key}')")
        # One row per shard matches; all of them get one key: a unique violation, on
        # the new key's shard, and nothing moved.
        with pytest.raises(shardq.IntegrityError):
            conn.execute("UPDATE writes SET id = 7 WHERE note LIKE 'n%'")
        assert _stored(backend) == [(k, f"n{k}") for k in keys]
        assert _prepared(backend) == []
        # One row on each of two shards, moved to the key 7 one after the other.
        cur = conn.execute(f"UPDATE writes SET id = 7 WHERE id = {keys[3]} RETURNING note")
        assert cur.fetchall() == [(f"n{keys[3]}",)]
        with conn.transaction():
            conn.execute(f"DELETE FROM writes WHERE id = {keys[0]}")
            cur = conn.execute(
                "UPDATE writes AS w SET id = 8, note = upper(w.note) "
                f"WHERE w.id IN ({keys[1]}, {keys[2]}) AND w.id = {keys[1]}"
            )
            assert cur.rowcount == 1
            # The transaction sees the moved row on its new shard.
            assert conn.execute("SELECT id, note FROM writes WHERE id = 8").fetchall() == [
                (8, f"N{keys[1]}")
            ]
        assert _stored(backend) == sorted(
            [(7, f"n{keys[3]}"), (8, f"N{keys[1]}"), (keys[2], f"n{keys[2]}")]
        )
        with pytest.raises(shardq.UnsupportedQueryError, match="each row could move"):
            conn.execute("UPDATE writes SET id = id + 1")
        with pytest.raises(shardq.UnsupportedQueryError, match="tuple assignment"):
            conn.execute("UPDATE writes SET (id, note) = (9, 'x') WHERE id = 7")
        assert "move to" in conn.explain("UPDATE writes SET id = 9 WHERE note = 'x'")
        assert _prepared(backend) == []


def test_executemany_of_writes_that_span_shards(empty_writes: Backend) -> None:
    backend = empty_writes
    with backend.connect() as conn:
        keys = _keys_on_distinct_shards(conn, 4)
        cur = conn.cursor()
        cur.executemany(
            backend.sql("INSERT INTO writes (id, note) VALUES ({}, {})"), [(k, "a") for k in keys]
        )
        update = backend.sql("UPDATE writes SET note = {} WHERE note = {}")
        if backend.dialect == "sqlite":  # each parameter set writes every shard
            with pytest.raises(shardq.UnsupportedQueryError, match="two-phase commit"):
                cur.executemany(update, [("b", "a")])
            assert _stored(backend) == [(k, "a") for k in keys]
            return
        # Unpinned: each parameter set runs on every shard, atomically, in turn.
        cur.executemany(update, [("b", "a"), ("c", "b"), ("d", "nothing")])
        assert cur.rowcount == 8
        assert _stored(backend) == [(k, "c") for k in keys]
        # One pinned to a shard, one moving a row: in turn as well.
        moved = keys[1] + 4000
        cur.executemany(backend.sql("UPDATE writes SET id = {} WHERE id = {}"), [(moved, keys[0])])
        assert sorted(k for k, _ in _stored(backend)) == sorted([moved, *keys[1:]])
        assert _prepared(backend) == []
