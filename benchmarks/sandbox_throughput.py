"""Sandbox throughput: test executions/s of ``SandboxPool`` on MBPP+ vs a naive baseline, and jobs/s of the two
ways a job starts (a fork of the slot's warm harness server vs a fresh sandboxed interpreter), in one run.

MBPP+: every canonical solution with all its base+plus tests, one job per program, ``--workers`` parallel slots
(default: CPU count); baseline: one plain ``subprocess.run([python, -c, program + one test])`` per test (no
isolation at all), on a sample. Start-up: ``--small_jobs`` skill-world-sized jobs (a function, two asserts: what
RLVR rewards and evaluations run), fork server vs spawn, rounds interleaved.

    python benchmarks/sandbox_throughput.py [--data ../shared/data/MbppPlus.jsonl] [--baseline_tests 300] [--small_jobs 400]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ra3.data.benchmarks import load_benchmark
from ra3.execution import Job, LocalSandbox, SandboxPool, TestCase


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "MbppPlus.jsonl"
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--baseline_tests", type=int, default=300)
    ap.add_argument("--small_jobs", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    small = [Job(f"def f(x):\n    return x + {i}", [TestCase("assert", code=f"assert f(1) == {1 + i}"),
                                                      TestCase("assert", code=f"assert f(2) == {2 + i}")], timeout=2.0)
             for i in range(args.small_jobs)]
    starts = {"fork server": True, "spawn": False}
    times: dict[str, list[float]] = {k: [] for k in starts}
    for r in range(args.rounds):
        for name in (starts if r % 2 == 0 else reversed(list(starts))):
            with SandboxPool(LocalSandbox(fork_server=starts[name]), workers=args.workers) as pool:
                pool.run_many(small[:4])  # the servers start
                t = time.perf_counter()
                assert all(x.passed for x in pool.run_many(small))
                times[name].append(time.perf_counter() - t)
    jobs_per_s = {k: args.small_jobs / min(v) for k, v in times.items()}

    with SandboxPool(workers=args.workers) as pool, tempfile.TemporaryDirectory() as cache:
        problems = load_benchmark("mbppplus", args.data, pool=pool, cache_dir=cache)
        problems = [p for p in problems if p.task_id != "Mbpp/255"]  # one input needs > 20 s (see tests)
        n_tests = sum(len(p.tests) for p in problems)
        t = time.perf_counter()
        results = pool.run_many([p.job(p.canonical_solution) for p in problems])
        pool_time = time.perf_counter() - t
    passed = sum(r.passed for r in results)
    rate = n_tests / pool_time

    rng = random.Random(0)
    sample = [(p, i) for p in problems for i in range(len(p.tests))]
    sample = rng.sample(sample, min(args.baseline_tests, len(sample)))
    t = time.perf_counter()
    for p, i in sample:
        code = f"{p.canonical_solution}\n_out = {p.entry_point}(*{p.tests[i].args!r})\n"
        subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    naive_rate = len(sample) / (time.perf_counter() - t)

    print(f"backend={pool.sandbox.name} workers={args.workers} tasks={len(problems)} canonical passed={passed}")
    print(f"SandboxPool      : {n_tests} test executions in {pool_time:.1f} s = {rate:8.1f} executions/s (target >= 200)")
    print(f"naive subprocess : {len(sample)} test executions = {naive_rate:8.1f} executions/s")
    print(f"ratio            : {rate / naive_rate:.1f}x")
    print(f"small jobs ({args.small_jobs}, best of {args.rounds} interleaved rounds): " + ", ".join(
        f"{k} {v:.0f} jobs/s ({1000 / v:.1f} ms a job)" for k, v in jobs_per_s.items())
        + f"; fork server x{jobs_per_s['fork server'] / jobs_per_s['spawn']:.1f}")


if __name__ == "__main__":
    main()
