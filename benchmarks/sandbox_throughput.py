"""Sandbox throughput on MBPP+: test executions/s of ``SandboxPool`` vs a naive baseline.

Candidate: every MBPP+ canonical solution with all its base+plus tests, one sandboxed process per
program, ``--workers`` parallel slots (default: CPU count). Baseline in the same run: one plain
``subprocess.run([python, -c, program + one test])`` per test (no isolation at all), on a sample.

    python benchmarks/sandbox_throughput.py [--data ../shared/data/MbppPlus.jsonl] [--baseline_tests 300]
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

from ra3.datamodules.benchmarks import load_benchmark
from ra3.execution import SandboxPool


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "MbppPlus.jsonl"
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--baseline_tests", type=int, default=300)
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
