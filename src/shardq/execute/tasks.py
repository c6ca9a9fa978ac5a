"""Task groups whose failure is raised as itself.

:class:`asyncio.TaskGroup` raises an :class:`ExceptionGroup` of what its tasks
raised; shardq's callers expect the shard's own error (a
:class:`~shardq.errors.ShardError` naming it, a timeout, a cancellation), the
first one, as one statement on one database would raise one error.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["first_failure"]


@contextlib.contextmanager
def first_failure() -> Iterator[None]:
    """Re-raise the first exception of a task group's failure, out of its group.

    >>> import asyncio
    >>> async def fail():
    ...     raise ValueError("the first")
    >>> async def main():
    ...     with first_failure():
    ...         async with asyncio.TaskGroup() as group:
    ...             group.create_task(fail())
    >>> asyncio.run(main())
    Traceback (most recent call last):
    ...
    ValueError: the first
    """
    try:
        yield
    except BaseExceptionGroup as failed:
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from first.__cause__
