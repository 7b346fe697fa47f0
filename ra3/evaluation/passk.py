"""pass@k evaluation: generate completions for benchmark problems, run them in the sandbox, score.

Writes, per run, into ``output_dir``:
- ``samples.jsonl`` — EvalPlus-compatible samples (``task_id``, ``completion``, ``solution``);
- ``eval_results.jsonl`` — one row per sample, in input order: ``task_id``, ``status``, ``passed``;
- ``results.json`` — ``{"<benchmark>": {"pass@1": ..., "pass@k": ..., "n_tasks": ..., "status_counts": {...}}}``.

``sandbox_error`` outcomes are the sandbox's fault: they are counted and logged, and left out of
pass@k (the task's n shrinks) rather than scored as failures.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

from ra3.data.benchmarks import Problem, load_benchmark
from ra3.data.io import write_jsonl
from ra3.errors import Ra3Error
from ra3.execution import SandboxPool, Status

log = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``, in the stable
    product form ``1 - prod_{i=n-c+1..n} (1 - k / i)``; 1.0 when ``n - c < k``."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def task_counts(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """``{task_id: (samples scored, samples passed)}`` from per-sample rows; sandbox errors are not scored."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["status"] != Status.SANDBOX_ERROR.value:
            counts[r["task_id"]][0] += 1
            counts[r["task_id"]][1] += int(r["passed"])
    return {t: (n, c) for t, (n, c) in counts.items()}


