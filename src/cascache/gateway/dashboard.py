"""The live dashboard at /dashboard: one page, the JSON it polls, and how a browser proves it is an admin.

Numbers. Every figure in `GET /dashboard/api/summary` is read from the cache's
own Prometheus registry, the one `/metrics` renders, at the moment of the
request: the page can never disagree with a scrape taken at the same time.
Latency percentiles are computed here from the `cascache_stage_seconds`
buckets the way PromQL's `histogram_quantile` does (linear inside a bucket),
over everything since the process started. History over time is the page's
own (it keeps the snapshots it polled) or Grafana's; the gateway keeps none.

Auth. A browser cannot put `Authorization: Bearer` on a page it navigates to,
so the page offers a login form: `POST /dashboard/login` with the admin token
sets a short-lived session cookie (`HttpOnly`, `SameSite=Strict`, path
`/dashboard`) whose value is an expiry time signed with HMAC-SHA256 keyed by
the admin token itself. Nothing is stored server-side; rotating the token ends
every session. The token never appears in a URL and is never readable by the
page's scripts. Every route also accepts the Bearer header through
`admin.require_admin`, and like /admin every route answers 404 when no admin
token is configured.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import time
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cascache._types import CacheEntry, Served
from cascache.cache import Cache
from cascache.gateway.admin import Handler, describe, require_admin

__all__ = ["FALSE_HIT_CHECKS", "ROUTES", "SESSION_COOKIE", "bucket_quantile", "metrics_summary", "session_valid",
           "session_value", "wilson_interval"]

SESSION_COOKIE = "cascache_dashboard"
#: One working shift: long enough for a wall display, short enough that a forgotten browser loses access.
SESSION_TTL_S = 8 * 3600
_COOKIE_PATH = "/dashboard"
_MAX_LOGIN_BODY = 4096

#: The false-hit monitor's counter (docs/metrics.md): sampled semantic hits re-checked upstream, by
#: `verdict` ("false_hit" or "correct"). Read by name so the page works before and after it exists.
FALSE_HIT_CHECKS = "cascache_false_hit_checks"
_FALSE_VERDICT = "false_hit"

QUANTILES = (0.5, 0.95)
TOP_ENTRIES = 10
#: Top entries are chosen among the newest entries only: a full scan of a large Redis store on every
#: refresh would cost more than the dashboard is worth. The reply says whether the scan was complete.
_SCAN_LIMIT = 5000
_SCAN_PAGE = 500

_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# The page's scripts come only from this origin, so text from cache entries (user queries) can never run.
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
             "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_LOGIN_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


# ---- numbers: from the registry to the summary -------------------------------------------------------


def _families(registry: CollectorRegistry) -> dict[str, Metric]:
    return {family.name: family for family in registry.collect()}


def _totals(family: Metric | None, *labels: str) -> dict[tuple[str, ...], float]:
    """A counter's `_total` samples summed by the given labels (the others are added up)."""
    sums: dict[tuple[str, ...], float] = {}
    if family is None:
        return sums
    for sample in family.samples:
        if sample.name.endswith("_total"):
            key = tuple(sample.labels[label] for label in labels)
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram, as PromQL's `histogram_quantile` estimates it.

    `buckets` are (upper bound, cumulative count) in ascending order, ending
    with +Inf. The rank is interpolated linearly inside its bucket (the first
    bucket starts at 0); a rank in the +Inf bucket answers the highest finite
    bound, since nothing is known above it. None when nothing was observed.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound
            if count == lower_count:
                return upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = upper, count
    return lower_bound


