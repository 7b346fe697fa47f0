"""Paired comparisons over pre-training seeds (bases): t intervals, a bootstrap over bases and tasks, RL curve
summaries. Standard library only (no Lightning, no numpy), so a reader can check every number by hand.

A study measures each arm on the *same* bases and the *same* evaluation tasks, so arms are compared by their
per-base differences (paired), which removes the base-to-base spread that an unpaired comparison would carry.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Mapping, Sequence

# two-sided 95 % quantiles of Student's t, df = 1 .. 30
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (table to 30, then 1.96 + 2.4/df)."""
    if df < 1:
        raise ValueError(f"need df >= 1, got {df}")
    return _T975[df - 1] if df <= 30 else 1.96 + 2.4 / df


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean with its 95 % t interval over ``values`` (one per base); ``half`` is the half-width (nan for n < 2)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = statistics.fmean(values)
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "lo": m - half, "hi": m + half, "half": half, "n": n}


def paired_difference(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """``a - b`` over the bases both have: mean and 95 % t interval of the per-base differences."""
    keys = sorted(set(a) & set(b))
    return mean_ci([a[k] - b[k] for k in keys]) | {"bases": keys}


def bootstrap_difference(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]],
                         n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Two-level bootstrap of ``mean(a) - mean(b)``: resample bases, then tasks within each drawn base (the same
    tasks for both arms: paired). ``a[base][task]`` = that arm's pass rate on the task. Percentile 95 % interval."""
    bases = sorted(set(a) & set(b))
    tasks = {k: sorted(set(a[k]) & set(b[k])) for k in bases}
    diff = {k: [a[k][t] - b[k][t] for t in tasks[k]] for k in bases}
    point = statistics.fmean(statistics.fmean(diff[k]) for k in bases)
    rng = random.Random(seed)
    draws = []
    for _ in range(n_boot):
        means = []
        for k in rng.choices(bases, k=len(bases)):
            d = diff[k]
            means.append(sum(d[rng.randrange(len(d))] for _ in d) / len(d))
        draws.append(statistics.fmean(means))
    draws.sort()
    return {"mean": point, "lo": draws[int(0.025 * n_boot)], "hi": draws[int(0.975 * n_boot) - 1], "n": len(bases)}


def curve_auc(curve: Sequence[tuple[int, float]]) -> float:
    """Mean reward over a curve's steps (its area per step)."""
    return statistics.fmean(v for _, v in curve)


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float, window: int) -> int | None:
    """Steps (1-based count) until the trailing ``window``-step mean, over a full window, first reaches ``target``."""
    smoothed = trailing_mean([v for _, v in curve], window)
    return next((i + 1 for i, v in enumerate(smoothed) if i + 1 >= window and v >= target), None)
