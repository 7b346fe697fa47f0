"""The study's report: ``results.json``, ``report.md``, ``per_task.csv`` and PNG plots from the stages' outputs.

Intervals: "t" = 95 % Student-t interval over bases of the per-base values (for differences: of the per-base
paired differences); "boot" = a two-level bootstrap (bases, then tasks within a base; paired tasks), 95 %
percentile interval. Every pass rate is the mean over tasks of the fraction of a task's samples that pass.
"""

from __future__ import annotations

import csv
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from ra3.data.io import peak_rss_of_stages
from ra3.experiments.stats import bootstrap_difference, curve_auc, mean_ci, paired_difference, steps_to_reach, trailing_mean

ARMS = ("ntp", "oracle", "ra3")
SETS = ("all", "A", "B")  # eval.jsonl = eval_a (new instances of the RL compositions) + eval_b (unseen anywhere)


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


def _task_set(task_id: str) -> str:
    return "A" if "/eval_a/" in task_id else "B" if "/eval_b/" in task_id else "all"


def per_task(out: Path, name: str) -> dict[str, float] | None:
    """``{task_id: fraction of its samples that passed}`` of one evaluation stage, or None if it did not run."""
    path = out / "eval" / name / "eval_results.jsonl"
    if not path.exists():
        return None
    counts: dict[str, list[int]] = {}
    for line in open(path):
        r = json.loads(line)
        if r["status"] == "sandbox_error":
            continue
        c = counts.setdefault(r["task_id"], [0, 0])
        c[0] += 1
        c[1] += int(r["passed"])
    return {t: p / n for t, (n, p) in counts.items()}


def _subset(scores: dict[str, float], which: str) -> dict[str, float]:
    return scores if which == "all" else {t: v for t, v in scores.items() if _task_set(t) == which}


def _mean(scores: dict[str, float]) -> float:
    return statistics.fmean(scores.values()) if scores else float("nan")


def epochs(study) -> dict[str, float]:
    """Passes over its mid-training corpus each arm's M-step makes (same steps × batch × max_length tokens for
    every arm; corpus tokens counted with the world's tokenizer, + BOS/EOS per program); RA3: mean over bases."""
    from ra3.hf import load_tokenizer

    tok_dir = study.world / "tokenizer"
    if not tok_dir.exists():
        return {}
    tok = load_tokenizer(str(tok_dir))
    budget = study.p.mstep_steps * study.p.batch_size * 512

    def passes(path: Path) -> float | None:
        if not path.exists():
            return None
        n = sum(len(tok(json.loads(line)["text"])["input_ids"]) + 2 for line in open(path))
        return budget / n

    out = {arm: passes(study.world / f) for arm, f in (("ntp", "midtrain.jsonl"), ("oracle", "midtrain_oracle.jsonl"))}
    ra3 = [e for s in study.bases if (e := passes(study.out / f"b{s}" / "ra3" / "round_0" / "bootstrapped.jsonl"))]
    out["ra3"] = statistics.fmean(ra3) if ra3 else None
    return {k: v for k, v in out.items() if v is not None}


RLVR_DIAGNOSTICS = ("entropy", "completion_length", "truncated_frac", "zero_std_frac", "clip_frac", "sampler_logp_gap",
                    "prompts_sampled")


def model_names(study) -> list[str]:
    """Every evaluated model: base, the arms, then RLVR from each arm at each scored checkpoint and at the end."""
    steps = study.rlvr_checkpoint_steps()
    return (["base", *ARMS] + [a for a in study.p.arms if a not in ARMS]  # the diagnostic arms, in the study's order
            + [f"rlvr_step{n}_{a}" for n in steps for a in ARMS] + [f"rlvr_{a}" for a in ARMS])


def thought_accuracy_of_bootstraps(study) -> dict[str, Any]:
    """Per base, the exact-thought rates of RA3's bootstrapped corpus (``stats.json`` of each round's bootstrap)."""
    out = {}
    for s in study.bases:
        for path in sorted((study.out / f"b{s}" / "ra3").glob("round_*/stats.json")):
            acc = json.loads(path.read_text()).get("thought_accuracy")
            if acc:
                out.setdefault(f"b{s}", {})[path.parent.name] = acc
    return out


