"""Tier 3a in the pipeline: identical in-flight requests share one upstream call (gated fake upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
import orjson
import pytest

from cascache.cache import Cache
from cascache.config import load_settings
from cascache.pipeline import Outcome
from cascache.stores.memory import MemoryStore
from cascache.upstreams.base import UpstreamReply
from tests.fakes import KeywordEmbedder, chat_answer, sse_answer


class GatedUpstream:
    """Answers only when the test opens the gate, so requests pile up in flight."""

    kind = "openai_compatible"

    def __init__(self, fail_status: int | None = None) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.closed = 0
        self.fail_status = fail_status

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        self.calls += 1
        request = orjson.loads(body)
        content = "answer to " + request["messages"][-1]["content"]
        await self.gate.wait()
        if self.fail_status:
            return UpstreamReply(self.fail_status, {"content-type": "application/json"},
                                 body=b'{"error": {"message": "overloaded", "type": "server_error"}}')
        if not stream:
            return UpstreamReply(200, {"content-type": "application/json"}, body=orjson.dumps(chat_answer(content)))
        raw = sse_answer(content, include_usage=True)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(raw), 40):
                yield raw[i:i + 40]
                await asyncio.sleep(0.005)

        async def close() -> None:
            self.closed += 1

        return UpstreamReply(200, {"content-type": "text/event-stream"}, chunks=chunks(), close=close)

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        raise NotImplementedError("not used by these tests")

    async def close(self) -> None:
        return None


def request_body(stream: bool = False, temperature: float = 0) -> bytes:
    return orjson.dumps({"model": "m", "temperature": temperature, "stream": stream,
                         "messages": [{"role": "user", "content": "Why is the sea salty?"}]})


HEADERS = {"authorization": "Bearer sk-a"}


async def read(outcome: Outcome) -> bytes:
    if outcome.stream is None:
        return outcome.body or b""
    return b"".join([chunk async for chunk in outcome.stream])


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Cache, GatedUpstream]]:
    upstream = GatedUpstream()
    cache = Cache(load_settings(environ={}), MemoryStore(), KeywordEmbedder(), {"openai": upstream})
    yield cache, upstream
    await cache.close()


async def gather_with_gate(cache: Cache, upstream: GatedUpstream, bodies: list[bytes]) -> list[Outcome]:
    tasks = [asyncio.create_task(cache.chat("openai", body, HEADERS)) for body in bodies]
    await asyncio.sleep(0.05)
    upstream.gate.set()
    async with asyncio.timeout(10):
        return await asyncio.gather(*tasks)


@pytest.mark.parametrize("stream", [False, True])
async def test_sixteen_identical_requests_make_one_upstream_call(setup: tuple[Cache, GatedUpstream],
                                                                 stream: bool) -> None:
    cache, upstream = setup
    outcomes = await gather_with_gate(cache, upstream, [request_body(stream)] * 16)
    bodies = [await read(o) for o in outcomes]
    assert upstream.calls == 1
    served = [o.headers["x-cascache"] for o in outcomes]
    assert served.count("miss") == 1 and served.count("coalesced") == 15
    assert len(set(bodies)) == 1 and b"salty" in bodies[0]
    if stream:
        assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
    assert (await cache.chat("openai", request_body(stream), HEADERS)).headers["x-cascache"] == "hit-exact"


async def test_sampled_requests_are_not_merged_by_default(setup: tuple[Cache, GatedUpstream]) -> None:
    cache, upstream = setup
    await gather_with_gate(cache, upstream, [request_body(temperature=0.7)] * 4)
    assert upstream.calls == 4


async def test_failure_reaches_every_waiter_and_is_not_cached() -> None:
    upstream = GatedUpstream(fail_status=503)
    cache = Cache(load_settings(environ={}), MemoryStore(), KeywordEmbedder(), {"openai": upstream})
    try:
        outcomes = await gather_with_gate(cache, upstream, [request_body()] * 5)
        assert upstream.calls == 1 and all(o.status == 503 for o in outcomes)
        upstream.fail_status = None
        assert (await cache.chat("openai", request_body(), HEADERS)).headers["x-cascache"] == "miss"
    finally:
        await cache.close()


async def test_leader_disconnecting_mid_stream_leaves_followers_whole(setup: tuple[Cache, GatedUpstream]) -> None:
    cache, upstream = setup
    leader = await asyncio.wait_for(_start(cache, upstream), 5)
    follower = await cache.chat("openai", request_body(stream=True), HEADERS)
    assert leader.headers["x-cascache"] == "miss" and follower.headers["x-cascache"] == "coalesced"
    assert leader.stream is not None
    first = await anext(leader.stream)
    assert first.startswith(b"data: ")
    await leader.stream.aclose()  # type: ignore[attr-defined]  # the leader's client went away
    body = await read(follower)
    assert body.endswith(b"data: [DONE]\n\n") and upstream.calls == 1
    assert (await cache.chat("openai", request_body(stream=True), HEADERS)).headers["x-cascache"] == "hit-exact"


async def test_everyone_disconnecting_cancels_the_call_and_caches_nothing(
        setup: tuple[Cache, GatedUpstream]) -> None:
    cache, upstream = setup
    tasks_before = len(asyncio.all_tasks())
    leader = await asyncio.wait_for(_start(cache, upstream), 5)
    assert leader.stream is not None
    await anext(leader.stream)
    await leader.stream.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    assert upstream.closed == 1
    assert len(asyncio.all_tasks()) == tasks_before
    assert (await cache.chat("openai", request_body(), HEADERS)).headers["x-cascache"] == "miss"


async def _start(cache: Cache, upstream: GatedUpstream) -> Outcome:
    task = asyncio.create_task(cache.chat("openai", request_body(stream=True), HEADERS))
    await asyncio.sleep(0.01)
    upstream.gate.set()
    return await task
