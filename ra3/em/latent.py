"""Latent (think/act) rollouts over expert programs — the E-step's sampler (no Lightning).

Given expert programs split into line segments (``ra3.data.segments``) and a group size G, produce
G annotated versions of each: at every line boundary t the policy either *acts* (the expert line follows)
or *thinks* (a ``# <thought>`` line is inserted first, at the line's indentation).

Decision rule. Let ``L`` = tokens of the expert line segment ``"\\n" + indent + text`` and ``H`` = tokens
of ``"\\n" + indent + marker`` (marker ``#``). They share a prefix of p tokens (the newline+indent
token(s)); the policy's next-token distribution after that prefix decides::

    p_think = (1 - alpha) * pi(H[p]) / (pi(H[p]) + pi(L[p]))

i.e. the probability of starting a comment, renormalised against continuing with the expert's own next
token, then shrunk by the prior ``alpha`` (alpha = 1: never think; RA3 reduces to NTP). A boundary is not
eligible when the line cannot start differently from a comment (blank lines, lines that are comments).

Efficiency. All B×G sequences share one KV cache in which every row has its own length (``RaggedCache``),
and each row runs its own think/act state machine: rows do not wait for each other's thoughts. A step feeds
every unfinished row its next chunk — an expert line teacher-forced whole (one chunk per line), the thought
head, or one sampled thought token — in forwards grouped by chunk length, so decoding rows are not padded to
a line's width and nothing is padded inside the cache. A row that acts is fed several expert lines at once
(``lookahead``, adapted to the thought rate so far): its decisions at the boundaries inside the chunk are
taken from the chunk's logits, and the lines after the first "think" are rolled back. Only thought tokens are
decoded one by one. ``benchmarks/estep_rollout.py`` compares this with ``generate`` per boundary and with
plain ``generate`` of the same number of tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from ra3.data.segments import Segment, indentation
from ra3.rollout.ragged_cache import RaggedCache, ragged_attention

# A teacher-forced line may wait this many decoding steps to share a forward with other rows' lines (fewer,
# fuller forwards: +6-9% rollout tokens/s with a thinking-heavy policy, see benchmarks/estep_rollout.py).
_DEFER_STEPS = 2

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")  # a numeric literal, not digits inside a name

# token kinds in a rollout
CONTEXT, EXPERT, FORCED, MARKER, THOUGHT = 0, 1, 2, 3, 4


class ThoughtFormat:
    """How a thought is written and what makes one malformed. Subclass and point ``thought_format`` at
    your class to change it (e.g. another marker, or stricter checks).

    Args:
        marker: text that starts a thought line after the indentation.
        code_pattern: regex; a thought matching it is code inside a comment (malformed).
        grounded_numbers: a thought citing a number that none of the expert lines after it contains is malformed
            (a comment should not cite a constant its code does not use; ``add 9`` before code that adds 7).
        numbers_from_prompt: a thought citing a number that the program's context (its prompt: signature and
            docstring) does not contain is malformed (a step of the task restated with the task's own constants;
            small numbers such as 0, 1, 2 occur in most code, so ``grounded_numbers`` alone lets them through).
    """

    def __init__(self, marker: str = "#", code_pattern: str = r"==|\s=\s|[()\[\]]|:\s*$|\breturn\b|\bxs\b",
                 grounded_numbers: bool = False, numbers_from_prompt: bool = False):
        self.marker = marker
        self.code_re = re.compile(code_pattern)
        self.grounded_numbers = grounded_numbers
        self.numbers_from_prompt = numbers_from_prompt

    def head(self, indent: str) -> str:
        """The text a thought line starts with (tokenized to find the decision token)."""
        return "\n" + indent + self.marker

    def render(self, text: str, indent: str) -> str:
        return "\n" + indent + self.marker + " " + " ".join(text.split())

    def malformed(self, text: str, hit_max_tokens: bool, following: str = "", context: str = "") -> bool:
        """Malformed: empty, not ended within ``max_thought_tokens`` (rambling/multi-line), code-like, or citing a
        number absent from ``following`` (the expert code after the thought; ``grounded_numbers``) or from
        ``context`` (the program's prompt; ``numbers_from_prompt``)."""
        if hit_max_tokens or not text.strip() or self.code_re.search(text):
            return True
        numbers = set(_NUMBER.findall(text))
        return ((self.grounded_numbers and not numbers <= set(_NUMBER.findall(following)))
                or (self.numbers_from_prompt and not numbers <= set(_NUMBER.findall(context))))


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
        lookahead: expert lines a row may be fed at once, ahead of its think/act decisions (speculatively:
            the lines after the first "think" are dropped, so annotations do not change); the number used
            follows the thought rate seen so far. 1 = one line per forward.
        thought_retries: a malformed thought (``ThoughtFormat.malformed``) is drawn again from the same point up to
            this many times; the last draw is kept. Rejection sampling of the proposal: with a format rule such as
            ``grounded_numbers`` it turns "add 9" before code that adds 7 into another draw, not a dropped thought.
            The kept tokens' log-probs are still the policy's. 0 = off.
    """

    group_size: int = 4
    alpha: float = 0.0
    temperature: float = 1.0
    max_thought_tokens: int = 16
    max_thoughts: int = 8
    max_length: int = 1024
    lookahead: int = 8
    thought_retries: int = 0


def _lookahead(p_think: float, cap: int) -> int:
    """Lines to feed at once when a boundary thinks with probability ``p_think``: as many as are all acted on
    with probability >= 1/2 (1 while p_think >= 1/2), at most ``cap``."""
    if p_think >= 0.5:
        return 1
    if p_think <= 0:
        return cap
    return max(1, min(cap, int(math.log(0.5) / math.log1p(-p_think))))


@dataclass
class LatentRollout:
    """N = B×G annotated sequences, row ``b*G + g``, right-padded to length S.

    ``input_ids``, ``attention_mask``, ``kinds`` (CONTEXT/EXPERT/FORCED/MARKER/THOUGHT), ``token_logprobs``
    (log pi(token | prefix) at temperature 1; 0 at position 0 and padding): (N, S). ``expert_mask``: expert
    line tokens (+eos); ``latent_mask``: sampled thought tokens. Decisions, (N, D) padded with -1/False:
    ``decision_pos`` (index whose next-token logits decide), ``decision_marker``/``decision_expert``
    (token ids compared), ``decision_think``, ``decision_logprob`` (log-prob of the choice under the
    sampling policy). ``expert_logprob`` (N,): sum of expert-token log-probs; ``n_thoughts``,
    ``n_malformed``, ``n_redrawn`` (malformed thoughts drawn again, ``thought_retries``) (N,); ``thoughts[r]``: (line index, text, malformed) triples; ``texts[r]``: the program
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
    n_redrawn: torch.Tensor
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
    t: int = 0  # the next line boundary
    thought: list[int] | None = None  # tokens of the thought being sampled; None when not thinking
    restart: tuple[int, torch.Tensor] | None = None  # (length, log-probs) after the thought head: where a redraw starts
    retries: int = 0  # redraws of the current thought
    n_redrawn: int = 0
    done: bool = False


@dataclass
class _Chunk:
    """What one row is fed in a step: ``tokens`` with their ``kinds``; ``probes``: (offset, u) for each line u
    fed ahead — the policy decides at boundary u from the log-probs after ``tokens[offset]``."""

    tokens: list[int]
    kinds: list[int]
    probes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Line:
    ids: list[int]
    prefix: int  # shared prefix length with the thought head
    marker: list[int]  # thought-head tokens after the shared prefix ([] if not eligible)
    indent: str


def program_from_row(row: dict) -> ExpertProgram:
    """An expert program from a data row (``prompt``+``completion`` or ``text``; ``boundaries`` optional)."""
    from ra3.data.segments import program_segments

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
        from ra3.rollout.sampling import row_generators

        if seeds is None:
            seeds = torch.randint(0, 2**62, (len(programs),), generator=generator).tolist()
        with ragged_attention(self.model):
            return self._rollout(programs, config, row_generators(seeds, config.group_size))

    def _rollout(self, programs, config, gens: list[torch.Generator]) -> LatentRollout:
        run = _RolloutRun(self, programs, config, gens)
        while run.plan or run.waiting:
            run.step()
        return self._pack(run.rows, config)

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
            n_redrawn=torch.tensor([r.n_redrawn for r in rows]),
            thoughts=[r.thoughts for r in rows], texts=["".join(r.text) for r in rows],
            group_size=config.group_size, alpha=config.alpha,
        )


