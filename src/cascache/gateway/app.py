"""The ASGI app: routes, body limits, and turning an `Outcome` into an HTTP response."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascache._errors import BodyReadTimeout, BodyTooLarge, CascacheError, NoUpstream, StoreUnavailable
from cascache.cache import Cache
from cascache.config import Settings
from cascache.gateway import admin, dashboard
from cascache.pipeline import Outcome
from cascache.providers import PROVIDERS
from cascache.upstreams.base import Upstream

log = logging.getLogger(__name__)

#: Opens the cache when the app starts; closes whatever it opened when it stops.
CacheFactory = Callable[[Settings], contextlib.AbstractAsyncContextManager[Cache]]


def _error(status: int, message: str, error_type: str, provider_name: str = "openai") -> Response:
    """An error in the shape of the API the client speaks."""
    return JSONResponse(PROVIDERS[provider_name].error_body(status, message, error_type), status_code=status,
                        headers={"x-cascache": "error"})


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed `limit` bytes, and (408)
    when the whole of it has not arrived within `timeout_s` (a slow-loris upload holds a task and
    a connection for as long as it is let drip)."""
    declared = request.headers.get("content-length")
    # isascii: str.isdigit() is also True for "²" (latin-1 0xB2), which int() refuses.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyReadTimeout(f"request body not received within {timeout_s:g} s") from None
    return b"".join(chunks)


def to_response(outcome: Outcome) -> Response:
    headers = dict(outcome.headers)
    media_type = headers.pop("content-type", "application/json")
    if outcome.stream is not None:
        headers.setdefault("cache-control", "no-cache")
        return StreamingResponse(outcome.stream, status_code=outcome.status, headers=headers, media_type=media_type)
    return Response(outcome.body or b"", status_code=outcome.status, headers=headers, media_type=media_type)


def _chat_route(provider_name: str) -> Callable[[Request], Awaitable[Response]]:
    async def chat(request: Request) -> Response:
        cache: Cache = request.app.state.cache
        server = cache.settings.server
        try:
            raw = await read_body(request, server.max_body_bytes, server.body_read_timeout_s)
        except CascacheError as exc:
            refused = _error(exc.status_code, str(exc), exc.error_type, provider_name)
            refused.headers["connection"] = "close"  # the rest of the body stays unread: no draining it
            return refused
        except ClientDisconnect:
            return Response(status_code=499)
        headers = {name.lower(): value for name, value in request.headers.items()}
        return to_response(await cache.chat(provider_name, raw, headers))

    return chat


async def models(request: Request) -> Response:
    cache: Cache = request.app.state.cache
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        upstream = cache.upstreams.get("openai")
        if upstream is None:
            raise NoUpstream("no OpenAI-compatible upstream is configured")
        reply = await upstream.get("/models", headers)
    except CascacheError as exc:
        return _error(exc.status_code, str(exc), exc.error_type)
    return Response(reply.body or b"", status_code=reply.status, media_type=reply.headers.get("content-type"))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    cache: Cache = request.app.state.cache
    return Response(cache.metrics.render(), media_type="text/plain; version=0.0.4")


async def not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"no route for {request.method} {request.url.path}", "invalid_request_error")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} is not allowed on {request.url.path}", "invalid_request_error")


@contextlib.asynccontextmanager
async def default_cache(settings: Settings) -> AsyncIterator[Cache]:
    """Open the cache against the configured upstream, or a managed llama.cpp engine when there is none."""
    async with contextlib.AsyncExitStack() as stack:
        upstream_url = settings.upstream.url
        upstreams: dict[str, Upstream] | None = None
        if not upstream_url and not settings.upstream.anthropic_url and not settings.pool.urls:
            from cascache.upstreams.managed import managed_engine, managed_pool

            if settings.pool.replicas > 1:
                local = await stack.enter_async_context(managed_pool(settings))
                upstreams = {"openai": local.pool}
            else:
                engine = await stack.enter_async_context(managed_engine(settings))
                upstream_url = engine.base_url
        cache = await Cache.open(settings, upstreams=upstreams, upstream_url=upstream_url)
        stack.push_async_callback(cache.close)
        yield cache


def create_app(settings: Settings, cache_factory: CacheFactory = default_cache) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with cache_factory(settings) as cache:
            app.state.cache = cache
            yield

    routes = [
        Route("/v1/chat/completions", _chat_route("openai"), methods=["POST"]),
        Route("/chat/completions", _chat_route("openai"), methods=["POST"]),
        Route("/v1/messages", _chat_route("anthropic"), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *admin.ROUTES,
        *dashboard.ROUTES,
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: not_found, 405: method_not_allowed,
                                         StoreUnavailable: admin.store_unavailable})
