"""Host-side comparison of a program's outputs with the expected ones (EvalPlus semantics)."""

from __future__ import annotations

import math
from typing import Any

# EvalPlus special oracles for MBPP+ (by entry point) and HumanEval(+).
MBPP_OUTPUT_SET_EQ = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                      "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}
MBPP_OUTPUT_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}


def is_floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _poly(xs: list, x: float) -> float:
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _surface_area_oracle(base_edge, height):
    """Mbpp/581: the pyramid's height read as the perpendicular height (EvalPlus accepts either reading)."""
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 2 * base_edge * slant)


def _digit_distance_oracle(a, b):
    """Mbpp/558: the shorter number padded with leading zeros (EvalPlus accepts either reading)."""
    x, y = str(a), str(b)
    width = max(len(x), len(y))
    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(width), y.zfill(width)))


def outputs_match(out: Any, expected: Any, atol: float = 0.0, mode: str = "exact", entry_point: str = "", args: Any = None) -> bool:
    """EvalPlus's rule (0.3.1): exact equality, special oracles per task (MBPP+: are_equivalent, sum_div,
    surface_Area, digit_distance_nums, set-equality and not-None tasks; HumanEval+: find_zero), and for
    float-shaped expected values, when the output has the expected's type (and length), ``np.allclose`` with
    ``atol`` (1e-6 when the task gives 0). ``mode``: ``exact``, ``mbpp`` or ``humaneval``."""
    try:
        exact = bool(out == expected)
    except Exception:
        exact = False
    if mode == "mbpp":
        if entry_point == "are_equivalent":
            return True
        if entry_point == "sum_div":
            exact = exact or out == 0
        elif entry_point == "surface_Area":
            try:
                exact = exact or abs(out - _surface_area_oracle(*args)) <= atol
            except Exception:
                pass
        elif entry_point == "digit_distance_nums":
            try:
                exact = exact or out == _digit_distance_oracle(*args)
            except Exception:
                pass
        elif entry_point in MBPP_OUTPUT_SET_EQ:
            try:
                exact = set(out) == set(expected)
            except TypeError:
                exact = False
        elif entry_point in MBPP_OUTPUT_NOT_NONE:
            exact = out == expected if isinstance(out, bool) else expected == (out is not None)
    if mode == "humaneval" and entry_point == "find_zero":
        try:
            return abs(_poly(*args, out)) <= (atol or 1e-6)
        except Exception:
            return False
    if atol == 0 and is_floats(expected):
        atol = 1e-6
    if not exact and atol != 0:
        import numpy as np

        if type(out) is not type(expected):  # as EvalPlus: a str or list never passes for a float or tuple
            return False
        if isinstance(expected, (list, tuple)) and len(out) != len(expected):
            return False
        try:
            return bool(np.allclose(np.asarray(out, dtype=float), np.asarray(expected, dtype=float), rtol=1e-07, atol=atol)) \
                and np.shape(out) == np.shape(expected)
        except Exception:
            return False
    return exact


def stdout_matches(out: str, expected: str, atol: float = 1e-6) -> bool:
    """Token-wise comparison of printed output: whitespace-normalised, numbers equal within ``atol``."""
    got, want = out.split(), expected.split()
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g == w:
            continue
        try:
            if not math.isclose(float(g), float(w), rel_tol=1e-9, abs_tol=atol):
                return False
        except ValueError:
            return False
    return True