def _stage_latency(family: Metric | None) -> dict[str, dict[str, float | None]]:
    """Per stage: observation count, sum, and the p50/p95 estimated from the buckets."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for sample in family.samples if family is not None else ():
        stage = sample.labels.get("stage", "")
        if sample.name.endswith("_bucket"):
            buckets.setdefault(stage, []).append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_sum"):
            sums[stage] = sample.value
        elif sample.name.endswith("_count"):
            counts[stage] = sample.value
    return {
        stage: {"count": counts.get(stage, 0.0), "sum_s": sums.get(stage, 0.0),
                **{f"p{round(q * 100)}_s": bucket_quantile(q, stage_buckets) for q in QUANTILES}}
        for stage, stage_buckets in sorted(buckets.items())
    }


def wilson_interval(k: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """Two-sided Wilson score interval of k/n (95% by default); good coverage even for small k."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def _false_hits(family: Metric | None) -> dict[str, float] | None:
    """Estimated false-hit rate with its 95% interval, or None when no semantic hit was checked yet."""
    by_verdict = _totals(family, "verdict")
    checked = sum(by_verdict.values())
    if checked <= 0:
        return None
    false = by_verdict.get((_FALSE_VERDICT,), 0.0)
    low, high = wilson_interval(false, checked)
    return {"checked": checked, "false_hits": false, "rate": false / checked, "low": low, "high": high,
            "confidence": 0.95}


def _flat(sums: Mapping[tuple[str, ...], float]) -> dict[str, float]:
    return {"/".join(key): value for key, value in sorted(sums.items())}


def metrics_summary(registry: CollectorRegistry) -> dict[str, Any]:
    """Everything the page shows that comes from the registry; pure, so tests compare it with `/metrics`."""
    families = _families(registry)
    requests = {served.value: 0.0 for served in Served}
    requests.update(_flat(_totals(families.get("cascache_requests"), "served")))
    tokens: dict[str, dict[str, float]] = {}
    for (kind, saved), value in _totals(families.get("cascache_tokens"), "kind", "saved").items():
        tokens.setdefault(kind, {"upstream": 0.0, "saved": 0.0})["saved" if saved == "true" else "upstream"] += value
    spent_by = _flat(_totals(families.get("cascache_cost_usd"), "served"))
    saved_by = _flat(_totals(families.get("cascache_saved_usd"), "tier"))
    lost = _totals(families.get("cascache_prefix_tokens_lost"))
    return {
        "requests": requests,
        "tokens": dict(sorted(tokens.items())),
        "usd": {"spent": sum(spent_by.values()), "saved": sum(saved_by.values()),
                "spent_by_served": spent_by, "saved_by_tier": saved_by},
        "latency": _stage_latency(families.get("cascache_stage_seconds")),
        "false_hits": _false_hits(families.get(FALSE_HIT_CHECKS)),
        "prefix_lint": {"findings": _flat(_totals(families.get("cascache_prefix_lint_findings"), "kind")),
                        "tokens_lost": lost.get((), 0.0)},
        "writebacks": _flat(_totals(families.get("cascache_writebacks"), "result")),
        "errors": {"tier": _flat(_totals(families.get("cascache_tier_errors"), "tier", "operation")),
                   "upstream": _flat(_totals(families.get("cascache_upstream_errors"), "kind"))},
    }


# ---- auth: the session cookie in front of require_admin ----------------------------------------------


def _signature(token: str, expires: int) -> str:
    message = f"cascache-dashboard-session:{expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def session_value(token: str, now: float) -> str:
    """A cookie value good until now + SESSION_TTL_S, for whoever holds this admin token."""
    expires = int(now) + SESSION_TTL_S
    return f"{expires}.{_signature(token, expires)}"


def session_valid(token: str, value: str | None, now: float) -> bool:
    if not value:
        return False
    expires_text, _, signature = value.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit()) or int(expires_text) <= now:
        return False
    return hmac.compare_digest(signature.encode(), _signature(token, int(expires_text)).encode())


def _admin_token(request: Request) -> str | None:
    cache: Cache = request.app.state.cache
    return cache.settings.admin.token


def require_dashboard_admin(handler: Handler, *, login_page: bool = False) -> Handler:
    """A valid session cookie, or else whatever `require_admin` decides from the Bearer header.

    With `login_page`, a 401 becomes the login form, so a browser that comes
    without credentials is asked for the token instead of shown an error.
    """
    by_header = require_admin(handler)

    async def guarded(request: Request) -> Response:
        token = _admin_token(request)
        if token and session_valid(token, request.cookies.get(SESSION_COOKIE), time.time()):
            return await handler(request)
        response = await by_header(request)
        if login_page and response.status_code == 401:
            return _login_form(401)
        return response

    return guarded


