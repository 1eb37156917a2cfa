"""Test doubles that go through the real seams: an embedder, and an upstream behind httpx.MockTransport."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from cascache._types import Vector
from cascache.upstreams.http import HttpUpstream


class KeywordEmbedder:
    """Bag of hashed words: same words in any order give the same vector; shared words give similarity."""

    name = "keyword-test"
    dim = 256

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def embed(self, texts: Sequence[str]) -> Vector:
        self.calls += 1
        if self.fail:
            raise RuntimeError("embedder down")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out

    async def close(self) -> None:
        return None


def chat_answer(content: str, model: str = "test-model", finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def sse_answer(content: str, model: str = "test-model", finish: str = "stop", cut: bool = False,
               include_usage: bool = False) -> bytes:
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for word in content.split(" "):
        events.append({**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if include_usage:  # as OpenAI does: one last chunk with no choices and the usage
        events.append({**base, "choices": [], "usage": chat_answer(content)["usage"]})
    raw = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    if cut:
        return raw[: len(raw) // 2]
    return raw + b"data: [DONE]\n\n"


@dataclass
class FakeProvider:
    """An OpenAI-shaped upstream whose behaviour each test sets; records every request it saw."""

    answer: Callable[[dict[str, Any]], str] = lambda body: "answer to: " + str(body["messages"][-1]["content"])
    status: int = 200
    error_body: dict[str, Any] | None = None
    finish: str = "stop"
    cut_stream: bool = False
    raise_exc: Exception | None = None
    raise_times: int | None = None
    """How many requests raise `raise_exc` (None: all of them)."""
    attempts: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.raise_exc is not None and (self.raise_times is None or self.raise_times > 0):
            if self.raise_times is not None:
                self.raise_times -= 1
            raise self.raise_exc
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        body = orjson.loads(request.content)
        self.requests.append(body)
        self.headers_seen.append(dict(request.headers))
        if self.status != 200:
            return httpx.Response(self.status, json=self.error_body or {"error": {"message": "upstream failed",
                                                                                  "type": "server_error"}},
                                  headers={"retry-after": "7"} if self.status == 429 else {})
        content = self.answer(body)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            raw = sse_answer(content, finish=self.finish, cut=self.cut_stream, include_usage=include_usage)
            return httpx.Response(200, content=raw,
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=chat_answer(content, finish=self.finish))

    def upstream(self, api_key: str | None = None) -> HttpUpstream:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return HttpUpstream("http://upstream.test/v1", api_key=api_key, client=client)
