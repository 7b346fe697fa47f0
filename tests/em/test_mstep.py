import lightning as L
import pytest
import torch

from ra3.data import CodeDataModule
from ra3.em import MStepModule

from conftest import TINY_LLAMA


class _LossHistory(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_mstep_loss_decreases_on_a_fixed_batch(world_dir, tmp_path):
    module = MStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, learning_rate=1e-2, min_lr_ratio=1.0,
                         export_dir=str(tmp_path / "export"))
    data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], max_length=256, batch_size=2, val_fraction=0.05)
    history = _LossHistory()
    trainer = L.Trainer(accelerator="cpu", max_steps=30, overfit_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[history], num_sanity_val_steps=0)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer.fit(module, data)
    assert len(history.losses) == 30
    assert history.losses[-1] < 0.6 * history.losses[0]
    assert (tmp_path / "export" / "config.json").exists()


def test_mstep_logs_throughput_and_validation_perplexity(world_dir):
    module = MStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA)
    data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], max_length=256, batch_size=4,
                          val_fraction=0.1, loss_mode="completion_only")
    trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer.fit(module, data)
    m = trainer.callback_metrics
    assert m["mstep/tokens_per_s"] > 0
    assert torch.isclose(m["val/perplexity"].log(), m["val/loss"], rtol=1e-4)
    assert 1.0 < float(m["val/perplexity"]) < len(module.tokenizer) * 2


def test_one_lr_schedule_across_em_rounds():
    """``schedule_offset``/``schedule_steps``: a later round's M-step starts where the previous ended (no re-warm)."""
    import math

    from ra3.policy.module import lr_factor

    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)  # warm-up 1/10
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    # round 1 of 2 (75 M-step steps each): its first step is step 75 of one 150-step schedule, not a warm-up step
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (75 - 10) / (150 - 10)))
    assert lr_factor(75, 10, 150, 0.1) == pytest.approx(expected)
    assert 0.55 < expected < 0.65  # not the warm-up value 0.1, not a restart


def test_a_later_em_round_starts_its_m_step_where_the_schedule_left_off(world_dir):
    """With ``schedule_offset`` 6 of ``schedule_steps`` 8 (what ``ra3 em`` sets for round 1 of 2 with 4-step M-steps),
    the learning rate at the phase's first step is the rule's value at step 6, not a warm-up value."""
    from ra3.policy.module import lr_factor

    class _LR(L.Callback):
        lrs = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = MStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, learning_rate=1e-3, warmup_steps=2,
                         schedule_offset=6, schedule_steps=8)
    data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], max_length=128, batch_size=2, val_fraction=0.05)
    lr = _LR()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[lr], num_sanity_val_steps=0, limit_val_batches=0)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer.fit(module, data)
    assert lr.lrs == pytest.approx([1e-3 * lr_factor(6, 2, 8, 0.1), 1e-3 * lr_factor(7, 2, 8, 0.1)])
    assert lr.lrs[0] < 0.5e-3  # a restart would be warm-up step 0: 1e-3 / 2
