"""Differential writes: the same statements through shardq and on one PostgreSQL.

Every test runs a sequence of writes twice: through shardq over the four
shard clusters, and on the single-node cluster holding every row. Each
statement's ``rowcount`` and ``RETURNING`` rows must be the single node's
(as a multiset where the order is not fixed), a statement the single node
rejects must be rejected with the same SQLSTATE, and at the end every table
is compared row by row: the rows of a distributed table read from each shard
directly (and each row on the shard its key places it on), every shard's copy
of a reference table, and no prepared transaction left behind.

Writes run in autocommit mode and inside transactions (committed, rolled
back, with savepoints rolled back), with both ways of opening one
(``conn.transaction()`` and ``autocommit = False``). A hypothesis-driven
sequence of random INSERT/UPDATE/DELETE statements checks the same
properties step by step (``SHARDQ_WRITE_EXAMPLES`` examples, 50 by default).

A multi-row INSERT spanning shards, an UPDATE moving a row to another
shard and INSERT ... SELECT (co-located and routed) are compared like the
rest.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import shardq
from tests.differential.compare import same_rows

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.servers import PgCluster

pytestmark = pytest.mark.postgres

DATABASE = "diffwrites"
SCHEMA = """
CREATE TABLE accounts (id integer PRIMARY KEY, owner text, balance integer, tag text);
CREATE TABLE ledger (account_id integer NOT NULL, seq integer NOT NULL, amount numeric(10, 2),
    PRIMARY KEY (account_id, seq));
CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL, rate integer);
CREATE TABLE hyp (id integer PRIMARY KEY, g text, v integer);
"""
TABLES: dict[str, dict[str, Any]] = {
    "accounts": {"shard_key": "id"},
    "ledger": {"shard_key": "account_id", "colocate_with": "accounts"},
    "currencies": {"reference": True},
    "hyp": {"shard_key": "id"},
}
DISTRIBUTED = {"accounts": "id", "ledger": "account_id", "hyp": "id"}
OWNERS = ["ann", "bob", "cy", None]
ACCOUNTS = [(i, OWNERS[i % 4], (i * 37) % 100 - 20, "t" + str(i % 3)) for i in range(1, 41)]
LEDGER = [(i % 40 + 1, i, Decimal(i * 7 % 50) - Decimal("12.50")) for i in range(1, 81)]
CURRENCIES = [("EUR", "euro", 100), ("USD", "dollar", 92), ("JPY", "yen", 1), ("CHF", "franc", 104)]
DATA = {"accounts": ACCOUNTS, "ledger": LEDGER, "currencies": CURRENCIES, "hyp": []}


@dataclass
class Twin:
    """shardq over the four shards, and the single node, driven in step."""

    conn: shardq.Connection
    single: psycopg.Connection[Any]
    shards: list[psycopg.Connection[Any]]  # direct, for the checks

    def run(self, sql: str, params: Any = None, *, ordered: bool = False) -> int | None:
        """Run on both; the same rowcount and rows (RETURNING), or the same error (None)."""
        try:
            want = self.single.execute(sql, params)
        except psycopg.Error as exc:
            self._same_error(sql, params, exc)
            return None
        cur = self.conn.execute(sql, params)
        assert cur.rowcount == want.rowcount, sql
        assert (cur.description is None) == (want.description is None), sql
        if want.description is not None:
            assert [d.name for d in cur.description] == [d.name for d in want.description]
            same_rows(cur.fetchall(), want.fetchall(), ordered)
        return want.rowcount

    def _same_error(self, sql: str, params: Any, want: psycopg.Error) -> None:
        got: shardq.DatabaseError | None = None
        try:
            self.conn.execute(sql, params)
        except shardq.UnsupportedQueryError:
            raise  # a refusal is not the single node's error
        except shardq.DatabaseError as exc:
            got = exc
        assert got is not None, f"shardq ran {sql!r}, which the single node refused: {want}"
        if want.sqlstate == "25P02":  # in a failed transaction: shardq says so itself
            assert isinstance(got, shardq.InFailedTransactionError), got
        else:
            assert getattr(got, "sqlstate", None) == want.sqlstate, (sql, got)

    def executemany(self, sql: str, params: list[Any]) -> None:
        with self.single.cursor() as cur:
            cur.executemany(sql, params)
            want = cur.rowcount
        cur2 = self.conn.cursor()
        cur2.executemany(sql, params)
        assert cur2.rowcount == want, sql

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction (a savepoint when nested) on both sides."""
        with self.conn.transaction(), self.single.transaction():
            yield

    def set_autocommit(self, value: bool) -> None:
        self.conn.autocommit = value
        self.single.autocommit = value

    def commit(self) -> None:
        self.conn.commit()
        self.single.commit()

    def rollback(self) -> None:
        self.conn.rollback()
        self.single.rollback()

    def same_tables(self) -> None:
        """Every table identical: the shards' rows against the single node's."""
        for table in TABLES:
            want = self.single.execute(f"SELECT * FROM {table}").fetchall()
            copies = [s.execute(f"SELECT * FROM {table}").fetchall() for s in self.shards]
            if table not in DISTRIBUTED:
                for i, copy in enumerate(copies):
                    try:
                        same_rows(copy, want, ordered=False)
                    except AssertionError as exc:
                        raise AssertionError(f"{table} on s{i}: {exc}") from None
                continue
            for i, rows in enumerate(copies):
                misplaced = [r for r in rows if self.conn.shard_for(table, r[0]) != f"s{i}"]
                assert not misplaced, f"{table} rows on s{i} that belong elsewhere: {misplaced}"
            same_rows([r for rows in copies for r in rows], want, ordered=False)
        for i, shard in enumerate(self.shards):
            left = shard.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = %s", [DATABASE]
            ).fetchall()
            assert not left, f"prepared transactions left on s{i}: {left}"

    def load(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Replace ``table``'s rows on the single node and on the shards (split or copied)."""
        marks = ", ".join(["%s"] * len(rows[0])) if rows else ""
        sides = [(self.single, rows)] + [
            (
                shard,
                [r for r in rows if self.conn.shard_for(table, r[0]) == f"s{i}"]
                if table in DISTRIBUTED
                else rows,
            )
            for i, shard in enumerate(self.shards)
        ]
        for conn, mine in sides:
            with conn.cursor() as cur:
                cur.execute(f"TRUNCATE {table}")
                if mine:
                    cur.executemany(f"INSERT INTO {table} VALUES ({marks})", mine)


@pytest.fixture(scope="module")
def twin_connections(pg_clusters: list[PgCluster], pg_single: PgCluster) -> Iterator[Twin]:
    for cluster in [*pg_clusters, pg_single]:
        cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE)
        cluster.execute(SCHEMA, DATABASE)
    shards = [{"name": f"s{i}", "dsn": c.dsn(DATABASE)} for i, c in enumerate(pg_clusters)]
    config = {"dialect": "postgres", "shards": shards, "tables": TABLES}
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(shardq.connect(config))
        single = stack.enter_context(psycopg.connect(pg_single.dsn(DATABASE), autocommit=True))
        direct = [
            stack.enter_context(psycopg.connect(c.dsn(DATABASE), autocommit=True))
            for c in pg_clusters
        ]
        yield Twin(conn, single, direct)


@pytest.fixture
def twin(twin_connections: Twin) -> Iterator[Twin]:
    """The twin with the base rows loaded on both sides, in autocommit mode."""
    twin = twin_connections
    for table, rows in DATA.items():
        twin.load(table, rows)
    yield twin
    if twin.conn.in_transaction:  # a failed test may leave one open
        twin.conn.rollback()
    twin.conn.autocommit = True
    twin.single.rollback()
    twin.single.autocommit = True


