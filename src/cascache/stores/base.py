"""The `Store` protocol: where entries live and how they are found.

Every store passes the one contract suite in `tests/contract/test_store_contract.py`.
Stores are async; an embedded store may run its blocking work in a thread.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cascache._types import CacheEntry, Fingerprint, Namespace, PurgeSelector, Scope, StoreStats, Vector


@runtime_checkable
class Store(Protocol):
    """Persistent home of cache entries.

    Invariants every store keeps:
    - an expired entry (``entry.is_expired(now)``) is never returned;
    - ``nearest`` only returns entries of the given namespace *and* scope;
    - ``put`` of an entry whose fingerprint exists replaces the old entry;
    - when over capacity, the least recently used entries are evicted.
    """

    async def get(self, fingerprint: Fingerprint, scope: Scope, now: float) -> CacheEntry | None:
        """The live entry with this fingerprint in this scope, or None."""
        ...

    async def nearest(
        self, namespace: Namespace, scope: Scope, vector: Vector, k: int, now: float
    ) -> list[tuple[CacheEntry, float]]:
        """Up to k live entries of the namespace and scope, most similar first, with cosine similarity."""
        ...

    async def put(self, entry: CacheEntry) -> None: ...

    async def record_hit(self, entry_id: str, now: float) -> None:
        """Count a hit and refresh the entry's recency (LRU)."""
        ...

    async def purge(self, selector: PurgeSelector) -> int:
        """Delete the selected entries; returns how many were removed."""
        ...

    async def sweep(self, now: float) -> int:
        """Delete expired entries; returns how many were removed."""
        ...

    async def list_entries(self, offset: int = 0, limit: int = 50) -> list[CacheEntry]:
        """Entries, newest first, for inspection."""
        ...

    async def stats(self) -> StoreStats: ...

    async def close(self) -> None: ...
