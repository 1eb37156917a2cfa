"""The admin API under /admin: purge, list and inspect entries, stats.

Every route needs `Authorization: Bearer <admin token>`, compared in constant
time. With no token configured the routes answer 404: nothing is reachable.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cascache._types import CacheEntry, Namespace, PurgeSelector, Scope
from cascache.cache import Cache

Handler = Callable[[Request], Awaitable[Response]]

_SELECTORS = ("id", "namespace", "version", "scope", "tag", "all")
_MAX_PAGE = 500


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "admin_error"}}, status_code=status)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """An admin call the store could not serve (a locked SQLite, a Redis node down): 503, so the
    operator knows to retry. Requests on the chat path never get here: their tiers fail open."""
    return _problem(503, f"the cache store is unavailable, retry later: {exc}")


def require_admin(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        cache: Cache = request.app.state.cache
        token = cache.settings.admin.token
        if not token:
            return _problem(404, "the admin API is disabled: no admin token is configured")
        # RFC 9110: the scheme is case-insensitive ("bearer x" is as good as "Bearer x"); the token is not.
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.encode(), token.encode()):
            return _problem(401, "missing or wrong admin token")
        return await handler(request)

    return guarded


def purge_selector(body: Any) -> PurgeSelector:
    """`{"namespace": "..."}` etc. -> PurgeSelector; exactly one known selector."""
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in _SELECTORS:
        raise ValueError(f"the body names exactly one of {list(_SELECTORS)}")
    (name, value), = body.items()
    if name == "all":
        if value is not True:
            raise ValueError('purge everything with {"all": true}')
        return PurgeSelector(all=True)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    typed: dict[str, Any] = {"namespace": Namespace(value)} if name == "namespace" else (
        {"scope": Scope(value)} if name == "scope" else {name: value})
    return PurgeSelector(**typed)


def describe(entry: CacheEntry, now: float) -> dict[str, Any]:
    """An entry as the admin API shows it (no vector, no full response)."""
    return {
        "id": entry.id,
        "query": entry.query,
        "model": entry.model,
        "provider": entry.provider,
        "namespace": entry.namespace,
        "scope": entry.scope,
        "version": entry.version,
        "tags": list(entry.tags),
        "hits": entry.hits,
        "age_s": round(now - entry.created_at, 3),
        "ttl_remaining_s": None if entry.expires_at is None else round(entry.expires_at - now, 3),
        "last_hit_at": entry.last_hit_at,
        "usage": entry.usage.to_dict(),
    }


@require_admin
async def purge(request: Request) -> Response:
    cache: Cache = request.app.state.cache
    try:
        selector = purge_selector(await request.json())
    except ValueError as exc:
        return _problem(400, str(exc))
    removed = await cache.store.purge(selector)
    return JSONResponse({"purged": removed})


@require_admin
async def entries(request: Request) -> Response:
    cache: Cache = request.app.state.cache
    try:
        offset = int(request.query_params.get("offset", 0))
        limit = int(request.query_params.get("limit", 50))
    except ValueError:
        return _problem(400, "offset and limit must be integers")
    if offset < 0 or not 0 < limit <= _MAX_PAGE:
        return _problem(400, f"offset >= 0 and 0 < limit <= {_MAX_PAGE}")
    now = time.time()
    page = await cache.store.list_entries(offset=offset, limit=limit)
    return JSONResponse({"offset": offset, "limit": limit, "entries": [describe(e, now) for e in page]})


@require_admin
async def stats(request: Request) -> Response:
    cache: Cache = request.app.state.cache
    store_stats = await cache.store.stats()
    return JSONResponse({
        "store": {"entries": store_stats.entries, "namespaces": store_stats.namespaces,
                  "evictions": store_stats.evictions, "expired_swept": store_stats.expired_swept,
                  **{k: v for k, v in store_stats.extra.items() if isinstance(v, int | float | str | bool)}},
        "requests": cache.metrics.request_counts(),
        "verification": cache.pipeline.verification.stats(),
        # Beside our own tier counters: what the self-hosted engines say of their prefix caches.
        "engines": await _engine_stats(cache),
        "runtime": _runtime_stats(cache),
    })


def _runtime_stats(cache: Cache) -> dict[str, int]:
    """Live asyncio tasks (this request's own included); coalesced flights in progress and followers so far.

    An idle gateway's task count is flat; one that grows after clients have gone is leaking
    upstream calls or streams (tests/reliability/test_client_disconnects.py watches it).
    """
    coalescer = cache.pipeline.coalescer
    return {"tasks": len(asyncio.all_tasks()), "flights_in_progress": coalescer.in_flight,
            "followers_joined": coalescer.followers_joined}


async def _engine_stats(cache: Cache) -> dict[str, Any] | None:
    try:
        return await cache.engine_cache_stats()
    except Exception as exc:  # a replica's /metrics being down must not break the stats page
        return {"error": f"{type(exc).__name__}: {exc}"}


ROUTES = [
    Route("/admin/purge", purge, methods=["POST"]),
    Route("/admin/entries", entries, methods=["GET"]),
    Route("/admin/stats", stats, methods=["GET"]),
]
