"""The gateway as a user meets it: `cascache serve` processes, the real llama.cpp engine, the official openai client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cascache.upstreams.llamacpp_engine import LlamaCppEngine
from tests.integration.conftest import GatewayProcess, free_port, start_gateway

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
# Short prompts, temperature 0, a newline stop: answers end with finish_reason "stop" quickly.
PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 200, "stop": ["\n"]}


def ask(client: openai.OpenAI, question: str, system: str = SYSTEM, model: str = MODEL, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        **{**PARAMS, **extra})


@pytest.fixture(scope="module")
def gateway(engine: LlamaCppEngine, session_tmp: Path) -> Iterator[GatewayProcess]:
    process = start_gateway(session_tmp, "--upstream-url", engine.base_url)
    yield process
    process.stop()


def client_for(gateway: GatewayProcess, key: str = "sk-tenant-a", **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, **options)


def test_repeat_is_exact_hit_and_paraphrase_semantic_hit(gateway: GatewayProcess) -> None:
    client = client_for(gateway)
    first = ask(client, "What is the capital of France?")
    assert first.headers["x-cascache"] == "miss"
    answer = first.parse().choices[0].message.content
    assert answer
    repeat = ask(client, "What is the capital of France?")
    assert repeat.headers["x-cascache"] == "hit-exact"
    assert repeat.parse().choices[0].message.content == answer
    paraphrase = ask(client, "What's the capital of France?")
    assert paraphrase.headers["x-cascache"] == "hit-semantic", paraphrase.headers
    assert float(paraphrase.headers["x-cascache-similarity"]) >= 0.9
    assert paraphrase.parse().choices[0].message.content == answer
    different = ask(client, "How many legs does a spider have?")
    assert different.headers["x-cascache"] == "miss"


def test_other_tenant_system_prompt_or_model_never_hit(gateway: GatewayProcess) -> None:
    question = "Name a primary colour."
    assert ask(client_for(gateway), question).headers["x-cascache"] in {"miss", "hit-exact"}
    assert ask(client_for(gateway), question).headers["x-cascache"] == "hit-exact"
    assert ask(client_for(gateway, key="sk-tenant-b"), question).headers["x-cascache"] == "miss"
    assert ask(client_for(gateway), question, system="You are a pirate. Answer in one sentence.").headers[
        "x-cascache"] == "miss"
    assert ask(client_for(gateway), question, model="another-model").headers["x-cascache"] == "miss"


def test_no_store_is_honoured(gateway: GatewayProcess) -> None:
    client = client_for(gateway, default_headers={"cache-control": "no-store"})
    question = "What colour is the sky on a clear day?"
    assert ask(client, question).headers["x-cascache"] == "miss"
    assert ask(client_for(gateway), question).headers["x-cascache"] == "miss"


def test_streaming_miss_and_hit_parse_in_the_client(gateway: GatewayProcess) -> None:
    client = client_for(gateway)
    question = "What do bees make?"

    def stream_text() -> tuple[str, str, Any]:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            stream=True, stream_options={"include_usage": True}, **PARAMS)
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw.headers["x-cascache"], text, chunks[-1].usage

    served, live_text, _ = stream_text()
    assert served == "miss" and live_text
    served, replayed_text, usage = stream_text()
    assert served == "hit-exact"
    assert replayed_text == live_text
    assert usage is not None and usage.prompt_tokens > 0
    non_stream = ask(client, question)
    assert non_stream.headers["x-cascache"] == "hit-exact"
    assert non_stream.parse().choices[0].message.content == live_text


def test_models_is_passed_through(gateway: GatewayProcess) -> None:
    ids = [m.id for m in client_for(gateway).models.list()]
    assert MODEL in ids


class FlakyUpstream:
    """A deliberately failing OpenAI-shaped server: the real engine cannot be told to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = True

        async def chat(request: Request) -> JSONResponse:
            self.calls += 1
            if self.fail:
                return JSONResponse({"error": {"message": "engine overloaded", "type": "server_error"}},
                                    status_code=500)
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 1, "model": MODEL,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/v1/chat/completions", chat,
                                                                            methods=["POST"])]),
                                                    port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FlakyUpstream:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_upstream_500_is_passed_through_and_not_cached(session_tmp: Path) -> None:
    with FlakyUpstream() as upstream:
        gateway = start_gateway(session_tmp, "--upstream-url", f"http://127.0.0.1:{upstream.port}/v1")
        try:
            client = client_for(gateway)
            with pytest.raises(openai.InternalServerError) as caught:
                ask(client, "Will this fail?")
            assert caught.value.status_code == 500
            assert "engine overloaded" in str(caught.value)
            upstream.fail = False
            assert ask(client, "Will this fail?").headers["x-cascache"] == "miss"
            assert ask(client, "Will this fail?").headers["x-cascache"] == "hit-exact"
            assert upstream.calls == 2
        finally:
            gateway.stop()


def test_upstream_down_is_502_in_openai_shape(session_tmp: Path) -> None:
    gateway = start_gateway(session_tmp, "--upstream-url", f"http://127.0.0.1:{free_port()}/v1")
    try:
        reply = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                           json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 502
        assert reply.json()["error"]["type"] == "upstream_unavailable"
    finally:
        gateway.stop()


def test_entries_survive_a_gateway_restart(engine: LlamaCppEngine, session_tmp: Path) -> None:
    first = start_gateway(session_tmp, "--upstream-url", engine.base_url)
    data_dir = first.data_dir
    try:
        assert ask(client_for(first), "What is two plus two?").headers["x-cascache"] == "miss"
    finally:
        first.stop()
    again = start_gateway(session_tmp, "--upstream-url", engine.base_url, "--store", str(data_dir / "store"))
    try:
        assert ask(client_for(again), "What is two plus two?").headers["x-cascache"] == "hit-exact"
        assert ask(client_for(again), "What's two plus two?").headers["x-cascache"] == "hit-semantic"
    finally:
        again.stop()
