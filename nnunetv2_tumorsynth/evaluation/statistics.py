"""Paired comparison of a prediction folder with a baseline, case by case (Quinton et al. 2026, section 2.8).

For each metric the per-case values of both folders are paired by case; pairs where either value is undefined
(NaN) are left out and counted. Both tests are one-tailed with the alternative "the prediction is better than
the baseline": larger for Dice, NSD, precision and recall, smaller for HD and HD95. The paired t-test is the
paper's test (``scipy.stats.ttest_rel``); the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) does not
assume normally distributed differences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def paired_tests(prediction: Sequence[float], baseline: Sequence[float], higher_is_better: bool = True) -> dict:
    """One-tailed paired t-test and Wilcoxon signed-rank test of ``prediction`` against ``baseline``.

    Both sequences hold one value per case in the same case order (NaN: undefined). Returns ``n_pairs``,
    ``n_excluded`` (pairs with an undefined value), ``mean_difference`` and ``std_difference`` (prediction minus
    baseline, sample std), ``alternative`` ("greater" or "less"), ``t_statistic``, ``t_p_value``,
    ``wilcoxon_statistic`` and ``wilcoxon_p_value``. A value that cannot be computed (fewer than two pairs, all
    differences zero) is None, never NaN.
    """
    a = np.asarray(prediction, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired tests need one value per case in both folders, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    differences = a - b
    alternative = "greater" if higher_is_better else "less"
    result = {"n_pairs": int(a.size), "n_excluded": int((~keep).sum()), "alternative": alternative,
              "mean_difference": _finite_or_none(differences.mean()) if a.size else None,
              "std_difference": _finite_or_none(differences.std(ddof=1)) if a.size > 1 else None,
              "t_statistic": None, "t_p_value": None, "wilcoxon_statistic": None, "wilcoxon_p_value": None}
    if a.size < 2 or not np.any(differences != 0):
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_rel(a, b, alternative=alternative)
        result["t_statistic"], result["t_p_value"] = _finite_or_none(t.statistic), _finite_or_none(t.pvalue)
        try:
            w = stats.wilcoxon(a, b, alternative=alternative)
            result["wilcoxon_statistic"] = _finite_or_none(w.statistic)
            result["wilcoxon_p_value"] = _finite_or_none(w.pvalue)
        except ValueError:  # e.g. too few non-zero differences for the chosen method
            pass
    return result
