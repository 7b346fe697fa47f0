"""torchmetrics metrics shared by the phases (DDP-synced by torchmetrics' reductions)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


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
