"""Issue 8, part 2c: clients that go away, against a real `cascache serve` process and upstream server.

A raw socket client leaves at each point of a request's life: (a) before the upstream call (half
way through uploading its body; right after sending it), (b) during the call (waiting for a JSON
answer; in the middle of a stream), (c) after it (response started; response finished and the
connection dropped). After each, for both API shapes:

- the gateway's asyncio task count (`runtime.tasks` in /admin/stats) returns to its idle baseline
  and no coalesced flight is left in progress: nothing leaked;
- nothing partial was cached: the same request afterwards is either a miss that reaches the
  upstream, or a hit that replays the simulator's whole answer;
- the gateway keeps serving.

Then coalescing: a leader that disconnects while followers wait must not hurt the followers.
(tests/reliability/test_isolation.py checks the same properties in-process, with task counting
inside the test's loop; these go through uvicorn, the socket and the real upstream connection.)
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from cascache.testing.provider_sim import Fault
from tests.reliability._gateway_rig import (
    SHAPES,
    Rig,
    Shape,
    full_answer,
    running_rig,
    sse_events,
    streamed_text,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

#: Upstream latency that keeps a request "in the upstream call" while the client leaves.
UPSTREAM_LATENCY_S = 1.0
#: How long a stream stalls mid-way, so a client can leave before its end.
STALL_S = 2.0
#: How long the gateway may take to unwind once the client has gone (upstream latency included).
SETTLE_S = 8.0


class RawClient:
    """A client on a plain socket, so it can leave at any byte, and leave rudely (RST, not FIN)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.received = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, marker: bytes, timeout_s: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while marker not in self.received:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += chunk
        assert marker in self.received, f"never received {marker!r}; got {self.received[-300:]!r}"
        return self.received

    def drop(self) -> None:
        # SO_LINGER 0: close() resets the connection, as a crashed client or a dead network would.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def request_parts(shape: Shape, question: str, stream: bool) -> tuple[bytes, bytes]:
    """The HTTP/1.1 head and body of one chat request."""
    body = orjson.dumps(shape.body(question, stream))
    lines = [f"POST {shape.path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json",
             f"content-length: {len(body)}", *(f"{name}: {value}" for name, value in shape.headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with running_rig(tmp_path) as running:
        yield running


def idle_baseline(rig: Rig) -> int:
    """The gateway's task count at rest, after one request of each shape has warmed everything up."""
    for shape in SHAPES.values():
        assert rig.post(shape, "Warm-up: what is two plus two?").status_code == 200
        assert rig.post(shape, "Warm-up: what is two plus three?", stream=True).status_code == 200
    # The count includes the /admin/stats request's own task; wait for a few equal readings in a row.
    readings: list[int] = []
    wait_until(lambda: readings.append(rig.runtime()["tasks"]) or readings[-3:] == [readings[-1]] * 3, 5.0)
    return readings[-1]


def assert_back_to_idle(rig: Rig, baseline: int, what: str) -> None:
    last: dict[str, int] = {}

    def idle() -> bool:
        last.update(rig.runtime())
        return last["tasks"] == baseline and last["flights_in_progress"] == 0

    assert wait_until(idle, SETTLE_S, 0.1), f"after {what}: {last} (idle baseline: {baseline} tasks)"


def assert_nothing_partial_cached(rig: Rig, shape: Shape, question: str, must_miss: bool) -> None:
    """The same request now: a miss that reaches the upstream, or a hit with the whole answer."""
    calls = rig.upstream_calls(question)
    reply = rig.post(shape, question)
    assert reply.status_code == 200, reply.text
    served = reply.headers["x-cascache"]
    assert shape.text_of(reply.json()) == full_answer(question)
    if served == "miss":
        assert rig.upstream_calls(question) == calls + 1
    else:
        assert not must_miss, f"{question!r} was cached although its only answer was abandoned"
        assert served == "hit-exact", served


# --------------------------------------------------------------------------- each point of a request's life

#: Sends one request for `question` and leaves at some point; True when the answer was abandoned
#: before it was complete, so that it must not have been cached.
Leave = Callable[[Rig, Shape, str], bool]


def leave_mid_upload(rig: Rig, shape: Shape, question: str) -> bool:
    head, body = request_parts(shape, question, stream=False)
    client = RawClient(rig.url)
    client.send(head + body[: len(body) // 2])
    time.sleep(0.2)  # the gateway is now waiting for the rest of the body
    client.drop()
    return True


def leave_right_after_sending(rig: Rig, shape: Shape, question: str) -> bool:
    # Slow to start, then stalled: the gateway cannot have finished the stream when it notices.
    rig.sim.inject(Fault(latency_s=UPSTREAM_LATENCY_S, stall_stream_after=2, stall_s=STALL_S, api=shape.api))
    head, body = request_parts(shape, question, stream=True)
    client = RawClient(rig.url)
    client.send(head + body)
    client.drop()
    # The upstream call starts anyway (nothing is read from a socket while the pipeline works); once
    # the stream's headers are due the gateway sees that nobody listens, and abandons the flight.
    return True


def leave_while_waiting_for_a_json_answer(rig: Rig, shape: Shape, question: str) -> bool:
    rig.sim.inject(Fault(latency_s=UPSTREAM_LATENCY_S, api=shape.api))
    head, body = request_parts(shape, question, stream=False)
    client = RawClient(rig.url)
    client.send(head + body)
    assert wait_until(lambda: rig.upstream_calls(question) == 1, 5.0)  # the call is under way
    client.drop()
    # uvicorn does not cancel a plain response's handler: the call completes and its whole answer
    # may be cached. What must hold is that the handler then ends and nothing is left behind.
    return False


def leave_mid_stream(rig: Rig, shape: Shape, question: str) -> bool:
    rig.sim.inject(Fault(stall_stream_after=3, stall_s=STALL_S, api=shape.api))
    head, body = request_parts(shape, question, stream=True)
    client = RawClient(rig.url)
    client.send(head + body)
    client.read_until(b"data:")  # some events have arrived, the rest is stalled upstream
    client.drop()
    return True


def leave_once_the_response_started(rig: Rig, shape: Shape, question: str) -> bool:
    rig.sim.inject(Fault(stall_stream_after=1, stall_s=STALL_S, api=shape.api))
    head, body = request_parts(shape, question, stream=True)
    client = RawClient(rig.url)
    client.send(head + body)
    client.read_until(b"\r\n\r\n")  # status line and headers only
    client.drop()
    return True


def leave_after_the_whole_answer(rig: Rig, shape: Shape, question: str) -> bool:
    for stream in (False, True):
        head, body = request_parts(shape, question, stream=stream)
        client = RawClient(rig.url)
        client.send(head + body)
        client.read_until(shape.proper_end if stream else full_answer(question).encode())
        client.drop()
    return False


@pytest.mark.parametrize("leave", [
    leave_mid_upload, leave_right_after_sending, leave_while_waiting_for_a_json_answer, leave_mid_stream,
    leave_once_the_response_started, leave_after_the_whole_answer,
], ids=lambda leave: leave.__name__)
def test_a_client_that_leaves_leaks_nothing_and_caches_nothing_partial(rig: Rig, leave: Leave) -> None:
    baseline = idle_baseline(rig)
    for shape in SHAPES.values():
        question = f"Where do penguins live? ({leave.__name__}, {shape.api})"
        abandoned = leave(rig, shape, question)
        assert_back_to_idle(rig, baseline, f"{leave.__name__} ({shape.api})")
        if leave is leave_mid_upload:
            assert rig.upstream_calls(question) == 0  # a half-sent body never reaches the upstream
        assert rig.upstream_calls(question) <= (2 if leave is leave_after_the_whole_answer else 1)
        assert_nothing_partial_cached(rig, shape, question, must_miss=abandoned)
    assert rig.gateway.process.poll() is None


# --------------------------------------------------------------------------- a leader leaving its followers

FOLLOWERS = 4


@dataclass(frozen=True, slots=True)
class FollowerResult:
    status: int
    served: str
    """The x-cascache header."""
    text: str
    raw: bytes


async def _follow(rig: Rig, shape: Shape, question: str, stream: bool) -> FollowerResult:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(rig.url + shape.path, json=shape.body(question, stream), headers=dict(shape.headers))
    text = streamed_text(shape, sse_events(reply.content)) if stream else shape.text_of(reply.json())
    return FollowerResult(reply.status_code, reply.headers["x-cascache"], text, reply.content)


async def _leader_leaves_followers_wait(rig: Rig, shape: Shape, question: str,
                                        stream: bool) -> list[FollowerResult]:
    head, body = request_parts(shape, question, stream)
    leader = RawClient(rig.url)
    leader.send(head + body)
    assert await asyncio.to_thread(wait_until, lambda: rig.upstream_calls(question) == 1, 5.0)
    joined_before = rig.runtime()["followers_joined"]
    followers = [asyncio.create_task(_follow(rig, shape, question, stream)) for _ in range(FOLLOWERS)]
    # The leader leaves only once every follower has joined its flight (else they would start another).
    assert await asyncio.to_thread(
        wait_until, lambda: rig.runtime()["followers_joined"] == joined_before + FOLLOWERS, 5.0)
    if stream:
        await asyncio.to_thread(leader.read_until, b"data:")  # the leader leaves mid-stream
    leader.drop()
    return list(await asyncio.gather(*followers))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_leader_that_leaves_does_not_hurt_its_followers(rig: Rig, stream: bool) -> None:
    baseline = idle_baseline(rig)
    for shape in SHAPES.values():
        question = f"Why is the sky blue? (leader leaves, {shape.api}, stream={stream})"
        if stream:
            rig.sim.inject(Fault(latency_s=0.5, stall_stream_after=3, stall_s=STALL_S, api=shape.api))
        else:
            rig.sim.inject(Fault(latency_s=UPSTREAM_LATENCY_S, api=shape.api))
        results = asyncio.run(_leader_leaves_followers_wait(rig, shape, question, stream))
        for follower in results:
            assert (follower.status, follower.served) == (200, "coalesced"), follower.raw[-300:]
            assert follower.text == full_answer(question)
            if stream:
                assert shape.proper_end in follower.raw
        assert rig.upstream_calls(question) == 1
        assert_back_to_idle(rig, baseline, f"the leader left ({shape.api})")
        # The flight finished for the followers, so its whole answer was cached.
        hit = rig.post(shape, question)
        assert hit.headers["x-cascache"] == "hit-exact" and shape.text_of(hit.json()) == full_answer(question)
