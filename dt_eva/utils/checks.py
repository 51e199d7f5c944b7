"""Range checks for config numbers: finite, inside an interval, and integral where a count or seed.

`value > 0` lets `inf` through and is False for NaN, so a bare comparison is no validation: a NaN
learning rate or an infinite scale makes every loss non-finite only after the run folder exists.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """`value` as a float when it is a finite real number in the interval (`low`..`high`, either end
    open or absent); else `ValueError("<key> must be a finite number <range>, got <value>")`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{key} must be a finite number {_interval(low, high, low_open, high_open)}, "
                         f"got {value!r}{hint}")
    return float(value)


def check_seed(key: str, value: Any) -> int:
    """A seed: an integer in [0, 2**32) (NumPy's seed range; torch and Python accept it too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 2**32:
        raise ValueError(f"{key} must be an integer in [0, 2**32), got {value!r}")
    return int(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""
