"""The quickstart's report: ``results.json``, ``report.md`` and PNG plots from the stages' outputs."""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path
from typing import Any

from ra3.stats import steps_to_reach, trailing_mean

INITS = ("base", "ntp", "ra3", "oracle")


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def rlvr_curve(out: Path, run: str, metric: str = "rlvr/reward_mean") -> list[tuple[int, float]]:
    """``[(step, metric)]`` from the CSV log of RLVR run ``run`` (``<out>/csv/<run>/version_0``)."""
    path = out / "csv" / run / "version_0" / "metrics.csv"
    if not path.exists():
        return []
    points = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get(metric):
                points[int(row["step"])] = float(row[metric])
    return sorted(points.items())


def collect(out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"eval": {}, "eval_after_rlvr": {}, "rlvr_curves": {}, "stage_seconds": {}}
    for name in INITS:
        sampled = _json(out / "eval" / f"eval_{name}" / "results.json")
        greedy = _json(out / "eval" / f"eval_{name}_greedy" / "results.json")
        if sampled:
            results["eval"][name] = {**{k: v for k, v in sampled["skillworld"].items() if k.startswith("pass@")},
                                     "greedy_pass@1": greedy["skillworld"]["pass@1"] if greedy else None}
        after = _json(out / "eval" / f"eval_rlvr_{name}" / "results.json")
        after_greedy = _json(out / "eval" / f"eval_rlvr_{name}_greedy" / "results.json")
        if after:
            results["eval_after_rlvr"][name] = {**{k: v for k, v in after["skillworld"].items() if k.startswith("pass@")},
                                                "greedy_pass@1": after_greedy["skillworld"]["pass@1"] if after_greedy else None}
        curve = rlvr_curve(out, f"rlvr_{name}")
        if curve:
            results["rlvr_curves"][name] = curve
    for marker in sorted((out / "stages").glob("*.done")):
        results["stage_seconds"][marker.stem] = json.loads(marker.read_text())["seconds"]
    results["em_rounds"] = _json(out / "ra3" / "em_summary.json") or []
    steps = []
    if (out / "ra3" / "estep_steps.jsonl").exists():
        seen = {}
        for line in open(out / "ra3" / "estep_steps.jsonl"):
            row = json.loads(line)
            seen[(row["round"], row["step"])] = row
        steps = [seen[k] for k in sorted(seen)]
    results["estep_steps"] = steps
    ntp, ra3 = results["rlvr_curves"].get("ntp"), results["rlvr_curves"].get("ra3")
    if ntp and ra3:
        window = max(3, len(ntp) // 4)  # per-step rewards of a few prompts are noisy: compare smoothed curves
        target = sum(v for _, v in ntp[-window:]) / len(ntp[-window:])
        n = steps_to_reach(ra3, target, window)
        reached = ra3[n - 1][0] if n is not None else None  # the step at which it got there
        results["rlvr_ra3_steps_to_ntp_final"] = {"ntp_final_reward": target, "window": window, "ra3_steps": reached,
                                                  "ntp_steps": ntp[-1][0] + 1,
                                                  "ratio": (reached + 1) / (ntp[-1][0] + 1) if reached is not None else None}
    return results


def plots(out: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    steps = results["estep_steps"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    x = list(range(len(steps)))
    ax[0].plot(x, [s.get("reward_mean", float("nan")) for s in steps])
    ax[0].set(title="E-step reward", xlabel="E-step step (rounds concatenated)", ylabel="reward")
    ax[1].plot(x, [s.get("thought_rate", float("nan")) for s in steps], color="tab:orange")
    ax[1].set(title="E-step thought rate", xlabel="E-step step", ylabel="thoughts / boundary")
    save(fig, "estep.png")

    rounds = results["em_rounds"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["round"] for r in rounds], [r.get("bootstrap/boundary_f1", float("nan")) for r in rounds], "o-", label="bootstrap F1")
    ax.plot([r["round"] for r in rounds], [r.get("bootstrap/boundary_precision", float("nan")) for r in rounds], "s--", label="precision")
    ax.plot([r["round"] for r in rounds], [r.get("bootstrap/boundary_recall", float("nan")) for r in rounds], "^--", label="recall")
    ax.set(title="Latent boundaries vs true block starts", xlabel="EM round", ylim=(0, 1.05))
    ax.legend()
    save(fig, "boundary_f1.png")

    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [n for n in INITS if n in results["eval"]]
    keys = sorted({k for r in results["eval"].values() for k in r if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    width = 0.8 / max(1, 2 * len(keys))
    for j, key in enumerate(keys):
        before = [results["eval"][n].get(key, 0) for n in names]
        after = [results["eval_after_rlvr"].get(n, {}).get(key, float("nan")) for n in names]
        ax.bar([i + (2 * j) * width for i in range(len(names))], before, width, label=f"{key} mid-trained")
        ax.bar([i + (2 * j + 1) * width for i in range(len(names))], after, width, label=f"{key} after RLVR")
    ax.set_xticks([i + width * (len(keys) - 0.5) for i in range(len(names))], names)
    ax.set(title="Held-out skill-world pass@k", ylim=(0, 1))
    ax.legend(fontsize=8)
    save(fig, "passk.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, curve in results["rlvr_curves"].items():
        ax.plot([s for s, _ in curve], trailing_mean([v for _, v in curve], max(3, len(curve) // 4)), label=f"RLVR from {name}")
    ax.set(title="RLVR training reward (trailing mean)", xlabel="step", ylabel="mean unit-test reward")
    ax.legend()
    save(fig, "rlvr_reward.png")
    return made


def write_report(out: Path, preset: str, peak_rss_mb: float) -> dict[str, Any]:
    out = Path(out)
    results = collect(out)
    results.update(preset=preset, peak_rss_mb=peak_rss_mb, date=time.strftime("%Y-%m-%d"),
                   machine=f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores")
    made = plots(out, results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"# ra3 quickstart report ({preset} preset, {results['date']}, {results['machine']})", ""]
    keys = sorted({k for r in results["eval"].values() for k in r if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    if any(r.get("greedy_pass@1") is not None for r in results["eval"].values()):
        keys = ["greedy_pass@1"] + keys
    names = [k.replace("_", " ") for k in keys]
    lines += ["## Held-out skill world (unseen skill combinations, longer chains)", "",
              "| init | " + " | ".join(names) + " | after RLVR: " + " | ".join(names) + " |",
              "|---|" + "---|" * (2 * len(keys))]

    def fmt(v):
        return "-" if v is None else f"{100 * v:.1f}"

    for name in INITS:
        if name in results["eval"]:
            before, after = results["eval"][name], results["eval_after_rlvr"].get(name, {})
            lines.append(f"| {name} | " + " | ".join(fmt(before.get(k)) for k in keys)
                         + " | " + " | ".join(fmt(after.get(k)) for k in keys) + " |")
    lines += ["", "(oracle: the M-step on the ground-truth commented programs, same token budget; it is not RLVR-trained.)", ""]
    reach = results.get("rlvr_ra3_steps_to_ntp_final")
    if reach:
        what = (f"RLVR-from-NTP's final training reward ({reach['ntp_final_reward']:.3f}, mean of its last "
                f"{reach['window']} steps)")
        lines += [f"RLVR from RA3 reached {what} after {reach['ra3_steps'] + 1} of {reach['ntp_steps']} steps "
                  f"({reach['window']}-step trailing mean; ratio {reach['ratio']:.2f}; one seed — noisy)." if reach["ratio"] is not None
                  else f"RLVR from RA3 did not reach {what} within {reach['ntp_steps']} steps.", ""]
    for r in results["em_rounds"]:
        lines.append(f"- EM round {r['round']}: E-step reward {r.get('estep/reward_mean', float('nan')):.3f}, thought rate "
                     f"{r.get('estep/thought_rate', float('nan')):.3f}; bootstrap boundary F1 {r.get('bootstrap/boundary_f1', float('nan')):.3f} "
                     f"(P {r.get('bootstrap/boundary_precision', float('nan')):.2f}, R {r.get('bootstrap/boundary_recall', float('nan')):.2f}), "
                     f"thoughts naming the right skill {r.get('bootstrap/thought_names_skill', float('nan')):.2f}; "
                     f"held-out greedy pass@1 {r.get('heldout_pass@1', float('nan')):.3f}")
    total = results["stage_seconds"]
    lines += ["", f"Peak RSS of any stage: {peak_rss_mb:.0f} MiB. Stage times (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in total.items()) + f"; total {sum(total.values()):.0f}.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in made]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return results
