"""Synthetic skill world: the embedded, download-free default for every phase (no Lightning import).

A *skill* is a parametrised list transformation written as a 2–4-line code block (the ground-truth
action abstraction). A *task* is a chain of 2–5 skills applied to ``xs``::

    def solve(xs):
        \"\"\"<docstring>\"\"\"
        <block of skill 1>
        ...
        return xs

Docstring styles (``style``):

- ``steps``: one clause per skill, in execution order ("Keep the values greater than 3, then ...").
  The docstring already is the plan, so comments add little (see the method notes).
- ``macro``: the docstring names *routines* ("Tidy the list, then spread it."), each of which expands
  into a fixed chain of 2–3 skills. The per-block intent is latent: it is what a thought recovers.
- ``mixed``: each task draws one of the two.
- ``shuffled``: a ``steps`` docstring with the clauses out of order, each with its ordinal ("Second, square
  each value. First, ..."): writing the code means re-ordering the plan, which ``# first, ...`` comments
  make explicit (state tracking by lookup instead of counting code blocks).

Held-out *combinations* are adjacent skill pairs (bigrams) reserved for evaluation: no training
corpus (pre-training, mid-training, RL) ever contains one, and every evaluation task contains at
least one; evaluation chains also run one skill longer than training chains.

:func:`build_world` emits, deterministically from a seed: a pre-training corpus (a fraction of
programs carry ``# <skill description>`` before each block), a mid-training corpus of expert
programs without comments, RL and evaluation splits with unit tests, and the ground-truth block
boundaries (0-based line indices of each block's first line in the program text).
"""

from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

from ra3.data.io import write_jsonl

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "skillworld"  # the skill world's shipped recipes


def skillworld_model_config(**overrides) -> dict:
    """The skill world's model: ``model_config`` of the shipped ``skillworld/pretrain`` recipe, with ``overrides``."""
    import yaml

    recipe = yaml.safe_load((RECIPES / "pretrain.yaml").read_text())
    return {**recipe["model"]["init_args"]["model_config"], **overrides}


INDENT = "    "
Style = Literal["steps", "macro", "mixed", "shuffled"]
MAX_REDRAWS = 200
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]


@dataclass(frozen=True)
class Skill:
    name: str
    params: tuple[str, ...]
    describe: Callable[..., str]  # params -> clause, e.g. "keep the values greater than 3"
    block: Callable[..., list[str]]  # params -> code lines (without the function indentation)
    apply: Callable[..., list[int]]  # (xs, *params) -> new list
    sample: Callable[[random.Random], tuple[int, ...]] = lambda rng: ()


def _digit(lo: int, hi: int) -> Callable[[random.Random], tuple[int, ...]]:
    return lambda rng: (rng.randint(lo, hi),)


