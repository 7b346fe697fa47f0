import json

import pytest
import torch

from ra3.policy.module import PolicyModule
from ra3.em.latent import (CONTEXT, EXPERT, FORCED, MARKER, THOUGHT, LatentConfig, LatentRolloutEngine, ThoughtFormat,
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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_rollout_logprobs_equal_a_fresh_teacher_forced_pass(policy, programs, device):
    """The ragged cache (4-D mask under sdpa) gives the log-probs of one fresh teacher-forced forward."""
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    model = policy.model.to(device)
    try:
        ro = LatentRolloutEngine(model, policy.tokenizer).rollout(
            programs, LatentConfig(group_size=2, max_thought_tokens=6), torch.Generator().manual_seed(1))
        logp, fresh = _fresh_logprobs(model, ro.to(device))
    finally:
        policy.model.to("cpu")
        torch.backends.cuda.matmul.allow_tf32 = tf32
    ro, logp, fresh = ro.to("cpu"), logp.cpu(), fresh.cpu()
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


@pytest.mark.parametrize("marker", ["#", "# ->"])
def test_annotations_do_not_depend_on_the_batch(world_dir, tiny_model_dir, marker):
    """Per-(program, sample) generators: a program's G annotations are the same alone or in a batch — also with a
    multi-token thought head, which can wait a step to be fed with other rows' lines."""
    import json

    from transformers import AutoModelForCausalLM

    from ra3.hf import load_tokenizer
    from ra3.em.latent import LatentConfig, LatentRolloutEngine, ThoughtFormat, program_from_row

    rows = [json.loads(line) for line in open(world_dir / "midtrain.jsonl")][:3]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = LatentRolloutEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, ThoughtFormat(marker))
    line = engine._line(program_from_row(rows[0]).lines[0])
    assert len(line.marker) == 1 if marker == "#" else len(line.marker) > 1
    config = LatentConfig(group_size=3, max_thought_tokens=4)
    together = engine.rollout([program_from_row(r) for r in rows], config, seeds=[11, 12, 13])
    alone = engine.rollout([program_from_row(rows[2])], config, seeds=[13])
    assert together.texts[6:9] == alone.texts
    assert sum(len(t) for t in together.thoughts) > 0


def test_thoughts_use_only_the_tokenizers_ids_when_the_model_vocab_is_padded(world_dir, programs):
    """Qwen2.5-style padded embeddings (model vocab > tokenizer): a random policy puts most mass on the extra ids;
    thoughts are still drawn from ids the tokenizer has (failed before with an IndexError)."""
    tok_size = len(PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA).tokenizer)
    padded = PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config={**TINY_LLAMA, "vocab_size": 4 * tok_size})
    ro = LatentRolloutEngine(padded.model, padded.tokenizer).rollout(
        programs, LatentConfig(group_size=2, max_thought_tokens=4), torch.Generator().manual_seed(0))
    assert ro.n_thoughts.sum() > 0 and int(ro.input_ids.max()) < tok_size


@pytest.mark.parametrize("arch", [dict(model_type="llama", attn_implementation="eager"),
                                  dict(model_type="qwen2", attn_implementation="sdpa"),
                                  dict(model_type="llama", attn_implementation="flash_attention_2")])
def test_rollout_logprobs_on_other_architectures_and_attention(world_dir, programs, arch):
    """The ragged cache's 4-D mask as an additive float mask (eager), another architecture (Qwen2), and an
    implementation that cannot take it (switched to sdpa for the rollout, then restored)."""
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    torch.manual_seed(0)
    policy = PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config=dict(cfg, model_type=arch["model_type"]))
    model = policy.model
    model.config._attn_implementation = arch["attn_implementation"]
    ro = LatentRolloutEngine(model, policy.tokenizer).rollout(
        programs, LatentConfig(group_size=2, max_thought_tokens=6), torch.Generator().manual_seed(1))
    assert model.config._attn_implementation == arch["attn_implementation"]
    if arch["attn_implementation"] == "flash_attention_2":
        model.config._attn_implementation = "sdpa"
    _, fresh = _fresh_logprobs(model, ro)
    real = ro.attention_mask[:, 1:].bool()
    assert ro.n_thoughts.sum() > 0
    torch.testing.assert_close(ro.token_logprobs[:, 1:][real], fresh[real], atol=1e-4, rtol=0)


