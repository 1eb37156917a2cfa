"""`MemoryStore`: everything in dicts, nearest by brute-force cosine.

The reference implementation of the `Store` contract and the store of unit
tests. Nothing survives the process; nothing here does IO.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

from cascache._types import CacheEntry, Fingerprint, Namespace, PurgeSelector, Scope, StoreStats, Vector

__all__ = ["MemoryStore"]


class MemoryStore:
    """A `Store` held in process memory.

    Recency (for LRU eviction) is the order of `put` and `record_hit` calls,
    kept by an `OrderedDict`: O(1) per operation. It equals the order of
    `last_hit_at`/`created_at` that `SqliteHnswStore` evicts by whenever the
    caller's clock moves forward, as the pipeline's does.

    Entries are copied on the way in and out, so a caller mutating an entry it
    holds can never change what the store serves (as with a persistent store).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        """id -> entry, least recently used first."""
        self._by_fingerprint: dict[Fingerprint, str] = {}
        self._by_namespace: dict[Namespace, dict[str, Vector]] = {}
        """namespace -> {id: L2-normalised vector}, only entries that have a vector."""
        self._evictions = 0
        self._expired_swept = 0

    async def get(self, fingerprint: Fingerprint, scope: Scope, now: float) -> CacheEntry | None:
        entry_id = self._by_fingerprint.get(fingerprint)
        if entry_id is None:
            return None
        entry = self._entries[entry_id]
        if entry.scope != scope or entry.is_expired(now):
            return None
        return _copy(entry)

    async def nearest(
        self, namespace: Namespace, scope: Scope, vector: Vector, k: int, now: float
    ) -> list[tuple[CacheEntry, float]]:
        vectors = self._by_namespace.get(namespace)
        if not vectors or k <= 0:
            return []
        ids = list(vectors)
        similarities = np.stack([vectors[i] for i in ids]) @ _normalised(vector)
        found: list[tuple[CacheEntry, float]] = []
        for position in np.argsort(-similarities, kind="stable"):
            entry = self._entries[ids[position]]
            if entry.scope != scope or entry.is_expired(now):
                continue
            found.append((_copy(entry), float(similarities[position])))
            if len(found) == k:
                break
        return found

    async def put(self, entry: CacheEntry) -> None:
        old_id = self._by_fingerprint.get(entry.fingerprint)
        if old_id is not None:
            self._remove(old_id)
        if entry.id in self._entries:
            self._remove(entry.id)
        stored = _copy(entry)
        if stored.vector is not None:
            # Our own read-only copy: nobody can change a stored vector in place.
            stored.vector = np.array(stored.vector, dtype=np.float32)
            stored.vector.setflags(write=False)
        self._entries[stored.id] = stored
        self._by_fingerprint[stored.fingerprint] = stored.id
        if stored.vector is not None:
            self._by_namespace.setdefault(stored.namespace, {})[stored.id] = _normalised(stored.vector)
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))
            self._evictions += 1

    async def record_hit(self, entry_id: str, now: float) -> None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return
        entry.hits += 1
        entry.last_hit_at = now
        self._entries.move_to_end(entry_id)

    async def purge(self, selector: PurgeSelector) -> int:
        doomed = [entry.id for entry in self._entries.values() if _selected(entry, selector)]
        for entry_id in doomed:
            self._remove(entry_id)
        return len(doomed)

    async def sweep(self, now: float) -> int:
        doomed = [entry.id for entry in self._entries.values() if entry.is_expired(now)]
        for entry_id in doomed:
            self._remove(entry_id)
        self._expired_swept += len(doomed)
        return len(doomed)

    async def list_entries(self, offset: int = 0, limit: int = 50) -> list[CacheEntry]:
        """Newest first: the most recently put entry first (hits do not reorder)."""
        newest_first = self._entries_by_insertion()[::-1]
        return [_copy(entry) for entry in newest_first[offset : offset + limit]]

    async def stats(self) -> StoreStats:
        return StoreStats(
            entries=len(self._entries),
            namespaces=len({entry.namespace for entry in self._entries.values()}),
            evictions=self._evictions,
            expired_swept=self._expired_swept,
            extra={"max_entries": self.max_entries},
        )

    async def close(self) -> None:
        """Nothing to persist; the store stays usable (closing is idempotent)."""

    def _entries_by_insertion(self) -> list[CacheEntry]:
        # `_by_fingerprint` is only ever appended to in put order (hits do not
        # reorder it), so it remembers insertion order where `_entries` cannot.
        return [self._entries[entry_id] for entry_id in self._by_fingerprint.values()]

    def _remove(self, entry_id: str) -> None:
        entry = self._entries.pop(entry_id)
        del self._by_fingerprint[entry.fingerprint]
        vectors = self._by_namespace.get(entry.namespace)
        if vectors is not None and vectors.pop(entry_id, None) is not None and not vectors:
            del self._by_namespace[entry.namespace]


def _selected(entry: CacheEntry, selector: PurgeSelector) -> bool:
    if selector.all:
        return True
    if selector.id is not None:
        return entry.id == selector.id
    if selector.namespace is not None:
        return entry.namespace == selector.namespace
    if selector.version is not None:
        return entry.version == selector.version
    if selector.scope is not None:
        return entry.scope == selector.scope
    return selector.tag in entry.tags


def _normalised(vector: Vector) -> Vector:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _copy(entry: CacheEntry) -> CacheEntry:
    """A shallow copy: the mutable counters are the store's own, the payload is shared read-only."""
    return dataclasses.replace(entry)
