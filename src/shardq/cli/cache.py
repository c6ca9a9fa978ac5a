"""``shardq cache stats`` and ``shardq cache clear``: the shared result cache, from outside.

Both read the ``[cache]`` section of the configuration. Only a shared (Redis)
cache can be seen from another process: a ``memory://`` cache lives inside
each application process.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from shardq.cache.backend import BackendUnavailable
from shardq.cache.regions import DEFAULT, Regions
from shardq.cli.arguments import add_config_argument, config_path
from shardq.cli.exit_codes import ExitCode
from shardq.config import load_config
from shardq.errors import ProgrammingError

if TYPE_CHECKING:
    import argparse

    from shardq.cache.region import CacheRegion

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "cache",
        help="show or clear the shared result cache",
        description="Show the counters of the shared (Redis) result cache, or clear it.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = actions.add_parser("stats", help="lookups, hits, misses, entries")
    clear = actions.add_parser(
        "clear", help="drop every cached result, or only those that read a table"
    )
    clear.add_argument(
        "--table",
        action="append",
        metavar="T",
        help="only results that read table T (repeatable): they stop being served",
    )
    for sub in (stats, clear):
        add_config_argument(sub)
        sub.add_argument(
            "--region", default=DEFAULT, help="a region of [cache.regions] (default: the default)"
        )
        sub.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args))
    if config.cache is None or config.cache.url.startswith("memory:"):
        print(
            "shardq: error: the configuration has no shared cache ([cache] url = "
            '"redis://..."); a memory cache lives inside each application process',
            file=sys.stderr,
        )
        return ExitCode.USAGE
    # Declared names only: a typo must not look like a successful clear.
    tables = tuple(sorted({config.table(t).name for t in getattr(args, "table", None) or ()}))
    regions = Regions(config, None)
    try:
        region = regions.named(args.region)
    except ProgrammingError as exc:
        print(f"shardq: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        return asyncio.run(_act(args, regions, region, tables))
    except BackendUnavailable as exc:
        print(f"shardq: error: the cache server failed: {exc}", file=sys.stderr)
        return ExitCode.FAILED


async def _act(
    args: argparse.Namespace, regions: Regions, region: CacheRegion, tables: tuple[str, ...]
) -> int:
    try:
        if args.action == "stats":
            counts = await region.stats()
            lookups = counts.get("lookup", 0)
            misses = counts.get("miss", 0)
            stale = counts.get("stale", 0)
            hits = max(0, lookups - misses - stale)
            ratio = f"{hits / lookups:.1%}" if lookups else "-"
            print(f"region {region.name}: {region.backend!r}")
            print(f"lookups  {lookups}")
            print(f"hits     {hits} ({ratio})")
            print(f"stale    {stale}")
            print(f"misses   {misses}")
            print(f"entries  {counts.get('entries', 0)}")
        elif tables:
            await region.backend.bump(tables)
            print(f"results that read {', '.join(tables)} are no longer served")
        else:
            dropped = await region.clear()
            print(f"dropped {dropped} cached result(s)")
    finally:
        await regions.close()
    return ExitCode.OK