def test_ragged_cache_matches_a_full_forward_for_any_feed_pattern(policy):
    """Rows fed different chunk lengths, some rows skipped, attention over a subset (gathered K/V) and over all
    rows (zero queries for the rows not fed), rows rewound to a probe inside their last chunk (speculation rolled back), and buffers
    grown past their first capacity: every returned log-prob equals a teacher-forced pass over the sequences
    kept."""
    from ra3.rollout.ragged_cache import RaggedCache, ragged_attention

    model = policy.model.eval()
    gen = torch.Generator().manual_seed(0)
    V, n_rows = model.config.vocab_size, 6
    cache = RaggedCache(model, n_rows, capacity=4)
    seqs, lps = [[] for _ in range(n_rows)], [[] for _ in range(n_rows)]
    rewound = 0
    with ragged_attention(model):
        for step in range(16):
            chunks, probes = {}, {}
            for r in range(n_rows):
                width = int(torch.randint(1, 6, (), generator=gen)) if step else 3
                if step % 2 == 0 and (step == 0 or r % 3 != step % 3) or r == step % n_rows:
                    chunks[r] = torch.randint(3, V, (width,), generator=gen).tolist()
                    probes[r] = [int(torch.randint(0, width, (), generator=gen))]
            for r, (lp, probe) in cache.feed(chunks, probes).items():
                assert probe.shape == (1, V)
                keep = probes[r][0] + 1 if step and r % 2 else len(chunks[r])
                seqs[r] += chunks[r][:keep]
                lps[r] += lp[:keep]
                if keep < len(chunks[r]):
                    cache.rewind(r, len(seqs[r]), probe[0])
                    rewound += 1
    assert cache.kv.capacity > 4 and cache.lengths.tolist() == [len(s) for s in seqs] and rewound > 5
    assert min(cache.groups.values()) > 0  # attention ran over every row (zero queries) and over gathered rows
    for r in range(n_rows):
        ids = torch.tensor([seqs[r]])
        with torch.no_grad():
            fresh = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lps[r][1:]), fresh, atol=1e-4, rtol=0)


def test_buckets_minimise_padding_plus_overhead():
    from itertools import combinations

    from ra3.rollout.ragged_cache import buckets

    def cost(lengths, groups, overhead):
        return sum(overhead + len(g) * lengths[g[-1]] for g in groups)

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = sorted(torch.randint(1, 30, (7,), generator=gen).tolist())
        groups = buckets(lengths, overhead=16)
        assert [i for g in groups for i in g] == list(range(7))
        brute = min(cost(lengths, [range(a, b) for a, b in zip((0,) + cuts, cuts + (7,))], 16)
                    for k in range(7) for cuts in combinations(range(1, 7), k))
        assert cost(lengths, groups, 16) == brute


