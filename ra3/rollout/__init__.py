"""Samplers (no Lightning): ``RaggedEngine`` (continuous batching over a ragged KV cache; the default),
``HFEngine`` (``model.generate``), ``VLLMEngine``; ``make_engine`` picks one by name."""

ENGINES = ("ragged", "ragged_compiled", "hf")


def make_engine(name: str, model, tokenizer):
    """The sampler named ``name``: ``hf`` (``HFEngine``), ``ragged`` (``RaggedEngine``) or ``ragged_compiled``
    (``RaggedEngine(compile=True)``)."""
    if name in ("ragged", "ragged_compiled"):
        from ra3.rollout.ragged_engine import RaggedEngine

        return RaggedEngine(model, tokenizer, compile=name == "ragged_compiled")
    if name == "hf":
        from ra3.rollout.hf_engine import HFEngine

        return HFEngine(model, tokenizer)
    from ra3.errors import Ra3Error

    raise Ra3Error(f"engine must be one of {', '.join(ENGINES)}; got {name!r}")
