"""``HFEngine``: sampling with transformers' ``model.generate`` (no Lightning)."""

from __future__ import annotations

import torch

from ra3.rollout.sampling import (Completion, OnDone, SamplingConfig, SeededSampling, encode_prompt, make_completion,
                                  row_generators)


class HFEngine:
    """Sampling with ``model.generate`` (KV cache, left padding), ``n`` samples per prompt; a batch runs until its
    longest row stops (``ra3.rollout.ragged_engine.RaggedEngine`` retires rows early and gives the same completions).
    ``cache_implementation``: passed to ``generate`` (e.g. ``static``)."""

    def __init__(self, model, tokenizer, cache_implementation: str | None = None):
        self.model, self.tokenizer, self.cache_implementation = model, tokenizer, cache_implementation

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int = 1, config: SamplingConfig | None = None,
                 seeds: list[int] | None = None, on_done: OnDone | None = None) -> list[list[Completion]]:
        """``n`` completions per prompt. With ``seeds`` (one per prompt) every completion is drawn from its own
        generator, so it does not depend on batching (nor on the rank it runs on). ``on_done``: after each batch."""
        config = config or SamplingConfig()
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        gens = row_generators(seeds, n, device) if seeds is not None and config.temperature > 0 else None
        flat = [(i, encode_prompt(tok, p)) for i, p in enumerate(prompts) for _ in range(n)]
        order = sorted(range(len(flat)), key=lambda j: -len(flat[j][1]))  # similar lengths share a batch
        out: list[list[Completion]] = [[] for _ in prompts]
        results: dict[int, Completion] = {}
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(order), config.batch_size):
                chunk = order[start : start + config.batch_size]
                seqs = [flat[j][1] for j in chunk]
                width = max(map(len, seqs))
                input_ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
                attention = torch.zeros((len(seqs), width), dtype=torch.long)
                for b, s in enumerate(seqs):
                    input_ids[b, width - len(s):] = torch.tensor(s)
                    attention[b, width - len(s):] = 1
                kwargs = dict(max_new_tokens=config.max_new_tokens, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, use_cache=True)
                if self.cache_implementation:
                    kwargs["cache_implementation"] = self.cache_implementation
                if gens is not None:
                    from transformers import LogitsProcessorList

                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None, logits_processor=LogitsProcessorList(
                        [SeededSampling([gens[j] for j in chunk], config.temperature, config.top_p)]))
                elif config.temperature > 0:
                    kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
                else:
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                if config.stop:
                    kwargs.update(stop_strings=config.stop, tokenizer=tok)
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
                for b, j in enumerate(chunk):
                    results[j] = make_completion(tok, generated[b, width:].tolist(), config.stop)
                    if on_done is not None:
                        on_done(flat[j][0], j % n, results[j])
        finally:
            model.train(was_training)
        for j, (i, _) in enumerate(flat):
            out[i].append(results[j])
        return out
