"""`cascache eval`: sweep thresholds over labelled data, recommend one for a target false-hit rate.

The flow, each step reusing the cache's own code (see `replay`):

1. embed every text once with the configured embedder;
2. streams (tuning): replay every stream at every threshold of the sweep and
   pool the counts; recommend the lowest threshold whose false-hit rate's upper
   confidence bound is within the target (`recommend`);
3. check the fast replay against a real `MemoryStore` replay at that threshold;
4. held-out streams: replayed only at the recommended threshold (and at the
   configured one), so the figure reported was never used to choose;
5. pairs (single questions or whole chats): per category, how many `b`s hit
   once `a` is cached, at every threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cascache.config import PolicySettings
from cascache.embedders.base import Embedder
from cascache.quality.data import LabelledPair, Stream
from cascache.quality.replay import (
    PairResult,
    StreamCounts,
    embed_texts,
    replay_pairs,
    replay_stream,
    replay_stream_in_store,
    texts_of_pairs,
    texts_of_streams,
)
from cascache.quality.stats import Bound, upper_bound
from cascache.tiers.consensus import ConsensusRule
from cascache.tiers.guards import DEFAULT_GUARDS, GuardSet

__all__ = [
    "DEFAULT_SWEEP",
    "EvalOptions",
    "EvalReport",
    "PairSummary",
    "Recommendation",
    "evaluate",
    "recommend",
    "summarise_pairs",
    "sweep",
]

#: 0.50, 0.55, ... 0.85, then 0.86 ... 0.99: coarse where nothing is safe, fine where defaults live.
DEFAULT_SWEEP: tuple[float, ...] = (
    *(round(0.50 + 0.05 * i, 2) for i in range(8)),
    *(round(0.86 + 0.01 * i, 2) for i in range(14)),
)


def sweep(spec: str) -> tuple[float, ...]:
    """Parse "0.80:0.99:0.01" (start:stop:step, inclusive) or "0.9,0.95,0.97" into sorted thresholds."""
    if ":" in spec:
        start, stop, step = (float(x) for x in spec.split(":"))
        if step <= 0 or stop < start:
            raise ValueError(f"bad sweep {spec!r}: need start <= stop and step > 0")
        count = round((stop - start) / step) + 1
        values = [round(start + i * step, 6) for i in range(count)]
    else:
        values = [float(x) for x in spec.split(",") if x.strip()]
    if not values or any(not 0 <= v <= 1 for v in values):
        raise ValueError(f"bad sweep {spec!r}: thresholds are cosine similarities in [0, 1]")
    return tuple(sorted(set(values)))


@dataclass(frozen=True, slots=True)
class EvalOptions:
    """How the cache under evaluation is configured, and what is asked of it."""

    thresholds: tuple[float, ...] = DEFAULT_SWEEP
    configured_threshold: float = 0.97
    """The threshold in force (settings): pairs and held-out streams are also reported at it."""
    guards: tuple[str, ...] = DEFAULT_GUARDS
    k: int = 1
    consensus: ConsensusRule | None = None
    """Answer consensus as configured (`semantic.consensus_*`); None: off. Used at every threshold."""
    policy: PolicySettings = field(default_factory=PolicySettings)
    target_fhr: float = 0.01
    confidence: float = 0.95
    bound: Bound = "wilson"
    rule: Literal["upper", "point"] = "upper"
    """"upper": the bound must be within the target; "point": the measured rate must (and at every
    higher threshold too, so one lucky dip does not decide)."""
    check_streams: int = 1
    """How many tuning streams to replay through a real MemoryStore at the recommended threshold."""
    cache_dir: Path | None = None
    """Where embeddings are kept between runs (None: not kept)."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    threshold: float | None
    """None when no threshold of the sweep meets the target."""
    counts: StreamCounts | None
    upper: float | None
    """Upper confidence bound of the false-hit rate at `threshold`."""
    rule: str
    """The rule, in words, for the report."""


@dataclass(frozen=True, slots=True)
class PairSummary:
    """One category of pairs at one threshold."""

    category: str
    same_answer: bool
    pairs: int
    hits: int
    routes: Mapping[str, int]
    """How many pairs went which way: bypass / exact / key / semantic."""
    vetoes: Mapping[str, int]
    """Guard -> pairs it vetoed (a candidate that cleared the threshold)."""

    @property
    def hit_rate(self) -> float:
        return self.hits / self.pairs if self.pairs else 0.0


@dataclass(slots=True)
class EvalReport:
    options: EvalOptions
    embedder: str
    tuning: dict[float, StreamCounts] = field(default_factory=dict)
    tuning_streams: int = 0
    recommendation: Recommendation | None = None
    store_check: list[tuple[StreamCounts, StreamCounts]] = field(default_factory=list)
    """(fast replay, MemoryStore replay) at the recommended threshold, per checked stream."""
    holdout: dict[float, StreamCounts] = field(default_factory=dict)
    holdout_streams: int = 0
    pairs: list[PairResult] = field(default_factory=list)

    def upper(self, counts: StreamCounts) -> float:
        return upper_bound(counts.wrong_hits, counts.hits, self.options.confidence, self.options.bound)

    @property
    def store_check_agrees(self) -> bool:
        return all(fast == slow for fast, slow in self.store_check)