def _static_text(name: str) -> str:
    return resources.files("cascache.gateway").joinpath("static", name).read_text(encoding="utf-8")


def _login_form(status: int, message: str = "") -> HTMLResponse:
    # `message` is one of this module's fixed strings, never user input, so it needs no escaping.
    page = _static_text("login.html").replace("{{message}}", message)
    return HTMLResponse(page, status_code=status,
                        headers={"content-security-policy": _LOGIN_CSP, "cache-control": "no-store"})


async def _submitted_token(request: Request) -> str | None:
    """The `token` field of an urlencoded login form (parsed here: no multipart dependency for one field)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_LOGIN_BODY:
            return None
    fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=4)
    values = fields.get("token", [])
    return values[0].strip() if len(values) == 1 else None


def _disabled() -> JSONResponse:
    """What /admin answers too when no admin token is configured: nothing is reachable."""
    return JSONResponse({"error": {"message": "the admin API is disabled: no admin token is configured",
                                   "type": "admin_error"}}, status_code=404)


async def login(request: Request) -> Response:
    token = _admin_token(request)
    if not token:
        return _disabled()
    try:
        supplied = await _submitted_token(request)
    except ClientDisconnect:
        return Response(status_code=499)
    if supplied is None or not hmac.compare_digest(supplied.encode(), token.encode()):
        return _login_form(401, "That is not the admin token.")
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(SESSION_COOKIE, session_value(token, time.time()), max_age=SESSION_TTL_S,
                        path=_COOKIE_PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    if not _admin_token(request):
        return _disabled()
    response = RedirectResponse("/dashboard", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=_COOKIE_PATH, httponly=True, samesite="strict")
    return response


# ---- routes ------------------------------------------------------------------------------------------


async def _page(request: Request) -> Response:
    return HTMLResponse(_static_text("dashboard.html"),
                        headers={"content-security-policy": _PAGE_CSP, "cache-control": "no-store"})


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _ASSETS:
        return JSONResponse({"error": {"message": f"no asset {name}", "type": "admin_error"}}, status_code=404)
    return Response(_static_text(name), media_type=_ASSETS[name], headers={"cache-control": "no-store"})


async def _summary(request: Request) -> Response:
    cache: Cache = request.app.state.cache
    store_stats = await cache.store.stats()
    summary = metrics_summary(cache.metrics.registry)
    summary["store"] = {"entries": store_stats.entries, "evictions": store_stats.evictions}
    summary["time"] = time.time()
    return JSONResponse(summary, headers={"cache-control": "no-store"})


async def _top_entries(request: Request) -> Response:
    """The most-hit entries among the newest `_SCAN_LIMIT` (paged through `Store.list_entries`)."""
    cache: Cache = request.app.state.cache
    scanned: list[CacheEntry] = []
    complete = False
    while len(scanned) < _SCAN_LIMIT:
        page = await cache.store.list_entries(offset=len(scanned), limit=_SCAN_PAGE)
        scanned.extend(page)
        if len(page) < _SCAN_PAGE:
            complete = True
            break
    now = time.time()
    top = heapq.nlargest(TOP_ENTRIES, scanned, key=lambda e: (e.hits, e.last_hit_at or 0.0))
    return JSONResponse({"entries": [describe(entry, now) for entry in top], "scanned": len(scanned),
                         "complete": complete}, headers={"cache-control": "no-store"})


ROUTES = [
    Route("/dashboard", require_dashboard_admin(_page, login_page=True), methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/static/{name}", require_dashboard_admin(_asset), methods=["GET"]),
    Route("/dashboard/api/summary", require_dashboard_admin(_summary), methods=["GET"]),
    Route("/dashboard/api/top-entries", require_dashboard_admin(_top_entries), methods=["GET"]),
]
