"""torchmetrics metrics shared by the phases (DDP-synced by torchmetrics' reductions)."""

from __future__ import annotations

import re

import torch
from torchmetrics import Metric

from ra3.evaluation.passk import pass_at_k  # noqa: F401  (re-exported: the estimator lives in the Lightning-free leaf)


class TokenPerplexity(Metric):
    """exp(summed token NLL / token count), accumulated over batches and processes."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, count: torch.Tensor) -> None:
        self.nll += nll_sum.detach().double()
        self.count += count.detach().long()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll / self.count.clamp(min=1)).float()


class PassAtK(Metric):
    """Mean pass@k over problems. ``update(n_samples, n_correct)`` takes per-problem counts (1-D tensors
    or lists); states are summed across processes, so each process may score different problems."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int | list[int] = 1, **kwargs):
        super().__init__(**kwargs)
        self.ks = [k] if isinstance(k, int) else list(k)
        self.add_state("totals", default=torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, n_samples, n_correct) -> None:
        ns = torch.as_tensor(n_samples).flatten().tolist()
        cs = torch.as_tensor(n_correct).flatten().tolist()
        for j, k in enumerate(self.ks):
            for n, c in zip(ns, cs):
                if n >= k:  # problems with fewer than k samples have no pass@k
                    self.totals[j] += pass_at_k(int(n), int(c), k)
                    self.counts[j] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        return {f"pass@{k}": (self.totals[j] / self.counts[j].clamp(min=1)).float() for j, k in enumerate(self.ks)}


def boundary_scores(predicted: list[set[int]], truth: list[set[int]]) -> tuple[float, float, float]:
    """Micro precision, recall and F1 of predicted thought positions (line indices) against the true
    block starts, summed over programs."""
    tp = sum(len(p & t) for p, t in zip(predicted, truth))
    n_pred, n_true = sum(map(len, predicted)), sum(map(len, truth))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower())]


def names_skill(thoughts: list[list[tuple]], truth: list[list[int]], labels: list[list[str]]) -> float:
    """Share of thoughts placed at a true block start whose words (digits ignored) equal that block's
    label's words — i.e. the thought names the right skill."""
    hits = total = 0
    for row_thoughts, starts, row_labels in zip(thoughts, truth, labels):
        label_at = dict(zip(starts, row_labels))
        for line, text, *_ in row_thoughts:
            if line in label_at:
                total += 1
                hits += _words(text) == _words(label_at[line])
    return hits / total if total else 0.0


THOUGHT_CATEGORIES = ("routine", "plain_step", "numbered_step")


def thought_category(intent: str, macro: str | None) -> str:
    """A ground-truth thought's kind: names a ``routine`` (a macro of several skills), a ``plain_step`` (one skill,
    no number) or a ``numbered_step`` (one skill with its number, e.g. "add 7 to each value")."""
    if macro:
        return "routine"
    return "numbered_step" if re.search(r"\d", intent) else "plain_step"


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def true_thought_lines(row: dict) -> list[int]:
    """The code-line indices (lines after the prompt) where a row's ground-truth thoughts go: its ``boundaries``
    count lines of the whole program."""
    n_ctx = row["prompt"].count("\n") + 1
    return [b - n_ctx for b in row["boundaries"]]


def thought_accuracy(rows: list[dict]) -> dict:
    """Exact-thought rates of annotated rows against their ground truth (``boundaries``, ``intents``, ``macros``;
    rows without them are skipped). A true thought is *exact* when a thought sits at its line with its text
    (case and spacing aside), *misplaced* when none sits there. Returns ``{"exact", "n", "by_category": {cat:
    {n, exact, missing, wrong_number}}, "by_position": {k: {n, exact}}, "spurious"}`` (rates are fractions of the
    true thoughts; ``wrong_number``: right words, other number; ``spurious``: thoughts at no true boundary, per
    annotated row)."""
    cats = {c: {"n": 0, "exact": 0, "missing": 0, "wrong_number": 0} for c in THOUGHT_CATEGORIES}
    pos: dict[int, dict[str, int]] = {}
    spurious = rows_seen = 0
    for r in rows:
        if r.get("boundaries") is None or not r.get("intents") or "prompt" not in r:
            continue
        rows_seen += 1
        starts = true_thought_lines(r)
        placed = {t["line"]: t["text"] for t in r.get("thoughts", [])}
        macros = r.get("macros") or [""] * len(starts)
        spurious += len(set(placed) - set(starts))
        for k, (line, intent, macro) in enumerate(zip(starts, r["intents"], macros)):
            c, p = cats[thought_category(intent, macro)], pos.setdefault(k, {"n": 0, "exact": 0})
            c["n"] += 1
            p["n"] += 1
            got = placed.get(line)
            if got is None:
                c["missing"] += 1
            elif _norm(got) == _norm(intent):
                c["exact"] += 1
                p["exact"] += 1
            elif _words(got) == _words(intent):
                c["wrong_number"] += 1
    n = sum(c["n"] for c in cats.values())

    def rates(d: dict[str, int]) -> dict[str, float]:
        return {"n": d["n"], **{k: v / d["n"] for k, v in d.items() if k != "n"}} if d["n"] else {"n": 0}

    return {"n": n, "exact": sum(c["exact"] for c in cats.values()) / n if n else 0.0,
            "by_category": {k: rates(v) for k, v in cats.items()}, "by_position": {k: rates(v) for k, v in sorted(pos.items())},
            "spurious_per_row": spurious / rows_seen if rows_seen else 0.0}
