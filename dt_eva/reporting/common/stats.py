"""Summary statistics of the reports and the demo: mean ± standard error, and the Wilson interval of a
success rate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class MeanSE:
    """Mean of `n` values and its standard error (`None` when `n == 1`: no spread to estimate)."""

    mean: float
    se: float | None
    n: int

    def format(self, digits: int = 2) -> str:
        """`"0.87 ± 0.03"`, or `"0.87"` when there is a single value."""
        if self.se is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.se:.{digits}f}"


def mean_se(values: Iterable[float]) -> MeanSE:
    """Mean and standard error `std(ddof=1) / sqrt(n)` of `values` (the paper's "± standard error").

    One value gives `se=None` (the sample standard deviation is undefined for n = 1).
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_se needs at least one value")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return MeanSE(mean, None, 1)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return MeanSE(mean, math.sqrt(var) / math.sqrt(n), n)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a success rate `successes / n`. Unlike p ± z·SE it stays inside
    [0, 1] and is not empty at 0/n or n/n, which a few dozen episodes often give."""
    if n < 1:
        raise ValueError(f"an interval needs at least one episode, got n={n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)
