"""RaggedEngine: the same completions as HFEngine (greedy and seeded), whatever the slot count; rows retire early."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from ra3.errors import Ra3Error
from ra3.hf import load_tokenizer
from ra3.rollout.hf_engine import HFEngine
from ra3.rollout.sampling import SamplingConfig, UniformStream, encode_prompt, row_generators
from ra3.rollout import make_engine
from ra3.rollout.ragged_engine import RaggedEngine, SlotNoise


@pytest.fixture(scope="module")
def setup(tiny_model_dir, world_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [json.loads(line)["prompt"] for line in open(world_dir / "rl.jsonl")][:5]
    return model, load_tokenizer(str(tiny_model_dir)), prompts


def _key(completions):
    return [[(c.text, c.token_ids, c.finished, c.ended_by_eos) for c in cs] for cs in completions]


# "e" and " " stop a random model's completions after a few tokens, at different lengths per row: the stop-string
# check, early retirement and refills are all exercised
@pytest.mark.parametrize("temperature,seeds,stop", [(0.0, None, ["e"]), (1.0, [3, 1, 4, 1, 5], [" "]), (1.0, [9, 2, 6, 5, 3], [])])
def test_same_completions_as_hf_generate_for_any_slot_count(setup, temperature, seeds, stop):
    model, tok, prompts = setup
    config = SamplingConfig(max_new_tokens=20, temperature=temperature, stop=stop, batch_size=64)
    reference = _key(HFEngine(model, tok).generate(prompts, 3, config, seeds=seeds))
    for slots in (1, 4, 32):
        assert _key(RaggedEngine(model, tok, slots=slots).generate(prompts, 3, config, seeds=seeds)) == reference, slots
    if stop:
        assert any(c[2] and not c[3] for cs in reference for c in cs)  # some rows really ended on a stop string


def test_compiled_decoding_steps_give_the_same_completions(setup):
    """``compile=True`` (every step after the first as one compiled forward over every slot, new rows' prompts
    included; ~1e-5 from the eager log-probs) gives the same completions as the eager engine here, greedy and
    seeded, with rows retiring and refilling."""
    model, tok, prompts = setup
    for temperature, seeds in ((0.0, None), (1.0, [3, 1, 4, 1, 5])):
        config = SamplingConfig(max_new_tokens=20, temperature=temperature, stop=[" "], batch_size=64)
        eager = _key(RaggedEngine(model, tok, slots=4).generate(prompts, 3, config, seeds=seeds))
        compiled = RaggedEngine(model, tok, slots=4, compile=True)
        assert _key(compiled.generate(prompts, 3, config, seeds=seeds)) == eager
        assert compiled.stats["compiled_steps"] == compiled.stats["steps"] - 1


def test_rows_retire_early_and_slots_refill(setup):
    """15 rows on 4 slots, most stopping after a few tokens: the steps are far fewer than padded batches of 4
    running to their longest row would need, and every prompt is prefilled once."""
    model, tok, prompts = setup
    engine = RaggedEngine(model, tok, slots=4)
    out = engine.generate(prompts, 3, SamplingConfig(max_new_tokens=30, temperature=1.0, stop=[" "]), seeds=list(range(5)))
    lengths = [len(c.token_ids) for cs in out for c in cs]
    padded_steps = sum(30 for _ in range(0, 15, 4))  # generate() pads a batch of 4 until its longest row is done
    assert engine.stats["steps"] < padded_steps / 2 and min(lengths) < 10
    assert engine.stats["prefill_tokens"] == 3 * sum(len(encode_prompt(tok, p)) for p in prompts)


def test_restores_the_models_mode_and_attention(setup):
    model, tok, prompts = setup
    model.train()
    RaggedEngine(model, tok).generate(prompts[:1], 1, SamplingConfig(max_new_tokens=3))
    assert model.training and model.config._attn_implementation == "sdpa"
    model.eval()


def test_engine_names():
    assert not make_engine("ragged", torch.nn.Linear(1, 1), None).compile
    assert make_engine("ragged_compiled", torch.nn.Linear(1, 1), None).compile
    with pytest.raises(Ra3Error, match="engine must be one of ragged, ragged_compiled, hf"):
        make_engine("fast", None, None)


def test_slot_noise_is_each_rows_own_stream_across_blocks_and_slots():
    """A (slots, block, V) bank gives every row ``UniformStream``'s numbers (``HFEngine``'s), here with blocks of 3
    tokens so rows cross block ends, and a slot handed from one row to the next."""
    vocab = (1 << 18) // 3  # blocks of 3 tokens
    noise = SlotNoise(row_generators([7, 8], 2), n_slots=2)
    streams = [UniformStream(g) for g in row_generators([7, 8], 2)]
    noise.assign(0, 0)
    noise.assign(1, 1)
    plan = [[0, 1]] * 2 + [[0]] * 3 + [[0, 1]] * 2  # slot 1's row 1 ends after 2 draws; row 3 takes it at draw 6
    for k, slots in enumerate(plan):
        if k == 5:
            noise.assign(1, 3)
        rows = [0 if s == 0 else (1 if k < 5 else 3) for s in slots]
        expected = torch.stack([streams[r].next(vocab) for r in rows])
        assert torch.equal(noise.draw(slots, vocab), expected)