def rlvr_diagnostics(out: Path, bases: list[str]) -> dict[str, Any]:
    """Per init and logged RLVR metric: the mean over bases of the first and the last quarter of the run."""
    res: dict[str, Any] = {}
    for a in ARMS:
        for metric in RLVR_DIAGNOSTICS:
            first, last = [], []
            for b in bases:
                c = [v for _, v in rlvr_curve(out, f"{b}_rlvr_{a}", f"rlvr/{metric}")]
                if c:
                    q = max(1, len(c) // 4)
                    first.append(statistics.fmean(c[:q]))
                    last.append(statistics.fmean(c[-q:]))
            if first:
                res.setdefault(a, {})[metric] = {"first": statistics.fmean(first), "last": statistics.fmean(last)}
    return res


def collect(study) -> dict[str, Any]:
    out, bases = study.out, [f"b{s}" for s in study.bases]
    models = model_names(study)
    scores = {m: {b: s for b in bases if (s := per_task(out, f"{b}_eval_{m}")) is not None} for m in models}
    res: dict[str, Any] = {"bases": bases, "preset": study.preset, "world": study.world_config,
                           "settings": {k: v for k, v in vars(study.p).items() if k != "world"}, "pass@1": {}, "paired": {}}
    for m in models:
        res["pass@1"][m] = {}
        for which in SETS:
            per_base = {b: _mean(sub) for b, s in scores[m].items() if (sub := _subset(s, which))}
            if per_base:  # one base: a mean without a t interval
                res["pass@1"][m][which] = {"per_base": per_base, **mean_ci(list(per_base.values()))}
    pairs = [("oracle", "ntp"), ("ra3", "ntp"), ("oracle", "ra3"), ("rlvr_ra3", "rlvr_ntp"), ("rlvr_oracle", "rlvr_ntp"),
             *((f"rlvr_{a}", a) for a in ARMS)]  # what RLVR itself adds to each init
    if "ra3_corrected" in models:
        pairs += [("ra3_corrected", "ra3"), ("ra3_corrected", "ntp"), ("oracle", "ra3_corrected")]
    if "oracle_noisy" in models:
        pairs += [("oracle", "oracle_noisy"), ("oracle_noisy", "ra3")]
    for a, b_ in pairs:
        res["paired"][f"{a}-{b_}"] = {}
        for which in SETS:
            sa = {b: sub for b, s in scores[a].items() if (sub := _subset(s, which))}
            sb = {b: sub for b, s in scores[b_].items() if (sub := _subset(s, which))}
            if set(sa) & set(sb):  # one base: no t interval; the bootstrap is then over tasks only
                t = paired_difference({b: _mean(v) for b, v in sa.items()}, {b: _mean(v) for b, v in sb.items()})
                res["paired"][f"{a}-{b_}"][which] = {"t": t, "boot": bootstrap_difference(sa, sb)}
    o, r = res["paired"].get("oracle-ntp", {}).get("all"), res["paired"].get("ra3-ntp", {}).get("all")
    if o and r and o["t"]["lo"] > 0:  # only meaningful where the positive control works
        res["ra3_share_of_oracle_gain"] = r["t"]["mean"] / o["t"]["mean"]
    # per-task table: mean pass rate over bases per arm
    tasks = sorted({t for m in models for s in scores[m].values() for t in s})
    res["per_task"] = [{"task_id": t, "set": _task_set(t),
                        **{m: statistics.fmean(s[t] for s in scores[m].values() if t in s) for m in models
                           if any(t in s for s in scores[m].values())}} for t in tasks]
    res["rlvr_diagnostics"] = rlvr_diagnostics(out, bases)
    res["thought_accuracy"] = thought_accuracy_of_bootstraps(study)
    # RLVR curves
    curves = {a: {b: c for b in bases if (c := rlvr_curve(out, f"{b}_rlvr_{a}"))} for a in ARMS}
    res["rlvr_curves"] = curves
    rl: dict[str, Any] = {"step0_reward": {}, "auc": {}, "final_reward": {}}
    for a in ARMS:
        if len(curves[a]) >= 2:
            rl["step0_reward"][a] = mean_ci([c[0][1] for c in curves[a].values()])
            rl["auc"][a] = {"per_base": {b: curve_auc(c) for b, c in curves[a].items()},
                            **mean_ci([curve_auc(c) for c in curves[a].values()])}
    for a in ("ra3", "oracle"):
        both = sorted(set(curves[a]) & set(curves["ntp"]))
        if len(both) < 2:
            continue
        rl[f"auc_{a}-ntp"] = paired_difference(rl["auc"][a]["per_base"], rl["auc"]["ntp"]["per_base"])
        ratios, unreached = {}, []
        for b in both:
            ntp = curves["ntp"][b]
            window = max(2, len(ntp) // 4)
            target = statistics.fmean(v for _, v in ntp[-window:])
            reached_ntp = steps_to_reach(ntp, target, window) or len(ntp)
            reached = steps_to_reach(curves[a][b], target, window)
            if reached is None:
                unreached.append(b)
                reached = len(curves[a][b])  # counted as the whole run (a lower bound on its ratio)
            ratios[b] = reached / reached_ntp
        rl[f"steps_ratio_{a}/ntp"] = {"per_base": ratios, "unreached": unreached, **mean_ci(list(ratios.values())),
                                      "rule": "steps until the trailing mean (window = run/4) reaches NTP-init's final "
                                              "reward (mean of its last window), over NTP-init's own steps to get there"}
    res["rlvr"] = rl
    lrs: dict[str, Any] = {}
    for arm in (a for a in study.p.arms if a in ARMS):
        own = study.p.learning_rates[arm]
        for lr in sorted({own, *study.p.lr_grid}):
            name = f"eval_{arm}" if lr == own else f"eval_{arm}_lr{lr:g}"
            per_base = {b: _mean(s) for b in bases if (s := per_task(out, f"{b}_{name}")) is not None}
            if per_base:
                lrs.setdefault(arm, {})[f"{lr:g}"] = statistics.fmean(per_base.values())
    if study.p.lr_grid:
        res["lr_choice"] = {arm: {"pass@1": v, "best": max(v, key=v.get)} for arm, v in lrs.items()}
    res["epochs"] = epochs(study)
    res["stage_seconds"] = {m.stem: json.loads(m.read_text())["seconds"] for m in sorted((out / "stages").glob("*.done"))}
    return res


def _fmt(c: dict | None, scale: float = 100, digits: int = 1) -> str:
    if not c:
        return "-"
    if c.get("half") != c.get("half"):  # nan: one base
        return f"{scale * c['mean']:.{digits}f}"
    return f"{scale * c['mean']:.{digits}f} [{scale * c['lo']:.{digits}f}, {scale * c['hi']:.{digits}f}]"


def plots(out: Path, res: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(out / name)

    names = [m for m in ("base", *ARMS) if "all" in res["pass@1"].get(m, {})]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for j, (stage, label) in enumerate((("", "mid-trained"), ("rlvr_", "after RLVR"))):
        cells = [(i, res["pass@1"].get(stage + m, {}).get("all")) for i, m in enumerate(names) if m != "base" or not stage]
        cells = [(i + 0.38 * j, c) for i, c in cells if c]
        if not cells:
            continue
        ax.bar([x for x, _ in cells], [100 * c["mean"] for _, c in cells], 0.36, capsize=3, label=label,
               yerr=[100 * c["half"] if c["half"] == c["half"] else 0 for _, c in cells])
        for x, c in cells:  # one dot per base
            ax.plot([x] * len(c["per_base"]), [100 * v for v in c["per_base"].values()], "k.", ms=3)
    ax.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax.set(title="Held-out pass@1 (mean, 95 % t CI over bases; dots = bases)", ylabel="pass@1 (%)", ylim=(0, 100))
    ax.legend(fontsize=8)
    save(fig, "passk.png")

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for a, curves in res["rlvr_curves"].items():
        if not curves:
            continue
        n = min(len(c) for c in curves.values())
        window = max(2, n // 4)
        smooth = [trailing_mean([v for _, v in c[:n]], window) for c in curves.values()]
        mean = [statistics.fmean(col) for col in zip(*smooth)]
        lo, hi = [min(col) for col in zip(*smooth)], [max(col) for col in zip(*smooth)]
        steps = list(range(n))
        ax.plot(steps, mean, label=f"RLVR from {a}")
        ax.fill_between(steps, lo, hi, alpha=0.2)
    ax.set(title="RLVR reward on the RL split (trailing mean; band = min..max over bases)", xlabel="step",
           ylabel="mean unit-test reward")
    ax.legend(fontsize=8)
    save(fig, "rlvr_reward.png")
    return made


def write_report(study, wall_s: float) -> dict[str, Any]:
    out = study.out
    res = collect(study)
    res.update(date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores",
               wall_s=wall_s, peak_rss_mb=peak_rss_of_stages(out / "stages"))
    made = plots(out, res)
    with open(out / "per_task.csv", "w", newline="") as f:
        cols = ["task_id", "set", *(m for m in model_names(study) if res["pass@1"].get(m))]
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(res["per_task"])
    (out / "results.json").write_text(json.dumps({k: v for k, v in res.items() if k != "per_task"}, indent=1))
    n = len(res["bases"])
    L = [f"# ra3 study ({study.preset} preset: {n} base{'s' * (n != 1)}, {res['date']}, {res['machine']})", "",
         f"Wall-clock of this invocation {wall_s / 60:.1f} min; peak RSS of any stage {res['peak_rss_mb']:.0f} MiB; "
         f"stage time summed {sum(res['stage_seconds'].values()) / 60:.1f} min.", ""]
    if n == 1:
        L += ["**One base.** Its figures are one pre-training seed's: the paired differences' bootstrap intervals resample "
              "the evaluation tasks, so they say how sure this base's comparison is, not whether another seed would agree "
              "(`ra3 study` runs five bases and gives t intervals over them).", ""]
    L += [f"## Held-out pass@1 (%) on `{study.p.eval_split}`, mean [95 % t CI over bases]", "",
          "A = new instances of the RL split's compositions, B = compositions in neither mid-training nor RL.", "",
          "| model | all | A | B |", "|---|---|---|---|"]
    for m in model_names(study):
        if res["pass@1"].get(m):
            L.append(f"| {m} | " + " | ".join(_fmt(res["pass@1"][m].get(w)) for w in SETS) + " |")
    if res.get("epochs"):
        L += ["", "M-step passes over each arm's corpus (same token budget): "
              + ", ".join(f"{a} {e:.1f}" for a, e in res["epochs"].items()) + "."]
    L += ["", "## Paired differences (points), mean [95 % CI]: t over bases / bootstrap over bases and tasks", "",
          "| difference | all (t) | all (boot) | A (t) | B (t) | CI excludes 0 (t, all) |", "|---|---|---|---|---|---|"]
    for name, d in res["paired"].items():
        if "all" in d:
            t = d["all"]["t"]
            excl = "n/a (1 base)" if t["n"] < 2 else "yes" if t["lo"] > 0 or t["hi"] < 0 else "no"
            L.append(f"| {name} | {_fmt(t)} | {_fmt(d['all']['boot'])} | {_fmt(d.get('A', {}).get('t'))} | "
                     f"{_fmt(d.get('B', {}).get('t'))} | {excl} |")
    if "ra3_share_of_oracle_gain" in res:
        L += ["", f"RA3's share of the oracle's gain over NTP (means): {100 * res['ra3_share_of_oracle_gain']:.0f} %."]
    rl = res["rlvr"]
    if rl.get("auc"):
        L += ["", "## RLVR on the RL split (compositions A)", "", "| init | reward at step 0 | reward AUC (mean/step) |",
              "|---|---|---|"]
        for a in ARMS:
            if a in rl["auc"]:
                L.append(f"| {a} | {_fmt(rl['step0_reward'][a], 1, 2)} | {_fmt(rl['auc'][a], 1, 2)} |")
        for a in ("ra3", "oracle"):
            if f"auc_{a}-ntp" in rl:
                r = rl[f"steps_ratio_{a}/ntp"]
                L += ["", f"- AUC {a} − ntp: {_fmt(rl[f'auc_{a}-ntp'], 1, 3)}; steps to NTP-init's final reward, {a}/ntp: "
                      f"{_fmt(r, 1, 2)} (not reached on {len(r['unreached'])} of {n} bases; counted as the whole run)."]
    if res["thought_accuracy"]:
        L += ["", "## RA3's bootstrapped thoughts against the world's (exact text at the true boundary)", "",
              "| base | round | exact | routine | plain step | numbered step (wrong number) | missing | spurious/program |",
              "|---|---|---|---|---|---|---|---|"]
        for b, rounds in res["thought_accuracy"].items():
            for rnd, acc in rounds.items():
                c = acc["by_category"]
                pct = lambda d, k="exact": f"{100 * d[k]:.1f}" if d.get("n") else "-"  # noqa: E731
                missing = sum(d.get("missing", 0) * d["n"] for d in c.values()) / max(1, acc["n"])
                L.append(f"| {b} | {rnd} | {100 * acc['exact']:.1f} | {pct(c['routine'])} | {pct(c['plain_step'])} | "
                         f"{pct(c['numbered_step'])} ({pct(c['numbered_step'], 'wrong_number')}) | {100 * missing:.1f} | "
                         f"{acc['spurious_per_row']:.2f} |")
    if res["rlvr_diagnostics"]:
        L += ["", "RLVR's logged diagnostics, mean over bases of the run's first → last quarter:", "",
              "| init | " + " | ".join(RLVR_DIAGNOSTICS) + " |", "|---|" + "---|" * len(RLVR_DIAGNOSTICS)]
        for a, d in res["rlvr_diagnostics"].items():
            L.append(f"| {a} | " + " | ".join(f"{d[m]['first']:.3g} → {d[m]['last']:.3g}" if m in d else "-"
                                              for m in RLVR_DIAGNOSTICS) + " |")
    if "lr_choice" in res:
        L += ["", f"## Learning rate per arm, pass@1 on `{study.p.eval_split}` (mean over bases)", ""]
        for arm, c in res["lr_choice"].items():
            L.append(f"- {arm}: " + ", ".join(f"{lr} → {100 * v:.1f}" for lr, v in c["pass@1"].items()) + f"; best {c['best']}")
    L += ["", f"Per-task paired table: `per_task.csv` ({len(res['per_task'])} tasks, mean pass rate over bases).", ""]
    L += [f"![{p.stem}]({p.name})" for p in made]
    (out / "report.md").write_text("\n".join(L) + "\n")
    return res
