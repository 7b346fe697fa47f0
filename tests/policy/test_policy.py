import pytest
import torch

from ra3.errors import Ra3Error
from ra3.em import MStepModule
from ra3.policy import PolicyModule
from ra3.hf import load_tokenizer

from conftest import TINY_LLAMA


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_packed_forward_never_attends_across_documents(world_dir, attn):
    """sdpa/eager: dense block-diagonal mask; flex_attention: BlockMask (transformers' own packing detection from
    position ids failed this test with transformers 5.24: documents after the first saw earlier ones)."""
    module = MStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA, attn_implementation=attn).eval()
    torch.manual_seed(0)
    a, b = torch.randint(3, 300, (1, 11)), torch.randint(3, 300, (1, 6))
    packed = torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], 1)
    position_ids = torch.tensor([list(range(11)) + list(range(6)) + [0, 0, 0]])
    doc_ids = torch.tensor([[0] * 11 + [1] * 6 + [-1] * 3])
    def logits(ids, **kw):
        return module.forward_logits(module.model, ids, torch.ones_like(ids, dtype=torch.bool), **kw)

    with torch.no_grad():
        lp = logits(packed, position_ids=position_ids, doc_ids=doc_ids)
        la, lb = logits(a), logits(b)
    torch.testing.assert_close(lp[:11], la, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp[11:17], lb, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # one shared doc id lets the second document see the first: the mask is what separates them
        leaky = logits(packed, position_ids=position_ids, doc_ids=torch.zeros_like(doc_ids))
    assert (leaky[11:17] - lb).abs().max() > 1e-3


def test_packed_and_padded_batches_give_the_same_loss(world_dir, tokenizer):
    from ra3.data.datamodule import Example, TokenCollator
    from ra3.data.segments import encode_segments, program_segments

    import json
    rows = [json.loads(l) for l in open(world_dir / "midtrain.jsonl")][:6]
    examples = [Example(*encode_segments(tokenizer, program_segments(text=r["text"]))) for r in rows]
    module = MStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA).eval()
    packed = TokenCollator(tokenizer.pad_token_id, "all", 1024, packing=True)([examples])
    padded = TokenCollator(tokenizer.pad_token_id, "all", 1024, packing=False)(examples)
    with torch.no_grad():
        nll_p, n_p = module.token_nll(packed)
        nll_d, n_d = module.token_nll(padded)
    assert n_p == n_d
    torch.testing.assert_close(nll_p, nll_d, rtol=1e-5, atol=1e-4)


def test_unknown_model_path_is_a_one_line_error(world_dir):
    with pytest.raises(Ra3Error, match=r"model path './no/such/model' is not a directory") as e:
        PolicyModule(model="./no/such/model", tokenizer=str(world_dir / "tokenizer"))
    assert "\n" not in str(e.value)
    with pytest.raises(Ra3Error, match=r"cannot load (model|tokenizer) 'nobody-ra3/no-such-model'") as e:
        PolicyModule(model="nobody-ra3/no-such-model")
    assert "\n" not in str(e.value)


def test_unknown_model_config_key_is_a_one_line_error(world_dir):
    with pytest.raises(Ra3Error, match="LlamaConfig does not define: hidden_sise"):
        PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config={"model_type": "llama", "hidden_sise": 8})
    with pytest.raises(Ra3Error, match="model_type"):
        PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config={"hidden_size": 8})


def test_tokenizer_without_pad_token_gets_eos_as_pad(world_dir, tmp_path, caplog):
    tok = load_tokenizer(str(world_dir / "tokenizer"))
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    import logging
    with caplog.at_level(logging.INFO):
        fixed = load_tokenizer(str(tmp_path / "nopad"))
    assert fixed.pad_token == fixed.eos_token
    assert "has no pad token" in caplog.text


def test_export_is_loadable_with_plain_transformers(world_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module = PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA)
    module.export(tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    tok = AutoTokenizer.from_pretrained(tmp_path / "export")
    ids = tok("def solve(xs):", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, module.model(ids).logits)


def test_weights_load_in_float32_for_full_fine_tuning_whatever_the_checkpoint_stores(tiny_model_dir, tmp_path):
    """transformers 5 loads a checkpoint in its stored dtype (bf16 for most hub models); full fine-tuning keeps fp32
    master weights unless told otherwise, a peft base keeps the stored dtype."""
    from transformers import AutoModelForCausalLM

    bf16_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(bf16_dir)
    assert AutoModelForCausalLM.from_pretrained(bf16_dir).dtype == torch.bfloat16  # what a plain load gives

    def dtypes(module):
        return {p.dtype for p in module.model.parameters()}

    assert dtypes(MStepModule(model=str(bf16_dir))) == {torch.float32}
    assert dtypes(MStepModule(model=str(bf16_dir), weights_dtype="auto")) == {torch.bfloat16}
    assert dtypes(MStepModule(model=str(tiny_model_dir), weights_dtype="bfloat16")) == {torch.bfloat16}
    lora = MStepModule(model=str(bf16_dir), peft={"r": 2})
    frozen = {p.dtype for p in lora.model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16} and {p.dtype for p in lora.model.parameters() if p.requires_grad} == {torch.float32}
    with pytest.raises(Ra3Error, match="weights_dtype must be one of auto, bfloat16, float16, float32 or null"):
        MStepModule(model=str(tiny_model_dir), weights_dtype="fp8")
