"""Issue 8, part 4: hostile input, and the admin token on a real process.

1. Fuzz (in-process, hypothesis): almost-valid and arbitrary bodies, odd headers, for both API
   shapes, against the real Starlette app with an upstream that always answers 200. Properties: no
   5xx (only an upstream's own 5xx may pass through, and this one never sends any), no exception
   escapes the app, every 4xx is exactly the provider's error shape, and a valid request still gets
   a 200 afterwards.
2. A real `cascache serve` process against hostile clients on a raw socket: bodies over the limit
   (declared and chunked), deep JSON nesting, invalid UTF-8, giant headers, a body dripped one byte
   a second, headers dripped one byte a second. After each, a normal request still gets a 200.
3. The admin routes on a real process: every route refuses a missing or wrong token and takes the
   right one; with no token configured none is reachable.

What it found, fixed in src/: a body nested 255-1024 deep parsed, then broke key hashing (500);
a list or object `role` or block `type` raised "unhashable" (500) in the providers and in Tier 2;
a Content-Length of latin-1 "²" passed `str.isdigit()` and broke `int()`; nothing bounded a
dripped body (now `server.body_read_timeout_s`, 408) or a dripped, silent or giant head (uvicorn
has no bound: now `server.header_read_timeout_s` 408 and `server.max_header_bytes` 431).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cascache.cache import Cache
from cascache.config import Settings, load_settings
from cascache.gateway import admin, create_app, dashboard
from cascache.stores.memory import MemoryStore
from cascache.testing.provider_sim import ProviderSim, SimServer, anthropic_events
from cascache.upstreams.base import UpstreamReply
from tests.fakes import KeywordEmbedder, chat_answer, sse_answer
from tests.integration.conftest import GatewayProcess, start_gateway

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

API_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
FUZZ_MAX_BODY = 16 * 1024
"""A small body limit in the fuzz app, so that lying Content-Length headers cross it now and then."""


# =========================================================================== 1. fuzz, in-process

def anthropic_message(text: str) -> dict[str, Any]:
    return {"id": "msg_up", "type": "message", "role": "assistant", "model": "test-model",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


async def _chunks(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


class AlwaysOkUpstream:
    """Answers every request with a well-formed 200 in its API's shape, whatever it was sent.

    So any 5xx the client sees was made by cascache, never passed through from upstream.
    """

    def __init__(self, api: str) -> None:
        self.api = api
        self.kind = "anthropic" if api == "anthropic" else "openai_compatible"
        self.calls = 0

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        self.calls += 1
        text = "a fine answer"
        if self.api == "anthropic":
            if stream:
                raw = b"".join(anthropic_events(anthropic_message(text)))
                return UpstreamReply(200, {"content-type": "text/event-stream"}, chunks=_chunks(raw))
            return UpstreamReply(200, {"content-type": "application/json"},
                                 body=orjson.dumps(anthropic_message(text)))
        if stream:
            raw = sse_answer(text, include_usage=True)
            return UpstreamReply(200, {"content-type": "text/event-stream"}, chunks=_chunks(raw))
        return UpstreamReply(200, {"content-type": "application/json"}, body=orjson.dumps(chat_answer(text)))

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        return UpstreamReply(200, {"content-type": "application/json"}, body=b'{"object": "list", "data": []}')

    async def close(self) -> None:
        return None


def fuzz_settings(data_dir: Path) -> Settings:
    # No off-path verification probes: every upstream call is the request's own.
    return load_settings(overrides={"server.max_body_bytes": FUZZ_MAX_BODY, "verification.sample_share": 0.0,
                                    "data_dir": str(data_dir)}, environ={})


@contextlib.asynccontextmanager
async def fuzz_client(tmp: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, AlwaysOkUpstream]]]:
    """The real app over httpx's ASGI transport, which hands header bytes to the app exactly as given
    (Starlette's TestClient re-encodes them as UTF-8, which would hide latin-1 oddities)."""
    upstreams = {"openai": AlwaysOkUpstream("openai"), "anthropic": AlwaysOkUpstream("anthropic")}
    settings = fuzz_settings(tmp)
    cache = Cache(settings, MemoryStore(), KeywordEmbedder(), upstreams)

    @contextlib.asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[Cache]:
        yield cache

    app = create_app(settings, factory)
    app.state.cache = cache  # what the lifespan would do; the ASGI transport runs no lifespan
    # raise_app_exceptions: an exception escaping the app fails the example instead of becoming a 500.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client, upstreams
    finally:
        await cache.close()


# ---- strategies: JSON values, valid bodies, mutations, encodings, headers

ODD_STRINGS = st.sampled_from([
    "", " ", "\x00", "\u202e", "\ufeff", "e\u0301", "\U0001f600" * 50, "\ud800", "\udfff", "a\ud83dz",
    "NaN", "Infinity", "-0", "1e999", "null", "{}", "[]", "\\", '"', "</script>", "%00", "x" * 5000,
    "user", "assistant", "system", "tool", "ephemeral", "text", "image", "tool_use", "auto", "1h", "5m",
])
HUGE_NUMBERS = st.sampled_from([
    2**63, -(2**63) - 1, 2**64, 10**40, -(10**400), 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf, -0.0,
])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), HUGE_NUMBERS,
    st.text(max_size=40), ODD_STRINGS,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=12), ODD_STRINGS), inner, max_size=4)),
    max_leaves=12,
)

