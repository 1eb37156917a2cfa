"""The false-hit monitor: Wilson intervals, windows, keys, `cascache stats` figures and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cascache.verification.monitor import ALL, FalseHitMonitor, verification_stats, wilson_interval


@pytest.mark.parametrize(
    ("wrong", "samples", "low", "high"),
    [
        (0, 10, 0.0, 0.27753),
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72247, 1.0),
        (2, 200, 0.00275, 0.03577),
    ],
)
def test_wilson_interval_known_values(wrong: int, samples: int, low: float, high: float) -> None:
    got = wilson_interval(wrong, samples)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    narrow, wide = wilson_interval(1, 100, z=1.0), wilson_interval(1, 100, z=2.58)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    p, n, trials = 0.02, 300, 4000
    wrong = rng.binomial(n, p, size=trials)
    covered = sum(lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in wrong))
    assert 0.92 <= covered / trials <= 0.99


def test_monitor_estimates_per_key_over_its_window() -> None:
    monitor = FalseHitMonitor(window=4)
    for correct in (False, True, True, True):
        monitor.record("ns-a", "billing", correct)
    overall = monitor.estimate()
    assert (overall.samples, overall.wrong, overall.rate) == (4, 1, 0.25)
    monitor.record("ns-b", None, True)  # pushes the one wrong answer out of the window
    overall = monitor.estimate()
    assert (overall.samples, overall.wrong, overall.lifetime_samples, overall.lifetime_wrong) == (4, 0, 5, 1)
    assert monitor.estimate(category="billing").wrong == 1
    assert monitor.estimate(namespace="ns-b").samples == 1
    assert monitor.estimate(category="none").samples == 1
    unseen = monitor.estimate(namespace="never")
    assert unseen.samples == 0 and unseen.rate is None and (unseen.low, unseen.high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        monitor.estimate(namespace="ns-a", category="billing")


def test_monitor_interval_is_wilson_at_its_z() -> None:
    monitor = FalseHitMonitor(window=1000, z=1.96)
    for i in range(200):
        monitor.record("ns", None, correct=i >= 2)
    estimate = monitor.estimate()
    assert (estimate.low, estimate.high) == pytest.approx(wilson_interval(2, 200))


def test_monitor_keeps_the_most_recent_namespaces() -> None:
    monitor = FalseHitMonitor(max_namespaces=2)
    for namespace in ("a", "b", "a", "c"):
        monitor.record(namespace, None, True)
    snapshot = monitor.snapshot()
    assert set(snapshot["by_namespace"]) == {"a", "c"}
    assert snapshot["overall"]["samples"] == 4


def test_snapshot_and_stats_are_json_ready() -> None:
    monitor = FalseHitMonitor()
    monitor.record("ns", "faq", False)
    monitor.record("ns", "faq", True)

    class Summary:
        def summary(self) -> dict[str, object]:
            return {"pending": 0}

    stats = verification_stats(monitor, verifier=Summary(), acceptance=Summary())
    assert stats["false_hits"]["by_category"]["faq"]["false_hit_rate"] == 0.5
    assert stats["verifier"] == {"pending": 0} and stats["verified_mode"] == {"pending": 0}
    assert set(stats["false_hits"]["overall"]) >= {"samples", "wrong", "false_hit_rate", "low", "high"}


def test_metrics_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    monitor = FalseHitMonitor()
    monitor.register(registry, verifier_counts=lambda: {("hit", "wrong"): 3, ("explore", "dropped"): 1})
    before = generate_latest(registry).decode()
    assert "cascache_false_hit_rate{" not in before  # no samples yet: no rate to show
    assert 'cascache_verifications_total{kind="hit",result="wrong"} 3.0' in before
    for i in range(10):
        monitor.record("ns", "faq", correct=i > 0)
    text = generate_latest(registry).decode()
    assert f'cascache_false_hit_rate{{category="{ALL}"}} 0.1' in text
    assert 'cascache_false_hit_rate{category="faq"} 0.1' in text
    assert 'cascache_false_hit_samples_total{category="faq",result="wrong"} 1.0' in text
    low, high = wilson_interval(1, 10)
    assert f'cascache_false_hit_rate_high{{category="faq"}} {high}' in text
    assert f'cascache_false_hit_rate_low{{category="faq"}} {low}' in text
