"""What the random SQLite queries are drawn from: sources, expressions, filters, parameters.

Every expression comes with its :data:`.sqlite_compare.Fold`, or None: the
fold says which distinct values SQLite treats as equal in it (its collation,
``number`` for ``1`` against ``1.0``, ``elements`` for a concatenation in an
arbitrary order), so that :mod:`.sqlite_queries` knows how to compare and
order what it returns. An expression holding ``?`` comes with the values its
parameters may take (:class:`Param`), of every type SQLite binds: int, float,
text, bytes and None.

Sources (:data:`SOURCES`) join ``ev`` with the co-located ``ev2`` (``JOIN ...
ON e.id = f.id``, and the comma form with the condition in WHERE) and with
the reference table ``kind``; in a join ``id`` is ambiguous, so the shared
expressions have their ``id`` written ``e.id`` (:func:`qualified`).
Subqueries never mention ``id``: qualified, it would make them correlated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tests.differential.sqlite_compare import Fold, elements, nocase, number, rtrim

Expr = tuple[str, Fold | None]


def _then(first: Fold, second: Fold) -> Fold:
    def fold(value: Any) -> Any:
        return second(first(value))

    return fold


@dataclass(frozen=True)
class Param:
    """An expression with ``?`` parameters and the tuples of values they may take."""

    text: str
    values: tuple[tuple[Any, ...], ...]
    fold: Fold | None = None


@dataclass(frozen=True)
class Source:
    """A FROM clause and the expressions it adds to the pools."""

    text: str
    condition: str = ""  # the join condition of the comma form, ANDed into WHERE
    rows: tuple[Expr, ...] = ()
    keys: tuple[Expr, ...] = ()
    aggregates: tuple[Expr, ...] = ()
    joined: bool = False  # ``id`` is ambiguous: written ``e.id``
    filters: tuple[str, ...] = field(default=())


ROW_EXPRS: list[Expr] = [
    ("id", None), ("name", None), ("name COLLATE NOCASE", nocase), ("name COLLATE RTRIM", rtrim),
    ("note", nocase), ("note COLLATE BINARY", None), ("grp", None), ("amount", None),
    ("qty", None), ("flag", None), ("ts", None), ("mixed", number), ("abs(qty)", None),
    ("round(amount, 1)", None), ("length(name)", None), ("lower(name)", None),
    ("upper(note)", None), ("trim(name)", None), ("substr(name, 2)", None),
    ("substr(ts, 1, 10)", None), ("coalesce(qty, flag, -1)", None),
    ("ifnull(note, 'none')", None), ("nullif(flag, 0)", None), ("iif(flag, 'y', 'n')", None),
    ("typeof(mixed)", None), ("typeof(grp)", None), ("instr(name, 'n')", None),
    ("replace(name, 'n', 'N')", None), ("printf('%.2f', amount)", None),
    ("format('%d-%s', qty, name)", None), ("strftime('%H', ts)", None), ("date(ts)", None),
    ("julianday(ts)", None), ("CAST(amount AS INTEGER)", None), ("CAST(grp AS REAL)", None),
    ("CAST(qty AS TEXT)", None), ("CAST(ts AS NUMERIC)", None), ("CAST(note AS TEXT)", nocase),
    ("CAST(name AS BLOB)", None), ("CAST(mixed AS REAL)", None), ("CAST(mixed AS INTEGER)", None),
    ("CAST(grp AS NUMERIC)", None), ("CAST(amount AS TEXT)", None), ("CAST(qty AS BLOB)", None),
    ("qty * 1.5", None), ("qty + amount", None), ("qty / 2", None), ("qty % 3", None),
    ("grp * 2", None), ("-amount", None), ("flag + 0.5", None),
    ("CASE WHEN qty > 2 THEN 'hi' WHEN qty IS NULL THEN NULL ELSE 'lo' END", None),
    ("CASE flag WHEN 1 THEN amount ELSE qty END", None),
    ("CASE WHEN name LIKE 'a%' THEN 1 ELSE 0.5 END", None),
    ("name LIKE 'a%'", None), ("name GLOB '[A-Z]*'", None), ("note LIKE 'r%'", None),
    ("qty BETWEEN 1 AND 5", None), ("grp IN (1, 2, '12')", None), ("mixed IN (1, 'abc')", None),
    ("(SELECT count(*) FROM ev2)", None), ("qty - (SELECT min(qty) FROM ev)", None),
    ("amount > (SELECT avg(amount) FROM ev)", None),
]  # fmt: skip
GROUP_KEYS: list[Expr] = [
    ("grp", None), ("flag", None), ("name", None), ("name COLLATE NOCASE", nocase),
    ("note", nocase), ("name COLLATE RTRIM", rtrim), ("mixed", number), ("typeof(mixed)", None),
    ("lower(name)", None), ("length(name)", None), ("strftime('%H', ts)", None),
    ("substr(ts, 1, 10)", None), ("qty % 3", None), ("iif(flag, 'y', 'n')", None),
    ("CAST(amount AS INTEGER)", None), ("CAST(mixed AS TEXT)", None),
    ("CAST(grp AS NUMERIC)", number), ("CASE WHEN qty > 2 THEN 'hi' ELSE 'lo' END", None),
    ("name GLOB '[a-z]*'", None),
]  # fmt: skip
AGGREGATES: list[Expr] = [
    ("count(*)", None), ("count(name)", None), ("count(DISTINCT name)", None),
    ("count(DISTINCT name COLLATE NOCASE)", None), ("count(DISTINCT note)", None),
    ("count(DISTINCT mixed)", None), ("sum(qty)", None), ("sum(grp)", None),
    ("sum(amount)", None), ("sum(flag)", None), ("total(qty)", None), ("total(amount)", None),
    ("avg(qty)", None), ("avg(amount)", None), ("avg(flag)", None), ("min(name)", None),
    ("max(name)", None), ("min(name COLLATE NOCASE)", nocase), ("max(note)", nocase),
    ("min(name COLLATE RTRIM)", rtrim), ("min(grp)", None), ("max(grp)", None),
    ("min(mixed)", number), ("max(mixed)", number), ("min(ts)", None), ("max(amount)", None),
    ("group_concat(name, '|')", elements("|")), ("group_concat(DISTINCT flag)", elements()),
    ("group_concat(qty)", elements()), ("count(*) * 1.0 / 3", None), ("max(qty) * 1.5", None),
    ("sum(qty) / 3.0", None), ("sum(flag) + 0.5", None), ("sum(amount) % 7", None),
    ("CAST(avg(qty) AS INTEGER)", None), ("round(avg(amount), 2)", None),
    ("round(sum(qty))", None), ("typeof(sum(grp))", None), ("julianday(max(ts))", None),
    ("abs(min(qty))", None), ("coalesce(max(flag), -1)", None),
    ("iif(count(*) > 5, 'many', 'few')", None), ("sum(flag) / count(*)", None),
    ("printf('%.3f', avg(qty))", None), ("nullif(min(flag), 0)", None),
    ("length(max(name))", None), ("upper(min(name))", None), ("substr(max(ts), 1, 7)", None),
    ("CAST(max(amount) AS TEXT)", None), ("max(qty) - min(qty)", None),
    ("ifnull(sum(grp), 0)", None),
    # DISTINCT aggregates under collations, group_concat with separators
    ("count(DISTINCT name COLLATE RTRIM)", None), ("count(DISTINCT lower(name))", None),
    ("sum(DISTINCT qty)", None), ("avg(DISTINCT amount)", None), ("total(DISTINCT mixed)", None),
    ("max(DISTINCT name COLLATE NOCASE)", nocase),
    ("group_concat(DISTINCT name COLLATE NOCASE)", _then(nocase, elements())),
    ("group_concat(DISTINCT note)", _then(nocase, elements())),
    ("group_concat(name, ', ')", elements(", ")), ("group_concat(qty, ' - ')", elements(" - ")),
    ("group_concat(amount, ';')", elements(";")),
    # CASE, CAST to each affinity, scalar subqueries (run first on SQLite shards)
    ("sum(CASE WHEN flag THEN qty END)", None), ("count(CASE WHEN amount > 1 THEN 1 END)", None),
    ("CASE WHEN count(*) > 5 THEN 'many' ELSE 'few' END", None),
    ("max(CASE WHEN flag THEN name END)", None), ("CAST(sum(amount) AS INTEGER)", None),
    ("CAST(count(*) AS TEXT)", None), ("CAST(total(qty) AS NUMERIC)", None),
    ("CAST(min(name) AS BLOB)", None), ("CAST(max(ts) AS REAL)", None),
    ("count(*) * 1.0 / (SELECT count(*) FROM ev)", None),
    ("sum(qty) - (SELECT min(qty) FROM ev)", None),
    ("max(name) < (SELECT max(name) FROM ev)", None),
    ("count(*) > (SELECT avg(flag) FROM ev)", None),
]  # fmt: skip
HAVINGS = [
    "count(*) > 3", "sum(qty) > 10", "min(flag) = 0", "max(name) > 5", "total(amount) > 0",
    "avg(qty) < 10", "count(DISTINCT name COLLATE NOCASE) > 1", "max(qty) > 2",
    "min(name) < 'b'", "total(amount) BETWEEN 0 AND 100", "sum(CASE WHEN flag THEN 1 END) > 2",
    "avg(qty) > (SELECT avg(qty) FROM ev)", "count(DISTINCT note) IN (1, 2)",
]  # fmt: skip
FILTERS = [
    "qty > 2", "name = 'ann'", "note = 'red'", "name COLLATE NOCASE = 'ann'", "grp > 5",
    "amount < 1", "mixed = 1", "ts >= '2024-03-15'", "flag", "id < 80", "name LIKE 'a%'",
    "qty IS NULL", "typeof(grp) = 'text'", "id = 5", "id = 77", "id IN (3, 50, 97)",
    "qty BETWEEN 1 AND 5", "amount BETWEEN -1 AND 2.5", "name BETWEEN 'a' AND 'b'",
    "note BETWEEN 'b' AND 'r'", "qty NOT BETWEEN 0 AND 2", "grp IN (1, 2, '12')",
    "name IN ('Ann', 'b', 'é')", "note IN ('red', 'blue')", "mixed IN (1, 'abc', X'616263')",
    "qty NOT IN (0, 1)", "name LIKE '_n%'", "name GLOB '[A-Z]*'", "note LIKE 'R%'",
    "name NOT GLOB '*n*'", "ts LIKE '2024-03-1_%'", "CASE WHEN qty > 2 THEN flag ELSE 1 END",
    "qty > (SELECT avg(qty) FROM ev)", "amount < (SELECT max(amount) FROM ev WHERE flag)",
    "grp = (SELECT min(code) FROM kind)", "name > (SELECT min(name) FROM ev)",
    "flag < (SELECT count(*) FROM ev2) / 100", "grp IN (SELECT code FROM kind)",
]  # fmt: skip
# Parameters of every type SQLite binds; ``id = ?`` pins the query to one shard.
PARAM_FILTERS = [
    Param("id = ?", ((5,), (77,), (5.0,), ("77",), (None,))),
    Param("qty > ?", ((2,), (2.5,), ("2",), (None,))),
    Param("name >= ?", (("ann",), ("B",), (b"abc",))),
    Param("note = ?", (("red",), ("RED",))),
    Param("mixed = ?", ((1,), (1.0,), ("abc",), (b"abc",), (b"\x00\x01",), (None,))),
    Param("amount < ?", ((0.15,), (1,), ("n/a",))),
    Param("flag IS ?", ((None,), (1,), (1.0,))),
    Param("ts BETWEEN ? AND ?", (("2024-03-10", "2024-03-20"), (b"2024", "2025"))),
    Param("coalesce(qty, ?) > 1", ((None,), (5,), (0.5,))),
    Param("id IN (?, ?)", ((3, 50), (77, None))),
    Param("name IN (?, ?)", (("ann", None), ("b  ", b"x"))),
    Param("? IS NULL", ((None,), (0,))),
    Param("name LIKE ?", (("a%",), ("%N",))),
    Param("mixed BETWEEN ? AND ?", ((0, 2), ("a", "b"), (b"", b"b"))),
]
PARAM_ROWS = [
    Param("?", ((1,), (2.5,), ("x",), (b"\x01",), (None,))),
    Param("typeof(?)", ((1,), (2.5,), ("x",), (b"\x01",), (None,))),
    Param("qty + ?", ((1,), (0.5,), (None,), ("2",))),
    Param("coalesce(name, ?)", (("none",), (b"z",))),
    Param("CASE WHEN flag THEN ? ELSE 0 END", ((1.5,), ("y",))),
]
PARAM_AGGREGATES = [
    Param("?", ((1,), (2.5,), ("x",), (b"\x01",), (None,))),
    Param("count(*) + ?", ((1,), (0.5,), (None,))),
    Param("sum(qty) * ?", ((2,), (1.5,), ("3",))),
    Param("group_concat(name, ?)", (("|",),), elements("|")),
    Param("group_concat(qty, ?)", (("; ",),), elements("; ")),
]
_EV2_ROWS: tuple[Expr, ...] = (
    ("f.seq", None), ("tag", rtrim), ("f.tag COLLATE NOCASE", nocase), ("f.score", None),
    ("score * 2", None), ("length(tag)", None), ("f.id", None),
)  # fmt: skip
_EV2_KEYS: tuple[Expr, ...] = (("tag", rtrim), ("f.seq", None), ("f.score", None))
_EV2_AGGREGATES: tuple[Expr, ...] = (
    ("total(f.score)", None), ("count(f.tag)", None), ("max(f.seq)", None),
    ("count(DISTINCT tag)", None), ("min(tag)", rtrim), ("avg(score)", None),
    ("group_concat(tag, '/')", elements("/")), ("sum(f.seq * e.qty)", None),
)  # fmt: skip
_KIND_ROWS: tuple[Expr, ...] = (("k.label", nocase), ("k.code", None), ("upper(label)", None))
_KIND_KEYS: tuple[Expr, ...] = (("k.label", nocase), ("k.code", None))
_KIND_AGGREGATES: tuple[Expr, ...] = (
    ("count(k.code)", None), ("max(k.label)", nocase), ("count(DISTINCT label)", None),
    ("min(label COLLATE BINARY)", None),
)  # fmt: skip
SOURCES = [
    Source("ev"),
    Source("ev e JOIN ev2 f ON e.id = f.id", rows=_EV2_ROWS, keys=_EV2_KEYS,
           aggregates=_EV2_AGGREGATES, joined=True, filters=("f.seq > 0", "tag = 'x'")),
    Source("ev e, ev2 f", "e.id = f.id", rows=_EV2_ROWS, keys=_EV2_KEYS,
           aggregates=_EV2_AGGREGATES, joined=True, filters=("score > 0", "f.tag > 'x'")),
    Source("ev e JOIN kind k ON k.code = e.grp", rows=_KIND_ROWS, keys=_KIND_KEYS,
           aggregates=_KIND_AGGREGATES, joined=True, filters=("label > 'S'",)),
    Source("ev e LEFT JOIN kind k ON k.code = e.grp", rows=_KIND_ROWS, keys=_KIND_KEYS,
           aggregates=_KIND_AGGREGATES, joined=True, filters=("k.code IS NULL",)),
    Source("ev e JOIN ev2 f ON e.id = f.id JOIN kind k ON k.code = e.grp",
           rows=_EV2_ROWS + _KIND_ROWS, keys=_EV2_KEYS + _KIND_KEYS,
           aggregates=_EV2_AGGREGATES + _KIND_AGGREGATES, joined=True),
]  # fmt: skip


def qualified(text: str, source: Source) -> str:
    """``text`` with ``id`` written ``e.id`` when ``source`` joins (``f.id`` stays).

    >>> qualified("id IN (3, f.id)", SOURCES[1]), qualified("id", SOURCES[0])
    ('e.id IN (3, f.id)', 'id')
    """
    return re.sub(r"(?<![.\w])id\b", "e.id", text) if source.joined else text
