"""The dashboard's routes: auth on the page and its JSON, and numbers that equal `/metrics`.

Also the references that must name exactly the registry's metrics: the Grafana
dashboard's PromQL and docs/metrics.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from cascache.config import load_settings
from cascache.gateway import create_app
from cascache.gateway.dashboard import (
    FALSE_HIT_CHECKS,
    SESSION_COOKIE,
    bucket_quantile,
    metrics_summary,
    session_value,
    wilson_interval,
)
from cascache.metrics import Metrics
from tests.unit.gateway_harness import Harness, body, post

TOKEN = "dashboard-admin-token"
ROOT = Path(__file__).resolve().parents[2]
JSON_ROUTES = ["/dashboard/api/summary", "/dashboard/api/top-entries", "/dashboard/static/dashboard.js"]
MODEL = "gpt-4o-mini"  # a priced model, so dollars are not all zero


@pytest.fixture
def admin_client() -> Iterator[tuple[TestClient, Harness]]:
    harness = Harness(load_settings(overrides={"semantic.threshold": 0.8, "admin.token": TOKEN}, environ={}))
    with TestClient(create_app(harness.settings, cache_factory=harness.factory),
                    headers={"authorization": "Bearer sk-tenant-a"}) as client:
        yield client, harness


def get(client: TestClient, path: str, token: str | None = TOKEN) -> Any:
    """GET with the admin token as a Bearer header, or (token=None) with no credentials at all."""
    headers = {"authorization": f"Bearer {token}" if token is not None else ""}
    return client.get(path, headers=headers)


# ---- auth ----------------------------------------------------------------------------------------------


def test_page_without_credentials_is_the_sign_in_form(admin_client: tuple[TestClient, Harness]) -> None:
    client, _ = admin_client
    for token in (None, "wrong", "sk-tenant-a"):
        reply = get(client, "/dashboard", token=token)
        assert reply.status_code == 401
        assert 'action="/dashboard/login"' in reply.text and "data-metric" not in reply.text
    page = get(client, "/dashboard")
    assert page.status_code == 200 and 'data-metric="usd.saved"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_json_and_assets_need_the_admin_token(admin_client: tuple[TestClient, Harness], path: str) -> None:
    client, _ = admin_client
    assert get(client, path, token=None).status_code == 401
    assert get(client, path, token="wrong").status_code == 401
    assert get(client, path, token="sk-tenant-a").status_code == 401
    assert get(client, path).status_code == 200


def test_sign_in_sets_a_session_cookie_that_opens_every_route(admin_client: tuple[TestClient, Harness]) -> None:
    client, _ = admin_client
    wrong = client.post("/dashboard/login", data={"token": "wrong"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not the admin token" in wrong.text
    assert SESSION_COOKIE not in wrong.cookies
    reply = client.post("/dashboard/login", data={"token": TOKEN}, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/dashboard"
    cookie = reply.headers["set-cookie"]
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    # The client now carries the cookie: no Authorization header needed.
    for path in ["/dashboard", *JSON_ROUTES]:
        assert get(client, path, token=None).status_code == 200, path
    client.post("/dashboard/logout", follow_redirects=False)
    assert get(client, "/dashboard/api/summary", token=None).status_code == 401


@pytest.mark.parametrize("cookie", [
    session_value(TOKEN, time.time() - 9 * 3600),       # expired
    session_value("another-token", time.time()),        # signed with another (e.g. the old) token
    "9999999999." + "0" * 64,                           # forged: far expiry, no valid signature
    "not-a-session",
])
def test_bad_session_cookies_are_refused(admin_client: tuple[TestClient, Harness], cookie: str) -> None:
    client, _ = admin_client
    client.cookies.set(SESSION_COOKIE, cookie, path="/dashboard")
    assert get(client, "/dashboard/api/summary", token=None).status_code == 401
    assert get(client, "/dashboard", token=None).status_code == 401


def test_no_admin_token_configured_means_no_dashboard(harness: Harness) -> None:
    with TestClient(create_app(harness.settings, cache_factory=harness.factory)) as client:
        for path in ["/dashboard", *JSON_ROUTES]:
            assert get(client, path, token="anything").status_code == 404, path
        assert client.post("/dashboard/login", data={"token": ""}).status_code == 404


# ---- numbers -------------------------------------------------------------------------------------------


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics` as {(sample name, sorted labels): value}."""
    text = client.get("/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def send_traffic(client: TestClient) -> None:
    """Misses, exact and semantic hits, a bypass, and a volatile system prompt for the prefix lint."""
    for question in ("What is the capital of France?", "How tall is Mount Everest?"):
        post(client, body(question, model=MODEL))
    for _ in range(3):
        assert post(client, body("What is the capital of France?", model=MODEL)).headers["x-cascache"] == "hit-exact"
    assert post(client, body("France: what is the capital?", model=MODEL)).headers["x-cascache"] == "hit-semantic"
    assert post(client, body("Who wrote Hamlet?", model=MODEL),
                **{"x-cascache-bypass": "1"}).headers["x-cascache"] == "bypass"
    volatile = body("Who painted the Mona Lisa?", model=MODEL)
    volatile["messages"][0]["content"] = "Be brief. Now: 2026-05-01T10:22:13Z, request req_7f3a9c21b4."
    post(client, volatile)


def test_summary_numbers_equal_the_prometheus_values(admin_client: tuple[TestClient, Harness]) -> None:
    client, _ = admin_client
    send_traffic(client)
    summary = get(client, "/dashboard/api/summary").json()
    samples = scrape(client)

    assert summary["requests"] == {
        tier: total(samples, "cascache_requests_total", served=tier)
        for tier in ("hit-exact", "hit-semantic", "miss", "bypass", "coalesced")}
    assert summary["requests"]["hit-exact"] == 3 and summary["requests"]["hit-semantic"] == 1
    for kind, split in summary["tokens"].items():
        assert split["upstream"] == total(samples, "cascache_tokens_total", kind=kind, saved="false")
        assert split["saved"] == total(samples, "cascache_tokens_total", kind=kind, saved="true")
    assert summary["tokens"]["input"]["saved"] == 40  # four hits of a 10-token prompt
    assert summary["usd"]["saved"] == pytest.approx(total(samples, "cascache_saved_usd_total"), rel=1e-12)
    assert summary["usd"]["spent"] == pytest.approx(total(samples, "cascache_cost_usd_total"), rel=1e-12)
    assert summary["usd"]["saved"] > 0 and summary["usd"]["spent"] > 0
    findings = summary["prefix_lint"]["findings"]
    assert findings and all(value == total(samples, "cascache_prefix_lint_findings_total", kind=kind)
                            for kind, value in findings.items())
    assert summary["prefix_lint"]["tokens_lost"] == total(samples, "cascache_prefix_tokens_lost_total") > 0
    assert summary["store"]["entries"] == get(client, "/admin/stats").json()["store"]["entries"]
    assert summary["false_hits"] is None  # no false-hit checks recorded: the page says "not measured yet"

    for stage, latency in summary["latency"].items():
        assert latency["count"] == total(samples, "cascache_stage_seconds_count", stage=stage) > 0
        buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in samples.items()
                         if name == "cascache_stage_seconds_bucket" and dict(labels)["stage"] == stage)
        # p50 lies inside the bucket where the cumulative count first reaches half the observations.
        index = next(i for i, (_, count) in enumerate(buckets) if count >= latency["count"] / 2)
        lower = buckets[index - 1][0] if index else 0.0
        assert lower <= latency["p50_s"] <= buckets[index][0]
        assert latency["p50_s"] <= latency["p95_s"]


