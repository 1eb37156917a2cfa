"""Offline replay of labelled query streams through verified acceptance and static thresholds.

A stream is the queries of a labelled data set in arrival order: texts, labels
and their embeddings. The simulated upstream answers every query with its
label, and the label judge calls a cached answer correct iff its label is the
query's. For each query:

- a text already cached verbatim is an exact hit (Tier 1a; outside the bound);
- otherwise the nearest cached query (exact cosine) is the candidate, and
  `VerifiedAcceptance` decides, exactly as the semantic tier does at run time:
  EXPLOIT serves the cached label (a hit, wrong iff the labels differ; a
  `verify_share` of them is judged and learned from), EXPLORE serves a fresh
  answer, judges the candidate and writes the query back (as the pipeline's
  write-back does on every upstream answer);
- with no candidate (empty cache), the query is a miss and is written back.

The static runner is the same loop with a fixed threshold (hits are not
written back, misses are). `oracle` is the share of queries whose label was
already in the stream before them: no cache can do better.

`python -m cascache.verification.simulate` runs the BANKING77 figures in
docs/verified-mode.md (embeddings cached under bench/out/).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cascache.quality import data as quality_data
from cascache.quality.data import stratified_split
from cascache.quality.vector_file import cached_vectors
from cascache.tiers.verify import Action, EntryStats, VerifiedAcceptance, VerifyParams
from cascache.verification.monitor import wilson_interval

__all__ = [
    "StreamResult",
    "draw_zipf_stream",
    "embed_cached",
    "load_banking77",
    "run_static_stream",
    "run_verified_stream",
    "simulate_static",
    "simulate_verified",
    "stratified_split",
]

DEFAULT_BANKING77 = Path("/work/shared/data/banking77/train.csv")
_POOL = "stream"


@dataclass(frozen=True, slots=True)
class StreamResult:
    """Counts of one replay (or several, added up)."""

    queries: int
    hits: int
    """Semantic hits served (EXPLOITs, or similarity >= threshold)."""
    wrong_hits: int
    exact_hits: int
    """Verbatim repeats served by the exact tier (not part of the bound)."""
    seen: int
    """Queries whose label appeared earlier in the stream (the oracle's hits)."""
    explores: int = 0
    verified_hits: int = 0
    """Semantic hits judged off-path (the monitor's sample)."""
    entries: int = 0

    def __add__(self, other: StreamResult) -> StreamResult:
        return StreamResult(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))

    @property
    def hit_rate(self) -> float:
        return (self.hits + self.exact_hits) / self.queries if self.queries else 0.0

    @property
    def false_hit_rate(self) -> float:
        """Wrong semantic hits / semantic hits: the quantity verified mode bounds."""
        return self.wrong_hits / self.hits if self.hits else 0.0

    @property
    def oracle(self) -> float:
        return self.seen / self.queries if self.queries else 0.0

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.wrong_hits, self.hits)
        return {
            **asdict(self),
            "hit_rate": self.hit_rate,
            "false_hit_rate": self.false_hit_rate,
            "false_hit_rate_low": low,
            "false_hit_rate_high": high,
            "oracle": self.oracle,
            "hits_of_oracle": self.hit_rate / self.oracle if self.seen else 0.0,
        }


def _fields(result: StreamResult) -> tuple[int, ...]:
    return (result.queries, result.hits, result.wrong_hits, result.exact_hits, result.seen,
            result.explores, result.verified_hits, result.entries)


def _seen_count(labels: Sequence[str]) -> int:
    seen: set[str] = set()
    count = 0
    for label in labels:
        count += label in seen
        seen.add(label)
    return count


