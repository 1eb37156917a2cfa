"""Assembles verification for one cache from its settings: acceptance, judge, verifier, monitor.

Kept here so that the pipeline only holds one `Verification` and calls it by
name; nothing in this module runs per request except `probe_hit` and
`probe_explored`, which only enqueue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from cascache._types import ChatRequest
from cascache.embedders.base import Embedder
from cascache.providers.base import Provider
from cascache.tiers.verify import EntryStats, EntryStatsBook, Probe, VerifiedAcceptance, VerifyParams
from cascache.upstreams.base import Upstream
from cascache.verification.judges import JudgeDeps, make_judge
from cascache.verification.monitor import FalseHitMonitor, verification_stats
from cascache.verification.verifier import PersistStats, Verifier, fetch_fresh

__all__ = ["Verification", "VerificationOptions", "build_verification"]

log = logging.getLogger(__name__)


class VerificationOptions(Protocol):
    """The `[verification]` settings this module reads (see docs/verified-mode.md)."""

    @property
    def mode(self) -> str: ...
    @property
    def delta(self) -> float: ...
    @property
    def sample_share(self) -> float: ...
    @property
    def judge(self) -> str: ...
    @property
    def judge_threshold(self) -> float: ...
    @property
    def judge_model(self) -> str | None: ...
    @property
    def judge_label_pattern(self) -> str | None: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def queue_size(self) -> int: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def min_similarity(self) -> float: ...
    @property
    def monitor_window(self) -> int: ...


class _StatsStore(Protocol):
    async def update_verify_stats(self, entry_id: str, stats: Mapping[str, Any]) -> None: ...


@dataclass
class Verification:
    """The running verification of one cache. `verifier` is None when nothing is verified."""

    acceptance: VerifiedAcceptance | None
    """Set in verified mode only."""
    book: EntryStatsBook
    monitor: FalseHitMonitor | None
    verifier: Verifier | None
    sample_share: float
    """Share of served semantic hits to verify (the semantic tier draws the sample)."""

    def probe_hit(self, probe: Probe, upstream: Upstream | None, provider: Provider, request: ChatRequest,
                  headers: Mapping[str, str]) -> None:
        """A served, sampled hit: re-ask `upstream` in the background and judge. Never awaited."""
        if self.verifier is None or upstream is None:
            return
        kept = dict(headers)  # the request's headers object must not be needed after it ends
        self.verifier.submit_hit(probe, lambda: fetch_fresh(upstream, provider, request, kept))

    def probe_explored(self, probe: Probe, fresh_response: Mapping[str, Any]) -> None:
        """An explored candidate: judge it against the fresh answer the client got."""
        if self.verifier is not None:
            self.verifier.submit_explored(probe, fresh_response)

    def stats(self) -> dict[str, Any]:
        """For `cascache stats` and /admin/stats."""
        if self.monitor is None:
            return {"enabled": False}
        return {"enabled": True, **verification_stats(self.monitor, self.verifier, self.acceptance)}

    def save(self, path: Path) -> None:
        """Write verified mode's pool state (per-entry histories live on the entries)."""
        if self.acceptance is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.acceptance.snapshot()), encoding="utf-8")
        os.replace(scratch, path)  # atomic: a crash mid-write leaves the old file

    def load(self, path: Path) -> int:
        """Restore what `save` wrote; a missing or unreadable file restores nothing."""
        if self.acceptance is None or not path.exists():
            return 0
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("could not read %s; verified mode starts learning afresh", path)
            return 0
        return self.acceptance.restore(data) if isinstance(data, dict) else 0

    async def aclose(self, timeout_s: float = 5.0) -> None:
        if self.verifier is not None:
            await self.verifier.aclose(timeout_s)


def build_verification(
    options: VerificationOptions,
    *,
    embedder: Embedder,
    upstreams: Mapping[str, Upstream],
    store: object,
    registry: CollectorRegistry | None = None,
) -> Verification:
    """Everything `options` asks for. With mode "static" and sample_share 0, nothing runs.

    Per-entry histories are persisted through `store.update_verify_stats` when
    the store has it; otherwise they live in process only (`EntryStatsBook`).
    The LLM judge asks the OpenAI-shaped upstream, else the Anthropic one.
    """
    book = EntryStatsBook()
    acceptance = None
    if options.mode == "verified":
        acceptance = VerifiedAcceptance(VerifyParams(delta=options.delta, verify_share=options.sample_share,
                                                     min_similarity=options.min_similarity))
    if acceptance is None and options.sample_share <= 0:
        return Verification(None, book, None, None, 0.0)
    judge_upstream, api = upstreams.get("openai"), "openai"
    if judge_upstream is None and "anthropic" in upstreams:
        judge_upstream, api = upstreams["anthropic"], "anthropic"
    per_judge: dict[str, dict[str, Any]] = {
        "embedding": {"threshold": options.judge_threshold},
        "llm": {"api": api},
        "label": {"pattern": options.judge_label_pattern},
    }
    judge_options = per_judge.get(options.judge, {})
    judge = make_judge(options.judge, JudgeDeps(embedder=embedder, upstream=judge_upstream,
                                                model=options.judge_model), **judge_options)
    monitor = FalseHitMonitor(window=options.monitor_window)
    verifier = Verifier(judge, monitor=monitor, acceptance=acceptance, book=book, persist=_persist(store),
                        concurrency=options.concurrency, queue_size=options.queue_size,
                        timeout_s=options.timeout_s)
    if registry is not None:
        with contextlib.suppress(ValueError):  # already registered (a second pipeline on one registry)
            monitor.register(registry, verifier.counts)
    return Verification(acceptance, book, monitor, verifier, options.sample_share)


def _persist(store: object) -> PersistStats | None:
    update = getattr(store, "update_verify_stats", None)
    if update is None:
        return None
    typed: _StatsStore = store  # type: ignore[assignment]

    async def persist(entry_id: str, stats: EntryStats) -> None:
        await typed.update_verify_stats(entry_id, stats.to_json())

    return persist
