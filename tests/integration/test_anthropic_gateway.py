"""The Anthropic Messages API through a `cascache serve` process, in front of the provider simulator.

The real Anthropic API cannot be reached from here; the simulator speaks its
shapes (SSE event sequence, errors, usage) and is the upstream of these tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

import cascache
from cascache.config import load_settings
from cascache.testing.provider_sim import ProviderSim, SimServer
from tests.integration.conftest import GatewayProcess, start_gateway

pytestmark = pytest.mark.integration

MODEL = "claude-sonnet-4-6"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(ProviderSim()) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimServer, session_tmp: Path) -> Iterator[GatewayProcess]:
    process = start_gateway(session_tmp, "--upstream-url", sim.base_url + "/v1",
                            env={"CASCACHE_UPSTREAM_ANTHROPIC_URL": sim.base_url + "/v1"})
    yield process
    process.stop()


def client_for(gateway: GatewayProcess, key: str = "sk-ant-tenant-a") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def ask(client: anthropic.Anthropic, question: str, system: str = "Be brief.", **extra: Any) -> Any:
    return client.messages.with_raw_response.create(
        model=MODEL, max_tokens=256, system=system, messages=[{"role": "user", "content": question}], **extra)


def test_exact_and_semantic_hits_in_anthropic_shape(gateway: GatewayProcess, sim: SimServer) -> None:
    client = client_for(gateway)
    first = ask(client, "What is the boiling point of water at sea level?")
    assert first.headers["x-cascache"] == "miss"
    message = first.parse()
    assert message.type == "message" and message.content[0].text
    again = ask(client, "What is the boiling point of water at sea level?")
    assert again.headers["x-cascache"] == "hit-exact"
    assert again.parse().content[0].text == message.content[0].text
    assert again.parse().id != message.id
    paraphrase = ask(client, "What's the boiling point of water at sea level?")
    assert paraphrase.headers["x-cascache"] == "hit-semantic"
    other_tenant = ask(client_for(gateway, key="sk-ant-tenant-b"), "What is the boiling point of water at sea level?")
    assert other_tenant.headers["x-cascache"] == "miss"


def test_streaming_miss_then_replayed_hit_parse_in_the_sdk(gateway: GatewayProcess) -> None:
    client = client_for(gateway)
    question = "Name three kinds of clouds."
    with client.messages.stream(model=MODEL, max_tokens=256, messages=[{"role": "user", "content": question}]) as s:
        live = "".join(s.text_stream)
        live_final = s.get_final_message()
    assert live and live_final.stop_reason == "end_turn"
    with client.messages.stream(model=MODEL, max_tokens=256, messages=[{"role": "user", "content": question}]) as s:
        replayed = "".join(s.text_stream)
        final = s.get_final_message()
    assert replayed == live
    assert final.usage.output_tokens == live_final.usage.output_tokens
    hit = client.messages.with_raw_response.create(model=MODEL, max_tokens=256,
                                                   messages=[{"role": "user", "content": question}])
    assert hit.headers["x-cascache"] == "hit-exact" and hit.parse().content[0].text == live


def test_upstream_errors_come_back_in_anthropic_shape_and_are_not_cached(gateway: GatewayProcess,
                                                                           sim: SimServer) -> None:
    sim.sim.fail_next(529, api="anthropic", message="Overloaded")
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client_for(gateway), "Is this request going to fail?")
    assert caught.value.status_code == 529
    assert ask(client_for(gateway), "Is this request going to fail?").headers["x-cascache"] == "miss"


def test_bad_bodies_get_anthropic_errors(gateway: GatewayProcess) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(gateway).messages.create(model=MODEL, max_tokens=16, messages=[])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_library_wrap_of_the_anthropic_client(sim: SimServer, tmp_path: Path) -> None:
    settings = load_settings(overrides={"data_dir": str(tmp_path)}, environ={})
    client = cascache.wrap(anthropic.Anthropic(base_url=sim.base_url, api_key="sk-ant-lib", max_retries=0), settings)
    calls_before = len(sim.sim.log)
    first = ask(client, "Why do leaves change colour?")
    second = ask(client, "Why do leaves change colour?")
    assert first.headers["x-cascache"] == "miss" and second.headers["x-cascache"] == "hit-exact"
    assert second.parse().content[0].text == first.parse().content[0].text
    assert len(sim.sim.log) == calls_before + 1
    client.close()