def _keys_on_distinct_shards(twin: Twin, count: int, start: int = 1000) -> list[int]:
    found: dict[str, int] = {}
    for key in range(start, start + 1000):
        found.setdefault(twin.conn.shard_for("accounts", key), key)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("no keys found")


# --------------------------------------------------------------------------- autocommit


def test_single_row_inserts_are_routed_by_key(twin: Twin) -> None:
    for key in range(100, 120):
        assert twin.run("INSERT INTO accounts VALUES (%s, %s, %s, %s)", [key, "dee", key, "x"]) == 1
    twin.run("INSERT INTO accounts (id, owner) VALUES (200, 'eve') RETURNING *")
    twin.run("INSERT INTO accounts (owner, id) VALUES (%s, %s) RETURNING id, owner", ["fay", 201])
    twin.run("INSERT INTO ledger (account_id, seq, amount) VALUES (200, 1, 9.99) RETURNING amount")
    # A duplicate key is refused by the shard the key is on, as by the single node.
    assert twin.run("INSERT INTO accounts VALUES (%s, 'dup', 0, 'x')", [5]) is None
    twin.run("INSERT INTO accounts VALUES (5, 'upsert', 0, 'x') ON CONFLICT (id) DO NOTHING")
    twin.run(
        "INSERT INTO accounts VALUES (6, 'upsert', 1, 'y') "
        "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner RETURNING id, owner, balance"
    )
    twin.same_tables()


def test_inserts_into_a_reference_table_write_every_copy(twin: Twin) -> None:
    twin.run("INSERT INTO currencies VALUES ('GBP', 'pound', 117)")
    twin.run("INSERT INTO currencies (code, name, rate) VALUES (%s, %s, %s) RETURNING *",
             ["SEK", "krona", 9])  # fmt: skip
    assert twin.run("INSERT INTO currencies VALUES ('EUR', 'again', 1)") is None
    twin.same_tables()


def test_update_and_delete_pinned_by_key(twin: Twin) -> None:
    twin.run("UPDATE accounts SET balance = balance + 5 WHERE id = %s", [7])
    twin.run("UPDATE accounts SET owner = 'zed' WHERE id = 8 AND balance > 1000")  # 0 rows
    twin.run("UPDATE accounts SET tag = 'moved' WHERE id = %s RETURNING id, tag, balance", [9])
    twin.run("DELETE FROM accounts WHERE id = %s RETURNING *", [10])
    twin.run("DELETE FROM ledger WHERE account_id = 11 AND seq > 40 RETURNING seq, amount")
    twin.run("UPDATE ledger SET amount = amount * 2 WHERE account_id = %s", [12])
    # IN lists pin the statement to the keys' shards (two-phase commit when several).
    twin.run("UPDATE accounts SET balance = 0 WHERE id IN (1, 2, 3, 4, 5) RETURNING id, balance")
    twin.run("DELETE FROM accounts WHERE id = ANY(%s) RETURNING id", [[13, 14, 15]])
    twin.same_tables()


def test_update_and_delete_not_pinned_run_on_every_shard(twin: Twin) -> None:
    assert twin.run("UPDATE accounts SET balance = balance + 1 WHERE balance > 50") > 3
    twin.run("UPDATE accounts SET tag = upper(tag) WHERE owner = 'ann' RETURNING id, tag")
    twin.run("UPDATE accounts SET owner = NULL WHERE owner IS NULL")  # every row matched anew
    twin.run("UPDATE ledger SET amount = -amount WHERE amount < 0 RETURNING account_id, seq")
    twin.run("DELETE FROM ledger WHERE seq % 7 = 0 RETURNING account_id, seq, amount")
    twin.run("DELETE FROM accounts WHERE balance < 0 AND owner = 'bob' RETURNING *")
    twin.run("UPDATE accounts SET balance = balance WHERE false")  # nothing, everywhere
    twin.run("DELETE FROM hyp")  # an empty table
    twin.same_tables()


