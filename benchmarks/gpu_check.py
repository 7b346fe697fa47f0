"""GPU check: the correctness tests (``pytest -m gpu``) and throughput on a Qwen2.5-1.5B-shaped model, one JSON.

    python benchmarks/gpu_check.py --out gpu_check.json        # one CUDA GPU, ~6 min on an H100/H200
    python benchmarks/gpu_check.py --device cpu --dry          # rehearsal on CPU: tiny shapes, the same code paths

Sections (each records its figures, or its error, and the JSON is rewritten after each one, so a run that is cut
off keeps what it measured):
- ``env``: card, torch/CUDA/transformers/lightning/bitsandbytes versions.
- ``matmul``: the measured bf16 matmul ceiling (8192^3), beside the card's dense bf16 peak used for MFU.
- ``tests``: ``pytest -m gpu`` (every phase under bf16 on cuda, fsdp2 on nccl with consolidation, ragged-cache
  log-probs, bitsandbytes on cuda), per-test outcome.
- ``mstep``: ``MStepModule`` tokens/s and MFU (6 N tokens/s / peak; N = all parameters, tied embedding once) on
  packed rows of ``--seq`` tokens, for sdpa with the dense block-diagonal mask vs flex_attention with a BlockMask,
  each with and without gradient checkpointing; peak memory.
- ``mstep_profile``: torch.profiler's top kernels over 2 M-step steps (flex_attention), where the time goes.
- ``rlvr_sampling``: ``HFEngine`` samples/s with G = 8 (seeded per-row sampling, as RLVR runs, and unseeded).
- ``estep_rollout``: the latent rollout vs plain ``generate`` of the same tokens (ratio (b)).

The model is randomly initialised from Qwen2.5-1.5B's shape (no weights are fetched): the FLOPs are the real
model's; the tokens come from the skill world's BPE tokenizer (ids < its vocabulary).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]

QWEN25_1_5B = dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, vocab_size=151936,
                   tie_word_embeddings=True, rms_norm_eps=1e-6)
DRY = dict(QWEN25_1_5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=4096)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16, SXM parts (NVIDIA data sheets)

RESULTS: dict = {}


def _error(e: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def section(name: str, out: Path):
    """Decorator: run the function, record its result (or error) under ``name`` with its wall-clock, save the JSON."""
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            RESULTS[name] = {"ok": True, **fn()}
        except Exception as e:  # a failed check is a result too
            RESULTS[name] = {"ok": False, "error": _error(e),
                             "traceback": traceback.format_exc()[-3000:]}
        RESULTS[name]["seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(RESULTS, indent=1))
        print(f"[gpu_check] {name}: {'ok' if RESULTS[name]['ok'] else RESULTS[name]['error']} "
              f"({RESULTS[name]['seconds']} s)", flush=True)
        return fn
    return wrap


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def env(device: str) -> dict:
    import lightning
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "lightning": lightning.__version__, "device": device}
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception as e:
        info["bitsandbytes"] = f"unavailable: {type(e).__name__}"
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
    return info


def peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def matmul(device: str, n: int) -> dict:
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    sync(device)
    flops = 2 * n ** 3 * reps / (time.perf_counter() - t)
    return {"n": n, "tflops": round(flops / 1e12, 1), "peak_tflops_used_for_mfu": (peak_flops(device) or 0) / 1e12}


def run_tests(timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={xml}", "--timeout", str(timeout)], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout + 60)
        tests = {}
        if xml.exists():
            for case in ET.parse(xml).iter("testcase"):
                outcome, message = "passed", None
                for tag in ("failure", "error", "skipped"):
                    node = case.find(tag)
                    if node is not None:
                        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                        message = ((node.get("message") or "")[:300] + " ... " + (node.text or "")[-2500:]).strip()
                tests[f"{case.get('classname')}::{case.get('name')}"] = {"outcome": outcome, "seconds": float(case.get("time", 0)),
                                                                          **({"message": message} if message else {})}
    counts = {k: sum(t["outcome"] == k for t in tests.values()) for k in ("passed", "failed", "error", "skipped")}
    return {"returncode": proc.returncode, "counts": counts, "tests": tests, "tail": proc.stdout[-2500:] + proc.stderr[-1500:]}


def build_assets(root: Path, dry: bool) -> dict:
    from ra3.data.skillworld import WorldConfig, build_world
    from ra3.data.tokenizer import train_bpe_tokenizer

    paths = build_world(root / "world", WorldConfig(n_pretrain=1000, n_midtrain=300 if dry else 2500, n_rl=64, n_eval=1))
    train_bpe_tokenizer([paths["pretrain"]], root / "tokenizer")
    return {"midtrain": paths["midtrain"], "rl": paths["rl"], "tokenizer": root / "tokenizer"}


def make_policy(assets: dict, config: dict, device: str):
    from ra3.em import MStepModule

    with torch.device(device):  # random init on the device: seconds instead of minutes for 1.5B parameters
        module = MStepModule(tokenizer=str(assets["tokenizer"]), model_config=config, learning_rate=1e-5, warmup_steps=0)
    return module


MSTEP_VARIANTS = {"sdpa_dense_mask": ("sdpa", False), "flex_blockmask": ("flex_attention", False),
                  "sdpa_dense_mask_ckpt": ("sdpa", True), "flex_blockmask_ckpt": ("flex_attention", True)}


def mstep_throughput(module, assets: dict, device: str, seq: int, batch: int, warmup: int, steps: int,
                     variants: list[str]) -> dict:
    import lightning as L

    from ra3.data import CodeDataModule

    n_params = sum(p.numel() for p in module.model.parameters())
    peak = peak_flops(device)

    class Clock(L.Callback):
        def __init__(self):
            self.t0, self.tokens, self.rows = None, 0, 0

        def on_train_batch_start(self, trainer, pl_module, batch_, batch_idx):
            if batch_idx == warmup:
                sync(device)
                self.t0 = time.perf_counter()
            if batch_idx >= warmup:
                self.tokens += int(batch_["tokens"])
                self.rows += batch_["input_ids"].numel()

        def on_train_end(self, trainer, pl_module):
            sync(device)
            self.elapsed = time.perf_counter() - self.t0

    rows = {}
    for name in variants:
        attn, checkpointing = MSTEP_VARIANTS[name]
        try:
            module.model.set_attn_implementation(attn)
            if checkpointing:
                module.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.model.gradient_checkpointing_disable()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            clock = Clock()
            data = CodeDataModule(train_files=[str(assets["midtrain"])], max_length=seq, batch_size=batch, packing=True,
                                  val_fraction=0.0, tokenizer_path=str(assets["tokenizer"]))
            data.connect(tokenizer=module.tokenizer, view=module.data_view)
            trainer = L.Trainer(accelerator=device, devices=1, precision="bf16-mixed", max_steps=warmup + steps, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
            trainer.fit(module, data)
            tps = clock.tokens / clock.elapsed
            row = {"tokens_per_s": round(tps), "padding_fraction": round(1 - clock.tokens / clock.rows, 4),
                   "step_s": round(clock.elapsed / steps, 4), "mfu": round(6 * n_params * tps / peak, 4) if peak else None}
            if device == "cuda":
                row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rows[name] = row
        except Exception as e:
            rows[name] = {"error": _error(e),
                          "traceback": traceback.format_exc()[-1500:]}
        finally:
            module._trainer = None
            trainer = data = None
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        print(f"[gpu_check]   mstep {name}: {rows[name]}", flush=True)
    module.model.gradient_checkpointing_disable()
    module.model.set_attn_implementation("sdpa")
    return {"params": n_params, "seq": seq, "batch": batch, "precision": "bf16-mixed", "optimizer": "adamw (fp32 states)",
            "warmup_steps": warmup, "timed_steps": steps, "mfu_formula": "6 * params * tokens_per_s / peak_bf16",
            "peak_bf16_tflops": peak / 1e12 if peak else None, "variants": rows}


def mstep_profile(module, assets: dict, device: str, seq: int, batch: int) -> dict:
    """torch.profiler over 2 M-step steps (flex_attention, no checkpointing): where the step's time goes."""
    import lightning as L
    from torch.profiler import ProfilerActivity, profile, schedule

    from ra3.data import CodeDataModule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    keys = ("self_device_time_total", "self_cuda_time_total") if device == "cuda" else ("self_cpu_time_total",)
    tables = []

    def summarise(p):
        averages = p.key_averages()
        for key in keys:  # the name of the device column changed across torch versions
            try:
                tables.append((key, averages.table(sort_by=key, row_limit=30, max_name_column_width=70)))
                return
            except Exception:
                continue

    prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=2, repeat=1), on_trace_ready=summarise)

    class Step(L.Callback):
        def on_train_batch_end(self, *args):
            sync(device)
            prof.step()

    module.model.set_attn_implementation("flex_attention" if device == "cuda" else "sdpa")
    data = CodeDataModule(train_files=[str(assets["midtrain"])], max_length=seq, batch_size=batch, packing=True)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer = L.Trainer(accelerator=device, devices=1, precision="bf16-mixed", max_steps=5, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Step()])
    with prof:
        trainer.fit(module, data)
    module._trainer = None
    module.model.set_attn_implementation("sdpa")
    return {"steps": 2, "sort_by": tables[0][0] if tables else None, "table": tables[0][1] if tables else None}


