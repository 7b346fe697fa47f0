"""Which RLVR recipe? RLVR from the pilot's NTP and RA3 models, one setting varied, checkpoints scored on val.

The pilot (``ra3 study --preset pilot --out PILOT --first_seed 100 --bases 2 --set 'lr_grid=[]'``) leaves
mid-trained NTP and RA3 policies on its bases. For each value of one setting — a study setting (``rlvr_lr``,
``rlvr_steps``, ...) or any RLVRModule argument as ``rlvr.ARG`` (``rlvr.warmup_steps``, ``rlvr.dynamic_sampling``,
``rlvr.loss_type``, ...) — this copies the pilot's folder and runs the study's RLVR stages there (NTP and RA3
arms), so every variant starts from the same policies and differs only in that setting. Every evaluation is
(re)done in the copy with ``n_samples`` samples, RLVR's checkpoints are scored at ``rlvr_eval_points`` evenly
spaced steps (the last one the final policy), all on ``val.jsonl`` — never on ``eval.jsonl``::

    python benchmarks/rlvr_probe.py --pilot /tmp/pilot --out /tmp/rlvr_probe --setting rlvr_lr --values 3e-4 1e-4 3e-5

**Decision rule** (fixed before any run; ``--max_drop``, default 3 points): a value *passes* when, on every base
and for every init, no scored checkpoint lies more than ``max_drop`` points of val pass@1 below its start, and
for every init the final minus the start, averaged over bases, is > 0. Among the passing values the choice is the
one with the largest mean final gain over inits and bases (for a learning rate: the largest LR among those within
1 point of that gain, as larger steps converge sooner). If none passes, the probe says so. Include a control that
reproduces the known failure (e.g. ``rlvr_lr`` 3e-4) so the probe shows it can tell.

Prints per value and init: val pass@1 start -> each checkpoint (mean over bases), the worst drop, the RL reward
AUC and the verdict; writes ``OUT/probe.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ra3.experiments.stats import curve_auc
from ra3.experiments.study import checkpoint_steps
from ra3.experiments.report import per_task, rlvr_curve

INITS = ("ntp", "ra3")


def score(run: Path, bases: list[str], steps: list[int]) -> dict:
    """Per init: per base, val pass@1 at the start, at each scored checkpoint and at the end; reward AUC."""
    out = {}
    for arm in INITS:
        names = [f"eval_{arm}"] + [f"eval_rlvr_step{n}_{arm}" for n in steps] + [f"eval_rlvr_{arm}"]
        curve = {b: [statistics.fmean(s.values()) if (s := per_task(run, f"{b}_{n}")) else None for n in names] for b in bases}
        auc = {b: curve_auc(c) for b in bases if (c := rlvr_curve(run, f"{b}_rlvr_{arm}"))}
        out[arm] = {"steps": [0, *steps, "final"], "pass@1": curve, "auc": auc}
    return out


def verdict(row: dict, max_drop: float) -> dict:
    """The decision rule's parts for one value: worst drop (points), mean final gain per init, pass/fail."""
    drops, gains = [], {}
    for arm, r in row.items():
        finals = []
        for vals in r["pass@1"].values():
            if None in vals:
                return {"passes": False, "why": "missing evaluations"}
            drops.append(100 * (vals[0] - min(vals[1:])))
            finals.append(100 * (vals[-1] - vals[0]))
        gains[arm] = statistics.fmean(finals)
    worst = max(drops)
    ok = worst <= max_drop and all(g > 0 for g in gains.values())
    return {"passes": ok, "worst_drop": worst, "final_gain": gains, "mean_gain": statistics.fmean(gains.values())}