def _running_total(xs: list[int]) -> list[int]:
    return list(itertools.accumulate(xs))


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in [
        Skill("keep_greater", ("k",), lambda k: f"keep the values greater than {k}",
              lambda k: ["kept = []", "for x in xs:", f"    if x > {k}: kept.append(x)", "xs = kept"],
              lambda xs, k: [x for x in xs if x > k], _digit(0, 5)),
        Skill("square", (), lambda: "square each value",
              lambda: ["for i in range(len(xs)):", "    xs[i] = xs[i] * xs[i]"],
              lambda xs: [x * x for x in xs]),
        Skill("running_total", (), lambda: "replace each value by the running total",
              lambda: ["total = 0", "for i in range(len(xs)):", "    total += xs[i]", "    xs[i] = total"],
              _running_total),
        Skill("dedupe", (), lambda: "remove duplicates keeping the first occurrence",
              lambda: ["seen = set()", "xs = [x for x in xs if not (x in seen or seen.add(x))]"],
              lambda xs: list(dict.fromkeys(xs))),
        Skill("reverse", (), lambda: "reverse the list",
              lambda: ["n = len(xs)", "xs = [xs[n - 1 - i] for i in range(n)]"],
              lambda xs: xs[::-1]),
        Skill("sort", (), lambda: "sort the values in increasing order",
              lambda: ["xs = list(xs)", "xs.sort()"],
              sorted),
        Skill("take_first", ("k",), lambda k: f"keep only the first {k} values",
              lambda k: [f"if len(xs) > {k}:", f"    xs = xs[:{k}]"],
              lambda xs, k: xs[:k], _digit(2, 6)),
        Skill("differences", (), lambda: "replace the list by the differences of neighbours",
              lambda: ["diffs = []", "for i in range(1, len(xs)):", "    diffs.append(xs[i] - xs[i - 1])", "xs = diffs"],
              lambda xs: [b - a for a, b in zip(xs, xs[1:])]),
        Skill("clip", ("lo", "hi"), lambda lo, hi: f"clip each value to the range {lo} to {hi}",
              lambda lo, hi: ["for i in range(len(xs)):", f"    xs[i] = min(max(xs[i], {lo}), {hi})"],
              lambda xs, lo, hi: [min(max(x, lo), hi) for x in xs],
              lambda rng: (lambda lo: (lo, lo + rng.randint(2, 5)))(rng.randint(-3, 2))),
        Skill("zero_negatives", (), lambda: "set the negative values to zero",
              lambda: ["for i in range(len(xs)):", "    if xs[i] < 0:", "        xs[i] = 0"],
              lambda xs: [max(x, 0) for x in xs]),
        Skill("multiply", ("k",), lambda k: f"multiply each value by {k}",
              lambda k: [f"scaled = [x * {k} for x in xs]", "xs = scaled"],
              lambda xs, k: [x * k for x in xs], _digit(2, 5)),
        Skill("drop_every_second", (), lambda: "drop every second value",
              lambda: ["kept = []", "for i in range(0, len(xs), 2):", "    kept.append(xs[i])", "xs = kept"],
              lambda xs: xs[::2]),
        Skill("add", ("k",), lambda k: f"add {k} to each value",
              lambda k: ["for i in range(len(xs)):", f"    xs[i] = xs[i] + {k}"],
              lambda xs, k: [x + k for x in xs], _digit(1, 9)),
        Skill("remove_value", ("k",), lambda k: f"remove every occurrence of {k}",
              lambda k: [f"while {k} in xs:", f"    xs.remove({k})"],
              lambda xs, k: [x for x in xs if x != k], _digit(0, 4)),
    ]
}

# Other surface forms of each skill (``WorldConfig.surfaces`` > 1): same behaviour, other code. Index 0 is the
# skill's own ``block``; a program draws one surface per block, so the code action space grows while the plan
# space (skills, routines) stays the same.
SURFACES: dict[str, list[Callable[..., list[str]]]] = {
    "keep_greater": [lambda k: [f"xs = [x for x in xs if x > {k}]"],
                     lambda k: [f"xs = list(filter(lambda x: x > {k}, xs))"]],
    "square": [lambda: ["xs = [x * x for x in xs]"], lambda: ["xs = list(map(lambda x: x * x, xs))"]],
    "running_total": [lambda: ["acc = []", "for x in xs:", "    acc.append(x + (acc[-1] if acc else 0))", "xs = acc"],
                      lambda: ["xs = [sum(xs[:i + 1]) for i in range(len(xs))]"]],
    "dedupe": [lambda: ["out = []", "for x in xs:", "    if x not in out: out.append(x)", "xs = out"],
               lambda: ["xs = list(dict.fromkeys(xs))"]],
    "reverse": [lambda: ["xs = xs[::-1]"], lambda: ["xs = list(reversed(xs))"]],
    "sort": [lambda: ["xs = sorted(xs)"], lambda: ["ys = list(xs)", "ys.sort()", "xs = ys"]],
    "take_first": [lambda k: [f"xs = xs[:{k}]"], lambda k: [f"xs = [x for i, x in enumerate(xs) if i < {k}]"]],
    "differences": [lambda: ["xs = [b - a for a, b in zip(xs, xs[1:])]"],
                    lambda: ["xs = [xs[i] - xs[i - 1] for i in range(1, len(xs))]"]],
    "clip": [lambda lo, hi: [f"xs = [min(max(x, {lo}), {hi}) for x in xs]"],
             lambda lo, hi: [f"xs = [{lo} if x < {lo} else {hi} if x > {hi} else x for x in xs]"]],
    "zero_negatives": [lambda: ["xs = [max(x, 0) for x in xs]"], lambda: ["xs = [x if x >= 0 else 0 for x in xs]"]],
    "multiply": [lambda k: ["for i in range(len(xs)):", f"    xs[i] = xs[i] * {k}"],
                 lambda k: [f"xs = list(map(lambda x: x * {k}, xs))"]],
    "drop_every_second": [lambda: ["xs = xs[::2]"], lambda: ["xs = [x for i, x in enumerate(xs) if i % 2 == 0]"]],
    "add": [lambda k: [f"xs = [x + {k} for x in xs]"], lambda k: [f"xs = list(map(lambda x: x + {k}, xs))"]],
    "remove_value": [lambda k: [f"xs = [x for x in xs if x != {k}]"], lambda k: [f"xs = list(filter(lambda x: x != {k}, xs))"]],
}