def test_update_and_delete_of_a_reference_table(twin: Twin) -> None:
    twin.run("UPDATE currencies SET rate = rate * 2 WHERE rate > 50 RETURNING code, rate")
    twin.run("UPDATE currencies SET name = upper(name)")
    twin.run("DELETE FROM currencies WHERE code = %s RETURNING *", ["JPY"])
    twin.run("DELETE FROM currencies WHERE rate > 1000")
    twin.same_tables()


def test_truncate(twin: Twin) -> None:
    twin.run("TRUNCATE ledger")
    twin.run("TRUNCATE currencies")
    twin.same_tables()
    twin.run("INSERT INTO currencies VALUES ('NOK', 'krone', 9)")
    twin.run("INSERT INTO ledger VALUES (1, 1, 1.00)")
    twin.same_tables()


def test_executemany_routes_each_parameter_set(twin: Twin) -> None:
    rows = [(key, f"o{key}", key % 17, "em") for key in range(300, 340)]
    twin.executemany("INSERT INTO accounts VALUES (%s, %s, %s, %s)", rows)
    twin.executemany(
        "UPDATE accounts SET balance = balance + %s WHERE id = %s",
        [(3, key) for key in range(295, 345, 2)],  # some keys exist, some do not
    )
    twin.executemany("DELETE FROM accounts WHERE id = %(id)s", [{"id": k} for k in range(330, 350)])
    # A reference table's parameter sets each change every copy.
    twin.executemany(
        "INSERT INTO currencies VALUES (%s, %s, %s)", [("AUD", "a", 60), ("CAD", "c", 66)]
    )
    twin.executemany("UPDATE currencies SET rate = %s WHERE code = %s", [(1, "AUD"), (2, "EUR")])
    twin.same_tables()
    # In a transaction they run on its connections: kept, or undone, with it.
    with twin.transaction():
        twin.executemany(
            "INSERT INTO accounts (id, owner) VALUES (%s, %s)", [(k, "tx") for k in range(400, 420)]
        )
        twin.executemany(
            "UPDATE accounts SET tag = %s WHERE owner = %s", [("A", "ann"), ("B", "bob")]
        )
        twin.run("SELECT count(*) FROM accounts WHERE owner = 'tx'")
    twin.same_tables()

    def undone() -> None:
        with twin.transaction():
            twin.executemany("DELETE FROM accounts WHERE id = %s", [(k,) for k in range(1, 30)])
            twin.executemany("DELETE FROM currencies WHERE code = %s", [("AUD",), ("JPY",)])
            raise KeyError("undo")

    with pytest.raises(KeyError):
        undone()
    twin.same_tables()


# --------------------------------------------------------------------------- transactions


def test_transactions_commit_and_roll_back_as_one(twin: Twin) -> None:
    keys = _keys_on_distinct_shards(twin, 4)
    with twin.transaction():
        for key in keys:
            twin.run("INSERT INTO accounts VALUES (%s, 'txn', 1, 'c')", [key])
        twin.run("UPDATE accounts SET balance = balance - 1 WHERE tag = 't1' RETURNING id")
        twin.run("INSERT INTO currencies VALUES ('INR', 'rupee', 1)")
        # Reads inside the transaction see its writes, on both sides.
        twin.run("SELECT count(*), sum(balance) FROM accounts")
    twin.same_tables()

    def rolled_back() -> None:
        with twin.transaction():
            twin.run("DELETE FROM accounts WHERE owner = 'ann'")
            twin.run("UPDATE currencies SET rate = 0")
            twin.run("INSERT INTO accounts VALUES (%s, 'gone', 0, 'g')", [keys[0] + 5000])
            raise KeyError("undo")

    with pytest.raises(KeyError, match="undo"):
        rolled_back()
    twin.same_tables()


