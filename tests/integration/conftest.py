"""Real servers for the integration suites: the llama.cpp engine and `cascache serve` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cascache.upstreams.llamacpp_engine import EngineSettings, LlamaCppEngine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 180,
                  data_dir: Path | None = None, restore_signals: bool = True) -> GatewayProcess:
    """Run `cascache serve` as its own process and wait until /healthz answers.

    `data_dir` defaults to a new folder under `tmp` (the log always goes to `tmp`).
    `restore_signals=False` lets the child inherit this process's ignored SIGXFSZ
    (Popen otherwise resets it; see tests/reliability/test_store_faults.py).
    """
    port = free_port()
    data_dir = data_dir if data_dir is not None else tmp / f"data-{port}"
    log_path = tmp / f"gateway-{port}.log"
    command = [sys.executable, "-m", "cascache.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--log-level", "warning", *args]
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})}, start_new_session=True,
                               restore_signals=restore_signals)
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", process, log_path, data_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        try:
            if httpx.get(gateway.url + "/healthz", timeout=1).status_code == 200:
                return gateway
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    gateway.stop()
    raise RuntimeError(f"gateway did not become healthy in {timeout_s}s:\n{gateway.log()}")


@pytest.fixture(scope="session")
def engine() -> Iterator[LlamaCppEngine]:
    """One llama.cpp engine for the whole session (started and stopped on a private loop)."""
    import asyncio

    loop = asyncio.new_event_loop()
    server = LlamaCppEngine(EngineSettings(parallel=2, ctx_per_slot=4096))
    loop.run_until_complete(server.start())
    try:
        yield server
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("integration")
