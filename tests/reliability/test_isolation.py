"""Issue 8, part 5: isolation and poisoning, plus part 2's client-disconnect bullet.

In-process `Cache` with fake upstreams whose answers carry a marker naming who asked:
- no lookup (exact or semantic) ever crosses tenant, user or namespace version;
- nothing but a successful, complete upstream answer to the same key ever becomes an entry;
- API keys never reach the store files, the metrics or the logs;
- a client that goes away before, during or after the upstream call leaks no task and caches nothing partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cascache.cache import Cache
from cascache.config import Settings, load_settings
from cascache.pipeline import Outcome
from cascache.stores.base import Store
from cascache.stores.memory import MemoryStore
from cascache.stores.sqlite_hnsw import SqliteHnswStore
from cascache.upstreams.base import UpstreamReply
from tests.fakes import FakeProvider, KeywordEmbedder, chat_answer, sse_answer
from tests.redis_support import fresh_redis_store

pytestmark = pytest.mark.reliability

DEFAULT_VERSION = "v1"
HITS = ("hit-exact", "hit-semantic")


def make_settings(data_dir: Path, threshold: float = 0.5) -> Settings:
    # Low threshold: paraphrases (and near neighbours) WOULD hit inside one scope; no off-path probes.
    return load_settings(overrides={"semantic.threshold": threshold, "verification.sample_share": 0.0,
                                    "data_dir": str(data_dir)}, environ={})


def chat_body(text: str, *, stream: bool = False, user: str | None = None) -> bytes:
    body: dict[str, Any] = {"model": "test-model", "temperature": 0, "stream": stream,
                            "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": text}]}
    if user is not None:
        body["user"] = user
    return orjson.dumps(body)


def content_of(outcome: Outcome) -> str:
    assert outcome.body is not None
    return orjson.loads(outcome.body)["choices"][0]["message"]["content"]


async def read_all(outcome: Outcome) -> bytes:
    if outcome.stream is None:
        return outcome.body or b""
    return b"".join([chunk async for chunk in outcome.stream])


async def entries(cache: Cache) -> list[Any]:
    return await cache.store.list_entries(0, 10_000)


# --------------------------------------------------------------------------- 1. scope and version isolation

class MarkerUpstream:
    """Answers with a marker naming the (tenant, user, version, question) of the request that reached it."""

    kind = "openai_compatible"

    def __init__(self) -> None:
        self.calls = 0

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        self.calls += 1
        request = orjson.loads(body)
        auth = headers.get("authorization", "")
        tenant = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key") or "-"
        user = request.get("user") or headers.get("x-cascache-user") or "-"
        version = headers.get("x-cascache-version", DEFAULT_VERSION)
        marker = orjson.dumps({"t": tenant, "u": user, "v": version, "q": request["messages"][-1]["content"]})
        return UpstreamReply(200, {"content-type": "application/json"},
                             body=orjson.dumps(chat_answer("MARK " + marker.decode())))

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        raise NotImplementedError

    async def close(self) -> None:
        return None


# Paraphrase groups: same words (KeywordEmbedder similarity 1.0) or most words shared (well above 0.5).
QUESTIONS = (
    "What is the capital of France?",
    "capital of France: what is the?",
    "What is the capital city of France?",
    "How do I reverse a list in Python?",
    "in Python how do I reverse a list",
    "Why is the sea salty?",
    "Why is the ocean salty?",
)
TENANTS = (None, "sk-tenant-a", "sk-tenant-b")
TENANT_HEADERS = ("authorization", "x-api-key")
USERS = (None, "alice", "bob")
USER_SOURCES = ("body", "header")
VERSIONS = (None, "v1", "v2")  # None: the default namespace version, "v1"


@dataclass(frozen=True)
class Req:
    tenant: str | None
    tenant_header: str
    user: str | None
    user_source: str
    version: str | None
    question: int

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.tenant is not None:
            out["authorization" if self.tenant_header == "authorization" else "x-api-key"] = (
                f"Bearer {self.tenant}" if self.tenant_header == "authorization" else self.tenant)
        if self.user is not None and self.user_source == "header":
            out["x-cascache-user"] = self.user
        if self.version is not None:
            out["x-cascache-version"] = self.version
        return out

    def body(self) -> bytes:
        return chat_body(QUESTIONS[self.question], user=self.user if self.user_source == "body" else None)

    def scope(self) -> tuple[str, str, str]:
        return (self.tenant or "-", self.user or "-", self.version or DEFAULT_VERSION)


fresh_req = st.builds(Req, st.sampled_from(TENANTS), st.sampled_from(TENANT_HEADERS), st.sampled_from(USERS),
                      st.sampled_from(USER_SOURCES), st.sampled_from(VERSIONS),
                      st.integers(0, len(QUESTIONS) - 1))


@st.composite
def sequences(draw: st.DrawFn) -> list[Req]:
    """Fresh requests, and repeats of earlier ones with one field changed: the near misses that matter."""
    out = [draw(fresh_req)]
    for _ in range(draw(st.integers(3, 14))):
        how = draw(st.sampled_from(("fresh", "same", "tenant", "user", "user_source", "version", "question")))
        if how == "fresh":
            out.append(draw(fresh_req))
            continue
        base = draw(st.sampled_from(out))
        changes: dict[str, Any] = {
            "same": {},
            "tenant": {"tenant": draw(st.sampled_from(TENANTS)), "tenant_header": draw(st.sampled_from(TENANT_HEADERS))},
            "user": {"user": draw(st.sampled_from(USERS))},
            "user_source": {"user_source": draw(st.sampled_from(USER_SOURCES))},
            "version": {"version": draw(st.sampled_from(VERSIONS))},
            "question": {"question": draw(st.integers(0, len(QUESTIONS) - 1))},
        }[how]
        out.append(Req(**{**base.__dict__, **changes}))
    return out


async def run_sequence(store_kind: str, sequence: list[Req], seen: dict[str, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store: Store = (MemoryStore() if store_kind == "memory"
                        else fresh_redis_store(KeywordEmbedder.dim) if store_kind == "redis"
                        else SqliteHnswStore(Path(tmp) / "store", KeywordEmbedder.dim))
        upstream = MarkerUpstream()
        cache = Cache(make_settings(Path(tmp)), store, KeywordEmbedder(), {"openai": upstream})
        try:
            for req in sequence:
                outcome = await cache.chat("openai", req.body(), req.headers())
                assert outcome.status == 200, outcome.body
                served = outcome.headers["x-cascache"]
                content = content_of(outcome)
                assert content.startswith("MARK ")
                marker = orjson.loads(content[5:])
                if served in HITS:
                    seen[served] += 1
                    if marker["q"] != QUESTIONS[req.question]:
                        seen["paraphrase"] += 1
                    assert (marker["t"], marker["u"], marker["v"]) == req.scope(), (
                        f"{served} crossed scope: request {req} got an answer cached for {marker}")
                else:
                    assert served == "miss"
                    seen["miss"] += 1
                    assert (marker["t"], marker["u"], marker["v"]) == req.scope()
        finally:
            await cache.close()


@pytest.mark.parametrize("store_kind", ["memory", "sqlite",
                                        # RediSearch filters scope in its own query language: its own run.
                                        pytest.param("redis", marks=pytest.mark.integration)])
def test_no_lookup_crosses_scope_or_version(store_kind: str) -> None:
    seen = {"hit-exact": 0, "hit-semantic": 0, "paraphrase": 0, "miss": 0}

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(sequences())
    def check(sequence: list[Req]) -> None:
        asyncio.run(run_sequence(store_kind, sequence, seen))

    check()
    # The property is not vacuous: exact and semantic (paraphrase) hits did happen.
    assert seen["hit-exact"] >= 20 and seen["hit-semantic"] >= 10 and seen["paraphrase"] >= 10, seen
    assert seen["miss"] >= 20, seen


# --------------------------------------------------------------------------- 2. a client cannot plant an entry

class ScriptedUpstream:
    """Replies with `bad` until told to behave, then with a good answer; streams when asked to."""

    kind = "openai_compatible"

    def __init__(self, bad: str) -> None:
        self.bad: str | None = bad
        self.calls = 0

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        self.calls += 1
        mode = self.bad
        json_type = {"content-type": "application/json"}
        if mode is None:
            if stream:
                return _stream_reply(sse_answer("good answer"))
            return UpstreamReply(200, json_type, body=orjson.dumps(chat_answer("good answer")))
        if mode.startswith("status-"):
            status = int(mode.split("-")[1])
            return UpstreamReply(status, json_type, body=b'{"error": {"message": "nope", "type": "server_error"}}')
        if stream:
            raw = {"truncated": sse_answer("cut short", finish="length"),
                   "empty": sse_answer("", finish="stop").replace(b'"content":" "', b'"content":""'),
                   "malformed": b"data: {not json\n\ndata: [DONE]\n\n",
                   "cut": sse_answer("the stream breaks in the middle", cut=True),
                   "no-body": b""}[mode]
            return _stream_reply(raw)
        body = {"truncated": orjson.dumps(chat_answer("cut short", finish="length")),
                "empty": orjson.dumps(chat_answer("")),
                "whitespace": orjson.dumps(chat_answer("   ")),
                "no-choices": orjson.dumps({**chat_answer("x"), "choices": []}),
                "malformed": b'{"choices": [{"message": {"content": "planted"',
                "not-object": b'["planted"]',
                "no-body": b""}[mode]
        return UpstreamReply(200, json_type, body=body)

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _stream_reply(raw: bytes) -> UpstreamReply:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 50):
            yield raw[i:i + 50]

    async def close() -> None:
        return None

    return UpstreamReply(200, {"content-type": "text/event-stream"}, chunks=chunks(), close=close)


BAD_JSON = ["status-400", "status-401", "status-429", "status-500", "status-503", "truncated", "empty",
            "whitespace", "no-choices", "malformed", "not-object", "no-body"]
BAD_STREAM = ["status-500", "status-429", "truncated", "empty", "malformed", "cut", "no-body"]


@pytest.mark.parametrize(("bad", "stream"), [(b, False) for b in BAD_JSON] + [(b, True) for b in BAD_STREAM])
async def test_a_failed_or_partial_answer_never_becomes_an_entry(tmp_path: Path, bad: str, stream: bool) -> None:
    upstream = ScriptedUpstream(bad)
    cache = Cache(make_settings(tmp_path), MemoryStore(), KeywordEmbedder(), {"openai": upstream})
    headers = {"authorization": "Bearer sk-planter"}
    body = chat_body("What is the capital of France?", stream=stream)
    paraphrase = chat_body("capital of France: what is the?", stream=stream)
    try:
        for _ in range(2):  # asking twice must not turn a bad answer into an entry either
            outcome = await cache.chat("openai", body, headers)
            await read_all(outcome)
            assert outcome.headers["x-cascache"] in ("miss", "error"), outcome.headers
        assert await entries(cache) == [], f"{bad} (stream={stream}) was cached"
        assert upstream.calls == 2
        # Once the upstream behaves, the next identical request (and its paraphrase) goes upstream.
        upstream.bad = None
        for ask in (paraphrase, body):
            outcome = await cache.chat("openai", ask, headers)
            assert outcome.headers["x-cascache"] == "miss" if ask is paraphrase else True
            await read_all(outcome)
        assert upstream.calls == 3  # the paraphrase missed; the original hit what the paraphrase stored
        stored = await entries(cache)
        assert len(stored) == 1 and "good answer" in orjson.dumps(stored[0].response).decode()
    finally:
        await cache.close()


async def test_only_the_same_key_is_written(tmp_path: Path) -> None:
    """A successful answer is written under its own key only: other tenants, versions and users still miss."""
    upstream = MarkerUpstream()
    cache = Cache(make_settings(tmp_path), MemoryStore(), KeywordEmbedder(), {"openai": upstream})
    text = "What is the capital of France?"
    try:
        first = await cache.chat("openai", chat_body(text), {"authorization": "Bearer sk-a"})
        assert first.headers["x-cascache"] == "miss" and len(await entries(cache)) == 1
        others = [({"authorization": "Bearer sk-b"}, None), ({"authorization": "Bearer sk-a",
                                                            "x-cascache-version": "v2"}, None),
                  ({"authorization": "Bearer sk-a"}, "alice"), ({"authorization": "Bearer sk-a",
                                                               "x-cascache-user": "bob"}, None), ({}, None)]
        for headers, user in others:
            outcome = await cache.chat("openai", chat_body(text, user=user), headers)
            assert outcome.headers["x-cascache"] == "miss", (headers, user)
        assert upstream.calls == 1 + len(others)
        assert (await cache.chat("openai", chat_body(text), {"x-api-key": "sk-a"})).headers["x-cascache"] == "hit-exact"
    finally:
        await cache.close()


# --------------------------------------------------------------------------- 3. API keys never stored or logged

async def test_api_keys_never_reach_store_metrics_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = [f"sk-SECRET-{secrets.token_hex(8)}" for _ in range(3)]
    data_dir = tmp_path / "data"
    provider = FakeProvider()
    store = SqliteHnswStore(data_dir / "store", KeywordEmbedder.dim, exact_search_below=1)  # HNSW files too
    cache = Cache(make_settings(data_dir), store, KeywordEmbedder(), {"openai": provider.upstream()})
    try:
        for i, key in enumerate(keys):
            for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key},
                            {"authorization": f"Bearer {key}", "x-cascache-user": f"user-{i}"}):
                for text in ("What is the capital of France?", "capital of France: what is the?",
                             f"question number {i}"):
                    for stream in (False, True):
                        await read_all(await cache.chat("openai", chat_body(text, stream=stream), headers))
                await read_all(await cache.chat("openai", b"{not json", headers))  # error path
            provider.status = 500  # upstream error path, logged and counted
            await read_all(await cache.chat("openai", chat_body("fails upstream"), {"authorization": f"Bearer {key}"}))
            provider.status = 200
        assert len(await entries(cache)) > 0
        metrics = cache.metrics.render()
    finally:
        await cache.close()
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "cache.db" for p in files) and len(files) > 1, files
    for key in keys:
        needle = key.encode()
        for path in files:
            assert needle not in path.read_bytes(), f"API key found in {path}"
        assert needle not in metrics
        assert key not in caplog.text
        for record in caplog.records:
            assert key not in str(record.args) and key not in record.getMessage()


# --------------------------------------------------------------------------- 4. client disconnects

class GatedStreamUpstream:
    """Streams only after the gate opens; counts calls, finished streams and closes."""

    kind = "openai_compatible"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.closed = 0
        self.drained = 0

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        self.calls += 1
        await self.gate.wait()
        raw = sse_answer("a long complete answer about why the sea is salty", include_usage=True)
        if not stream:
            return UpstreamReply(200, {"content-type": "application/json"},
                                 body=orjson.dumps(chat_answer("a complete answer")))

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(raw), 40):
                yield raw[i:i + 40]
                await asyncio.sleep(0.002)
            self.drained += 1

        async def close() -> None:
            self.closed += 1

        return UpstreamReply(200, {"content-type": "text/event-stream"}, chunks=chunks(), close=close)

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        raise NotImplementedError

    async def close(self) -> None:
        return None


async def settle(baseline: set[asyncio.Task[Any]], timeout: float = 2.0) -> set[asyncio.Task[Any]]:
    """Wait until only the baseline tasks are alive; return the extras left over (empty when clean)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        extra = asyncio.all_tasks() - baseline
        if not extra or loop.time() > deadline:
            return extra
        await asyncio.sleep(0.01)


