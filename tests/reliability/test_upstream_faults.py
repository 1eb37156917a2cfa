"""Issue 8, part 2b: upstream faults through a real `cascache serve` process and a real upstream server.

Each fault is injected into the provider simulator (`Fault`), for both API shapes the gateway
speaks. For every one the client must get the provider's own way of failing (status, error shape,
`retry-after`, an in-stream error event or a cut), in bounded time, and nothing may be cached:
the admin API lists no entry, and the same request once the fault is gone is a miss that reaches
the upstream (then a hit, which shows the request is cacheable at all).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

from cascache.testing.provider_sim import Fault
from tests.integration.conftest import free_port
from tests.reliability._gateway_rig import (
    SHAPES,
    Rig,
    Shape,
    error_events,
    full_answer,
    running_rig,
    sse_events,
    streamed_text,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

API_NAMES = sorted(SHAPES)
#: The gateway's upstream read timeout in the stall tests, and how long the simulator stalls.
READ_TIMEOUT_S = 1.0
STALL_S = 4.0
#: A stalled request must end within the read timeout plus this (scheduling on a shared 2-core box);
#: READ_TIMEOUT_S + STALL_SLACK_S < STALL_S, so an answer that merely waited the stall out fails.
STALL_SLACK_S = 2.0


@pytest.fixture(params=API_NAMES)
def shape(request: pytest.FixtureRequest) -> Shape:
    return SHAPES[request.param]


def assert_nothing_cached(rig: Rig, question: str | None = None) -> None:
    """No entry for `question` (None: no entry at all) in the gateway's store, as the admin API lists it."""
    entries = [entry for entry in rig.entries() if question is None or question in str(entry["query"])]
    assert entries == [], f"a failed request left entries behind: {entries}"


def test_500_reaches_the_client_in_the_provider_shape_and_is_never_cached(tmp_path: Path, shape: Shape) -> None:
    with running_rig(tmp_path) as rig:
        for stream in (False, True):
            question = f"Which river flows through Vienna? (500 test, stream={stream})"
            rig.sim.inject(Fault(status=500, message="the simulated provider broke", api=shape.api))
            reply = rig.post(shape, question, stream=stream)
            assert reply.status_code == 500
            error_type, message = shape.error_of(reply.json())
            assert message == "the simulated provider broke"
            assert error_type == ("api_error" if shape.api == "anthropic" else "server_error")
            assert rig.upstream_calls(question) == 1
            assert_nothing_cached(rig, question)
            rig.assert_served_fresh_then_cached(shape, question, stream=stream)


def test_429_with_retry_after_reaches_the_client_and_nothing_is_cached(tmp_path: Path, shape: Shape) -> None:
    with running_rig(tmp_path) as rig:
        question = "How many moons does Mars have? (429 test)"
        rig.sim.inject(Fault(status=429, message="slow down", headers={"retry-after": "7"}, api=shape.api))
        reply = rig.post(shape, question)
        assert reply.status_code == 429
        assert reply.headers.get("retry-after") == "7", dict(reply.headers)
        error_type, message = shape.error_of(reply.json())
        assert message == "slow down"  # the provider's own error, passed through
        if shape.api == "anthropic":
            assert error_type == "rate_limit_error"
        assert_nothing_cached(rig, question)
        rig.assert_served_fresh_then_cached(shape, question)


