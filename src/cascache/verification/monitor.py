"""Online false-hit monitoring: how often served semantic hits are wrong, with a confidence interval.

In every mode (static threshold or verified), a random `verify_share` of the
semantic hits served is sent upstream again off the critical path and judged
(see `verifier.Verifier`). Because the sample is uniform over served hits, the
share of wrong answers in it is an unbiased estimate of the false-hit rate
(wrong hits / hits), and the Wilson score interval is a confidence interval
for it. What the interval does not cover: judge errors (it estimates the rate
of hits the *judge* calls wrong), and hits that were not verified because the
verifier's queue was full (dropped samples are counted; if drops correlate
with load, so may the estimate).

Estimates are over the last `window` verified hits per key (overall, per
category, per namespace), so they follow changes; lifetime counts are kept as
well. Namespaces are kept for the `max_namespaces` most recently seen.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["ALL", "FalseHitEstimate", "FalseHitMonitor", "verification_stats", "wilson_interval"]

#: Category label of the overall figures in metrics (category names starting with "_" are reserved).
ALL = "_all"
#: Category label of hits that belong to no category.
NO_CATEGORY = "none"
_MAX_CATEGORIES = 256


def wilson_interval(wrong: float, samples: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion: `wrong` of `samples` (z = 1.96: 95%).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at
    0 or `samples` wrong. With no samples it is the whole [0, 1].
    """
    if samples <= 0:
        return 0.0, 1.0
    if not 0 <= wrong <= samples:
        raise ValueError(f"wrong must be in [0, samples], got {wrong} of {samples}")
    p = wrong / samples
    z2 = z * z
    denominator = 1.0 + z2 / samples
    centre = (p + z2 / (2 * samples)) / denominator
    half = z * math.sqrt(p * (1 - p) / samples + z2 / (4 * samples * samples)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class FalseHitEstimate:
    """The false-hit rate of one key over its window, with lifetime counts."""

    samples: int
    """Verified hits in the window."""
    wrong: int
    rate: float | None
    """wrong / samples; None before the first sample."""
    low: float
    high: float
    """Wilson interval at the monitor's confidence."""
    lifetime_samples: int
    lifetime_wrong: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "wrong": self.wrong,
            "false_hit_rate": self.rate,
            "low": round(self.low, 6),
            "high": round(self.high, 6),
            "lifetime_samples": self.lifetime_samples,
            "lifetime_wrong": self.lifetime_wrong,
        }


class _Tally:
    """The last `window` outcomes (True: wrong) and lifetime counts."""

    __slots__ = ("lifetime_samples", "lifetime_wrong", "outcomes", "wrong")

    def __init__(self, window: int) -> None:
        self.outcomes: deque[bool] = deque(maxlen=window)
        self.wrong = 0
        self.lifetime_samples = 0
        self.lifetime_wrong = 0

    def add(self, wrong: bool) -> None:
        if len(self.outcomes) == self.outcomes.maxlen and self.outcomes[0]:
            self.wrong -= 1
        self.outcomes.append(wrong)
        self.wrong += wrong
        self.lifetime_samples += 1
        self.lifetime_wrong += wrong

    def estimate(self, z: float) -> FalseHitEstimate:
        n = len(self.outcomes)
        low, high = wilson_interval(self.wrong, n, z)
        return FalseHitEstimate(n, self.wrong, self.wrong / n if n else None, low, high,
                                self.lifetime_samples, self.lifetime_wrong)


