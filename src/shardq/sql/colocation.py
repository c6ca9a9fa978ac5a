"""Co-location: distributed tables joined on their shard keys stay on one shard.

Tables declared co-located (``colocate_with``, transitively) place equal key
values on the same shard. When a query joins such tables by equality of their
keys, every joined row combines rows of one shard only, so the join runs
whole on each shard and a condition pinning any one key pins them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shardq.config import Config

__all__ = ["colocation_group"]


def colocation_group(config: Config, table: str) -> str:
    """The table at the root of ``table``'s ``colocate_with`` chain.

    >>> from shardq.config import load_config
    >>> cfg = load_config({"shards": [{"name": "a", "dsn": "a.db"}], "tables": {
    ...     "o": {"shard_key": "k"}, "l": {"shard_key": "k", "colocate_with": "o"},
    ...     "x": {"shard_key": "k"}}})
    >>> colocation_group(cfg, "l"), colocation_group(cfg, "x")
    ('o', 'x')
    """
    seen = {table}
    current = config.tables[table]
    while current.colocate_with is not None and current.colocate_with not in seen:
        seen.add(current.colocate_with)
        current = config.tables[current.colocate_with]
    return current.name
