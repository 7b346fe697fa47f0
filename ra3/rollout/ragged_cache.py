"""A batched KV cache in which every row has its own length (no Lightning): the E-step's latent rollout and the
``RaggedEngine`` sampler both feed it. Rows are fed chunks of any length; nothing is padded, neither inside the
cache nor in the model's matmuls: a feed is one packed forward (batch 1, the chunks' tokens side by side) whose
attention (``ragged_attention_forward``) reads each chunk's row of the cache."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.fx.experimental import _config as fx_config
from transformers.cache_utils import Cache

from ra3.errors import Ra3Error

ATTENTION = "ra3_ragged"


@contextmanager
def ragged_attention(model):
    """Eval mode and the ragged attention implementation (``ATTENTION``), both restored afterwards."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, ragged_attention_forward)
    attn, was_training = model.config._attn_implementation, model.training
    model.eval()
    model.config._attn_implementation = ATTENTION
    try:
        yield model
    finally:
        model.train(was_training)
        model.config._attn_implementation = attn


@dataclass
class _Group:
    """Chunks whose attention is one SDPA call, indices fixed per feed: ``query`` (m | N, W) positions in the
    feed's queries (a short chunk repeats its last token; ``T``, one past the last, is a zero query), ``rows``
    (m,) the cache rows to gather or None (the call runs over every cache row: no gather of K/V, rows outside
    the group get zero queries), ``kv_len`` keys read per row, ``mask`` (m | N, 1, W, kv_len), and the output's
    real tokens: flat (row, j) positions ``take`` written to the feed's tokens ``put``. ``query``, ``take`` and
    ``put`` are None when the feed is one token for each cache row in row order (most decoding steps): the
    queries are then the feed's tokens as they are, and so are the outputs."""

    query: torch.Tensor | None
    rows: torch.Tensor | None
    kv_len: int
    mask: torch.Tensor
    take: torch.Tensor | None
    put: torch.Tensor | None


def ragged_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, ragged=None, **kwargs):
    """Attention of a packed feed. ``query`` (1, H, T, D): the feed's T tokens; ``key``/``value``: the layer's whole
    cache buffers (N, Hkv, C, D) returned by ``RaggedKV.update``; ``ragged``: the feed's groups (``RaggedCache``).
    Returns (1, T, H, D) as transformers' attention functions do."""
    if ragged is None:
        raise RuntimeError(f"{type(module).__name__} does not pass its forward's keyword arguments to the attention "
                           "function; ragged rollouts need a model that does (Llama, Qwen2, Mistral, ...)")
    return _attend(query[0].transpose(0, 1), key, value, ragged, scaling)[None], None


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: list[_Group], scaling) -> torch.Tensor:
    """(T, H, D) attention outputs of a feed's (T, H, D) queries over the cache buffers (N, Hkv, C, D)."""
    t, h, d = query.shape
    gqa = key.shape[1] != h
    if groups[0].query is None:  # one token per cache row, in row order
        o = F.scaled_dot_product_attention(query[:, None].transpose(1, 2), key[:, :, : groups[0].kv_len],
                                           value[:, :, : groups[0].kv_len], attn_mask=groups[0].mask, scale=scaling,
                                           enable_gqa=gqa)  # (N, H, 1, D)
        return o.transpose(1, 2).reshape(t, h, d)
    q = torch.cat([query, query.new_zeros(1, h, d)])  # (T + 1, H, D): the last, a zero query
    out = None  # (T, H, D) in the attention's dtype (under autocast: not the queries')
    for g in groups:
        k, v = key[:, :, : g.kv_len], value[:, :, : g.kv_len]
        if g.rows is not None:
            k, v = k.index_select(0, g.rows), v.index_select(0, g.rows)
        o = F.scaled_dot_product_attention(q[g.query].transpose(1, 2), k, v, attn_mask=g.mask, scale=scaling,
                                           enable_gqa=gqa)  # (m | N, H, W, D)
        o = o.transpose(1, 2).reshape(-1, h, d).index_select(0, g.take)
        out = o.new_empty((t, h, d)) if out is None else out
        out.index_copy_(0, g.put, o)
    return out


class CompileError(Ra3Error):
    """The ``torch.compile``d decoding step could not be built or run (the eager ``feed`` can)."""


