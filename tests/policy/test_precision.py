"""Every phase under every precision Lightning offers, and bitsandbytes 8-bit optimizers and quantised references,
on CPU and (``-m gpu``) on CUDA."""

import lightning as L
import pytest
import torch

from ra3.data import CodeDataModule
from ra3.errors import Ra3Error
from ra3.em import EStepModule, MStepModule
from ra3.rlvr import RLVRModule


def _phase(name, model_dir, world_dir, **kw):
    if name == "mstep":
        return MStepModule(model=str(model_dir), **kw), CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], max_length=128, batch_size=2)
    if name == "estep":
        return (EStepModule(model=str(model_dir), group_size=2, max_thought_tokens=3, **kw),
                CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], program_batch_size=2))
    return (RLVRModule(init_from=str(model_dir), num_generations=2, max_new_tokens=6, **kw),
            CodeDataModule(rl_files=[str(world_dir / "rl.jsonl")], program_batch_size=2))


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _fit(module, data, precision="32-true", device="cpu"):
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer = L.Trainer(accelerator=device, devices=1, precision=precision, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("precision,dtype", [("32-true", torch.float32), ("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
@pytest.mark.parametrize("phase", ["mstep", "estep", "rlvr"])
@pytest.mark.parametrize("device", DEVICES)
def test_each_phase_trains_under_each_precision(phase, precision, dtype, device, tiny_model_dir, world_dir):
    module, data = _phase(phase, tiny_model_dir, world_dir)
    trainer = _fit(module, data, precision, device)
    assert next(module.model.parameters()).dtype == dtype
    loss = trainer.callback_metrics[f"{phase}/loss"]
    assert torch.isfinite(loss)
    if phase == "estep":  # log-probs for rewards and ratios stay fp32
        assert module.last_rollout.token_logprobs.dtype == torch.float32
        assert module.last_rollout.decision_logprob.dtype == torch.float32


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
@pytest.mark.parametrize("device", DEVICES)
def test_bitsandbytes_8bit_optimizers(name, device, tiny_model_dir, world_dir):
    pytest.importorskip("bitsandbytes")
    module, data = _phase("mstep", tiny_model_dir, world_dir, optimizer=name)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = _fit(module, data, device=device)
    assert type(trainer.optimizers[0]).__module__.startswith("bitsandbytes")
    assert any(not torch.equal(a, b.cpu()) for a, b in zip(before, module.model.parameters()))


def test_unknown_optimizer_is_a_one_line_error(tiny_model_dir):
    with pytest.raises(Ra3Error, match="optimizer must be"):
        MStepModule(model=str(tiny_model_dir), optimizer="lion")


@pytest.mark.parametrize("phase", ["estep", "rlvr"])
@pytest.mark.parametrize("quantization,tol", [("8bit", 0.05), ("4bit", 0.5)])
@pytest.mark.parametrize("device", DEVICES)
def test_quantized_reference(phase, quantization, tol, device, quantizable_model_dir, world_dir):
    """The frozen reference loaded in bitsandbytes 8/4-bit: quantized layers, log-probs near the fp32 policy's,
    and the KL term trains (measured on CPU, bnb 0.50.2, 64-wide model: max |Δlogit| 0.007 for 8-bit, 0.10 for 4-bit)."""
    pytest.importorskip("bitsandbytes")
    module, data = _phase(phase, quantizable_model_dir, world_dir, beta=0.1, reference_quantization=quantization)
    layer = module.reference.get_decoder().layers[0].mlp.up_proj
    assert type(layer).__name__ == ("Linear8bitLt" if quantization == "8bit" else "Linear4bit")
    module.to(device)
    ids = torch.randint(3, 300, (2, 12), device=device)
    keep = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        ref, pol = (module.forward_logits(m, ids, keep) for m in (module.reference, module.model))
    assert 0 < (ref - pol).abs().max() < tol
    trainer = _fit(module, data, device=device)
    assert torch.isfinite(trainer.callback_metrics[f"{phase}/kl"])


def test_4bit_reference_on_unquantisable_shapes_is_a_one_line_error(tiny_model_dir):
    """The 32-wide test model: bitsandbytes' CPU 4-bit kernel would fail later with a reshape traceback."""
    pytest.importorskip("bitsandbytes")
    with pytest.raises(Ra3Error, match=r"layer model\.layers\.0\..* cannot be 4-bit quantised.*multiple of 64") as e:
        RLVRModule(init_from=str(tiny_model_dir), beta=0.1, reference_quantization="4bit")
    assert "\n" not in str(e.value)


def test_quantized_reference_needs_a_model_path(world_dir):
    from conftest import TINY_LLAMA

    with pytest.raises(Ra3Error, match="needs model, not model_config"):
        RLVRModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, beta=0.1, reference_quantization="8bit")
