"""Seeded sampling: exact in distribution, independent of batching."""

import pytest
import torch

from ra3.rollout.hf_engine import HFEngine
from ra3.rollout.sampling import SamplingConfig, SeededSampling, row_generators


def test_gumbel_sampling_matches_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    sampler = SeededSampling(row_generators([3], 1), temperature=0.7, top_p=1.0)
    counts = torch.bincount(torch.stack([sampler(None, logits).argmax() for _ in range(20000)]), minlength=5)
    torch.testing.assert_close(counts / counts.sum(), torch.softmax(logits[0] / 0.7, -1), atol=0.015, rtol=0)


def test_top_p_cut_is_applied_before_sampling():
    logits = torch.tensor([[3.0, 2.9, -5.0, -5.0]])
    sampler = SeededSampling(row_generators([0], 1), temperature=1.0, top_p=0.9)
    assert {int(sampler(None, logits).argmax()) for _ in range(500)} == {0, 1}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_seeded_completions_do_not_depend_on_batching(tiny_model_dir, device):
    """Also on CUDA, where the per-row generators (and so the noise) live on the GPU."""
    from transformers import AutoModelForCausalLM

    from ra3.hf import load_tokenizer

    engine = HFEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(device), load_tokenizer(str(tiny_model_dir)))
    prompts = ["def solve(xs):", 'def solve(xs):\n    """Sort the values."""']
    batched = engine.generate(prompts, 2, SamplingConfig(max_new_tokens=10, temperature=1.0, stop=[]), seeds=[5, 9])
    alone = engine.generate(prompts[1:], 2, SamplingConfig(max_new_tokens=10, temperature=1.0, stop=[], batch_size=1), seeds=[9])
    assert [c.token_ids for c in batched[1]] == [c.token_ids for c in alone[0]]
    assert batched[0][0].token_ids != batched[0][1].token_ids  # the G samples differ
