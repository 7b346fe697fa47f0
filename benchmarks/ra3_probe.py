"""Which E-step/EM settings for RA3? Re-run the pilot's RA3 arm with each candidate's settings, scored on val.

The pilot (``ra3 study --preset pilot --out PILOT --first_seed 100 --bases 2 --set 'lr_grid=[]'``) leaves its
bases, NTP and oracle arms and the current RA3 arm. Each candidate is a list of study settings (``em.ARG``,
``estep.ARG``, ``estep_steps``, ``rounds``, ...); for each, this copies the pilot without its RA3 arm and runs
the study there, so the candidate's RA3 differs from the pilot's only in those settings (bases, NTP, oracle and
their evaluations are shared). Everything is scored on ``val.jsonl``, never on ``eval.jsonl``::

    python benchmarks/ra3_probe.py --pilot /tmp/pilot --out /tmp/ra3_probe \\
        --candidate same_programs em.bootstrap_scope=all \\
        --candidate grounded "estep.thought_format={class_path: ra3.em.latent.ThoughtFormat, init_args: {grounded_numbers: true}}" em.bootstrap_drop_malformed=true

**Decision rule** (fixed before the runs): a candidate is *better* than the pilot's RA3 when its RA3 − NTP (val
pass@1, mean over bases) is at least ``--min_gain`` points (default 2) above the pilot RA3's and the two-level
bootstrap interval of (candidate RA3 − pilot RA3) lies above 0. Among better candidates, the choice is the one
with the largest RA3 − NTP; a combination is chosen over its parts only if it beats each part by ``--min_gain``.

Prints per candidate: val pass@1 of its RA3 per base, RA3 − NTP, share of the oracle's gain, candidate − pilot
RA3 [bootstrap CI], the bootstrapped corpus's exact-thought rates (overall, numbered steps), minutes; writes
``OUT/probe.json``.
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

from ra3.experiments.stats import bootstrap_difference
from ra3.experiments.report import per_task


def scores(run: Path, bases: list[str], arm: str) -> dict[str, dict[str, float]]:
    return {b: s for b in bases if (s := per_task(run, f"{b}_eval_{arm}"))}


def exact_rates(run: Path, bases: list[str]) -> dict[str, float]:
    rates = [json.loads((run / b / "ra3" / "round_0" / "stats.json").read_text()).get("thought_accuracy") for b in bases
             if (run / b / "ra3" / "round_0" / "stats.json").exists()]
    rates = [r for r in rates if r]
    if not rates:
        return {}
    return {"exact": statistics.fmean(r["exact"] for r in rates),
            "numbered_exact": statistics.fmean(r["by_category"]["numbered_step"].get("exact", 0) for r in rates)}


def summary(run: Path, bases: list[str], pilot_ra3: dict | None) -> dict:
    mean = lambda s: 100 * statistics.fmean(statistics.fmean(v.values()) for v in s.values())  # noqa: E731
    ra3, ntp, oracle = (scores(run, bases, a) for a in ("ra3", "ntp", "oracle"))
    out = {"ra3": {b: 100 * statistics.fmean(v.values()) for b, v in ra3.items()}, "ra3-ntp": mean(ra3) - mean(ntp),
           "share": (mean(ra3) - mean(ntp)) / (mean(oracle) - mean(ntp)), **exact_rates(run, bases)}
    if pilot_ra3 is not None:
        d = bootstrap_difference(ra3, pilot_ra3)
        out["vs_pilot"] = {k: 100 * d[k] for k in ("mean", "lo", "hi")}
    return out


def choose(table: dict, min_gain: float = 2.0) -> tuple[list[str], str | None]:
    """(the candidates better than the pilot's RA3, the choice) by the rule in the module docstring. A candidate whose
    settings contain another better candidate's (a combination of it) is chosen over it only if its RA3 − NTP is
    ``min_gain`` higher."""
    base = table["pilot"]["ra3-ntp"]
    better = [n for n, r in table.items() if (v := r.get("vs_pilot")) and r["ra3-ntp"] >= base + min_gain and v["lo"] > 0]

    def beats_its_parts(name: str) -> bool:
        parts = [o for o in better if o != name and set(table[o]["settings"]) < set(table[name]["settings"])]
        return all(table[name]["ra3-ntp"] >= table[o]["ra3-ntp"] + min_gain for o in parts)

    eligible = [n for n in better if beats_its_parts(n)]
    return better, max(eligible, key=lambda n: table[n]["ra3-ntp"]) if eligible else None


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pilot", required=True, help="a finished pilot study folder")
    p.add_argument("--out", required=True)
    p.add_argument("--candidate", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                   help="a name and its study settings (repeat for each candidate)")
    p.add_argument("--preset", default="pilot")
    p.add_argument("--min_gain", type=float, default=2.0)
    a = p.parse_args(argv)
    pilot, out = Path(a.pilot), Path(a.out)
    seeds = sorted(int(d.name[1:]) for d in pilot.glob("b*") if (d / "base").is_dir())
    if not (pilot / "stages" / "world.done").exists() or not seeds:
        sys.exit(f"ra3_probe: {pilot} is not a finished pilot study")
    bases = [f"b{s}" for s in seeds]
    pilot_ra3 = scores(pilot, bases, "ra3")
    table = {"pilot": summary(pilot, bases, None)}
    for name, *settings in a.candidate:
        run = out / name
        if not run.exists():  # everything but the RA3 arm (and what was built from it)
            shutil.copytree(pilot, run, ignore=shutil.ignore_patterns(
                "ra3", "ra3_*", "oracle_noisy*", "*rlvr*", "*_ra3*", "*oracle_noisy*", "runs", "results.json", "report.md"))
        cmd = [sys.executable, "-m", "ra3.cli", "study", "--preset", a.preset, "--out", str(run), "--first_seed",
               str(seeds[0]), "--bases", str(len(seeds)), "--set", "lr_grid=[]", "arms=[ntp, oracle, ra3]", *settings]
        print("==", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        table[name] = {**summary(run, bases, pilot_ra3), "settings": settings, "minutes": (time.time() - t0) / 60}
        (out / "probe.json").write_text(json.dumps(table, indent=1))
    better, choice = choose(table, a.min_gain)
    print(f"\n{'candidate':>16} | RA3 val pass@1 per base | RA3 − NTP | share of oracle gain | − pilot RA3 [boot CI] | "
          "exact (numbered) | better?")
    for name, r in table.items():
        v = r.get("vs_pilot")
        diff = f"{v['mean']:+.1f} [{v['lo']:+.1f}, {v['hi']:+.1f}]" if v else "-"
        exact = f"{100 * r['exact']:.1f} ({100 * r['numbered_exact']:.1f})" if "exact" in r else "-"
        print(f"{name:>16} | {', '.join(f'{x:.1f}' for x in r['ra3'].values())} | {r['ra3-ntp']:+.1f} | "
              f"{r['share']:.2f} | {diff} | {exact} | {'yes' if name in better else 'no'}")
    print(f"\nbetter than the pilot's RA3 by the rule: {', '.join(better) or 'none'}; chosen: {choice or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1:])
