"""A pool of replicas of one model that is itself an `Upstream` (Tier 3b).

The pipeline never knows it talks to a pool: `PoolUpstream.post` picks a
replica with a routing policy (`cascache.tiers.route`, pure) and forwards the
call. This module is the IO loop around that decision:

- **Load**: it counts each replica's outstanding requests, the policies' load
  signal. A non-streaming call counts until its body is read; a streaming call
  until its stream ends or is closed, whichever comes first, exactly once.
- **Prompt**: for a policy that routes by prefix, the body bytes are parsed
  and cut into chained block hashes (`route.prompt_blocks`).
- **Failover**: a replica that refuses the connection (connect error or
  connect timeout: nothing was sent, so nothing can have run twice) is taken
  out at once and the call is tried on another one. Any other failure, and
  anything after the first byte of an answer, goes to the caller: retrying a
  request the engine may have started, or splicing two replicas' streams,
  would be worse than an error.
- **Health**: a background task GETs each replica's health path (`/health`
  for llama.cpp, else `/models`) every `health_interval_s`. A replica that
  fails `unhealthy_after` checks in a row is taken out: routing stops sending
  it traffic, and the policy forgets what it believed the replica cached (a
  replica that comes back is usually a restarted process with a cold cache).
  The first successful check puts it back.
- **Last resort**: when every replica is out, calls are still tried on all of
  them in turn (one may be back before the next check says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import httpx
import orjson

from cascache._errors import UpstreamError, UpstreamUnavailable
from cascache.tiers.route import BlockHash, Candidate, ReplicaId, RouteReason, RoutingPolicy, prompt_blocks
from cascache.upstreams.base import UpstreamReply

__all__ = ["PoolUpstream", "ReplicaStatus", "ReplicaUpstream", "health_path_for", "refused_before_sending"]

log = logging.getLogger(__name__)

#: Transport errors raised before a request could be written: retrying elsewhere is always safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


class ReplicaUpstream(Protocol):
    """One replica: an `Upstream` with a base URL (its id in the pool). `HttpUpstream` is one."""

    kind: str
    base_url: str

    async def post(self, path: str, body: bytes, headers: Mapping[str, str],
                   stream: bool) -> UpstreamReply: ...

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply: ...

    async def close(self) -> None: ...


def health_path_for(kind: str) -> str:
    """llama.cpp answers `/health` (also under /v1) with 503 while loading; other servers list `/models`."""
    return "/health" if kind == "llamacpp" else "/models"


def refused_before_sending(exc: BaseException) -> bool:
    """True when the call failed while connecting, so the replica never saw the request.

    `HttpUpstream` chains the httpx error as `__cause__`; a connect error or
    connect timeout is the only failure that proves nothing was sent.
    """
    return isinstance(exc, UpstreamError) and isinstance(exc.__cause__, _NOT_SENT)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica as the pool sees it, for metrics and the admin API."""

    replica: ReplicaId
    healthy: bool
    outstanding: int
    """Requests in flight now."""
    routed: int
    """Requests routed to it so far (retries included)."""
    taken_out: int
    """Times it was taken out of rotation."""


class _Replica:
    """Mutable per-replica state; only the pool's event loop touches it."""

    __slots__ = ("failed_checks", "healthy", "id", "outstanding", "routed", "taken_out", "upstream")

    def __init__(self, upstream: ReplicaUpstream) -> None:
        self.upstream = upstream
        self.id = ReplicaId(upstream.base_url.rstrip("/"))
        self.healthy = True
        self.outstanding = 0
        self.routed = 0
        self.taken_out = 0
        self.failed_checks = 0

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(self.id, self.healthy, self.outstanding, self.routed, self.taken_out)


class _Lease:
    """One unit of a replica's outstanding count, given back exactly once."""

    __slots__ = ("_replica",)

    def __init__(self, replica: _Replica) -> None:
        replica.outstanding += 1
        self._replica: _Replica | None = replica

    def release(self) -> None:
        if self._replica is not None:
            self._replica.outstanding -= 1
            self._replica = None