def _check(texts: Sequence[str], labels: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
    if not len(texts) == len(labels) == len(vectors):
        raise ValueError(f"texts, labels and vectors differ in length: {len(texts)}, {len(labels)}, {len(vectors)}")


def simulate_verified(
    texts: Sequence[str],
    labels: Sequence[str],
    vectors: npt.NDArray[np.float32],
    params: VerifyParams,
    seed: int,
) -> StreamResult:
    """Replay one stream through `VerifiedAcceptance` (see the module docstring)."""
    _check(texts, labels, vectors)
    rng = random.Random(seed)
    acceptance = VerifiedAcceptance(params)
    x = np.asarray(vectors, dtype=np.float32)
    sims = x @ x.T
    cached = np.empty(len(texts), dtype=np.int64)  # stream positions of written-back queries
    stats: list[EntryStats] = []
    by_text: dict[str, int] = {}
    size = hits = wrong = exact = explores = verified = 0
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if text in by_text:
            exact += 1
            continue
        if size == 0:
            cached[0], size = i, 1
            stats.append(EntryStats())
            by_text[text] = i
            continue
        row = sims[i, cached[:size]]
        best = int(np.argmax(row))
        similarity = float(row[best])
        correct = labels[cached[best]] == label  # the label judge
        verdict = acceptance.decide(_POOL, stats[best], similarity, rng)
        if verdict.action is Action.EXPLOIT:
            hits += 1
            wrong += not correct
            if verdict.verify:
                verified += 1
                stats[best] = acceptance.observe(_POOL, stats[best], verdict, similarity, correct)
            continue
        explores += 1
        if verdict.verify:
            stats[best] = acceptance.observe(_POOL, stats[best], verdict, similarity, correct)
        cached[size] = i
        size += 1
        stats.append(EntryStats())
        by_text[text] = i
    return StreamResult(queries=len(texts), hits=hits, wrong_hits=wrong, exact_hits=exact,
                        seen=_seen_count(labels), explores=explores, verified_hits=verified, entries=size)


def simulate_static(
    texts: Sequence[str], labels: Sequence[str], vectors: npt.NDArray[np.float32], threshold: float
) -> StreamResult:
    """Replay one stream through a fixed threshold (hits are not written back, misses are)."""
    _check(texts, labels, vectors)
    x = np.asarray(vectors, dtype=np.float32)
    sims = x @ x.T
    cached = np.empty(len(texts), dtype=np.int64)
    by_text: set[str] = set()
    size = hits = wrong = exact = 0
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if text in by_text:
            exact += 1
            continue
        if size:
            row = sims[i, cached[:size]]
            best = int(np.argmax(row))
            if row[best] >= threshold:
                hits += 1
                wrong += labels[cached[best]] != label
                continue
        cached[size] = i
        size += 1
        by_text.add(text)
    return StreamResult(queries=len(texts), hits=hits, wrong_hits=wrong, exact_hits=exact,
                        seen=_seen_count(labels), explores=len(texts) - hits - exact, entries=size)


def run_verified_stream(
    texts: Sequence[str],
    labels: Sequence[str],
    vectors: npt.NDArray[np.float32],
    delta: float,
    seed: int,
    params: VerifyParams | None = None,
) -> dict[str, Any]:
    """Verified mode at bound `delta` on one stream given in arrival order; figures as a dict.

    Keys: hit_rate, false_hit_rate (wrong semantic hits / semantic hits, the
    bounded quantity), false_hit_rate_low / _high (Wilson 95%), oracle,
    hits_of_oracle, and the raw counts (queries, hits, wrong_hits, exact_hits,
    seen, explores, verified_hits, entries). `seed` drives the only randomness
    (which exploits are verified). `params` overrides the defaults; its delta
    is replaced by `delta`.
    """
    base = params or VerifyParams()
    resolved = VerifyParams(**{**asdict(base), "delta": delta})
    return {"delta": delta, **simulate_verified(texts, labels, vectors, resolved, seed).to_dict()}


def run_static_stream(
    texts: Sequence[str], labels: Sequence[str], vectors: npt.NDArray[np.float32], threshold: float
) -> dict[str, Any]:
    """A fixed threshold on one stream; the same keys as `run_verified_stream`."""
    return {"threshold": threshold, **simulate_static(texts, labels, vectors, threshold).to_dict()}


# --- BANKING77 streams ---------------------------------------------------------------------


def load_banking77(path: Path = DEFAULT_BANKING77) -> tuple[list[str], list[str]]:
    """`cascache.quality.data.load_banking77`, reading the shared BANKING77 by default."""
    return quality_data.load_banking77(path)


def embed_cached(texts: Sequence[str], tag: str, out_dir: Path) -> npt.NDArray[np.float32]:
    """Embed with the default embedder, reusing `out_dir` when the same model saw the same texts
    (`quality.vector_file`: bench/threshold.py names its files the same way, so both reuse one)."""
    from cascache.embedders.onnx_minilm import MODEL_NAME, OnnxMiniLMEmbedder

    return cached_vectors(out_dir, tag, MODEL_NAME, texts,
                          lambda todo: OnnxMiniLMEmbedder(memo_size=0).embed_sync(todo))


def draw_zipf_stream(labels: Sequence[str], rows: Sequence[int], n: int, zipf_s: float, seed: int) -> list[int]:
    """`n` distinct rows; labels drawn with popularity 1/rank**zipf_s (the evaluation's own stream builder)."""
    return quality_data.draw_zipf_stream(rows, labels, n, zipf_s, seed)


def pooled(results: Sequence[StreamResult]) -> StreamResult:
    total = results[0]
    for result in results[1:]:
        total = total + result
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verified mode vs static thresholds on BANKING77 streams.")
    parser.add_argument("--data", type=Path, default=DEFAULT_BANKING77)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--part", choices=("tune", "held"), default="tune",
                        help="70%% tuning part (seeded split) or the 30%% held-out part")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.90, 0.93, 0.95, 0.97])
    args = parser.parse_args(argv)

    texts, labels = load_banking77(args.data)
    vectors = embed_cached(texts, "banking77", args.out)
    tune, held = stratified_split(labels, 0.7, args.seed)
    rows = tune if args.part == "tune" else held
    queries = args.queries if args.part == "tune" else min(args.queries, len(held) // 2)
    first_seed = args.seed + 1 if args.part == "tune" else args.seed + 1001
    streams = [draw_zipf_stream(labels, rows, queries, args.zipf_s, first_seed + k) for k in range(args.streams)]

    def replay(run: Any) -> StreamResult:
        return pooled([run([texts[r] for r in s], [labels[r] for r in s], vectors[s], k)
                       for k, s in enumerate(streams)])

    figures: dict[str, Any] = {"part": args.part, "streams": args.streams, "queries": queries, "verified": {},
                               "static": {}}
    print(f"{args.part}: {args.streams} streams x {queries} queries, Zipf s={args.zipf_s}")
    print(f"{'mode':>16} {'hits/oracle':>12} {'hit rate':>9} {'FHR':>7} {'95% CI':>15} {'wrong/hits':>11}")
    for delta in args.deltas:
        params = VerifyParams(delta=delta)
        result = replay(lambda t, lab, v, k, p=params: simulate_verified(t, lab, v, p, seed=k))
        figures["verified"][str(delta)] = result.to_dict()
        _print_row(f"verified δ={delta:g}", result)
    for threshold in args.thresholds:
        result = replay(lambda t, lab, v, k, th=threshold: simulate_static(t, lab, v, th))
        figures["static"][str(threshold)] = result.to_dict()
        _print_row(f"static {threshold:.2f}", result)
    worst = max(figures["verified"][str(d)]["false_hit_rate"] / d for d in args.deltas)
    figures["verified_worst_fhr_over_delta"] = worst
    print(json.dumps(figures, default=float))
    return 0


def _print_row(name: str, result: StreamResult) -> None:
    d = result.to_dict()
    ci = f"{100 * d['false_hit_rate_low']:.2f}-{100 * d['false_hit_rate_high']:.2f}"
    print(f"{name:>16} {100 * d['hits_of_oracle']:>11.1f}% {100 * d['hit_rate']:>8.1f}% "
          f"{100 * d['false_hit_rate']:>6.2f}% {ci:>15} {result.wrong_hits:>5}/{result.hits:<5}")


if __name__ == "__main__":
    sys.exit(main())

