"""A real `cascache serve` process in front of a real provider-simulator server, for the fault suites.

Shared by test_upstream_faults.py and test_client_disconnects.py. The simulator runs in this
process (`SimServer`, a uvicorn thread), so a test injects faults with `rig.sim.inject(Fault(...))`
and reads what reached the upstream from `rig.sim.log`. The gateway is its own process, with both
API shapes pointed at the simulator and an admin token, so its store is inspected through the
admin API exactly as an operator would.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from cascache.testing.provider_sim import Api, ProviderSim, SimServer, answer_text
from tests.integration.conftest import GatewayProcess, start_gateway

ADMIN_TOKEN = "reliability-admin-token"
#: Only exact repeats may hit: the questions of one test differ by a few words, and a semantic hit
#: would blur "was anything cached for this request?".
STRICT_SEMANTIC = {"CASCACHE_SEMANTIC_THRESHOLD": "0.995", "CASCACHE_VERIFICATION_SAMPLE_SHARE": "0"}


@dataclass(frozen=True, slots=True)
class Shape:
    """One API shape the gateway speaks: where to send, how to ask, how its answers and errors look."""

    api: Api
    path: str
    headers: Mapping[str, str]
    model: str
    proper_end: bytes
    """The last event of a complete stream (`data: [DONE]`, `event: message_stop`)."""

    def body(self, question: str, stream: bool = False) -> dict[str, Any]:
        # temperature 0: only deterministic requests are coalesced (sampled ones each get their own call).
        body: dict[str, Any] = {"model": self.model, "temperature": 0, "stream": stream,
                                "messages": [{"role": "user", "content": question}]}
        if self.api == "anthropic":
            body["max_tokens"] = 64
        return body

    def error_of(self, payload: Any) -> tuple[str, str]:
        """(type, message) of an error in this provider's shape; AssertionError for any other shape."""
        if self.api == "anthropic":
            assert payload.get("type") == "error", payload
            error = payload["error"]
        else:
            error = payload["error"]
            assert set(error) >= {"message", "type", "param", "code"}, payload
        assert isinstance(error["type"], str) and isinstance(error["message"], str), payload
        return error["type"], error["message"]

    def text_of(self, payload: Mapping[str, Any]) -> str:
        if self.api == "anthropic":
            return "".join(block["text"] for block in payload["content"] if block["type"] == "text")
        return str(payload["choices"][0]["message"]["content"])


OPENAI = Shape("openai", "/v1/chat/completions", {"authorization": "Bearer sk-reliability"}, "gpt-4o-mini",
               b"data: [DONE]")
ANTHROPIC = Shape("anthropic", "/v1/messages", {"x-api-key": "sk-ant-reliability", "anthropic-version": "2023-06-01"},
                  "claude-sonnet-4-6", b"event: message_stop")
SHAPES = {"openai": OPENAI, "anthropic": ANTHROPIC}


def sse_events(raw: bytes) -> list[bytes]:
    """Whole SSE events of a (possibly cut) stream, without their blank-line separators."""
    return [event for event in raw.replace(b"\r\n", b"\n").split(b"\n\n") if event.strip()]


def event_data(event: bytes) -> Any:
    """The JSON in an event's `data:` line (None for `[DONE]`)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            return None if data == b"[DONE]" else orjson.loads(data)
    raise AssertionError(f"an SSE event without data: {event!r}")


def streamed_text(shape: Shape, events: list[bytes]) -> str:
    """The answer text carried by a stream's delta events."""
    pieces: list[str] = []
    for event in events:
        data = event_data(event)
        if not isinstance(data, dict):
            continue
        if shape.api == "anthropic":
            if data.get("type") == "content_block_delta" and data["delta"].get("type") == "text_delta":
                pieces.append(data["delta"]["text"])
        else:
            for choice in data.get("choices") or []:
                pieces.append(choice.get("delta", {}).get("content") or "")
    return "".join(pieces)