class RaggedCache:
    """A batched KV cache in which every row has its own length (row r's slots ``[0, lengths[r])`` are real).

    A ``feed`` appends a chunk to any subset of rows, each chunk of its own length, in one forward over the
    chunks' tokens packed side by side (own position ids); each token's K/V is written at its row's next slot,
    and attention reads, per group of chunks of similar width, the groups' rows up to their longest (slot s
    visible to chunk token j of row r iff s <= lengths[r] + j). Works with any model whose attention layers call
    ``Cache.update`` and the transformers attention interface with the forward's keyword arguments (Llama, Qwen2,
    Mistral, ...); the attention implementation is switched to ``ATTENTION`` while the cache is in use
    (``ragged_attention``). Plain scaled dot-product attention: no sliding window, soft-capping or sinks.
    """

    def __init__(self, model, n_rows: int, capacity: int):
        self.model = model
        self.groups = {"every_row": 0, "gathered": 0}  # attention calls per layer, by kind
        self.in_order = 0  # feeds of one token per row in row order (no query or output gathers)
        self.compiled = 0  # decoding steps run by the compiled ``decode_step``
        self.device = next(model.parameters()).device
        self.lengths = torch.zeros(n_rows, dtype=torch.long, device=self.device)
        self.last_logp: torch.Tensor | None = None  # (N, V) fp32 log-probs after each row's last real token
        self.kv = RaggedKV(n_rows, capacity)
        self.cache_kwarg = _cache_kwarg(model)
        self._mask4d = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=self.device)  # "prepared": no mask is built
        self.decoder = _plain_decoder(model)  # (decoder, lm_head, rotary) of a plain decoder stack, else None
        # decode's compiled step: plain decoders only, and not under peft or FSDP2 (never tried compiled)
        self.compilable = self.decoder is not None and not hasattr(model, "get_base_model") and not any(
            type(m).__name__.startswith("FSDP") for m in model.modules())

    def feed(self, chunks: dict[int, list[int]], probes: dict[int, list[int]] | None = None, token_logprobs: bool = True
             ) -> dict[int, tuple[list[float], torch.Tensor | None]]:
        """Append ``chunks[r]`` to row r. Returns, per row, the log-prob of every appended token given its
        prefix, and the (P, V) next-token log-probs after the chunk offsets ``probes[r]`` (None without).
        ``token_logprobs=False`` (a sampler): the LM head runs on each row's last fed position only,
        ``last_logp`` is all that is updated, and the per-token lists come back empty."""
        probes = probes or {}
        rows = [r for r in sorted(chunks, key=lambda r: len(chunks[r])) if chunks[r]]
        if not rows:
            return {r: ([], None) for r in chunks}
        out = dict(zip(rows, self._forward(rows, [chunks[r] for r in rows], [probes.get(r) for r in rows], token_logprobs)))
        return {r: out.get(r, ([], None)) for r in chunks}

    def reset(self, row: int) -> None:
        """Empty row ``row`` (its slot is reused for a new sequence; the old K/V is never visible again)."""
        self.lengths[row] = 0

    def rewind(self, row: int, length: int, last_logp: torch.Tensor) -> None:
        """Forget row ``row``'s tokens from ``length`` on (their K/V slots are never visible again);
        ``last_logp``: the (V,) log-probs after its token ``length - 1``."""
        self.lengths[row] = length
        self.last_logp[row] = last_logp

    @torch.no_grad()
    def decode(self, tokens: dict[int, int], prompts: dict[int, list[int]] | None = None) -> None:
        """A sampler's step in one forward over every cache row under ``torch.compile`` (``decode_step``): append one
        token ``tokens[r]`` to each row r, start each row r of ``prompts`` anew with the prompt ``prompts[r]``, and
        update ``last_logp``; rows in neither are emptied (``reset``: every live row must be fed). The log-probs match
        ``feed``'s to ~1e-5, not bit for bit, so sampled completions can differ from ``feed``'s where two tokens are
        that close. Without a plain decoder (``PLAIN_DECODERS``; not under peft or FSDP2) or before the first ``feed``
        this is ``feed``."""
        prompts = {r: c for r, c in (prompts or {}).items() if c}
        if tokens.keys() & prompts.keys():
            raise ValueError(f"rows {sorted(tokens.keys() & prompts.keys())} are given both a token and a prompt")
        chunks = {**{r: [t] for r, t in tokens.items()}, **prompts}
        fed = torch.tensor(sorted(chunks), dtype=torch.long, device=self.device)
        kept = torch.zeros_like(self.lengths, dtype=torch.bool).index_fill_(0, fed, True)
        self.lengths.masked_fill_(~kept, 0)
        if prompts:
            self.lengths[list(prompts)] = 0
        if not self.compilable or not self.kv.buffers:
            self.feed(chunks, token_logprobs=False)
            return
        tokens = {**tokens, **{r: c[0] for r, c in prompts.items() if len(c) == 1}}  # a 1-token prompt decodes at slot 0
        new = sorted(r for r, c in prompts.items() if len(c) > 1)
        n = len(self.lengths)
        ids = torch.zeros_like(self.lengths)
        if tokens:
            ids[list(tokens)] = torch.tensor(list(tokens.values()), device=self.device)
        slots = self.lengths.clone()  # each row's next slot; 0 for the rows emptied and the new rows
        prefill = None
        if new:  # the prompts right-padded to the longest; at least 2 rows (one graph for any count: repeat a lone one)
            rows = new if len(new) > 1 else new * 2
            width = max(len(prompts[r]) for r in new)
            lens = torch.tensor([len(prompts[r]) for r in new], device=self.device)
            keep = torch.arange(n, device=self.device)  # the packed position whose logits are each row's
            keep[new] = n + torch.arange(len(new), device=self.device) * width + lens - 1
            prompt = torch.tensor([prompts[r] + [0] * (width - len(prompts[r])) for r in rows], device=self.device)
            prefill = (torch.tensor(rows, device=self.device), prompt, keep)
        kv_len = max(2, int(slots.max()) + 1)  # >= 2: a size of 1 would be a graph of its own
        self.kv.reserve(max(kv_len, width if new else 0))  # the prompts are written at slots [0, width)
        layers = sorted(self.kv.buffers)
        try:  # no duck sizing: N equal to the head count or head size must not tie N to it (a recompile per N)
            with fx_config.patch(use_duck_shape=False):
                logp = compiled_decode_step()(*self.decoder, ids, slots, kv_len,
                                              [self.kv.buffers[i][0] for i in layers],
                                              [self.kv.buffers[i][1] for i in layers], prefill)
        except Exception as e:  # inductor needs a C++ compiler on CPU; a failure names it here
            raise CompileError(f"the torch.compile'd decoding step failed ({type(e).__name__}: {str(e)[:500]}); the engine "
                           "'ragged' is the same sampler without torch.compile") from e
        self.compiled += 1
        self.last_logp[fed] = logp[fed]
        if tokens:
            self.lengths[list(tokens)] += 1
        if new:
            self.lengths[new] = lens

    @torch.no_grad()
    def _forward(self, rows: list[int], chunks: list[list[int]], probes: list[list[int] | None], token_logprobs: bool):
        """One packed forward over ``chunks`` (ascending length) of ``rows``."""
        if self.model.config._attn_implementation != ATTENTION:
            raise RuntimeError("RaggedCache feeds run inside `with ragged_attention(model):`")
        dev, n_rows = self.device, self.lengths.shape[0]
        widths = [len(c) for c in chunks]
        width_t = torch.tensor(widths, device=dev)
        starts = [0]
        for w in widths:
            starts.append(starts[-1] + w)
        total = starts[-1]
        ids = torch.tensor([t for c in chunks for t in c], dtype=torch.long, device=dev)
        index = torch.tensor(rows, device=dev)
        token_row = torch.repeat_interleave(index, width_t)
        start = torch.tensor(starts[:-1], device=dev)
        offset = torch.arange(total, device=dev) - torch.repeat_interleave(start, width_t)
        position = self.lengths[token_row] + offset  # (T,) each token's slot in its row = its position id
        self.kv.prepare(token_row, position)
        groups = []
        if total == n_rows == len(rows) and rows == list(range(n_rows)):  # one token per row, in row order
            mask = (torch.arange(int(position.max()) + 1, device=dev) <= position[:, None])[:, None, None]  # (N, 1, 1, L)
            groups.append(_Group(None, None, mask.shape[-1], mask, None, None))
            self.groups["every_row"] += 1
            self.in_order += 1
        else:
            for group in buckets(widths):
                a, b = group[0], group[-1] + 1
                width, members, n = widths[b - 1], index[a:b], width_t[a:b, None]
                j = torch.arange(width, device=dev)
                tokens = torch.where(j < n, start[a:b, None] + j, total)  # (m, W); past a chunk's end: the zero query
                kv_len = int((self.lengths[members] + n[:, 0]).max())
                valid = (j < n).flatten().nonzero()[:, 0]
                if 2 * (b - a) >= n_rows:  # over every row: gathering most of the cache costs more than zero queries
                    query = torch.full((n_rows, width), total, dtype=torch.long, device=dev)
                    query[members] = tokens
                    base, gather, take = self.lengths, None, (members[:, None] * width + j).flatten()[valid]
                else:
                    query, base, gather, take = tokens, self.lengths[members], members, valid
                self.groups["gathered" if gather is not None else "every_row"] += 1
                mask = (torch.arange(kv_len, device=dev) <= (base[:, None] + j)[:, :, None])[:, None]  # (m | N, 1, W, L)
                groups.append(_Group(query, gather, kv_len, mask, take, tokens.flatten()[valid]))
        last = torch.tensor(starts[1:], device=dev) - 1  # (m,) packed position of each chunk's last token
        keep = None if token_logprobs or total == len(rows) else last  # a sampler: the LM head on each chunk's last token
        if self.decoder is not None:
            logits = _decoder_forward(*self.decoder, ids[None], position[None], self.kv.write,
                                      lambda q, k, v, scaling: _attend(q, k, v, groups, scaling), keep)[0]
        else:
            logits = self.model(input_ids=ids[None], attention_mask=self._mask4d, position_ids=position[None],
                                use_cache=True, ragged=groups, **{self.cache_kwarg: self.kv},
                                **({} if keep is None else {"logits_to_keep": keep})).logits[0]  # (T | m, V)
        if not self.kv.buffers:
            raise RuntimeError(f"{type(self.model).__name__} does not store its keys/values through the transformers "
                               "Cache API; ragged rollouts need a model that does (Llama, Qwen2, Mistral, ...)")
        if self.last_logp is None:
            self.last_logp = torch.zeros(n_rows, logits.shape[-1], dtype=torch.float32, device=dev)
        if not token_logprobs:
            self.last_logp[index] = torch.log_softmax(logits.float(), -1)
            self.lengths[index] += width_t
            return [([], None)] * len(rows)
        logp = torch.log_softmax(logits.float(), -1)  # (T, V)
        # log-prob of token t comes from the position before it: the row's previous last position for a chunk's first
        before = torch.cat([logp, self.last_logp[index]])
        source = torch.arange(-1, total - 1, device=dev)
        source[start] = total + torch.arange(len(rows), device=dev)
        token_lp = before[source, ids].tolist()
        self.last_logp[index] = logp[last]
        self.lengths[index] += width_t
        return [(token_lp[a: a + w], logp[[a + o for o in p]] if p else None)
                for a, w, p in zip(starts, widths, probes)]


