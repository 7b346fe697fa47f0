"""Does a skill world reward abstractions? Base vs NTP vs oracle mid-training, held-out greedy pass@1.

RA3 can only beat NTP on a world where the *oracle* (M-step on the ground-truth commented programs) beats NTP;
this script measures that for one world configuration and classifies the oracle's failures::

    python benchmarks/world_probe.py --out /tmp/probe --world.style steps --world.heldout_fraction 0 \\
        --world.eval_min_chain 5 --world.eval_max_chain 6

Prints held-out greedy pass@1 of base / NTP / oracle and, for each failed oracle sample, whether its first
wrong line was a comment (wrong plan) or code after right comments (wrong action). Stages are ordinary ``ra3``
commands (the quickstart's), resumable: re-running skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import sys


from ra3.quickstart import Preset, Quickstart


def first_error(completion: str, row: dict, style: str = "full") -> str:
    """``comment`` if the first comment that differs from the ground truth comes before any code difference."""
    from ra3.datamodules.skillworld import with_comments

    truth = with_comments(row, style)["completion"].split("\n")
    got = completion.split("\n")
    for t, g in zip(truth, got):
        if t.strip() != g.strip():
            return "comment" if t.strip().startswith("#") or g.strip().startswith("#") else "code"
    return "length"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--pretrain_steps", type=int, default=500)
    p.add_argument("--mstep_steps", type=int, default=150)
    p.add_argument("--eval_limit", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args, world_args = p.parse_known_args(argv)
    q = Quickstart(args.out, "tiny", seed=args.seed)
    q.p = Preset({}, args.pretrain_steps, args.mstep_steps, 1, 0, None, 0, args.eval_limit, 1, [1], greedy=False)
    w, out = q.world, q.out
    q.stage("world", ["world", "--out", str(w), "--world.seed", str(args.seed), *world_args])
    q.fit("pretrain", "pretrain.yaml", {"tokenizer": str(w / "tokenizer"), "export_dir": str(out / "base")},
          {"train_files": [str(w / "pretrain.jsonl")]}, args.pretrain_steps, val=False)
    for name, train in (("ntp", "midtrain.jsonl"), ("oracle", "midtrain_oracle.jsonl")):
        q.fit(name, "ntp.yaml", {"model": str(out / "base"), "export_dir": str(out / name)},
              {"train_files": [str(w / train)]}, args.mstep_steps, val=False)
    results = {}
    for name in ("base", "ntp", "oracle"):
        q.stage(f"eval_{name}", ["evaluate", "--model", str(out / name), "--benchmark", "skillworld",
                                  "--source", f"skillworld={w / 'eval.jsonl'}", "--output_dir", str(out / "eval" / name),
                                  "--limit", str(args.eval_limit), "--max_new_tokens", "200"])
        results[name] = json.loads((out / "eval" / name / "results.json").read_text())["skillworld"]["pass@1"]
    rows = {r["task_id"]: r for r in map(json.loads, open(w / "eval.jsonl"))}
    samples = [json.loads(line) for line in open(out / "eval" / "oracle" / "samples.jsonl")]
    verdicts = [json.loads(line) for line in open(out / "eval" / "oracle" / "eval_results.jsonl")]
    style = json.loads((w / "world.json").read_text())["config"].get("comment_style", "full")
    kinds: dict[str, int] = {}
    for s, v in zip(samples, verdicts):
        if not v["passed"]:
            kind = first_error(s["completion"], rows[s["task_id"]], style)
            kinds[kind] = kinds.get(kind, 0) + 1
    summary = {"pass@1": results, "oracle_failures": kinds, "world_args": world_args}
    (out / "probe.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
