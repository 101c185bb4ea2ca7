"""Statistics of a sweep: mean ± std over seeds, and the paired difference to a baseline arm.

Members of two arms with the same seed share the initialisation and the data order, so the fair
comparison is paired by seed. The verdict on a paired difference d_s = arm_s - baseline_s over
the n seeds both arms have is::

    none    if |mean(d)| <= t_{(1+c)/2, n-1} * std(d) / sqrt(n)   (the c-level t-interval holds 0)
    higher  / lower otherwise;  n/a with fewer than two pairs (no spread to compare with)

with c = 0.95 by default. "higher"/"lower" say nothing about better: for deletion AUC, Average
Drop or flip rates lower is better. The Student-t quantile is computed here for integer degrees
of freedom (Abramowitz & Stegun 26.7.3-4), so the core package needs no SciPy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass


def t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (integer >= 1) degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df == 1:
        return 2 * theta / math.pi
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + (2*4)/(3*5) cos^4 + ...))
        term = total = c
        for k in range(1, (df - 3) // 2 + 1):
            term *= c * c * (2 * k) / (2 * k + 1)
            total += term
        return min(1.0, 2 / math.pi * (theta + s * total))
    term = total = 1.0  # even: sin (1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ...)
    for k in range(1, (df - 2) // 2 + 1):
        term *= c * c * (2 * k - 1) / (2 * k)
        total += term
    return min(1.0, s * total)


def t_quantile(confidence: float, df: int) -> float:
    """The half-width factor of a two-sided ``confidence`` t-interval (0.95, df 2 -> 4.303)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = 0.0, math.pi / 2  # bisection on theta = atan(t / sqrt(df)), where the cdf is smooth
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_cdf(math.sqrt(df) * math.tan(mid), df) < confidence:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


@dataclass(frozen=True)
class Summary:
    """An arm's values of one metric over its seeds."""

    values: dict[int, float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values()) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); NaN below two seeds."""
        return statistics.stdev(self.values.values()) if self.n > 1 else math.nan


@dataclass(frozen=True)
class Paired:
    """The paired difference arm - baseline over the seeds both have, and its verdict."""

    diffs: dict[int, float]
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs.values()) if self.diffs else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.diffs.values()) if self.n > 1 else math.nan

    @property
    def half_width(self) -> float:
        """Half-width of the ``confidence`` t-interval of the mean difference (NaN below two pairs)."""
        return t_quantile(self.confidence, self.n - 1) * self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "n/a"
        if abs(self.mean) <= self.half_width:
            return "none"
        return "higher" if self.mean > 0 else "lower"


def summarize(values: Mapping[int, float]) -> Summary:
    """Finite values only: a metric a member could not compute (NaN) leaves that seed out."""
    return Summary({s: float(v) for s, v in values.items() if v is not None and math.isfinite(v)})


def paired(arm: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95) -> Paired:
    """Differences arm - baseline on the seeds where both are finite."""
    if not 0 < confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), got {confidence}")
    a, b = summarize(arm).values, summarize(baseline).values
    return Paired({s: a[s] - b[s] for s in sorted(a) if s in b}, confidence)