def rlvr_sampling(model, tokenizer, assets: dict, prompts: int, group: int, max_new_tokens: int) -> dict:
    from ra3.rollout.hf_engine import HFEngine
    from ra3.rollout.sampling import SamplingConfig

    rows = [json.loads(line) for line in open(assets["rl"])][:prompts]
    texts = [r["prompt"] for r in rows]
    engine = HFEngine(model, tokenizer)
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, batch_size=prompts * group)
    device = next(model.parameters()).device.type
    out = {"prompts": prompts, "group": group, "max_new_tokens": max_new_tokens}
    for name, seeds in (("seeded_per_row", list(range(prompts))), ("unseeded", None)):
        engine.generate(texts[:2], n=2, config=SamplingConfig(max_new_tokens=8, temperature=1.0), seeds=seeds and [0, 1])
        sync(device)
        t = time.perf_counter()
        completions = engine.generate(texts, n=group, config=config, seeds=seeds)
        sync(device)
        dt = time.perf_counter() - t
        lengths = [len(c.token_ids) for cs in completions for c in cs]
        out[name] = {"samples_per_s": round(len(lengths) / dt, 2), "new_tokens_per_s": round(sum(lengths) / dt),
                     "mean_length": round(sum(lengths) / len(lengths), 1), "seconds": round(dt, 2)}
    return out


