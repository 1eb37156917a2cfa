"""Prometheus metrics: one registry per cache, so several caches (and tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Counters and histograms for every tier; names are the public reference (docs/metrics.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cascache_requests", "Requests by the tier that served them", ["served", "provider"], registry=self.registry
        )
        self.tier_errors = Counter(
            "cascache_tier_errors", "Cache tier failures that were failed open", ["tier", "operation"],
            registry=self.registry,
        )
        self.writebacks = Counter(
            "cascache_writebacks", "Write-back outcomes", ["result"], registry=self.registry
        )
        self.upstream_errors = Counter(
            "cascache_upstream_errors", "Upstream failures by kind", ["kind"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "cascache_stage_seconds", "Latency per request stage", ["stage"], buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.semantic_vetoes = Counter(
            "cascache_semantic_vetoes", "Semantic candidates that cleared the threshold but a guard refused",
            ["guard"], registry=self.registry,
        )
        self.semantic_consensus_hits = Counter(
            "cascache_semantic_consensus_hits", "Semantic hits served below the threshold by answer consensus",
            registry=self.registry,
        )
        self.semantic_similarity = Histogram(
            "cascache_semantic_similarity", "Similarity of the best semantic candidate",
            buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0), registry=self.registry,
        )
        self.cost_usd = Counter(
            "cascache_cost_usd", "Dollars spent upstream, by the tier that served the request", ["served"],
            registry=self.registry,
        )
        self.saved_usd = Counter(
            "cascache_saved_usd", "Dollars saved against no cache: Tier 1 hits (whole call) and Tier 2 (cached input)",
            ["tier"], registry=self.registry,
        )
        self.prefix_notes = Counter(
            "cascache_prefix_shaping", "What Tier 2 shaping did, by note code", ["code"], registry=self.registry
        )
        self.prefix_lint_findings = Counter(
            "cascache_prefix_lint_findings", "Volatile content found in cacheable prefixes", ["kind"],
            registry=self.registry,
        )
        self.prefix_tokens_lost = Counter(
            "cascache_prefix_tokens_lost", "Prefix tokens after the first volatile token (uncacheable)",
            registry=self.registry,
        )
        self.tokens = Counter(
            "cascache_tokens", "Tokens by kind (input, output, cache_read) and by whether a cache hit saved them",
            ["kind", "saved"], registry=self.registry,
        )

    def request_counts(self) -> dict[str, float]:
        """Requests so far by the tier that served them (all providers)."""
        counts: dict[str, float] = {}
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    served = sample.labels["served"]
                    counts[served] = counts.get(served, 0.0) + sample.value
        return counts

    def render(self) -> bytes:
        return generate_latest(self.registry)