# A non-streaming answer has no "during": its body arrives whole.
@pytest.mark.parametrize(("when", "stream"), [("before", True), ("during", True), ("after", True),
                                              ("before", False), ("after", False)])
async def test_client_disconnect_leaks_nothing_and_caches_nothing_partial(tmp_path: Path, when: str,
                                                                          stream: bool) -> None:
    upstream = GatedStreamUpstream()
    cache = Cache(make_settings(tmp_path), MemoryStore(), KeywordEmbedder(), {"openai": upstream})
    headers = {"authorization": "Bearer sk-disconnect"}
    body = chat_body("Why is the sea salty?", stream=stream)
    baseline = set(asyncio.all_tasks())
    try:
        task = asyncio.create_task(cache.chat("openai", body, headers))
        await asyncio.sleep(0.02)
        assert upstream.calls == 1
        if when == "before":
            # The client goes away while the upstream call is still pending (no headers yet).
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            upstream.gate.set()
            await asyncio.sleep(0.05)
        else:
            upstream.gate.set()
            async with asyncio.timeout(5):
                outcome = await task
            if stream:
                assert outcome.stream is not None
                if when == "during":
                    first = await anext(outcome.stream)
                    assert first.startswith(b"data: ")
                else:  # "after": every event received, the client leaves before the stream's end
                    received = b""
                    while b"[DONE]" not in received:
                        received += await anext(outcome.stream)
                    await asyncio.sleep(0.05)  # the upstream has long finished sending
                await outcome.stream.aclose()  # type: ignore[attr-defined]
        leaked = await settle(baseline)
        assert not leaked, f"tasks leaked after a disconnect {when} the upstream call: {leaked}"
        stored = await entries(cache)
        if when == "after":
            # The whole answer went out; an entry is allowed only if it is the complete answer.
            for entry in stored:
                text = orjson.dumps(entry.response).decode()
                assert "complete answer" in text and '"finish_reason":"stop"' in text, text
        else:
            assert stored == [], f"a disconnect {when} the upstream call left an entry"
        if stream and when == "during":
            assert upstream.closed == 1
        # The cache still works for the next client.
        upstream.gate.set()
        again = await cache.chat("openai", body, headers)
        answer = await read_all(again)
        assert again.status == 200
        assert answer.endswith(b"data: [DONE]\n\n") if stream else b"complete answer" in answer, answer
    finally:
        await cache.close()
    assert not await settle(baseline)