def error_events(shape: Shape, events: list[bytes]) -> list[tuple[str, str]]:
    """(type, message) of every in-stream error event, in the provider's shape."""
    found = []
    for event in events:
        data = event_data(event)
        if isinstance(data, dict) and (data.get("type") == "error" or "error" in data):
            found.append(shape.error_of(data))
    return found


@dataclass(slots=True)
class StreamResult:
    status: int
    headers: httpx.Headers
    events: list[bytes]
    raw: bytes
    transport_error: str | None
    """Set when the connection broke before the body's proper end."""
    elapsed_s: float


def full_answer(question: str) -> str:
    """The simulator's complete answer to `question`: deterministic, so a partial one is recognisable."""
    return answer_text(question)


@dataclass
class Rig:
    sim: ProviderSim
    server: SimServer
    gateway: GatewayProcess

    @property
    def url(self) -> str:
        return self.gateway.url

    def post(self, shape: Shape, question: str, stream: bool = False, timeout_s: float = 30.0) -> httpx.Response:
        """One request, read whole (a stream's body too)."""
        return httpx.post(self.url + shape.path, json=shape.body(question, stream), headers=dict(shape.headers),
                          timeout=timeout_s)

    def stream(self, shape: Shape, question: str, timeout_s: float = 30.0) -> StreamResult:
        """A streaming request read to its end, or to the point where the connection broke."""
        started = time.monotonic()
        chunks: list[bytes] = []
        broken: str | None = None
        with httpx.stream("POST", self.url + shape.path, json=shape.body(question, stream=True),
                          headers=dict(shape.headers), timeout=timeout_s) as response:
            try:
                for chunk in response.iter_raw():
                    chunks.append(chunk)
            except httpx.TransportError as exc:
                broken = f"{type(exc).__name__}: {exc}"
        raw = b"".join(chunks)
        return StreamResult(response.status_code, response.headers, sse_events(raw), raw, broken,
                            time.monotonic() - started)

    def upstream_calls(self, question: str) -> int:
        """How many requests carrying `question` reached the simulator (errors included)."""
        return sum(1 for record in self.sim.log if question in orjson.dumps(record.body).decode())

    def admin(self, path: str) -> Any:
        reply = httpx.get(self.url + path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def entries(self) -> list[dict[str, Any]]:
        return list(self.admin("/admin/entries?limit=500")["entries"])

    def entry_queries(self) -> list[str]:
        return [str(entry["query"]) for entry in self.entries()]

    def runtime(self) -> dict[str, int]:
        return dict(self.admin("/admin/stats")["runtime"])

    def assert_served_fresh_then_cached(self, shape: Shape, question: str, stream: bool = False) -> None:
        """After a fault: the same request is a miss that reaches the upstream, and only then a hit.

        The hit is the positive control: this gateway does cache that request, so "no entry after
        the fault" was the fault's doing, not a request that is never cached anyway.
        """
        before = self.upstream_calls(question)
        again = self.post(shape, question, stream=stream)
        assert again.status_code == 200, again.text
        assert again.headers["x-cascache"] == "miss", dict(again.headers)
        assert self.upstream_calls(question) == before + 1
        hit = self.post(shape, question, stream=stream)
        assert hit.headers["x-cascache"] == "hit-exact", dict(hit.headers)
        assert self.upstream_calls(question) == before + 1


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


@contextlib.contextmanager
def running_rig(tmp: Path, sim: ProviderSim | None = None, env: Mapping[str, str] | None = None,
                upstream_base: str | None = None) -> Iterator[Rig]:
    """A simulator server and a gateway whose OpenAI and Anthropic upstreams are that simulator.

    `upstream_base` replaces the simulator's URL in the gateway's config (e.g. a closed port).
    """
    sim = sim or ProviderSim()
    with SimServer(sim) as server:
        base = (upstream_base or server.base_url) + "/v1"
        gateway = start_gateway(tmp, "--upstream-url", base, env={
            "CASCACHE_UPSTREAM_ANTHROPIC_URL": base, "CASCACHE_ADMIN_TOKEN": ADMIN_TOKEN, **STRICT_SEMANTIC,
            **(env or {})})
        try:
            yield Rig(sim, server, gateway)
        finally:
            gateway.stop()