def buckets(lengths: list[int], overhead: int = 16) -> list[range]:
    """Split ascending chunk lengths into contiguous groups minimising padded query slots (sum of group size x
    longest chunk) + ``overhead`` slots per group (the fixed cost of one attention call). Cuts fall only between
    different lengths (splitting equal lengths never pays), so a step of decoding rows and a few prefills costs a
    DP over a handful of runs."""
    ends = [i + 1 for i in range(len(lengths)) if i + 1 == len(lengths) or lengths[i + 1] != lengths[i]]
    bounds = [0] + ends  # groups are unions of consecutive runs bounds[a]..bounds[b]
    best, cut = [0] + [float("inf")] * len(ends), [0] * (len(ends) + 1)
    for b in range(1, len(bounds)):
        for a in range(b):
            cost = best[a] + overhead + (bounds[b] - bounds[a]) * lengths[bounds[b] - 1]
            if cost < best[b]:
                best[b], cut[b] = cost, a
    groups, b = [], len(ends)
    while b > 0:
        groups.append(range(bounds[cut[b]], bounds[b]))
        b = cut[b]
    return groups[::-1]


class RaggedKV(Cache):
    """The transformers ``Cache`` behind ``RaggedCache``: per layer, K/V buffers (N, Hkv, C, D); ``update`` writes
    a packed forward's (1, Hkv, T, D) states at the (row, slot) of each token that ``prepare`` set and returns the
    layer's whole buffers (``ragged_attention_forward`` reads the rows it needs)."""

    def __init__(self, n_rows: int, capacity: int):
        super().__init__(layers=[])
        self.n_rows, self.capacity = n_rows, capacity
        self.buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kv_len = 0

    def prepare(self, rows: torch.Tensor, slots: torch.Tensor) -> None:
        """The (row, slot) of each token of the next forward's ``write``s."""
        self.rows, self.slots, self.flat = rows, slots, None
        self.reserve(int(slots.max()) + 1)

    def reserve(self, kv_len: int) -> None:
        """Slots ``[0, kv_len)`` are read next: grow the buffers to hold them if needed."""
        self.kv_len = kv_len
        if self.kv_len > self.capacity:  # grow every buffer (rare: the capacity is an upper bound of the rollout)
            self.capacity = max(self.kv_len, 2 * self.capacity)
            for i, (k, v) in self.buffers.items():
                pad = (0, 0, 0, self.capacity - k.shape[2])
                self.buffers[i] = (F.pad(k, pad), F.pad(v, pad))

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.write(layer_idx, key_states[0].transpose(0, 1), value_states[0].transpose(0, 1))

    def write(self, layer_idx: int, keys_thd: torch.Tensor, values_thd: torch.Tensor):
        """Store a feed's (T, Hkv, D) keys and values of layer ``layer_idx``; returns its (N, Hkv, C, D) buffers."""
        if layer_idx not in self.buffers:
            _, h, d = keys_thd.shape
            shape = (self.n_rows, h, self.capacity, d)
            self.buffers[layer_idx] = (keys_thd.new_zeros(shape), values_thd.new_zeros(shape))
        keys, values = self.buffers[layer_idx]
        if self.flat is None or self.flat[0] != keys.shape:  # (T * Hkv,) rows of the (N * Hkv * C, D) buffer views
            n, h, c, d = keys.shape
            rows = (self.rows * h)[:, None] + torch.arange(h, device=keys.device)
            self.flat = keys.shape, (rows * c + self.slots[:, None]).flatten()
        index, d = self.flat[1], keys.shape[-1]
        keys.view(-1, d).index_copy_(0, index, keys_thd.reshape(-1, d))
        values.view(-1, d).index_copy_(0, index, values_thd.reshape(-1, d))
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len if self.buffers else 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.kv_len, 0


