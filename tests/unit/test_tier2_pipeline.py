"""Tier 2 in the pipeline, against the provider simulator: breakpoints placed, prefix read, cost reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from cascache.cache import Cache
from cascache.config import load_settings
from cascache.stores.memory import MemoryStore
from cascache.testing.provider_sim import ProviderSim
from cascache.upstreams.http import HttpUpstream
from tests.fakes import KeywordEmbedder

# Long enough (in the simulator's word-tokens) to clear Sonnet's 1,024-token minimum.
POLICY = "You are the support assistant of Example Corp. " + " ".join(f"Rule {i}: be accurate and kind." for i in
                                                                       range(260))
HEADERS = {"x-api-key": "sk-ant-a", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Cache, ProviderSim]]:
    sim = ProviderSim()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app))
    openai_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app))
    upstreams = {"anthropic": HttpUpstream("http://sim/v1", client=client, key_header="x-api-key"),
                 "openai": HttpUpstream("http://sim/v1", client=openai_client, kind="llamacpp")}
    cache = Cache(load_settings(environ={}), MemoryStore(), KeywordEmbedder(), upstreams)
    yield cache, sim
    await cache.close()


def anthropic_body(question: str, system: str = POLICY, **extra: Any) -> bytes:
    return orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 200, "system": system,
                         "messages": [{"role": "user", "content": question}], **extra})


async def test_anthropic_breakpoints_make_the_second_call_read_the_prefix(setup: tuple[Cache, ProviderSim]) -> None:
    cache, sim = setup
    first = await cache.chat("anthropic", anthropic_body("How do I reset my password?"), HEADERS)
    second = await cache.chat("anthropic", anthropic_body("Where is my parcel?"), HEADERS)
    assert first.status == 200 and second.status == 200
    log = sim.log
    assert log[0].breakpoints and log[0].cache_write_tokens > 1000 and log[0].cache_read_tokens == 0
    assert log[1].cache_read_tokens == log[0].cache_write_tokens
    usage = orjson.loads(second.body or b"")["usage"]
    assert usage["cache_read_input_tokens"] > 1000
    # The second call paid 0.1x for the cached prefix: a positive Tier 2 saving, reported per request.
    assert float(second.headers["x-cascache-saved-usd"]) > 0
    assert float(first.headers["x-cascache-saved-usd"]) < 0  # a cache write costs 1.25x: negative saving
    assert float(second.headers["x-cascache-cost-usd"]) < float(first.headers["x-cascache-cost-usd"])


async def test_caller_breakpoints_are_respected_and_malformed_ones_passed_through(
        setup: tuple[Cache, ProviderSim]) -> None:
    cache, sim = setup
    system = [{"type": "text", "text": POLICY, "cache_control": {"type": "bogus"}}]
    reply = await cache.chat("anthropic", anthropic_body("Hi?", system=system), HEADERS)  # type: ignore[arg-type]
    assert reply.status == 400  # the provider's own 400, not silently "fixed"
    assert orjson.loads(reply.body or b"")["error"]["type"] == "invalid_request_error"
    sent = sim.log[-1].body
    assert sent["system"][0]["cache_control"] == {"type": "bogus"}


async def test_volatile_prefix_gets_a_warning_header_and_a_metric(setup: tuple[Cache, ProviderSim]) -> None:
    cache, _ = setup
    system = POLICY + " Current time: 2026-11-24T07:31:02Z."
    reply = await cache.chat("anthropic", anthropic_body("Where is my parcel?", system=system), HEADERS)
    assert "x-cascache-prefix-warning" in reply.headers
    assert "cascache_prefix_lint_findings_total" in cache.metrics.render().decode()


async def test_hit_reports_the_whole_call_as_saved(setup: tuple[Cache, ProviderSim]) -> None:
    cache, _ = setup
    miss = await cache.chat("anthropic", anthropic_body("How do I reset my password?"), HEADERS)
    hit = await cache.chat("anthropic", anthropic_body("How do I reset my password?"), HEADERS)
    assert hit.headers["x-cascache"] == "hit-exact" and hit.headers["x-cascache-cost-usd"] == "0"
    # A hit saves what the original call would have cost with no cache at all (cost - Tier 2 saving).
    no_cache_cost = float(miss.headers["x-cascache-cost-usd"]) + float(miss.headers["x-cascache-saved-usd"])
    assert float(hit.headers["x-cascache-saved-usd"]) == pytest.approx(no_cache_cost, abs=2e-6) and no_cache_cost > 0


async def test_llamacpp_upstream_gets_cache_prompt_and_keys_do_not_move(setup: tuple[Cache, ProviderSim]) -> None:
    cache, sim = setup
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}],
                         "temperature": 0})
    first = await cache.chat("openai", body, {"authorization": "Bearer sk-a"})
    assert first.status == 200
    assert sim.log[-1].body["cache_prompt"] is True
    assert (await cache.chat("openai", body, {"authorization": "Bearer sk-a"})).headers["x-cascache"] == "hit-exact"
