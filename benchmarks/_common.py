"""What every benchmark script needs besides its own measurements.

Imported as ``_common``: each script runs as ``python benchmarks/NAME.py``,
with this folder first on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import platform
import resource
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

    from tests.fixtures.servers import PgCluster

__all__ = [
    "command_line",
    "interrupt_on_sigterm",
    "maxrss",
    "peak_rss",
    "reset_peak_rss",
    "rss",
    "stamp",
    "stop_clusters",
    "trim_heap",
    "versions",
]


def command_line(script: str, argv: Sequence[str]) -> str:
    """How ``script`` was run with ``argv``, without its ``--json PATH``."""
    words: list[str] = []
    skip = False
    for word in argv:
        if not skip and word != "--json" and not word.startswith("--json="):
            words.append(word)
        skip = word == "--json"
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *words])


def stamp() -> dict[str, Any]:
    """The ``date`` and ``machine`` of a results file."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }


def maxrss() -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux, bytes on macOS)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss() -> int | None:
    """The resident set size of this process in bytes, or None without ``/proc``."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss() -> int:
    """The peak RSS in bytes since the process started or :func:`reset_peak_rss` was called.

    Linux: ``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``, which survives
    ``exec`` (a child started from a large process reports the parent's size).
    Elsewhere :func:`maxrss`.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return maxrss()


def reset_peak_rss() -> bool:
    """Restart :func:`peak_rss` from the current RSS (Linux 4.0+); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Give the heap's free memory back to the OS (glibc only), so the RSS is what is in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Handle SIGTERM (as ``timeout`` sends it) like Ctrl-C: the servers are stopped."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def stop_clusters(clusters: Sequence[PgCluster]) -> None:
    """Stop every cluster by its pid, each whatever the others do; say which were stopped."""
    pids = [cluster.pid for cluster in clusters]
    for cluster in clusters:
        try:
            cluster.stop()
        except Exception as exc:
            print(f"could not stop {cluster.name} (pid {cluster.pid}): {exc}", file=sys.stderr)
    print(f"\nstopped the PostgreSQL clusters (pids {', '.join(map(str, pids))})")


def versions(*others: str) -> str:
    """The line a run's output starts with: Python, psycopg and libpq, ``others``, shardq.

    ``others`` are the alternatives' "name version" strings, in the order to print them.
    """
    import psycopg

    import shardq

    return ", ".join(
        [
            f"python {platform.python_version()} ({platform.python_implementation()})",
            f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()})",
            *others,
            f"shardq {shardq.__version__}",
            f"{os.cpu_count()} cores",
        ]
    )
