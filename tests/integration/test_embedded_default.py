"""`cascache serve` with no upstream: it starts, uses and stops its own llama.cpp engine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import start_gateway

pytestmark = pytest.mark.integration


def engine_pid(log: str) -> int | None:
    for line in log.splitlines():
        if "llama.cpp engine ready" in line and "pid" in line:
            return int(line.rsplit("pid", 1)[1].strip(" )"))
    return None


def test_serve_without_upstream_runs_the_local_engine(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--log-level", "info")
    try:
        body = {"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 200, "stop": ["\n"],
                "messages": [{"role": "system", "content": "Answer in one short sentence."},
                             {"role": "user", "content": "What is the capital of Italy?"}]}
        first = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"]
        assert first.json()["choices"][0]["finish_reason"] == "stop", first.json()
        second = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
        assert second.headers["x-cascache"] == "hit-exact"
        pid = engine_pid(gateway.log())
        assert pid is not None, gateway.log()
        assert (gateway.data_dir / "store").exists()
    finally:
        gateway.stop()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"engine pid {pid} still alive after the gateway stopped")


def test_serve_with_two_local_replicas_routes_and_reports_engine_caches(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--replicas", "2", "--routing", "prefix_affinity",
                            env={"CASCACHE_ADMIN_TOKEN": "admin-t"})
    try:
        system = "You are a geography tutor. Answer in one short sentence. " * 8
        for question in ("What is the capital of Spain?", "What is the capital of Peru?"):
            reply = httpx.post(gateway.url + "/v1/chat/completions", timeout=120, json={
                "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 200, "stop": ["\n"],
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]})
            assert reply.status_code == 200, reply.text
        stats = httpx.get(gateway.url + "/admin/stats", headers={"authorization": "Bearer admin-t"}, timeout=30).json()
        engines = stats["engines"]
        assert len(engines["replicas"]) == 2
        # The second question shares the system prompt: affinity sends it to the replica holding it.
        assert engines["pool"]["cached_tokens"] > 0
    finally:
        gateway.stop()
