"""Does a skill world reward abstractions? NTP vs oracle mid-training on one base, held-out pass@1 on val.jsonl.

RA3 can only beat NTP on a world where the *oracle* (M-step on the ground-truth commented programs) beats NTP;
this script measures that for one world configuration and classifies the oracle's failures::

    python benchmarks/world_probe.py --out /tmp/probe --world.style steps --world.min_chain 3

It is ``ra3 study --preset pilot`` with one base, the arms ``ntp`` and ``oracle`` and the world overrides given
(resumable: re-running skips finished stages). Prints val pass@1 of base / NTP / oracle and, for each failed oracle
sample, whether its first wrong line was a comment (wrong plan) or code after right comments (wrong action).
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from ra3.experiments.study import Study


def first_error(completion: str, row: dict, style: str = "full") -> str:
    """``comment`` if the first comment that differs from the ground truth comes before any code difference."""
    from ra3.data.skillworld import with_comments

    truth = with_comments(row, style)["completion"].split("\n")
    got = completion.split("\n")
    for t, g in zip(truth, got):
        if t.strip() != g.strip():
            return "comment" if t.strip().startswith("#") or g.strip().startswith("#") else "code"
    return "length"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="pilot", help="the study preset whose sizes are used (test: CI)")
    p.add_argument("--pretrain_steps", type=int, default=None, help="default: the preset's")
    p.add_argument("--mstep_steps", type=int, default=None, help="default: the preset's")
    p.add_argument("--eval_limit", type=int, default=None, help="score only the first N val tasks")
    p.add_argument("--seed", type=int, default=100, help="the base's pre-training seed")
    args, rest = p.parse_known_args(argv)
    if len(rest) % 2 or any(not k.startswith("--world.") for k in rest[::2]):
        p.error(f"world overrides are --world.KEY VALUE pairs, got {' '.join(rest)}")
    world = {k[len("--world."):]: yaml.safe_load(v) for k, v in zip(rest[::2], rest[1::2])}
    sizes = {k: v for k in ("pretrain_steps", "mstep_steps", "eval_limit") if (v := getattr(args, k)) is not None}
    study = Study(args.out, args.preset, bases=1, first_seed=args.seed, world=world,
                  settings={"arms": ["ntp", "oracle"], "lr_grid": [], "rlvr": False, "eval_split": "val.jsonl",
                            "n_samples": 1, "k": [1], **sizes})
    study.run()
    out, b = study.out, f"b{args.seed}"
    results = {name: json.loads((out / "eval" / f"{b}_eval_{name}" / "results.json").read_text())["skillworld"]["pass@1"]
               for name in ("base", "ntp", "oracle")}
    w = study.world
    rows = {r["task_id"]: r for r in map(json.loads, open(w / "val.jsonl"))}
    samples = [json.loads(line) for line in open(out / "eval" / f"{b}_eval_oracle" / "samples.jsonl")]
    verdicts = [json.loads(line) for line in open(out / "eval" / f"{b}_eval_oracle" / "eval_results.jsonl")]
    style = json.loads((w / "world.json").read_text())["config"].get("comment_style", "full")
    kinds: dict[str, int] = {}
    for s, v in zip(samples, verdicts):
        if not v["passed"]:
            kind = first_error(s["completion"], rows[s["task_id"]], style)
            kinds[kind] = kinds.get(kind, 0) + 1
    summary = {"pass@1": results, "oracle_failures": kinds, "world": world}
    (out / "probe.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
