"""RLVR throughput: ``RLVRModule`` vs TRL ``GRPOTrainer``, side by side in one run.

Same tiny Llama (same initial weights), same skill-world RL prompts, same group size, prompts per step,
max_new_tokens, temperature, loss (``grpo``, beta 0) and the same reward function (``ra3.rewards.
UnitTestReward`` in the sandbox — TRL's reward protocol is the one ra3 uses). Steps/s after ``--warmup``.

    python benchmarks/rlvr_throughput.py [--steps 12] [--prompts 8] [--group 4] [--max_new_tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

TINY = dict(model_type="llama", hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)


def build(root: Path):
    from ra3.datamodules.skillworld import WorldConfig, build_world
    from ra3.datamodules.tokenizer import train_bpe_tokenizer
    from ra3.modules.policy import PolicyModule

    paths = build_world(root / "world", WorldConfig(n_pretrain=1000, n_midtrain=10, n_rl=400, n_eval=10))
    train_bpe_tokenizer([paths["pretrain"]], root / "world" / "tokenizer")
    PolicyModule(tokenizer=str(root / "world" / "tokenizer"), model_config=TINY).export(root / "model")
    return paths["rl"], root / "model"


def run_ra3(rl, model, a) -> float:
    import lightning as L

    from ra3.datamodules import CodeDataModule
    from ra3.modules import RLVRModule

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == a.warmup:
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.elapsed = time.perf_counter() - self.t0

    clock = Clock()
    module = RLVRModule(init_from=str(model), num_generations=a.group, max_new_tokens=a.max_new_tokens, loss_type="grpo",
                        temperature=1.0, learning_rate=1e-6, stop=[], table_every_n_steps=0)
    data = CodeDataModule(rl_files=[str(rl)], program_batch_size=a.prompts)
    L.Trainer(accelerator="cpu", max_steps=a.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    return (a.steps - a.warmup) / clock.elapsed


def run_trl(rl, model, a) -> float:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ra3.rewards import UnitTestReward

    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(l) for l in open(rl)]
    ds = datasets.Dataset.from_list([{"prompt": tok.bos_token + r["prompt"], "test_cases": r["test_cases"],
                                      "entry_point": r["entry_point"]} for r in rows])
    reward = UnitTestReward()

    def unit_tests(prompts, completions, test_cases, entry_point, **kw):
        return reward([p[len(tok.bos_token):] for p in prompts], completions, test_cases=test_cases, entry_point=entry_point)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == a.warmup:
                self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.elapsed = time.perf_counter() - self.t0

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(output_dir=out, max_steps=a.steps, per_device_train_batch_size=a.prompts * a.group,
                         num_generations=a.group, max_completion_length=a.max_new_tokens, temperature=1.0,
                         learning_rate=1e-6, beta=0.0, loss_type="grpo", use_cpu=True, bf16=False, report_to=[],
                         logging_steps=10 ** 6, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=[unit_tests], args=cfg,
                    train_dataset=ds, processing_class=tok, callbacks=[clock]).train()
    return (a.steps - a.warmup) / clock.elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as root:
        rl, model = build(Path(root))
        trl = run_trl(rl, model, a)
        ours = run_ra3(rl, model, a)
    print(f"prompts/step={a.prompts} G={a.group} max_new_tokens={a.max_new_tokens} steps={a.steps} (warmup {a.warmup}) threads={a.threads}")
    print(f"TRL GRPOTrainer : {trl:6.3f} steps/s")
    print(f"ra3 RLVRModule  : {ours:6.3f} steps/s")
    print(f"ratio ra3/TRL   : {ours / trl:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