def test_connection_refused_is_a_502_in_the_provider_shape(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # bound once, then released: nothing listens there
    with running_rig(tmp_path, upstream_base=closed) as rig:
        for shape in SHAPES.values():
            for stream in (False, True):
                reply = rig.post(shape, f"What is the capital of Peru? (refused, stream={stream})", stream=stream,
                                 timeout_s=10)
                assert reply.status_code == 502, reply.text
                error_type, message = shape.error_of(reply.json())
                assert "unreachable" in message
                assert reply.headers["x-cascache"] == "error"
        assert_nothing_cached(rig)
        assert rig.sim.log == []


def test_a_stalled_stream_ends_in_bounded_time_with_an_error_and_a_stalled_answer_is_a_504(
        tmp_path: Path, shape: Shape) -> None:
    with running_rig(tmp_path, env={"CASCACHE_UPSTREAM_TIMEOUT_S": str(READ_TIMEOUT_S)}) as rig:
        question = "Name the largest desert on Earth. (stall test)"
        rig.sim.inject(Fault(stall_stream_after=3, stall_s=STALL_S, api=shape.api))
        result = rig.stream(shape, question)
        assert result.status == 200  # the headers went out before the stall
        assert result.elapsed_s < READ_TIMEOUT_S + STALL_SLACK_S, result.elapsed_s
        assert result.transport_error is None, result.transport_error
        errors = error_events(shape, result.events)
        assert len(errors) == 1 and "stalled" in errors[0][1], result.events[-2:]
        assert shape.proper_end not in result.raw
        assert_nothing_cached(rig, question)

        silent = "Name the longest river in Asia. (stall test, no stream)"
        rig.sim.inject(Fault(latency_s=STALL_S, api=shape.api))
        reply = rig.post(shape, silent, timeout_s=10)
        assert reply.status_code == 504, reply.text
        assert reply.elapsed.total_seconds() < READ_TIMEOUT_S + STALL_SLACK_S
        shape.error_of(reply.json())
        assert_nothing_cached(rig, silent)
        rig.assert_served_fresh_then_cached(shape, question, stream=True)
        rig.assert_served_fresh_then_cached(shape, silent)


@pytest.mark.parametrize("drop_connection", [True, False], ids=["connection-dropped", "body-ended-early"])
def test_a_stream_cut_in_the_middle_is_seen_as_cut_and_never_cached(
        tmp_path: Path, shape: Shape, drop_connection: bool) -> None:
    with running_rig(tmp_path) as rig:
        question = f"Describe the water cycle briefly. (cut test, drop={drop_connection})"
        rig.sim.inject(Fault(cut_stream_after=4, drop_connection=drop_connection, api=shape.api))
        result = rig.stream(shape, question)
        assert result.status == 200
        assert shape.proper_end not in result.raw  # the client never sees the stream's proper end
        partial = streamed_text(shape, result.events)
        assert len(partial) < len(full_answer(question))
        if drop_connection:
            # The gateway read a broken body: it says so in-band, once, in the provider's shape.
            errors = error_events(shape, result.events)
            assert len(errors) == 1 and "cut" in errors[0][1], result.events[-2:]
        assert_nothing_cached(rig, question)
        rig.assert_served_fresh_then_cached(shape, question, stream=True)


# --------------------------------------------------------------------------- coalesced groups

GROUP = 8


async def _group(rig: Rig, shape: Shape, question: str, stream: bool) -> list[tuple[int, bytes]]:
    """GROUP identical requests at once; each result is (status, whole body)."""
    async with httpx.AsyncClient(timeout=30) as client:
        async def one() -> tuple[int, bytes]:
            reply = await client.post(rig.url + shape.path, json=shape.body(question, stream),
                                      headers=dict(shape.headers))
            return reply.status_code, reply.content

        return list(await asyncio.gather(*(one() for _ in range(GROUP))))


@pytest.mark.parametrize("failure", ["slow-500", "slow-timeout", "stream-stall"])
def test_a_coalesced_group_makes_one_call_and_every_client_gets_the_failure_once(
        tmp_path: Path, shape: Shape, failure: str) -> None:
    env = {"CASCACHE_UPSTREAM_TIMEOUT_S": str(READ_TIMEOUT_S)} if failure != "slow-500" else {}
    stream = failure == "stream-stall"
    with running_rig(tmp_path, env=env) as rig:
        question = f"What gas do plants absorb from the air? (coalesced group, {failure})"
        # Load the embedder first, so that the GROUP requests reach the coalescer well inside the latency.
        assert rig.post(shape, "Warm-up: what is two plus two?").status_code == 200
        joined_before = rig.runtime()["followers_joined"]
        if failure == "slow-500":
            # Slow enough that all GROUP requests have joined the one flight before it fails.
            rig.sim.inject(Fault(status=500, latency_s=1.5, message="overloaded after a while", api=shape.api))
        elif failure == "slow-timeout":
            rig.sim.inject(Fault(latency_s=STALL_S, api=shape.api))
        else:
            rig.sim.inject(Fault(latency_s=0.5, stall_stream_after=3, stall_s=STALL_S, api=shape.api))
        results = asyncio.run(_group(rig, shape, question, stream))

        assert rig.upstream_calls(question) == 1
        expected_status = {"slow-500": 500, "slow-timeout": 504, "stream-stall": 200}[failure]
        assert [status for status, _ in results] == [expected_status] * GROUP, results
        for _, body in results:
            if stream:
                events = sse_events(body)
                assert len(error_events(shape, events)) == 1, events  # once each, not once per follower
                assert shape.proper_end not in body
            else:
                shape.error_of(orjson.loads(body))
        runtime = rig.runtime()
        assert runtime["flights_in_progress"] == 0
        assert runtime["followers_joined"] == joined_before + GROUP - 1
        assert_nothing_cached(rig, question)
        rig.assert_served_fresh_then_cached(shape, question, stream=stream)
