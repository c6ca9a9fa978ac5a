"""Merging: the shards' results into one result, streaming and IO-free.

A merger is a generator in the style of psycopg's ``generators.py``: it
yields :class:`Fetch` to ask for the next batch of one shard's rows (and is
sent that batch, empty once the shard is exhausted) and yields a list of rows
to emit them. The engine drives it with whatever IO it uses, so mergers never
import asyncio or a driver and are tested without a database.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

__all__ = ["Fetch", "Merger", "Rows"]

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Fetch:
    """A merger's request for the next batch of source ``source``."""

    source: int


Merger = Generator[Fetch | Rows, Rows | None, None]
