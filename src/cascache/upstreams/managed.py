"""The embedded default upstream: a llama.cpp engine that the gateway starts and stops itself."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from cascache.config import Settings
from cascache.upstreams.llamacpp_engine import EngineSettings, LlamaCppEngine
from cascache.upstreams.managed_pool import LocalPool

log = logging.getLogger(__name__)


def engine_settings(settings: Settings) -> EngineSettings:
    """Translate the `[engine]` config section into the engine's own settings."""
    options = settings.engine
    extra = {"model_path": Path(options.model_path)} if options.model_path else {}
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return EngineSettings(
        alias=options.alias,
        port=options.port,
        threads=options.threads,
        parallel=options.parallel,
        ctx_per_slot=options.ctx_per_slot,
        cache_ram_mib=options.cache_ram_mib,
        log_path=Path(settings.data_dir) / "llama-server.log",
        **extra,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def managed_pool(settings: Settings) -> AsyncIterator[LocalPool]:
    """Start `pool.replicas` engines behind one PoolUpstream, yield them healthy, and always stop them."""
    pool = settings.pool
    local = LocalPool(engine_settings(settings), pool.replicas, pool.make_policy(),
                      health_interval_s=pool.health_interval_s, unhealthy_after=pool.unhealthy_after,
                      timeout_s=settings.upstream.timeout_s, connect_timeout_s=settings.upstream.connect_timeout_s)
    log.info("starting %d local llama.cpp replicas, routing: %s", pool.replicas, pool.policy)
    async with local:
        yield local


@contextlib.asynccontextmanager
async def managed_engine(settings: Settings) -> AsyncIterator[LlamaCppEngine]:
    """Start the engine, yield it healthy, and always stop it."""
    engine = LlamaCppEngine(engine_settings(settings))
    log.info("starting the local llama.cpp engine (no upstream URL configured)")
    await engine.start()
    log.info("llama.cpp engine ready at %s (model %s, pid %s)", engine.base_url, settings.engine.alias, engine.pid)
    try:
        yield engine
    finally:
        await engine.stop()