class PoolUpstream:
    """Replicas of one model behind one `Upstream`, routed by `policy`.

    Usage::

        pool = PoolUpstream([HttpUpstream(url, kind="llamacpp") for url in urls], PrefixAffinity())
        await pool.start()          # optional: the first call starts the health checks too
        reply = await pool.post("/chat/completions", body, headers, stream=False)
        await pool.close()          # stops the checks and closes every replica
    """

    def __init__(
        self,
        replicas: Sequence[ReplicaUpstream],
        policy: RoutingPolicy,
        *,
        health_interval_s: float = 2.0,
        health_timeout_s: float = 2.0,
        unhealthy_after: int = 2,
        health_path: str | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a pool needs at least one replica")
        kinds = {replica.kind for replica in replicas}
        if len(kinds) != 1:
            raise ValueError(f"replicas of one pool must be of one kind, got {sorted(kinds)}")
        if health_interval_s <= 0 or health_timeout_s <= 0 or unhealthy_after < 1:
            raise ValueError("health_interval_s and health_timeout_s must be > 0, unhealthy_after >= 1")
        self.kind: str = kinds.pop()
        self.policy = policy
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.unhealthy_after = unhealthy_after
        self.health_path = health_path or health_path_for(self.kind)
        self._replicas: list[_Replica] = []
        for upstream in replicas:
            self._add(upstream)
        self.decisions: Counter[RouteReason] = Counter()
        """Routing decisions by reason (prefix_match, most_free, imbalanced, ...)."""
        self.failovers = 0
        """Calls retried on another replica after a refused connection."""
        self._health_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- membership ------------------------------------------------------------

    def _add(self, upstream: ReplicaUpstream) -> _Replica:
        replica = _Replica(upstream)
        if any(existing.id == replica.id for existing in self._replicas):
            raise ValueError(f"replica {replica.id} is already in the pool")
        if upstream.kind != self.kind:
            raise ValueError(f"replica {replica.id} is {upstream.kind}, the pool is {self.kind}")
        self._replicas.append(replica)
        return replica

    def add_replica(self, upstream: ReplicaUpstream) -> None:
        """Add a replica (e.g. a restarted engine on a new port); it takes traffic at once."""
        self._add(upstream)

    async def remove_replica(self, replica_id: str) -> None:
        """Remove a replica and close its client. Its streams in progress are cut by the close."""
        replica = self._find(ReplicaId(replica_id.rstrip("/")))
        self._replicas.remove(replica)
        self.policy.forget(replica.id)
        await replica.upstream.close()

    def _find(self, replica_id: ReplicaId) -> _Replica:
        for replica in self._replicas:
            if replica.id == replica_id:
                return replica
        raise KeyError(f"no replica {replica_id} in the pool")

    def status(self) -> list[ReplicaStatus]:
        return [replica.status() for replica in self._replicas]

    @property
    def replica_ids(self) -> list[ReplicaId]:
        return [replica.id for replica in self._replicas]

    # -- the Upstream protocol -------------------------------------------------

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], stream: bool) -> UpstreamReply:
        """Route, send, and on a refused connection retry on another replica."""
        self._ensure_health_checks()
        blocks = self._blocks(body) if self.policy.needs_prompt else ()
        tried: set[ReplicaId] = set()
        while True:
            replica = self._route(blocks, tried)
            lease = _Lease(replica)
            try:
                reply = await replica.upstream.post(path, body, headers, stream)
            except BaseException as exc:
                lease.release()
                if not self._fail_over(replica, exc, tried):
                    raise
                self.failovers += 1
                continue
            return self._hold_until_done(reply, lease)

    async def get(self, path: str, headers: Mapping[str, str]) -> UpstreamReply:
        """GET from the least busy healthy replica (e.g. `/models`), with the same failover."""
        self._ensure_health_checks()
        tried: set[ReplicaId] = set()
        while True:
            replica = self._least_busy(tried)
            lease = _Lease(replica)
            try:
                return await replica.upstream.get(path, headers)
            except BaseException as exc:
                if not self._fail_over(replica, exc, tried):
                    raise
            finally:
                lease.release()

    def _fail_over(self, replica: _Replica, exc: BaseException, tried: set[ReplicaId]) -> bool:
        """After `replica` failed with `exc`: may the call go to another replica? Only when the
        connection was refused before anything was sent (then the replica is taken out of
        rotation) and some replica is still untried."""
        if not refused_before_sending(exc):
            return False
        tried.add(replica.id)
        self._take_out(replica, f"refused a connection: {exc}")
        return len(tried) < len(self._replicas)

    async def start(self) -> None:
        """Start the background health checks (also started by the first call)."""
        self._ensure_health_checks()

    async def close(self) -> None:
        """Stop the health checks and close every replica. Idempotent: LocalPool and Cache both call it."""
        if self._closed:
            return
        self._closed = True
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in self._replicas:
            try:
                await replica.upstream.close()
            except Exception:
                log.exception("error while closing replica %s", replica.id)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- routing ---------------------------------------------------------------

    @staticmethod
    def _blocks(body: bytes) -> tuple[BlockHash, ...]:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ()  # not ours to reject: the replica answers it; routing falls back to load
        return prompt_blocks(parsed) if isinstance(parsed, dict) else ()

    def _eligible(self, tried: set[ReplicaId]) -> list[_Replica]:
        if self._closed:
            raise UpstreamUnavailable("the replica pool is closed")
        untried = [replica for replica in self._replicas if replica.id not in tried]
        if not untried:
            raise UpstreamUnavailable("no replica of the pool accepted the connection")
        return [replica for replica in untried if replica.healthy] or untried

    def _route(self, blocks: Sequence[BlockHash], tried: set[ReplicaId]) -> _Replica:
        eligible = self._eligible(tried)
        route = self.policy.choose(blocks, [Candidate(r.id, r.outstanding) for r in eligible])
        self.decisions[route.reason] += 1
        replica = next(r for r in eligible if r.id == route.replica)
        replica.routed += 1
        return replica

    def _least_busy(self, tried: set[ReplicaId]) -> _Replica:
        return min(self._eligible(tried), key=lambda replica: replica.outstanding)

    @staticmethod
    def _hold_until_done(reply: UpstreamReply, lease: _Lease) -> UpstreamReply:
        """The reply, its lease released when its body is done: now, or when the stream ends or closes."""
        chunks = reply.chunks
        if chunks is None:
            lease.release()
            return reply
        inner_close = reply.close

        async def counted_chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                lease.release()

        async def close() -> None:
            # A stream that is closed without ever being iterated never runs
            # the generator's finally: release here as well (idempotent).
            try:
                await inner_close()
            finally:
                lease.release()

        return UpstreamReply(status=reply.status, headers=reply.headers, chunks=counted_chunks(), close=close)

    # -- health ----------------------------------------------------------------

    def _take_out(self, replica: _Replica, why: str) -> None:
        if replica.healthy:
            replica.healthy = False
            replica.taken_out += 1
            log.warning("replica %s taken out of the pool: %s", replica.id, why)
        # What the policy believed this replica cached is void: it is down, and
        # if it comes back it is most likely a new process with an empty cache.
        self.policy.forget(replica.id)

    def _bring_back(self, replica: _Replica) -> None:
        if not replica.healthy:
            replica.healthy = True
            log.info("replica %s is healthy again and back in the pool", replica.id)

    def _ensure_health_checks(self) -> None:
        if self._health_task is None and not self._closed:
            self._health_task = asyncio.get_running_loop().create_task(self._check_forever(),
                                                                       name="cascache-pool-health")

    async def _check_forever(self) -> None:
        # Replicas start out trusted (a managed pool starts them healthy); the
        # first check comes one interval later.
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.check_health()
            except Exception:  # a bug here must not end the checks for good, leaving replicas out forever
                log.exception("pool health check round failed")

    async def check_health(self) -> None:
        """One round of health checks over every replica, concurrently."""
        replicas = list(self._replicas)
        results = await asyncio.gather(*(self._healthy(replica) for replica in replicas))
        for replica, ok in zip(replicas, results, strict=True):
            if ok:
                replica.failed_checks = 0
                self._bring_back(replica)
            else:
                replica.failed_checks += 1
                if replica.failed_checks >= self.unhealthy_after:
                    self._take_out(replica, f"{replica.failed_checks} failed health checks")

    async def _healthy(self, replica: _Replica) -> bool:
        try:
            reply = await asyncio.wait_for(replica.upstream.get(self.health_path, {}), self.health_timeout_s)
        except (UpstreamError, TimeoutError):
            return False
        return 200 <= reply.status < 300