# Routines of the ``macro`` style: fixed skill chains (with fixed parameters) named by one verb.
MACROS: dict[str, tuple[str, list[tuple[str, tuple[int, ...]]]]] = {
    "tidy": ("tidy", [("zero_negatives", ()), ("dedupe", ()), ("sort", ())]),
    "spread": ("spread", [("multiply", (2,)), ("add", (1,))]),
    "accumulate": ("accumulate", [("sort", ()), ("running_total", ())]),
    "thin": ("thin", [("drop_every_second", ()), ("reverse", ())]),
    "bound": ("bound", [("clip", (0, 5)), ("dedupe", ())]),
    "energy": ("compute the energy of", [("square", ()), ("running_total", ())]),
    "trend": ("compute the trend of", [("differences", ()), ("zero_negatives", ())]),
    "shorten": ("shorten", [("take_first", (4,)), ("reverse", ())]),
}


# Parameter-free intents (``comment_style: abstract``): the comment names what a block does, the code and the
# docstring carry the numbers.
ABSTRACT = {"keep_greater": "keep the values above a bound", "take_first": "keep only a prefix of the list",
            "clip": "clip each value to a range", "multiply": "scale each value", "add": "shift each value",
            "remove_value": "remove every occurrence of a value"}


@dataclass
class Step:
    skill: str
    params: tuple[int, ...]
    surface: int = 0  # 0: the skill's own block; i > 0: SURFACES[skill][i - 1]

    def description(self) -> str:
        return SKILLS[self.skill].describe(*self.params)

    def comment(self, style: str = "full") -> str:
        return ABSTRACT.get(self.skill, self.description()) if style == "abstract" else self.description()

    def lines(self) -> list[str]:
        block = SKILLS[self.skill].block if self.surface == 0 else SURFACES[self.skill][self.surface - 1]
        return block(*self.params)


def _ordinal_comment(task: "Task", i: int, text: str) -> str:
    """``shuffled`` tasks name each step by its ordinal ("second, square each value")."""
    return f"{ORDINALS[i]}, {text}" if task.style == "shuffled" else text


@dataclass
class Task:
    """One program of the world. ``boundaries``: 0-based line index (in ``text``) of each block's first line."""

    task_id: str
    style: str
    steps: list[Step]
    docstring: str
    macros: list[str] = field(default_factory=list)

    def intents(self, comment_style: str = "full") -> dict[int, str]:
        """Step index -> the ground-truth thought before it: one per step, or per routine (``routine``)."""
        if comment_style == "routine":
            return self.routine_comments()
        return {i: _ordinal_comment(self, i, s.comment(comment_style)) for i, s in enumerate(self.steps)}

    def program(self, comments: bool = False, comment_style: str = "full") -> tuple[str, list[int]]:
        """(text, boundaries): the 0-based line of every block that starts an intent (every step, or every
        routine for ``routine`` comments), in the text with or without the comments."""
        lines = ["def solve(xs):", f'{INDENT}"""{self.docstring}"""']
        boundaries = []
        intents = self.intents(comment_style)
        for i, step in enumerate(self.steps):
            if i in intents:
                boundaries.append(len(lines))
                if comments:
                    lines.append(f"{INDENT}# {intents[i]}")
            lines += [INDENT + line for line in step.lines()]
        lines.append(f"{INDENT}return xs")
        return "\n".join(lines), boundaries

    def routine_comments(self) -> dict[int, str]:
        """Step index -> comment for ``comment_style: routine``: one per routine ("tidy the list") at its first
        step, and the description of each plain step; ``steps``-style tasks get one per step."""
        if not self.macros:
            return {i: s.description() for i, s in enumerate(self.steps)}
        out, i = {}, 0
        for name in self.macros:
            if name:
                out[i] = f"{MACROS[name][0]} the list"
                i += len(MACROS[name][1])
            else:
                out[i] = self.steps[i].description()
                i += 1
        return out

    def units(self) -> list[str]:
        """The plan, one entry per docstring clause: a routine's name, or a plain step's skill."""
        if not self.macros:
            return [s.skill for s in self.steps]
        out, i = [], 0
        for name in self.macros:
            out.append(name or self.steps[i].skill)
            i += len(MACROS[name][1]) if name else 1
        return out

    def prompt(self) -> str:
        """The function header and docstring, ending *before* the newline (see ``segments``)."""
        return f'def solve(xs):\n{INDENT}"""{self.docstring}"""'

    def reference(self, xs: list[int]) -> list[int]:
        xs = list(xs)
        for step in self.steps:
            xs = SKILLS[step.skill].apply(xs, *step.params)
        return xs


