"""Two `cascache serve` processes on one Redis: what one caches, the other serves; what one purges, both lose.

The upstream is the provider simulator; the store is a Redis Stack server
started from PyPI packages (tests/redis_support.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cascache.testing.provider_sim import ProviderSim, SimServer
from tests.integration.conftest import GatewayProcess, start_gateway
from tests.redis_support import fresh_prefix, session_redis

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests"


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tmp: Path = tmp_path_factory.mktemp("redis-gateways")
    store = f"{session_redis().url}?prefix={fresh_prefix()}"
    with SimServer(ProviderSim()) as sim:
        started = [
            start_gateway(tmp, "--store", store, "--upstream-url", sim.base_url + "/v1",
                          env={"CASCACHE_ADMIN_TOKEN": TOKEN})
            for _ in range(2)
        ]  # fmt: skip
        try:
            yield started[0], started[1]
        finally:
            for gateway in started:
                gateway.stop()


def ask(gateway: GatewayProcess, question: str) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
    }
    response = httpx.post(
        gateway.url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-tenant-a"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response


def test_an_answer_cached_through_one_gateway_is_served_by_the_other(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = gateways

    written = ask(first, "Where is my card?")
    served = ask(second, "Where is my card?")

    assert written.headers["x-cascache"] == "miss"
    assert served.headers["x-cascache"] == "hit-exact"
    assert served.json()["choices"] == written.json()["choices"]


def test_a_purge_through_one_gateway_is_seen_by_both(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    first, second = gateways
    ask(first, "How do I close my account?")
    assert ask(second, "How do I close my account?").headers["x-cascache"] == "hit-exact"

    purged = httpx.post(
        second.url + "/admin/purge", json={"all": True}, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    )

    assert purged.status_code == 200, purged.text
    assert purged.json()["purged"] >= 1
    assert ask(first, "How do I close my account?").headers["x-cascache"] == "miss"
    assert ask(second, "How do I close my account?").headers["x-cascache"] == "hit-exact"
