"""Atomic file writes (stdlib only): a temp file in the same folder, renamed over the target once complete, so a
crash or a kill never leaves a half-written file behind. Stage markers of the staged commands (quickstart, study)."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    """One JSON object per line, written atomically."""
    return atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_stage_marker(path: str | os.PathLike, seconds: float) -> Path:
    """A finished stage's marker: its seconds and the peak RSS (MiB) of the stages this process has run so far."""
    return atomic_write_text(path, json.dumps({"seconds": seconds, "peak_rss_mb": _children_peak_mb()}))


def peak_rss_of_stages(stages: str | os.PathLike) -> float:
    """Peak RSS (MiB) of any stage under ``stages``, whichever invocation ran it (a resumed run reports the stages
    an earlier, interrupted run finished too)."""
    peaks = [json.loads(p.read_text()).get("peak_rss_mb", 0.0) for p in Path(stages).glob("*.done")]
    return max([_children_peak_mb(), *peaks])


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