class FalseHitMonitor:
    """Estimated false-hit rate of served semantic hits, overall, per category and per namespace.

    `record` takes the judged outcome of one *served* hit that was sampled
    uniformly; explored candidates (never served) must not be recorded here.
    """

    def __init__(self, window: int = 1000, max_namespaces: int = 1024, z: float = 1.96) -> None:
        if window < 1 or max_namespaces < 1 or z <= 0:
            raise ValueError("window and max_namespaces must be >= 1, z > 0")
        self.window = window
        self.max_namespaces = max_namespaces
        self.z = z
        self._overall = _Tally(window)
        self._categories: dict[str, _Tally] = {}
        self._namespaces: OrderedDict[str, _Tally] = OrderedDict()

    def record(self, namespace: str, category: str | None, correct: bool) -> None:
        wrong = not correct
        self._overall.add(wrong)
        name = category if category is not None else NO_CATEGORY
        tally = self._categories.get(name)
        if tally is None and len(self._categories) < _MAX_CATEGORIES:
            tally = self._categories[name] = _Tally(self.window)
        if tally is not None:
            tally.add(wrong)
        spot = self._namespaces.get(namespace)
        if spot is None:
            spot = self._namespaces[namespace] = _Tally(self.window)
            while len(self._namespaces) > self.max_namespaces:
                self._namespaces.popitem(last=False)
        else:
            self._namespaces.move_to_end(namespace)
        spot.add(wrong)

    def estimate(self, *, namespace: str | None = None, category: str | None = None) -> FalseHitEstimate:
        """Overall when neither key is given; an unseen key has no samples."""
        if namespace is not None and category is not None:
            raise ValueError("name a namespace or a category, not both")
        if namespace is not None:
            tally = self._namespaces.get(namespace)
        elif category is not None:
            tally = self._categories.get(category)
        else:
            tally = self._overall
        return (tally or _Tally(1)).estimate(self.z)

    def categories(self) -> list[str]:
        return sorted(self._categories)

    def snapshot(self, top_namespaces: int = 20) -> dict[str, Any]:
        """Figures for `cascache stats`: overall, every category, the most-sampled namespaces."""
        busiest = sorted(self._namespaces.items(), key=lambda item: -len(item[1].outcomes))[:top_namespaces]
        return {
            "window": self.window,
            "confidence_z": self.z,
            "overall": self._overall.estimate(self.z).to_dict(),
            "by_category": {name: tally.estimate(self.z).to_dict() for name, tally in sorted(self._categories.items())},
            "by_namespace": {name: tally.estimate(self.z).to_dict() for name, tally in busiest},
        }

    def register(self, registry: CollectorRegistry,
                 verifier_counts: Callable[[], Mapping[tuple[str, str], int]] | None = None) -> None:
        """Export the figures on `registry` (read at scrape time; see `_Collector`)."""
        registry.register(_Collector(self, verifier_counts))


class _Collector:
    """Prometheus collector, computed at scrape time from the monitor (no per-request cost).

    cascache_false_hit_rate{category}            window estimate (category "_all": overall)
    cascache_false_hit_rate_low/_high{category}  Wilson interval bounds
    cascache_false_hit_samples_total{category,result}  lifetime verified hits, result correct|wrong
    cascache_verifications_total{kind,result}    verifier outcomes (when a verifier is attached)
    """

    def __init__(self, monitor: FalseHitMonitor,
                 verifier_counts: Callable[[], Mapping[tuple[str, str], int]] | None) -> None:
        self._monitor = monitor
        self._verifier_counts = verifier_counts

    def collect(self) -> Iterator[Metric]:
        rate = GaugeMetricFamily("cascache_false_hit_rate", "Estimated false-hit rate of served semantic hits "
                                 "(verified sample, last window)", labels=["category"])
        low = GaugeMetricFamily("cascache_false_hit_rate_low", "Lower Wilson bound of the false-hit rate",
                                labels=["category"])
        high = GaugeMetricFamily("cascache_false_hit_rate_high", "Upper Wilson bound of the false-hit rate",
                                 labels=["category"])
        samples = CounterMetricFamily("cascache_false_hit_samples", "Verified semantic hits by judged outcome",
                                      labels=["category", "result"])
        keyed = [(ALL, self._monitor.estimate())]
        keyed += [(name, self._monitor.estimate(category=name)) for name in self._monitor.categories()]
        for name, estimate in keyed:
            if estimate.rate is not None:
                rate.add_metric([name], estimate.rate)
                low.add_metric([name], estimate.low)
                high.add_metric([name], estimate.high)
            samples.add_metric([name, "correct"], estimate.lifetime_samples - estimate.lifetime_wrong)
            samples.add_metric([name, "wrong"], estimate.lifetime_wrong)
        yield from (rate, low, high, samples)
        if self._verifier_counts is not None:
            outcomes = CounterMetricFamily("cascache_verifications", "Off-path verifications by kind and outcome",
                                           labels=["kind", "result"])
            for (kind, result), count in sorted(self._verifier_counts().items()):
                outcomes.add_metric([kind, result], count)
            yield outcomes


class _HasSummary(Protocol):
    def summary(self) -> dict[str, Any]: ...


def verification_stats(monitor: FalseHitMonitor, verifier: _HasSummary | None = None,
                       acceptance: _HasSummary | None = None, top_namespaces: int = 20) -> dict[str, Any]:
    """Everything `cascache stats` shows about verification, as one JSON-ready dict."""
    out: dict[str, Any] = {"false_hits": monitor.snapshot(top_namespaces)}
    if verifier is not None:
        out["verifier"] = verifier.summary()
    if acceptance is not None:
        out["verified_mode"] = acceptance.summary()
    return out
