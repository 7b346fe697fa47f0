"""RaggedCache's packed forward on several architectures: log-probs equal a fresh forward; for the plain decoder
stacks (``PLAIN_DECODERS``) the lean forward gives bit-identical results to the model's own forward."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ra3.rollout import ragged_cache as ragged
from ra3.errors import Ra3Error
from ra3.rollout.ragged_cache import RaggedCache, ragged_attention

ARCHS = {  # grouped-query attention (2 KV heads for 4 query heads) wherever the architecture has it
    "llama": dict(num_key_value_heads=2), "qwen2": dict(num_key_value_heads=2), "mistral": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2), "gemma": dict(num_key_value_heads=2, head_dim=8), "gpt2": None,
}


def _model(model_type):
    extra = ARCHS[model_type]
    kwargs = dict(vocab_size=50, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2) if extra is None else dict(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kwargs)).eval()


def _feed(model, lean: bool, monkeypatch):
    """Rows of 5, 9, 3 and 7 tokens fed 3 at a time over 4 feeds (rows drop out as they end; chunk widths differ),
    then 3 more tokens each, one per row per feed in row order (as most decoding steps are); returns the per-row
    token log-probs and whether the lean forward ran."""
    if not lean:
        monkeypatch.setattr(ragged, "_plain_decoder", lambda m: None)
    gen = torch.Generator().manual_seed(0)
    heads = [torch.randint(3, 50, (n,), generator=gen).tolist() for n in (5, 9, 3, 7)]
    tails = [torch.randint(3, 50, (3,), generator=gen).tolist() for _ in heads]
    cache = RaggedCache(model, len(heads), capacity=4)
    lps = [[] for _ in heads]
    with ragged_attention(model):
        feeds = [{r: s[3 * step: 3 * step + 3] for r, s in enumerate(heads) if s[3 * step: 3 * step + 3]} for step in range(4)]
        for chunks in feeds + [{r: [t[k]] for r, t in enumerate(tails)} for k in range(3)]:
            for r, (lp, _) in cache.feed(chunks).items():
                lps[r] += lp
    assert cache.in_order == 3
    seqs = [h + t for h, t in zip(heads, tails)]
    monkeypatch.undo()
    return seqs, lps, cache.decoder is not None


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_packed_feeds_equal_a_fresh_forward_and_the_lean_forward_equals_the_models(model_type, monkeypatch):
    model = _model(model_type)
    seqs, lean, used_lean = _feed(model, True, monkeypatch)
    _, generic, _ = _feed(model, False, monkeypatch)
    assert used_lean == (type(model).__name__ in ragged.PLAIN_DECODERS)
    assert lean == generic  # bit-identical: the same modules in the same order
    for seq, lp in zip(seqs, lean):
        ids = torch.tensor([seq])
        with torch.no_grad():
            fresh = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lp[1:]), fresh, atol=1e-5, rtol=0)


def test_feeds_outside_the_ragged_attention_context_are_refused():
    model = _model("llama")
    with pytest.raises(RuntimeError, match="inside `with ragged_attention"):
        RaggedCache(model, 1, 4).feed({0: [3, 4]})


def _decode_vs_feed(model):
    """Rows of 5, 9, 3 and 7 tokens fed, then 8 sampler steps on a cache of capacity 10 (it grows), one token per
    row except: row 2 is left out of step 2 and restarts from one token in step 3, after the weights change in place;
    step 5 brings new prompts of 6 and 14 tokens to rows 1 and 2 (longer than the cache was), step 7 a lone one of 4
    to row 3 and one of a single token to row 1. One cache takes every step through ``feed`` (rows reset by hand),
    the other through ``decode`` (rows left out are emptied). Returns both caches' log-probs after each step, on the
    rows fed, and the decoding cache."""
    gen = torch.Generator().manual_seed(1)

    def draw(n):
        return torch.randint(3, 50, (n,), generator=gen).tolist()

    heads = [draw(n) for n in (5, 9, 3, 7)]
    steps = [({r: draw(1)[0] for r in rows}, {r: draw(n) for r, n in prompts.items()}) for rows, prompts in (
        ((0, 1, 2, 3), {}), ((0, 1, 3), {}), ((0, 1, 2, 3), {}), ((0, 1, 2, 3), {}),
        ((0, 3), {1: 6, 2: 14}), ((0, 1, 2, 3), {}), ((0, 2), {1: 1, 3: 4}), ((0, 1, 2, 3), {}))]
    by_feed, by_decode = RaggedCache(model, 4, capacity=10), RaggedCache(model, 4, capacity=10)
    out = []
    with ragged_attention(model):
        for cache in (by_feed, by_decode):
            cache.feed(dict(enumerate(heads)), token_logprobs=False)
        for k, (tokens, prompts) in enumerate(steps):
            for r in [2] * (k == 2) + list(prompts):
                by_feed.reset(r)
            if k == 2:
                with torch.no_grad():  # an optimizer step between two decodes: the compiled step must see it
                    for p in model.parameters():
                        p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.device))
            by_feed.feed({**{r: [t] for r, t in tokens.items()}, **prompts}, token_logprobs=False)
            by_decode.decode(tokens, prompts)
            fed = sorted([*tokens, *prompts])
            out.append((by_feed.last_logp[fed].clone(), by_decode.last_logp[fed].clone()))
            assert by_decode.lengths[fed].tolist() == by_feed.lengths[fed].tolist()
    return out, by_decode


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_decode_steps_match_packed_feeds(device):
    model = _model("llama").to(device)  # grouped-query attention
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        out, cache = _decode_vs_feed(model)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert cache.compiled == 8 and cache.kv.capacity >= 20
    for by_feed, by_decode in out:
        torch.testing.assert_close(by_decode, by_feed, atol=1e-5, rtol=0)


def test_decode_without_a_plain_decoder_is_feed():
    out, cache = _decode_vs_feed(_model("gpt2"))
    assert cache.compiled == 0
    for by_feed, by_decode in out:
        assert torch.equal(by_decode, by_feed)


def test_decode_under_peft_is_feed():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    out, cache = _decode_vs_feed(model)
    assert cache.decoder is not None and cache.compiled == 0
    for by_feed, by_decode in out:
        assert torch.equal(by_decode, by_feed)


def test_a_failing_compile_is_one_clear_error(monkeypatch):
    def broken(*args):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(ragged, "compiled_decode_step", lambda: broken)
    model = _model("llama")
    cache = RaggedCache(model, 2, capacity=8)
    with ragged_attention(model):
        cache.feed({0: [5, 6], 1: [7]}, token_logprobs=False)
        with pytest.raises(Ra3Error, match="compile'd decoding step failed .*InvalidCxxCompiler.*'ragged' is the same"):
            cache.decode({0: 3, 1: 4})
