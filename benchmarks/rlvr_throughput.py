"""RLVR throughput: ``RLVRModule`` (``RaggedEngine`` eager and compiled, ``HFEngine``) vs TRL ``GRPOTrainer``, in one run.

Same tiny Llama (same initial weights), same skill-world RL prompts, same group size, prompts per step,
max_new_tokens, temperature, loss (``grpo``, beta 0) and the same reward function (``ra3.rlvr.rewards.
UnitTestReward`` in the sandbox — TRL's reward protocol is the one ra3 uses). Steps/s after ``--warmup``; the
first step's seconds are printed too (``ragged_compiled`` compiles its decoding step there), and the whole runs' seconds
with every step counted. ra3 runs a group's identical completions through the graded forward and the sandbox once
(TRL runs every copy): the fraction of distinct completions per step is printed, since that gain depends on it.

    python benchmarks/rlvr_throughput.py [--steps 12] [--prompts 8] [--group 4] [--max_new_tokens 64] [--pretrain_steps 300] [--repeats 3]
                                         [--cold_cache]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

def build(root: Path, pretrain_steps: int):
    """Skill-world RL rows and a tiny Llama pre-trained ``pretrain_steps`` steps (it ends its programs with eos, so
    completion lengths spread as in real RLVR; random weights run every completion to the cap)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sampling import pretrained_base

    model, tok, _ = pretrained_base(root, pretrain_steps)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "world" / "rl.jsonl", root / "model"


ENGINES = {"ragged": "RaggedEngine", "ragged_compiled": "RaggedEngine(compile=True)", "hf": "HFEngine (generate)"}
first: dict[str, list[float]] = {e: [] for e in ENGINES}  # seconds of each run's first step
whole: dict[str, list[float]] = {e: [] for e in ["trl", *ENGINES]}  # seconds of each run's steps, the first included
distinct: list[float] = []  # rlvr/distinct_fraction of each ra3 step: rows the graded forward ran once for their copies


def run_ra3(rl, model, a, engine: str = "ragged") -> float:
    import lightning as L

    from ra3.data import CodeDataModule
    from ra3.rlvr import RLVRModule

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # by global step: epochs restart batch_idx
            if trainer.global_step == 0:
                self.start = time.perf_counter()
            if trainer.global_step == 1:
                first[engine].append(time.perf_counter() - self.start)
            if trainer.global_step == a.warmup:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            distinct.append(float(trainer.callback_metrics["rlvr/distinct_fraction"]))

        def on_train_end(self, trainer, pl_module):
            self.elapsed = time.perf_counter() - self.t0
            whole[engine].append(time.perf_counter() - self.start)

    clock = Clock()
    module = RLVRModule(init_from=str(model), num_generations=a.group, max_new_tokens=a.max_new_tokens, loss_type="grpo",
                        temperature=1.0, learning_rate=1e-6, stop=[], table_every_n_steps=0, rollout_engine=engine)
    data = CodeDataModule(rl_files=[str(rl)], program_batch_size=a.prompts)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    L.Trainer(accelerator="cpu", max_steps=a.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    return (a.steps - a.warmup) / clock.elapsed


def run_trl(rl, model, a) -> float:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ra3.rlvr.rewards import UnitTestReward

    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(l) for l in open(rl)]
    ds = datasets.Dataset.from_list([{"prompt": tok.bos_token + r["prompt"], "test_cases": r["test_cases"],
                                      "entry_point": r["entry_point"]} for r in rows])
    reward = UnitTestReward()

    def unit_tests(prompts, completions, test_cases, entry_point, **kw):
        return reward([p[len(tok.bos_token):] for p in prompts], completions, test_cases=test_cases, entry_point=entry_point)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 0:
                self.start = time.perf_counter()
            if state.global_step == a.warmup:
                self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.elapsed = time.perf_counter() - self.t0
            whole["trl"].append(time.perf_counter() - self.start)

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(output_dir=out, max_steps=a.steps, per_device_train_batch_size=a.prompts * a.group,
                         num_generations=a.group, max_completion_length=a.max_new_tokens, temperature=1.0,
                         learning_rate=1e-6, beta=0.0, loss_type="grpo", use_cpu=True, bf16=False, report_to=[],
                         logging_steps=10 ** 6, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        try:
            GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=[unit_tests], args=cfg,
                        train_dataset=ds, processing_class=tok, callbacks=[clock]).train()
        finally:  # the reward's sandbox pool (its servers) ends with the run, as RLVRModule's does
            if reward.pool is not None:
                reward.pool.close()
    return (a.steps - a.warmup) / clock.elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pretrain_steps", type=int, default=300, help="0 = random weights")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (this machine's speed drifts between runs)")
    ap.add_argument("--cold_cache", action="store_true", help="compile into an empty inductor cache (a machine's first run)")
    a = ap.parse_args()
    if a.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ra3-inductor-")
    torch.set_num_threads(a.threads)
    runs = {"trl": lambda rl, model: run_trl(rl, model, a)}
    runs.update({e: (lambda rl, model, e=e: run_ra3(rl, model, a, e)) for e in ENGINES})
    rates: dict[str, list[float]] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory() as root:
        rl, model = build(Path(root), a.pretrain_steps)
        for r in range(a.repeats):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                rates[name].append(runs[name](rl, model))
    med = {k: statistics.median(v) for k, v in rates.items()}
    paired = {k: sorted(x / t for x, t in zip(rates[k], rates["trl"])) for k in ENGINES}
    print(f"prompts/step={a.prompts} G={a.group} max_new_tokens={a.max_new_tokens} steps={a.steps} (warmup {a.warmup}) "
          f"threads={a.threads} repeats={a.repeats} (medians; paired ratios per round)")
    print(f"TRL GRPOTrainer                       : {med['trl']:6.3f} steps/s")
    for k, name in ENGINES.items():
        print(f"ra3 RLVRModule, {name:27s}: {med[k]:6.3f} steps/s   x{statistics.median(paired[k]):.2f} vs TRL (rounds "
              f"{', '.join(f'{x:.2f}' for x in paired[k])}; target >= 1.5x); first step {first[k][0]:.1f} s (round 1)")
    print(f"whole runs of round 1, every step counted (the compile too: later rounds reuse it), seconds: TRL {whole['trl'][0]:.1f}; "
          + "; ".join(f"{k} {whole[k][0]:.1f} (x{whole['trl'][0] / whole[k][0]:.2f})" for k in ENGINES)
          + f" (inductor's cache: {'cold' if a.cold_cache else 'as this machine left it'})")
    print(f"distinct completions per ra3 step (the graded forward runs each once; the sandbox runs each job once): "
          f"mean {statistics.mean(distinct):.2f}, range {min(distinct):.2f}-{max(distinct):.2f}")


if __name__ == "__main__":
    main()