texts = st.one_of(st.text(max_size=60), ODD_STRINGS,
                  st.sampled_from(["What is the capital of France?", "Why is the sea salty?",
                                   "What is the weather today?"]))
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                         "parameters": {"type": "object",
                                                        "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather for a city.",
                  "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


@st.composite
def openai_bodies(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    if draw(st.booleans()):
        messages += [{"role": "user", "content": draw(texts)},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": draw(texts)}]
    content: Any = draw(st.one_of(texts, st.just([{"type": "text", "text": "part one"},
                                                  {"type": "image_url", "image_url": {"url": "data:,x"}}])))
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {"model": draw(st.sampled_from(["test-model", "gpt-4o-mini"])), "messages": messages}
    optional = {
        "temperature": st.sampled_from([0, 0.7, 1]), "max_tokens": st.integers(1, 64), "stream": st.booleans(),
        "stream_options": st.just({"include_usage": True}), "n": st.integers(1, 3), "seed": st.integers(0, 99),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=3)),
        "tools": st.just([TOOL]), "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]),
        "user": texts, "top_p": st.floats(0, 1), "prompt_cache_key": st.text(max_size=10),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    return body


@st.composite
def anthropic_bodies(draw: st.DrawFn) -> dict[str, Any]:
    ephemeral: dict[str, Any] = {"type": "ephemeral", **draw(st.sampled_from([{}, {"ttl": "1h"}, {"ttl": "5m"}]))}
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages += [{"role": "user", "content": draw(texts)},
                     {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "get_weather",
                                                        "input": {"city": "Paris"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1",
                                                   "content": draw(texts)}]},
                     {"role": "assistant", "content": "It is sunny."}]
    last: Any = draw(st.one_of(texts, st.builds(lambda t, cc: [{"type": "text", "text": t, "cache_control": cc}],
                                                texts, st.just(ephemeral))))
    messages.append({"role": "user", "content": last})
    body: dict[str, Any] = {"model": draw(st.sampled_from(["claude-sonnet-4-5", "test-model"])),
                            "max_tokens": draw(st.integers(1, 4096)), "messages": messages}
    optional = {
        "system": st.one_of(texts, st.builds(lambda t, cc: [{"type": "text", "text": t, "cache_control": cc}],
                                             texts, st.just(ephemeral))),
        "stream": st.booleans(), "temperature": st.sampled_from([0, 0.5, 1]), "tools": st.just([ANTHROPIC_TOOL]),
        "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "get_weather"}]),
        "metadata": st.builds(lambda u: {"user_id": u}, texts), "stop_sequences": st.lists(st.text(max_size=5),
                                                                                          max_size=3),
        "cache_control": st.just(ephemeral), "top_k": st.integers(1, 50),
        "thinking": st.just({"type": "enabled", "budget_tokens": 1024}),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    return body


def _containers(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every dict and list inside `value` (itself included), with its path."""
    if isinstance(value, dict | list):
        yield path, value
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in children:
            yield from _containers(child, (*path, key))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A valid body with 0-3 edits somewhere inside: a field replaced (wrong type, huge number, odd
    text), removed, or added; or the whole body swapped for another JSON value."""
    body = json.loads(json.dumps(draw(base)))  # a private deep copy to edit in place
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 19)) == 0:
            return draw(json_values)
        containers = list(_containers(body))
        _, node = draw(st.sampled_from(containers))
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if isinstance(node, dict):
            keys = list(node)
            if action == "add" or not keys:
                node[draw(st.one_of(st.sampled_from(["model", "messages", "stream", "max_tokens", "n", "tools",
                                                     "cache_control", "role", "content", "type", "text"]),
                                    st.text(max_size=10)))] = draw(json_values)
            elif action == "remove":
                del node[draw(st.sampled_from(keys))]
            else:
                node[draw(st.sampled_from(keys))] = draw(json_values)
        else:
            if action == "add" or not node:
                node.insert(draw(st.integers(0, len(node))), draw(json_values))
            elif action == "remove":
                del node[draw(st.integers(0, len(node) - 1))]
            else:
                node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return body


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON text the way a sloppy client writes it: NaN/Infinity literals, big integers, and lone
    surrogates either as `\\ud800` escapes or as raw (invalid UTF-8) bytes."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def raw_bodies(draw: st.DrawFn, api: str) -> bytes:
    base = openai_bodies() if api == "openai" else anthropic_bodies()
    kind = draw(st.sampled_from(["mutated"] * 6 + ["bytes", "truncated", "nested", "duplicate-keys"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    raw = encode(draw(mutated(base)), draw(st.booleans()))
    if kind == "truncated":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "nested":
        depth = draw(st.sampled_from([10, 500, 1100, 5000]))
        return raw[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "duplicate-keys":
        return raw[:-1] + b', "model": 12, "messages": {}}'
    return raw


def header_value(values: list[str | bytes]) -> st.SearchStrategy[bytes]:
    """Header values as bytes a real HTTP/1.1 server would pass on: no CR, LF or NUL; obs-text allowed.
    Text goes out as UTF-8 (the app reads it back as latin-1, as ASGI says); bytes go out as they are."""
    junk = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
    return st.one_of(st.sampled_from([v if isinstance(v, bytes) else v.encode() for v in values]), junk)


HEADER_VALUES: dict[str, list[str | bytes]] = {
    "content-type": ["application/json", "text/plain", "application/json; charset=latin-1",
                     "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", ""],
    "content-length": ["0", "1", "-1", "+5", "abc", "1e3", " 10", "99999999999999999999999", "\u00b2", "\u0663",
                       b"\xb2", b"1\xb9", str(FUZZ_MAX_BODY + 1)],  # latin-1 superscripts: str.isdigit() is True
    "authorization": ["Bearer sk-tenant-a", "Bearer ", "Bearer", "bearer sk-x", "Basic dXNlcjpwYXNz",
                      "Bearer \u00e9\u00e8", "Bearer " + "k" * 5000],
    "x-api-key": ["sk-ant-a", "", " ", "k" * 5000],
    "anthropic-version": ["2023-06-01", "", "1999-01-01", "junk"],
    "cache-control": ["no-store", "no-cache", "max-age=abc", "no-store, no-cache", ",,,", "private"],
    "x-cascache-ttl": ["60", "0", "-1", "nan", "inf", "-inf", "1e309", "1e-320", "abc", "", "\u0661\u0660",
                       "99999999999999999999", b"\xb2", "1_000", " 5 "],
    "x-cascache-version": ["v2", "", " ", "v" * 500, "\u00e9t\u00e9"],
    "x-cascache-user": ["alice", "", "\u00e9", "u" * 5000],
    "x-cascache-tags": ["doc:1", ",,,", ",".join(f"t{i}" for i in range(200)), "a, b, a"],
    "x-cascache-bypass": ["1", "true", "yes", "no", ""],
    "x-cascache-category": ["faq", "", "nope", "\u00e9"],
    "transfer-encoding": ["chunked", "gzip", "junk"],
    "content-encoding": ["gzip", "br", "junk"],
    "accept": ["text/event-stream", "*/*", ""],
}


@st.composite
def header_sets(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    chosen = draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=6, unique=True))
    headers = [(name.encode(), draw(header_value(HEADER_VALUES[name]))) for name in chosen]
    if draw(st.integers(0, 4)) == 0:  # a header name nobody expects
        headers.append((draw(st.sampled_from([b"x-cascache-junk", b"x-cascache-", b"x-forwarded-for"])),
                        draw(header_value(["1"]))))
    return headers


# ---- the properties

def assert_provider_error_shape(api: str, status: int, body: bytes) -> None:
    """Exactly the provider's error shape: the keys, and nothing but them, with the documented types."""
    payload = orjson.loads(body)
    if api == "openai":
        assert set(payload) == {"error"}, payload
        error = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}, payload
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), payload
        assert error["param"] is None or isinstance(error["param"], str), payload
        assert error["code"] is None or isinstance(error["code"], str), payload
    else:
        assert set(payload) == {"type", "error"} and payload["type"] == "error", payload
        assert set(payload["error"]) == {"type", "message"}, payload
        assert all(isinstance(payload["error"][k], str) and payload["error"][k] for k in ("type", "message")), payload
    assert 400 <= status < 500


def check_reply(api: str, reply: httpx.Response) -> None:
    assert reply.status_code < 500, f"cascache answered {reply.status_code}: {reply.content[:500]!r}"
    if reply.status_code >= 400:
        assert_provider_error_shape(api, reply.status_code, reply.content)
    else:
        assert reply.status_code == 200, reply.status_code
        if reply.headers.get("content-type", "").startswith("application/json"):
            orjson.loads(reply.content)  # a 200 carries a whole JSON answer
        else:
            assert reply.headers["content-type"].startswith("text/event-stream"), reply.headers
            assert reply.content.startswith((b"data: ", b"event: ")), reply.content[:100]


def valid_body(api: str) -> bytes:
    if api == "openai":
        return orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": "Still there?"}]})
    return orjson.dumps({"model": "test-model", "max_tokens": 16,
                         "messages": [{"role": "user", "content": "Still there?"}]})


@dataclass
class FuzzTally:
    """Statuses seen, so the test can show both sides of the property were exercised."""

    by_status: dict[int, int] = field(default_factory=dict)

    def record(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def count(self, low: int, high: int) -> int:
        return sum(n for status, n in self.by_status.items() if low <= status < high)


FUZZ_EXAMPLES = 1000
"""Per API shape; about 8 s each on this machine (2 shared cores)."""


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_fuzzed_requests_never_5xx_and_errors_keep_the_provider_shape(api: str, tmp_path: Path) -> None:
    tally = FuzzTally()
    # One event loop for every example; the app and its cache stay open on it between examples.
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        client, upstreams = runner.run(stack.enter_async_context(fuzz_client(tmp_path)))

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(raw=raw_bodies(api), headers=header_sets())
        def check(raw: bytes, headers: list[tuple[bytes, bytes]]) -> None:
            reply = runner.run(client.post(API_PATHS[api], content=raw, headers=headers))
            tally.record(reply.status_code)
            check_reply(api, reply)

        try:
            check()
            after = runner.run(client.post(API_PATHS[api], content=valid_body(api),
                                           headers={"content-type": "application/json"}))
            assert after.status_code == 200, after.content
        finally:
            runner.run(stack.aclose())
    # Not vacuous: both sides of the property were exercised, and many requests reached the upstream.
    assert tally.count(200, 300) >= 100 and tally.count(400, 500) >= 300, tally
    assert upstreams[api].calls >= 50, upstreams[api].calls
    print(f"\nfuzz {api}: {sum(tally.by_status.values())} examples, statuses {dict(sorted(tally.by_status.items()))}")


# =========================================================================== 2. hostile clients, real process

MAX_BODY = 256 * 1024
BODY_READ_TIMEOUT_S = 2.0
HEADER_READ_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 64 * 1024
ADMIN_TOKEN = "admin-token-for-hostile-tests"
CALLER_HEADERS = {"authorization": "Bearer sk-hostile-tests", "anthropic-version": "2023-06-01",
                  "content-type": "application/json"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(ProviderSim()) as server:
        yield server


def serve(tmp: Path, sim: SimServer, **env: str) -> GatewayProcess:
    return start_gateway(tmp, "--upstream-url", sim.base_url + "/v1",
                         env={"CASCACHE_UPSTREAM_ANTHROPIC_URL": sim.base_url + "/v1",
                              "CASCACHE_VERIFICATION_SAMPLE_SHARE": "0", **env})


@pytest.fixture(scope="module")
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = serve(tmp_path_factory.mktemp("hostile"), sim,
                    CASCACHE_SERVER_MAX_BODY_BYTES=str(MAX_BODY),
                    CASCACHE_SERVER_BODY_READ_TIMEOUT_S=str(BODY_READ_TIMEOUT_S),
                    CASCACHE_SERVER_HEADER_READ_TIMEOUT_S=str(HEADER_READ_TIMEOUT_S),
                    CASCACHE_SERVER_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
                    CASCACHE_ADMIN_TOKEN=ADMIN_TOKEN)
    yield process
    process.stop()


@dataclass
class RawReply:
    """What a raw-socket client saw: the status (None: the server closed without answering), the body,
    whether the server then closed the connection, and how long the answer took."""

    status: int | None
    body: bytes
    closed: bool
    elapsed_s: float


def _address(gateway: GatewayProcess) -> tuple[str, int]:
    host, port = gateway.url.removeprefix("http://").split(":")
    return host, int(port)


def _read_reply(sock: socket.socket, started: float, wait_s: float) -> RawReply:
    """Read one HTTP response (status line, headers, Content-Length body), then see whether the
    server closes the connection."""
    sock.settimeout(wait_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return RawReply(None, data, True, time.monotonic() - started)
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return RawReply(None, data, True, time.monotonic() - started)
    head, _, body = data.partition(b"\r\n\r\n")
    elapsed = time.monotonic() - started
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    closed = False
    try:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            body += chunk
        if not closed:
            sock.settimeout(1.0)
            closed = sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except TimeoutError:
        closed = False
    return RawReply(status, body, closed, elapsed)


def raw_request(gateway: GatewayProcess, data: bytes, wait_s: float = 10.0) -> RawReply:
    with socket.create_connection(_address(gateway), timeout=wait_s) as sock:
        started = time.monotonic()
        sock.sendall(data)
        return _read_reply(sock, started, wait_s)


def request_head(api: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {API_PATHS[api]} HTTP/1.1", "host: gateway", *(f"{k}: {v}" for k, v in CALLER_HEADERS.items()),
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_raw_body(gateway: GatewayProcess, api: str, body: bytes) -> RawReply:
    return raw_request(gateway, request_head(api, {"content-length": str(len(body))}) + body)


def assert_still_serving(gateway: GatewayProcess) -> None:
    """The gateway process lives and a normal request, in each API shape, gets a 200."""
    assert gateway.process.poll() is None, gateway.log()
    for api in ("openai", "anthropic"):
        reply = httpx.post(gateway.url + API_PATHS[api], content=valid_body(api), headers=CALLER_HEADERS, timeout=30)
        assert reply.status_code == 200, (api, reply.status_code, reply.text)


def assert_error_reply(api: str, reply: RawReply, status: int) -> None:
    assert reply.status == status, reply
    assert_provider_error_shape(api, status, reply.body)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_declared_length_over_the_limit_is_refused_unread(gateway: GatewayProcess, api: str) -> None:
    # 10 GB announced, not one body byte sent: the 413 must come from the header alone.
    reply = raw_request(gateway, request_head(api, {"content-length": str(10 * 1024**3)}))
    assert_error_reply(api, reply, 413)
    assert reply.closed, "the connection should close rather than drain an unread body"
    print(f"\ndeclared 10 GB ({api}): {reply.status} in {reply.elapsed_s * 1000:.0f} ms, closed={reply.closed}")
    assert_still_serving(gateway)


def test_chunked_body_is_refused_once_past_the_limit(gateway: GatewayProcess) -> None:
    chunk = b"x" * 8192
    sent = 0
    with socket.create_connection(_address(gateway), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(request_head("openai", {"transfer-encoding": "chunked"}))
        reply: RawReply | None = None
        while sent < 4 * MAX_BODY:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            # Paced: stop as soon as the server has answered, so no unread bytes turn its close into a reset.
            sock.settimeout(0.02)
            try:
                peek = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            reply = _read_reply(sock, started, 10) if peek else RawReply(None, b"", True, 0)
            break
    assert reply is not None, f"no answer after {sent} bytes sent in chunks"
    assert_error_reply("openai", reply, 413)
    assert MAX_BODY < sent <= MAX_BODY + 8 * len(chunk), f"413 after {sent} bytes, limit {MAX_BODY}"
    print(f"\nchunked: 413 after {sent} bytes sent (limit {MAX_BODY}), closed={reply.closed}")
    assert_still_serving(gateway)


NESTED_OBJECT = (b'{"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "x": '
                 + b"[" * 300 + b"]" * 300 + b"}")


@pytest.mark.parametrize("body", [b"[" * 100_000, b"[" * 2000 + b"]" * 2000, NESTED_OBJECT],
                         ids=["100k-open-brackets", "2000-deep-balanced", "300-deep-inside-a-valid-request"])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_deep_nesting_is_a_400(gateway: GatewayProcess, api: str, body: bytes) -> None:
    assert_error_reply(api, post_raw_body(gateway, api, body), 400)
    assert_still_serving(gateway)


INVALID_UTF8 = [
    b'{"model": "test-model", "max_tokens": 8, "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "test-model", "max_tokens": 8, "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    b'{"model": "test-model\xc3", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}',
    b"\xef\xbb\xbf\xff" * 10,
]


@pytest.mark.parametrize("body", INVALID_UTF8, ids=["ff-fe", "surrogate", "truncated-sequence", "bom-junk"])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_invalid_utf8_is_a_400(gateway: GatewayProcess, api: str, body: bytes) -> None:
    assert_error_reply(api, post_raw_body(gateway, api, body), 400)
    assert_still_serving(gateway)


@pytest.mark.parametrize("shape", ["one-1MB-header", "20k-small-headers"])
def test_giant_headers_are_refused_and_the_gateway_keeps_serving(gateway: GatewayProcess, shape: str) -> None:
    extra = ("x-junk: " + "a" * 1024 * 1024 + "\r\n" if shape == "one-1MB-header"
             else "".join(f"x-junk-{i}: {i}\r\n" for i in range(20_000)))
    body = valid_body("openai")
    head = request_head("openai", {"content-length": str(len(body))})
    data = head[:-2] + extra.encode() + b"\r\n" + body
    with socket.create_connection(_address(gateway), timeout=10) as sock:
        started = time.monotonic()
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while we were still sending: fine, as long as it is refused
        reply = _read_reply(sock, started, 10)
    print(f"\n{shape}: status {reply.status}, closed={reply.closed}, {reply.elapsed_s * 1000:.0f} ms")
    assert reply.status is None or 400 <= reply.status < 500, reply
    assert reply.status is not None or reply.closed, reply
    if reply.status is not None:
        assert_provider_error_shape("openai", reply.status, reply.body)
    assert_still_serving(gateway)


def drip(gateway: GatewayProcess, first: bytes, dripped: bytes, limit_s: float) -> tuple[RawReply, int]:
    """Send `first`, then `dripped` one byte a second, until the server answers or closes (or `limit_s`)."""
    with socket.create_connection(_address(gateway), timeout=limit_s) as sock:
        started = time.monotonic()
        sock.sendall(first)
        sent = 0
        while time.monotonic() - started < limit_s:
            sock.settimeout(1.0)
            try:
                peek = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                if sent < len(dripped):
                    try:
                        sock.sendall(dripped[sent:sent + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        return RawReply(None, b"", True, time.monotonic() - started), sent
                    sent += 1
                continue
            except ConnectionResetError:
                return RawReply(None, b"", True, time.monotonic() - started), sent
            if not peek:
                return RawReply(None, b"", True, time.monotonic() - started), sent
            return _read_reply(sock, started, 5), sent
    return RawReply(None, b"", False, time.monotonic() - started), sent


def test_slow_loris_body_is_cut_off_with_a_408(gateway: GatewayProcess) -> None:
    body = valid_body("openai")
    reply, sent = drip(gateway, request_head("openai", {"content-length": str(len(body))}), body,
                       limit_s=BODY_READ_TIMEOUT_S + 10)
    print(f"\nslow-loris body: {reply.status} after {reply.elapsed_s:.2f} s ({sent} bytes dripped), "
          f"closed={reply.closed}")
    assert_error_reply("openai", reply, 408)
    assert reply.closed and sent >= 1, (reply, sent)
    # Bytes kept coming (one a second, less than the timeout apart): only a deadline for the whole
    # body, not an idle timeout between chunks, ends this at BODY_READ_TIMEOUT_S.
    assert BODY_READ_TIMEOUT_S - 0.1 <= reply.elapsed_s <= BODY_READ_TIMEOUT_S + 1.5, reply.elapsed_s
    assert_still_serving(gateway)


def test_head_timeout_spares_an_idle_kept_alive_connection(gateway: GatewayProcess) -> None:
    """The head timer runs only while a head is awaited: a connection idle between two requests for
    longer than the head timeout (but within uvicorn's 5 s keep-alive) still serves the second one."""
    body = valid_body("openai")
    request = request_head("openai", {"content-length": str(len(body))}) + body
    with socket.create_connection(_address(gateway), timeout=10) as sock:
        sock.sendall(request)
        first = _read_reply_keep_open(sock)
        time.sleep(HEADER_READ_TIMEOUT_S + 0.5)
        sock.sendall(request)
        second = _read_reply_keep_open(sock)
    assert (first, second) == (200, 200)


def _read_reply_keep_open(sock: socket.socket) -> int:
    """The status of one Content-Length response, read without waiting for the connection to close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed a kept-alive connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize(("case", "api"), [("dripped-headers", "openai"), ("dripped-headers", "anthropic"),
                                           ("silent-connection", "openai")])
def test_slow_headers_are_cut_off(gateway: GatewayProcess, case: str, api: str) -> None:
    head = request_head(api, {"content-length": "2"})
    first, dripped = (head[:20], head[20:]) if case == "dripped-headers" else (b"", b"")
    reply, sent = drip(gateway, first, dripped, limit_s=HEADER_READ_TIMEOUT_S + 10)
    print(f"\n{case}: status {reply.status} closed={reply.closed} after {reply.elapsed_s:.2f} s ({sent} bytes dripped)")
    assert reply.status in (None, 408) and (reply.closed or reply.status == 408), reply
    if reply.status == 408:  # the head was never parsed, but its request line names the API
        assert_provider_error_shape(api, 408, reply.body)
    assert reply.elapsed_s <= HEADER_READ_TIMEOUT_S + 1.5, reply.elapsed_s
    assert_still_serving(gateway)


# =========================================================================== 3. admin routes, real process

def guarded_routes() -> list[tuple[str, str]]:
    """(method, path) of every route behind the admin token: all of /admin, and the dashboard but for
    its sign-in and sign-out forms. Read from the app, so a route added later is covered too."""
    routes = [*admin.ROUTES, *dashboard.ROUTES]
    out = []
    for route in routes:
        path = route.path.replace("{name}", "dashboard.js")
        if path in ("/dashboard/login", "/dashboard/logout"):
            continue
        out += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return out


def admin_call(gateway: GatewayProcess, method: str, path: str, headers: Mapping[str, str] | list[Any]) -> httpx.Response:
    body = b'{"all": true}' if path == "/admin/purge" else None
    return httpx.request(method, gateway.url + path, headers=headers, content=body, timeout=30)


WRONG_CREDENTIALS: list[list[tuple[bytes, bytes]]] = [
    [],
    [(b"authorization", b"Bearer")],
    [(b"authorization", b"Bearer wrong-token")],
    [(b"authorization", b"Bearer " + ADMIN_TOKEN.encode() + b"x")],
    [(b"authorization", b"Bearer " + ADMIN_TOKEN[:-1].encode())],
    [(b"authorization", ADMIN_TOKEN.encode())],
    [(b"authorization", b"Basic " + ADMIN_TOKEN.encode())],
    [(b"authorization", b"Bearer \xff\xfe" + ADMIN_TOKEN.encode())],
    [(b"x-api-key", ADMIN_TOKEN.encode())],
    [(b"cookie", f"{dashboard.SESSION_COOKIE}=9999999999.{'0' * 64}".encode())],
]


def test_every_admin_route_needs_the_right_token(gateway: GatewayProcess) -> None:
    routes = guarded_routes()
    assert {path for _, path in routes} >= {"/admin/purge", "/admin/entries", "/admin/stats"}, routes
    for method, path in routes:
        for credentials in WRONG_CREDENTIALS:
            reply = admin_call(gateway, method, path, credentials)
            assert reply.status_code == 401, (method, path, credentials, reply.status_code, reply.text[:200])
        right = admin_call(gateway, method, path, {"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert right.status_code == 200, (method, path, right.status_code, right.text[:200])
    assert_still_serving(gateway)


def test_no_admin_route_is_reachable_without_a_configured_token(
        sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    process = serve(tmp_path_factory.mktemp("no-admin"), sim)
    try:
        login_and_logout = [("POST", "/dashboard/login"), ("POST", "/dashboard/logout")]
        for method, path in guarded_routes() + login_and_logout:
            for credentials in ([], [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())],
                                [(b"authorization", b"Bearer")], [(b"authorization", b"Bearer None")]):
                reply = admin_call(process, method, path, credentials)
                assert reply.status_code == 404, (method, path, credentials, reply.status_code, reply.text[:200])
        assert_still_serving(process)
    finally:
        process.stop()
