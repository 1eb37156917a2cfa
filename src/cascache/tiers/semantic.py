"""Tier 1b: the semantic cache (embed the query, nearest stored query in the namespace, accept?)."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Literal

from cascache._types import CacheEntry, Namespace, Scope, Vector
from cascache.embedders.base import Embedder
from cascache.metrics import Metrics
from cascache.stores.base import Store
from cascache.tiers.failure_log import FailureLog
from cascache.tiers.consensus import ConsensusRule, choose_with_consensus
from cascache.tiers.guards import GuardSet, Veto
from cascache.tiers.verify import (
    Action,
    EntryStats,
    EntryStatsBook,
    Probe,
    VerifiedAcceptance,
    pool_key,
    static_verdict,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SemanticLookup:
    """The result of one semantic lookup, hit or not."""

    entry: CacheEntry | None
    """The accepted entry, or None."""
    similarity: float | None
    """Cosine similarity of the accepted entry; on a miss, of the best candidate (None: no candidate)."""
    vector: Vector | None
    """The query's embedding, reused by the write-back on a miss."""
    embed_s: float = 0.0
    search_s: float = 0.0
    veto: Veto | None = None
    """The guard that refused a candidate clearing the threshold, if any (for logs and metrics)."""
    probe: Probe | None = None
    """A candidate to judge against a fresh answer (verified mode's exploration, or a monitoring sample)."""
    consensus: bool = False
    """True: served below the threshold because its nearest neighbours agreed (`tiers.consensus`)."""


class SemanticTier:
    """Serves the most similar of the k nearest candidates that clears the threshold and passes the guards.

    Only candidates of the request's namespace (same model, system prompt,
    earlier turns, parameters, scope, version, embedder) are ever compared.
    The decision itself is `tiers.consensus.choose_with_consensus` (pure;
    `cascache eval` calls the same function): `tiers.guards.choose`, then,
    with `consensus` set and in static mode only, answer consensus below the
    threshold. Embedder or store failures are misses (fail open), logged and
    counted.
    """

    def __init__(
        self, store: Store, embedder: Embedder, metrics: Metrics, threshold: float, k: int = 1, enabled: bool = True,
        guards: GuardSet | None = None, *, acceptance: VerifiedAcceptance | None = None,
        book: EntryStatsBook | None = None, sample_share: float = 0.0, rng: random.Random | None = None,
        consensus: ConsensusRule | None = None,
    ) -> None:
        self.acceptance = acceptance
        """Verified mode's decision; None: the static threshold decides."""
        self.book = book if book is not None else EntryStatsBook()
        self.sample_share = sample_share
        self._rng = rng or random.Random()
        self._store = store
        self._embedder = embedder
        self._metrics = metrics
        self._embed_failures = FailureLog(log, "embedding failed; semantic tier skipped")
        self._search_failures = FailureLog(log, "semantic search failed; serving from upstream")
        self.threshold = threshold
        self.k = k
        self.enabled = enabled
        self.guards = guards if guards is not None else GuardSet(())
        self.consensus = consensus
        """Answer consensus below the threshold (static mode only); None: off."""

    async def embed(self, text: str) -> Vector | None:
        if not self.enabled:  # a disabled tier never pays for the embedding model
            return None
        try:
            return (await self._embedder.embed([text]))[0]
        except Exception:
            self._embed_failures.failed()
            self._metrics.tier_errors.labels("semantic", "embed").inc()
            return None

    async def lookup(self, namespace: Namespace, scope: Scope, text: str, now: float, *,
                     threshold: float | None = None, vector: Vector | None = None,
                     category: str | None = None, delta: float | None = None,
                     consensus: ConsensusRule | None | Literal["tier"] = "tier") -> SemanticLookup:
        """`threshold` overrides the tier's (a category's); `vector` is the query's, when already embedded.

        `consensus`: "tier", the tier's own rule; a rule, or None (off), overrides it (a category's).
        """
        if not self.enabled:
            return SemanticLookup(entry=None, similarity=None, vector=None)
        started = time.perf_counter()
        if vector is None:
            vector = await self.embed(text)
        embedded = time.perf_counter()
        if vector is None:
            return SemanticLookup(entry=None, similarity=None, vector=None, embed_s=embedded - started)
        # Verified mode learns its own thresholds: consensus would go around them, so it is off there.
        rule = None if self.acceptance is not None else self.consensus if consensus == "tier" else consensus
        fetch = max(self.k, rule.k) if rule is not None else self.k
        try:
            candidates = await self._store.nearest(namespace, scope, vector, fetch, now)
        except Exception:
            self._search_failures.failed()
            self._metrics.tier_errors.labels("semantic", "search").inc()
            candidates = []
        searched = time.perf_counter()
        if self.acceptance is not None:  # verified: guards still veto; from the floor up, tiers.verify decides
            accept_from = self.acceptance.params.min_similarity
        else:
            accept_from = self.threshold if threshold is None else threshold
        choice = choose_with_consensus(candidates, namespace=namespace, scope=scope, now=now,
                                       threshold=accept_from, query=text, guards=self.guards, k=self.k,
                                       rule=rule)
        if choice.similarity is not None:
            self._metrics.semantic_similarity.observe(choice.similarity)
        if choice.entry is None and choice.veto is not None:
            self._metrics.semantic_vetoes.labels(choice.veto.guard).inc()
        entry, probe = self._accept(namespace, category, text, choice.entry, choice.accepted_similarity, delta)
        if choice.consensus and entry is not None:
            self._metrics.semantic_consensus_hits.inc()
        return SemanticLookup(
            entry=entry,
            similarity=choice.accepted_similarity if choice.entry is not None else choice.similarity,
            vector=vector,
            embed_s=embedded - started,
            search_s=searched - embedded,
            veto=choice.veto,
            probe=probe,
            consensus=choice.consensus and entry is not None,
        )

    def _accept(self, namespace: Namespace, category: str | None, text: str, entry: CacheEntry | None,
                similarity: float | None, delta: float | None) -> tuple[CacheEntry | None, Probe | None]:
        """Serve `entry`? Static: it already cleared the threshold. Verified: `tiers.verify` decides."""
        if entry is None or similarity is None:
            return None, None
        pool = pool_key(namespace, category)
        stats = EntryStats()
        if self.acceptance is None:
            verdict = static_verdict(self._rng, self.sample_share)
        else:
            stats = self.book.get(entry.id, entry.verify_stats)
            verdict = self.acceptance.decide(pool, stats, similarity, self._rng, delta)
        probe = None
        if verdict.verify:
            probe = Probe(pool=pool, namespace=namespace, category=category, entry_id=entry.id,
                          similarity=similarity, query=text, cached_response=entry.response,
                          verdict=verdict, stats=stats)
        return (entry if verdict.action is Action.EXPLOIT else None), probe