def choose(table: dict, setting: str) -> str | None:
    """The rule's choice among the passing values (None if none passes)."""
    passing = {v: r["verdict"]["mean_gain"] for v, r in table.items() if r["verdict"]["passes"]}
    if not passing:
        return None
    best = max(passing.values())
    if setting.endswith("lr") or setting.endswith("learning_rate"):  # the largest LR within 1 point of the best gain
        return max((v for v, g in passing.items() if g >= best - 1.0), key=float)
    return max(passing, key=passing.get)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pilot", required=True, help="a finished pilot study folder")
    p.add_argument("--out", required=True)
    p.add_argument("--setting", default="rlvr_lr", help="the study setting to vary, or rlvr.ARG for an RLVRModule argument")
    p.add_argument("--values", nargs="+", required=True, help="its values (YAML)")
    p.add_argument("--preset", default="pilot", help="the pilot's preset (`test` for a quick check of this script)")
    p.add_argument("--steps", type=int, default=80, help="RLVR steps")
    p.add_argument("--points", type=int, default=4, help="RLVR checkpoints scored (evenly spaced, the last the final)")
    p.add_argument("--n_samples", type=int, default=4, help="samples per val task in every evaluation")
    p.add_argument("--max_drop", type=float, default=3.0, help="the decision rule's largest allowed drop (points)")
    p.add_argument("--set", nargs="*", default=[], help="more study settings for every variant (KEY=VALUE)")
    a = p.parse_args(argv)
    pilot, out = Path(a.pilot), Path(a.out)
    if not (pilot / "stages" / "world.done").exists():
        sys.exit(f"rlvr_probe: {pilot} is not a finished pilot study (no stages/world.done)")
    seeds = sorted(int(d.name[1:]) for d in pilot.glob("b*") if (d / "base").is_dir())
    if not seeds:
        sys.exit(f"rlvr_probe: no pre-trained bases in {pilot}")
    bases = [f"b{s}" for s in seeds]
    steps = checkpoint_steps(a.steps, a.points)
    table = {}
    for value in a.values:
        run = out / f"{a.setting}_{value}"
        if not run.exists():  # the pilot's mid-training; its RLVR and evaluations are redone here
            shutil.copytree(pilot, run, ignore=shutil.ignore_patterns("runs", "*rlvr*", "eval", "*_eval_*", "*rlsplit*"))
        cmd = [sys.executable, "-m", "ra3.cli", "study", "--preset", a.preset, "--out", str(run), "--first_seed",
               str(seeds[0]), "--bases", str(len(seeds)), "--set", "rlvr=true", "arms=[ntp, ra3]", "lr_grid=[]",
               f"rlvr_steps={a.steps}", f"rlvr_eval_points={a.points}", f"n_samples={a.n_samples}",
               f"{a.setting}={value}", *a.set]
        print("==", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        row = score(run, bases, steps)
        table[value] = {**row, "verdict": verdict(row, a.max_drop), "minutes": (time.time() - t0) / 60}
        (out / "probe.json").write_text(json.dumps(table, indent=1))
    print(f"\n{a.setting} | init | val pass@1 (mean over bases): start -> steps {steps} -> final {a.steps} | "
          "worst base drop | RL reward AUC")
    for value, row in table.items():
        for arm in INITS:
            r = row[arm]
            means = [100 * statistics.fmean(v[i] for v in r["pass@1"].values()) for i in range(len(r["steps"]))]
            auc = statistics.fmean(r["auc"].values()) if r["auc"] else float("nan")
            drop = max(100 * (v[0] - min(v[1:])) for v in r["pass@1"].values())
            print(f"{value:>10} | {arm:>4} | " + " -> ".join(f"{m:5.1f}" for m in means) + f" | {drop:+5.1f} | {auc:.3f}")
        v = row["verdict"]
        print(f"{value:>10} | {'passes' if v['passes'] else 'fails'} (worst drop {v.get('worst_drop', float('nan')):.1f} "
              f"points, final gain {v.get('final_gain')}; {row['minutes']:.1f} min)")
    chosen = choose(table, a.setting)
    print(f"\nchoice by the rule: {a.setting} = {chosen}" if chosen else "\nno value passes the rule")


if __name__ == "__main__":
    main(sys.argv[1:])
