"""The request path, top to bottom: policy, exact, semantic, coalesce, prefix, upstream, write-back.

Reads like the diagram in DESIGN.md. Every tier is called by name; none of
them knows which store, embedder or provider sits behind its protocol. Cache
failures fail open: the request is served from upstream and the failure is
counted, never shown to the client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import orjson

from cascache._errors import NoUpstream, UpstreamError
from cascache._types import CacheEntry, ChatRequest, Served, Usage, Vector
from cascache.accounting import CostBreakdown, cost, default_price_table, hit_cost
from cascache.categories import Categories, Category, apply_category
from cascache.config import Settings
from cascache.embedders.base import Embedder
from cascache.keys import RequestKeys, make_scope, request_keys
from cascache.metrics import Metrics
from cascache.policy import HEADER_USER, Decision, decide
from cascache.providers.base import Provider
from cascache.stores.base import Store
from cascache.tiers.coalesce import Coalescer, Subscription
from cascache.tiers.consensus import ConsensusRule
from cascache.tiers.exact import ExactTier
from cascache.tiers.guards import GuardSet
from cascache.tiers.prefix.tier import PREFIX_WARNING_HEADER, PrefixTier
from cascache.tiers.semantic import SemanticTier
from cascache.tiers.verify import Probe
from cascache.tiers.writeback import WriteBack
from cascache.upstreams.base import Upstream
from cascache.verification.setup import Verification, build_verification

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
        self, settings: Settings, store: Store, embedder: Embedder, upstreams: Mapping[str, Upstream],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        categories: Categories | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.upstreams = upstreams
        self.metrics = metrics
        self.clock = clock
        self.exact = ExactTier(store, metrics, enabled=settings.exact.enabled)
        self.verification: Verification = build_verification(
            settings.verification, embedder=embedder, upstreams=upstreams, store=store, registry=metrics.registry)
        self.semantic = SemanticTier(store, embedder, metrics, threshold=settings.semantic.threshold,
                                     k=settings.semantic.k, enabled=settings.semantic.enabled,
                                     guards=GuardSet(settings.semantic.guards),
                                     acceptance=self.verification.acceptance, book=self.verification.book,
                                     sample_share=self.verification.sample_share,
                                     consensus=settings.semantic.consensus_rule())
        # Without `categories` (Cache.open builds them, embedding centroid examples): header and rules only.
        self.categories = categories or Categories(settings.categories)
        self.coalescer: Coalescer[Head | bytes] = Coalescer()
        self.prefix = PrefixTier(settings.prefix, metrics, clock)
        self.prices = default_price_table().merged(settings.accounting.prices)
        self.writeback = WriteBack(store, metrics)

    async def handle(self, provider: Provider, request: ChatRequest, raw_body: bytes,
                     headers: Mapping[str, str]) -> Outcome:
        now = self.clock()
        decision = decide(request, headers, self.settings.policy)
        scope = make_scope(caller_key(headers), request.user or headers.get(HEADER_USER))
        keys = request_keys(request, scope, decision.version, self.embedder.name)
        probe: Probe | None = None
        category, vector = await self._categorise(request, headers, decision)
        decision = apply_category(decision, category, headers)
        if decision.lookup:
            entry = await self.exact.lookup(keys.fingerprint, scope, now)
            if entry is not None:
                return await self._replay(provider, request, entry, Served.HIT_EXACT, None, now)
            if keys.namespace is not None and request.semantic_text is not None:
                found = await self.semantic.lookup(
                    keys.namespace, scope, request.semantic_text, now,
                    threshold=category.threshold(self.settings.semantic.threshold), vector=vector,
                    category=category.name, delta=category.rule.delta,
                    consensus=self._consensus(category))
                self.metrics.stage_seconds.labels("embed").observe(found.embed_s)
                self.metrics.stage_seconds.labels("search").observe(found.search_s)
                if found.entry is not None:
                    outcome = await self._replay(provider, request, found.entry, Served.HIT_SEMANTIC,
                                                 found.similarity, now)
                    if found.probe is not None:  # sampled: re-asked upstream in the background, never awaited
                        self.verification.probe_hit(found.probe, self.upstreams.get(provider.name), provider,
                                                    request, headers)
                    return outcome
                vector = found.vector if found.vector is not None else vector
                probe = found.probe  # verified mode explores: the fresh answer will judge the candidate
        served = Served.MISS if decision.lookup else Served.BYPASS
        return await self._from_upstream(provider, request, raw_body, headers, keys, decision, vector, served,
                                         probe)

    def _consensus(self, category: Category) -> ConsensusRule | None | Literal["tier"]:
        """The category's answer-consensus rule; "tier" (the global one) when the category sets none."""
        if category.rule.consensus_k is None:
            return "tier"
        return self.settings.semantic.consensus_rule(category.rule.consensus_k)

    async def _categorise(self, request: ChatRequest, headers: Mapping[str, str],
                          decision: Decision) -> tuple[Category, Vector | None]:
        """The request's category (header, rule, or nearest centroid); the query vector if that needed one."""
        category = self.categories.by_header_or_rule(request.semantic_text, headers)
        if category is not None:
            return category, None
        vector = None
        if decision.lookup and self.categories.needs_vector and request.semantic_text is not None:
            vector = await self.semantic.embed(request.semantic_text)  # reused by the semantic tier
        return self.categories.by_centroid(vector), vector

    async def _replay(self, provider: Provider, request: ChatRequest, entry: CacheEntry, served: Served,
                      similarity: float | None, now: float) -> Outcome:
        try:
            await self.store.record_hit(entry.id, now)
        except Exception:
            self.metrics.tier_errors.labels("store", "record_hit").inc()
        self._count(provider, served)
        self.metrics.tokens.labels("input", "true").inc(entry.usage.input_tokens)
        self.metrics.tokens.labels("output", "true").inc(entry.usage.output_tokens)
        money = hit_cost(entry.usage, entry.model, self.prices)
        self.metrics.saved_usd.labels("tier1").inc(money.saved_usd)
        headers = {"x-cascache": served.value, "x-cascache-entry": entry.id,
                   "x-cascache-cost-usd": "0", "x-cascache-saved-usd": f"{money.saved_usd:.6f}"}
        if similarity is not None:
            headers["x-cascache-similarity"] = f"{similarity:.4f}"
        if request.stream:
            headers["content-type"] = SSE_MEDIA_TYPE
            return Outcome(200, headers, stream=_aiter(provider.replay_sse(entry.response, request.include_usage)))
        headers["content-type"] = "application/json"
        return Outcome(200, headers, body=orjson.dumps(provider.replay_json(entry.response)))

    async def _from_upstream(self, provider: Provider, request: ChatRequest, raw_body: bytes,
                             headers: Mapping[str, str], keys: RequestKeys, decision: Decision,
                             vector: Vector | None, served: Served, probe: Probe | None = None) -> Outcome:
        """Tier 3a then the upstream call: join an identical flight in progress, or start one."""
        upstream = self.upstreams.get(provider.name)
        if upstream is None:
            raise NoUpstream(f"no upstream is configured for the {provider.name} API")
        # Tier 2: shape the body for the provider's prefix cache (keys were made before, so never moved).
        kind = "anthropic" if provider.name == "anthropic" else upstream.kind
        shaped_request, shaped_bytes, shaped = self.prefix.shape(kind, request, keys.scope)
        body = provider.upstream_body(shaped_request, shaped_bytes)

        def start() -> AsyncIterator[Head | bytes]:
            return self._flight(provider, upstream, request, body, headers, keys, decision, vector, probe)

        # A request that may not be shared gets a key nobody else holds: one code path for all.
        key = (keys.fingerprint, request.stream) if self._may_coalesce(request, decision) else object()
        subscription = self.coalescer.join(key, start)
        try:
            head = await anext(subscription)
        except BaseException:
            await subscription.aclose()
            raise
        assert isinstance(head, Head)
        served = served if subscription.leader else Served.COALESCED
        self._count(provider, served)
        out_headers = {**head.headers, "x-cascache": served.value}
        warning = self.prefix.warning(shaped)
        if warning:
            out_headers[PREFIX_WARNING_HEADER] = warning
        if head.cost is not None:
            out_headers["x-cascache-cost-usd"] = f"{head.cost.cost_usd:.6f}"
            out_headers["x-cascache-saved-usd"] = f"{head.cost.saved_usd:.6f}"
        if head.body is not None:
            await subscription.aclose()
            return Outcome(head.status, out_headers, body=head.body)
        return Outcome(head.status, out_headers, stream=_client_stream(subscription, provider, request))

    def _may_coalesce(self, request: ChatRequest, decision: Decision) -> bool:
        """Only cacheable requests merge; sampled ones (temperature > 0) only when config allows."""
        settings = self.settings.coalesce
        if not settings.enabled or not decision.lookup:
            return False
        temperature = request.params.get("temperature", 1.0)  # the providers' default is sampling
        sampled = not isinstance(temperature, int | float) or temperature > 0
        return settings.merge_sampled or not sampled

    async def _flight(self, provider: Provider, upstream: Upstream, request: ChatRequest, body: bytes,
                      headers: Mapping[str, str], keys: RequestKeys, decision: Decision,
                      vector: Vector | None, probe: Probe | None = None) -> AsyncIterator[Head | bytes]:
        """One upstream call, run once per flight by the coalescer: the head, then (streaming) SSE events.

        The write-back happens here, once, at the end of a complete answer. When
        every client has gone, the coalescer cancels this generator, so an
        abandoned stream never reaches the write-back.
        """
        started = time.perf_counter()
        reply = await upstream.post(provider.chat_path, body, headers, stream=request.stream)
        if reply.chunks is None:
            self.metrics.stage_seconds.labels("upstream").observe(time.perf_counter() - started)
            money = None
            if reply.status == 200 and reply.body:
                try:
                    response = orjson.loads(reply.body)
                except orjson.JSONDecodeError:
                    response = None
                if isinstance(response, dict):
                    money = await self._settle(provider, request, keys, decision, response, vector, probe)
            yield Head(reply.status, reply.headers, reply.body, money)
            return
        assembler = provider.assembler()
        try:
            yield Head(reply.status, reply.headers, None)
            async for event in _sse_events(reply.chunks):
                assembler.feed_bytes(event)
                yield event
        except UpstreamError as exc:  # the stream broke after headers were sent: tell the clients in-band
            self.metrics.upstream_errors.labels(type(exc).__name__).inc()
            yield provider.stream_error_event(str(exc), exc.error_type)
            return
        finally:
            await reply.close()
        self.metrics.stage_seconds.labels("upstream").observe(time.perf_counter() - started)
        if assembler.ended_cleanly:
            await self._settle(provider, request, keys, decision, assembler.response(), vector, probe)

    async def _settle(self, provider: Provider, request: ChatRequest, keys: RequestKeys, decision: Decision,
                      response: dict[str, object], vector: Vector | None, probe: Probe | None) -> CostBreakdown:
        """After a successful upstream answer: account for it, write it back, judge a verified-mode probe."""
        usage = provider.usage(response)
        money = self._account(request, usage)
        if provider.is_complete(response):
            if decision.store:
                await self._write_back(request, keys, decision, response, usage, vector)
            if probe is not None:
                self.verification.probe_explored(probe, response)
        return money

    def _account(self, request: ChatRequest, usage: Usage) -> CostBreakdown:
        """Tokens and dollars of one upstream call; Tier 2's saving is the discount on cached input."""
        money = cost(usage, request.model, self.prices)
        self.metrics.tokens.labels("input", "false").inc(usage.input_tokens)
        self.metrics.tokens.labels("output", "false").inc(usage.output_tokens)
        self.metrics.tokens.labels("cache_read", "false").inc(usage.cache_read_tokens or 0)
        self.metrics.cost_usd.labels("upstream").inc(money.cost_usd)
        if money.saved_usd > 0:
            self.metrics.saved_usd.labels("tier2").inc(money.saved_usd)
        return money

    async def _write_back(self, request: ChatRequest, keys: RequestKeys, decision: Decision,
                          response: dict[str, object], usage: Usage, vector: Vector | None) -> None:
        if vector is None and keys.namespace is not None and request.semantic_text is not None:
            vector = await self.semantic.embed(request.semantic_text)
        await self.writeback.write(request, keys, decision, response, usage, vector, self.clock())

    def _count(self, provider: Provider, served: Served) -> None:
        self.metrics.requests.labels(served.value, provider.name).inc()


@dataclass(frozen=True, slots=True)
class Head:
    """First item of every flight: status and headers, and the whole body when it does not stream."""

    status: int
    headers: Mapping[str, str]
    body: bytes | None
    cost: CostBreakdown | None = None
    """What the call cost, when known before the headers go out (non-streaming answers)."""


async def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Re-cut a byte stream into whole SSE events, so each can be assembled, shared and filtered."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            yield event + b"\n\n"
    if pending.strip():
        yield pending + b"\n\n"


async def _client_stream(subscription: Subscription[Head | bytes], provider: Provider,
                         request: ChatRequest) -> AsyncIterator[bytes]:
    """One client's view of a shared stream. Leaving early (disconnect) leaves the flight."""
    async with subscription:
        async for event in subscription:
            assert isinstance(event, bytes)
            forwarded = provider.client_event(event, request)
            if forwarded is not None:
                yield forwarded


async def _aiter(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
