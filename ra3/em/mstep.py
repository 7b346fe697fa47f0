"""MStepModule: next-token prediction (SFT) on code, raw (the NTP baseline) or annotated with thoughts.

Which tokens carry loss is the data's choice (``CodeDataModule.loss_mode``: all tokens, code only —
thought comments masked — or completion only), so this module reads ``labels`` as given.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ra3.evaluation.metrics import TokenPerplexity
from ra3.policy.module import PolicyModule


class MStepModule(PolicyModule):
    """The M-step (and NTP): token-mean cross-entropy on ``labels`` (-100 = no loss). Logs ``mstep/loss``, ``mstep/tokens_per_s``
    (tokens in the batch, padding excluded, per wall-clock second between steps), ``mstep/lr`` and
    ``val/loss``/``val/perplexity``."""

    log_prefix = "mstep"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_perplexity = TokenPerplexity()
        self._last_step_time: float | None = None

    def token_nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token NLL over positions whose label is not -100, and their count.

        ``batch``: ``input_ids``/``labels`` (B, T) plus ``position_ids`` and ``doc_ids`` (packed) or
        ``attention_mask`` (padded).
        """
        labels = batch["labels"][:, 1:]
        keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
        keep[:, :-1] = labels != -100
        logits = self.forward_logits(self.model, batch["input_ids"], keep, batch.get("attention_mask"),
                                     batch.get("position_ids"), batch.get("doc_ids"))
        nll = F.cross_entropy(logits, labels[keep[:, :-1]], reduction="sum")
        return nll, keep.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, count = self.token_nll(batch)
        loss = self.global_token_mean(nll, count)
        p = self.log_prefix
        self.log(f"{p}/loss", loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self.log(f"{p}/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        now = time.perf_counter()
        if self._last_step_time is not None:
            tokens = batch["tokens"] if "tokens" in batch else batch["input_ids"].numel()
            self.log(f"{p}/tokens_per_s", float(tokens) / (now - self._last_step_time), prog_bar=True)
        self._last_step_time = now
        return loss

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, count = self.token_nll(batch)
        self.val_perplexity.update(nll, count)

    def on_validation_epoch_end(self) -> None:
        perplexity = self.val_perplexity.compute()  # synced across processes by torchmetrics
        self.log("val/perplexity", perplexity)
        self.log("val/loss", perplexity.log(), prog_bar=True)
        self.val_perplexity.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, count = self.token_nll(batch)
        self.log("test/loss", nll / count.clamp(min=1), sync_dist=True)
