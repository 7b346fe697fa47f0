"""``EMCallback``: what rides along in every phase's Trainer of ``run_em`` (``ra3.em.loop``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L


class EMCallback(L.Callback):
    """Stores the EM state in every Lightning checkpoint a phase writes (``checkpoint["em_state"]``), logs the round
    at each phase's start, and appends the E-step's per-step metrics to ``<out>/estep_steps.jsonl`` (for plots across
    rounds).

    Args:
        state: the loop's ``EMState`` (the same object the loop advances).
        out: the EM run's folder (``None``: no ``estep_steps.jsonl``).
    """

    KEYS = ("reward_mean", "thought_rate", "boundary_f1", "expert_nll_with_thoughts", "expert_nll_without_thoughts")

    def __init__(self, state: Any, out: str | Path | None = None):
        self.state, self.out = state, Path(out) if out is not None else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["em_state"] = asdict(self.state)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.logger is not None:
            trainer.logger.log_metrics({"em/round": self.state.round}, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        if self.out is None or "estep/reward_mean" not in m or not trainer.is_global_zero:
            return
        row = {"round": self.state.round, "step": trainer.global_step,
               **{k: float(m[f"estep/{k}"]) for k in self.KEYS if f"estep/{k}" in m}}
        with open(self.out / "estep_steps.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
