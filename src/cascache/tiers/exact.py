"""Tier 1a: the exact-match response cache."""

from __future__ import annotations

import logging

from cascache._types import CacheEntry, Fingerprint, Scope
from cascache.metrics import Metrics
from cascache.stores.base import Store
from cascache.tiers.failure_log import FailureLog

log = logging.getLogger(__name__)


class ExactTier:
    """Finds the entry whose fingerprint equals the request's, in the request's scope.

    A store failure is a miss (fail open), logged and counted, never an error
    for the client.
    """

    def __init__(self, store: Store, metrics: Metrics, enabled: bool = True) -> None:
        self._store = store
        self._metrics = metrics
        self.enabled = enabled
        self._failures = FailureLog(log, "exact lookup failed; serving from upstream")

    async def lookup(self, fingerprint: Fingerprint, scope: Scope, now: float) -> CacheEntry | None:
        if not self.enabled:
            return None
        try:
            entry = await self._store.get(fingerprint, scope, now)
        except Exception:
            self._failures.failed()
            self._metrics.tier_errors.labels("exact", "lookup").inc()
            return None
        # Stores already filter by scope and expiry; checking again here costs
        # nothing and keeps the security property independent of any one store.
        if entry is None or entry.scope != scope or entry.is_expired(now):
            return None
        return entry
