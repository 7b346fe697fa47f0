"""LoRA / QLoRA through ``PolicyModule(peft=...)``: what trains, the reference without a copy, exports, checkpoints,
and the rollout engines on a peft-wrapped model."""

import json

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from ra3.errors import Ra3Error
from ra3.em import MStepModule
from ra3.rlvr import RLVRModule
from ra3.policy.module import AdaptersDisabled, PolicyModule

from conftest import QUANTIZABLE_LLAMA

LORA = {"r": 4, "alpha": 8}


@pytest.fixture(scope="module")
def base_dir(world_dir, tmp_path_factory):
    """A 64-wide tiny Llama (bitsandbytes' 4-bit kernel needs multiples of 64) exported with save_pretrained."""
    out = tmp_path_factory.mktemp("lora_base")
    torch.manual_seed(0)
    return PolicyModule(model_config=QUANTIZABLE_LLAMA, tokenizer=str(world_dir / "tokenizer")).export(out / "base")


def _perturb_adapters(model, seed=0):
    """LoRA's B starts at zero (the adapted model = the base); give it weights so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _logits(module, model, ids):
    with torch.no_grad():
        return module.forward_logits(model, ids, torch.ones_like(ids, dtype=torch.bool))


IDS = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))


def test_only_the_adapters_train_and_all_linear_layers_get_them(base_dir):
    policy = PolicyModule(model=str(base_dir), peft=LORA)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear, no lm_head
    h, i, layers = QUANTIZABLE_LLAMA["hidden_size"], QUANTIZABLE_LLAMA["intermediate_size"], QUANTIZABLE_LLAMA["num_hidden_layers"]
    kv = h // QUANTIZABLE_LLAMA["num_attention_heads"] * QUANTIZABLE_LLAMA["num_key_value_heads"]
    per_layer = 4 * (h + h) + 4 * (h + kv) * 2 + 4 * (h + h) + 4 * (h + i) * 2 + 4 * (i + h)  # r (in + out) per layer
    assert sum(p.numel() for p in policy.model.parameters() if p.requires_grad) == per_layer * layers
    groups = policy.configure_optimizers()["optimizer"].param_groups
    assert sum(len(g["params"]) for g in groups) == len(trainable)  # the optimizer holds the adapters only


def test_reference_is_the_base_model_with_adapters_disabled(base_dir, world_dir):
    rlvr = RLVRModule(init_from=str(base_dir), peft=LORA, beta=0.1)
    assert isinstance(rlvr.reference, AdaptersDisabled)
    assert "reference" not in dict(rlvr.named_children())  # no second copy of the weights
    _perturb_adapters(rlvr.model)
    plain = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = IDS
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, 6:] = True
    with torch.no_grad():
        ref, _ = rlvr.token_logprobs(rlvr.reference, ids, torch.ones_like(ids), completion)
        base, _ = rlvr.token_logprobs(plain, ids, torch.ones_like(ids), completion)
        policy, _ = rlvr.token_logprobs(rlvr.model, ids, torch.ones_like(ids), completion)
    torch.testing.assert_close(ref, base, atol=1e-6, rtol=0)
    assert (policy - base).abs().max() > 1e-3  # the adapters are on outside the reference


def test_merged_export_loads_with_plain_transformers_and_computes_the_same(base_dir, tmp_path):
    policy = PolicyModule(model=str(base_dir), peft=LORA)
    _perturb_adapters(policy.model)
    policy.export(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_logits(policy, merged, IDS), _logits(policy, policy.model, IDS), atol=1e-5, rtol=0)
    assert not hasattr(merged, "peft_config")
    # the live policy still has its adapters (the export did not merge them in place)
    assert policy.is_peft and any("lora_A" in n for n, _ in policy.model.named_parameters())


def test_adapter_export_is_loaded_onto_its_base_and_trains_on(base_dir, tmp_path):
    policy = PolicyModule(model=str(base_dir), peft=LORA, export_adapter=True)
    _perturb_adapters(policy.model)
    policy.export(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())  # found from any working directory
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    again = PolicyModule(model=str(tmp_path / "adapter"), peft={"r": 64})  # the saved adapter wins over a new one
    assert again.is_peft and again.model.peft_config["default"].r == LORA["r"]
    assert any(p.requires_grad for n, p in again.model.named_parameters() if "lora_" in n)
    want = _logits(policy, policy.model, IDS)
    torch.testing.assert_close(_logits(again, again.model, IDS), want, atol=1e-6, rtol=0)
    with_peft = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")  # transformers + peft, no ra3
    torch.testing.assert_close(_logits(policy, with_peft, IDS), want, atol=1e-6, rtol=0)


def test_bad_settings_are_one_line_errors(base_dir):
    with pytest.raises(Ra3Error, match=r"target_modules .*qq_proj.* match no layer of the model; its linear layers "
                                       r"are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj$"):
        PolicyModule(model=str(base_dir), peft={"target_modules": ["qq_proj"]})
    with pytest.raises(Ra3Error, match="quantization trains nothing without adapters"):
        PolicyModule(model=str(base_dir), quantization="4bit")
    with pytest.raises(Ra3Error, match="bad peft config"):
        PolicyModule(model=str(base_dir), peft={"r": 4, "no_such_field": 1})


def test_qlora_trains_the_adapters_on_4bit_weights_and_exports_what_it_computes(base_dir, tmp_path):
    policy = PolicyModule(model=str(base_dir), peft=LORA, quantization="4bit")
    assert any(type(m).__name__ == "Linear4bit" for m in policy.model.modules())
    loss = _logits_with_grad(policy).logsumexp(-1).mean()
    loss.backward()
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    _perturb_adapters(policy.model)
    policy.export(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # dequantised base + deltas, plain weights
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    torch.testing.assert_close(_logits(policy, merged, IDS), _logits(policy, policy.model, IDS), atol=1e-4, rtol=0)


def _logits_with_grad(policy):
    return policy.forward_logits(policy.model, IDS, torch.ones_like(IDS, dtype=torch.bool))


def test_fit_checkpoints_hold_only_the_adapters_and_resume_and_consolidate(base_dir, world_dir, tmp_path):
    from ra3.policy.consolidate import policy_from_checkpoint
    from ra3.data.datamodule import CodeDataModule

    def fit(steps, ckpt=None):
        L.seed_everything(0)
        module = MStepModule(model=str(base_dir), peft=LORA, learning_rate=1e-2)
        data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], batch_size=4, max_length=256)
        data.connect(tokenizer=module.tokenizer, view=module.data_view)
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(tmp_path), limit_val_batches=0)
        trainer.fit(module, data, ckpt_path=ckpt)
        return module, trainer

    first, trainer = fit(2)
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)  # the frozen base is not copied into checkpoints
    resumed, again_trainer = fit(2, str(ckpt))  # restores the adapters (and step 2) from the trimmed checkpoint
    assert again_trainer.global_step == 2
    for (n, a), (_, b) in zip(resumed.model.named_parameters(), first.model.named_parameters()):
        assert torch.equal(a, b), n
    further, t = fit(3, str(ckpt))
    assert t.global_step == 3 and any(not torch.equal(a, b) for a, b in zip(further.model.parameters(), first.model.parameters()))
    again = policy_from_checkpoint(ckpt)  # what `ra3 evaluate --model x.ckpt` and `ra3 consolidate` read
    torch.testing.assert_close(_logits(again, again.model, IDS), _logits(first, first.model, IDS), atol=1e-6, rtol=0)


def test_latent_rollout_and_sampler_work_unchanged_on_a_peft_model(base_dir, world_dir):
    from ra3.rollout.hf_engine import HFEngine
    from ra3.rollout.sampling import SamplingConfig
    from ra3.em.latent import LatentConfig, LatentRolloutEngine, program_from_row
    from ra3.rollout.ragged_engine import RaggedEngine

    policy = PolicyModule(model=str(base_dir), peft=LORA)
    _perturb_adapters(policy.model)
    rows = [json.loads(line) for line in open(world_dir / "midtrain.jsonl")][:3]
    ro = LatentRolloutEngine(policy.model, policy.tokenizer).rollout(
        [program_from_row(r) for r in rows], LatentConfig(group_size=2, max_thought_tokens=6), torch.Generator().manual_seed(1))
    assert ro.n_thoughts.sum() > 0
    with torch.no_grad():
        logp = policy.model(input_ids=ro.input_ids, attention_mask=ro.attention_mask).logits.float().log_softmax(-1)
    fresh = logp[:, :-1].gather(-1, ro.input_ids[:, 1:, None]).squeeze(-1)
    real = ro.attention_mask[:, 1:].bool()
    torch.testing.assert_close(ro.token_logprobs[:, 1:][real], fresh[real], atol=1e-4, rtol=0)

    prompts = [json.loads(line)["prompt"] for line in open(world_dir / "rl.jsonl")][:4]
    config = SamplingConfig(max_new_tokens=12, temperature=0.0, stop=["e"], batch_size=64)
    key = lambda cs: [[(c.text, c.finished) for c in row] for row in cs]  # noqa: E731
    want = key(HFEngine(policy.model, policy.tokenizer).generate(prompts, 2, config))
    assert key(RaggedEngine(policy.model, policy.tokenizer, slots=3).generate(prompts, 2, config)) == want
    plain = AutoModelForCausalLM.from_pretrained(base_dir)
    assert key(HFEngine(plain, policy.tokenizer).generate(prompts, 2, config)) != want  # the adapters are used
