"""Upper confidence bounds of a false-hit rate: known values, edge cases, ordering."""

from __future__ import annotations

import math

import pytest

from cascache.quality.stats import binomial_cdf, clopper_pearson_upper, upper_bound, wilson_upper


def test_clopper_pearson_matches_closed_forms() -> None:
    # k = 0: P(X = 0) = (1 - p)^n = alpha  ->  p = 1 - alpha^(1/n)
    assert clopper_pearson_upper(0, 10, 0.95) == pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-9)
    assert clopper_pearson_upper(0, 300, 0.95) == pytest.approx(1 - 0.05 ** (1 / 300), abs=1e-9)
    # k = n - 1 (n = 2): P(X <= 1) = 1 - p^2 = alpha  ->  p = sqrt(0.95)
    assert clopper_pearson_upper(1, 2, 0.95) == pytest.approx(math.sqrt(0.95), abs=1e-9)
    assert clopper_pearson_upper(5, 5) == 1.0


def test_wilson_matches_a_hand_computed_value() -> None:
    # k = 2, n = 100, one-sided 95% (z = 1.6449): centre 0.02 + z^2/200, spread z*sqrt(p q / n + z^2 / 4n^2)
    z = 1.6448536269514722
    p, n = 0.02, 100
    expected = (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert wilson_upper(2, 100) == pytest.approx(expected, rel=1e-12)


def test_bounds_sit_above_the_estimate_and_shrink_with_more_data() -> None:
    for method in ("wilson", "clopper-pearson"):
        small, large = upper_bound(1, 100, method=method), upper_bound(10, 1000, method=method)  # type: ignore[arg-type]
        assert 0.01 < large < small
        assert upper_bound(0, 0, method=method) == 1.0  # type: ignore[arg-type]
    assert clopper_pearson_upper(3, 200) >= wilson_upper(3, 200)  # exact is the conservative one here


def test_binomial_cdf_sums_to_one_and_rejects_bad_counts() -> None:
    assert binomial_cdf(20, 20, 0.3) == pytest.approx(1.0)
    assert binomial_cdf(0, 3, 0.5) == pytest.approx(0.125)
    with pytest.raises(ValueError):
        wilson_upper(5, 3)
    with pytest.raises(ValueError):
        upper_bound(1, 3, method="bayes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wilson_upper(1, 3, confidence=1.5)
