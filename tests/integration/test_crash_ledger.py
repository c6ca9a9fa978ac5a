"""Randomized crashes of a writer process against a ledger of acknowledged commits.

A writer process (:func:`tests.fixtures.ledger.write`) runs transactions
writing on 2 to 4 of the 4 shards and acknowledges each, in an fsynced
file, only after its commit returned. Each run kills it with SIGKILL at a
random moment: either after a random delay, wherever it is, or at a random
step of the two-phase commit of a random transaction (``SHARDQ_CRASH_AT``).
Then recovery runs (``conn.recover()``, or ``shardq recover`` in one run of
eight) and the ledger must hold: every transaction all or nothing, every
acknowledged one wholly there, nothing twice, balances the sum of the
transactions there, no prepared transaction left, and a second recovery
finding nothing to do. A run killed at a step also knows the fate of the
transaction it interrupted (committed from ``after-decision`` on, rolled
back before) and what recovery had to do for it.

``SHARDQ_CRASH_RUNS`` (default 30) sets the number of runs,
``SHARDQ_CRASH_SEED`` the seed; the summary is printed (``pytest -s``).

Writers are forked from a forkserver that imported shardq once: a fresh
interpreter per run would spend a second importing.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

import shardq
from tests.fixtures.ledger import TABLES, Ledger, read_acks, recover, write
from tests.integration.test_transactions import _toml

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.context import ForkServerContext
    from pathlib import Path

    from tests.fixtures.servers import PgCluster

DATABASE = "crash_ledger"
RUNS = int(os.environ.get("SHARDQ_CRASH_RUNS", "30"))
SEED = int(os.environ.get("SHARDQ_CRASH_SEED", "20261127"))
STEPS = (
    "before-decision-row",
    "before-prepare",
    "after-prepare",
    "before-decision",
    "after-decision",
    "between-commits",
)
COMMITTED_FROM = STEPS.index("after-decision")
MAX_DELAY = 0.25  # seconds: the delay kills land anywhere in the first few dozen transactions
RECOVER_DEADLINE = 10.0  # seconds for a killed writer's sessions to end on the servers


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.fixtures.ledger"])
    return context


@pytest.fixture(scope="module")
def ledger(pg_clusters: list[PgCluster]) -> Iterator[Ledger]:
    """The ledger in a database of its own on each of the 4 shard clusters."""
    for cluster in pg_clusters:
        cluster.drop_database(DATABASE)
        cluster.create_database(DATABASE)
    config = {
        "dialect": "postgres",
        "shards": [{"name": f"s{i}", "dsn": c.dsn(DATABASE)} for i, c in enumerate(pg_clusters)],
        "tables": TABLES,
    }
    found = Ledger(config, {f"s{i}": c.dsn(DATABASE) for i, c in enumerate(pg_clusters)})
    found.create()
    try:
        yield found
    finally:
        for cluster in pg_clusters:
            cluster.drop_database(DATABASE)


def _recover_cli(cli: list[str]) -> Counter[str]:
    """``shardq recover`` until nothing is left in progress (see :func:`ledger.recover`)."""
    done: Counter[str] = Counter()
    deadline = time.monotonic() + RECOVER_DEADLINE
    while True:
        out = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout
        lines = out.splitlines()
        done.update(
            committed=sum(line.startswith("committed: ") for line in lines),
            rolled_back=sum(line.startswith("rolled back: ") for line in lines),
        )
        if not any(line.startswith("in progress, left alone: ") for line in lines):
            return done
        assert time.monotonic() < deadline, out
        time.sleep(0.01)


def test_randomized_kills_lose_and_duplicate_nothing(
    ledger: Ledger, forkserver: ForkServerContext, tmp_path: Path
) -> None:
    config_file = tmp_path / "shardq.toml"
    config_file.write_text(_toml(ledger.config))
    cli = [sys.executable, "-m", "shardq.cli", "recover", "-c", str(config_file)]
    stats: Counter[str] = Counter()
    with shardq.connect(ledger.config) as conn:
        for run in range(RUNS):
            rng = random.Random(f"{SEED}:{run}")
            folder = tmp_path / f"run{run}"
            folder.mkdir()
            ledger.reset()
            first = run * 100_000
            crash: tuple[str, int] | None = None
            if rng.random() < 0.5:
                crash = (rng.choice(STEPS), rng.randrange(4))
                txs = range(first, first + crash[1] + 1)
            else:
                txs = range(first, first + 100_000)
            started = forkserver.Event()
            writer = forkserver.Process(
                target=write,
                args=(ledger, SEED, txs, str(folder)),
                kwargs={"started": started, "crash": crash},
            )
            writer.start()
            try:
                if crash is None:
                    assert started.wait(30), "the writer did not start"
                    time.sleep(rng.uniform(0, MAX_DELAY))
                    writer.kill()
                writer.join(60)
            finally:
                if writer.exitcode is None:
                    writer.kill()
                    writer.join()
            error = folder / "error"
            assert not error.exists(), error.read_text()
            assert writer.exitcode == -9, f"run {run}: the writer was not killed"
            acked = read_acks(folder / "acks")
            assert acked == list(txs[: len(acked)])
            begun = txs[: len(acked) + 1]  # the writer runs them one after another
            recovered = _recover_cli(cli) if run % 8 == 7 else recover(conn, RECOVER_DEADLINE)
            again = conn.recover()
            assert (again.committed, again.rolled_back, again.in_progress) == ([], [], [])
            verdict = ledger.check(SEED, begun, acked)
            where = f"run {run} (seed {SEED}, crash {crash}): {verdict.problems()}"
            assert not verdict.problems(), where
            interrupted = begun[-1]
            if crash is not None:
                step = STEPS.index(crash[0])
                plan = ledger.plan(SEED, interrupted)
                participants = len(plan.shards) - 1
                committed = step >= COMMITTED_FROM
                assert (interrupted in verdict.committed) == committed, where
                assert interrupted not in acked
                # What recovery found prepared, by step: PREPARE had not run before
                # after-prepare; then it had on one participant at least (the others
                # prepare at the same time), on all of them, ...
                low, high = {
                    "before-decision-row": (0, 0),
                    "before-prepare": (0, 0),
                    "after-prepare": (1, participants),
                    "before-decision": (participants, participants),
                    "after-decision": (participants, participants),
                    "between-commits": (participants - 1, participants - 1),
                }[crash[0]]
                verb = "committed" if committed else "rolled_back"
                assert set(+recovered) <= {verb}, where  # + drops the zeros
                assert low <= recovered[verb] <= high, where
            stats.update(
                runs=1,
                **{f"killed at {crash[0]}" if crash else "killed after a delay": 1},
                acknowledged=len(acked),
                **{
                    "interrupted and committed"
                    if interrupted in verdict.committed
                    else "interrupted and rolled back": 1
                },
                **{f"recovery {k}": v for k, v in recovered.items()},
                lost=len(verdict.lost),
                duplicated=len(verdict.duplicated),
                half=len(verdict.half),
                prepared_left=len(verdict.prepared),
            )
    print(f"\n{RUNS} runs, seed {SEED}:")
    for name, count in sorted(stats.items()):
        print(f"  {name}: {count}")
    # Kills at every step and after delays, whatever the count of runs (30: about 15 each).
    assert stats["killed after a delay"] > 0
    assert stats["recovery committed"] > 0
    assert stats["recovery rolled_back"] > 0


def test_recovery_running_beside_a_writer_leaves_its_transactions_alone(
    ledger: Ledger, forkserver: ForkServerContext, tmp_path: Path
) -> None:
    """Recover in a loop while a writer commits, slowed at random at every step."""
    ledger.reset()
    txs = range(10_000_000, 10_000_000 + 120)
    writer = forkserver.Process(
        target=write, args=(ledger, SEED, txs, str(tmp_path)), kwargs={"pause": 0.004}
    )
    recoveries: list[Any] = []
    with shardq.connect(ledger.config) as conn:
        writer.start()
        try:
            while writer.is_alive():
                recoveries.append(conn.recover())
        finally:
            writer.join(120)
            if writer.exitcode is None:
                writer.kill()
                writer.join()
    error = tmp_path / "error"
    assert not error.exists(), error.read_text()
    assert writer.exitcode == 0
    acked = read_acks(tmp_path / "acks")
    assert acked == list(txs)
    verdict = ledger.check(SEED, txs, acked)
    assert not verdict.problems(), verdict.problems()
    left = [r.in_progress for r in recoveries if r.in_progress]
    rolled_back = [gid for r in recoveries for gid in r.rolled_back]
    committed = [gid for r in recoveries for gid in r.committed]
    warnings = (tmp_path / "warnings").read_text() if (tmp_path / "warnings").exists() else ""
    print(
        f"\n{len(recoveries)} recoveries beside {len(txs)} transactions: {len(left)} found "
        f"some in progress and left them, {len(committed)} committed a participant the "
        f"writer had decided, {len(rolled_back)} rolled back; writer warnings: "
        f"{warnings.count(chr(10))}"
    )
    assert len(recoveries) > len(txs) // 4  # they did run beside the writer
    assert left  # and met its transactions mid-commit
    assert rolled_back == []  # every transaction commits: recovery undid none
    # Where recovery committed a participant first, the writer took it as done (no
    # "did not confirm" warning): nothing failed.
    assert warnings == ""