def test_autocommit_off_then_commit_or_rollback(twin: Twin) -> None:
    keys = _keys_on_distinct_shards(twin, 3, start=2000)
    twin.set_autocommit(False)
    twin.run("INSERT INTO accounts VALUES (%s, 'ac', 5, 'a')", [keys[0]])
    twin.run("UPDATE accounts SET balance = balance * 2 WHERE balance BETWEEN 0 AND 30")
    twin.commit()
    twin.same_tables()
    twin.run("INSERT INTO accounts VALUES (%s, 'ac', 6, 'a')", [keys[1]])
    twin.run("DELETE FROM ledger WHERE amount > 0")
    twin.run("DELETE FROM currencies WHERE code = 'USD'")
    twin.rollback()
    twin.same_tables()
    # A failed statement aborts the transaction on both sides; rollback ends it.
    twin.run("INSERT INTO accounts VALUES (%s, 'ac', 7, 'a')", [keys[2]])
    assert twin.run("INSERT INTO accounts VALUES (%s, 'dup', 0, 'a')", [keys[2]]) is None
    assert twin.run("SELECT count(*) FROM accounts") is None  # in a failed transaction
    twin.rollback()
    twin.set_autocommit(True)
    twin.same_tables()


def test_savepoints_rolled_back(twin: Twin) -> None:
    first, second, third = _keys_on_distinct_shards(twin, 3, start=3000)

    def inner_fails() -> None:
        with twin.transaction():
            twin.run("INSERT INTO accounts VALUES (%s, 'inner', 2, 's')", [second])
            twin.run("UPDATE accounts SET balance = -999 WHERE id = %s", [first])
            twin.run("UPDATE currencies SET rate = rate + 1000")
            raise LookupError("savepoint")

    with twin.transaction():
        twin.run("INSERT INTO accounts VALUES (%s, 'outer', 1, 's')", [first])
        with pytest.raises(LookupError):
            inner_fails()
        twin.run("SELECT id, balance FROM accounts WHERE id = %s", [first])
        with twin.transaction():
            twin.run("INSERT INTO accounts VALUES (%s, 'kept', 3, 's')", [third])
            twin.run("DELETE FROM ledger WHERE account_id = 2")
    twin.same_tables()


# --------------------------------------------------------------------------- the lead's branch


def test_multi_row_insert_across_shards(twin: Twin) -> None:
    keys = _keys_on_distinct_shards(twin, 4, start=4000)
    values = ", ".join(f"({k}, 'multi', {n}, 'm')" for n, k in enumerate(keys))
    # RETURNING comes back in the order of the VALUES: compared in order.
    twin.run(f"INSERT INTO accounts VALUES {values} RETURNING id, balance", ordered=True)
    keys = _keys_on_distinct_shards(twin, 4, start=4500)
    twin.run(
        "INSERT INTO accounts (id, owner) VALUES (%s, %s), (%s, %s), (%s, %s), (%s, %s) "
        "RETURNING *",
        [keys[3], "d", keys[1], "b", keys[0], "a", keys[2], "c"],
        ordered=True,
    )
    twin.same_tables()


def test_multi_row_insert_across_shards_is_atomic(twin: Twin) -> None:
    keys = _keys_on_distinct_shards(twin, 3, start=5000)
    # The last row collides on its shard: no row of the statement is kept.
    values = ", ".join(f"({k}, 'multi', 0, 'm')" for k in [*keys, 1])
    assert twin.run(f"INSERT INTO accounts VALUES {values}") is None
    twin.same_tables()


def test_update_setting_the_shard_key_moves_the_row(twin: Twin) -> None:
    source = 20
    target = next(
        k
        for k in range(6000, 7000)
        if twin.conn.shard_for("hyp", k) != "s0"
        and twin.conn.shard_for("accounts", k) != twin.conn.shard_for("accounts", source)
    )
    twin.run("UPDATE accounts SET id = %s WHERE id = %s RETURNING *", [target, source])
    twin.same_tables()


