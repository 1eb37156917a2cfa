"""Stream replay: the figures' meaning on small made-up streams, and the BANKING77 check (slow)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cascache.tiers.verify import VerifyParams
from cascache.verification.simulate import (
    DEFAULT_BANKING77,
    draw_zipf_stream,
    embed_cached,
    load_banking77,
    run_static_stream,
    run_verified_stream,
    simulate_static,
    simulate_verified,
    stratified_split,
)

REPO = Path(__file__).resolve().parents[3]


def clustered_stream(n: int = 600, labels: int = 8, noise: float = 0.25, seed: int = 0
                     ) -> tuple[list[str], list[str], np.ndarray]:
    """Queries scattered around one random direction per label (unit vectors)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels, 32))
    chosen = rng.integers(0, labels, size=n)
    vectors = centres[chosen] + noise * rng.normal(size=(n, 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"q{i}" for i in range(n)], [f"label{c}" for c in chosen], vectors.astype(np.float32)


def test_static_extremes_define_the_figures() -> None:
    texts, labels, vectors = clustered_stream()
    never = run_static_stream(texts, labels, vectors, threshold=1.01)
    assert never["hits"] == 0 and never["entries"] == len(texts) and never["false_hit_rate"] == 0.0
    always = simulate_static(texts, labels, vectors, threshold=-1.0)
    assert always.hits == len(texts) - 1 and always.entries == 1
    # Everything is served from the first query's answer: wrong iff its label differs.
    assert always.wrong_hits == sum(label != labels[0] for label in labels[1:])
    seen = len(texts) - len(set(labels))
    assert never["oracle"] == pytest.approx(seen / len(texts))


def test_verified_stream_figures() -> None:
    texts, labels, vectors = clustered_stream(n=1500)
    result = run_verified_stream(texts, labels, vectors, delta=0.05, seed=1)
    assert result["delta"] == 0.05
    assert result["queries"] == 1500
    assert result["hits"] + result["explores"] + result["exact_hits"] + 1 == 1500  # the first query: a miss
    assert result["hit_rate"] == pytest.approx(result["hits"] / 1500)
    assert result["false_hit_rate"] == pytest.approx(result["wrong_hits"] / result["hits"])
    assert result["false_hit_rate_low"] <= result["false_hit_rate"] <= result["false_hit_rate_high"]
    assert result["hits"] > 0 and result["false_hit_rate"] <= 0.05
    assert 0 < result["verified_hits"] < result["hits"]
    assert result == run_verified_stream(texts, labels, vectors, delta=0.05, seed=1)  # seeded


def test_params_keep_their_settings_but_take_the_delta() -> None:
    texts, labels, vectors = clustered_stream(n=800)
    none_verified = run_verified_stream(texts, labels, vectors, 0.05, seed=1, params=VerifyParams(verify_share=0.0))
    assert none_verified["delta"] == 0.05 and none_verified["verified_hits"] == 0


def test_verbatim_repeats_are_exact_hits() -> None:
    texts, labels, vectors = clustered_stream(n=50)
    texts = [*texts, texts[3]]
    labels = [*labels, labels[3]]
    vectors = np.vstack([vectors, vectors[3]])
    assert simulate_verified(texts, labels, vectors, VerifyParams(), seed=0).exact_hits == 1
    assert simulate_static(texts, labels, vectors, 1.01).exact_hits == 1


def test_lengths_must_agree() -> None:
    texts, labels, vectors = clustered_stream(n=10)
    with pytest.raises(ValueError, match="length"):
        simulate_static(texts[:-1], labels, vectors, 0.9)


def test_zipf_stream_draws_distinct_rows_with_a_popular_head() -> None:
    labels = [f"l{i % 10}" for i in range(1000)]
    stream = draw_zipf_stream(labels, range(1000), 300, zipf_s=1.1, seed=3)
    assert len(stream) == len(set(stream)) == 300
    counts = Counter(labels[r] for r in stream).most_common()
    assert counts[0][1] > 3 * counts[-1][1]
    assert stream == draw_zipf_stream(labels, range(1000), 300, zipf_s=1.1, seed=3)
    with pytest.raises(ValueError, match="available"):
        draw_zipf_stream(labels, range(100), 101, zipf_s=1.1, seed=3)


def test_stratified_split_keeps_each_label_share() -> None:
    labels = [f"l{i % 4}" for i in range(400)]
    first, second = stratified_split(labels, 0.7, seed=1)
    assert sorted(first + second) == list(range(400)) and not set(first) & set(second)
    assert Counter(labels[r] for r in first) == {f"l{i}": 70 for i in range(4)}


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_BANKING77.exists(), reason="BANKING77 data not present")
def test_banking77_streams_stay_within_delta() -> None:
    """The docs/verified-mode.md check on four tuning streams: FHR <= δ at 1%, 2%, 5%."""
    texts, labels = load_banking77()
    vectors = embed_cached(texts, "banking77", REPO / "bench" / "out")
    tune, _ = stratified_split(labels, 0.7, seed=77)
    streams = [draw_zipf_stream(labels, tune, 3000, 1.1, seed=78 + k) for k in range(4)]
    hit_rates = []
    for delta in (0.01, 0.02, 0.05):
        hits = wrong = 0
        for k, stream in enumerate(streams):
            result = run_verified_stream([texts[r] for r in stream], [labels[r] for r in stream], vectors[stream],
                                         delta, seed=k)
            hits += result["hits"]
            wrong += result["wrong_hits"]
        assert wrong <= delta * hits, f"δ={delta}: {wrong} wrong of {hits} hits"
        hit_rates.append(hits)
    assert 0 < hit_rates[0] < hit_rates[1] < hit_rates[2]
