"""Moving rows: an UPDATE that sets the shard key to a value of another shard.

``UPDATE t SET k = 42, v = v + 1 WHERE ...`` may change rows whose new key
belongs to another shard than the one that holds them. One database updates
them in place; shardq moves them, in one transaction committed on every
shard it touched or none (two-phase commit), as PgDog does:

1. on the shard of the new key (the *target*), the UPDATE runs as written:
   its own rows are updated in place;
2. on every other shard the WHERE can reach, the UPDATE runs as written but
   returns, instead of the user's RETURNING list, each changed row's
   ``ctid`` and its whole new value as text (``CAST(ROW(t.*) AS TEXT)``):
   PostgreSQL computes the new row itself, with the assignment casts,
   defaults and domain checks an UPDATE applies; those rows are then deleted
   there by ``ctid``;
3. the new rows are inserted on the target from their text
   (``CAST(r AS t)``: text input of the table's own row type, which reads
   back exactly what it wrote), returning the user's RETURNING list.

Step 1 runs before step 3, so the moved rows are not updated twice.
``rowcount`` is the number of rows updated or moved; RETURNING rows come
from the target's UPDATE and the moved rows' INSERT. Triggers see a DELETE
and an INSERT for a moved row, not an UPDATE.

Refused, with the reason: a key set to anything but a constant or a bound
parameter (each row could go elsewhere: ``SET k = k + 1``), a key in a tuple
assignment, ``UPDATE ... FROM``, and, on SQLite shards, a move between two
shards (no two-phase commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import exp

from shardq.errors import UnsupportedQueryError
from shardq.sql.regenerate import for_psycopg, regenerate
from shardq.sql.rewrite import positional_as_named

if TYPE_CHECKING:
    from shardq.sql.analyze import Analysis

__all__ = ["ROWS", "TIDS", "Move", "plan_move"]

#: The parameter names of the rows' ctids (delete) and of their text (insert).
TIDS = "_shardq_tids"
ROWS = "_shardq_rows"


@dataclass(frozen=True, slots=True)
class Move:
    """The statements of an UPDATE that moves rows to the shard ``target``.

    Attributes:
        target: the shard of the new key.
        update: the UPDATE as written (run on the target).
        pick: the UPDATE returning ``ctid`` and the new row as text (other shards).
        delete: deletes the picked rows by ctid (parameter ``_shardq_tids``).
        insert: inserts the picked rows on the target (parameter ``_shardq_rows``).
        params: the parameters of ``update`` and ``pick``.
    """

    target: str
    update: str
    pick: str
    delete: str
    insert: str
    params: object


def plan_move(analysis: Analysis, params: object, target: str) -> Move:
    """The statements that move the rows of an UPDATE to the shard ``target``."""
    statement = analysis.parsed.expression
    dialect = analysis.parsed.dialect
    if statement.args.get("from") or statement.args.get("from_"):
        raise UnsupportedQueryError(
            "UPDATE ... FROM that sets the shard key",
            "a moved row is inserted on its new shard from its own columns only; set the "
            "key without FROM, or delete and re-insert the rows",
        )
    table = statement.this
    name = table.copy()
    name.set("alias", None)
    table_sql = name.sql(dialect)
    alias = table.alias or table.name
    escaped = params is not None
    bound = positional_as_named(params, analysis.parsed.positional)

    def write(tree: exp.Expr, extra: frozenset[str] = frozenset()) -> str:
        sql = regenerate(tree, analysis.parsed.source, dialect, extra)
        return for_psycopg(sql, strings_escaped=escaped) if dialect == "postgres" else sql

    pick = statement.copy()
    whole_row = exp.Cast(
        this=exp.Anonymous(
            this="ROW",
            expressions=[exp.Column(this=exp.Star(), table=exp.to_identifier(alias))],
        ),
        to=exp.DataType.build("text"),
    )
    pick.set("returning", exp.Returning(expressions=[exp.column("ctid"), whole_row]))
    returning = statement.args.get("returning")
    returning_sql = (
        "" if returning is None else f" {regenerate(returning, analysis.parsed.source, dialect)}"
    )
    as_alias = f" AS {table.args['alias'].sql(dialect)}" if table.alias else ""
    insert = (
        f"INSERT INTO {table_sql}{as_alias} SELECT (CAST(r AS {table_sql})).* "
        f"FROM unnest(CAST(%({ROWS})s AS text[])) WITH ORDINALITY AS u(r, n) ORDER BY n"
        f"{returning_sql}"
    )
    insert = for_psycopg(insert, strings_escaped=escaped)
    return Move(
        target=target,
        update=write(statement),
        pick=write(pick, frozenset({"ctid", "row", "text", "returning"})),
        delete=f"DELETE FROM {table_sql} WHERE ctid = ANY(CAST(%({TIDS})s AS tid[]))",
        insert=insert,
        params={} if bound is None else bound,
    )
