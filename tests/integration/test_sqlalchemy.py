"""The SQLAlchemy dialects: engines, reflection, pandas, Core and ORM over real shards.

Every answer is compared with one database holding all the rows (PostgreSQL:
the ``pg_single`` cluster; SQLite: one file), written and read through
SQLAlchemy's own dialect for it.
"""

from __future__ import annotations

import decimal
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import shardq
import shardq.sqlalchemy  # registers the dialects

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.fixtures.servers import PgCluster

DATABASE = "sqla"
PG_SCHEMA = """
CREATE TABLE orders (
    customer_id integer NOT NULL, id integer NOT NULL, total numeric(10, 2),
    note text DEFAULT 'new', PRIMARY KEY (customer_id, id)
);
CREATE INDEX orders_total ON orders (total);
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE scratch (x integer);
"""
SQLITE_SCHEMA = PG_SCHEMA.replace("numeric(10, 2)", "REAL")
TABLES = {"orders": {"shard_key": "customer_id"}, "countries": {"reference": True}}
ORDERS = [
    (c, c * 100 + i, decimal.Decimal(f"{c * 3 + i}.25"), f"n{i}")
    for c in range(1, 41)
    for i in range(3)
]
COUNTRIES = [("DE", "Germany"), ("FR", "France"), ("JP", "Japan")]


def _pg_load(cluster: PgCluster, orders: list[Any], countries: list[Any]) -> None:
    cluster.drop_database(DATABASE)
    cluster.create_database(DATABASE)
    cluster.execute(PG_SCHEMA, DATABASE)
    import psycopg

    with psycopg.connect(cluster.dsn(DATABASE), autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s)", orders)
        cur.executemany("INSERT INTO countries VALUES (%s, %s)", countries)


def _config(dialect: str, dsns: list[str]) -> dict[str, Any]:
    shards = [{"name": f"s{i}", "dsn": dsn} for i, dsn in enumerate(dsns)]
    return {"dialect": dialect, "shards": shards, "tables": TABLES}


def _rows_of(config: dict[str, Any], shard: int) -> list[Any]:
    placement = shardq.load_config(config).placement
    return [row for row in ORDERS if placement.shard_for(row[0]) == f"s{shard}"]


@pytest.fixture(scope="module")
def pg(pg_clusters: list[PgCluster], pg_single: PgCluster) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """(the sharded engine, the single database's engine), loaded with the same rows."""
    config = _config("postgres", [c.dsn(DATABASE) for c in pg_clusters])
    for i, cluster in enumerate(pg_clusters):
        _pg_load(cluster, _rows_of(config, i), COUNTRIES)
    _pg_load(pg_single, ORDERS, COUNTRIES)
    sharded = sa.create_engine("shardq+postgresql://", connect_args={"config": config})
    single = sa.create_engine(
        pg_single.dsn(DATABASE).replace("postgresql://", "postgresql+psycopg://")
    )
    yield sharded, single
    sharded.dispose()
    single.dispose()


def _sqlite_load(path: Path, orders: list[Any]) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(SQLITE_SCHEMA)
        db.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?)", [(*r[:2], float(r[2]), r[3]) for r in orders]
        )
        db.executemany("INSERT INTO countries VALUES (?, ?)", COUNTRIES)
    db.close()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[tuple[sa.Engine, sa.Engine, Path]]:
    """SQLite shards and one SQLite file: engines, and the folder holding ``shardq.toml``."""
    paths = [tmp_path / f"s{i}.db" for i in range(4)]
    config = _config("sqlite", [p.name for p in paths])
    for i, path in enumerate(paths):
        _sqlite_load(path, _rows_of(config, i))
    _sqlite_load(tmp_path / "single.db", ORDERS)
    lines = ['dialect = "sqlite"']
    for shard in config["shards"]:
        lines += ["[[shards]]", f'name = "{shard["name"]}"', f'dsn = "{shard["dsn"]}"']
    lines += [
        "[tables.orders]",
        'shard_key = "customer_id"',
        "[tables.countries]",
        "reference = true",
    ]
    (tmp_path / "shardq.toml").write_text("\n".join(lines) + "\n")
    sharded = sa.create_engine(f"shardq+sqlite:///{tmp_path}/shardq.toml")
    single = sa.create_engine(f"sqlite:///{tmp_path}/single.db")
    yield sharded, single, tmp_path
    sharded.dispose()
    single.dispose()


# -- URLs


