"""What LoRA costs in quality: the NTP M-step with LoRA vs full fine-tuning, same budget, paired over a study's bases.

Reads a finished ``ra3 study`` (or pilot) directory and, for each of its bases, re-runs the study's NTP M-step stage
with LoRA adapters (``--r``, all linear layers) at each ``--lrs`` learning rate — the same base, data order, steps,
batch and schedule — then the study's own evaluation command on the result. Prints, per learning rate, held-out
pass@1 of LoRA and of the study's full NTP per base, and the paired difference with its 95 % t interval::

    python benchmarks/lora_quality.py --study artifacts/pilot --lrs 3e-3 1e-2    # choose the LR on val.jsonl
    python benchmarks/lora_quality.py --study artifacts/study --lrs 1e-2         # then measure on eval.jsonl

Stages already done (their ``results.json`` exists) are not re-run; ``--jobs`` one-thread processes run in
parallel. Results: ``<study>/lora_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ra3.experiments.stats import mean_ci, paired_difference  # noqa: E402

NTP_RECIPE = Path(__file__).resolve().parents[1] / "ra3" / "configs" / "skillworld" / "ntp.yaml"


def pass1(results: Path) -> float:
    return json.loads(results.read_text())["skillworld"]["pass@1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="a finished ra3 study directory")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2])
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    study = Path(a.study).resolve()
    bases = sorted(d.name for d in study.glob("b*") if (study / "configs" / f"{d.name}_ntp.yaml").exists())
    if not bases:
        sys.exit(f"no bases with an NTP stage in {study}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    (study / "lora").mkdir(exist_ok=True)

    def arm(base: str, lr: float) -> Path:
        name = f"{base}_ntp_lora_r{a.r}_lr{lr:g}"
        results = study / "eval" / f"{name}" / "results.json"
        if results.exists():
            return results
        model = study / base / f"ntp_lora_r{a.r}_lr{lr:g}"
        with open(study / "logs" / f"{base}_eval_ntp.log") as f:
            evaluate = shlex.split(f.readline())[1:]  # the study's own command
        evaluate[evaluate.index("--model") + 1] = str(model)
        evaluate[evaluate.index("--output_dir") + 1] = str(results.parent)
        with open(study / "lora" / f"{name}.log", "w") as log:
            if not (model / "config.json").exists():
                subprocess.run([sys.executable, "-m", "ra3.cli", "fit", "-c", str(NTP_RECIPE), "-c",
                                str(study / "configs" / f"{base}_ntp.yaml"),
                                "--model.init_args.peft", json.dumps({"r": a.r, "alpha": 2 * a.r}),
                                "--model.init_args.learning_rate", str(lr), "--model.init_args.export_dir", str(model),
                                "--trainer.default_root_dir", str(study / "runs" / name)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
            subprocess.run([sys.executable, "-m", "ra3.cli", *evaluate], env=env, stdout=log, stderr=subprocess.STDOUT,
                           check=True)
        return results

    work = [(b, lr) for lr in a.lrs for b in bases]
    with ThreadPoolExecutor(a.jobs) as pool:
        done = dict(zip(work, pool.map(lambda w: arm(*w), work)))
    full = {b: pass1(study / "eval" / f"{b}_eval_ntp" / "results.json") for b in bases}
    out = {"study": str(study), "r": a.r, "bases": bases, "full": full, "full_mean": mean_ci(list(full.values())), "lora": {}}
    print(f"{study}  (r = {a.r}, all linear layers; full NTP: the study's own stage)")
    print("full NTP pass@1 per base: " + ", ".join(f"{b} {100 * v:.1f}" for b, v in full.items()))
    for lr in a.lrs:
        lora = {b: pass1(done[(b, lr)]) for b in bases}
        diff = paired_difference(lora, full)
        out["lora"][f"{lr:g}"] = {"per_base": lora, "mean": mean_ci(list(lora.values())), "lora-full": diff}
        print(f"LoRA lr {lr:g}: " + ", ".join(f"{b} {100 * v:.1f}" for b, v in lora.items())
              + f"  | LoRA - full {100 * diff['mean']:+.1f} [{100 * diff['lo']:+.1f}, {100 * diff['hi']:+.1f}] points")
    (study / "lora_quality.json").write_text(json.dumps(out, indent=1))
    print(f"results: {study / 'lora_quality.json'}")


if __name__ == "__main__":
    main()