def bigrams(steps: list[Step]) -> set[tuple[str, str]]:
    return {(a.skill, b.skill) for a, b in zip(steps, steps[1:])}


def plan_bigrams(task: Task) -> set[tuple[str, str]]:
    """Adjacent pairs of plan units (routines / plain steps): the compositions of the ``composition`` split."""
    units = task.units()
    return set(zip(units, units[1:]))


def _join_clauses(clauses: list[str]) -> str:
    text = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + ", then " + clauses[-1]
    return text[0].upper() + text[1:] + "."


@dataclass
class WorldConfig:
    """Sizes and knobs of the skill world; every split is a deterministic function of these.

    Args:
        seed: the world's random seed.
        style: docstring style: ``steps`` (one clause per skill), ``macro`` (named routines; the default: the
            world in which the oracle's comments beat plain NTP, see ``benchmarks/world_probe.py``), ``mixed``
            or ``shuffled``.
        comment_fraction: fraction of pre-training programs with ``# <skill>`` before each block.
        comment_style: ``full`` comments restate the skill with its numbers ("add 3 to each value");
            ``abstract`` ones name the intent only ("shift each value"); ``routine``: one comment per routine of
            a ``macro`` docstring ("tidy the list"), i.e. the plan's own words, before its first block.
        n_pretrain / n_midtrain / n_rl / n_eval: number of programs in each split.
        min_chain / max_chain: skills per training task.
        eval_min_chain / eval_max_chain: skills per evaluation task (default ``min_chain`` / ``max_chain + 1``);
            e.g. ``eval_min_chain = max_chain + 1`` tests length generalisation only.
        heldout_fraction: fraction of skill bigrams reserved for evaluation (``0``: none; evaluation tasks then
            differ from training tasks only by what their chain lengths make them).
        n_tests: unit tests per RL / evaluation task.
        surfaces: surface forms per skill a block is drawn from (1: one fixed block per skill; up to 3): the code
            action space grows, the plan space does not.
        split: ``bigram``: evaluation tasks hold held-out *skill* bigrams and run one skill longer (the original
            split); ``composition``: held-out *plan* bigrams (routine/plain-step pairs) in two disjoint sets, A and
            B, none in pre-/mid-training; every task has >= 2 clauses; the RL split and ``eval_a`` are instances of A, ``eval_b`` of B, ``val``
            new instances of either (for choosing hyperparameters); every split draws its number of docstring
            clauses from the mid-training distribution, so evaluation measures composition, not length.
        composition_a / composition_b: fractions of the candidate plan bigrams in A and in B (``composition``).
        n_val: programs in the validation split (``composition``).
        rl_clauses: docstring clause counts of the RL split's tasks, drawn uniformly per task (``composition``;
            default: mid-training's distribution). Longer RL tasks put the start model's step-0 reward where GRPO
            learns (groups with mixed outcomes) while the evaluation splits keep mid-training's shapes.
    """

    seed: int = 0
    style: Style = "macro"
    comment_fraction: float = 0.2
    comment_style: Literal["full", "abstract", "routine"] = "routine"
    n_pretrain: int = 8000
    n_midtrain: int = 2000
    n_rl: int = 400
    n_eval: int = 200
    min_chain: int = 2
    max_chain: int = 4
    eval_min_chain: int | None = None
    eval_max_chain: int | None = None
    heldout_fraction: float = 0.15
    n_tests: int = 5
    surfaces: int = 1
    split: Literal["bigram", "composition"] = "bigram"
    composition_a: float = 0.1
    composition_b: float = 0.1
    n_val: int = 200
    rl_clauses: list[int] | None = None


