"""Bootstrapping: the gain filter keeps an annotation only where it beats the plain program."""

import json

import torch

from ra3.em import EStepModule

from conftest import TINY_LLAMA


def test_min_gain_keeps_only_annotations_that_beat_the_plain_program(world_dir):
    module = EStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, group_size=2,
                         max_thought_tokens=4, thought_cost=0.0, init_seed=0, reward_gain=True)
    module.eval()
    rows = [json.loads(line) for line in open(world_dir / "midtrain.jsonl")][:6]

    def run(min_gain):
        with torch.no_grad():
            return module.annotate(rows, 2, torch.Generator().manual_seed(0), "best", min_gain)

    free = run(None)
    assert any(r["thoughts"] for r in free)  # a random policy thinks somewhere
    plain_all = run(float("inf"))  # nothing beats +inf: every program stays as it was
    assert [r["text"] for r in plain_all] == [r["text"] for r in rows] and all(r["kept_plain"] for r in plain_all)
    filtered = run(0.0)  # same seed, same rollouts: each row is either the free annotation or the plain program
    for f, a, row in zip(filtered, free, rows):
        gain = a["estep_reward"]  # reward_gain: the kept annotation's log-likelihood gain over the plain program
        if f.get("kept_plain"):
            assert f["text"] == row["text"] and f["thoughts"] == [] and gain <= 0
        else:
            assert f["text"] == a["text"] and a["thoughts"] and gain > 0


class EveryOtherThoughtMalformed:
    """A thought format whose rule marks every second thought of the run as malformed (deterministic)."""

    def __new__(cls):
        from ra3.em.latent import ThoughtFormat

        class Format(ThoughtFormat):
            calls = 0

            def malformed(self, text, hit_max_tokens, following="", context=""):
                Format.calls += 1
                return Format.calls % 2 == 0

        return Format()


def test_malformed_thoughts_are_dropped_or_avoided_at_bootstrap(world_dir):
    from ra3.em.latent import render
    from ra3.em.latent import program_from_row

    rows = [json.loads(line) for line in open(world_dir / "midtrain.jsonl")][:8]

    def run(mode, drop):
        module = EStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, group_size=4,
                             max_thought_tokens=4, init_seed=0, thought_format=EveryOtherThoughtMalformed())
        module.eval()
        with torch.no_grad():
            return module.annotate(rows, 4, torch.Generator().manual_seed(0), mode, drop_malformed=drop), module

    free, module = run("best", False)
    assert any(t["malformed"] for r in free for t in r["thoughts"])
    for r, row in zip(free, rows):  # render() writes an annotation as the rollout did
        thoughts = [(t["line"], t["text"], t["malformed"]) for t in r["thoughts"]]
        assert render(program_from_row(row), thoughts, module.thought_format) == r["text"]
    dropped, _ = run("best", True)  # same seed: the same picks, minus their malformed thoughts
    for d, f, row in zip(dropped, free, rows):
        assert [t for t in f["thoughts"] if not t["malformed"]] == d["thoughts"]
        assert [t["text"] for t in f["thoughts"] if t["malformed"]] == [t["text"] for t in d.get("dropped", [])]
        kept = [(t["line"], t["text"], False) for t in d["thoughts"]]
        assert d["text"] == render(program_from_row(row), kept, module.thought_format)
        assert sum(line.lstrip().startswith("#") for line in d["text"].splitlines()) == len(d["thoughts"])
    formed, _ = run("best_well_formed", False)
    assert sum(t["malformed"] for r in formed for t in r["thoughts"]) < sum(t["malformed"] for r in free for t in r["thoughts"])
