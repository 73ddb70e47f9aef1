"""How far an accuracy measured on n validation images can be trusted: the Wilson interval.

Accuracy on a fixed validation set is a binomial proportion: k of n images right. The 95%
Wilson score interval (Wilson 1927) is used rather than the normal approximation
``p +- 1.96 sqrt(p(1-p)/n)`` because it stays inside [0, 1] and keeps its coverage near 0
and 1, where searched accuracies often sit. It measures only the sampling error of the
validation set, not the seed-to-seed spread of training: ``search.confirm`` measures that.
"""
from __future__ import annotations

import math
from typing import Tuple

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> Tuple[float, float]:
    """(low, high) of the Wilson interval for ``accuracy`` (a fraction) measured on ``n`` images.

    NaN in, (NaN, NaN) out, so unmeasured trials stay unmeasured.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be the number of validation images (an integer >= 1), got {n!r}")
    if not isinstance(accuracy, (int, float)) or math.isnan(accuracy):
        return float("nan"), float("nan")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    z2 = z * z
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n))
    low = 0.0 if accuracy == 0.0 else max(0.0, centre - half)
    high = 1.0 if accuracy == 1.0 else min(1.0, centre + half)
    return low, high


def mean_interval(values) -> Tuple[float, float, float]:
    """(mean, low, high) of accuracies over seeds: mean +- t_{0.975, k-1} x standard error.

    One value gives (value, NaN, NaN): a single seed says nothing about the spread.
    """
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    k = len(values)
    mean = sum(values) / k
    if k == 1:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    # Student's t 97.5% quantiles for 1..10 degrees of freedom; beyond, 2.0 is close enough.
    t = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)[k - 2] if k <= 11 else 2.0
    half = t * sd / math.sqrt(k)
    return mean, mean - half, mean + half