def score_samples(problems: list[Problem], samples: list[dict], pool: SandboxPool, ks: Iterable[int] = (1,),
                  on_result=None, results: list | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Run ``samples`` (dicts with ``task_id`` and ``completion`` or ``solution``) and compute pass@k.
    ``results``: their execution results when already run (``evaluate`` runs each as soon as it is sampled).

    Returns ``(summary, rows)``: ``summary`` has ``pass@k`` for each k that every scored task has enough
    samples for, ``n_tasks``, ``n_samples`` and ``status_counts``; ``rows`` one dict per sample."""
    by_id = {p.task_id: p for p in problems}
    if results is None:
        results = pool.run_many([sample_job(by_id[s["task_id"]], s) for s in samples], on_result=on_result)
    rows = [{"task_id": s["task_id"], "status": r.status.value, "passed": r.passed,
             "fraction_passed": r.fraction_passed, "detail": r.detail} for s, r in zip(samples, results)]
    counts = task_counts(rows)
    status_counts = Counter(r.status.value for r in results)
    if status_counts.get("sandbox_error"):
        log.warning("%d sample(s) hit a sandbox error: left out of pass@k", status_counts["sandbox_error"])
    summary: dict[str, Any] = {}
    for k in sorted(set(ks)):
        scored = [pass_at_k(n, c, k) for n, c in counts.values() if n >= k]
        if scored and len(scored) == len(counts):
            summary[f"pass@{k}"] = sum(scored) / len(scored)
        elif counts:
            log.warning("pass@%d left out: %d of %d task(s) have fewer than %d scored samples (sandbox errors)",
                        k, len(counts) - len(scored), len(counts), k)
    scored_problems = [by_id[t] for t in counts]
    summary.update(n_tasks=len(counts), n_samples=len(samples), status_counts=dict(status_counts),
                   host_judged=host_judged_fraction(scored_problems))
    excluded = [f"{p.task_id} input {i}" for p in scored_problems for i in p.meta.get("excluded_inputs", {})]
    if excluded:
        summary["excluded_tests"] = excluded
    return summary, rows


def host_judged_fraction(problems: list[Problem]) -> float:
    """Share of the tests whose verdict the host makes (call/stdio tests, asserts converted to calls) rather than
    the program's own process (asserts left in-process, each counted by its assert statements)."""
    host = in_process = 0
    for p in problems:
        host += sum(t.kind != "assert" for t in p.tests)
        if any(t.kind == "assert" for t in p.tests):
            in_process += p.meta.get("asserts_in_process", sum(t.code.count("assert") for t in p.tests if t.kind == "assert"))
    return host / max(1, host + in_process)


def read_samples(path: str | os.PathLike, problems: list[Problem]) -> list[dict]:
    """EvalPlus/HumanEval-style samples: one JSON object per line with ``task_id`` and ``completion`` or
    ``solution``; a malformed line or an unknown task id is an error naming the line."""
    known = {p.task_id for p in problems}
    samples = []
    if not Path(path).is_file():
        raise Ra3Error(f"samples file '{path}' does not exist")
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise Ra3Error(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "task_id" not in row or not (
                isinstance(row.get("completion"), str) or isinstance(row.get("solution"), str)):
                raise Ra3Error(f"{path}: line {lineno} needs 'task_id' and a string 'completion' or 'solution'")
            if row["task_id"] not in known:
                raise Ra3Error(f"{path}: line {lineno}: task_id {row['task_id']!r} is not in the benchmark")
            samples.append(row)
    if not samples:
        raise Ra3Error(f"samples file '{path}' holds no samples")
    return samples


def sample_job(problem: Problem, sample: dict):
    """The sandbox job of one sample row (its ``completion`` in the problem's program, or its whole ``solution``)."""
    return problem.job(problem.program(completion=sample.get("completion"), solution=sample.get("solution")))


def generate_samples(engine, problems: list[Problem], n_samples: int, sampling, seed: int | None = 0,
                     on_sample: Callable[[int, dict], None] | None = None) -> list[dict]:
    """``n_samples`` completions per problem, as sample rows (``completion`` and the full ``solution``), problem
    by problem. Sampling is seeded per problem (its task id and ``seed``): the same samples on every run, whatever
    the batching; ``seed=None`` draws from the global RNG instead. ``on_sample(index, row)`` is called as each
    row is final (``index``: its place in the returned list), so it can be scored while sampling goes on."""
    from dataclasses import replace

    from ra3.rollout.sampling import sample_seed

    samples: list[dict | None] = [None] * (len(problems) * n_samples)
    by_stop: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        by_stop[tuple(p.stop)].append(i)
    for stop, group in by_stop.items():
        config = replace(sampling, stop=list(stop) + list(sampling.stop))
        seeds = None if seed is None else [sample_seed(problems[i].task_id, 0, seed) for i in group]

        def done(g: int, k: int, completion, group=group) -> None:
            p, index = problems[group[g]], group[g] * n_samples + k
            samples[index] = {"task_id": p.task_id, "completion": completion.text,
                              "solution": p.program(completion=completion.text)}
            if on_sample is not None:
                on_sample(index, samples[index])

        engine.generate([problems[i].prompt for i in group], n_samples, config, seeds=seeds, on_done=done)
    return samples


def sample_and_score(engine, problems: list[Problem], n_samples: int, sampling, pool: SandboxPool,
                     ks: Iterable[int] = (1,), seed: int | None = 0, on_result=None, overlap: bool | None = None
                     ) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """``generate_samples`` then ``score_samples``. ``overlap``: run each sample in the sandbox as soon as the engine
    finishes it (default: when the model is not on the CPU — on CPU the sandbox's processes take the cores the
    sampler's threads wait on: slower for a 400-sample skill-world evaluation on 2 cores, docs/benchmarks.md).
    Returns ``(summary, rows, samples)``."""
    if overlap is None:
        overlap = next(engine.model.parameters()).device.type != "cpu" if hasattr(engine, "model") else False
    if not overlap:
        samples = generate_samples(engine, problems, n_samples, sampling, seed)
        return (*score_samples(problems, samples, pool, ks, on_result=on_result), samples)
    by_id, running = {p.task_id: p for p in problems}, {}

    def run(index: int, row: dict) -> None:
        running[index] = future = pool.submit(sample_job(by_id[row["task_id"]], row))
        if on_result is not None:
            future.add_done_callback(lambda f: on_result(index, f.result()))

    samples = generate_samples(engine, problems, n_samples, sampling, seed, on_sample=run)
    summary, rows = score_samples(problems, samples, pool, ks, results=[running[i].result() for i in range(len(samples))])
    return summary, rows, samples


def format_table(results: dict[str, dict]) -> str:
    ks = sorted({key for r in results.values() for key in r if key.startswith("pass@")}, key=lambda s: int(s[5:]))
    lines = [f"{'benchmark':<16}" + "".join(f"{k:>10}" for k in ks) + f"{'tasks':>8}{'host-judged':>13}  statuses"]
    for name, r in results.items():
        cells = "".join(f"{r[k]:>10.3f}" if k in r else f"{'-':>10}" for k in ks)
        statuses = ", ".join(f"{s}={c}" for s, c in sorted(r["status_counts"].items()))
        host = f"{100 * r['host_judged']:>12.1f}%" if "host_judged" in r else f"{'-':>13}"
        lines.append(f"{name:<16}{cells}{r['n_tasks']:>8}{host}  {statuses}")
        if r.get("excluded_tests"):
            lines.append(f"{'':<16}excluded (see the benchmark loader): {', '.join(r['excluded_tests'])}")
    return "\n".join(lines)


def evaluate(
    benchmarks: list[str],
    output_dir: str = "artifacts/eval",
    model: str | None = None,
    samples: str | None = None,
    sources: dict[str, str] | None = None,
    n_samples: int = 1,
    k: list[int] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    limit: int | None = None,
    workers: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    seed: int = 0,
    engine: str = "ragged",
    device: str | None = None,
) -> dict[str, dict]:
    """Evaluate a model or score existing samples on ``benchmarks``; writes ``results.json`` and the samples with
    their verdicts to ``output_dir``; returns each benchmark's summary (pass@k, statuses).

    Args:
        benchmarks: benchmark names (``humaneval``, ``mbpp``, ``mbppplus``, ``skillworld``).
        output_dir: where results.json and the scored samples go.
        model: HF model name, exported directory, or Lightning .ckpt to generate with.
        samples: score an existing samples .jsonl ({task_id, completion|solution} per line) instead.
        sources: where a benchmark's data is (file, datasets dir or hub name), by benchmark name; e.g.
            skillworld=artifacts/skillworld/eval.jsonl.
        n_samples: completions per task.
        k: the k of pass@k (each <= n_samples).
        temperature: sampling temperature (0: greedy).
        top_p: nucleus sampling mass.
        max_new_tokens: longest completion.
        batch_size: prompts per generation batch.
        limit: first N tasks of each benchmark only.
        workers: sandbox processes in parallel (default: CPU count).
        cache_dir: where ground-truth verdicts of the benchmarks' own solutions are cached.
        progress: show progress bars.
        seed: sampling seed (per problem: the same samples on every run).
        engine: sampler: ragged (continuous batching), ragged_compiled (its steps under torch.compile: log-probs
            within ~1e-5; compiling takes longer than one evaluation saves) or hf (model.generate; the same
            completions as ragged).
        device: where the model samples (default: cuda when there is a GPU, else cpu); off the CPU, samples run in
            the sandbox while sampling goes on.
    """
    from ra3.rollout.sampling import SamplingConfig
    from ra3.rollout import make_engine

    if (model is None) == (samples is None):
        raise Ra3Error("give either --model (generate and score) or --samples (score existing samples)")
    if samples is not None and len(benchmarks) != 1:
        raise Ra3Error("--samples scores one benchmark at a time: give exactly one --benchmark")
    ks = sorted(set(k or [1]))
    if temperature == 0 and n_samples > 1:
        log.warning("n_samples=%d with temperature 0 gives identical greedy samples", n_samples)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = sources or {}
    sampler = None
    if model is not None:
        import torch

        policy, tokenizer = load_policy(model)
        sampler = make_engine(engine, policy.to(device or ("cuda" if torch.cuda.is_available() else "cpu")), tokenizer)
    results: dict[str, dict] = {}
    all_samples, all_rows = [], []
    with SandboxPool(workers=workers) as pool:
        for name in benchmarks:
            problems = load_benchmark(name, sources.get(name), pool=pool, cache_dir=cache_dir)
            if limit is not None:
                problems = problems[:limit]
            bench_samples = read_samples(samples, problems) if sampler is None else None
            total = len(problems) * n_samples if sampler is not None else len(bench_samples)
            bar = _progress(total, f"running {name}") if progress else None
            on_result = (lambda i, r: bar.update(1)) if bar else None
            if sampler is not None:
                sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                          batch_size=batch_size)
                summary, rows, bench_samples = sample_and_score(sampler, problems, n_samples, sampling, pool, ks, seed,
                                                                on_result=on_result)
            else:
                summary, rows = score_samples(problems, bench_samples, pool, ks, on_result=on_result)
            if bar:
                bar.close()
            results[name] = summary
            for s, r in zip(bench_samples, rows):
                all_samples.append(s)
                all_rows.append(r)
    if sampler is not None:
        write_jsonl(out / "samples.jsonl", all_samples)
    write_jsonl(out / "eval_results.jsonl", [{k_: r[k_] for k_ in ("task_id", "status", "passed")} for r in all_rows])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def load_policy(model: str):
    """(model, tokenizer) from a HF name or directory, or from a Lightning checkpoint of a ``PolicyModule``
    (a ``.ckpt`` file or a sharded FSDP2 checkpoint folder)."""
    from ra3.hf import load_causal_lm, load_tokenizer

    if model.endswith(".ckpt") or (Path(model) / ".metadata").exists():
        from ra3.policy.consolidate import policy_from_checkpoint

        module = policy_from_checkpoint(model)
        return module.model, module.tokenizer
    tokenizer = load_tokenizer(model)
    return load_causal_lm(model), tokenizer


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
