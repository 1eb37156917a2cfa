"""Write-back: only complete, successful, cacheable answers enter Tier 1."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from cascache._types import CacheEntry, ChatRequest, Usage, Vector
from cascache.keys import RequestKeys
from cascache.metrics import Metrics
from cascache.policy import Decision
from cascache.stores.base import Store
from cascache.tiers.failure_log import FailureLog

log = logging.getLogger(__name__)


class WriteBack:
    """Stores an answer under the request's fingerprint (and its vector, for the semantic tier).

    The caller checks completeness (provider adapter's `is_complete`) before
    calling; a store failure drops the write (fail open), logged and counted.
    """

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._failures = FailureLog(log, "write-back failed; answer served but not cached")

    async def write(
        self,
        request: ChatRequest,
        keys: RequestKeys,
        decision: Decision,
        response: Mapping[str, Any],
        usage: Usage,
        vector: Vector | None,
        now: float,
    ) -> CacheEntry | None:
        semantic = keys.namespace is not None and vector is not None
        entry = CacheEntry(
            id=uuid.uuid4().hex,
            fingerprint=keys.fingerprint,
            # An exact-only entry still needs a namespace for purges; it gets the
            # fingerprint, which no semantic lookup can ever name.
            namespace=keys.namespace if keys.namespace is not None else keys.fingerprint,  # type: ignore[arg-type]
            scope=keys.scope,
            version=keys.version,
            provider=request.provider,
            model=request.model,
            query=request.semantic_text if semantic else None,
            vector=vector if semantic else None,
            response=dict(response),
            usage=usage,
            created_at=now,
            expires_at=None if decision.ttl_s is None else now + decision.ttl_s,
            tags=decision.tags,
        )
        try:
            await self._store.put(entry)
        except Exception:
            self._failures.failed()
            self._metrics.writebacks.labels("error").inc()
            return None
        self._metrics.writebacks.labels("stored").inc()
        return entry
