"""The study's statistics against hand-computed values."""

import math

import pytest

from ra3.experiments.stats import bootstrap_difference, mean_ci, paired_difference, steps_to_reach, t975


def test_paired_t_interval_by_hand():
    # per-base differences 0.10, 0.20, 0.00, 0.30, 0.15: mean 0.15; squared deviations sum to 0.05, sd = sqrt(0.05 / 4)
    a = {"b0": 0.50, "b1": 0.60, "b2": 0.40, "b3": 0.70, "b4": 0.55}
    b = {"b0": 0.40, "b1": 0.40, "b2": 0.40, "b3": 0.40, "b4": 0.40, "b9": 0.99}  # b9 is unpaired: ignored
    d = paired_difference(a, b)
    assert d["n"] == 5 and d["bases"] == ["b0", "b1", "b2", "b3", "b4"]
    half = 2.776 * math.sqrt(0.05 / 4) / math.sqrt(5)  # t(0.975, 4) = 2.776 -> 0.138799
    assert d["mean"] == pytest.approx(0.15)
    assert d["half"] == pytest.approx(half, rel=1e-4) and d["half"] == pytest.approx(0.138799, rel=1e-4)
    assert d["lo"] == pytest.approx(0.15 - half) and d["hi"] == pytest.approx(0.15 + half)


def test_t_quantiles_and_one_value():
    assert t975(1) == 12.706 and t975(4) == 2.776 and t975(30) == 2.042 and 1.96 < t975(100) < 1.99
    c = mean_ci([0.3])
    assert c["mean"] == 0.3 and math.isnan(c["half"])
    with pytest.raises(ValueError):
        mean_ci([])


def test_bootstrap_is_paired_by_task_and_base():
    # arm a beats arm b by exactly 0.25 on every task of every base: every resample gives 0.25
    a = {f"b{i}": {f"t{j}": 0.25 + 0.1 * j for j in range(6)} for i in range(4)}
    b = {f"b{i}": {f"t{j}": 0.1 * j for j in range(6)} for i in range(4)}
    d = bootstrap_difference(a, b, n_boot=200)
    assert d["mean"] == pytest.approx(0.25) and d["lo"] == pytest.approx(0.25) and d["hi"] == pytest.approx(0.25)
    # a noisy difference: the interval contains the point estimate and has width
    a2 = {f"b{i}": {f"t{j}": float((i + j) % 2) for j in range(10)} for i in range(5)}
    b2 = {f"b{i}": {f"t{j}": 0.5 for j in range(10)} for i in range(5)}
    d2 = bootstrap_difference(a2, b2, n_boot=500)
    assert d2["lo"] < d2["mean"] < d2["hi"]


def test_steps_to_reach():
    curve = list(enumerate([0.1, 0.2, 0.4, 0.5, 0.6, 0.7]))
    assert steps_to_reach(curve, 0.45, window=2) == 4  # trailing means 0.1, 0.15, 0.3, 0.45: 4th step
    assert steps_to_reach(curve, 0.9, window=2) is None