def estep_rollout(model, tokenizer, assets: dict, programs: int, group: int, repeats: int) -> dict:
    from estep_rollout import compare

    from ra3.em.latent import LatentConfig, program_from_row

    rows = [json.loads(line) for line in open(assets["midtrain"])][:programs]
    result = compare(model, tokenizer, [program_from_row(r) for r in rows], group, alpha=0.0,
                     lookahead=LatentConfig.lookahead, repeats=repeats, naive=False)
    return {"programs": programs, "group": group, "alpha": 0.0, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry", action="store_true", help="tiny shapes and few steps (a rehearsal of every code path)")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--skip", nargs="*", default=[], help="sections to leave out")
    ap.add_argument("--seq", type=int, default=None, help="tokens per packed row (default 4096; dry 256)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tests_timeout", type=int, default=240)
    ap.add_argument("--variants", nargs="*", default=list(MSTEP_VARIANTS), choices=list(MSTEP_VARIANTS),
                    help="M-step variants (attention path x gradient checkpointing)")
    args = ap.parse_args()
    out = Path(args.out)
    dry, device = args.dry, args.device
    seq = args.seq or (256 if dry else 4096)
    torch.backends.cuda.matmul.allow_tf32 = True  # as Lightning's bf16 runs would; the tests set their own
    RESULTS["args"] = vars(args)
    section("env", out)(lambda: env(device))
    if "matmul" not in args.skip:
        section("matmul", out)(lambda: matmul(device, 256 if dry else 8192))
    if "tests" not in args.skip:
        section("tests", out)(lambda: run_tests(args.tests_timeout))
    with tempfile.TemporaryDirectory() as root:
        assets = build_assets(Path(root), dry)
        holder = {}
        section("model", out)(lambda: holder.update(module=make_policy(assets, DRY if dry else QWEN25_1_5B, device)) or
                              {"config": "dry" if dry else "Qwen2.5-1.5B shape",
                               "params": sum(p.numel() for p in holder["module"].model.parameters())})
        module = holder.get("module")
        if module is None:
            return
        if "mstep" not in args.skip:
            section("mstep", out)(lambda: mstep_throughput(module, assets, device, seq, args.batch, warmup=1 if dry else 2,
                                                           steps=2 if dry else 6, variants=args.variants))
        if "mstep_profile" not in args.skip:
            section("mstep_profile", out)(lambda: mstep_profile(module, assets, device, seq, args.batch))
        model = module.model.to(device=device, dtype=torch.bfloat16).eval()
        if "rlvr_sampling" not in args.skip:
            section("rlvr_sampling", out)(lambda: rlvr_sampling(model, module.tokenizer, assets, prompts=8, group=8,
                                                                max_new_tokens=16 if dry else 128))
        if "estep_rollout" not in args.skip:
            section("estep_rollout", out)(lambda: estep_rollout(model, module.tokenizer, assets, programs=4 if dry else 8,
                                                                group=4, repeats=1 if dry else 2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("traceback", "tests", "tail")} if isinstance(v, dict) else v
                      for k, v in RESULTS.items()}, indent=1))


if __name__ == "__main__":
    main()