class _RolloutRun:
    """One rollout: every row runs its own think/act state machine; one :meth:`step` feeds each unfinished row its
    next chunk — the rest of an expert line (act; with the next lines fed ahead, checked on return), the thought
    head (think), one sampled thought token, or, once a thought ends, the whole expert line. Rows do not wait for
    each other's thoughts; a row fed a long chunk may wait a little (:meth:`schedule`) to share a forward."""

    def __init__(self, engine: LatentRolloutEngine, programs: list[ExpertProgram], config: LatentConfig,
                 gens: list[torch.Generator]):
        tok, G = engine.tokenizer, config.group_size
        self.engine, self.programs, self.config, self.gens = engine, programs, config, gens
        self.eos = tok.eos_token_id
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        contexts = [bos + [i for s in p.context for i in engine._encode(s.text)] for p in programs]
        self.lines = lines = [[engine._line(s) for s in p.lines] for p in programs]
        self.contexts = ["".join(s.text for s in p.context) for p in programs]
        self.rows = [_Row(b) for b in range(len(programs)) for _ in range(G)]
        for row in self.rows:
            row.text = [s.text for s in programs[row.program].context]
        self.remaining = [sum(len(l.ids) for l in ls) + 1 for ls in lines]  # expert tokens + eos per program
        per_thought = max((len(l.marker) + l.prefix for ls in lines for l in ls), default=0) + config.max_thought_tokens
        longest = (max((len(l.ids) + l.prefix for ls in lines for l in ls), default=0) + 1) * config.lookahead  # widest chunk
        capacity = max(len(c) + n for c, n in zip(contexts, self.remaining)) + config.max_thoughts * per_thought
        self.cache = RaggedCache(engine.model, len(self.rows), min(capacity, config.max_length) + longest)
        self.plan: dict[int, _Chunk] = {}  # row -> what it is fed this step
        self.waiting: dict[int, _Chunk] = {}  # rows whose (long) chunk waits to share a forward
        self.age: dict[int, int] = {}  # steps each waiting row has waited
        self.p_seen: list[float] = []  # p_think of every decision so far: sets how many lines to feed ahead
        for r, row in enumerate(self.rows):  # context + the shared prefix of line 0
            ls = lines[row.program]
            head = ls[0].ids[: ls[0].prefix] if ls else [self.eos]
            self.plan[r] = _Chunk(contexts[row.program] + head, [CONTEXT] * len(contexts[row.program]) + [EXPERT] * len(head))
            row.done = not ls

    # ---- one step ----------------------------------------------------------------------------------
    def step(self) -> None:
        self.schedule()
        plan = self.plan
        fed = self.cache.feed({r: c.tokens for r, c in plan.items()}, {r: [o for o, _ in c.probes] for r, c in plan.items()})
        thinking = [r for r, row in enumerate(self.rows)  # (a row still waiting to be fed its head must not draw)
                    if row.thought is not None and len(row.thought) < self.config.max_thought_tokens and r not in self.waiting]
        self.plan = {}
        for r, (lps, probe_logp) in fed.items():
            self.absorb(r, plan[r], lps, probe_logp)
        draws = self.draw(thinking)
        ahead = _lookahead(sum(self.p_seen) / len(self.p_seen) if self.p_seen else 1.0, self.config.lookahead)
        for r, row in enumerate(self.rows):
            if not (row.done or r in self.waiting or r in self.plan):
                self.advance(r, row, draws.get(r), ahead)

    def schedule(self) -> None:
        """Batching only (never changes an annotation): multi-token chunks wait up to ``_DEFER_STEPS`` steps, or
        until a quarter of the rows or nothing else is pending, so that lines share forwards."""
        for r in [r for r, chunk in self.plan.items() if len(chunk.tokens) > 1]:
            self.waiting[r] = self.plan.pop(r)
            self.age[r] = 0
        if not self.plan or 4 * len(self.waiting) >= len(self.rows) or max(self.age.values(), default=0) >= _DEFER_STEPS:
            self.plan.update(self.waiting)
            self.waiting.clear()
            self.age.clear()
        else:
            self.age = {r: a + 1 for r, a in self.age.items()}

    def absorb(self, r: int, chunk: _Chunk, lps: list[float], probe_logp) -> None:
        """Append what row ``r`` was fed; decide at each boundary inside the chunk (lines fed ahead): at the first
        "think", rewind the cache to that boundary and drop the rest."""
        row = self.rows[r]
        ends = [o + 1 for o, _ in chunk.probes] + [len(chunk.tokens)]
        row.tokens += chunk.tokens[: ends[0]]
        row.kinds += chunk.kinds[: ends[0]]
        row.logprobs += lps[: ends[0]]
        for j, (_, u) in enumerate(chunk.probes):
            line = self.lines[row.program][u]
            if self.decide(r, line, probe_logp[j]):
                self.cache.rewind(r, len(row.tokens), probe_logp[j])
                self.think(r, line)
                return
            self.act(row)
            row.tokens += chunk.tokens[ends[j]: ends[j + 1]]
            row.kinds += chunk.kinds[ends[j]: ends[j + 1]]
            row.logprobs += lps[ends[j]: ends[j + 1]]

    def advance(self, r: int, row: _Row, drawn: int | None, ahead: int) -> None:
        """Row ``r`` is at boundary ``row.t`` (or inside a thought): decide, extend the thought with the drawn
        token, or close it and feed the expert line (+ ``ahead`` - 1 more)."""
        line = self.lines[row.program][row.t]
        if row.thought is None and self.decide(r, line, self.cache.last_logp[r]):
            self.think(r, line)
            return
        if row.thought is not None:
            if row.restart is None and self.config.thought_retries:  # where a redraw starts (a copy of the logits)
                row.restart = (len(row.tokens), self.cache.last_logp[r].clone())
            while True:
                if drawn is not None and not self.engine.thought_end[drawn]:
                    row.thought.append(drawn)
                    self.plan[r] = _Chunk([drawn], [THOUGHT])
                    return
                fmt = self.engine.format
                text = self.engine.tokenizer.decode(row.thought, skip_special_tokens=True).strip()
                following = "".join(seg.text for seg in self.programs[row.program].lines[row.t:])
                bad = fmt.malformed(text, hit_max_tokens=drawn is None, following=following,
                                    context=self.contexts[row.program])
                if not (bad and row.retries < self.config.thought_retries):
                    break
                drawn = self.redraw(r, row)
            row.thoughts.append((row.t, text, bad))
            row.text.append(fmt.render(text, line.indent))
            self.plan[r] = self.expert_chunk(row, line.ids, ahead)
            row.thought, row.restart, row.retries = None, None, 0
        else:
            self.plan[r] = self.expert_chunk(row, line.ids[line.prefix:], ahead)
        self.act(row)

    # ---- the state machine's moves -----------------------------------------------------------------
    def decide(self, r: int, line: _Line, logp: torch.Tensor) -> bool:
        """Sample think/act for row ``r`` at the boundary before ``line`` (rule in the module docstring); records the
        decision in ``row.decisions`` and its p_think in ``p_seen``. Not eligible (no decision): False."""
        row, config = self.rows[r], self.config
        if not line.marker:
            return False
        room = len(row.tokens) + self.remaining[row.program] + len(line.marker) + config.max_thought_tokens + line.prefix
        if len(row.thoughts) >= config.max_thoughts or room > config.max_length:
            return False
        row.n_boundaries += 1
        p_think = ((1.0 - config.alpha) * torch.sigmoid(logp[line.marker[0]] - logp[line.ids[line.prefix]])).cpu()
        choose = bool(torch.rand((), generator=self.gens[r]) < p_think) if p_think > 0 else False
        lp = torch.log(p_think) if choose else torch.log1p(-p_think)
        row.decisions.append((len(row.tokens) - 1, line.marker[0], line.ids[line.prefix], choose, float(lp)))
        self.p_seen.append(float(p_think))
        return choose

    def draw(self, thinking: list[int]) -> dict[int, int]:
        """Next thought token of each row in ``thinking``, sampled at ``config.temperature`` among the tokenizer's
        ids (models often pad their embedding past the tokenizer, e.g. Qwen2.5: 151,936 vs 151,665)."""
        if not thinking:
            return {}
        vocab = len(self.engine.thought_end)
        cdf = torch.softmax(self.cache.last_logp[thinking, :vocab] / max(self.config.temperature, 1e-6), -1).cumsum(-1)
        u = torch.stack([torch.rand((), generator=self.gens[r]) for r in thinking]).to(cdf.device)  # inverse-CDF sampling
        picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=cdf.shape[1] - 1)[:, 0]
        return dict(zip(thinking, picks.tolist()))

    def redraw(self, r: int, row: _Row) -> int:
        """Forget row ``r``'s thought so far (tokens and cache) and draw its first token again."""
        n, logp = row.restart
        del row.tokens[n:], row.kinds[n:], row.logprobs[n:]
        self.cache.rewind(r, n, logp)
        row.thought, row.retries, row.n_redrawn = [], row.retries + 1, row.n_redrawn + 1
        return self.draw([r])[r]

    def think(self, r: int, line: _Line) -> None:
        row = self.rows[r]
        row.thought = []
        for i in range(len(row.kinds) - line.prefix, len(row.kinds)):
            row.kinds[i] = FORCED  # the prefix already fed belongs to the thought line
        self.plan[r] = _Chunk(line.marker, [MARKER] + [FORCED] * (len(line.marker) - 1))

    def act(self, row: _Row) -> None:
        """Expert line ``row.t`` is in: on to boundary t + 1."""
        row.text.append(self.programs[row.program].lines[row.t].text)
        row.t += 1
        row.done = row.t == len(self.lines[row.program])

    def tail(self, ls: list[_Line], t: int) -> list[int]:
        """What follows expert line t: line t+1's prefix, or eos."""
        return ls[t + 1].ids[: ls[t + 1].prefix] if t + 1 < len(ls) else [self.eos]

    def expert_chunk(self, row: _Row, first: list[int], ahead: int) -> _Chunk:
        """``first`` (expert line t, whole or after its shared prefix) + the next line's prefix (or eos), then up
        to ``ahead - 1`` more lines fed speculatively: each with a probe at its boundary."""
        ls, t = self.lines[row.program], row.t
        chunk = _Chunk(first + self.tail(ls, t), [])
        for u in range(t + 1, min(t + ahead, len(ls))):
            chunk.probes.append((len(chunk.tokens) - 1, u))
            chunk.tokens += ls[u].ids[ls[u].prefix:] + self.tail(ls, u)
        chunk.kinds = [EXPERT] * len(chunk.tokens)
        return chunk


def decision_logprobs(logp_at_pos: torch.Tensor, marker: torch.Tensor, expert: torch.Tensor, think: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """Log-probability of each think/act choice from next-token log-probs at the decision positions.

    ``logp_at_pos``: (..., V) log-softmax; ``marker``/``expert``/``think``: (...). Differentiable."""
    la = logp_at_pos.gather(-1, marker[..., None]).squeeze(-1)
    le = logp_at_pos.gather(-1, expert[..., None]).squeeze(-1)
    log_p = torch.nn.functional.logsigmoid(la - le) + (torch.log1p(torch.tensor(-alpha, dtype=la.dtype)) if alpha > 0 else 0.0)
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
    return torch.where(think, log_p, log_not_p)


def render(program, thoughts: list[tuple[int, str, bool]], fmt) -> str:
    """The program's text with ``(line, text, malformed)`` thoughts inserted before their lines (as a rollout
    writes them)."""
    at = {t: text for t, text, _ in thoughts}
    out = [s.text for s in program.context]
    for t, seg in enumerate(program.lines):
        if t in at:
            out.append(fmt.render(at[t], indentation(seg.text)))
        out.append(seg.text)
    return "".join(out)
