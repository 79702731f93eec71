"""Statistics between methods compared on the same scans."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class WilcoxonResult:
    """A two-sided Wilcoxon signed-rank test of paired scores ``a`` vs ``b``."""

    statistic: float
    p_value: float
    n_pairs: int
    median_difference: float  # median of a - b
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test on paired values (e.g. Dice of two models per scan).

    Pairs with a difference of exactly zero are dropped (scipy's ``zero_method="wilcox"``); when
    every pair is tied the test cannot tell the methods apart and the p-value is 1.0.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"the two methods need the same number of paired scores; got {x.shape} and {y.shape}"
        )
    if x.size == 0:
        raise ValueError("the Wilcoxon test needs at least one pair of scores")
    differences = x - y
    median = float(np.median(differences))
    if not np.any(differences != 0):
        return WilcoxonResult(math.nan, 1.0, int(x.size), median, alpha)
    result = stats.wilcoxon(x, y, alternative="two-sided", zero_method="wilcox")
    return WilcoxonResult(float(result.statistic), float(result.pvalue), int(x.size), median, alpha)