def test_the_url_names_the_configuration_relative_or_absolute(
    lite: tuple[sa.Engine, sa.Engine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, folder = lite
    monkeypatch.chdir(folder)
    count = sa.text("SELECT count(*) FROM orders")
    engines = [
        sa.create_engine("shardq+sqlite:///shardq.toml"),  # relative to the working directory
        sa.create_engine(f"shardq+sqlite:///{folder}/shardq.toml"),  # absolute: four slashes
        sa.create_engine(f"shardq+sqlite://?config={folder}/shardq.toml"),
        sa.create_engine("shardq+sqlite://", connect_args={"config": str(folder / "shardq.toml")}),
        sa.create_engine(
            "shardq+sqlite://", creator=lambda: shardq.connect(folder / "shardq.toml")
        ),
        sa.create_engine("shardq+sqlite:///shardq.toml?timeout=5&fetch_size=100"),
        sa.create_engine("shardq+sqlite:///shardq.toml", pool_pre_ping=True),
    ]
    assert f"{folder}".startswith("/")
    for engine in engines:
        for _ in range(2):  # the second from the pool (pinged first by the pre-ping engine)
            with engine.connect() as conn:
                assert conn.scalar(count) == len(ORDERS)
        engine.dispose()
    with pytest.raises(shardq.InterfaceError, match="unknown option 'colour'"):
        sa.create_engine("shardq+sqlite:///shardq.toml?colour=red")
    with pytest.raises(sa.exc.InterfaceError, match="names its configuration") as raised:
        sa.create_engine("shardq+sqlite://").connect()
    assert isinstance(raised.value.orig, shardq.InterfaceError)


def test_the_dialects_are_sqlalchemys_with_shardqs_placeholders(pg: Any) -> None:
    sharded, _ = pg
    assert sharded.dialect.name == "postgresql"
    assert sharded.dialect.driver == "shardq"
    assert sharded.dialect.paramstyle == shardq.paramstyle == "pyformat"
    lite_dialect = sa.create_engine("shardq+sqlite:///x.toml").dialect
    assert lite_dialect.name == "sqlite"
    assert lite_dialect.paramstyle == "qmark"


# -- reflection


def _reflected(engine: sa.Engine, table: str) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    columns = [
        (c["name"], repr(c["type"]), c["nullable"], c["default"])
        for c in inspector.get_columns(table)
    ]
    indexes = sorted(
        (i["name"], i["column_names"], i["unique"]) for i in inspector.get_indexes(table)
    )
    return {
        "columns": columns,
        "pk": inspector.get_pk_constraint(table)["constrained_columns"],
        "indexes": indexes,
    }


@pytest.mark.parametrize("backend", ["pg", "lite"])
def test_reflection_answers_from_the_shards_catalog_for_declared_tables_only(
    backend: str, request: pytest.FixtureRequest
) -> None:
    sharded, single, *_ = request.getfixturevalue(backend)
    inspector = sa.inspect(sharded)
    assert sorted(inspector.get_table_names()) == ["countries", "orders"]
    assert "scratch" in sa.inspect(single).get_table_names()  # on every shard, not declared
    assert inspector.has_table("orders")
    assert not inspector.has_table("scratch")
    for table in ("orders", "countries"):
        assert _reflected(sharded, table) == _reflected(single, table)
    orders = sa.Table("orders", sa.MetaData(), autoload_with=sharded)
    assert [c.name for c in orders.primary_key] == ["customer_id", "id"]
    metadata = sa.MetaData()
    metadata.reflect(sharded)
    assert sorted(metadata.tables) == ["countries", "orders"]
    assert sorted(name for _, name in inspector.get_multi_columns()) == ["countries", "orders"]
    assert sorted(name for _, name in inspector.get_multi_indexes()) == ["countries", "orders"]


def test_the_dialects_are_found_by_their_entry_points() -> None:
    # A fresh interpreter that never imports shardq.sqlalchemy itself.
    code = (
        "import sqlalchemy as sa\n"
        "for url in ('shardq+postgresql:///a.toml', 'shardq+sqlite:///a.toml'):\n"
        "    print(type(sa.create_engine(url).dialect).__name__)\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["ShardqPGDialect", "ShardqSQLiteDialect"]


def test_transactions_and_autocommit_are_shardqs(pg: Any) -> None:
    sharded, _ = pg
    with sharded.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        assert isinstance(dbapi_connection, shardq.Connection)
        assert conn.get_isolation_level() == "READ COMMITTED"
        conn.execute(sa.text("INSERT INTO orders (customer_id, id) VALUES (901, 1), (902, 2)"))
        assert dbapi_connection.in_transaction  # begun by the first statement
        conn.rollback()
        assert conn.scalar(sa.text("SELECT count(*) FROM orders WHERE customer_id > 900")) == 0
    with sharded.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("INSERT INTO orders (customer_id, id) VALUES (901, 1)"))
        assert not conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
        conn.execute(sa.text("DELETE FROM orders WHERE customer_id = 901"))
    with sharded.connect() as conn:  # the pool's connection, given back to transactions
        assert conn.get_isolation_level() == "READ COMMITTED"
        assert not conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
    with (
        pytest.raises(sa.exc.ArgumentError, match=r"are AUTOCOMMIT, READ COMMITTED$"),
        sharded.connect() as conn,
    ):
        conn.execution_options(isolation_level="REPEATABLE READ")


# -- pandas


@pytest.mark.parametrize("backend", ["pg", "lite"])
def test_read_sql_gives_the_single_databases_frame(
    backend: str, request: pytest.FixtureRequest
) -> None:
    sharded, single, *_ = request.getfixturevalue(backend)
    queries = [
        "SELECT customer_id, count(*) AS n, sum(total) AS total FROM orders "
        "GROUP BY customer_id ORDER BY customer_id",
        "SELECT o.id, c.name FROM orders o JOIN countries c ON c.code = 'DE' ORDER BY o.id LIMIT 7",
    ]
    for sql in queries:  # filterwarnings = error: pandas warns of a DB-API connection
        pd.testing.assert_frame_equal(pd.read_sql(sql, sharded), pd.read_sql(sql, single))
    # A literal % beside bound values (SQLAlchemy writes %% for psycopg's placeholders).
    query = sa.text("SELECT id, note FROM orders WHERE note LIKE 'n%' AND customer_id IN (:a, :b)")
    for params in ({"a": 3, "b": 4}, {"a": 5, "b": 40}):
        pd.testing.assert_frame_equal(
            pd.read_sql(query, sharded, params=params).sort_values("id", ignore_index=True),
            pd.read_sql(query, single, params=params).sort_values("id", ignore_index=True),
        )
    frame = pd.read_sql_table("countries", sharded)
    pd.testing.assert_frame_equal(frame, pd.read_sql_table("countries", single))


def test_to_sql_appends_rows_routed_by_their_key(pg: Any, pg_clusters: list[PgCluster]) -> None:
    sharded, single = pg
    frame = pd.DataFrame(
        {"customer_id": [501, 502, 503, 504, 505], "id": [1, 2, 3, 4, 5],
         "total": [1.5, 2.5, 3.5, 4.5, 5.5], "note": list("abcde")}
    )  # fmt: skip
    try:
        assert frame.to_sql("orders", sharded, if_exists="append", index=False) == 5
        frame.to_sql("orders", single, if_exists="append", index=False)
        sql = "SELECT * FROM orders WHERE customer_id > 500 ORDER BY id"
        pd.testing.assert_frame_equal(pd.read_sql(sql, sharded), pd.read_sql(sql, single))
        with sharded.connect() as conn:
            shard_for = conn.connection.dbapi_connection.shard_for  # type: ignore[union-attr]
            for i, cluster in enumerate(pg_clusters):
                for (key,) in cluster.execute(
                    "SELECT customer_id FROM orders WHERE customer_id > 500", DATABASE
                ):
                    assert shard_for("orders", key) == f"s{i}"
    finally:
        for engine in (sharded, single):
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM orders WHERE customer_id > 500"))


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables shardq.Cursor.copy_in is asked to load, in order."""
    calls: list[str] = []
    copy_in = shardq.Cursor.copy_in

    def spy(self: shardq.Cursor, table: str, *args: Any, **kw: Any) -> Any:
        calls.append(table)
        return copy_in(self, table, *args, **kw)

    monkeypatch.setattr(shardq.Cursor, "copy_in", spy)
    return calls


def test_an_executemany_insert_is_a_copy_per_shard_on_postgres(
    pg: Any, pg_clusters: list[PgCluster], copies: list[str]
) -> None:
    sharded, single = pg
    orders = sa.Table("orders", sa.MetaData(), autoload_with=sharded)
    countries = sa.Table("countries", sa.MetaData(), autoload_with=sharded)
    rows = [{"customer_id": 900 + i, "id": i, "total": i} for i in range(40)]
    plain = sa.create_engine(
        sharded.url, copy_executemany=False, connect_args={"config": _cfg(sharded)}
    )
    try:
        with sharded.begin() as conn:
            assert conn.execute(orders.insert(), rows).rowcount == 40
        with single.begin() as conn:
            conn.execute(orders.insert(), rows)
        assert copies == ["orders"]
        with sharded.begin() as conn:  # not a COPY: RETURNING, ON CONFLICT, a reference table
            conn.execute(
                orders.insert().returning(orders.c.id),
                [{**r, "customer_id": 990} for r in rows[:2]],
            )
            conn.execute(sa.dialects.postgresql.insert(orders).on_conflict_do_nothing(), rows[:3])
            conn.execute(
                countries.insert(), [{"code": "X1", "name": "x"}, {"code": "X2", "name": "y"}]
            )
            conn.execute(countries.delete().where(countries.c.code.in_(["X1", "X2"])))
        with plain.begin() as conn:
            conn.execute(orders.insert(), [{**r, "customer_id": 991} for r in rows[:3]])
        assert copies == ["orders"]
        sql = (
            "SELECT customer_id, id, total, note FROM orders "
            "WHERE customer_id BETWEEN 900 AND 939 ORDER BY 1, 2"
        )
        pd.testing.assert_frame_equal(
            pd.read_sql(sql, sharded), pd.read_sql(sql, single)
        )  # note: its default
        on_shards = [
            c.execute(
                "SELECT count(*) FROM orders WHERE customer_id BETWEEN 900 AND 939", DATABASE
            )[0][0]
            for c in pg_clusters
        ]
        assert sum(on_shards) == 40
        assert sum(1 for n in on_shards if n) > 1
    finally:
        plain.dispose()
        for engine in (sharded, single):
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM orders WHERE customer_id >= 900"))


def _cfg(engine: sa.Engine) -> Any:
    with engine.connect() as conn:
        return conn.connection.dbapi_connection.config  # type: ignore[union-attr]


def test_to_sql_can_load_through_copy(pg: Any, pg_clusters: list[PgCluster]) -> None:
    sharded, single = pg
    frame = pd.DataFrame(
        {"customer_id": range(701, 761), "id": range(60), "total": [i / 4 for i in range(60)]}
    )
    try:
        loaded = frame.to_sql(
            "orders", sharded, if_exists="append", index=False, method=shardq.sqlalchemy.copy_rows
        )
        assert loaded == 60
        frame.to_sql("orders", single, if_exists="append", index=False)
        sql = "SELECT * FROM orders WHERE customer_id > 700 ORDER BY customer_id"
        pd.testing.assert_frame_equal(pd.read_sql(sql, sharded), pd.read_sql(sql, single))
        on_shards = [
            cluster.execute("SELECT count(*) FROM orders WHERE customer_id > 700", DATABASE)[0][0]
            for cluster in pg_clusters
        ]
        assert sum(on_shards) == 60
        assert sum(1 for n in on_shards if n) > 1  # spread over the shards by key
    finally:
        for engine in (sharded, single):
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM orders WHERE customer_id > 700"))


def test_to_sql_on_sqlite_shards_writes_one_shard_per_transaction(
    lite: tuple[sa.Engine, sa.Engine, Path],
) -> None:
    sharded, single, _ = lite
    rows = {"customer_id": [501, 502, 503, 504], "id": [1, 2, 3, 4], "total": [1.5, 2.5, 3.5, 4.5]}
    # In a transaction: refused, as a transaction writing on several SQLite shards is.
    with pytest.raises(Exception, match="two-phase commit"):
        pd.DataFrame(rows).to_sql("orders", sharded, if_exists="append", index=False)
    orders = sa.Table("orders", sa.MetaData(), autoload_with=sharded)
    # (pandas commits what ran before an error, as it does on one SQLite file; a
    # transaction that rolls back keeps nothing.)
    params = [{"customer_id": 520 + i, "id": i, "total": 1} for i in range(1, 5)]
    with pytest.raises(sa.exc.NotSupportedError, match="two-phase commit"), sharded.begin() as conn:
        conn.execute(orders.insert(), params)
    kept = "SELECT count(*) AS n FROM orders WHERE customer_id BETWEEN 521 AND 524"
    assert pd.read_sql(kept, sharded)["n"].tolist() == [0]
    # AUTOCOMMIT: each row commits on its own shard.
    frame = pd.DataFrame({**rows, "customer_id": [511, 512, 513, 514]})
    autocommit = sharded.execution_options(isolation_level="AUTOCOMMIT")
    assert frame.to_sql("orders", autocommit, if_exists="append", index=False) == 4
    frame.to_sql("orders", single, if_exists="append", index=False)
    sql = "SELECT * FROM orders WHERE customer_id > 510 ORDER BY customer_id, id"
    pd.testing.assert_frame_equal(pd.read_sql(sql, sharded), pd.read_sql(sql, single))


# -- Core and ORM


def _core_run(engine: sa.Engine, *, unpinned_writes: bool = True) -> list[Any]:
    orders = sa.Table("orders", sa.MetaData(), autoload_with=engine)
    out: list[Any] = []
    with engine.begin() as conn:
        conn.execute(
            orders.insert(),
            [
                {"customer_id": 601, "id": 1, "total": 10},
                {"customer_id": 602, "id": 2, "total": 20},
            ],
        )
        out.append(
            conn.execute(
                orders.update().where(orders.c.customer_id == 601).values(total=orders.c.total + 1)
            ).rowcount
        )
        if unpinned_writes:  # on every shard: two-phase commit (refused on SQLite shards)
            out.append(
                conn.execute(
                    orders.update().where(orders.c.total > 100).values(note="big")
                ).rowcount
            )
        out.append(conn.execute(orders.delete().where(orders.c.customer_id == 602)).rowcount)
    with engine.connect() as conn:
        query = sa.select(orders.c.customer_id, sa.func.count(), sa.func.sum(orders.c.total))
        out.append(
            conn.execute(query.group_by(orders.c.customer_id).order_by(orders.c.customer_id)).all()
        )
        out.append(
            conn.execute(
                sa.select(orders).where(orders.c.note == "big").order_by(orders.c.id)
            ).all()
        )
        out.append(conn.execute(sa.select(orders).where(orders.c.customer_id == 601)).all())
    with engine.begin() as conn:
        for key in (601, 602):
            conn.execute(orders.delete().where(orders.c.customer_id == key))
        if unpinned_writes:
            conn.execute(orders.update().where(orders.c.note == "big").values(note="n2"))
    return out


@pytest.mark.parametrize("backend", ["pg", "lite"])
def test_core_statements_give_the_single_databases_answers(
    backend: str, request: pytest.FixtureRequest
) -> None:
    sharded, single, *_ = request.getfixturevalue(backend)
    pg = backend == "pg"
    if not pg:  # SQLite shards: one shard written per transaction
        sharded = sharded.execution_options(isolation_level="AUTOCOMMIT")
    assert _core_run(sharded, unpinned_writes=pg) == _core_run(single, unpinned_writes=pg)


class _Base(DeclarativeBase):
    pass


class Order(_Base):
    __tablename__ = "orders"
    customer_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[decimal.Decimal | None]
    note: Mapped[str | None]


def test_an_orm_session_queries_adds_commits_and_rolls_back(pg: Any) -> None:
    sharded, single = pg
    for engine in (sharded, single):
        with Session(engine) as session:
            assert session.get(Order, (7, 701)) is not None
            session.add_all(
                [Order(customer_id=801, id=1, total=1), Order(customer_id=802, id=2, total=2)]
            )
            session.commit()
            session.add(Order(customer_id=803, id=3, total=3))
            session.flush()
            assert session.scalar(sa.select(sa.func.count()).where(Order.customer_id > 800)) == 3
            session.rollback()
            kept = session.scalars(
                sa.select(Order).where(Order.customer_id > 800).order_by(Order.id)
            )
            assert [(o.customer_id, o.total) for o in kept] == [(801, 1), (802, 2)]
            with session.begin_nested():  # a savepoint on every shard joined
                session.add(Order(customer_id=804, id=4, total=4))
            nested = session.begin_nested()
            session.add(Order(customer_id=805, id=5, total=5))
            session.flush()
            nested.rollback()
            session.commit()
            kept = session.scalars(sa.select(Order.customer_id).where(Order.customer_id > 800))
            assert sorted(kept) == [801, 802, 804]
            session.execute(sa.delete(Order).where(Order.customer_id > 800))
            session.commit()
    queries = [
        sa.select(Order.customer_id, Order.id, Order.total)
        .where(Order.total > 100)
        .order_by(Order.id)
    ]
    for query in queries:
        with Session(sharded) as a, Session(single) as b:
            assert a.execute(query).all() == b.execute(query).all()
