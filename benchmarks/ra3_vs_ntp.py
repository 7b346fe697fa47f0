"""RA3 vs NTP mid-training over seeds, and the thought-cost ablation, from one quickstart's world and base model.

Reuses ``<quickstart>/world`` and ``<quickstart>/base`` (same base, same token budget as the quickstart's
``tiny``/``small`` preset), then for every seed runs NTP and RA3 (``c`` = the config's 0.05) mid-training, and for
every extra ``c`` an RA3 run with seed 0; each model is scored on the held-out split (sampled pass@1/pass@k)::

    ra3 quickstart --out runs/qs --preset tiny
    python benchmarks/ra3_vs_ntp.py --quickstart runs/qs --seeds 0 1 2 --costs 0.01 0.2

Prints a table (mean ± std over seeds) and writes ``<out>/ra3_vs_ntp.json``. Stages are ordinary ``ra3``
commands, resumable like the quickstart's (finished ones are skipped).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ra3.quickstart import CONFIGS, PRESETS, Quickstart


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quickstart", required=True, help="a finished (at least up to 'pretrain') quickstart folder")
    p.add_argument("--out", help="where runs go (default: <quickstart>/seeds)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--costs", type=float, nargs="*", default=[0.01, 0.2], help="extra thought costs c (seed 0)")
    p.add_argument("--bootstrap_limit", default=None,
                   help="programs bootstrapped per EM round: a number or 'all' (default: the preset's); a run with a "
                        "non-default limit is named ra3_bootstrap<limit> (NTP always trains on the whole corpus)")
    p.add_argument("--mstep_init", choices=["estep", "previous"], default=None,
                   help="em.mstep_init for the RA3 runs (default: the config's); a non-default one adds _mstep<init> to the name")
    p.add_argument("--reuse_quickstart", action="store_true",
                   help="take seed 0's NTP and RA3 scores from the quickstart itself (run with --seed 0: the same runs)")
    a = p.parse_args()
    src = Path(a.quickstart).resolve()
    out = Path(a.out or src / "seeds").resolve()
    preset = PRESETS[a.preset]
    world, base = src / "world", src / "base"
    runs: dict[str, dict] = {}
    limit, suffix = preset.bootstrap_limit, ""
    if a.bootstrap_limit is not None:
        limit = None if a.bootstrap_limit == "all" else int(a.bootstrap_limit)
        suffix = f"_bootstrap{a.bootstrap_limit}"
    em_extra = {}
    if a.mstep_init is not None:
        em_extra["mstep_init"] = a.mstep_init
        suffix += f"_mstep{a.mstep_init}"

    def evaluate(q: Quickstart, name: str, policy: Path) -> dict:
        q.evaluate(f"eval_{name}", policy)
        return json.loads((q.out / "eval" / f"eval_{name}" / "results.json").read_text())["skillworld"]

    def ra3_run(q: Quickstart, name: str, seed: int, cost: float) -> dict:
        em = {"seed_everything": seed, "out_dir": str(q.out / name), "base_model": str(base), "wandb": None,
              "estep": {"init_args": {"thought_cost": cost, "init_seed": seed}},
              "data": {"init_args": {"train_files": [str(world / "midtrain.jsonl")], "batch_size": preset.batch_size,
                                     "seed": seed}},
              "em": {"rounds": preset.rounds, "estep_steps": preset.estep_steps, "mstep_steps": preset.mstep_budget // preset.rounds,
                     "bootstrap_limit": limit, "eval_source": None, **em_extra}}
        q.stage(name, ["em", "-c", str(CONFIGS / "ra3.yaml"), "-c", q.overrides(name, em), "--resume", "true"])
        state = json.loads((q.out / name / "em_state.json").read_text())
        summary = json.loads((q.out / name / "em_summary.json").read_text())
        return {**evaluate(q, name, Path(state["policy"])), "bootstrap_f1": summary[-1].get("bootstrap/boundary_f1"),
                "thoughts_per_program": summary[-1].get("bootstrap/thoughts_per_program")}

    for seed in a.seeds:
        if seed == 0 and a.reuse_quickstart and not suffix:
            em = json.loads((src / "ra3" / "em_summary.json").read_text())[-1]
            runs["ntp/seed0"] = json.loads((src / "eval" / "eval_ntp" / "results.json").read_text())["skillworld"]
            runs["ra3/seed0/c0.05"] = {**json.loads((src / "eval" / "eval_ra3" / "results.json").read_text())["skillworld"],
                                       "bootstrap_f1": em.get("bootstrap/boundary_f1"),
                                       "thoughts_per_program": em.get("bootstrap/thoughts_per_program")}
            continue
        q = Quickstart(str(out / f"seed{seed}"), a.preset, seed)
        q.world = world
        q.fit("ntp", "ntp.yaml", {"model": str(base), "export_dir": str(q.out / "ntp")},
              {"batch_size": preset.batch_size, "train_files": [str(world / "midtrain.jsonl")], "seed": seed},
              preset.mstep_budget)
        runs[f"ntp/seed{seed}"] = evaluate(q, "ntp", q.out / "ntp")
        runs[f"ra3/seed{seed}/c0.05"] = ra3_run(q, "ra3" + suffix, seed, 0.05)
    q = Quickstart(str(out / f"seed{a.seeds[0]}"), a.preset, a.seeds[0])
    q.world = world
    for cost in a.costs:
        runs[f"ra3/seed{a.seeds[0]}/c{cost:g}"] = ra3_run(q, f"ra3_c{cost:g}{suffix}", a.seeds[0], cost)

    def summary(prefix: str, key: str) -> str:
        values = [r[key] for name, r in runs.items() if name.startswith(prefix) and (prefix != "ra3" or name.endswith("c0.05"))]
        if len(values) < 2:
            return f"{100 * values[0]:.1f}" if values else "-"
        return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"

    ks = sorted({k for r in runs.values() for k in r if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    print(f"held-out, {len(a.seeds)} seeds (same base), mean ± std:")
    for model in ("ntp", "ra3"):
        print(f"  {model:4} " + "  ".join(f"{k} {summary(model, k)}" for k in ks))
    print("thought cost ablation (seed 0):")
    for name, r in runs.items():
        if name.startswith("ra3/") and f"seed{a.seeds[0]}/" in name:
            print(f"  {name:20} " + "  ".join(f"{k} {100 * r[k]:.1f}" for k in ks if k in r)
                  + f"  bootstrap F1 {r['bootstrap_f1'] or 0:.2f}  thoughts/program {r['thoughts_per_program'] or 0:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ra3_vs_ntp.json").write_text(json.dumps(runs, indent=1))
    print(f"results: {out / 'ra3_vs_ntp.json'}")


if __name__ == "__main__":
    main()
