import lightning as L
import torch

from ra3.datamodules import CodeDataModule
from ra3.modules import MStepModule

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
    trainer.fit(module, data)
    m = trainer.callback_metrics
    assert m["mstep/tokens_per_s"] > 0
    assert torch.isclose(m["val/perplexity"].log(), m["val/loss"], rtol=1e-4)
    assert 1.0 < float(m["val/perplexity"]) < len(module.tokenizer) * 2
