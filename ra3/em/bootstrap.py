"""Bootstrapping: annotate the mid-training corpus with the E-step policy's thoughts -> an M-step shard.

This file holds the parts, resume and file IO; the annotation itself is ``EStepModule.annotate``: each program gets
G latent rollouts; the kept annotation is the best by E-step reward (``best``), the best among
those with the fewest malformed thoughts (``best_well_formed``: a format rule such as
``ThoughtFormat(grounded_numbers=True)`` then acts as a constraint, not as a small penalty), or the first sample
(``sample``, an unbiased draw). Work is cut into parts of ``part_size`` programs, each
written atomically (temp file + rename) with its own seed, so an interrupted bootstrap resumes at the
first missing part and produces exactly the rows an uninterrupted run would. Only when every part
exists is ``bootstrapped.jsonl`` assembled (atomically) with ``stats.json`` beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ra3.data.io import atomic_write_text, write_jsonl
from ra3.em.estep import MODES
from ra3.evaluation.metrics import boundary_scores, names_skill, thought_accuracy, true_thought_lines


def bootstrap(module, rows: list[dict], out_dir: str | os.PathLike, mode: str = "best", group_size: int | None = None,
              batch_size: int = 8, part_size: int = 64, seed: int = 0, progress=None, rank: int = 0,
              world_size: int = 1, min_gain: float | None = None, drop_malformed: bool = False) -> dict[str, Any]:
    """Write ``out_dir/bootstrapped.jsonl`` (+ ``stats.json``) from ``rows``; resumes from finished parts.

    With ``world_size`` > 1 (an initialised process group) rank r annotates parts r, r + W, ...; rank 0
    assembles the shard once all parts exist. A part's rows depend only on its seed, not on W.
    """
    if mode not in MODES:
        raise ValueError(f"bootstrap mode must be one of {', '.join(MODES)}, got {mode!r}")
    out = Path(out_dir)
    final = out / "bootstrapped.jsonl"
    if final.exists() and (out / "stats.json").exists():
        return json.loads((out / "stats.json").read_text())
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    G = group_size or module.hparams.group_size
    n_parts = (len(rows) + part_size - 1) // part_size
    module.eval()
    with torch.no_grad():
        for p in range(rank, n_parts, world_size):
            path = parts_dir / f"part_{p:05d}.jsonl"
            if path.exists():
                if progress:
                    progress(min(part_size, len(rows) - p * part_size))
                continue
            generator = torch.Generator().manual_seed(seed * 1_000_003 + p)
            chunk = rows[p * part_size : (p + 1) * part_size]
            annotated = []
            for i in range(0, len(chunk), batch_size):
                annotated += module.annotate(chunk[i : i + batch_size], G, generator, mode, min_gain, drop_malformed)
                if progress:
                    progress(len(chunk[i : i + batch_size]))
            write_jsonl(path, annotated)
    if world_size > 1:
        torch.distributed.barrier()
        if rank != 0:
            torch.distributed.barrier()  # rank 0 assembles the shard
            return json.loads((out / "stats.json").read_text())
    annotated = [json.loads(line) for p in range(n_parts) for line in open(parts_dir / f"part_{p:05d}.jsonl")]
    stats = shard_stats(annotated)
    write_jsonl(final, annotated)
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1))
    if world_size > 1:
        torch.distributed.barrier()
    return stats


def shard_stats(rows: list[dict]) -> dict[str, Any]:
    """Thought counts and, where rows carry ground truth, boundary precision/recall/F1, skill naming and the
    exact-thought rates by category and position (``ra3.evaluation.metrics.thought_accuracy``)."""
    n_thoughts = sum(len(r["thoughts"]) for r in rows)
    stats: dict[str, Any] = {"rows": len(rows), "thoughts": n_thoughts, "thoughts_per_program": n_thoughts / max(1, len(rows)),
                             "malformed": sum(t["malformed"] for r in rows for t in r["thoughts"]),
                             "kept_plain": sum(bool(r.get("kept_plain")) for r in rows),
                             "dropped_malformed": sum(len(r.get("dropped", [])) for r in rows),
                             "redrawn": sum(r.get("redrawn", 0) for r in rows)}
    with_truth = [r for r in rows if r.get("boundaries") is not None and "prompt" in r]
    if with_truth:
        truth, predicted, labels, thoughts = [], [], [], []
        for r in with_truth:
            starts = true_thought_lines(r)
            truth.append(set(starts))
            predicted.append({t["line"] for t in r["thoughts"]})
            thoughts.append([(t["line"], t["text"]) for t in r["thoughts"]])
            labels.append(r.get("intents") or [s["description"] for s in r.get("skills") or []])
        precision, recall, f1 = boundary_scores(predicted, truth)
        stats.update(boundary_precision=precision, boundary_recall=recall, boundary_f1=f1,
                     thought_names_skill=names_skill(thoughts, [sorted(t) for t in truth], labels))
        if any(r.get("intents") for r in with_truth):
            stats["thought_accuracy"] = thought_accuracy(with_truth)
    return stats
