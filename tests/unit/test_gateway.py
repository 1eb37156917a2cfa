"""The gateway end to end in-process: real app, real pipeline, memory store, fake provider behind httpx."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from cascache.gateway import create_app
from tests.unit.gateway_harness import Q, Harness, body, post

def test_miss_then_exact_hit(client: TestClient, harness: Harness) -> None:
    first = post(client, body())
    assert first.status_code == 200 and first.headers["x-cascache"] == "miss"
    second = post(client, body())
    assert second.headers["x-cascache"] == "hit-exact"
    assert second.json()["choices"] == first.json()["choices"]
    assert "x-cascache-entry" in second.headers
    assert len(harness.provider.requests) == 1


def test_paraphrase_is_semantic_hit_with_similarity(client: TestClient, harness: Harness) -> None:
    post(client, body())
    reply = post(client, body("France: what is the capital?"))
    assert reply.headers["x-cascache"] == "hit-semantic"
    assert float(reply.headers["x-cascache-similarity"]) >= 0.8
    assert len(harness.provider.requests) == 1


def test_different_question_misses(client: TestClient) -> None:
    post(client, body())
    assert post(client, body("How tall is Mount Everest?")).headers["x-cascache"] == "miss"


def test_other_tenant_never_hits(client: TestClient, harness: Harness) -> None:
    post(client, body())
    other = post(client, body(), authorization="Bearer sk-tenant-b")
    assert other.headers["x-cascache"] == "miss"
    assert len(harness.provider.requests) == 2


def test_user_scope_separates_users(client: TestClient) -> None:
    post(client, body(user="alice"))
    assert post(client, body(user="bob")).headers["x-cascache"] == "miss"
    assert post(client, body(), **{"x-cascache-user": "alice"}).headers["x-cascache"] == "hit-exact"


def test_system_prompt_or_model_change_never_hits(client: TestClient) -> None:
    post(client, body())
    other_system = body()
    other_system["messages"][0]["content"] = "Be verbose."
    assert post(client, other_system).headers["x-cascache"] == "miss"
    assert post(client, body(model="other-model")).headers["x-cascache"] == "miss"


def test_no_store_is_honoured_and_no_cache_skips_lookup(client: TestClient, harness: Harness) -> None:
    post(client, body(), **{"cache-control": "no-store"})
    assert post(client, body()).headers["x-cascache"] == "miss"
    assert post(client, body(), **{"cache-control": "no-cache"}).headers["x-cascache"] == "bypass"
    assert len(harness.provider.requests) == 3


def test_version_bump_makes_entries_unreachable(client: TestClient) -> None:
    post(client, body())
    assert post(client, body(), **{"x-cascache-version": "v2"}).headers["x-cascache"] == "miss"
    assert post(client, body(), **{"x-cascache-version": "v2"}).headers["x-cascache"] == "hit-exact"


def test_time_sensitive_bypasses(client: TestClient, harness: Harness) -> None:
    post(client, body("What is the weather today?"))
    assert post(client, body("What is the weather today?")).headers["x-cascache"] == "bypass"
    assert len(harness.provider.requests) == 2


def parse_sse(text: str) -> list[Any]:
    return [line[6:] if line[6:] == "[DONE]" else orjson.loads(line[6:])
            for line in text.split("\n") if line.startswith("data: ")]


def test_streaming_miss_is_passed_through_and_then_replayed(client: TestClient, harness: Harness) -> None:
    miss = post(client, body(stream=True))
    assert miss.headers["x-cascache"] == "miss" and miss.headers["content-type"].startswith("text/event-stream")
    live_events = parse_sse(miss.text)
    assert live_events[-1] == "[DONE]"
    # The gateway asked upstream for usage (for accounting) but the caller did not: no usage chunk.
    assert harness.provider.requests[0]["stream_options"] == {"include_usage": True}
    assert all(e == "[DONE]" or e["choices"] for e in live_events)
    hit = post(client, body(stream=True, stream_options={"include_usage": True}))
    assert hit.headers["x-cascache"] == "hit-exact"
    events = parse_sse(hit.text)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["prompt_tokens"] == 10
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text.strip() == f"answer to: {Q}"
    non_stream = post(client, body())
    assert non_stream.headers["x-cascache"] == "hit-exact"
    assert non_stream.json()["choices"][0]["message"]["content"].strip() == f"answer to: {Q}"
    assert len(harness.provider.requests) == 1


def test_cut_stream_is_not_cached(client: TestClient, harness: Harness) -> None:
    harness.provider.cut_stream = True
    post(client, body(stream=True))
    harness.provider.cut_stream = False
    assert post(client, body()).headers["x-cascache"] == "miss"


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_truncated_answers_are_not_cached(client: TestClient, harness: Harness, finish: str) -> None:
    harness.provider.finish = finish
    post(client, body())
    post(client, body(stream=True))
    harness.provider.finish = "stop"
    assert post(client, body()).headers["x-cascache"] == "miss"


def test_upstream_error_passed_through_and_not_cached(client: TestClient, harness: Harness) -> None:
    harness.provider.status = 500
    failed = post(client, body())
    assert failed.status_code == 500 and failed.json()["error"]["message"] == "upstream failed"
    harness.provider.status = 429
    limited = post(client, body())
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    harness.provider.status = 200
    assert post(client, body()).headers["x-cascache"] == "miss"


def test_upstream_timeout_is_504_and_refused_is_502(client: TestClient, harness: Harness) -> None:
    harness.provider.raise_exc = httpx.ReadTimeout("slow")
    timed_out = post(client, body())
    assert timed_out.status_code == 504 and timed_out.json()["error"]["type"] == "timeout"
    harness.provider.raise_exc = httpx.ConnectError("refused")
    refused = post(client, body())
    assert refused.status_code == 502 and "error" in refused.json()


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"{not json", 400), (b"[]", 400), (b'{"model": "m"}', 400), (b"\xff\xfe", 400)],
)
def test_bad_bodies_get_openai_errors(client: TestClient, raw: bytes, status: int) -> None:
    reply = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == status
    assert set(reply.json()["error"]) >= {"message", "type"}


def test_oversize_body_is_413(client: TestClient, harness: Harness) -> None:
    reply = post(client, body("x" * 10_000))
    assert reply.status_code == 413 and reply.json()["error"]["type"] == "invalid_request_error"
    assert harness.provider.requests == []


def test_bad_cascache_header_is_400(client: TestClient) -> None:
    assert post(client, body(), **{"x-cascache-ttl": "soon"}).status_code == 400


def test_store_down_fails_open(client: TestClient, harness: Harness) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk on fire")

    harness.store.get = broken  # type: ignore[method-assign]
    harness.store.nearest = broken  # type: ignore[method-assign]
    harness.store.put = broken  # type: ignore[method-assign]
    for _ in range(2):
        reply = post(client, body())
        assert reply.status_code == 200 and reply.headers["x-cascache"] == "miss"
    metrics = client.get("/metrics").text
    assert 'cascache_tier_errors_total{operation="lookup",tier="exact"} 2.0' in metrics
    assert 'cascache_writebacks_total{result="error"} 2.0' in metrics


def test_embedder_down_fails_open_to_exact(client: TestClient, harness: Harness) -> None:
    harness.embedder.fail = True
    assert post(client, body()).headers["x-cascache"] == "miss"
    assert post(client, body()).headers["x-cascache"] == "hit-exact"


def test_n_greater_than_one_bypasses(client: TestClient, harness: Harness) -> None:
    post(client, body(n=2))
    assert post(client, body(n=2)).headers["x-cascache"] == "bypass"


def test_upstream_key_replaces_callers_and_caller_key_forwarded_otherwise(harness: Harness) -> None:
    app = create_app(harness.settings, cache_factory=harness.factory)
    with TestClient(app, headers={"authorization": "Bearer sk-caller"}) as test_client:
        post(test_client, body())
    assert harness.provider.headers_seen[-1]["authorization"] == "Bearer sk-caller"


def test_models_health_metrics_and_unknown_routes(client: TestClient) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == "test-model"
    assert client.get("/healthz").json() == {"status": "ok"}
    post(client, body())
    assert 'cascache_requests_total{provider="openai",served="miss"} 1.0' in client.get("/metrics").text
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.get("/v1/chat/completions").status_code == 405


def test_stale_keepalive_disconnect_is_retried_once(client: TestClient, harness: Harness) -> None:
    harness.provider.raise_exc = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    harness.provider.raise_times = 1
    reply = post(client, body())
    assert reply.status_code == 200 and reply.headers["x-cascache"] == "miss"
    assert harness.provider.attempts == 2
    harness.provider.raise_times = None  # it keeps failing: one retry only, then 502
    assert post(client, body("Another question?")).status_code == 502
    assert harness.provider.attempts == 4
