import json

import pytest
import torch

from ra3.modules.policy import PolicyModule
from ra3.rollout.latent import (CONTEXT, EXPERT, FORCED, MARKER, THOUGHT, LatentConfig, LatentRolloutEngine,
                                decision_logprobs, program_from_row)

from conftest import TINY_LLAMA


@pytest.fixture(scope="module")
def policy(world_dir):
    torch.manual_seed(0)
    return PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA)


@pytest.fixture(scope="module")
def programs(world_dir):
    rows = [json.loads(l) for l in open(world_dir / "midtrain.jsonl")][:3]
    return [program_from_row(r) for r in rows]


def _fresh_logprobs(model, rollout):
    with torch.no_grad():
        logp = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits.float().log_softmax(-1)
    return logp, logp[:, :-1].gather(-1, rollout.input_ids[:, 1:, None]).squeeze(-1)


def test_rollout_shapes_masks_and_texts(policy, programs):
    G = 3
    ro = LatentRolloutEngine(policy.model, policy.tokenizer).rollout(
        programs, LatentConfig(group_size=G, max_thought_tokens=5), torch.Generator().manual_seed(0))
    N, S = ro.input_ids.shape
    assert N == len(programs) * G and ro.token_logprobs.shape == (N, S) and ro.kinds.shape == (N, S)
    assert ro.n_thoughts.sum() > 0  # a random policy thinks often
    tok = policy.tokenizer
    for r in range(N):
        n = int(ro.attention_mask[r].sum())
        ids = ro.input_ids[r, :n].tolist()
        kinds = ro.kinds[r, :n]
        program = programs[r // G]
        plain = "".join(s.text for s in program.context + program.lines)
        # expert tokens are exactly the program's line tokens (+eos), in order, whatever was inserted
        expert_ids = [i for i, k in zip(ids, kinds.tolist()) if k == EXPERT]
        line_ids = [i for s in program.lines for i in tok(s.text, add_special_tokens=False)["input_ids"]]
        assert expert_ids == line_ids + [tok.eos_token_id]
        assert kinds[0] == CONTEXT and (kinds == MARKER).sum() == ro.n_thoughts[r]
        assert int(ro.latent_mask[r].sum()) == int((kinds == THOUGHT).sum())
        assert int(ro.decision_think[r].sum()) == ro.n_thoughts[r] <= 8
        # the text without its thought lines is the expert program
        kept = [l for l in ro.texts[r].split("\n") if not l.strip().startswith("#")]
        assert "\n".join(kept) == plain
        assert len(ro.thoughts[r]) == ro.n_thoughts[r]


def test_rollout_logprobs_equal_a_fresh_teacher_forced_pass(policy, programs):
    ro = LatentRolloutEngine(policy.model, policy.tokenizer).rollout(
        programs, LatentConfig(group_size=2, max_thought_tokens=6), torch.Generator().manual_seed(1))
    logp, fresh = _fresh_logprobs(policy.model, ro)
    real = ro.attention_mask[:, 1:].bool()
    torch.testing.assert_close(ro.token_logprobs[:, 1:][real], fresh[real], atol=1e-4, rtol=0)
    has = ro.decision_pos >= 0
    rows = torch.arange(ro.input_ids.shape[0])[:, None].expand_as(has)
    at = logp[rows[has], ro.decision_pos[has]]
    again = decision_logprobs(at, ro.decision_marker[has], ro.decision_expert[has], ro.decision_think[has], ro.alpha)
    torch.testing.assert_close(again, ro.decision_logprob[has], atol=1e-4, rtol=0)
    expert_sum = (fresh * (ro.kinds[:, 1:] == EXPERT)).sum(1)
    torch.testing.assert_close(ro.expert_logprob, expert_sum, atol=1e-3, rtol=0)


def test_alpha_one_produces_no_thoughts(policy, programs):
    ro = LatentRolloutEngine(policy.model, policy.tokenizer).rollout(
        programs, LatentConfig(group_size=2, alpha=1.0), torch.Generator().manual_seed(0))
    assert ro.n_thoughts.sum() == 0 and not ro.latent_mask.any()
    assert (ro.kinds[ro.attention_mask.bool()] != FORCED).all()


def test_caps_limit_thoughts_and_thought_length(policy, programs):
    ro = LatentRolloutEngine(policy.model, policy.tokenizer).rollout(
        programs, LatentConfig(group_size=4, max_thoughts=1, max_thought_tokens=2), torch.Generator().manual_seed(0))
    assert ro.n_thoughts.max() <= 1
    for r in range(ro.input_ids.shape[0]):
        assert int(ro.latent_mask[r].sum()) <= 2 * int(ro.n_thoughts[r])


def test_annotations_do_not_depend_on_the_batch(world_dir, tiny_model_dir):
    """Per-(program, sample) generators: a program's G annotations are the same alone or in a batch."""
    import json

    from transformers import AutoModelForCausalLM

    from ra3.modules.policy import load_tokenizer
    from ra3.rollout.latent import LatentConfig, LatentRolloutEngine, program_from_row

    rows = [json.loads(line) for line in open(world_dir / "midtrain.jsonl")][:3]
    engine = LatentRolloutEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), load_tokenizer(str(tiny_model_dir)))
    config = LatentConfig(group_size=3, max_thought_tokens=4)
    together = engine.rollout([program_from_row(r) for r in rows], config, seeds=[11, 12, 13])
    alone = engine.rollout([program_from_row(rows[2])], config, seeds=[13])
    assert together.texts[6:9] == alone.texts
    assert sum(len(t) for t in together.thoughts) > 0