class SkillWorld:
    """Samples tasks; ``heldout`` holds the skill bigrams that only evaluation tasks contain."""

    def __init__(self, config: WorldConfig):
        if not 0.0 <= config.comment_fraction <= 1.0:
            raise ValueError(f"comment_fraction must be in [0, 1], got {config.comment_fraction}")
        if not 2 <= config.min_chain <= config.max_chain:
            raise ValueError(f"need 2 <= min_chain <= max_chain, got {config.min_chain}, {config.max_chain}")
        self.eval_chain = (config.eval_min_chain or config.min_chain,
                           config.eval_max_chain or max(config.max_chain + 1, config.eval_min_chain or 0))
        if not 2 <= self.eval_chain[0] <= self.eval_chain[1]:
            raise ValueError(f"need 2 <= eval_min_chain <= eval_max_chain, got {self.eval_chain}")
        self.config = config
        rng = random.Random(f"heldout-{config.seed}")
        in_macro = {(a[0], b[0]) for _, chain in MACROS.values() for a, b in zip(chain, chain[1:])}
        candidates = sorted((a, b) for a in SKILLS for b in SKILLS if a != b and (a, b) not in in_macro)
        self.heldout: set[tuple[str, str]] = set(rng.sample(candidates, int(len(candidates) * config.heldout_fraction)))
        if not 1 <= config.surfaces <= 3:
            raise ValueError(f"surfaces must be 1, 2 or 3, got {config.surfaces}")
        self.plan_a: set[tuple[str, str]] = set()
        self.plan_b: set[tuple[str, str]] = set()
        if config.split == "composition":
            self.heldout = set()
            rng = random.Random(f"composition-{config.seed}")
            plan = sorted(SKILLS) if config.style in ("steps", "shuffled") else sorted(MACROS)
            units = plan if config.style in ("steps", "shuffled") else plan + sorted(SKILLS)
            pairs = sorted((a, b) for a in units for b in units if a != b and (a in plan or b in plan))
            n_a, n_b = int(len(pairs) * config.composition_a), int(len(pairs) * config.composition_b)
            if n_a < 1 or n_b < 1 or n_a + n_b > len(pairs) // 2:
                raise ValueError(f"composition_a/composition_b must each hold >= 1 of {len(pairs)} plan bigrams and "
                                 f"together at most half, got {n_a} and {n_b}")
            chosen = rng.sample(pairs, n_a + n_b)
            self.plan_a, self.plan_b = set(chosen[:n_a]), set(chosen[n_a:])
        elif config.split != "bigram":
            raise ValueError(f"split must be 'bigram' or 'composition', got {config.split!r}")

    def _steps_task(self, rng: random.Random, length: int) -> Task:
        names = [rng.choice(list(SKILLS))]
        while len(names) < length:
            nxt = rng.choice([s for s in SKILLS if s != names[-1]])
            names.append(nxt)
        steps = [Step(n, SKILLS[n].sample(rng)) for n in names]
        return Task("", "steps", steps, _join_clauses([s.description() for s in steps]))

    def _shuffled_task(self, rng: random.Random, length: int) -> Task:
        """A ``steps`` chain whose docstring lists the steps out of order, each with its ordinal."""
        task = self._steps_task(rng, length)
        order = list(range(len(task.steps)))
        rng.shuffle(order)
        clauses = [f"{ORDINALS[i].capitalize()}, {task.steps[i].description()}." for i in order]
        return Task("", "shuffled", task.steps, " ".join(clauses))

    def _macro_task(self, rng: random.Random, length: int) -> Task:
        # routines (and at most one plain step) until the chain has at least `length` skills
        macros: list[str] = []
        steps: list[Step] = []
        clauses: list[str] = []
        while len(steps) < length:
            if steps and len(macros) >= 1 and rng.random() < 0.3:
                name = rng.choice(list(SKILLS))
                step = Step(name, SKILLS[name].sample(rng))
                steps.append(step)
                clauses.append(step.description())
                macros.append("")
                continue
            name = rng.choice([m for m in MACROS if not macros or m != macros[-1]])
            verb, chain = MACROS[name]
            macros.append(name)
            steps += [Step(s, p) for s, p in chain]
            clauses.append(f"{verb} the list")
        return Task("", "macro", steps, _join_clauses(clauses), macros)

    def _draw(self, rng: random.Random, lo: int, hi: int) -> Task:
        cfg = self.config
        while True:
            style = cfg.style if cfg.style != "mixed" else rng.choice(["steps", "macro"])
            make = {"steps": self._steps_task, "macro": self._macro_task, "shuffled": self._shuffled_task}[style]
            task = make(rng, rng.randint(lo, hi))
            if lo <= len(task.steps) <= hi and (cfg.split == "bigram" or len(task.units()) >= 2):
                if cfg.surfaces > 1:
                    for step in task.steps:
                        step.surface = rng.randrange(min(cfg.surfaces, 1 + len(SURFACES[step.skill])))
                return task

    def kind(self, task: Task) -> str:
        """``train``, or which held-out set (``A``, ``B``, ``AB`` = both) a ``composition`` task belongs to."""
        pairs = plan_bigrams(task)
        return "".join(name for name, held in (("A", self.plan_a), ("B", self.plan_b)) if pairs & held) or "train"

    def sample(self, rng: random.Random, heldout: bool | str, exclude: set[str] | frozenset[str] = frozenset(),
               clauses: int | None = None) -> Task:
        """A task of the training distribution (``heldout=False``), a held-out one (``True``: the ``bigram``
        split's evaluation task), or of held-out set ``"A"`` / ``"B"`` (``composition``; as many clauses as a
        training task drawn first). A program text in ``exclude`` is redrawn, up to ``MAX_REDRAWS`` times (a world
        with few distinct programs of some shape repeats them rather than skewing the shape distribution).
        ``clauses`` (``composition``): this many docstring clauses instead of a count drawn from training tasks."""
        cfg = self.config
        if cfg.split == "composition":
            want = heldout if isinstance(heldout, str) else ("train" if not heldout else rng.choice("AB"))
            if clauses is None:
                clauses = len(self._draw(rng, cfg.min_chain, cfg.max_chain).units())
            accept = lambda t: len(t.units()) == clauses and self.kind(t) == want  # noqa: E731
            lo, hi = cfg.min_chain, cfg.max_chain
        else:
            lo, hi = self.eval_chain if heldout else (cfg.min_chain, cfg.max_chain)
            accept = lambda t: bool(bigrams(t.steps) & self.heldout) == (bool(heldout) and bool(self.heldout))  # noqa: E731
        redraws = 0
        for attempt in itertools.count():
            task = self._draw(rng, lo, hi)
            if attempt == 1000 * MAX_REDRAWS:
                raise ValueError(f"no {want} task of {lo}-{hi} skills has {clauses} docstring clauses: check rl_clauses, "
                                 "max_chain and the composition fractions")
            if accept(task):
                if not exclude or redraws >= MAX_REDRAWS or task.program()[0] not in exclude:
                    return task
                redraws += 1

    def tests(self, task: Task, rng: random.Random) -> list[dict]:
        """``n_tests`` input/expected pairs (lists of 3–8 ints in [-9, 9]) from the reference executor."""
        out = []
        for _ in range(self.config.n_tests):
            xs = [rng.randint(-9, 9) for _ in range(rng.randint(3, 8))]
            out.append({"input": xs, "expected": task.reference(xs)})
        return out


