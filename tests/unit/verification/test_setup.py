"""Assembling verification from settings: what runs in each mode, persistence of learnt state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from cascache.providers import PROVIDERS
from cascache.tiers.verify import Action, EntryStats, Probe, Verdict
from cascache.verification.judges import EmbeddingJudge, ExactJudge, LabelJudge, LLMJudge
from cascache.verification.setup import Verification, build_verification
from tests.fakes import FakeProvider, KeywordEmbedder, chat_answer


@dataclass(frozen=True)
class Options:
    mode: str = "static"
    delta: float = 0.02
    sample_share: float = 0.1
    judge: str = "exact"
    judge_threshold: float = 0.9
    judge_model: str | None = None
    judge_label_pattern: str | None = None
    concurrency: int = 2
    queue_size: int = 8
    timeout_s: float = 5.0
    min_similarity: float = 0.5
    monitor_window: int = 100


class StatsStore:
    def __init__(self) -> None:
        self.saved: dict[str, Mapping[str, Any]] = {}

    async def update_verify_stats(self, entry_id: str, stats: Mapping[str, Any]) -> None:
        self.saved[entry_id] = stats


def build(options: Options, store: object = None, registry: CollectorRegistry | None = None,
          upstream: FakeProvider | None = None) -> Verification:
    upstreams = {"openai": (upstream or FakeProvider()).upstream()}
    return build_verification(options, embedder=KeywordEmbedder(), upstreams=upstreams, store=store,
                              registry=registry)


def probe(verdict: Verdict) -> Probe:
    return Probe(pool="ns", namespace="ns", category=None, entry_id="e1", similarity=0.95, query="q",
                 cached_response=chat_answer("same"), verdict=verdict)


def test_static_mode_without_sampling_runs_nothing() -> None:
    verification = build(Options(sample_share=0.0))
    assert verification.verifier is None and verification.monitor is None and verification.acceptance is None
    assert verification.stats() == {"enabled": False}


def test_static_mode_monitors_and_verified_mode_also_decides() -> None:
    static = build(Options())
    assert static.verifier is not None and static.monitor is not None and static.acceptance is None
    verified = build(Options(mode="verified", delta=0.05, sample_share=0.0))
    assert verified.acceptance is not None and verified.verifier is not None
    assert verified.acceptance.params.delta == 0.05 and verified.sample_share == 0.0


def test_each_judge_gets_its_settings() -> None:
    def judge_of(**changes: Any) -> object:
        verifier = build(replace(Options(), **changes)).verifier
        assert verifier is not None
        return verifier.judge

    assert isinstance(judge_of(judge="exact"), ExactJudge)
    embedding = judge_of(judge="embedding", judge_threshold=0.8)
    assert isinstance(embedding, EmbeddingJudge) and embedding.threshold == 0.8
    label = judge_of(judge="label", judge_label_pattern=r"\[(\w+)\]")
    assert isinstance(label, LabelJudge) and label.pattern is not None
    llm = judge_of(judge="llm", judge_model="judge-1")
    assert isinstance(llm, LLMJudge) and llm.model == "judge-1" and llm.api == "openai"


async def test_histories_are_persisted_through_the_store_when_it_can() -> None:
    store = StatsStore()
    verification = build(Options(mode="verified"), store=store)
    verification.probe_explored(probe(Verdict(Action.EXPLORE, True, "learning")), chat_answer("same"))
    await verification.aclose()
    assert store.saved == {"e1": EntryStats(((0.95, True),)).to_json()}


async def test_probe_hit_asks_upstream_off_path_and_monitors() -> None:
    fake = FakeProvider(answer=lambda body: "different")
    verification = build(Options(), upstream=fake)
    request = PROVIDERS["openai"].parse({"model": "m", "messages": [{"role": "user", "content": "q"}]})
    upstream = fake.upstream()
    verification.probe_hit(probe(Verdict(Action.EXPLOIT, True, "static")), upstream, PROVIDERS["openai"],
                           request, {"authorization": "Bearer sk-a"})
    verification.probe_hit(probe(Verdict(Action.EXPLOIT, True, "static")), None, PROVIDERS["openai"],
                           request, {})  # no upstream for this API: nothing to do
    await verification.aclose()
    assert len(fake.requests) == 1
    assert verification.monitor is not None and verification.monitor.estimate().wrong == 1
    assert verification.stats()["false_hits"]["overall"]["samples"] == 1


def test_metrics_register_once_per_registry() -> None:
    registry = CollectorRegistry()
    build(Options(), registry=registry)
    build(Options(), registry=registry)  # a second pipeline on the same registry: no duplicate error
    assert b"cascache_false_hit_samples_total" in generate_latest(registry)


def test_pool_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "verification.json"
    before = build(Options(mode="verified"))
    assert before.acceptance is not None
    for i in range(60):
        before.acceptance.observe("ns", EntryStats(), Verdict(Action.EXPLORE, True, "learning"), 0.95, correct=i > 0)
    before.save(path)
    after = build(Options(mode="verified"))
    assert after.load(path) == 1
    assert after.acceptance is not None
    assert after.acceptance.pool_summary("ns")["observations"] == before.acceptance.pool_summary("ns")["observations"]
    path.write_text("{not json", encoding="utf-8")
    assert build(Options(mode="verified")).load(path) == 0
    assert build(Options(mode="verified")).load(tmp_path / "missing.json") == 0


def test_static_mode_saves_nothing(tmp_path: Path) -> None:
    build(Options()).save(tmp_path / "verification.json")
    assert not (tmp_path / "verification.json").exists()