def test_insert_select(twin: Twin) -> None:
    # Not co-located (the key is computed): the rows come back and are routed.
    twin.run("INSERT INTO accounts SELECT id + 1000, owner, balance, 'copy' FROM accounts "
             "WHERE balance > 20")  # fmt: skip
    # Co-located, the key carried through: each shard inserts its own rows.
    twin.run("INSERT INTO hyp (id, g, v) SELECT id, owner, balance FROM accounts")
    twin.same_tables()


# --------------------------------------------------------------------------- random sequences

KEYS = st.integers(1, 12)  # few keys: inserts collide, predicates match
PREDICATES = st.one_of(
    KEYS.map(lambda k: f"id = {k}"),
    st.lists(KEYS, min_size=1, max_size=4).map(lambda ks: f"id IN ({', '.join(map(str, ks))})"),
    st.integers(-50, 50).map(lambda c: f"v > {c}"),
    st.integers(-50, 50).map(lambda c: f"v <= {c}"),
    st.sampled_from(["g = 'a'", "g IS NULL", "g <> 'b'", "v IS NULL", "true", "false"]),
    st.tuples(KEYS, KEYS).map(lambda ab: f"id BETWEEN {min(ab)} AND {max(ab)}"),
)
ASSIGNMENTS = st.one_of(
    st.integers(-20, 20).map(lambda c: f"v = v + {c}"),
    st.sampled_from(["v = NULL", "g = 'a'", "g = 'b'", "g = NULL", "v = -v", "g = g || 'x'"]),
)
TEXTS = st.sampled_from(["a", "b", "é", None])
VALUES = st.one_of(st.none(), st.integers(-60, 60))


@st.composite
def writes(draw: st.DrawFn) -> tuple[str, list[Any]]:
    """One random write on ``hyp`` and its parameters."""
    kind = draw(st.sampled_from(["insert", "insert", "update", "delete"]))
    returning = draw(st.sampled_from(["", "", " RETURNING *", " RETURNING id, v"]))
    if kind == "insert":
        return (
            "INSERT INTO hyp (id, g, v) VALUES (%s, %s, %s)" + returning,
            [draw(KEYS), draw(TEXTS), draw(VALUES)],
        )
    where = " AND ".join(draw(st.lists(PREDICATES, min_size=1, max_size=2)))
    if kind == "update":
        return f"UPDATE hyp SET {draw(ASSIGNMENTS)} WHERE {where}{returning}", []
    return f"DELETE FROM hyp WHERE {where}{returning}", []


steps = st.lists(
    st.tuples(
        st.sampled_from(["auto", "auto", "commit", "rollback"]),
        st.lists(writes(), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=int(os.environ.get("SHARDQ_WRITE_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=steps)
def test_random_write_sequences(sequence: list[tuple[str, list[Any]]], twin: Twin) -> None:
    """Each write's rowcount and rows are the single node's; so are the tables at the end.

    A group of writes runs in autocommit mode, or in one transaction then
    committed or rolled back. A write the single node rejects (a duplicate
    key) must be rejected the same way; in a transaction it aborts it.
    """
    twin.load("hyp", [])
    for ending, group in sequence:
        failed = False

        def run_group(group: list[tuple[str, list[Any]]] = group) -> bool:
            return any(twin.run(sql, params or None) is None for sql, params in group)

        if ending == "auto":
            for sql, params in group:
                count = twin.run(sql, params or None)
                event(
                    "autocommit: refused" if count is None else f"autocommit: {min(count, 2)}+ rows"
                )
        else:
            twin.set_autocommit(False)
            failed = run_group()
            event(f"transaction: {ending}{', failed' if failed else ''}")
            if ending == "commit" and not failed:
                twin.commit()
            else:
                twin.rollback()
            twin.set_autocommit(True)
        twin.same_tables()
