"""N managed llama.cpp replicas behind one `PoolUpstream`: the embedded default, scaled out.

`cascache serve --replicas N` starts N `LlamaCppEngine` processes from one
`EngineSettings` and routes over them. Each replica gets its own port and log
file. A watchdog restarts a replica whose process died, on the *same* port, so
its id in the pool (its base URL) stays valid: the pool's health checks take
it out when it dies and put it back once the new process answers `/health`.
The restarted process has an empty KV cache; the pool's policy already forgot
what it believed that replica held when it was taken out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from types import TracebackType
from typing import Self

from cascache.tiers.route import RoutingPolicy
from cascache.upstreams.http import HttpUpstream
from cascache.upstreams.llamacpp_engine import EngineSettings, LlamaCppEngine
from cascache.upstreams.pool import PoolUpstream

__all__ = ["LocalPool", "replica_settings"]

log = logging.getLogger(__name__)


def replica_settings(settings: EngineSettings, index: int) -> EngineSettings:
    """Replica `index`'s settings: an explicit port becomes port + index, a log file a `-index` suffix."""
    port = settings.port + index if settings.port else 0
    log_path = settings.log_path
    if log_path is not None:
        log_path = log_path.with_name(f"{log_path.stem}-{index}{log_path.suffix}")
    return dataclasses.replace(settings, port=port, log_path=log_path)


class LocalPool:
    """Starts, watches and stops N local llama-server replicas and the `PoolUpstream` over them.

    Usage::

        async with LocalPool(EngineSettings(), replicas=2, policy=PrefixAffinity()) as local:
            cache = await Cache.open(settings, upstreams={"openai": local.pool})
    """

    def __init__(
        self,
        settings: EngineSettings,
        replicas: int,
        policy: RoutingPolicy,
        *,
        health_interval_s: float = 2.0,
        unhealthy_after: int = 2,
        watch_interval_s: float = 2.0,
        restart_dead: bool = True,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self.settings = settings
        self.replicas = replicas
        self.policy = policy
        self.health_interval_s = health_interval_s
        self.unhealthy_after = unhealthy_after
        self.watch_interval_s = watch_interval_s
        self.restart_dead = restart_dead
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self.engines: list[LlamaCppEngine] = []
        self._ports: list[int] = []
        """Each replica's port, kept across restarts: the pool knows a replica by its URL."""
        self.restarts = 0
        """Replicas restarted by the watchdog so far."""
        self._pool: PoolUpstream | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def pool(self) -> PoolUpstream:
        if self._pool is None:
            raise RuntimeError("the local pool has not been started")
        return self._pool

    async def start(self) -> PoolUpstream:
        """Start every replica (concurrently), then the pool; on any failure stop what started."""
        engines = [LlamaCppEngine(replica_settings(self.settings, i)) for i in range(self.replicas)]
        results = await asyncio.gather(*(engine.start() for engine in engines), return_exceptions=True)
        failure = next((result for result in results if isinstance(result, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(engine.stop() for engine in engines), return_exceptions=True)
            raise failure
        self.engines = engines
        self._ports = [engine.port or 0 for engine in engines]
        self._pool = PoolUpstream(
            [HttpUpstream(engine.base_url, kind="llamacpp", timeout_s=self._timeout_s,
                          connect_timeout_s=self._connect_timeout_s) for engine in engines],
            self.policy, health_interval_s=self.health_interval_s, unhealthy_after=self.unhealthy_after)
        await self._pool.start()
        if self.restart_dead:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(),
                                                                    name="cascache-pool-watchdog")
        log.info("local pool of %d llama.cpp replicas ready: %s", self.replicas,
                 ", ".join(engine.base_url for engine in engines))
        return self._pool

    async def stop(self) -> None:
        """Stop the watchdog, close the pool, stop every replica. Safe to call twice."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        if self._pool is not None:
            await self._pool.close()
        await asyncio.gather(*(engine.stop() for engine in self.engines), return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval_s)
            for index, engine in enumerate(self.engines):
                if not engine.running:
                    await self._restart(index, engine)

    async def _restart(self, index: int, dead: LlamaCppEngine) -> None:
        """A new process for replica `index` on the dead one's port (same URL, so the pool keeps its id)."""
        port = self._ports[index]
        await dead.stop()  # reaps the process and releases its log; idempotent
        replacement = LlamaCppEngine(dataclasses.replace(replica_settings(self.settings, index), port=port))
        log.warning("llama.cpp replica %d (pid %s) died; restarting it on port %s", index, dead.pid, port)
        # Placed first: a replacement that fails to start is not running, so the next round retries it.
        self.engines[index] = replacement
        try:
            await replacement.start()
        except Exception:
            log.exception("restarting llama.cpp replica %d failed (port %s still held?)", index, port)
            return
        self.restarts += 1
