"""The dashboard in real headless Chromium, against a `cascache serve` process and the provider simulator.

What a person would do: open /dashboard, get the sign-in form, type the admin
token, watch the charts fill while traffic flows, and read numbers that agree
with what Prometheus scrapes from `/metrics` at the same moment.

The browser is Debian's Chromium (`scripts/ensure-chromium`), driven by
Playwright with `executable_path`: Playwright's own browser download cannot
work on machines that reach only the package registries. Set
CASCACHE_UPDATE_DOCS_SCREENSHOT=1 to refresh docs/dashboard.png from this run.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from cascache.gateway.dashboard import FALSE_HIT_CHECKS
from cascache.testing.provider_sim import ProviderSim, SimServer
from tests.integration.conftest import GatewayProcess, start_gateway

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# Headless on a machine with no network but the registries: without the background-networking flags
# Chromium keeps trying (and failing) to reach Google's services.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "dashboard-integration-token"
MODEL = "gpt-4o-mini"  # priced in the default table, so dollars spent and saved are not zero
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(ProviderSim()) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimServer, session_tmp: Path) -> Iterator[GatewayProcess]:
    process = start_gateway(session_tmp, "--upstream-url", sim.base_url + "/v1",
                            env={"CASCACHE_ADMIN_TOKEN": TOKEN})
    yield process
    process.stop()


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium (make test does)")
    with sync_playwright() as playwright:
        # A fresh profile per test: no cookie or cache from an earlier run can sign the page in.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS,
            headless=True, viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


def ask(gateway: GatewayProcess, question: str, system: str = "Answer in one sentence.") -> str:
    reply = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                       headers={"authorization": "Bearer sk-tenant-dashboard"},
                       json={"model": MODEL, "temperature": 0,
                             "messages": [{"role": "system", "content": system},
                                          {"role": "user", "content": question}]})
    assert reply.status_code == 200, reply.text
    return reply.headers["x-cascache"]


def traffic(gateway: GatewayProcess, round_: int) -> list[str]:
    """A round of misses and hits: new questions miss, a repeated one hits, and so does its paraphrase."""
    served = [ask(gateway, f"Round {round_}: what is the tallest mountain in region {round_}?")]
    served += [ask(gateway, "What is the boiling point of water at sea level?") for _ in range(2 + round_)]
    served.append(ask(gateway, "What's the boiling point of water at sea level?"))  # a paraphrase
    served.append(ask(gateway, f"Summarise ticket {round_}.",
                      system=f"Today is 2026-05-0{round_ + 1}T10:22:13Z; request id req_{round_}a9f3c21b4."))
    return served


@dataclass
class Scrape:
    totals: dict[str, float]
    """Figures under the page's `data-metric` names."""
    families: set[str]
    """Every metric family `/metrics` declared."""