def test_top_entries_are_sorted_by_hits(admin_client: tuple[TestClient, Harness]) -> None:
    client, _ = admin_client
    send_traffic(client)
    reply = get(client, "/dashboard/api/top-entries").json()
    assert reply["complete"] and reply["scanned"] == get(client, "/admin/stats").json()["store"]["entries"]
    hits = [entry["hits"] for entry in reply["entries"]]
    assert hits == sorted(hits, reverse=True)
    assert reply["entries"][0]["query"] == "What is the capital of France?" and hits[0] == 4


def test_bucket_quantile_interpolates_like_promql() -> None:
    buckets = [(0.1, 2.0), (0.2, 6.0), (float("inf"), 8.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.15)   # rank 4: halfway through (0.1, 0.2]
    assert bucket_quantile(0.1, buckets) == pytest.approx(0.04)   # rank 0.8 in the first bucket, from 0
    assert bucket_quantile(0.95, buckets) == 0.2                  # in +Inf: the highest finite bound
    assert bucket_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_false_hit_rate_and_interval_from_the_monitor_counter() -> None:
    registry = CollectorRegistry()
    checks = Counter(FALSE_HIT_CHECKS, "sampled semantic hits checked", ["namespace", "verdict"],
                     registry=registry)
    checks.labels("ns-a", "correct").inc(90)
    checks.labels("ns-b", "correct").inc(8)
    checks.labels("ns-b", "false_hit").inc(2)
    estimate = metrics_summary(registry)["false_hits"]
    assert estimate["checked"] == 100 and estimate["false_hits"] == 2 and estimate["rate"] == 0.02
    # Wilson 95% for 2/100 (published tables: 0.55% to 7.0%).
    assert estimate["low"] == pytest.approx(0.0055, abs=1e-4) and estimate["high"] == pytest.approx(0.0700, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


# ---- the references that name the metrics --------------------------------------------------------------


def registry_names() -> set[str]:
    """Every metric family name a live registry declares (also those with no samples yet)."""
    return {family.name for family in Metrics().registry.collect()}


def exposed_names(metrics_text: str) -> set[str]:
    """Every series name `/metrics` can show, from its # TYPE lines (with the suffixes each type adds)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":  # the text format names a counter's family with its `_total` already
                name = name.removesuffix("_total")
            names.update(name + suffix for suffix in suffixes.get(kind, ("",)))
    return names


def promql_metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    without_selectors = re.sub(r"\{[^}]*\}", "", expression)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_selectors)
    without_grouping = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_ranges)
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_grouping)
    return {word for word in words if word.startswith("cascache_")}


def grafana_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "grafana" / "cascache-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions, "the Grafana dashboard has no queries"
    variables = [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    return expressions + variables


def test_grafana_dashboard_uses_only_names_the_gateway_exposes(admin_client: tuple[TestClient, Harness]) -> None:
    client, _ = admin_client
    exposed = exposed_names(client.get("/metrics").text)
    used = set().union(*(promql_metric_names(expr) for expr in grafana_expressions()))
    assert used and used <= exposed, f"not in /metrics: {sorted(used - exposed)}"
    # Every family the registry declares has at least one panel.
    families_used = {name for name in registry_names() if any(u.startswith(name) for u in used)}
    assert families_used == registry_names(), f"no panel for {sorted(registry_names() - families_used)}"


def test_promql_name_extraction_skips_labels_and_functions() -> None:
    expression = ('histogram_quantile(0.95, sum by (le, stage) (rate(cascache_stage_seconds_bucket'
                  '{stage=~"embed|search"}[5m]))) / ignoring(x) cascache_other_total')
    assert promql_metric_names(expression) == {"cascache_stage_seconds_bucket", "cascache_other_total"}


def test_metrics_reference_documents_every_metric() -> None:
    reference = (ROOT / "docs" / "metrics.md").read_text()
    missing = {name for name in registry_names() if f"`{name}" not in reference}
    assert not missing, f"docs/metrics.md does not describe {sorted(missing)}"
