"""Latent (think/act) rollouts over expert programs — the E-step's sampler (no Lightning).

Given expert programs split into line segments (``ra3.datamodules.segments``) and a group size G, produce
G annotated versions of each: at every line boundary t the policy either *acts* (the expert line follows)
or *thinks* (a ``# <thought>`` line is inserted first, at the line's indentation).

Decision rule. Let ``L`` = tokens of the expert line segment ``"\\n" + indent + text`` and ``H`` = tokens
of ``"\\n" + indent + marker`` (marker ``#``). They share a prefix of p tokens (the newline+indent
token(s)); the policy's next-token distribution after that prefix decides::

    p_think = (1 - alpha) * pi(H[p]) / (pi(H[p]) + pi(L[p]))

i.e. the probability of starting a comment, renormalised against continuing with the expert's own next
token, then shrunk by the prior ``alpha`` (alpha = 1: never think; RA3 reduces to NTP). A boundary is not
eligible when the line cannot start differently from a comment (blank lines, lines that are comments).

Efficiency. All B×G sequences advance together through one KV cache. Expert lines are teacher-forced in
chunks (one forward per line segment for the whole batch, rows right-padded inside the cache and masked);
only thought tokens are decoded one by one, and only while some row is thinking — on a sub-cache of the
thinking rows, whose new K/V slots are then appended to the main cache (masked for the other rows), so no
thought token is computed twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ra3.datamodules.segments import Segment, indentation

# token kinds in a rollout
CONTEXT, EXPERT, FORCED, MARKER, THOUGHT = 0, 1, 2, 3, 4


class ThoughtFormat:
    """How a thought is written and what makes one malformed. Subclass and point ``thought_format`` at
    your class to change it (e.g. another marker, or stricter checks).

    Args:
        marker: text that starts a thought line after the indentation.
        code_pattern: regex; a thought matching it is code inside a comment (malformed).
    """

    def __init__(self, marker: str = "#", code_pattern: str = r"==|\s=\s|[()\[\]]|:\s*$|\breturn\b|\bxs\b"):
        self.marker = marker
        self.code_re = re.compile(code_pattern)

    def head(self, indent: str) -> str:
        """The text a thought line starts with (tokenized to find the decision token)."""
        return "\n" + indent + self.marker

    def render(self, text: str, indent: str) -> str:
        return "\n" + indent + self.marker + " " + " ".join(text.split())

    def malformed(self, text: str, hit_max_tokens: bool) -> bool:
        """Malformed: empty, not ended within ``max_thought_tokens`` (rambling/multi-line), or code-like."""
        return hit_max_tokens or not text.strip() or bool(self.code_re.search(text))


@dataclass
class ExpertProgram:
    """``context``: segments before the first boundary (header, docstring); ``lines``: one boundary before
    each. ``boundaries``: ground-truth indices into ``lines`` where blocks start (for scoring only)."""

    context: list[Segment]
    lines: list[Segment]
    task_id: str = ""
    boundaries: list[int] | None = None
    labels: list[str] | None = None  # ground-truth intent of each block (e.g. the skill description)


@dataclass
class LatentConfig:
    """Knobs of the latent rollout.

    Args:
        group_size: annotations sampled per program (G).
        alpha: prior weight on "no new thought"; 1 disables thinking.
        temperature: sampling temperature of thought tokens (log-probs are reported at temperature 1).
        max_thought_tokens: a thought longer than this is cut (and malformed).
        max_thoughts: thoughts per program at most.
        max_length: total tokens per sequence at most (thinking stops when it would not fit).
    """

    group_size: int = 4
    alpha: float = 0.0
    temperature: float = 1.0
    max_thought_tokens: int = 16
    max_thoughts: int = 8
    max_length: int = 1024


@dataclass
class LatentRollout:
    """N = B×G annotated sequences, row ``b*G + g``, right-padded to length S.

    ``input_ids``, ``attention_mask``, ``kinds`` (CONTEXT/EXPERT/FORCED/MARKER/THOUGHT), ``token_logprobs``
    (log pi(token | prefix) at temperature 1; 0 at position 0 and padding): (N, S). ``expert_mask``: expert
    line tokens (+eos); ``latent_mask``: sampled thought tokens. Decisions, (N, D) padded with -1/False:
    ``decision_pos`` (index whose next-token logits decide), ``decision_marker``/``decision_expert``
    (token ids compared), ``decision_think``, ``decision_logprob`` (log-prob of the choice under the
    sampling policy). ``expert_logprob`` (N,): sum of expert-token log-probs; ``n_thoughts``,
    ``n_malformed`` (N,); ``thoughts[r]``: (line index, text, malformed) triples; ``texts[r]``: the program
    with its thoughts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    kinds: torch.Tensor
    token_logprobs: torch.Tensor
    expert_mask: torch.Tensor
    latent_mask: torch.Tensor
    decision_pos: torch.Tensor
    decision_marker: torch.Tensor
    decision_expert: torch.Tensor
    decision_think: torch.Tensor
    decision_logprob: torch.Tensor
    expert_logprob: torch.Tensor
    n_thoughts: torch.Tensor
    n_malformed: torch.Tensor
    n_boundaries: torch.Tensor
    thoughts: list[list[tuple[int, str, bool]]]
    texts: list[str]
    group_size: int
    alpha: float

    def to(self, device) -> "LatentRollout":
        """Move every tensor field to ``device`` (in place); returns self."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self


@dataclass
class _Row:
    program: int
    tokens: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    decisions: list[tuple[int, int, int, bool, float]] = field(default_factory=list)
    thoughts: list[tuple[int, str, bool]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    n_boundaries: int = 0


@dataclass
class _Line:
    ids: list[int]
    prefix: int  # shared prefix length with the thought head
    marker: list[int]  # thought-head tokens after the shared prefix ([] if not eligible)
    indent: str


class _Cache:
    """A batched KV cache in which rows advance by different numbers of tokens per call: every call appends
    W slots to all rows; padding slots are masked out for good."""

    def __init__(self, model, n_rows: int, pad_id: int):
        import inspect

        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.past = None
        self.mask = torch.zeros(n_rows, 0, dtype=torch.long, device=self.device)
        self.lengths = torch.zeros(n_rows, dtype=torch.long, device=self.device)
        self.last_logp: torch.Tensor | None = None  # (N, V) fp32 log-probs after each row's last real token

    def select(self, rows: list[int]) -> "_Cache":
        """A cache holding only ``rows`` (copies of their K/V; the main cache is untouched)."""
        import copy

        sub = _Cache.__new__(_Cache)
        sub.model, sub.pad_id, sub.device, sub.cache_kwarg = self.model, self.pad_id, self.device, self.cache_kwarg
        index = torch.tensor(rows, device=self.device)
        sub.past = copy.copy(self.past)
        sub.past.layers = [copy.copy(layer) for layer in self.past.layers]
        for layer in sub.past.layers:
            layer.batch_select_indices(index)  # rebinds keys/values to indexed copies
        sub.mask, sub.lengths, sub.last_logp = self.mask[index], self.lengths[index], self.last_logp[index]
        return sub

    def can_absorb(self) -> bool:
        return self.past is not None and all(type(layer).__name__ == "DynamicLayer" for layer in self.past.layers)

    def absorb(self, sub: "_Cache", rows: list[int]) -> None:
        """Append the slots ``sub`` (a ``select(rows)``) added since the split: ``rows`` get its K/V, mask,
        lengths and last log-probs; every other row gets masked padding slots."""
        start = self.mask.shape[1]
        added = sub.mask.shape[1] - start
        if added <= 0:
            return
        index = torch.tensor(rows, device=self.device)
        for layer, sub_layer in zip(self.past.layers, sub.past.layers):
            for name in ("keys", "values"):
                full = getattr(layer, name)
                new = full.new_zeros(full.shape[0], full.shape[1], added, full.shape[3])
                new[index] = getattr(sub_layer, name)[:, :, start:]
                setattr(layer, name, torch.cat([full, new], 2))
        mask = self.mask.new_zeros(self.mask.shape[0], added)
        mask[index] = sub.mask[:, start:]
        self.mask = torch.cat([self.mask, mask], 1)
        self.lengths[index] = sub.lengths
        self.last_logp[index] = sub.last_logp

    @torch.no_grad()
    def feed(self, chunks: list[list[int]]) -> list[list[float]]:
        """Append each row's chunk; returns the log-prob of every appended token given its prefix."""
        width = max(map(len, chunks))
        if width == 0:
            return [[] for _ in chunks]
        n = len(chunks)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        real = torch.zeros((n, width), dtype=torch.long)
        for r, c in enumerate(chunks):
            if c:
                ids[r, : len(c)] = torch.tensor(c)
                real[r, : len(c)] = 1
        ids, real = ids.to(self.device), real.to(self.device)
        positions = (self.lengths[:, None] + torch.cumsum(real, 1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, real], 1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                         **{self.cache_kwarg: self.past})
        self.past = getattr(out, self.cache_kwarg, None) or out.past_key_values
        logp = torch.log_softmax(out.logits.float(), -1)  # (N, W, V)
        if self.last_logp is None:
            self.last_logp = torch.zeros(n, logp.shape[-1], dtype=torch.float32, device=self.device)
        # log-prob of token j comes from the position before it: the previous call's last position for j = 0
        prev = torch.cat([self.last_logp[:, None], logp[:, :-1]], 1)
        token_lp = prev.gather(2, ids[:, :, None]).squeeze(2).tolist()
        lengths = real.sum(1)
        has = lengths > 0
        self.last_logp[has] = logp[has, (lengths - 1).clamp(min=0)[has]]
        self.lengths += lengths
        return [lp[: len(c)] for lp, c in zip(token_lp, chunks)]


