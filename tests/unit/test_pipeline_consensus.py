"""Answer consensus through the gateway: a below-threshold hit only when the k nearest agree, per scope."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from cascache.config import load_settings
from cascache.gateway import create_app
from tests.unit.gateway_harness import Harness, body, post

# With the test embedder (bag of words) every two of these have cosine 6/7 = 0.857: under the 0.97 threshold.
CACHED = [f"how long does card delivery take {word}" for word in ("usually", "normally", "typically")]
ASKED = "how long does card delivery take generally"
ANSWER = "Card delivery takes 3-5 working days."
TENANT_A = {"authorization": "Bearer sk-tenant-a"}
TENANT_B = {"authorization": "Bearer sk-tenant-b"}


def make_harness(**overrides: Any) -> Harness:
    settings = load_settings(overrides={"verification.sample_share": 0.0, "semantic.consensus_k": 3,
                                        "semantic.consensus_top": 0.8, "semantic.consensus_floor": 0.8,
                                        **overrides}, environ={})
    harness = Harness(settings)
    harness.provider.answer = lambda payload: ANSWER  # type: ignore[method-assign]
    return harness


@pytest.fixture
def harness() -> Harness:
    return make_harness()


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient]:
    with TestClient(create_app(harness.settings, cache_factory=harness.factory)) as test_client:
        yield test_client


def consensus_hits(harness: Harness) -> float:
    value = harness.cache.metrics.registry.get_sample_value("cascache_semantic_consensus_hits_total")
    return value or 0.0


def test_k_agreeing_neighbours_give_a_below_threshold_hit(client: TestClient, harness: Harness) -> None:
    for text in CACHED:
        assert post(client, body(text), **TENANT_A).headers["x-cascache"] == "miss"
    reply = post(client, body(ASKED), **TENANT_A)
    assert reply.headers["x-cascache"] == "hit-semantic"
    assert 0.8 <= float(reply.headers["x-cascache-similarity"]) < 0.97
    assert reply.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(harness.provider.requests) == 3
    assert consensus_hits(harness) == 1


def test_one_disagreeing_neighbour_means_a_miss(client: TestClient, harness: Harness) -> None:
    def answer(payload: dict[str, Any]) -> str:
        return "Please contact support." if payload["messages"][-1]["content"] == CACHED[1] else ANSWER

    harness.provider.answer = answer  # type: ignore[method-assign]
    for text in CACHED:
        post(client, body(text), **TENANT_A)
    assert post(client, body(ASKED), **TENANT_A).headers["x-cascache"] == "miss"
    assert len(harness.provider.requests) == 4
    assert consensus_hits(harness) == 0


def test_never_across_scopes(client: TestClient, harness: Harness) -> None:
    for text in CACHED:  # tenant B agrees three times over
        post(client, body(text), **TENANT_B)
    post(client, body(CACHED[0]), **TENANT_A)  # tenant A has one, A + B would make four
    post(client, body(CACHED[1]), **TENANT_A)
    assert post(client, body(ASKED), **TENANT_A).headers["x-cascache"] == "miss"
    assert post(client, body(ASKED), **TENANT_B).headers["x-cascache"] == "hit-semantic"  # B itself does hit


def test_off_by_default() -> None:
    harness = make_harness(**{"semantic.consensus_k": 0})
    with TestClient(create_app(harness.settings, cache_factory=harness.factory)) as client:
        for text in CACHED:
            post(client, body(text), **TENANT_A)
        assert post(client, body(ASKED), **TENANT_A).headers["x-cascache"] == "miss"
    assert load_settings(environ={}).semantic.consensus_k == 0


def test_a_category_turns_it_off_or_on() -> None:
    categories = {"faq": {"consensus_k": 3}, "chat": {"consensus_k": 0}}
    for global_k, category, expected in ((3, "chat", "miss"), (0, "faq", "hit-semantic")):
        harness = make_harness(**{"semantic.consensus_k": global_k, "categories.categories": categories})
        with TestClient(create_app(harness.settings, cache_factory=harness.factory)) as client:
            for text in CACHED:
                post(client, body(text), **TENANT_A, **{"x-cascache-category": category})
            reply = post(client, body(ASKED), **TENANT_A, **{"x-cascache-category": category})
            assert reply.headers["x-cascache"] == expected, category
