"""An in-process gateway for unit tests: real app and pipeline, memory store, fake provider behind httpx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.testclient import TestClient

from cascache.cache import Cache
from cascache.config import Settings
from cascache.stores.memory import MemoryStore
from tests.fakes import FakeProvider, KeywordEmbedder

Q = "What is the capital of France?"


def body(text: str = Q, **extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": text}], "temperature": 0, **extra}


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.provider = FakeProvider()
        self.embedder = KeywordEmbedder()
        self.store = MemoryStore()
        self.settings = settings

    @contextlib.asynccontextmanager
    async def factory(self, settings: Settings) -> AsyncIterator[Cache]:
        cache = Cache(settings, self.store, self.embedder, {"openai": self.provider.upstream()})
        self.cache = cache
        yield cache
        await cache.close()


def post(client: TestClient, payload: Any, **headers: str) -> httpx.Response:
    return client.post("/v1/chat/completions", json=payload, headers=headers)
