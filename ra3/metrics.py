"""torchmetrics metrics shared by the phases (DDP-synced by torchmetrics' reductions)."""

from __future__ import annotations

import re

import torch
from torchmetrics import Metric

from ra3.stats import pass_at_k  # noqa: F401  (re-exported: the estimator lives in the Lightning-free leaf)


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
