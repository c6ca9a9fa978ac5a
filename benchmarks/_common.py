"""What every benchmark script needs besides its own measurements.

Imported as ``_common``: each script runs as ``python benchmarks/NAME.py``,
with this folder first on ``sys.path``.
"""

from __future__ import annotations

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

__all__ = ["command_line", "interrupt_on_sigterm", "maxrss", "stamp"]


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


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Handle SIGTERM (as ``timeout`` sends it) like Ctrl-C: the servers are stopped."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
