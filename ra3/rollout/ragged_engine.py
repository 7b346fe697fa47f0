"""``RaggedEngine``: continuous-batching sampling over a ragged KV cache (no Lightning).

``model.generate`` on a padded batch runs until its longest row stops: with RLVR's and evaluation's length
spread, most decoded tokens are padding work. Here a fixed number of slots stay busy: a row that ends (eos, a
stop string, its token cap) leaves at once and the next pending (prompt, sample) is prefilled into its slot.
Each step feeds every busy slot one chunk — a new row's whole prompt or a running row's last token — through
``RaggedCache`` in one packed forward (rows of any length in one cache, nothing padded), and the LM head runs on
each row's last position only.

Sampling matches ``HFEngine``: greedy is the argmax; with ``seeds`` every (prompt, sample) row draws from its own
generator (Gumbel-max, the same ``SeededSampling`` noise as ``HFEngine``), so completions depend neither on the
slot count nor on which rows share a step (in fp32; in bf16 the packed forward rounds differently from
``generate``'s padded batches, so a near tie can go the other way). Stop strings are checked on a decoded tail of the row's last tokens,
not by re-decoding the whole row. ``on_done`` hears of each completion as its row retires.

``compile=True`` runs every step after the first as one ``torch.compile``d forward over every slot, new rows'
prompts included (``RaggedCache.decode``): not bit-identical (~1e-5), and the first steps compile (two graphs:
tens of seconds on CPU, minutes on a GPU), so it pays over long runs (RLVR).

Measured (``benchmarks/sampling.py``, skill-world evaluation, 64 slots = generate's batch of 64, identical
completions): 1.3-1.5x ``generate`` with its dynamic cache eager and 1.8x compiled on 2 CPU cores; 1.33x and 2.5x
on an H100 (where ``generate`` with a static cache, which transformers compiles, matches the compiled engine); see
docs/benchmarks.md.
"""

from __future__ import annotations

from collections import deque

import torch

from ra3.rollout.ragged_cache import RaggedCache, ragged_attention
from ra3.rollout.sampling import (Completion, OnDone, SamplingConfig, encode_prompt, gumbel_block, make_completion,
                                  row_generators)