def task_row(task: Task, tests: list[dict] | None = None, comments: bool = False, comment_style: str = "full") -> dict:
    """The JSONL row of a task (``text``, ``prompt``/``completion``, tests as asserts, boundaries)."""
    text, boundaries = task.program(comments=comments, comment_style=comment_style)
    prompt = task.prompt()
    row = {
        "task_id": task.task_id,
        "text": text,
        "prompt": prompt,
        "completion": text[len(prompt):],
        "style": task.style,
        "skills": [{"name": s.skill, "params": list(s.params), "description": s.description(), "surface": s.surface}
                   for s in task.steps],
        "units": task.units(),
        "macros": task.macros,
        "boundaries": boundaries,
        "intents": [text for _, text in sorted(task.intents(comment_style).items())],
        "entry_point": "solve",
    }
    if tests is not None:
        row["tests"] = [f"assert solve({t['input']!r}) == {t['expected']!r}" for t in tests]
        row["test_cases"] = tests
    return row


SPLIT_KINDS = {"pretrain": False, "midtrain": False, "rl": "A", "eval": True, "eval_a": "A", "eval_b": "B", "val": True}


def generate_split(world: SkillWorld, split: str, n: int, comment_fraction: float = 0.0, with_tests: bool = False,
                   exclude: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """``n`` rows of ``split`` (a key of ``SPLIT_KINDS``); deterministic per (seed, split). A task whose program
    text is in ``exclude`` (or, for ``eval_a``/``eval_b``/``val``, earlier in the split) is redrawn (new
    instances). The ``bigram`` split's RL rows are training-distribution tasks, the ``composition`` split's are
    instances of held-out set A."""
    rng = random.Random(f"{world.config.seed}-{split}")
    kind = SPLIT_KINDS[split]
    if world.config.split == "bigram":
        kind = split in ("eval", "eval_a", "eval_b", "val")
    rows, exclude = [], set(exclude)
    rl_clauses = world.config.rl_clauses if split == "rl" and world.config.split == "composition" else None
    for i in range(n):
        task = world.sample(rng, heldout=kind, exclude=exclude, clauses=rng.choice(rl_clauses) if rl_clauses else None)
        if split in ("eval_a", "eval_b", "val"):
            exclude.add(task.program()[0])  # held-out sets: distinct programs where the world has enough
        task.task_id = f"skillworld/{split}/{i}"
        comments = rng.random() < comment_fraction
        tests = world.tests(task, rng) if with_tests else None
        rows.append(task_row(task, tests, comments=comments, comment_style=world.config.comment_style))
    return rows


def with_comments(row: dict, comment_style: str = "full") -> dict:
    """The same task row with ``# <skill description>`` before every block (the oracle annotation)."""
    docstring = row["prompt"].split('"""')[1]
    task = Task(row["task_id"], row["style"], [Step(s["name"], tuple(s["params"]), s.get("surface", 0)) for s in row["skills"]], docstring,
                row.get("macros", []))
    return task_row(task, None, comments=True, comment_style=comment_style) | {k: row[k] for k in ("tests", "test_cases") if k in row}


def _histogram(values) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def build_world(out_dir: str | os.PathLike, config: WorldConfig | None = None) -> dict[str, Path]:
    """Write ``pretrain.jsonl``, ``midtrain.jsonl`` (and ``midtrain_oracle.jsonl``: the same programs with the
    ground-truth comments), ``rl.jsonl``, ``eval.jsonl`` and ``world.json`` under ``out_dir`` (``composition``
    split: also ``eval_a.jsonl``, ``eval_b.jsonl`` — ``eval.jsonl`` is both — and ``val.jsonl``)."""
    config = config or WorldConfig()
    world = SkillWorld(config)
    out = Path(out_dir)
    splits = {
        "pretrain": generate_split(world, "pretrain", config.n_pretrain, config.comment_fraction),
        "midtrain": generate_split(world, "midtrain", config.n_midtrain),
        "rl": generate_split(world, "rl", config.n_rl, with_tests=True),
    }
    if config.split == "composition":
        seen = {r["text"] for r in splits["rl"]}
        splits["eval_a"] = generate_split(world, "eval_a", config.n_eval // 2, with_tests=True, exclude=seen)
        splits["eval_b"] = generate_split(world, "eval_b", config.n_eval - config.n_eval // 2, with_tests=True)
        splits["eval"] = splits["eval_a"] + splits["eval_b"]
        seen |= {r["text"] for r in splits["eval"]}
        splits["val"] = generate_split(world, "val", config.n_val, with_tests=True, exclude=seen)
    else:
        splits["eval"] = generate_split(world, "eval", config.n_eval, with_tests=True)
    splits["midtrain_oracle"] = [with_comments(r, config.comment_style) for r in splits["midtrain"]]
    paths = {}
    for name, rows in splits.items():
        paths[name] = out / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    meta = {"config": asdict(config), "heldout_bigrams": sorted(world.heldout), "skills": sorted(SKILLS), "macros": MACROS,
            "plan_bigrams_a": sorted(world.plan_a), "plan_bigrams_b": sorted(world.plan_b),
            "clauses": {name: _histogram(len(r["units"]) for r in rows) for name, rows in splits.items()},
            "skills_per_task": {name: _histogram(len(r["skills"]) for r in rows) for name, rows in splits.items()}}
    (out / "world.json").write_text(json.dumps(meta, indent=1, default=str))
    return paths
