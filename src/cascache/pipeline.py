"""The request path, top to bottom: policy, exact, semantic, upstream, write-back.

Reads like the diagram in DESIGN.md. Every tier is called by name; none of
them knows which store, embedder or provider sits behind its protocol. Cache
failures fail open: the request is served from upstream and the failure is
counted, never shown to the client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field

import orjson

from cascache._types import CacheEntry, ChatRequest, Served, Vector
from cascache.config import Settings
from cascache.embedders.base import Embedder
from cascache.keys import RequestKeys, make_scope, request_keys
from cascache.metrics import Metrics
from cascache.policy import HEADER_USER, Decision, decide
from cascache.providers.base import Provider
from cascache.stores.base import Store
from cascache.tiers.exact import ExactTier
from cascache.tiers.semantic import SemanticTier
from cascache.tiers.writeback import WriteBack
from cascache.upstreams.base import Upstream, UpstreamReply

SSE_MEDIA_TYPE = "text/event-stream"


@dataclass(slots=True)
class Outcome:
    """What to send back: a whole body or a stream, with status and headers."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


def caller_key(headers: Mapping[str, str]) -> str | None:
    """The caller's API key (Bearer token or x-api-key); it only ever enters a hash."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


class Pipeline:
    def __init__(
        self, settings: Settings, store: Store, embedder: Embedder, upstream: Upstream, metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.exact = ExactTier(store, metrics, enabled=settings.exact.enabled)
        self.semantic = SemanticTier(store, embedder, metrics, threshold=settings.semantic.threshold,
                                     k=settings.semantic.k, enabled=settings.semantic.enabled)
        self.writeback = WriteBack(store, metrics)

    async def handle(self, provider: Provider, request: ChatRequest, raw_body: bytes,
                     headers: Mapping[str, str]) -> Outcome:
        now = self.clock()
        decision = decide(request, headers, self.settings.policy)
        scope = make_scope(caller_key(headers), request.user or headers.get(HEADER_USER))
        keys = request_keys(request, scope, decision.version, self.embedder.name)
        vector: Vector | None = None
        if decision.lookup:
            entry = await self.exact.lookup(keys.fingerprint, scope, now)
            if entry is not None:
                return await self._replay(provider, request, entry, Served.HIT_EXACT, None, now)
            if keys.namespace is not None and request.semantic_text is not None:
                found = await self.semantic.lookup(keys.namespace, scope, request.semantic_text, now)
                self.metrics.stage_seconds.labels("embed").observe(found.embed_s)
                self.metrics.stage_seconds.labels("search").observe(found.search_s)
                if found.entry is not None:
                    return await self._replay(provider, request, found.entry, Served.HIT_SEMANTIC,
                                              found.similarity, now)
                vector = found.vector
        served = Served.MISS if decision.lookup else Served.BYPASS
        return await self._from_upstream(provider, request, raw_body, headers, keys, decision, vector, served)

    async def _replay(self, provider: Provider, request: ChatRequest, entry: CacheEntry, served: Served,
                      similarity: float | None, now: float) -> Outcome:
        try:
            await self.store.record_hit(entry.id, now)
        except Exception:
            self.metrics.tier_errors.labels("store", "record_hit").inc()
        self._count(provider, served)
        self.metrics.tokens.labels("input", "true").inc(entry.usage.input_tokens)
        self.metrics.tokens.labels("output", "true").inc(entry.usage.output_tokens)
        headers = {"x-cascache": served.value, "x-cascache-entry": entry.id}
        if similarity is not None:
            headers["x-cascache-similarity"] = f"{similarity:.4f}"
        if request.stream:
            headers["content-type"] = SSE_MEDIA_TYPE
            return Outcome(200, headers, stream=_aiter(provider.replay_sse(entry.response, request.include_usage)))
        headers["content-type"] = "application/json"
        return Outcome(200, headers, body=orjson.dumps(provider.replay_json(entry.response)))

    async def _from_upstream(self, provider: Provider, request: ChatRequest, raw_body: bytes,
                             headers: Mapping[str, str], keys: RequestKeys, decision: Decision,
                             vector: Vector | None, served: Served) -> Outcome:
        started = time.perf_counter()
        body = provider.upstream_body(request, raw_body)
        reply = await self.upstream.post(provider.chat_path, body, headers, stream=request.stream)
        self._count(provider, served)
        out_headers = {**reply.headers, "x-cascache": served.value}
        if reply.chunks is not None:
            return Outcome(reply.status, out_headers,
                           stream=self._relay(provider, request, reply, keys, decision, vector, started))
        self.metrics.stage_seconds.labels("upstream").observe(time.perf_counter() - started)
        if reply.status == 200 and decision.store and reply.body:
            try:
                response = orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                response = None
            if isinstance(response, dict) and provider.is_complete(response):
                await self._write_back(provider, request, keys, decision, response, vector)
        return Outcome(reply.status, out_headers, body=reply.body)

    async def _relay(self, provider: Provider, request: ChatRequest, reply: UpstreamReply, keys: RequestKeys,
                     decision: Decision, vector: Vector | None, started: float) -> AsyncIterator[bytes]:
        """Pass a live stream through while assembling it; write back only a stream that ended cleanly.

        A client that disconnects closes this generator at a `yield`, so the
        write-back below is never reached for an abandoned stream.
        """
        assembler = provider.assembler()
        assert reply.chunks is not None
        pending = b""
        try:
            async for chunk in reply.chunks:
                # Forward whole SSE events only, so each can be assembled and filtered.
                pending += chunk
                *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
                for event in events:
                    assembler.feed_bytes(event + b"\n\n")
                    forwarded = provider.client_event(event + b"\n\n", request)
                    if forwarded is not None:
                        yield forwarded
            if pending.strip():
                assembler.feed_bytes(pending + b"\n")
                yield pending
        except Exception as exc:  # the stream broke after headers were sent: tell the client in-band
            self.metrics.upstream_errors.labels(type(exc).__name__).inc()
            yield provider.stream_error_event(str(exc), getattr(exc, "error_type", "upstream_error"))
            return
        finally:
            await reply.close()
        self.metrics.stage_seconds.labels("upstream").observe(time.perf_counter() - started)
        if decision.store and assembler.ended_cleanly:
            response = assembler.response()
            if provider.is_complete(response):
                await self._write_back(provider, request, keys, decision, response, vector)

    async def _write_back(self, provider: Provider, request: ChatRequest, keys: RequestKeys, decision: Decision,
                          response: dict[str, object], vector: Vector | None) -> None:
        if vector is None and keys.namespace is not None and request.semantic_text is not None:
            vector = await self.semantic.embed(request.semantic_text)
        usage = provider.usage(response)
        self.metrics.tokens.labels("input", "false").inc(usage.input_tokens)
        self.metrics.tokens.labels("output", "false").inc(usage.output_tokens)
        await self.writeback.write(request, keys, decision, response, usage, vector, self.clock())

    def _count(self, provider: Provider, served: Served) -> None:
        self.metrics.requests.labels(served.value, provider.name).inc()


async def _aiter(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
