"""Engine prefix-cache hit rates from llama.cpp and vLLM `/metrics` texts."""

from __future__ import annotations

import httpx
import pytest

from cascache.upstreams.engine_metrics import EngineMetricsScraper, cache_stats, metrics_url
from cascache.upstreams.llamacpp_engine import parse_prometheus_text

LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 438
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 424
llamacpp:tokens_predicted_total 2
"""

VLLM = """\
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 600.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 700.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 100.0
vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7e9
"""

OTHER = "llamacpp:prompt_tokens_total 100\nllamacpp:prompt_tokens_cached_total 900\n"

OLD_VLLM = """\
vllm:gpu_prefix_cache_queries_total{model_name="m"} 200.0
vllm:gpu_prefix_cache_hits_total{model_name="m"} 50.0
"""


@pytest.mark.parametrize(
    ("text", "engine", "prompt", "cached", "rate"),
    [
        (LLAMACPP, "llamacpp", 862.0, 424.0, 424 / 862),  # prompt = evaluated + cached
        (VLLM, "vllm", 1600.0, 800.0, 0.5),  # every engine's series summed; _created ignored
        (OLD_VLLM, "vllm", 200.0, 50.0, 0.25),
        ("llamacpp:prompt_tokens_total 10\n", "llamacpp", None, None, None),  # a build without the cached one
        ("process_cpu_seconds_total 3\n", "unknown", None, None, None),
    ],
)
def test_cache_stats(text: str, engine: str, prompt: float | None, cached: float | None,
                     rate: float | None) -> None:
    stats = cache_stats("r", parse_prometheus_text(text))
    assert (stats.engine, stats.prompt_tokens, stats.cached_tokens) == (engine, prompt, cached)
    assert stats.hit_rate == pytest.approx(rate) if rate is not None else stats.hit_rate is None


def test_no_prompt_yet_has_no_hit_rate() -> None:
    text = "llamacpp:prompt_tokens_total 0\nllamacpp:prompt_tokens_cached_total 0\n"
    stats = cache_stats("r", parse_prometheus_text(text))
    assert stats.hit_rate is None


@pytest.mark.parametrize(
    ("base", "expected"),
    [("http://h:1/v1", "http://h:1/metrics"), ("http://h:1/v1/", "http://h:1/metrics"),
     ("http://h:1", "http://h:1/metrics")],
)
def test_metrics_live_at_the_root(base: str, expected: str) -> None:
    assert metrics_url(base) == expected


async def test_scrape_a_pool_with_one_replica_down() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.test":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "broken.test":
            return httpx.Response(500)
        text = LLAMACPP if request.url.host == "a.test" else OTHER
        assert request.url.path == "/metrics"
        return httpx.Response(200, text=text)

    scraper = EngineMetricsScraper(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    stats = await scraper.scrape(["http://a.test/v1", "http://b.test/v1", "http://down.test/v1",
                                  "http://broken.test/v1"])
    assert [s.up for s in stats.replicas] == [True, True, False, False]
    assert stats.prompt_tokens == 862 + 1000
    assert stats.cached_tokens == 424 + 900
    assert stats.hit_rate == pytest.approx((424 + 900) / (862 + 1000))
    published = stats.as_dict()
    assert published["pool"]["hit_rate"] == pytest.approx(stats.hit_rate)
    assert published["replicas"]["http://b.test/v1"]["hit_rate"] == pytest.approx(0.9)
    assert published["replicas"]["http://down.test/v1"] == {
        "up": False, "engine": "unknown", "prompt_tokens": None, "cached_tokens": None, "hit_rate": None}
    await scraper.close()
