"""Reward functions for RLVR (no Lightning).

Protocol (as in TRL): ``reward(prompts, completions, **columns) -> list[float | None]`` — one value per
completion; ``None`` means "no reward for this sample" and removes it from the loss. ``columns`` are the
dataset's other fields, repeated per completion (``tests``, ``entry_point``, ``task_id``, …), plus, when the
trainer passes them (RLVR does), ``log_extra(column, values)`` — one value per completion, shown in the sample
table (``UnitTestReward`` reports each sample's ``status`` this way) — and ``log_metric(name, value)`` — a scalar
logged as ``rlvr/<name>``. So a reward function takes ``**kwargs``.
:class:`WeightedSum` combines several functions; it is ``None`` where any part is ``None``.

RL rows (JSONL or a ``datasets`` source) need ``prompt`` and tests in one of these shapes:

- ``tests``: MBPP-style assert strings, run after ``prompt + completion``; each assert of a recognised form
  (``ra3.execution.asserts``) is judged on the host from the returned value, the rest run in-process;
- ``test_cases`` + ``entry_point``: ``[{"input": arg | "args": [args...], "expected": value}]`` call tests
  (the skill world), compared outside the sandbox;
- ``input_output``: ``{"inputs": [stdin...], "outputs": [stdout...]}`` (DeepCoder / AReaL-boba / APPS style,
  whole-program stdin→stdout; a JSON string is accepted too). For these the completion is the whole program.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from ra3.execution import Job, SandboxPool, Status
from ra3.data.rows import tests_from_row


class RewardFunction(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]: ...


class UnitTestReward:
    """1.0 if every test passes, else 0.0 (``partial=True``: the fraction of tests passed), run in the sandbox.
    ``sandbox_error`` outcomes give ``None`` (excluded and counted, never a silent 0).

    Args:
        pool: the sandbox pool (one is made if omitted).
        partial: reward the fraction of passed tests instead of all-or-nothing.
        timeout: seconds per test.
    """

    def __init__(self, pool: SandboxPool | None = None, partial: bool = False, timeout: float = 3.0):
        self.pool, self.partial, self.timeout = pool, partial, timeout

    def jobs(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Job]:
        jobs = []
        for prompt, completion, row in zip(prompts, completions, rows):
            tests, entry, whole = tests_from_row(row)
            jobs.append(Job(completion if whole else prompt + completion, tests, entry_point=entry, timeout=self.timeout,
                            job_id=str(row.get("task_id", ""))))
        return jobs

    def __call__(self, prompts: list[str], completions: list[str], log_extra: Callable | None = None,
                 log_metric: Callable | None = None, **columns: Any) -> list[float | None]:
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else [{}] * len(prompts)
        self.pool = self.pool or SandboxPool()
        results = self.pool.run_many(self.jobs(prompts, completions, rows))
        if log_extra is not None:
            log_extra("status", [r.status.value for r in results])
        return [None if r.status == Status.SANDBOX_ERROR else (r.fraction_passed if self.partial else float(r.passed))
                for r in results]


class FormatReward:
    """1.0 when ``prompt + completion`` is valid Python that still defines the prompt's function (checked by
    compiling, never executing), else 0.0."""

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        out = []
        for prompt, completion in zip(prompts, completions):
            try:
                compile(prompt + completion, "<completion>", "exec")
                out.append(1.0 if completion.strip() else 0.5)
            except (SyntaxError, ValueError):
                out.append(0.0)
        return out


class WeightedSum:
    """``sum_i w_i * f_i``; ``None`` where any ``f_i`` is ``None``."""

    def __init__(self, functions: Sequence[tuple[Callable, float]]):
        self.functions = list(functions)

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        parts = [(f(prompts, completions, **columns), w) for f, w in self.functions]
        out = []
        for i in range(len(completions)):
            values = [(p[i], w) for p, w in parts]
            out.append(None if any(v is None for v, _ in values) else sum(v * w for v, w in values))
        return out
