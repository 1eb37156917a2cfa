"""`Cache`: the assembled cascache (store, embedder, upstream, pipeline) behind one call.

Both faces, the HTTP gateway and the in-process SDK wrappers, hand raw request
bytes to `Cache.chat` and turn the `Outcome` into their own response type, so
the two can never disagree on keys, policy or errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from cascache._errors import CascacheError, ConfigError, InvalidRequest, UpstreamError
from cascache.categories import Categories
from cascache.config import Settings
from cascache.embedders import make_embedder, resolve_dim
from cascache.embedders.base import Embedder
from cascache.metrics import Metrics
from cascache.pipeline import Outcome, Pipeline
from cascache.providers import PROVIDERS
from cascache.stores import open_store
from cascache.stores.base import Store
from cascache.stores.sharded import ShardedStore
from cascache.stores.sqlite_hnsw import SqliteHnswStore
from cascache.upstreams.base import Upstream
from cascache.upstreams.engine_metrics import EngineMetricsScraper
from cascache.upstreams.http import HttpUpstream
from cascache.upstreams.pool import PoolUpstream

log = logging.getLogger(__name__)


def build_embedder(settings: Settings) -> Embedder:
    options: dict[str, Any] = {"memo_size": settings.embedder.memo_size}
    if settings.embedder.kind == "openai":
        if not settings.embedder.url or not settings.embedder.model:
            raise ConfigError("embedder.url and embedder.model are required when embedder.kind = 'openai'")
        options.update(base_url=settings.embedder.url, model=settings.embedder.model)
        if settings.embedder.api_key_env:
            options["api_key"] = os.environ.get(settings.embedder.api_key_env)
    return make_embedder(settings.embedder.kind, **options)


async def build_store(settings: Settings, dim: int) -> Store:
    url = settings.store.url or str(Path(settings.data_dir) / "store")
    store = open_store(url, dim=dim, max_entries=settings.store.max_entries)
    if asyncio.iscoroutine(store):
        store = await store
    if isinstance(store, SqliteHnswStore):
        store.lock_timeout_ms = settings.store.lock_timeout_ms
    return store


#: Deepest JSON nesting a request body may have. orjson *reads* up to 1024 levels but *writes* at most
#: 254, and keys and upstream bodies are written with it: a body nested 300 deep used to parse, then
#: fail in `keys.canonical_json` as a 500 (tests/reliability/test_hostile_input.py). Real requests,
#: tool schemas included, stay far below this.
MAX_JSON_DEPTH = 128


def _check_depth(raw_body: bytes, body: Any) -> None:
    """Refuse (400) a body nested deeper than MAX_JSON_DEPTH; walks containers only, iteratively."""
    # Nesting cannot be deeper than the number of opening brackets, so almost every request skips
    # the walk: counting bytes is C speed, visiting each container on every request is not.
    if raw_body.count(b"[") + raw_body.count(b"{") <= MAX_JSON_DEPTH:
        return
    pending: list[tuple[Any, int]] = [(body, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _key_from_env(setting: str, env_name: str | None) -> str | None:
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise ConfigError(f"{setting} names {env_name}, which is not set")
    return key


def build_pool(settings: Settings) -> PoolUpstream:
    """Replicas of one model (`pool.urls`) behind one upstream, routed by `pool.policy`."""
    options, pool = settings.upstream, settings.pool
    api_key = _key_from_env("upstream.api_key_env", options.api_key_env)
    replicas = [HttpUpstream(url, api_key=api_key, timeout_s=options.timeout_s,
                             connect_timeout_s=options.connect_timeout_s, kind=settings.prefix.upstream_kind)
                for url in pool.urls]
    return PoolUpstream(replicas, pool.make_policy(), health_interval_s=pool.health_interval_s,
                        unhealthy_after=pool.unhealthy_after)


def build_upstreams(settings: Settings, openai_url: str | None = None) -> dict[str, Upstream]:
    """One upstream per API shape that has a base URL (OpenAI-compatible, Anthropic)."""
    options = settings.upstream
    upstreams: dict[str, Upstream] = {}
    url = openai_url or options.url
    if settings.pool.urls and not openai_url:
        upstreams["openai"] = build_pool(settings)
    elif url:
        # The managed engine (openai_url given by `serve`) is llama.cpp: shape for its prompt cache.
        kind = settings.prefix.upstream_kind or ("llamacpp" if openai_url else None)
        upstreams["openai"] = HttpUpstream(
            url, api_key=_key_from_env("upstream.api_key_env", options.api_key_env),
            timeout_s=options.timeout_s, connect_timeout_s=options.connect_timeout_s, kind=kind)
    if options.anthropic_url:
        upstreams["anthropic"] = HttpUpstream(
            options.anthropic_url, api_key=_key_from_env("upstream.anthropic_api_key_env",
                                                         options.anthropic_api_key_env),
            timeout_s=options.timeout_s, connect_timeout_s=options.connect_timeout_s, key_header="x-api-key")
    if not upstreams:
        raise ConfigError("no upstream: set upstream.url or upstream.anthropic_url (or let serve start the engine)")
    return upstreams


class Cache:
    """One cascache instance. Use `await Cache.open(settings)`, then `chat(...)`, then `close()`."""

    def __init__(self, settings: Settings, store: Store, embedder: Embedder, upstreams: Mapping[str, Upstream],
                 metrics: Metrics | None = None, categories: Categories | None = None) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.upstreams = dict(upstreams)
        """Upstream per API shape ("openai", "anthropic")."""
        self.metrics = metrics or Metrics()
        self.pipeline = Pipeline(settings, store, embedder, self.upstreams, self.metrics, categories=categories)
        if isinstance(store, ShardedStore):
            # It fails open inside (a down node is a miss, a dropped write), so no tier ever sees
            # the error: count it here, or /metrics would show a dead Redis node as a healthy cache.
            store.on_fail_open = lambda kind, node: self.metrics.tier_errors.labels("store", kind).inc()
        self._engine_scraper: EngineMetricsScraper | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings, upstreams: Mapping[str, Upstream] | None = None,
                   upstream_url: str | None = None) -> Cache:
        """Build everything from settings; `upstreams` replaces the configured ones (library use)."""
        embedder = build_embedder(settings)
        store = await build_store(settings, await resolve_dim(embedder))
        categories = await Categories.build(settings.categories, embedder)  # embeds centroid examples once
        cache = cls(settings, store, embedder, upstreams or build_upstreams(settings, upstream_url),
                    categories=categories)
        cache.pipeline.verification.load(Path(settings.data_dir) / "verification.json")
        cache._sweeper = asyncio.create_task(cache._sweep_forever(), name="cascache-sweeper")
        return cache

    async def chat(self, provider_name: str, raw_body: bytes, headers: Mapping[str, str]) -> Outcome:
        """Serve one chat request given as raw bytes; `headers` have lower-case names."""
        provider = PROVIDERS[provider_name]
        try:
            try:
                body = orjson.loads(raw_body)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
            _check_depth(raw_body, body)
            request = provider.parse(body)
            started = time.perf_counter()
            outcome = await self.pipeline.handle(provider, request, raw_body, headers)
            # Until the answer (or, streaming, its headers) is ready: what the client waits before bytes.
            self.metrics.stage_seconds.labels("total").observe(time.perf_counter() - started)
            return outcome
        except CascacheError as exc:
            if isinstance(exc, UpstreamError):
                self.metrics.upstream_errors.labels(type(exc).__name__).inc()
            error = provider.error_body(exc.status_code, str(exc), exc.error_type, getattr(exc, "param", None))
            return Outcome(exc.status_code, {"content-type": "application/json", "x-cascache": "error"},
                           body=orjson.dumps(error))
        except Exception:
            # A bug in cascache must still answer in the provider's shape, and be loud in the logs.
            log.exception("unexpected error while serving a %s request", provider_name)
            self.metrics.tier_errors.labels("pipeline", "unexpected").inc()
            error = provider.error_body(500, "internal error in cascache", "server_error")
            return Outcome(500, {"content-type": "application/json", "x-cascache": "error"}, body=orjson.dumps(error))

    async def engine_cache_stats(self) -> dict[str, Any] | None:
        """The engines' own prefix-cache hit rates, per replica and per pool (None: no self-hosted upstream)."""
        upstream = self.upstreams.get("openai")
        if isinstance(upstream, PoolUpstream):
            urls: list[str] = list(upstream.replica_ids)
        elif upstream is not None and upstream.kind in ("llamacpp", "vllm"):
            urls = [getattr(upstream, "base_url", "")]
        else:
            return None
        if self._engine_scraper is None:
            self._engine_scraper = EngineMetricsScraper()
        return (await self._engine_scraper.scrape(urls)).as_dict()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.store.sweep_interval_s)
            try:
                await self.store.sweep(self.pipeline.clock())
            except Exception:
                log.exception("sweep failed")
                self.metrics.tier_errors.labels("store", "sweep").inc()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.pipeline.coalescer.aclose()
        await self.pipeline.verification.aclose()
        try:
            self.pipeline.verification.save(Path(self.settings.data_dir) / "verification.json")
        except OSError:
            log.exception("could not save verified mode's state")
        if self._engine_scraper is not None:
            await self._engine_scraper.close()
        closers = [upstream.close for upstream in self.upstreams.values()]
        for closer in (*closers, self.embedder.close, self.store.close):
            try:
                await closer()
            except Exception:
                log.exception("error while closing %s", closer)
