"""A batched KV cache in which every row has its own length (no Lightning): the E-step's latent rollout and the
``RaggedEngine`` sampler both feed it. Rows are fed chunks of any length; nothing is padded inside the cache."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache


@contextmanager
def ragged_attention(model):
    """Eval mode and an attention implementation that takes the ragged 4-D mask (flash/flex kernels do not:
    switched to sdpa), both restored afterwards."""
    attn, was_training = model.config._attn_implementation, model.training
    model.eval()
    if attn not in ("sdpa", "eager"):
        model.config._attn_implementation = "sdpa"
    try:
        yield model
    finally:
        model.train(was_training)
        model.config._attn_implementation = attn


class RaggedCache:
    """A batched KV cache in which every row has its own length (row r's slots ``[0, lengths[r])`` are real).

    A ``feed`` appends a chunk to any subset of rows, each chunk of its own length, without padding the cache:
    rows are grouped by chunk length into forwards, each writing K/V at its rows' own offsets (own position
    ids) and attending through a 4-D mask (slot s visible to chunk token j of row r iff s <= lengths[r] + j).
    Works with any model whose attention calls ``Cache.update`` and takes a prepared 4-D mask (sdpa or
    eager attention; other implementations are switched to sdpa while the cache is in use).
    """

    def __init__(self, model, n_rows: int, pad_id: int, capacity: int):
        self.model, self.pad_id = model, pad_id
        self.n_forwards = 0
        self.device = next(model.parameters()).device
        self.lengths = torch.zeros(n_rows, dtype=torch.long, device=self.device)
        self.last_logp: torch.Tensor | None = None  # (N, V) fp32 log-probs after each row's last real token
        self.kv = RaggedKV(n_rows, capacity)
        self.cache_kwarg = _cache_kwarg(model)
        # eager attention adds the mask to its scores (float), sdpa takes a boolean one
        self.mask_dtype = next(model.parameters()).dtype if model.config._attn_implementation == "eager" else None

    def feed(self, chunks: dict[int, list[int]], probes: dict[int, list[int]] | None = None, token_logprobs: bool = True
             ) -> dict[int, tuple[list[float], torch.Tensor | None]]:
        """Append ``chunks[r]`` to row r. Returns, per row, the log-prob of every appended token given its
        prefix, and the (P, V) next-token log-probs after the chunk offsets ``probes[r]`` (None without).
        Rows are grouped into forwards by chunk length (``buckets``), so one long line does not pad every
        decoding row. ``token_logprobs=False`` (a sampler): the LM head runs on each row's last fed position
        only, ``last_logp`` is all that is updated, and the per-token lists come back empty."""
        probes = probes or {}
        order = sorted(chunks, key=lambda r: len(chunks[r]))
        out: dict[int, tuple[list[float], torch.Tensor | None]] = {}
        for group in buckets([len(chunks[r]) for r in order]):
            rows = [order[i] for i in group]
            out.update(zip(rows, self._forward(rows, [chunks[r] for r in rows], [probes.get(r) for r in rows],
                                               token_logprobs)))
        return out

    def reset(self, row: int) -> None:
        """Empty row ``row`` (its slot is reused for a new sequence; the old K/V is never visible again)."""
        self.lengths[row] = 0

    def rewind(self, row: int, length: int, last_logp: torch.Tensor) -> None:
        """Forget row ``row``'s tokens from ``length`` on (their K/V slots are never visible again);
        ``last_logp``: the (V,) log-probs after its token ``length - 1``."""
        self.lengths[row] = length
        self.last_logp[row] = last_logp

    @torch.no_grad()
    def _forward(self, rows: list[int], chunks: list[list[int]], probes: list[list[int] | None], token_logprobs: bool):
        n_rows = self.lengths.shape[0]
        if 2 * len(rows) >= n_rows:
            # a forward over every row beats gathering most of the cache; the other rows feed padding
            # (their garbage K/V lands past their length, never visible, overwritten by their next chunk)
            given = {r: (c, p) for r, c, p in zip(rows, chunks, probes)}
            everyone = [given.get(r, ([], None)) for r in range(n_rows)]
            out = self._forward_rows(list(range(n_rows)), [c for c, _ in everyone], [p for _, p in everyone],
                                     token_logprobs)
            return [out[r] for r in rows]
        return self._forward_rows(rows, chunks, probes, token_logprobs)

    def _forward_rows(self, rows: list[int], chunks: list[list[int]], probes: list[list[int] | None],
                      token_logprobs: bool):
        self.n_forwards += 1
        m, width = len(rows), max(map(len, chunks))
        ids = torch.tensor([c + [self.pad_id] * (width - len(c)) for c in chunks], dtype=torch.long, device=self.device)
        n = torch.tensor([len(c) for c in chunks], device=self.device)
        index = torch.tensor(rows, device=self.device)
        slots = self.lengths[index, None] + torch.arange(width, device=self.device)  # (m, W) = position ids
        kv_len = int(slots.max()) + 1
        self.kv.prepare(index, slots, kv_len, all_rows=m == self.lengths.shape[0])
        visible = torch.arange(kv_len, device=self.device) <= slots[:, :, None]  # (m, W, L)
        mask = visible[:, None]
        if self.mask_dtype is not None:
            mask = torch.zeros(mask.shape, dtype=self.mask_dtype, device=self.device).masked_fill_(
                ~mask, torch.finfo(self.mask_dtype).min)
        fed = n > 0
        keep = {}
        if not token_logprobs:  # the LM head on each row's last fed token only: (m', V) logits
            last = torch.zeros((m, width), dtype=torch.bool, device=self.device)
            last[fed.nonzero()[:, 0], n[fed] - 1] = True
            keep = {"logits_to_keep": last}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=slots, use_cache=True,
                            **{self.cache_kwarg: self.kv}, **keep).logits
        if not self.kv.buffers:
            raise RuntimeError(f"{type(self.model).__name__} does not store its keys/values through the transformers "
                               "Cache API; ragged rollouts need a model that does (Llama, Qwen2, Mistral, GPT-2, ...)")
        if self.last_logp is None:
            self.last_logp = torch.zeros(self.lengths.shape[0], logits.shape[-1], dtype=torch.float32, device=self.device)
        if not token_logprobs:
            self.last_logp[index[fed]] = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), -1)
            self.lengths[index] += n
            return [([], None)] * m
        logp = torch.log_softmax(logits.float(), -1)  # (m, W, V)
        # log-prob of token j comes from the position before it: the row's previous last position for j = 0
        prev = torch.cat([self.last_logp[index, None], logp[:, :-1]], 1)
        token_lp = prev.gather(2, ids[:, :, None]).squeeze(2).tolist()
        self.last_logp[index[fed]] = logp[fed, n[fed] - 1]
        self.lengths[index] += n
        return [(lp[: len(c)], logp[i, p] if p else None) for i, (lp, c, p) in enumerate(zip(token_lp, chunks, probes))]


def buckets(lengths: list[int], overhead: int = 64) -> list[range]:
    """Split ascending chunk lengths into contiguous groups minimising padded slots (sum of group size x
    longest chunk) + ``overhead`` slots per forward (the fixed cost of a forward, measured ~64 token-slots on CPU)."""
    n = len(lengths)
    if not n or lengths[0] == lengths[-1]:  # one length (every row decoding): one forward
        return [range(n)] if n else []
    best, cut = [0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + overhead + (j - i) * lengths[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(range(cut[j], j))
        j = cut[j]
    return groups[::-1]


class RaggedKV(Cache):
    """The transformers ``Cache`` behind ``_RaggedCache``: per layer, K/V buffers (N, H, C, D); ``update``
    writes a forward's (m, H, W, D) states at the slots ``prepare`` set and returns its rows' (m, H, L, D)."""

    def __init__(self, n_rows: int, capacity: int):
        super().__init__(layers=[])
        self.n_rows, self.capacity = n_rows, capacity
        self.buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, index: torch.Tensor, slots: torch.Tensor, kv_len: int, all_rows: bool) -> None:
        self.index, self.slots, self.kv_len, self.all_rows = index, slots, kv_len, all_rows
        if kv_len > self.capacity:  # grow every buffer (rare: the capacity is an upper bound of the rollout)
            self.capacity = max(kv_len, 2 * self.capacity)
            for i, (k, v) in self.buffers.items():
                pad = (0, 0, 0, self.capacity - k.shape[2])
                self.buffers[i] = (torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad))

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.buffers:
            _, h, _, d = key_states.shape
            shape = (self.n_rows, h, self.capacity, d)
            self.buffers[layer_idx] = (key_states.new_zeros(shape), value_states.new_zeros(shape))
        keys, values = self.buffers[layer_idx]
        rows = self.index[:, None]
        keys[rows, :, self.slots] = key_states.transpose(1, 2)
        values[rows, :, self.slots] = value_states.transpose(1, 2)
        if self.all_rows:
            return keys[:, :, : self.kv_len], values[:, :, : self.kv_len]
        return keys[:, :, : self.kv_len].index_select(0, self.index), values[:, :, : self.kv_len].index_select(0, self.index)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len if self.buffers else 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.kv_len, 0


def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
