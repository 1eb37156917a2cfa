"""Issue 6 in the request path: guards veto semantic candidates; categories set threshold, TTL, bypass."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from cascache.config import load_settings
from cascache.gateway import create_app
from tests.unit.gateway_harness import Harness, body, post

CATEGORIES: dict[str, Any] = {
    "medical": {"patterns": [r"\bdose\b"], "bypass": True},
    "strict": {"patterns": [r"\bstrict\b"], "threshold": 0.99, "ttl_s": 60},
    "general": {},
}


def gateway(overrides: dict[str, Any]) -> Iterator[tuple[TestClient, Harness]]:
    harness = Harness(load_settings(overrides={"semantic.threshold": 0.8, **overrides}, environ={}))
    app = create_app(harness.settings, cache_factory=harness.factory)
    with TestClient(app, headers={"authorization": "Bearer sk-tenant-a"}) as client:
        yield client, harness


@pytest.fixture
def guarded() -> Iterator[tuple[TestClient, Harness]]:
    yield from gateway({"categories.categories": CATEGORIES})


@pytest.fixture
def unguarded() -> Iterator[tuple[TestClient, Harness]]:
    yield from gateway({"semantic.guards": []})


# Bag-of-words test embedder: 5 of 6 words shared -> cosine 0.83, above the 0.8 threshold.
ORDER_A = "please track order 48213 status now"
ORDER_B = "please track order 48231 status now"


def test_a_guard_vetoes_a_candidate_with_another_order_number(guarded: tuple[TestClient, Harness]) -> None:
    client, harness = guarded
    post(client, body(ORDER_A))
    reply = post(client, body(ORDER_B))
    assert reply.headers["x-cascache"] == "miss"
    assert len(harness.provider.requests) == 2
    metrics = harness.cache.metrics.registry.get_sample_value(
        "cascache_semantic_vetoes_total", {"guard": "identifier"})
    assert metrics == 1.0


def test_without_guards_the_same_candidate_is_served(unguarded: tuple[TestClient, Harness]) -> None:
    client, _ = unguarded
    post(client, body(ORDER_A))
    assert post(client, body(ORDER_B)).headers["x-cascache"] == "hit-semantic"


def test_a_bypass_category_never_reads_nor_writes_tier1(guarded: tuple[TestClient, Harness]) -> None:
    client, harness = guarded
    for _ in range(2):
        assert post(client, body("what dose for a child")).headers["x-cascache"] == "bypass"
    assert len(harness.provider.requests) == 2
    assert post(client, body("what size for a child"), **{"x-cascache-category": "medical"}).headers[
        "x-cascache"] == "bypass"


def test_a_category_threshold_and_ttl_apply(guarded: tuple[TestClient, Harness]) -> None:
    client, harness = guarded
    post(client, body("strict question about the capital of France"))
    # Same words reordered (cosine 1) still hit; 6 of 7 words (0.86) clear 0.8 but not strict's 0.99.
    assert post(client, body("France capital strict question about the of")).headers["x-cascache"] == "hit-semantic"
    assert post(client, body("strict question about the capital of Spain")).headers["x-cascache"] == "miss"
    entries = [e for e in harness.store._entries.values() if e.query and "strict" in e.query]
    assert entries and all(e.expires_at is not None and e.expires_at - e.created_at == 60 for e in entries)


def test_an_unknown_category_header_is_a_client_error(guarded: tuple[TestClient, Harness]) -> None:
    client, _ = guarded
    reply = post(client, body("hello"), **{"x-cascache-category": "medicl"})
    assert reply.status_code == 400 and "medicl" in reply.text
