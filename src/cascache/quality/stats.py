"""Confidence bounds for a rate measured as k events out of n trials. Pure, numpy-free.

A false-hit rate measured on a few hundred hits is noisy: 2 wrong hits in
300 is 0.7%, but the true rate could well be 2%. Every recommendation in
`cascache eval` is therefore made on an upper confidence bound, never on the
point estimate alone.

- Wilson score interval: closed form, good coverage even for small k.
- Clopper-Pearson ("exact"): inverts the binomial CDF, never under-covers,
  more conservative. Computed by bisection on the binomial CDF (log-space
  terms, so n in the hundred thousands is fine), so scipy is not needed.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

__all__ = ["Bound", "binomial_cdf", "clopper_pearson_upper", "upper_bound", "wilson_upper"]

Bound = Literal["wilson", "clopper-pearson"]


def _z(confidence: float) -> float:
    """One-sided normal quantile: the upper bound at `confidence` leaves 1 - confidence above it."""
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def wilson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Wilson score upper bound of a proportion k/n (1.0 when n == 0: nothing is known)."""
    _check(k, n)
    if n == 0:
        return 1.0
    z = _z(confidence)
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    _check(k, n)
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound: the p at which P(X <= k) = 1 - confidence."""
    _check(k, n)
    _z(confidence)  # validates the confidence level
    if n == 0 or k == n:
        return 1.0
    alpha = 1 - confidence
    low, high = k / n, 1.0
    for _ in range(100):  # bisection; the CDF falls monotonically in p
        mid = (low + high) / 2
        if binomial_cdf(k, n, mid) > alpha:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return high


def upper_bound(k: int, n: int, confidence: float = 0.95, method: Bound = "wilson") -> float:
    if method == "wilson":
        return wilson_upper(k, n, confidence)
    if method == "clopper-pearson":
        return clopper_pearson_upper(k, n, confidence)
    raise ValueError(f"unknown bound {method!r}; use 'wilson' or 'clopper-pearson'")


def _check(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