# decoder stacks whose forward is exactly embed -> rotary -> [x + attn(norm(x)), x + mlp(norm(x))] -> norm -> lm_head
PLAIN_DECODERS = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}  # weight * x * rsqrt(mean(x^2) + eps), = F.rms_norm in fp32


def _plain_decoder(model):
    """(the inner decoder, lm_head, its modeling file's ``rotate_half``) of a model in ``PLAIN_DECODERS`` (under peft
    and FSDP2 too), else None: those are run by ``_decoder_forward``, the same computation as their transformers
    forward minus its per-call overhead (~3 ms a forward on CPU for a 4-layer model, as much as the model's compute
    at 64 rows)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    # FSDP2 wraps a module's class as FSDP<class>(FSDPModule, class); its units are unsharded while sampling
    cls = next(c for c in type(inner).__mro__ if not (c.__name__.startswith("FSDP") and c.__module__.startswith("torch.")))
    if cls.__name__ not in PLAIN_DECODERS or not cls.__module__.startswith("transformers."):
        return None
    return inner.model, inner.lm_head, sys.modules[cls.__module__].rotate_half


def _norm(norm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; one fused op for an fp32 RMSNorm (bit-identical: tests/rollout/test_ragged_cache.py)."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32 and type(norm).__name__ in RMS_NORMS:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


def _decoder_forward(decoder, lm_head, rotate_half, ids, position_ids, write, attend, keep, traced: bool = False):
    """Logits (1, T | len(keep), V) of a packed feed, for the ``PLAIN_DECODERS``: heads stay (T, H, D) throughout
    (the layout of the cache writes and of the attention), queries and keys are rotated in one pass.
    ``write(layer_idx, keys, values)`` stores a layer's (T, Hkv, D) keys/values and returns its (N, Hkv, C, D)
    buffers; ``attend(queries, keys, values, scaling)`` maps (T, H, D) queries to (T, H, D) outputs.
    ``traced`` (under ``torch.compile``): no float module attribute reaches an op that specialises it (the
    embedding's ``norm_type``, ``F.rms_norm``'s eps), which made dynamo trace the step twice (half the compile)."""
    h = F.embedding(ids, decoder.embed_tokens.weight) if traced else decoder.embed_tokens(ids)
    norm = (lambda module, x: module(x)) if traced else _norm
    cos, sin = (x[0, :, None] for x in decoder.rotary_emb(h, position_ids=position_ids))  # (T, 1, D)
    t = ids.shape[1]
    for layer in decoder.layers[: decoder.config.num_hidden_layers]:
        att = layer.self_attn
        x = norm(layer.input_layernorm, h)
        q = att.q_proj(x).view(t, -1, att.head_dim)
        qk = torch.cat([q, att.k_proj(x).view(t, -1, att.head_dim)], 1)  # (T, H + Hkv, D)
        qk = qk * cos + rotate_half(qk) * sin
        n = q.shape[1]
        keys, values = write(att.layer_idx, qk[:, n:], att.v_proj(x).view(t, -1, att.head_dim))
        o = attend(qk[:, :n], keys, values, att.scaling)
        h = h + att.o_proj(o.reshape(1, t, -1))
        h = h + layer.mlp(norm(layer.post_attention_layernorm, h))
    h = norm(decoder.norm, h)
    return lm_head(h if keep is None else h[:, keep])


def decode_step(decoder, lm_head, rotate_half, ids: torch.Tensor, slots: torch.Tensor, kv_len: int,
                keys: list[torch.Tensor], values: list[torch.Tensor], prefill=None) -> torch.Tensor:
    """(N, V) fp32 log-probs after one token ``ids`` (N,) for every cache row, written at slot ``slots`` (N,) of the
    layers' (N, Hkv, C, D) ``keys``/``values`` (in place); attention reads slots ``[0, kv_len)`` up to each row's
    own. ``prefill``: None, or new rows' prompts fed in the same forward, ``(rows (k,), prompts (k, W) right-padded,
    keep (N,))``: prompt i is written at slots ``[0, W)`` of its empty row (after that row's token in ``ids``, a
    dummy) and attends only to itself; ``keep[r]`` is the packed position (row r's token, or N + i * W + its
    prompt's last) whose log-probs are row r's. The shapes ``torch.compile`` sees vary only in N, C, ``kv_len``, k
    and W: ``RaggedCache.decode`` runs it (two graphs: with and without prefill)."""
    n = ids.shape[0]
    rows = torch.arange(n, device=ids.device)
    mask = (torch.arange(kv_len, device=ids.device) <= slots[:, None])[:, None, None]  # (N, 1, 1, L)
    cfg = decoder.config
    gqa = cfg.num_attention_heads != (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    positions, keep, new, k, w, j, causal = slots, None, None, 0, 0, None, None  # closures' cells all set
    if prefill is not None:
        new, prompts, keep = prefill
        k, w = prompts.shape
        j = torch.arange(w, device=ids.device)
        ids, positions = torch.cat([ids, prompts.flatten()]), torch.cat([slots, j.repeat(k)])
        causal = (j <= j[:, None])[None, None]  # (1, 1, W, W)

    def write(i, key, value):
        keys[i][rows, :, slots], values[i][rows, :, slots] = key[:n], value[:n]
        if prefill is not None:
            keys[i][new[:, None], :, j] = key[n:].view(k, w, *key.shape[1:])
            values[i][new[:, None], :, j] = value[n:].view(k, w, *value.shape[1:])
        return keys[i], values[i]

    def attend(q, key, value, scaling):
        # matmuls + softmax, not SDPA: inductor fuses these ~1.5x faster than its SDPA call at 64 rows (2 CPU cores)
        hkv = key.shape[1]
        s = (q[:n].view(n, hkv, -1, q.shape[-1]) * scaling) @ key[:, :, :kv_len].transpose(-1, -2)  # (N, Hkv, G, L)
        p = torch.softmax(s.float().masked_fill(~mask, float("-inf")), -1).to(value.dtype)
        o = (p @ value[:, :, :kv_len]).view(n, -1, q.shape[-1])  # (N, H, D)
        if prefill is None:
            return o
        qp = q[n:].view(k, w, *q.shape[1:]).transpose(1, 2)  # (k, H, W, D)
        kp, vp = key[:, :, :w].index_select(0, new), value[:, :, :w].index_select(0, new)
        op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=causal, scale=scaling, enable_gqa=gqa)
        return torch.cat([o, op.transpose(1, 2).reshape(-1, *o.shape[1:])])

    logits = _decoder_forward(decoder, lm_head, rotate_half, ids[None], positions[None], write, attend, keep, traced=True)[0]
    return torch.log_softmax(logits.float(), -1)


@functools.cache
def compiled_decode_step():
    """``decode_step`` under ``torch.compile`` (inductor, dynamic shapes, C++ wrapper), made once per process; the
    first call of each model compiles (seconds to tens of seconds on CPU; later processes reuse inductor's cache)."""
    return torch.compile(decode_step, dynamic=True, fullgraph=True, options={"cpp_wrapper": True})


def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
