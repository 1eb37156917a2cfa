"""The library face: `cascache.wrap(client)` for the OpenAI and Anthropic SDK clients, sync and async.

The wrapped client is a copy of the caller's client whose HTTP transport hands
chat requests to an in-process `Cache` (same keys, same store, same pipeline
as the gateway) and sends everything else to the provider unchanged. Going
through the transport, rather than patching `chat.completions.create`, keeps
every SDK feature (streaming helpers, retries, typed responses) intact.

Async is written once: the sync client drives the same async `Cache` on a
private event loop thread.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from types import ModuleType
from typing import Any, TypeVar

from cascache.cache import Cache
from cascache.config import Settings, load_settings
from cascache.pipeline import Outcome
from cascache.providers import PROVIDERS
from cascache.upstreams.http import HttpUpstream

T = TypeVar("T")
ClientT = TypeVar("ClientT")

class _CacheHandle:
    """Opens the Cache on first use, on whichever loop the requests run on.

    The upstream's base URL is taken from the first chat request itself (its URL
    minus the chat path), so any base URL the SDK was given works unchanged.
    """

    def __init__(self, settings: Settings, provider: str) -> None:
        self._settings = settings
        self.provider = provider
        self.chat_path = PROVIDERS[provider].chat_path
        self._cache: Cache | None = None
        self._lock: asyncio.Lock | None = None

    def is_chat(self, request: Any) -> bool:
        return bool(request.method == "POST" and request.url.path.endswith(self.chat_path))

    async def get(self, request_url: str) -> Cache:
        if self._cache is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._cache is None:
                    base_url = request_url.split("?", 1)[0][: -len(self.chat_path)]
                    # No key of our own: the SDK's credential headers are forwarded.
                    upstream = HttpUpstream(base_url, timeout_s=self._settings.upstream.timeout_s,
                                            connect_timeout_s=self._settings.upstream.connect_timeout_s)
                    self._cache = await Cache.open(self._settings, upstreams={self.provider: upstream})
        return self._cache

    async def close(self) -> None:
        if self._cache is not None:
            await self._cache.close()
            self._cache = None


class _LoopThread:
    """A private event loop in a daemon thread, for the sync client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cascache-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()


def _headers(request: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def _transports(httpx: ModuleType) -> tuple[type, type]:
    """Transport classes for the given httpx-compatible module (httpx or httpx2), built once per wrap()."""

    class AsyncStream(httpx.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, chunks: AsyncIterator[bytes]) -> None:
            self._chunks = chunks

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._chunks:
                yield chunk

        async def aclose(self) -> None:
            await self._chunks.aclose()  # type: ignore[attr-defined]

    class SyncStream(httpx.SyncByteStream):  # type: ignore[name-defined,misc]
        """Pulls the async stream one chunk at a time through the private loop."""

        def __init__(self, runner: _LoopThread, chunks: AsyncIterator[bytes]) -> None:
            self._runner = runner
            self._chunks = chunks

        def __iter__(self) -> Iterator[bytes]:
            while True:
                try:
                    yield self._runner.run(self._chunks.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return

        def close(self) -> None:
            self._runner.run(self._chunks.aclose())  # type: ignore[attr-defined]

    def response(outcome: Outcome, request: Any, stream: Any) -> Any:
        if stream is not None:
            return httpx.Response(outcome.status, headers=outcome.headers, stream=stream, request=request)
        return httpx.Response(outcome.status, headers=outcome.headers, content=outcome.body or b"",
                              request=request)

    class AsyncCascacheTransport(httpx.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        def __init__(self, handle: _CacheHandle, fallback: Any) -> None:
            self._handle = handle
            self._fallback = fallback

        async def handle_async_request(self, request: Any) -> Any:
            if not self._handle.is_chat(request):
                return await self._fallback.handle_async_request(request)
            cache = await self._handle.get(str(request.url))
            outcome = await cache.chat(self._handle.provider, await request.aread(), _headers(request))
            return response(outcome, request, AsyncStream(outcome.stream) if outcome.stream is not None else None)

        async def aclose(self) -> None:
            await self._handle.close()
            await self._fallback.aclose()

    class SyncCascacheTransport(httpx.BaseTransport):  # type: ignore[name-defined,misc]
        def __init__(self, handle: _CacheHandle, fallback: Any, runner: _LoopThread) -> None:
            self._handle = handle
            self._fallback = fallback
            self._runner = runner

        def handle_request(self, request: Any) -> Any:
            if not self._handle.is_chat(request):
                return self._fallback.handle_request(request)
            body = request.read()

            async def serve() -> Outcome:
                cache = await self._handle.get(str(request.url))
                return await cache.chat(self._handle.provider, body, _headers(request))

            outcome = self._runner.run(serve())
            stream = SyncStream(self._runner, outcome.stream) if outcome.stream is not None else None
            return response(outcome, request, stream)

        def close(self) -> None:
            self._runner.run(self._handle.close())
            self._fallback.close()

    return AsyncCascacheTransport, SyncCascacheTransport


def _httpx_module_of(http_client: Any) -> ModuleType:
    """httpx or httpx2 (pydantic's fork, used by newer SDKs): whichever the SDK's client is built on."""
    for cls in type(http_client).__mro__:
        top = cls.__module__.split(".")[0]
        if top in {"httpx", "httpx2"}:
            return importlib.import_module(top)
    raise TypeError(f"the SDK's HTTP client {type(http_client).__name__} is not an httpx client")


def wrap(client: ClientT, settings: Settings | None = None) -> ClientT:
    """A copy of an OpenAI or Anthropic SDK client (sync or async) that caches through cascache.

    `settings` default to `load_settings()` (CASCACHE_* environment variables):
    the embedded store under `.cascache/` and the default local embedder.
    """
    settings = settings or load_settings()
    sdk_http = getattr(client, "_client", None)
    if sdk_http is None or not hasattr(client, "copy"):
        raise TypeError(f"cascache.wrap expects an OpenAI or Anthropic SDK client, got {type(client).__name__}")
    provider = "anthropic" if type(client).__module__.split(".")[0] == "anthropic" else "openai"
    httpx = _httpx_module_of(sdk_http)
    async_transport, sync_transport = _transports(httpx)
    handle = _CacheHandle(settings, provider)
    timeout = sdk_http.timeout
    if isinstance(sdk_http, httpx.AsyncClient):
        http_client = httpx.AsyncClient(transport=async_transport(handle, httpx.AsyncHTTPTransport()),
                                        timeout=timeout)
    else:
        http_client = httpx.Client(transport=sync_transport(handle, httpx.HTTPTransport(), _LoopThread()),
                                   timeout=timeout)
    return client.copy(http_client=http_client)  # type: ignore[attr-defined,no-any-return]
