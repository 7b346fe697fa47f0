"""Which RLVR recipe for the study? RLVR from the pilot's NTP and RA3 models, one setting varied, scored on val.

The pilot (``ra3 study --preset pilot --out PILOT --first_seed 100``) leaves mid-trained NTP and RA3 policies on
its bases. For each value of one study setting (default: ``rlvr_beta``, the KL weight) this copies the pilot's
folder and runs the study's RLVR stages there (``rlvr: true``, only the NTP and RA3 arms), so every variant starts
from the same policies and differs only in that setting::

    python benchmarks/rlvr_probe.py --pilot /tmp/pilot --out /tmp/rlvr_probe --values 0 0.04 0.2

Prints, per value: val pass@1 before RLVR -> after, per init (mean over bases; the per-base numbers in
``OUT/probe.json``), and the reward AUC on the RL split. The choice is made on val.jsonl, never on eval.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from ra3.report import rlvr_curve
from ra3.stats import curve_auc
from ra3.study_report import per_task


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pilot", required=True, help="a finished pilot study folder")
    p.add_argument("--out", required=True)
    p.add_argument("--setting", default="rlvr_beta", help="the study setting to vary")
    p.add_argument("--values", nargs="+", required=True, help="its values (YAML)")
    p.add_argument("--preset", default="pilot", help="the pilot's preset (`test` for a quick check of this script)")
    p.add_argument("--set", nargs="*", default=[], help="more study settings for every variant (KEY=VALUE)")
    a = p.parse_args(argv)
    pilot, out = Path(a.pilot), Path(a.out)
    if not (pilot / "stages" / "world.done").exists():
        sys.exit(f"rlvr_probe: {pilot} is not a finished pilot study (no stages/world.done)")
    seeds = sorted(int(d.name[1:]) for d in pilot.glob("b*") if (d / "base").is_dir())
    if not seeds:
        sys.exit(f"rlvr_probe: no pre-trained bases in {pilot}")
    table = {}
    for value in a.values:
        run = out / f"{a.setting}_{value}"
        if not run.exists():  # the pilot's mid-training, without any RLVR it may have run
            shutil.copytree(pilot, run, ignore=shutil.ignore_patterns("runs", "*rlvr*"))
        cmd = [sys.executable, "-m", "ra3.cli", "study", "--preset", a.preset, "--out", str(run), "--first_seed",
               str(seeds[0]), "--bases", str(len(seeds)), "--set", "rlvr=true", "arms=[ntp, ra3]", "mid_rlvr_eval=[]",
               f"{a.setting}={value}", *a.set]
        print("==", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        bases = sorted({d.name for d in run.glob("b*") if d.is_dir()})
        row = {}
        for arm in ("ntp", "ra3"):
            before = {b: statistics.fmean(s.values()) for b in bases if (s := per_task(run, f"{b}_eval_{arm}"))}
            after = {b: statistics.fmean(s.values()) for b in bases if (s := per_task(run, f"{b}_eval_rlvr_{arm}"))}
            auc = {b: curve_auc(c) for b in bases if (c := rlvr_curve(run, f"{b}_rlvr_{arm}"))}
            row[arm] = {"before": before, "after": after, "auc": auc}
        table[value] = row
    (out / "probe.json").write_text(json.dumps(table, indent=1))
    print(f"\n{a.setting:>12} | init | val pass@1 before -> after RLVR (mean over bases) | RL reward AUC")
    for value, row in table.items():
        for arm, r in row.items():
            mean = lambda d: 100 * statistics.fmean(d.values()) if d else float("nan")  # noqa: E731
            print(f"{value:>12} | {arm:>4} | {mean(r['before']):5.1f} -> {mean(r['after']):5.1f} "
                  f"(per base: {', '.join(f'{100 * v:.1f}' for v in r['after'].values())}) | {mean(r['auc']) / 100:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
