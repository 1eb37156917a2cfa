"""PoolUpstream over replicas behind httpx.MockTransport: routing, load counting, failover, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from cascache._errors import UpstreamUnavailable
from cascache.tiers.route import LeastOutstanding, PrefixAffinity, ReplicaId, RoundRobin, RoutingPolicy
from cascache.upstreams.base import Upstream
from cascache.upstreams.http import HttpUpstream
from cascache.upstreams.pool import PoolUpstream, refused_before_sending

CHAT = "/chat/completions"


@dataclass
class FakeReplica:
    """One replica whose availability each test flips; records the requests it received."""

    name: str
    refuse: bool = False
    """Refuse connections (ConnectError: nothing was sent)."""
    drop_after_send: bool = False
    """Fail after the request was sent (ReadError): must never be retried elsewhere."""
    health_status: int = 200
    hold_stream: asyncio.Event | None = None
    """When set, a stream sends its first event then waits for this event."""
    cut_stream: bool = False
    """A stream that breaks after its first event."""
    received: list[dict[str, Any]] = field(default_factory=list)
    health_checks: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.name}.test/v1"

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if self.refuse:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.endswith("/health"):
            self.health_checks += 1
            return httpx.Response(self.health_status, json={"status": "ok"})
        if request.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "m"}], "served_by": self.name})
        body = orjson.loads(request.content)
        if self.drop_after_send:
            raise httpx.ReadError("connection reset by peer", request=request)
        self.received.append(body)
        if body.get("stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self._events())
        return httpx.Response(200, json={"served_by": self.name})

    async def _events(self) -> AsyncIterator[bytes]:
        yield b'data: {"n": 1}\n\n'
        if self.cut_stream:
            raise httpx.ReadError("stream cut")
        if self.hold_stream is not None:
            await self.hold_stream.wait()
        yield b"data: [DONE]\n\n"

    def upstream(self) -> HttpUpstream:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return HttpUpstream(self.url, client=client, kind="llamacpp")


def _pool(replicas: list[FakeReplica], policy: RoutingPolicy | None = None, **options: Any) -> PoolUpstream:
    options.setdefault("health_interval_s", 3600.0)  # tests drive health checks by hand unless they say so
    return PoolUpstream([replica.upstream() for replica in replicas], policy or RoundRobin(), **options)


def _chat(text: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream})


def _outstanding(pool: PoolUpstream) -> dict[str, int]:
    return {status.replica.split("//")[1].split(".")[0]: status.outstanding for status in pool.status()}


async def _served_by(pool: PoolUpstream, text: str = "hi") -> str:
    reply = await pool.post(CHAT, _chat(text), {}, stream=False)
    assert reply.status == 200 and reply.body is not None
    return str(orjson.loads(reply.body)["served_by"])


@pytest.fixture
def replicas() -> list[FakeReplica]:
    return [FakeReplica("a"), FakeReplica("b")]


async def test_a_pool_is_an_upstream_of_its_replicas_kind(replicas: list[FakeReplica]) -> None:
    pool = _pool(replicas)
    assert isinstance(pool, Upstream)
    assert pool.kind == "llamacpp"
    assert pool.health_path == "/health"
    await pool.close()


def test_replicas_of_different_kinds_or_duplicate_urls_are_refused() -> None:
    a = FakeReplica("a").upstream()
    other = HttpUpstream("http://b.test/v1", kind="vllm")
    with pytest.raises(ValueError, match="one kind"):
        PoolUpstream([a, other], RoundRobin())
    with pytest.raises(ValueError, match="already in the pool"):
        PoolUpstream([a, FakeReplica("a").upstream()], RoundRobin())
    with pytest.raises(ValueError):
        PoolUpstream([], RoundRobin())


async def test_round_robin_spreads_calls(replicas: list[FakeReplica]) -> None:
    async with _pool(replicas) as pool:
        assert [await _served_by(pool) for _ in range(4)] == ["a", "b", "a", "b"]
        assert pool.decisions["round_robin"] == 4
        assert [status.routed for status in pool.status()] == [2, 2]


async def test_prefix_affinity_sends_a_shared_prefix_to_one_replica(replicas: list[FakeReplica]) -> None:
    document = "A long shared document about replicated caches. " * 60
    async with _pool(replicas, PrefixAffinity()) as pool:
        first = await _served_by(pool, document + "Question one?")
        other = await _served_by(pool, "An unrelated prompt " * 60)
        assert other != first  # a new prefix goes to the replica with more free room
        assert await _served_by(pool, document + "Question two?") == first
        assert await _served_by(pool, document + "Question three?") == first
        assert pool.decisions["prefix_match"] == 2


async def test_a_stream_counts_as_outstanding_until_it_ends(replicas: list[FakeReplica]) -> None:
    replicas[0].hold_stream = asyncio.Event()
    async with _pool(replicas, LeastOutstanding()) as pool:
        reply = await pool.post(CHAT, _chat("s", stream=True), {}, stream=True)
        assert reply.chunks is not None
        first = await anext(reply.chunks)
        assert first.startswith(b"data:")
        assert _outstanding(pool) == {"a": 1, "b": 0}
        assert await _served_by(pool) == "b"  # the busy replica is avoided
        assert _outstanding(pool) == {"a": 1, "b": 0}  # a whole-body call is done when post returns
        replicas[0].hold_stream.set()
        rest = [chunk async for chunk in reply.chunks]
        assert b"[DONE]" in b"".join(rest)
        assert _outstanding(pool) == {"a": 0, "b": 0}
        await reply.close()  # closing after the end must not count twice
        assert _outstanding(pool) == {"a": 0, "b": 0}


async def test_a_stream_closed_early_or_never_read_is_released_once(replicas: list[FakeReplica]) -> None:
    replicas[0].hold_stream = asyncio.Event()
    replicas[1].hold_stream = asyncio.Event()
    async with _pool(replicas) as pool:
        read_some = await pool.post(CHAT, _chat("s", stream=True), {}, stream=True)
        never_read = await pool.post(CHAT, _chat("t", stream=True), {}, stream=True)
        assert read_some.chunks is not None
        await anext(read_some.chunks)
        assert _outstanding(pool) == {"a": 1, "b": 1}
        await read_some.close()
        await never_read.close()
        await never_read.close()
        assert _outstanding(pool) == {"a": 0, "b": 0}


async def test_a_refused_connection_fails_over_and_takes_the_replica_out(replicas: list[FakeReplica]) -> None:
    replicas[0].refuse = True
    async with _pool(replicas) as pool:
        assert await _served_by(pool) == "b"
        assert pool.failovers == 1
        assert [status.healthy for status in pool.status()] == [False, True]
        assert [await _served_by(pool) for _ in range(3)] == ["b", "b", "b"]  # its share is rerouted
        assert _outstanding(pool) == {"a": 0, "b": 0}


async def test_a_failure_after_sending_is_not_retried(replicas: list[FakeReplica]) -> None:
    replicas[0].drop_after_send = True
    async with _pool(replicas) as pool:
        with pytest.raises(UpstreamUnavailable) as caught:
            await pool.post(CHAT, _chat("x"), {}, stream=False)
        assert not refused_before_sending(caught.value)
        assert replicas[1].received == []
        assert pool.failovers == 0
        assert _outstanding(pool) == {"a": 0, "b": 0}


async def test_a_stream_cut_midway_reaches_the_caller_and_is_not_retried(replicas: list[FakeReplica]) -> None:
    replicas[0].cut_stream = True
    async with _pool(replicas) as pool:
        reply = await pool.post(CHAT, _chat("s", stream=True), {}, stream=True)
        assert reply.chunks is not None
        with pytest.raises(UpstreamUnavailable):
            async for _ in reply.chunks:
                pass
        assert replicas[1].received == []
        assert _outstanding(pool) == {"a": 0, "b": 0}


async def test_when_every_replica_refuses_the_caller_gets_unavailable(replicas: list[FakeReplica]) -> None:
    for replica in replicas:
        replica.refuse = True
    async with _pool(replicas) as pool:
        with pytest.raises(UpstreamUnavailable):
            await pool.post(CHAT, _chat("x"), {}, stream=False)
        assert [status.healthy for status in pool.status()] == [False, False]
        # Last resort: with every replica out, calls still try them all (one may be back).
        replicas[1].refuse = False
        assert await _served_by(pool) == "b"


async def test_health_checks_take_a_replica_out_and_bring_it_back(replicas: list[FakeReplica]) -> None:
    async with _pool(replicas, unhealthy_after=2) as pool:
        replicas[0].health_status = 503  # e.g. llama.cpp while its model loads
        await pool.check_health()
        assert [status.healthy for status in pool.status()] == [True, True]  # one failure is not enough
        await pool.check_health()
        assert [status.healthy for status in pool.status()] == [False, True]
        assert [await _served_by(pool) for _ in range(3)] == ["b", "b", "b"]
        replicas[0].health_status = 200
        await pool.check_health()
        assert [status.healthy for status in pool.status()] == [True, True]
        assert {await _served_by(pool) for _ in range(2)} == {"a", "b"}
        assert [status.taken_out for status in pool.status()] == [1, 0]


async def test_taking_a_replica_out_forgets_its_prefixes(replicas: list[FakeReplica]) -> None:
    policy = PrefixAffinity()
    document = "Shared context. " * 100
    async with _pool(replicas, policy, unhealthy_after=1) as pool:
        holder = await _served_by(pool, document + "one")
        replica_id = ReplicaId(f"http://{holder}.test/v1")
        assert len(policy.tree(replica_id)) > 0
        next(r for r in replicas if r.name == holder).health_status = 500
        await pool.check_health()
        assert len(policy.tree(replica_id)) == 0


async def test_the_background_health_loop_runs_by_itself(replicas: list[FakeReplica]) -> None:
    async with _pool(replicas, health_interval_s=0.01, unhealthy_after=1) as pool:
        replicas[0].refuse = True
        for _ in range(200):
            if not pool.status()[0].healthy:
                break
            await asyncio.sleep(0.01)
        assert not pool.status()[0].healthy
        replicas[0].refuse = False
        for _ in range(200):
            if pool.status()[0].healthy:
                break
            await asyncio.sleep(0.01)
        assert pool.status()[0].healthy
        assert replicas[1].health_checks > 0


async def test_get_goes_to_a_healthy_replica_with_failover(replicas: list[FakeReplica]) -> None:
    replicas[0].refuse = True
    async with _pool(replicas) as pool:
        reply = await pool.get("/models", {})
        assert reply.body is not None and orjson.loads(reply.body)["served_by"] == "b"
        assert not pool.status()[0].healthy


async def test_replicas_can_be_added_and_removed(replicas: list[FakeReplica]) -> None:
    async with _pool(replicas[:1]) as pool:
        pool.add_replica(replicas[1].upstream())
        assert {await _served_by(pool) for _ in range(2)} == {"a", "b"}
        await pool.remove_replica(replicas[0].url)
        assert [await _served_by(pool) for _ in range(2)] == ["b", "b"]


async def test_a_closed_pool_refuses_calls(replicas: list[FakeReplica]) -> None:
    pool = _pool(replicas)
    await pool.close()
    with pytest.raises(UpstreamUnavailable, match="closed"):
        await pool.post(CHAT, _chat("x"), {}, stream=False)
