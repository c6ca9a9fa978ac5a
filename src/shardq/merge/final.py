"""The final step of a merge on SQLite shards, computed by SQLite itself.

The shards' partial rows are loaded, batch by batch as they arrive, into a
table of a private in-memory SQLite database, and the final statement runs
over them (see
:mod:`shardq.sql.rewrite.sqlite` for why). SQLite here is a calculator of
the standard library, not a shard: nothing leaves the process.

>>> from shardq.merge.steps import FinalStep
>>> sql = "SELECT g, SUM(a) * 1.0 / 3 AS s FROM p GROUP BY g"
>>> step = FinalStep("p", ("g", "a"), sql, ("g", "s"))
>>> compute(step, [("x", 1), ("x", 2), ("y", 3)])
[('x', 1.0), ('y', 1.0)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardq.errors import OperationalError, category_of

if TYPE_CHECKING:
    from shardq.merge import Rows
    from shardq.merge.steps import FinalStep

__all__ = ["FinalTable", "compute"]


def compute(step: FinalStep, rows: Rows) -> Rows:
    """The rows ``step`` computes from the shards' ``rows``."""
    table = FinalTable(step)
    try:
        table.load(rows)
        return table.compute()
    finally:
        table.close()


class FinalTable:
    """The in-memory database of one merge, its table filled in one transaction."""

    def __init__(self, step: FinalStep):
        import sqlite3  # only when a merge needs it: ``import shardq`` loads no driver

        self._step = step
        self._error = sqlite3.Error
        self._db = sqlite3.connect(":memory:", isolation_level=None)
        self._db.execute(f"CREATE TABLE {step.table} ({', '.join(step.columns)})")
        # One transaction for every row: committing each INSERT would cost more than it.
        self._db.execute("BEGIN")
        marks = ", ".join("?" * len(step.columns))
        self._insert = f"INSERT INTO {step.table} VALUES ({marks})"

    def load(self, rows: Rows) -> None:
        if rows:
            self._db.executemany(self._insert, rows)

    def compute(self) -> Rows:
        self._db.execute("COMMIT")
        params = self._step.params if self._step.params is not None else ()
        try:
            return self._db.execute(self._step.sql, params).fetchall()
        except self._error as exc:
            # What fails here is what one database would fail on over all the
            # rows (an integer overflow of a merged sum, a parameter not
            # supplied): the same PEP 249 class.
            category = category_of(exc) or OperationalError
            raise category(f"{exc} (in the merge of the shards' results)") from exc

    def close(self) -> None:
        self._db.close()