def scrape(gateway: GatewayProcess) -> Scrape:
    """Figures from `/metrics` (and the store's entry count from /admin/stats) under the page's names."""
    totals: dict[str, float] = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics", timeout=10).text):
        families.add(family.name)
        for sample in family.samples:
            labels = sample.labels
            key = {"cascache_requests_total": f"requests.{labels.get('served')}",
                   "cascache_saved_usd_total": "usd.saved",
                   "cascache_cost_usd_total": "usd.spent",
                   "cascache_tokens_total": f"tokens.{labels.get('kind')}."
                                            f"{'saved' if labels.get('saved') == 'true' else 'upstream'}",
                   "cascache_stage_seconds_count": f"latency.{labels.get('stage')}.count",
                   "cascache_prefix_lint_findings_total": "prefix_lint.total",
                   "cascache_prefix_tokens_lost_total": "prefix_lint.tokens_lost"}.get(sample.name)
            if key is not None:
                totals[key] = totals.get(key, 0.0) + sample.value
    totals["requests.total"] = sum(v for k, v in totals.items() if k.startswith("requests."))
    stats = httpx.get(gateway.url + "/admin/stats", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    totals["store.entries"] = stats.json()["store"]["entries"]
    return Scrape(totals, families)


def shown_number(text: str) -> float:
    """A figure as the page prints it ("1,234", "$0.000123", "2.5 ms") back to a number in base units."""
    match = re.fullmatch(r"\$?([\d,]+(?:\.\d+)?)(?: (µs|ms|s))?", text.strip())
    assert match, f"not a number: {text!r}"
    scale = {"µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}[match.group(2)]
    return float(match.group(1).replace(",", "")) * scale


def expected_refusal(url: str, status: int) -> bool:
    """The sign-in form answers 401 until the token is right; the browser's own favicon probe 404s."""
    path = httpx.URL(url).path
    return (status == 401 and path in ("/dashboard", "/dashboard/login")) or path == "/favicon.ico"


def polls(page: Page) -> int:
    """How many summaries the page has rendered (it counts them in <body data-polls>)."""
    return int(page.get_attribute("body", "data-polls") or 0)


def wait_for_polls(page: Page, at_least: int, timeout_s: float = 15.0) -> None:
    # Polled from Python: the page's CSP forbids the string evaluation `wait_for_function` relies on.
    deadline = time.monotonic() + timeout_s
    while polls(page) < at_least:
        assert time.monotonic() < deadline, f"the page rendered {polls(page)} summaries, expected {at_least}"
        time.sleep(0.1)


def test_dashboard_in_chromium_draws_live_charts_that_match_metrics(
        gateway: GatewayProcess, browser_context: BrowserContext, tmp_path: Path) -> None:
    assert "miss" in traffic(gateway, 0)
    page = browser_context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console: {message.text}")
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    page.on("response", lambda response: problems.append(f"HTTP {response.status}: {response.url}")
            if response.status >= 400 and not expected_refusal(response.url, response.status) else None)

    # Signed out: the page is the sign-in form, and it shows no figures.
    first = page.goto(gateway.url + "/dashboard")
    assert first is not None and first.status == 401
    assert page.locator("[data-metric]").count() == 0
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    assert "not the admin token" in page.inner_text("#message")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(gateway.url + "/dashboard")
    wait_for_polls(page, 1)
    # The session lives in an HttpOnly cookie: not in the URL, not readable by the page's scripts.
    assert TOKEN not in page.url and page.evaluate("document.cookie") == ""
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0

    # Live: traffic while the page watches; each round lands in a different poll.
    for round_ in (1, 2, 3):
        served = traffic(gateway, round_)
        assert {"hit-exact", "hit-semantic", "miss"} <= set(served)
        time.sleep(2.2)
    wait_for_polls(page, polls(page) + 2)  # at least one poll that started after the last request

    lines = page.locator("#hit-rate-chart path[data-series]")
    assert lines.count() >= 2  # at least the exact and miss tiers
    assert all(re.search(r"M[\d.]+,[\d.]+L", lines.nth(i).get_attribute("d") or "") for i in range(lines.count()))
    assert page.locator("#savings-chart path[data-series=saved]").count() == 1
    assert page.locator("#latency-chart rect[data-series]").count() >= 4  # p50 and p95 of >= 2 stages
    assert page.locator("#lint-chart rect[data-series]").count() >= 1
    for chart in ("#hit-rate-chart", "#savings-chart", "#latency-chart", "#lint-chart"):
        box = page.locator(chart).bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 50, chart

    expected = scrape(gateway)
    shown = {cell.get_attribute("data-metric"): (cell.get_attribute("data-value"), cell.inner_text())
             for cell in page.locator("[data-metric]").all()}
    compared = 0
    for name, value in expected.totals.items():
        if name not in shown:
            continue
        raw, text = shown[name]
        assert float(raw or "nan") == pytest.approx(value, rel=1e-9, abs=1e-12), name
        # What a person reads, at the precision printed: counts exact, dollars to 6 decimals.
        assert shown_number(text) == pytest.approx(value, abs=5e-7 if name.startswith("usd.") else 0.5), name
        compared += 1
    for required in ("requests.total", "requests.hit-exact", "requests.hit-semantic", "requests.miss",
                     "usd.saved", "usd.spent",
                     "tokens.input.saved", "store.entries", "prefix_lint.total", "latency.upstream.count"):
        assert required in shown and required in expected.totals, required
    assert compared >= 12
    assert expected.totals["requests.hit-exact"] > 0 and expected.totals["usd.saved"] > 0
    for stage in ("embed", "upstream"):
        p50, p95 = (shown_number(shown[f"latency.{stage}.{q}"][1]) for q in ("p50", "p95"))
        assert 0 < p50 <= p95, stage
    if FALSE_HIT_CHECKS not in expected.families:
        assert page.inner_text("#false-hits") == "not measured yet"

    # Top entries: the repeated question leads, and the table agrees with the entry's own hit count.
    page.wait_for_selector("#entries-table tbody tr", timeout=15_000)
    top = page.locator("#entries-table tbody tr").first
    assert top.locator("td.query").inner_text() == "What is the boiling point of water at sea level?"
    hits = [int(cell.inner_text().replace(",", "")) for cell in
            page.locator("#entries-table td[data-metric='entry.hits']").all()]
    assert hits == sorted(hits, reverse=True) and hits[0] >= 1 + 3 + 4 + 5  # exact hits alone: 1 in round 0, then 3, 4 and 5

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000  # a drawn page, not a blank one
    if os.environ.get("CASCACHE_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "dashboard.png")
    assert not problems, problems

    # Signing out ends the session: the next poll is refused and the page returns to the form.
    page.click("header button[type=submit]")
    page.wait_for_selector("input[name=token]")
    reply = page.request.get(gateway.url + "/dashboard/api/summary")
    assert reply.status == 401
