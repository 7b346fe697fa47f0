"""Peak memory per module and setting: plain vs gradient checkpointing vs 8-bit AdamW vs FSDP2 sharding vs LoRA / QLoRA.

Each setting is a fresh ``ra3 fit`` process (so peaks do not mix) training ``--steps`` steps of the M-step,
E-step or RLVR on a skill-world model of the given size (or ``--model DIR``); the table gives the peak RSS
of the rank-0 process (``ru_maxrss``; on GPU also ``torch.cuda.max_memory_allocated``) and the ratio to the
plain run of the same module, and the trainable parameters of each setting::

    python benchmarks/memory.py [--hidden 512 --layers 8] [--modules mstep estep rlvr] [--threads 1]

FSDP2 runs use 2 processes (``--trainer.devices 2``, gloo on CPU, nccl on GPU): per-rank memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "plain": [],
    "checkpointing": ["--model.gradient_checkpointing", "true"],
    "adamw8bit": ["--model.optimizer", "adamw8bit"],
    "fsdp2x2": ["--trainer.devices", "2", "--trainer.strategy", "fsdp2", "--model.fsdp_param_dtype", "null"],
    "lora": ["--model.peft", '{"r": 16}'],
    "qlora": ["--model.peft", '{"r": 16}', "--model.quantization", "4bit"],
}


def trainable_parameters(model: Path, setting: str) -> int:
    """Parameters that train under ``setting`` (the adapters under LoRA / QLoRA, everything otherwise)."""
    from ra3.policy.module import PolicyModule

    args = SETTINGS[setting]
    peft = json.loads(args[args.index("--model.peft") + 1]) if "--model.peft" in args else None
    quantization = args[args.index("--model.quantization") + 1] if "--model.quantization" in args else None
    policy = PolicyModule(model=str(model), peft=peft, quantization=quantization)
    return sum(p.numel() for p in policy.model.parameters() if p.requires_grad)

PEAK = """
import atexit, json, os, resource, sys
def _report():
    import torch
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if rank == 0:
        cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        with open(os.environ["RA3_PEAK_FILE"], "w") as f:
            json.dump({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cuda_mb": cuda}, f)
atexit.register(_report)
from ra3.cli import main
main(sys.argv[1:])
"""


def build(root: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ra3.data.skillworld import WorldConfig, build_world
    from ra3.data.tokenizer import train_bpe_tokenizer
    from ra3.policy.module import PolicyModule

    build_world(root / "world", WorldConfig(n_pretrain=1000, n_midtrain=400, n_rl=40, n_eval=10))
    train_bpe_tokenizer([root / "world" / "pretrain.jsonl"], root / "world" / "tokenizer")
    config = dict(model_type="llama", hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                  num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024)
    PolicyModule(tokenizer=str(root / "world" / "tokenizer"), model_config=config).export(root / "model")
    return root / "world", root / "model"


def command(module: str, world: Path, model: Path, steps: int) -> list[str]:
    base = ["fit", "--trainer.max_steps", str(steps), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "auto", "--model.model", str(model)]
    if module == "mstep":
        return base + ["--model", "ra3.em.MStepModule", "--data", "ra3.data.CodeDataModule",
                       "--data.train_files", f"[{world / 'midtrain.jsonl'}]", "--data.batch_size", "4", "--data.max_length", "512"]
    if module == "estep":
        return base + ["--model", "ra3.em.EStepModule", "--model.max_thought_tokens", "8", "--data", "ra3.data.CodeDataModule",
                       "--data.train_files", f"[{world / 'midtrain.jsonl'}]", "--data.program_batch_size", "4"]
    return base + ["--model", "ra3.rlvr.RLVRModule", "--model.max_new_tokens", "64", "--data", "ra3.data.CodeDataModule",
                   "--data.rl_files", f"[{world / 'rl.jsonl'}]", "--data.program_batch_size", "4"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a save_pretrained directory (default: a fresh skill-world Llama of --hidden/--layers)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--modules", nargs="+", default=["mstep", "estep", "rlvr"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ra3-memory-"))
    world, model = build(root, a.hidden, a.layers)
    if a.model:
        model = Path(a.model)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for module in a.modules:
        plain = None
        for setting in a.settings:
            peak_file = root / f"{module}-{setting}.json"
            args = command(module, world, model, a.steps) + SETTINGS[setting]
            script = root / "peak_fit.py"  # a file, not -c: Lightning's launcher re-runs sys.argv for rank 1
            script.write_text(PEAK)
            out = subprocess.run([sys.executable, str(script), *args], env={**env, "RA3_PEAK_FILE": str(peak_file)},
                                 cwd=root, capture_output=True, text=True)
            if out.returncode != 0 or not peak_file.exists():
                print(f"{module:6} {setting:14} FAILED: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                continue
            peak = json.loads(peak_file.read_text())
            plain = plain or peak
            ratio = peak["rss_mb"] / plain["rss_mb"]
            cuda = f"  cuda {peak['cuda_mb']:.0f} MB" if peak["cuda_mb"] else ""
            n = trainable_parameters(model, setting)
            print(f"{module:6} {setting:14} peak RSS {peak['rss_mb']:8.0f} MB  ({ratio:.2f}x plain)  "
                  f"trainable {n / 1e6:7.2f} M{cuda}", flush=True)
            rows.append({"module": module, "setting": setting, **peak, "ratio_to_plain": ratio, "trainable": n})
    (root / "memory.json").write_text(json.dumps(rows, indent=1))
    print(f"results: {root / 'memory.json'}")


if __name__ == "__main__":
    main()