def test_lines_fed_ahead_change_nothing_but_the_number_of_forwards(policy, programs, monkeypatch):
    """Speculative acting (``lookahead``): the same annotations, decisions and log-probs as one line per
    forward, with fewer forwards; lines after a "think" are rolled back (counted)."""
    from ra3.rollout.ragged_cache import RaggedCache

    calls = {"forward": 0, "rewind": 0}
    forward, rewind = RaggedCache._forward, RaggedCache.rewind

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(RaggedCache, "_forward", count("forward", forward))
    monkeypatch.setattr(RaggedCache, "rewind", count("rewind", rewind))
    engine = LatentRolloutEngine(policy.model, policy.tokenizer)
    runs = {}
    for lookahead in (1, 8):
        calls.update(forward=0, rewind=0)
        config = LatentConfig(group_size=4, alpha=0.8, max_thought_tokens=4, lookahead=lookahead)
        runs[lookahead] = (engine.rollout(programs, config, seeds=[1, 2, 3]), dict(calls))
    (one, calls_one), (ahead, calls_ahead) = runs[1], runs[8]
    assert one.texts == ahead.texts and one.n_thoughts.sum() > 0
    assert torch.equal(one.decision_think, ahead.decision_think) and torch.equal(one.decision_pos, ahead.decision_pos)
    torch.testing.assert_close(ahead.token_logprobs, one.token_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ahead.decision_logprob, one.decision_logprob, atol=1e-5, rtol=0)
    assert calls_one["rewind"] == 0 and calls_ahead["rewind"] > 0
    assert calls_ahead["forward"] < calls_one["forward"]
    _, fresh = _fresh_logprobs(policy.model, ahead)
    real = ahead.attention_mask[:, 1:].bool()
    torch.testing.assert_close(ahead.token_logprobs[:, 1:][real], fresh[real], atol=1e-4, rtol=0)


class _NoLetterE(ThoughtFormat):
    """Malformed: any thought with an "e" (about half of a random policy's thoughts)."""

    def malformed(self, text, hit_max_tokens, following="", context=""):
        return "e" in text


def test_malformed_thoughts_are_drawn_again_and_the_log_probs_stay_the_policys(policy, programs):
    """``thought_retries``: a malformed thought is redrawn from the same point (tokens and cache rewound); the kept
    rollout's log-probs still equal one fresh teacher-forced pass, and far fewer thoughts end malformed."""
    engine = LatentRolloutEngine(policy.model, policy.tokenizer, _NoLetterE())
    runs = {n: engine.rollout(programs, LatentConfig(group_size=4, max_thought_tokens=4, thought_retries=n), seeds=[1, 2, 3])
            for n in (0, 6)}
    plain, retried = runs[0], runs[6]
    assert plain.n_redrawn.sum() == 0 and retried.n_redrawn.sum() > 0
    assert int(retried.n_redrawn.max()) <= 6 * int(retried.n_thoughts.max())
    rate = {n: float(ro.n_malformed.sum() / ro.n_thoughts.sum()) for n, ro in runs.items()}
    assert rate[6] < rate[0] / 2, rate
    kept = [text for th in retried.thoughts for _, text, bad in th if not bad]
    assert kept and all("e" not in text for text in kept)
    _, fresh = _fresh_logprobs(policy.model, retried)
    real = retried.attention_mask[:, 1:].bool()
    torch.testing.assert_close(retried.token_logprobs[:, 1:][real], fresh[real], atol=1e-4, rtol=0)
    assert int(retried.latent_mask.sum()) == int((retried.kinds == THOUGHT).sum())


def test_number_rules_of_the_thought_format():
    """``grounded_numbers``: a number the code after the thought lacks; ``numbers_from_prompt``: one the prompt lacks."""
    code, prompt = "    for i in range(len(xs)):\n        xs[i] = xs[i] + 7\n", '    """Add 7 to each value."""'
    plain, grounded, strict = ThoughtFormat(), ThoughtFormat(grounded_numbers=True), ThoughtFormat(numbers_from_prompt=True)
    for fmt in (plain, grounded, strict):
        assert not fmt.malformed("add 7 to each value", False, code, prompt) and not fmt.malformed("tidy the list", False, code, prompt)
        assert fmt.malformed("add 7 to each value", True, code, prompt) and fmt.malformed("  ", False, code, prompt)
    assert not plain.malformed("add 9 to each value", False, code, prompt)
    assert grounded.malformed("add 9 to each value", False, code, prompt) and strict.malformed("add 9 to each value", False, code, prompt)
    assert not grounded.malformed("add 1 to each value", False, code + "    xs = xs[1:]\n", prompt)  # 1 is in the code
    assert strict.malformed("add 1 to each value", False, code + "    xs = xs[1:]\n", prompt)  # ... not in the prompt