def program_from_row(row: dict) -> ExpertProgram:
    """An expert program from a data row (``prompt``+``completion`` or ``text``; ``boundaries`` optional)."""
    from ra3.datamodules.segments import program_segments

    if "prompt" in row and "completion" in row:
        segs = program_segments(prompt=row["prompt"], completion=row["completion"])
    else:
        segs = program_segments(text=row["text"])
    n_context = sum(s.kind == "prompt" for s in segs) or 1
    boundaries = labels = None
    if row.get("boundaries") is not None:
        boundaries = [b - n_context for b in row["boundaries"] if b >= n_context]
    truth = row.get("intents") or [s["description"] for s in row.get("skills") or []]
    if truth and boundaries is not None and len(truth) == len(boundaries):
        labels = truth
    return ExpertProgram(segs[:n_context], segs[n_context:], row.get("task_id", ""), boundaries, labels)


class LatentRolloutEngine:
    """Samples think/act annotations with a causal LM (see the module docstring for the rule)."""

    def __init__(self, model, tokenizer, thought_format: ThoughtFormat | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.format = thought_format or ThoughtFormat()
        vocab = len(tokenizer)
        ends = torch.zeros(vocab, dtype=torch.bool)
        for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(vocab)))):
            text = tokenizer.convert_tokens_to_string([piece]) if piece is not None else ""
            if "\n" in text:
                ends[i] = True
        for special in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            if special is not None:
                ends[special] = True
        self.thought_end = ends  # tokens that end a thought (not kept)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _line(self, seg: Segment) -> _Line:
        ids = self._encode(seg.text)
        indent = indentation(seg.text)
        head = self._encode(self.format.head(indent))
        p = 0
        while p < min(len(ids), len(head)) and ids[p] == head[p]:
            p += 1
        eligible = seg.kind != "thought" and p < len(ids) and p < len(head) and seg.text.strip() != ""
        return _Line(ids, p, head[p:] if eligible else [], indent)

    @torch.no_grad()
    def rollout(self, programs: list[ExpertProgram], config: LatentConfig, generator: torch.Generator | None = None,
                seeds: list[int] | None = None) -> LatentRollout:
        """G annotations per program. Randomness: one generator per (program, sample), seeded from ``seeds``
        (one per program; then a program's annotations do not depend on the batch it is in) or from
        ``generator``."""
        from ra3.rollout.generate import row_generators

        if seeds is None:
            seeds = torch.randint(0, 2**62, (len(programs),), generator=generator).tolist()
        model = self.model
        was_training = model.training
        model.eval()
        try:
            return self._rollout(programs, config, row_generators(seeds, config.group_size))
        finally:
            model.train(was_training)

    def _rollout(self, programs, config, gens: list[torch.Generator]) -> LatentRollout:
        tok, G = self.tokenizer, config.group_size
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        contexts = [bos + [i for s in p.context for i in self._encode(s.text)] for p in programs]
        lines = [[self._line(s) for s in p.lines] for p in programs]
        rows = [_Row(b) for b in range(len(programs)) for _ in range(G)]
        for row in rows:
            row.text = [s.text for s in programs[row.program].context]
        cache = _Cache(self.model, len(rows), tok.pad_token_id)
        remaining = [sum(len(l.ids) for l in ls) + 1 for ls in lines]  # expert tokens + eos per program

        def append(r: int, ids: list[int], kind: int, lps: list[float]) -> None:
            rows[r].tokens += ids
            rows[r].kinds += [kind] * len(ids)
            rows[r].logprobs += lps

        # context + the shared prefix of line 0
        first = [contexts[row.program] + (lines[row.program][0].ids[: lines[row.program][0].prefix] if lines[row.program] else [])
                 for row in rows]
        for r, lps in enumerate(cache.feed(first)):
            n_ctx = len(contexts[rows[r].program])
            append(r, first[r][:n_ctx], CONTEXT, lps[:n_ctx])
            append(r, first[r][n_ctx:], EXPERT, lps[n_ctx:])
        max_lines = max((len(ls) for ls in lines), default=0)
        for t in range(max_lines):
            active = [r for r, row in enumerate(rows) if t < len(lines[row.program])]
            think: list[int] = []
            for r in active:
                row, line = rows[r], lines[rows[r].program][t]
                if not line.marker:
                    continue
                room = len(row.tokens) + remaining[row.program] + len(line.marker) + config.max_thought_tokens + line.prefix
                if len(row.thoughts) >= config.max_thoughts or room > config.max_length:
                    continue
                row.n_boundaries += 1
                la = cache.last_logp[r, line.marker[0]]
                le = cache.last_logp[r, line.ids[line.prefix]]
                p_think = (1.0 - config.alpha) * torch.sigmoid(la - le)
                choose = bool(torch.rand((), generator=gens[r]) < p_think.cpu()) if p_think > 0 else False
                lp = torch.log(p_think) if choose else torch.log1p(-p_think)
                row.decisions.append((len(row.tokens) - 1, line.marker[0], line.ids[line.prefix], choose, float(lp)))
                if choose:
                    think.append(r)
                    # the prefix already fed belongs to the thought line, not the expert line
                    for i in range(len(row.kinds) - line.prefix, len(row.kinds)):
                        row.kinds[i] = FORCED
            sampled = self._think(cache, think, [lines[rows[r].program][t].marker for r in think], config, gens) if think else {}
            for r in think:
                row, line = rows[r], lines[rows[r].program][t]
                tokens, hit_max, lps = sampled[r]
                if lps is not None:  # marker + thought already in the main cache
                    row.tokens += line.marker + tokens
                    row.kinds += [MARKER] + [FORCED] * (len(line.marker) - 1) + [THOUGHT] * len(tokens)
                    row.logprobs += lps
                text = tok.decode(tokens, skip_special_tokens=True).strip()
                row.thoughts.append((t, text, self.format.malformed(text, hit_max)))
                row.text.append(self.format.render(text, line.indent))
            # one teacher-forced chunk per row: [marker + thought +] the expert line + the next line's prefix (or eos)
            chunks, kinds = [[] for _ in rows], [[] for _ in rows]
            for r in active:
                row, ls = rows[r], lines[rows[r].program]
                line = ls[t]
                tail = ls[t + 1].ids[: ls[t + 1].prefix] if t + 1 < len(ls) else [tok.eos_token_id]
                if r in sampled and sampled[r][2] is not None:
                    chunks[r] = line.ids + tail
                    kinds[r] = [EXPERT] * len(chunks[r])
                elif r in sampled:
                    thought = sampled[r][0]
                    chunks[r] = line.marker + thought + line.ids + tail
                    kinds[r] = [MARKER] + [FORCED] * (len(line.marker) - 1) + [THOUGHT] * len(thought) \
                        + [EXPERT] * (len(line.ids) + len(tail))
                else:
                    chunks[r] = line.ids[line.prefix:] + tail
                    kinds[r] = [EXPERT] * len(chunks[r])
                row.text.append(programs[row.program].lines[t].text)
            for r, lps in enumerate(cache.feed(chunks)):
                if lps:
                    rows[r].tokens += chunks[r]
                    rows[r].kinds += kinds[r]
                    rows[r].logprobs += lps
        return self._pack(rows, config)

    def _think(self, cache: _Cache, think: list[int], markers: list[list[int]], config: LatentConfig,
               gens: list[torch.Generator]) -> dict[int, tuple[list[int], bool, list[float] | None]]:
        """Sample a thought for each row in ``think`` on a sub-cache holding only those rows.

        Returns ``{row: (thought tokens, hit max_thought_tokens, log-probs of marker + thought tokens)}``.
        When the cache can take them back (``_Cache.absorb``), the marker and thought K/V go into the main
        cache and the log-probs are those of the sampling pass; otherwise the log-probs are ``None`` and the
        caller teacher-forces marker + thought in the main cache."""
        sub = cache.select(think)
        marker_lps = sub.feed(markers)
        sampled = {i: [] for i in range(len(think))}
        lps = {i: list(marker_lps[i]) for i in range(len(think))}
        open_rows, hit_max = set(sampled), set()
        while open_rows:
            for i in [i for i in open_rows if len(sampled[i]) >= config.max_thought_tokens]:
                hit_max.add(i)
                open_rows.discard(i)
            order = sorted(open_rows)
            if not order:
                break
            probs = torch.softmax(sub.last_logp[order] / max(config.temperature, 1e-6), -1).cpu()
            draws = [int(torch.multinomial(probs[k], 1, generator=gens[think[i]])) for k, i in enumerate(order)]
            chunks = [[] for _ in think]
            for i, nxt in zip(order, draws):
                if self.thought_end[nxt]:
                    open_rows.discard(i)
                else:
                    chunks[i] = [nxt]
                    sampled[i].append(nxt)
            if any(chunks):
                for i, lp in enumerate(sub.feed(chunks)):
                    lps[i] += lp
        absorbed = cache.can_absorb()
        if absorbed:
            cache.absorb(sub, think)
        return {r: (sampled[i], i in hit_max, lps[i] if absorbed else None) for i, r in enumerate(think)}

    def _pack(self, rows: list[_Row], config: LatentConfig) -> LatentRollout:
        N, S = len(rows), max(len(r.tokens) for r in rows)
        D = max((len(r.decisions) for r in rows), default=0) or 1
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((N, S), pad, dtype=torch.long)
        attention = torch.zeros((N, S), dtype=torch.long)
        kinds = torch.full((N, S), -1, dtype=torch.long)
        logprobs = torch.zeros((N, S), dtype=torch.float32)  # fp32 whatever the default dtype (bf16-true)
        dpos = torch.full((N, D), -1, dtype=torch.long)
        dmark = torch.zeros((N, D), dtype=torch.long)
        dexp = torch.zeros((N, D), dtype=torch.long)
        dthink = torch.zeros((N, D), dtype=torch.bool)
        dlp = torch.zeros((N, D), dtype=torch.float32)
        for i, row in enumerate(rows):
            n = len(row.tokens)
            input_ids[i, :n] = torch.tensor(row.tokens)
            attention[i, :n] = 1
            kinds[i, :n] = torch.tensor(row.kinds)
            logprobs[i, :n] = torch.tensor(row.logprobs)
            for j, (pos, m, e, th, lp) in enumerate(row.decisions):
                dpos[i, j], dmark[i, j], dexp[i, j], dthink[i, j], dlp[i, j] = pos, m, e, th, lp
        expert = kinds == EXPERT
        return LatentRollout(
            input_ids, attention, kinds, logprobs, expert, kinds == THOUGHT, dpos, dmark, dexp, dthink, dlp,
            expert_logprob=(logprobs * expert).sum(1),
            n_thoughts=torch.tensor([len(r.thoughts) for r in rows]),
            n_malformed=torch.tensor([sum(bad for *_, bad in r.thoughts) for r in rows]),
            n_boundaries=torch.tensor([r.n_boundaries for r in rows]),
            thoughts=[r.thoughts for r in rows], texts=["".join(r.text) for r in rows],
            group_size=config.group_size, alpha=config.alpha,
        )


def decision_logprobs(logp_at_pos: torch.Tensor, marker: torch.Tensor, expert: torch.Tensor, think: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """Log-probability of each think/act choice from next-token log-probs at the decision positions.

    ``logp_at_pos``: (..., V) log-softmax; ``marker``/``expert``/``think``: (...). Differentiable."""
    la = logp_at_pos.gather(-1, marker[..., None]).squeeze(-1)
    le = logp_at_pos.gather(-1, expert[..., None]).squeeze(-1)
    log_p = torch.nn.functional.logsigmoid(la - le) + (torch.log1p(torch.tensor(-alpha, dtype=la.dtype)) if alpha > 0 else 0.0)
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
    return torch.where(think, log_p, log_not_p)
