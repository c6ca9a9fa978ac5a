"""Hosts: a shard's primary and its replicas, and which one a read goes to.

A shard may list replicas (``replicas = ["postgresql://...", ...]`` beside
``dsn``), PostgreSQL standbys of its primary, each with a pool of its own.
Writes, transactions and everything shardq runs for itself (the catalog,
two-phase commit, recovery) go to the primary; a read outside a transaction
goes where the *read policy* says (the configuration's ``read_policy``, the
connection's, or the call's):

``primary`` (the default)
    the primary: every read sees every committed write.
``prefer-replica``
    the replicas in turn; the primary when the shard has none.
``replica-only``
    the replicas in turn; a shard without one is an error.
``round-robin``
    the primary and the replicas in turn.

A replica answers with what it has replayed: a read on it may not see a
write committed on the primary a moment before (``primary`` and reads
inside a transaction always do).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from shardq.config import READ_POLICIES
from shardq.errors import ProgrammingError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from shardq.execute.driver import ShardPool

__all__ = ["READ_POLICIES", "Hosts", "check_policy"]


def check_policy(policy: str) -> str:
    """``policy`` if it is a read policy; else a ProgrammingError naming the choices."""
    if policy not in READ_POLICIES:
        raise ProgrammingError(
            f"read_policy must be one of {', '.join(map(repr, READ_POLICIES))}, not {policy!r}"
        )
    return policy


class Hosts:
    """The pools of every shard's replicas, and the choice of one per read."""

    def __init__(
        self, primaries: Mapping[str, ShardPool], replicas: Mapping[str, Sequence[ShardPool]]
    ):
        self.primaries = dict(primaries)
        self.replicas = {name: list(pools) for name, pools in replicas.items() if pools}
        # One turn per shard and policy, so that reads spread evenly.
        self._turns: dict[tuple[str, str], Iterator[ShardPool]] = {}

    def __bool__(self) -> bool:
        """Whether any shard has a replica (else every read goes to the primaries)."""
        return bool(self.replicas)

    def pools(self) -> Iterator[ShardPool]:
        """Every replica pool (to close them)."""
        for pools in self.replicas.values():
            yield from pools

    def for_reads(self, policy: str) -> dict[str, ShardPool]:
        """A pool per shard for one read under ``policy``."""
        if policy == "primary" or not self:
            if policy == "replica-only":
                raise self._none(next(iter(self.primaries)))
            return self.primaries
        return {name: self._pick(name, policy) for name in self.primaries}

    def _pick(self, shard: str, policy: str) -> ShardPool:
        replicas = self.replicas.get(shard)
        if not replicas:
            if policy == "replica-only":
                raise self._none(shard)
            return self.primaries[shard]
        turn = self._turns.get((shard, policy))
        if turn is None:
            hosts = replicas if policy != "round-robin" else [self.primaries[shard], *replicas]
            turn = self._turns[(shard, policy)] = itertools.cycle(hosts)
        return next(turn)

    @staticmethod
    def _none(shard: str) -> ProgrammingError:
        return ProgrammingError(
            f"read_policy 'replica-only', but shard {shard!r} has no replicas in the configuration"
        )
