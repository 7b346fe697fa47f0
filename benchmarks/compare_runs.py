"""Are two runs' outputs the same? The check behind "behaviour unchanged" for a refactor.

    python benchmarks/compare_runs.py BEFORE AFTER

Run the same command (e.g. ``ra3 study --preset test --out X``) before and after a change, into the same path (paths
are written into configs), moving the first run's folder aside. Every file is compared byte for byte, except what a
re-run cannot reproduce and is compared by content instead:

- logs, stage markers and W&B folders: skipped (wall-clock times, run ids);
- ``*.ckpt``: every tensor (weights, optimizer state) and every other value, except RNG states and times; two
  class paths are equal when they import the same class;
- ``*.json``: equal after dropping keys that hold times, memory or RNG states (``*_s``, ``stage_seconds``,
  ``peak_rss_mb``, ``*rng*``); NaN equals NaN;
- ``report.md``: equal except its wall-clock / memory line;
- ``*.yaml``: equal except ``class_path`` lines (a class that moved but is the same class).

Prints one line per difference and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import sys
from pathlib import Path

SKIP_PARTS = ("logs", "stages", "wandb")
VOLATILE = ("stage_seconds", "peak_rss_mb", "wall_s")


def volatile(key) -> bool:
    return isinstance(key, str) and (key in VOLATILE or key.endswith("_s") or "rng" in key)


def same_class(x: str, y: str) -> bool:
    import importlib

    def load(path):
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    try:
        return load(x) is load(y)
    except (ImportError, AttributeError, ValueError):
        return False


def differences(x, y, path: str = "") -> list[str]:
    """Where two loaded values differ (tensors by value; NaN equal to NaN; volatile keys skipped)."""
    import torch

    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        same = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
        return [] if same else [path or "tensor"]
    if isinstance(x, dict) and isinstance(y, dict):
        keys = [k for k in {**x, **y} if not volatile(k)]
        missing = [k for k in keys if k not in x or k not in y]
        if missing:
            return [f"{path}: keys {missing[:5]} on one side only"]
        return [d for k in keys for d in differences(x[k], y[k], f"{path}/{k}")]
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return [f"{path}: {len(x)} vs {len(y)} items"]
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in differences(u, v, f"{path}[{i}]")]
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return []
    if path.endswith("class_path") and isinstance(x, str) and isinstance(y, str) and same_class(x, y):
        return []
    return [] if x == y else [f"{path}: {str(x)[:60]} != {str(y)[:60]}"]


def _lines(path: Path, drop: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if drop not in line]


def compare(before: Path, after: Path) -> list[str]:
    """One line per difference between the two folders."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not set(p.relative_to(root).parts) & set(SKIP_PARTS)}

    a, b = files(before), files(after)
    out = [f"only in {before}: {f}" for f in sorted(a - b)] + [f"only in {after}: {f}" for f in sorted(b - a)]
    for name in sorted(a & b):
        x, y = before / name, after / name
        if filecmp.cmp(x, y, shallow=False):
            continue
        if name.endswith(".ckpt"):
            import torch

            found = differences(torch.load(x, map_location="cpu", weights_only=False),
                                torch.load(y, map_location="cpu", weights_only=False))
        elif name.endswith(".json"):
            found = differences(json.loads(x.read_text()), json.loads(y.read_text()))
        elif name.endswith("report.md"):
            found = [] if _lines(x, "Wall-clock") == _lines(y, "Wall-clock") else ["text"]
        elif name.endswith(".yaml"):
            found = [] if _lines(x, "class_path:") == _lines(y, "class_path:") else ["text"]
        else:
            found = ["bytes"]
        out += [f"{name}: {d}" for d in found[:5]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    a = p.parse_args(argv)
    found = compare(a.before, a.after)
    print("\n".join(found) if found else f"same: {a.before} and {a.after} (models, corpora, samples, verdicts)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
