"""A shard's server stopped in the middle of a two-phase commit, then started again.

Three shards: two databases on the suite's shared clusters and one on a
cluster of this module's own (``d``), which the tests stop by its pid and
start again (the shared ones are never stopped). Layout ``participant``
orders the shards ``a, d, c``, so that ``a`` holds the decision and ``d``
prepares; layout ``holder`` orders them ``d, a, c``, so that ``d`` holds
it. Each test commits a few transactions of the ledger
(:mod:`tests.fixtures.ledger`), then one (on ``a`` and ``d``, or as holder on
all three) whose commit stops ``d`` at a step of the two-phase commit (the fault hook
``_fault``, run in this process, halts the server there and lets the commit
go on). Then ``d`` starts again, recovery runs, and the ledger must hold:
the interrupted transaction all there or not at all, as the step says,
acknowledged (its commit returned) exactly when it is there, the others
untouched, no prepared transaction left.

``immediate`` is PostgreSQL's immediate shutdown (no checkpoint: crash
recovery at the start, as after a power cut, but what was written to the OS
survives); ``fast`` ends the sessions and checkpoints first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest

import shardq
from shardq.execute import twophase
from tests.fixtures.ledger import TABLES, Ledger, apply, recover
from tests.fixtures.servers import PgCluster

if TYPE_CHECKING:
    from collections.abc import Iterator

SEED = 7
LAYOUTS = {"participant": ("a", "d", "c"), "holder": ("d", "a", "c")}


@pytest.fixture(scope="module")
def stopped_cluster() -> Iterator[PgCluster]:
    """The cluster the tests stop; stopped for good at the end of the module."""
    cluster = PgCluster(name="crashstop")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ledgers(
    pg_clusters: list[PgCluster], stopped_cluster: PgCluster
) -> Iterator[dict[str, Ledger]]:
    """A ledger per layout, each in a database of its own on the three clusters."""
    clusters = {"a": pg_clusters[0], "c": pg_clusters[1], "d": stopped_cluster}
    found = {}
    for layout, names in LAYOUTS.items():
        database = f"crash_stop_{layout}"
        for cluster in clusters.values():
            cluster.drop_database(database)
            cluster.create_database(database)
        dsns = {name: clusters[name].dsn(database) for name in names}
        config = {
            "dialect": "postgres",
            "shards": [{"name": name, "dsn": dsn} for name, dsn in dsns.items()],
            "tables": TABLES,
        }
        found[layout] = Ledger(config, dsns)
        found[layout].create()
    try:
        yield found
    finally:
        for layout in LAYOUTS:
            for cluster in clusters.values():
                if cluster.running:
                    cluster.drop_database(f"crash_stop_{layout}")


# (layout, the step at which d stops, how): whether the commit returned, and the
# transaction is there after recovery. The decision is the holder's commit: a
# participant stopped from after its PREPARE on finds its transaction committed
# when it starts again; a holder stopped before its commit takes the decision
# with it (the commit raises, saying it may or may not have happened).
# "then writes": transactions ran on d after its restart and before recovery.
# An immediate shutdown loses the transaction ids that had not reached the disk,
# and the restarted server gives them out again: the holder's id, named in the
# participants' prepared transactions, may then be another transaction's.
CASES = [
    ("participant", "before-prepare", "immediate", False),
    ("participant", "after-prepare", "immediate", True),
    ("participant", "after-prepare", "fast", True),
    ("participant", "before-decision", "immediate", True),
    ("participant", "after-decision", "immediate", True),
    ("holder", "before-decision-row", "immediate", False),
    ("holder", "after-prepare", "immediate", False),
    ("holder", "after-prepare", "immediate, then writes", False),
    ("holder", "before-decision", "immediate", False),
    ("holder", "before-decision", "fast", False),
    ("holder", "after-decision", "immediate", True),
    ("holder", "after-decision", "immediate, then writes", True),
    ("holder", "after-decision", "fast", True),
    ("holder", "between-commits", "immediate", True),
]


@pytest.mark.parametrize(("layout", "step", "how", "committed"), CASES)
def test_a_shard_stopped_mid_commit(
    ledgers: dict[str, Ledger],
    stopped_cluster: PgCluster,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
    step: str,
    how: str,
    committed: bool,
) -> None:
    mode = how.split(",")[0]
    ledger = ledgers[layout]
    ledger.reset()
    everywhere = frozenset(ledger.shards)
    # Three transactions writing on all three shards, then the one interrupted: as a
    # participant, d is its only one (participants prepare at once, so the first
    # "after-prepare" could follow another's PREPARE); as the holder, on all three.
    before = [tx for tx in range(1, 200) if ledger.plan(SEED, tx).shards == everywhere][:3]
    wanted = frozenset({"a", "d"}) if layout == "participant" else everywhere
    last = next(tx for tx in range(before[-1] + 1, 400) if ledger.plan(SEED, tx).shards == wanted)
    txs = [*before, last]
    stopped: list[str] = []

    def stop_d(at: str) -> None:
        if at == step and not stopped:
            stopped.append(at)
            stopped_cluster.halt(mode)

    acked = []
    with shardq.connect(ledger.config) as conn:
        for tx in before:
            with conn.transaction():
                for part in ledger.plan(SEED, tx).steps:
                    apply(conn, tx, part)
            acked.append(tx)
        monkeypatch.setattr(twophase, "_fault", stop_d)
        error: shardq.DatabaseError | None = None
        try:
            with conn.transaction():
                for part in ledger.plan(SEED, last).steps:
                    apply(conn, last, part)
            acked.append(last)
        except shardq.DatabaseError as exc:
            error = exc
        finally:
            monkeypatch.undo()
            if not stopped_cluster.running:
                stopped_cluster.resume()
    assert stopped == [step]
    assert (error is None) == committed, error
    assert error is None or "'d'" in str(error)  # the error names the stopped shard
    if how.endswith("then writes"):
        with psycopg.connect(ledger.dsns["d"], autocommit=True) as direct:
            for _ in range(50):
                direct.execute("UPDATE accounts SET last_tx = last_tx")
    with shardq.connect(ledger.config) as conn:
        recover(conn)
        again = conn.recover()
    assert (again.committed, again.rolled_back, again.in_progress) == ([], [], [])
    verdict = ledger.check(SEED, txs, acked)
    assert not verdict.problems(), verdict.problems()
    assert verdict.committed == (txs if committed else before)
    assert (last in acked) == committed