def recommend(
    results: Mapping[float, StreamCounts],
    *,
    target: float,
    confidence: float = 0.95,
    bound: Bound = "wilson",
    rule: Literal["upper", "point"] = "upper",
) -> Recommendation:
    """The lowest threshold of the sweep that meets the false-hit target.

    "upper": the one-sided upper confidence bound of wrong hits / hits is at
    most `target` (a threshold with no hits has bound 1 and never qualifies:
    it says nothing). "point": the measured rate is at most `target` there and
    at every higher threshold.
    """
    thresholds = sorted(results)
    words = (
        f"lowest threshold whose false-hit rate's {confidence:.0%} upper bound ({bound}) is <= {target:.2%}"
        if rule == "upper"
        else f"lowest threshold from which on the measured false-hit rate is <= {target:.2%}"
    )
    for i, t in enumerate(thresholds):
        counts = results[t]
        up = upper_bound(counts.wrong_hits, counts.hits, confidence, bound)
        if rule == "upper":
            ok = up <= target
        else:
            ok = all(results[u].false_hit_rate <= target for u in thresholds[i:])
        if ok:
            return Recommendation(t, counts, up, words)
    return Recommendation(None, None, None, words)


def summarise_pairs(results: Sequence[PairResult], threshold: float) -> list[PairSummary]:
    """Per category (and same_answer), at one threshold; categories in first-seen order."""
    groups: dict[tuple[str, bool], list[PairResult]] = {}
    for result in results:
        groups.setdefault((result.pair.category, result.pair.same_answer), []).append(result)
    out = []
    for (category, same), members in groups.items():
        routes: dict[str, int] = {}
        vetoes: dict[str, int] = {}
        for r in members:
            routes[r.route] = routes.get(r.route, 0) + 1
            veto = r.veto.get(threshold)
            if veto is not None and not r.hit[threshold]:
                vetoes[veto.guard] = vetoes.get(veto.guard, 0) + 1
        out.append(
            PairSummary(category, same, len(members), sum(r.hit[threshold] for r in members), routes, vetoes)
        )
    return out


class _ReplayArgs(TypedDict):
    """What every replay of one evaluation shares (the cache's configuration)."""

    guards: GuardSet
    k: int
    consensus: ConsensusRule | None
    policy: PolicySettings
    embedder_name: str


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


async def evaluate(
    embedder: Embedder,
    *,
    pairs: Sequence[LabelledPair] = (),
    streams: Sequence[Stream] = (),
    holdout: Sequence[Stream] = (),
    options: EvalOptions = EvalOptions(),
    console: Console | None = None,
) -> EvalReport:
    """Run the whole evaluation; `console` shows progress bars (None: silent)."""
    console = console or Console(quiet=True)
    guards = GuardSet(options.guards)
    thresholds = tuple(sorted(set(options.thresholds) | {options.configured_threshold}))
    report = EvalReport(options=options, embedder=embedder.name)
    common = _ReplayArgs(guards=guards, k=options.k, consensus=options.consensus, policy=options.policy,
                         embedder_name=embedder.name)
    with _progress(console) as progress:
        texts = texts_of_pairs(pairs) | texts_of_streams(streams) | texts_of_streams(holdout)
        task = progress.add_task("embedding", total=len(texts))
        vectors = await embed_texts(
            embedder, texts, cache_dir=options.cache_dir, progress=lambda n: progress.advance(task, n)
        )
        if streams:
            task = progress.add_task("tuning streams", total=len(streams))
            for stream in streams:
                for t, counts in replay_stream(stream, vectors, thresholds, **common).items():
                    report.tuning[t] = report.tuning.get(t, StreamCounts()) + counts
                progress.advance(task)
            report.tuning_streams = len(streams)
            report.recommendation = recommend(
                {t: c for t, c in report.tuning.items() if t in options.thresholds},
                target=options.target_fhr,
                confidence=options.confidence,
                bound=options.bound,
                rule=options.rule,
            )
            chosen = report.recommendation.threshold
            if chosen is not None and options.check_streams:
                checked = streams[: options.check_streams]
                task = progress.add_task("checking against MemoryStore", total=len(checked))
                for stream in checked:
                    fast = replay_stream(stream, vectors, [chosen], **common)[chosen]
                    slow = await replay_stream_in_store(stream, vectors, chosen, **common)
                    report.store_check.append((fast, slow))
                    progress.advance(task)
        if holdout:
            at = sorted(
                {options.configured_threshold}
                | (
                    {report.recommendation.threshold}
                    if report.recommendation and report.recommendation.threshold is not None
                    else set()
                )
            )
            task = progress.add_task("held-out streams", total=len(holdout))
            for stream in holdout:
                for t, counts in replay_stream(stream, vectors, at, **common).items():
                    report.holdout[t] = report.holdout.get(t, StreamCounts()) + counts
                progress.advance(task)
            report.holdout_streams = len(holdout)
        if pairs:
            task = progress.add_task("pairs", total=len(pairs))
            report.pairs = await replay_pairs(
                pairs, vectors, thresholds, **common, progress=lambda n: progress.advance(task, n)
            )
    return report
