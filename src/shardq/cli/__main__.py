"""Entry point of the ``shardq`` command (also ``python -m shardq.cli``)."""

from __future__ import annotations

import argparse
import logging
import sys

from shardq.cli import (
    batch,
    cache,
    check,
    demo,
    explain,
    load,
    query,
    recover,
    shell,
    stats,
    verify,
)
from shardq.cli.exit_codes import ExitCode, exit_code_for
from shardq.errors import Error

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardq",
        description="Run SQL across many database shards as if they were one database.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (query, batch, explain, verify, shell, check, stats, load, recover, cache, demo):
        module.add_parser(commands)
    return parser


def _version() -> str:
    import shardq

    return f"shardq {shardq.__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (see :mod:`shardq.cli.exit_codes`)."""
    # sqlglot logs parser fallbacks as warnings; shardq reports its own errors.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Error as exc:
        print(f"shardq: error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):  # e.g. which statement of a batch
            print(f"shardq: {note}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("shardq: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