class RaggedEngine:
    """``generate(prompts, n, config, seeds) -> list[list[Completion]]`` (the ``RolloutEngine`` protocol).

    Args:
        model: a transformers causal LM whose attention goes through the ``Cache`` API (Llama, Qwen2, Mistral, ...).
        tokenizer: its tokenizer.
        slots: rows decoded at once (default: ``config.batch_size``).
        compile: run every step after the first as one ``torch.compile``d forward over every slot, new rows'
            prompts included (``RaggedCache.decode``): faster per step once compiled (the first steps compile:
            tens of seconds on CPU), log-probs within ~1e-5 of the eager forward rather than bit-identical.
    """

    def __init__(self, model, tokenizer, slots: int | None = None, compile: bool = False):
        self.model, self.tokenizer, self.slots, self.compile = model, tokenizer, slots, compile
        self.stats: dict[str, int] = {}

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int = 1, config: SamplingConfig | None = None,
                 seeds: list[int] | None = None, on_done: OnDone | None = None) -> list[list[Completion]]:
        config = config or SamplingConfig()
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        items = [(i, encode_prompt(tok, p)) for i, p in enumerate(prompts) for _ in range(n)]
        if not items:
            return [[] for _ in prompts]
        pending = deque(sorted(range(len(items)), key=lambda j: -len(items[j][1])))  # long prompts first
        n_slots = max(1, min(self.slots or config.batch_size, len(items)))
        noise = SlotNoise(row_generators(seeds, n, device), n_slots) if seeds is not None and config.temperature > 0 else None
        capacity = max(len(ids) for _, ids in items) + config.max_new_tokens
        tail = max((len(s) for s in config.stop), default=0) + 8  # tokens decoded to look for a stop string
        backend = getattr(tok, "backend_tokenizer", None)  # a fast tokenizer's own decode: ~4x less overhead
        decode = (lambda ids: backend.decode(ids, skip_special_tokens=True)) if backend is not None else \
            (lambda ids: tok.decode(ids, skip_special_tokens=True))
        stops = config.stop

        def stopped(text: str) -> bool:
            return any(x in text for x in stops)

        owner: list[int | None] = [None] * n_slots
        new: dict[int, list[int]] = {}
        row_logprobs: dict[int, list[float]] = {}
        done: dict[int, Completion] = {}
        eos, cap = tok.eos_token_id, config.max_new_tokens
        steps = decoded = prefilled = 0
        with ragged_attention(model):
            cache = RaggedCache(model, n_slots, capacity)
            feed: dict[int, list[int]] = {}
            while pending or feed:
                fresh = []
                for s in range(n_slots):  # refill free slots
                    if owner[s] is None and pending:
                        j = pending.popleft()
                        fresh.append(s)
                        owner[s], new[j], row_logprobs[j] = j, [], []
                        if noise is not None:
                            noise.assign(s, j)
                        cache.reset(s)
                        feed[s] = items[j][1]
                        prefilled += len(items[j][1])
                if self.compile:  # the new rows' slots were reset: their prompts ride in the compiled step
                    cache.decode({s: c[0] for s, c in feed.items() if s not in fresh}, {s: feed[s] for s in fresh})
                else:
                    cache.feed(feed, token_logprobs=False)
                steps += 1
                active = sorted(feed)
                picks, logprobs = self._sample(cache.last_logp[active], active, noise, config)
                decoded += len(active)
                feed = {}
                for i, (s, t) in enumerate(zip(active, picks)):
                    ids = new[owner[s]]
                    ids.append(t)
                    if logprobs is not None:
                        row_logprobs[owner[s]].append(logprobs[i])
                    if t == eos or len(ids) >= cap or (stops and stopped(decode(ids[-tail:]))):
                        j = owner[s]
                        done[j] = make_completion(tok, ids, config.stop)
                        if logprobs is not None:
                            done[j].logprobs = row_logprobs[j][: len(done[j].token_ids) + done[j].ended_by_eos]
                        del row_logprobs[j]
                        owner[s] = None
                        if on_done is not None:
                            on_done(items[j][0], j % n, done[j])
                    else:
                        feed[s] = [t]
            self.stats = {"steps": steps, "decoded_tokens": decoded, "prefill_tokens": prefilled, "compiled_steps": cache.compiled}
        out: list[list[Completion]] = [[] for _ in prompts]
        for j, (i, _) in enumerate(items):
            out[i].append(done[j])
        return out

    @staticmethod
    def _sample(logp: torch.Tensor, slots: list[int], noise: SlotNoise | None,
                config: SamplingConfig) -> tuple[list[int], list[float] | None]:
        """Next token of each slot's row from its (V,) log-probs: argmax (temperature 0), Gumbel-max with the rows'
        own noise (seeded: ``SeededSampling``'s arithmetic and numbers, as ``HFEngine``), or multinomial from the
        global RNG; and, if ``config.logprobs``, each pick's log-prob under ``log_softmax(logp / temperature)``."""
        if config.temperature <= 0:
            picks = logp.argmax(-1)
            tempered = logp.float()
        else:
            tempered = scores = logp.float() / config.temperature
            if config.top_p < 1.0:
                from transformers import TopPLogitsWarper

                scores = TopPLogitsWarper(config.top_p)(None, scores)
            if noise is not None:
                picks = (scores + noise.draw(slots, scores.shape[-1])).argmax(-1)
            else:
                picks = torch.multinomial(torch.softmax(scores, -1), 1)[:, 0]
        if not config.logprobs:
            return picks.tolist(), None
        return picks.tolist(), tempered.log_softmax(-1).gather(-1, picks[:, None])[:, 0].tolist()


class SlotNoise:
    """The Gumbel noise of the row in each slot: row j's draws are ``UniformStream(generators[j])``'s (blocks of
    ``gumbel_block``), kept in one (slots, block, V) bank so that a step takes every slot's next draw in one gather,
    not one call and a stack a row."""

    def __init__(self, generators: list[torch.Generator], n_slots: int):
        self.generators, self.n_slots, self.bank, self.row, self.pos = generators, n_slots, None, {}, {}

    def assign(self, slot: int, row: int) -> None:
        """Slot ``slot`` now holds row ``row``, whose draws start afresh."""
        self.row[slot], self.pos[slot] = row, None

    def draw(self, slots: list[int], vocab: int) -> torch.Tensor:
        """The next (len(slots), V) draws of the slots' rows."""
        for s in slots:
            if self.pos[s] is None or self.pos[s] == self.bank.shape[1]:
                block = gumbel_block(self.generators[self.row[s]], vocab)
                if self.bank is None:
                    self.bank = block.new_empty((self.n_slots, *block.shape))
                self.bank[s], self.pos[s] = block, 0
        index = torch.tensor([self.pos[s] for s in slots], device=self.bank.device)
        for s in slots:
            self.pos[s] += 1
        return self.bank[torch.tensor(slots, device=self.bank.device), index]
