"""The off-path verifier: judges semantic candidates in the background, never on a client's path.

Two kinds of work arrive, both as a `Probe` (the candidate and its verdict):

- **explore** (`submit_explored`): verified mode chose EXPLORE, so the client
  got a fresh answer from the pipeline's ordinary upstream call (the miss
  path, with its write-back: the fresh answer is cached once, there). The
  verifier only judges cached against that fresh answer: no upstream call.
- **hit** (`submit_hit`): a served semantic hit was sampled for verification
  (online monitoring, in every mode). The client already has the cached
  answer; the verifier asks upstream for a fresh one through `fetch` and
  judges. That fresh answer is never written to the cache.

Each judged outcome goes to `VerifiedAcceptance.observe` (when verified mode is
on: the entry's history, the pool curve, the calibration factor), to the
entry-stats book and an optional `persist` hook (the store), and, for served
hits only, to the `FalseHitMonitor`.

Bounds: at most `concurrency` jobs run at once (each is one optional upstream
call plus one judge call, under `timeout_s`); at most `queue_size` wait. A job
that finds the queue full is dropped and counted, never awaited: submitting
is synchronous and O(1). `aclose` stops intake, lets queued work finish for
up to its timeout, then cancels the rest; no task outlives it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from cascache._types import ChatRequest
from cascache.providers.base import Provider
from cascache.tiers.verify import Action, EntryStats, EntryStatsBook, Probe, VerifiedAcceptance
from cascache.upstreams.base import Upstream
from cascache.verification.judges import Judge, JudgeCase, answer_text
from cascache.verification.monitor import FalseHitMonitor

__all__ = ["Fetch", "PersistStats", "Verifier", "fetch_fresh"]

log = logging.getLogger(__name__)

#: Gets a fresh, complete answer (provider JSON) for a sampled hit; None when there is none.
Fetch = Callable[[], Awaitable[Mapping[str, Any] | None]]
#: Stores an entry's new history (e.g. `store.update_verify_stats`); failures are logged, not raised.
PersistStats = Callable[[str, EntryStats], Awaitable[None]]

Kind = Literal["explore", "hit"]


@dataclass(frozen=True, slots=True)
class _Job:
    kind: Kind
    probe: Probe
    fresh: Mapping[str, Any] | None = None
    fetch: Fetch | None = None


class Verifier:
    """Runs judgements in a bounded pool of background tasks; see the module docstring."""

    def __init__(
        self,
        judge: Judge,
        *,
        monitor: FalseHitMonitor | None = None,
        acceptance: VerifiedAcceptance | None = None,
        book: EntryStatsBook | None = None,
        persist: PersistStats | None = None,
        concurrency: int = 4,
        queue_size: int = 256,
        timeout_s: float = 60.0,
    ) -> None:
        if concurrency < 1 or queue_size < 1 or timeout_s <= 0:
            raise ValueError("concurrency and queue_size must be >= 1, timeout_s > 0")
        self.judge = judge
        self.monitor = monitor
        self.acceptance = acceptance
        self.book = book if book is not None else EntryStatsBook()
        self.persist = persist
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[_Job] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._running = 0
        self._counts: Counter[tuple[str, str]] = Counter()

    # -- intake (synchronous, never blocks) ----------------------------------------------------

    def submit_explored(self, probe: Probe, fresh_response: Mapping[str, Any]) -> bool:
        """Judge an EXPLOREd candidate against the fresh answer the client got. False if dropped."""
        return self._submit(_Job("explore", probe, fresh=fresh_response))

    def submit_hit(self, probe: Probe, fetch: Fetch) -> bool:
        """Verify a served hit: fetch a fresh answer off-path, then judge. False if dropped."""
        return self._submit(_Job("hit", probe, fetch=fetch))

    def _submit(self, job: _Job) -> bool:
        if self._closed:
            self._counts[job.kind, "dropped"] += 1
            return False
        queue = self._ensure_started()
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            self._counts[job.kind, "dropped"] += 1
            return False
        self._counts[job.kind, "queued"] += 1
        return True

    def _ensure_started(self) -> asyncio.Queue[_Job]:
        """Workers start on first use, inside the running loop (the constructor may run outside one)."""
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self._workers = [
                asyncio.get_running_loop().create_task(self._work(), name=f"cascache-verifier-{i}")
                for i in range(self.concurrency)
            ]
        return self._queue

    # -- work ------------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            job = await queue.get()
            self._running += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await self._run(job)
            except TimeoutError:
                result = "failed"
                log.warning("verification of entry %s timed out", job.probe.entry_id)
            except asyncio.CancelledError:
                self._counts[job.kind, "dropped"] += 1
                raise
            except Exception:
                result = "failed"
                log.exception("verification of entry %s failed", job.probe.entry_id)
            finally:
                self._running -= 1
                queue.task_done()
            self._counts[job.kind, result] += 1

    async def _run(self, job: _Job) -> str:
        fresh = job.fresh
        if job.kind == "hit":
            assert job.fetch is not None
            fresh = await job.fetch()
        if fresh is None:
            return "failed"
        cached_text = answer_text(job.probe.cached_response)
        fresh_text = answer_text(fresh)
        if cached_text is None or fresh_text is None:
            return "undecided"
        judgement = await self.judge.judge(JudgeCase(job.probe.query, cached_text, fresh_text))
        if judgement.correct is None:
            return "undecided"
        await self._record(job.probe, judgement.correct)
        return "correct" if judgement.correct else "wrong"

    async def _record(self, probe: Probe, correct: bool) -> None:
        if self.monitor is not None and probe.verdict.action is Action.EXPLOIT:
            self.monitor.record(probe.namespace, probe.category, correct)
        if self.acceptance is None:
            return
        current = self.book.get(probe.entry_id) if probe.entry_id in self.book else probe.stats
        updated = self.acceptance.observe(probe.pool, current, probe.verdict, probe.similarity, correct)
        self.book.put(probe.entry_id, updated)
        if self.persist is not None:
            try:
                await self.persist(probe.entry_id, updated)
            except Exception:
                log.exception("could not store the verification history of entry %s", probe.entry_id)
                self._counts["persist", "failed"] += 1

    # -- lifecycle and figures -------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return (self._queue.qsize() if self._queue is not None else 0) + self._running

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop intake, give queued work `timeout_s` to finish, cancel what remains, await every worker."""
        self._closed = True
        queue = self._queue
        if queue is None:
            return
        try:
            await asyncio.wait_for(queue.join(), timeout_s)
        except TimeoutError:
            log.warning("verifier closed with %d verifications unfinished", self.pending)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not queue.empty():
            job = queue.get_nowait()
            queue.task_done()
            self._counts[job.kind, "dropped"] += 1

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, result) -> count; results: queued, correct, wrong, undecided, failed, dropped."""
        return dict(self._counts)

    def summary(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, int]] = {}
        for (kind, result), count in sorted(self._counts.items()):
            by_kind.setdefault(kind, {})[result] = count
        return {"pending": self.pending, "concurrency": self.concurrency, "queue_size": self.queue_size,
                "outcomes": by_kind}


async def fetch_fresh(upstream: Upstream, provider: Provider, request: ChatRequest,
                      headers: Mapping[str, str]) -> dict[str, Any] | None:
    """A fresh, non-streaming, complete answer to `request` from `upstream`, for verification.

    The body is the caller's with streaming turned off. Nothing is cached or
    coalesced here: the caller already has its answer, and this one is only
    judged. None on an error status, an unreadable or incomplete answer.
    """
    body = {key: value for key, value in request.body.items() if key != "stream_options"}
    body["stream"] = False
    plain = dataclasses.replace(request, stream=False, include_usage=False, body=body)
    reply = await upstream.post(provider.chat_path, provider.upstream_body(plain, orjson.dumps(body)),
                                headers, stream=False)
    try:
        if reply.status != 200 or not reply.body:
            return None
        try:
            response = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return None
    finally:
        await reply.close()
    return response if isinstance(response, dict) and provider.is_complete(response) else None
