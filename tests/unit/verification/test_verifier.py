"""The off-path verifier: what it records, its concurrency and queue bounds, shutdown, and fetching."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from cascache.providers import PROVIDERS
from cascache.tiers.verify import (
    Action,
    EntryStats,
    Probe,
    Verdict,
    VerifiedAcceptance,
    VerifyParams,
)
from cascache.verification.judges import JudgeCase, Judgement, LabelJudge
from cascache.verification.monitor import FalseHitMonitor
from cascache.verification.verifier import Verifier, fetch_fresh
from tests.fakes import FakeProvider, chat_answer

EXPLORE = Verdict(Action.EXPLORE, verify=True, reason="learning")
EXPLOIT = Verdict(Action.EXPLOIT, verify=True, reason="within-bound", risk=0.01, model_risk=0.01)
NO_HISTORY = EntryStats()


def probe(verdict: Verdict = EXPLOIT, label: str = "card_arrival", entry_id: str = "e1",
          similarity: float = 0.93, stats: EntryStats = NO_HISTORY) -> Probe:
    return Probe(pool="ns", namespace="ns", category="faq", entry_id=entry_id, similarity=similarity,
                 query="where is my card?", cached_response=chat_answer(label), verdict=verdict, stats=stats)


def verifier_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("cascache-verifier")]


class Gate:
    """A fetch that waits until released and tracks how many run at once."""

    def __init__(self, answer: str = "card_arrival") -> None:
        self.answer = answer
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.calls = 0

    async def __call__(self) -> Mapping[str, Any] | None:
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return chat_answer(self.answer)


async def answer(label: str) -> Mapping[str, Any]:
    return chat_answer(label)


async def test_explored_candidate_is_judged_against_the_fresh_answer_and_learnt_from() -> None:
    acceptance = VerifiedAcceptance(VerifyParams())
    monitor = FalseHitMonitor()
    stored: list[tuple[str, EntryStats]] = []

    async def persist(entry_id: str, stats: EntryStats) -> None:
        stored.append((entry_id, stats))

    verifier = Verifier(LabelJudge(), monitor=monitor, acceptance=acceptance, persist=persist)
    assert verifier.submit_explored(probe(EXPLORE), chat_answer("card_delivery_estimate"))
    await verifier.aclose()
    assert verifier.counts()[("explore", "wrong")] == 1
    assert verifier.book.get("e1") == EntryStats(((0.93, False),))
    assert stored == [("e1", EntryStats(((0.93, False),)))]
    assert acceptance.pool_summary("ns")["observations"] == 1.0
    assert monitor.estimate().samples == 0  # an explored candidate was never served: not a hit


async def test_sampled_hit_is_fetched_off_path_judged_and_monitored() -> None:
    acceptance = VerifiedAcceptance(VerifyParams())
    monitor = FalseHitMonitor()
    verifier = Verifier(LabelJudge(), monitor=monitor, acceptance=acceptance)
    verifier.submit_hit(probe(label="card_arrival"), lambda: answer("card_arrival"))
    verifier.submit_hit(probe(label="card_arrival", entry_id="e2"), lambda: answer("lost_card"))
    await verifier.aclose()
    assert monitor.estimate().samples == 2 and monitor.estimate().wrong == 1
    assert monitor.estimate(category="faq").wrong == 1
    assert verifier.counts()[("hit", "correct")] == 1 and verifier.counts()[("hit", "wrong")] == 1
    assert verifier.book.get("e2").errors == 1


async def test_static_mode_monitors_without_learning() -> None:
    monitor = FalseHitMonitor()
    verifier = Verifier(LabelJudge(), monitor=monitor)
    verifier.submit_hit(probe(Verdict(Action.EXPLOIT, verify=True, reason="static")), lambda: answer("x"))
    await verifier.aclose()
    assert monitor.estimate().wrong == 1
    assert len(verifier.book) == 0


async def test_observations_build_on_the_freshest_history() -> None:
    verifier = Verifier(LabelJudge(), acceptance=VerifiedAcceptance())
    old = EntryStats(((0.9, True),))
    verifier.submit_explored(probe(EXPLORE, stats=old), chat_answer("card_arrival"))
    verifier.submit_explored(probe(EXPLORE, stats=old, similarity=0.95), chat_answer("lost_card"))
    await verifier.aclose()
    # The second observation lands on the book's copy (with the first), not on the probe's stale one.
    assert verifier.book.get("e1").observations == ((0.9, True), (0.93, True), (0.95, False))


async def test_at_most_concurrency_jobs_run_at_once() -> None:
    gate = Gate()
    verifier = Verifier(LabelJudge(), monitor=FalseHitMonitor(), concurrency=2, queue_size=10)
    for i in range(6):
        assert verifier.submit_hit(probe(entry_id=f"e{i}"), gate)
    for _ in range(20):
        await asyncio.sleep(0)
    assert gate.running == 2 and verifier.pending == 6
    gate.release.set()
    await verifier.aclose()
    assert gate.peak == 2 and gate.calls == 6
    assert verifier.counts()[("hit", "correct")] == 6


async def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    gate = Gate()
    verifier = Verifier(LabelJudge(), concurrency=1, queue_size=2)
    accepted = [verifier.submit_hit(probe(entry_id=f"e{i}"), gate) for i in range(5)]
    assert accepted == [True, True, False, False, False]
    assert verifier.counts()[("hit", "dropped")] == 3
    gate.release.set()
    await verifier.aclose()
    assert gate.calls == 2


async def test_close_drains_queued_work_then_leaves_no_task() -> None:
    verifier = Verifier(LabelJudge(), monitor=FalseHitMonitor(), concurrency=2)
    for i in range(8):
        verifier.submit_explored(probe(EXPLORE, entry_id=f"e{i}"), chat_answer("card_arrival"))
    assert len(verifier_tasks()) == 2
    await verifier.aclose(timeout_s=5)
    assert verifier.counts()[("explore", "correct")] == 8
    assert verifier_tasks() == [] and verifier.pending == 0
    assert not verifier.submit_explored(probe(EXPLORE), chat_answer("x"))  # closed: dropped
    assert verifier.counts()[("explore", "dropped")] == 1


async def test_close_cancels_stuck_work_after_its_timeout() -> None:
    gate = Gate()  # never released
    verifier = Verifier(LabelJudge(), concurrency=2, queue_size=10)
    for i in range(5):
        verifier.submit_hit(probe(entry_id=f"e{i}"), gate)
    await asyncio.sleep(0)
    await verifier.aclose(timeout_s=0.05)
    assert verifier_tasks() == [] and verifier.pending == 0
    assert verifier.counts()[("hit", "dropped")] == 5  # 2 cancelled while running, 3 never started
    assert gate.running == 0


async def test_close_without_work_is_a_no_op() -> None:
    verifier = Verifier(LabelJudge())
    await verifier.aclose()
    assert verifier_tasks() == []


async def test_slow_verification_times_out() -> None:
    async def slow() -> Mapping[str, Any] | None:
        await asyncio.sleep(10)
        return None

    verifier = Verifier(LabelJudge(), timeout_s=0.05)
    verifier.submit_hit(probe(), slow)
    await verifier.aclose(timeout_s=5)
    assert verifier.counts()[("hit", "failed")] == 1


async def test_no_fresh_answer_or_no_verdict_records_nothing() -> None:
    class Unsure:
        name = "unsure"

        async def judge(self, case: JudgeCase) -> Judgement:
            return Judgement(None, "cannot tell")

    async def nothing() -> Mapping[str, Any] | None:
        return None

    acceptance = VerifiedAcceptance()
    monitor = FalseHitMonitor()
    verifier = Verifier(Unsure(), monitor=monitor, acceptance=acceptance)
    verifier.submit_hit(probe(), nothing)
    verifier.submit_hit(probe(), lambda: answer("card_arrival"))
    verifier.submit_explored(probe(EXPLORE), {"choices": []})
    await verifier.aclose()
    counts = verifier.counts()
    assert counts[("hit", "failed")] == 1 and counts[("hit", "undecided")] == 1
    assert counts[("explore", "undecided")] == 1
    assert monitor.estimate().samples == 0 and acceptance.pool_summary("ns") == {}


async def test_a_failing_judge_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"

        async def judge(self, case: JudgeCase) -> Judgement:
            raise RuntimeError("judge down")

    verifier = Verifier(Broken())
    verifier.submit_explored(probe(EXPLORE), chat_answer("x"))
    with caplog.at_level(logging.ERROR):
        await verifier.aclose()
    assert verifier.counts()[("explore", "failed")] == 1
    assert "judge down" in caplog.text


async def test_a_failing_persist_keeps_the_book_and_is_counted() -> None:
    async def persist(entry_id: str, stats: EntryStats) -> None:
        raise OSError("store down")

    verifier = Verifier(LabelJudge(), acceptance=VerifiedAcceptance(), persist=persist)
    verifier.submit_explored(probe(EXPLORE), chat_answer("card_arrival"))
    await verifier.aclose()
    assert verifier.book.get("e1").observations == ((0.93, True),)
    assert verifier.counts()[("persist", "failed")] == 1
    assert verifier.counts()[("explore", "correct")] == 1


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        Verifier(LabelJudge(), concurrency=0)


def test_submitting_needs_a_running_loop_only_when_work_arrives() -> None:
    verifier = Verifier(LabelJudge())  # constructing outside a loop is fine
    with pytest.raises(RuntimeError):
        verifier.submit_explored(probe(EXPLORE), chat_answer("x"))


# --- fetch_fresh ---------------------------------------------------------------------------------


async def test_fetch_fresh_asks_for_a_plain_answer_even_for_a_streaming_request() -> None:
    fake = FakeProvider(answer=lambda body: "fresh answer")
    provider = PROVIDERS["openai"]
    request = provider.parse({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                              "messages": [{"role": "user", "content": "where is my card?"}]})
    response = await fetch_fresh(fake.upstream(), provider, request, {"authorization": "Bearer sk-a"})
    assert response is not None and response["choices"][0]["message"]["content"] == "fresh answer"
    sent = fake.requests[0]
    assert sent["stream"] is False and "stream_options" not in sent
    assert fake.headers_seen[0]["authorization"] == "Bearer sk-a"


@pytest.mark.parametrize("fake", [FakeProvider(status=500), FakeProvider(finish="length")],
                         ids=["error status", "incomplete"])
async def test_fetch_fresh_gives_none_without_a_complete_answer(fake: FakeProvider) -> None:
    provider = PROVIDERS["openai"]
    request = provider.parse({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert await fetch_fresh(fake.upstream(), provider, request, {}) is None
