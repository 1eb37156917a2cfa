"""Tier 1b: the semantic cache (embed the query, nearest stored query in the namespace, accept?)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cascache._types import CacheEntry, Namespace, Scope, Vector
from cascache.embedders.base import Embedder
from cascache.metrics import Metrics
from cascache.stores.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SemanticLookup:
    """The result of one semantic lookup, hit or not."""

    entry: CacheEntry | None
    """The accepted entry, or None."""
    similarity: float | None
    """Cosine similarity of the best candidate (accepted or not)."""
    vector: Vector | None
    """The query's embedding, reused by the write-back on a miss."""
    embed_s: float = 0.0
    search_s: float = 0.0


class SemanticTier:
    """Accepts the nearest candidate when its cosine similarity clears the threshold.

    Only candidates of the request's namespace (same model, system prompt,
    earlier turns, parameters, scope, version, embedder) are ever compared.
    Embedder or store failures are misses (fail open), logged and counted.
    """

    def __init__(
        self, store: Store, embedder: Embedder, metrics: Metrics, threshold: float, k: int = 1, enabled: bool = True
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._metrics = metrics
        self.threshold = threshold
        self.k = k
        self.enabled = enabled

    async def embed(self, text: str) -> Vector | None:
        try:
            return (await self._embedder.embed([text]))[0]
        except Exception:
            log.exception("embedding failed; semantic tier skipped")
            self._metrics.tier_errors.labels("semantic", "embed").inc()
            return None

    async def lookup(self, namespace: Namespace, scope: Scope, text: str, now: float) -> SemanticLookup:
        if not self.enabled:
            return SemanticLookup(entry=None, similarity=None, vector=None)
        started = time.perf_counter()
        vector = await self.embed(text)
        embedded = time.perf_counter()
        if vector is None:
            return SemanticLookup(entry=None, similarity=None, vector=None, embed_s=embedded - started)
        try:
            candidates = await self._store.nearest(namespace, scope, vector, self.k, now)
        except Exception:
            log.exception("semantic search failed; serving from upstream")
            self._metrics.tier_errors.labels("semantic", "search").inc()
            candidates = []
        searched = time.perf_counter()
        best: tuple[CacheEntry, float] | None = None
        for entry, similarity in candidates:
            # Defence in depth: the store filters by namespace and scope already.
            if entry.namespace != namespace or entry.scope != scope or entry.is_expired(now):
                continue
            if best is None or similarity > best[1]:
                best = (entry, similarity)
        if best is not None:
            self._metrics.semantic_similarity.observe(best[1])
        accepted = best[0] if best is not None and best[1] >= self.threshold else None
        return SemanticLookup(
            entry=accepted,
            similarity=best[1] if best is not None else None,
            vector=vector,
            embed_s=embedded - started,
            search_s=searched - embedded,
        )
