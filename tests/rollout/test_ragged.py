"""RaggedCache's packed forward on several architectures: log-probs equal a fresh forward; for the plain decoder
stacks (``PLAIN_DECODERS``) the lean forward gives bit-identical results to the model's own forward."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ra3.rollout import ragged
from ra3.rollout.ragged import RaggedCache, ragged_attention

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
