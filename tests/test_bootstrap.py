"""Bootstrapping: the gain filter keeps an annotation only where it beats the plain program."""

import json

import torch

from ra3.bootstrap import annotate
from ra3.modules import EStepModule

from conftest import TINY_LLAMA


def test_min_gain_keeps_only_annotations_that_beat_the_plain_program(world_dir):
    module = EStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, group_size=2,
                         max_thought_tokens=4, thought_cost=0.0, init_seed=0, reward_gain=True)
    module.eval()
    rows = [json.loads(line) for line in open(world_dir / "midtrain.jsonl")][:6]

    def run(min_gain):
        with torch.no_grad():
            return annotate(module, rows, "best", 2, torch.Generator().manual_seed(0), min_gain)

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
