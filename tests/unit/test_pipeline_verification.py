"""Off-path verification through the real pipeline: a sampled semantic hit is re-asked and judged."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from cascache.config import load_settings
from cascache.gateway import create_app
from tests.unit.gateway_harness import Harness, body, post


def test_sampled_semantic_hit_is_reasked_upstream_and_judged() -> None:
    harness = Harness(load_settings(overrides={
        "semantic.threshold": 0.8, "verification.sample_share": 1.0, "verification.judge": "exact",
        "admin.token": "t"}, environ={}))
    # The fake answers "answer to: <question>": a paraphrase gets a different answer, so the judge
    # must find the cached answer wrong for it.
    with TestClient(create_app(harness.settings, cache_factory=harness.factory),
                    headers={"authorization": "Bearer sk-a"}) as client:
        post(client, body("What is the capital of France?"))
        hit = post(client, body("France: what is the capital?"))
        assert hit.headers["x-cascache"] == "hit-semantic"
        deadline = time.monotonic() + 5
        while len(harness.provider.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            client.get("/healthz")  # let the server loop run the background verification
        assert len(harness.provider.requests) == 2  # the miss, then the off-path re-ask
        for _ in range(250):
            stats = client.get("/admin/stats", headers={"authorization": "Bearer t"}).json()["verification"]
            if stats["false_hits"]["overall"]["samples"] >= 1:
                break
            time.sleep(0.02)
        overall = stats["false_hits"]["overall"]
        assert overall["samples"] == 1 and overall["wrong"] == 1  # the exact judge saw different answers
        assert overall["low"] > 0 and overall["high"] == 1.0  # a Wilson interval, not a point estimate
        assert "cascache_false_hit_rate" in client.get("/metrics").text
    assert harness.provider.requests[1]["messages"][-1]["content"] == "France: what is the capital?"
