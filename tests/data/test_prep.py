"""``ra3 data``: a small local corpus with planted duplicates, near-duplicates and benchmark leaks."""

import json
import os
import signal
import subprocess
import sys

from ra3.data.prep import Filters, run, strip_comments


def _program(i: int) -> str:
    return (f"def f_{i}(xs):\n    total = {i}\n    for x in xs:\n        if x % {i + 2} == 0:\n"
            f"            total += x * {i}\n    return total - {3 * i}\n")


def corpus(path, n=40):
    """n distinct programs + planted trouble; returns the row count and what was planted."""
    from ra3.data.benchmarks import load_benchmark

    he = load_benchmark("humaneval", None)[0]
    rows = [{"content": _program(i), "license": "mit"} for i in range(n)]
    rows.append({"content": _program(3), "license": "mit"})  # exact duplicate
    rows.append({"content": _program(5) + "\n\n", "license": "mit"})  # exact up to blank lines
    near = _program(7).replace("return total - 21", "return total - 21  # the result")
    rows.append({"content": near, "license": "apache-2.0"})  # near duplicate (one comment added)
    leak = he.solution_prefix + "    return True\n"  # HumanEval/0's prompt inside a training file
    rows.append({"content": leak, "license": "mit"})
    rows.append({"content": "def broken(:\n    pass\n    pass\n"})  # not Python
    rows.append({"content": "x = 1\n"})  # too short
    rows.append({"other": "no text"})
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("{not json\n")
    return len(rows) + 1, he.task_id


def test_midtrain_filters_dedups_and_decontaminates(tmp_path):
    src = tmp_path / "corpus.jsonl"
    n_rows, leaked_task = corpus(src)
    report = run("midtrain", str(src), str(tmp_path / "out"), shard_size=16, progress=False)
    assert report["rows_read"] == n_rows
    assert report["removed"] == {"benchmark_overlap": 1, "exact_duplicate": 2, "length": 1, "malformed": 1,
                                 "near_duplicate": 1, "no_text": 1, "not_python": 1}
    assert report["benchmark_tasks_matched"] == {leaked_task: 1}
    kept = [json.loads(l) for p in sorted((tmp_path / "out").glob("midtrain-*.jsonl")) for l in open(p)]
    assert len(kept) == report["rows_kept"] == 40 and report["shards"] == 3
    assert [r["text"] for r in kept] == [_program(i) for i in range(40)] and all(r["license"] == "mit" for r in kept)
    # rows CodeDataModule reads as they are
    from ra3.data.rows import row_fields

    assert row_fields(kept[0], "text", "prompt", "completion")["text"] == _program(0)


def test_strip_comments_and_exact_only(tmp_path):
    code = 'def f(x):\n    """Doc\n    string."""\n    # a comment\n    return x  # trailing\n'
    assert strip_comments(code) == "def f(x):\n    return x\n"
    src = tmp_path / "c.jsonl"
    corpus(src)
    report = run("midtrain", str(src), str(tmp_path / "o"), filters=Filters(near_dup_threshold=None, benchmarks=()),
                 progress=False)
    assert "near_duplicate" not in report["removed"] and "benchmark_overlap" not in report["removed"]
    assert report["removed"]["exact_duplicate"] == 2


def test_rl_rows_keep_only_references_that_pass(tmp_path):
    rows = [
        {"prompt": "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n", "tests": ["assert add(1, 2) == 3"],
         "solution": "def add(a, b):\n    return a + b\n", "task_id": "ok"},
        {"prompt": "def sub(a, b):\n    \"\"\"Subtract.\"\"\"\n", "tests": ["assert sub(3, 1) == 2"],
         "solution": "def sub(a, b):\n    return a + b\n", "task_id": "wrong_reference"},
        {"prompt": "def mul(a, b):\n    \"\"\"Multiply.\"\"\"\n", "test_cases": [{"args": [2, 3], "expected": 6}],
         "entry_point": "mul", "task_id": "no_reference"},
        {"prompt": "Read n and print n squared.", "input_output": {"inputs": ["3\n"], "outputs": ["9\n"]},
         "solution": "n = int(input())\nprint(n * n)\n", "task_id": "stdio"},
        {"prompt": "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n", "tests": ["assert add(1, 2) == 3"], "task_id": "dup"},
        {"prompt": "no tests here", "task_id": "untestable"},
    ]
    src = tmp_path / "rl.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = run("rl", str(src), str(tmp_path / "out"), progress=False)
    kept = [json.loads(l) for l in open(tmp_path / "out" / "rl-00000.jsonl")]
    assert [r["task_id"] for r in kept] == ["ok", "no_reference", "stdio"]
    assert report["removed"] == {"exact_duplicate": 1, "no_prompt_or_tests": 1, "reference_fails_tests": 1}
    from ra3.data.rows import tests_from_row

    for r in kept:  # rows RLVRModule reads
        assert tests_from_row(r)[0]


def test_interrupted_run_resumes_to_the_same_rows(tmp_path):
    src = tmp_path / "corpus.jsonl"
    with open(src, "w") as f:
        for i in range(6000):
            f.write(json.dumps({"content": _program(i)}) + "\n")
    whole = run("midtrain", str(src), str(tmp_path / "whole"), shard_size=200, progress=False,
                filters=Filters(benchmarks=()))
    env = {**os.environ, "WANDB_MODE": "offline"}
    args = [sys.executable, "-m", "ra3.cli", "data", "midtrain", "--source", str(src), "--out", str(tmp_path / "cut"),
            "--shard_size", "200", "--benchmarks"]
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (tmp_path / "cut" / "midtrain-00002.jsonl").exists():
        assert p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "cut" / "report.json").exists()  # it was cut short
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    def rows(d):
        return [l for f in sorted((tmp_path / d).glob("midtrain-*.jsonl")) for l in open(f)]
    assert rows("cut") == rows("whole") and len(rows("whole")) == whole["rows_kept"]


def test_bad_sources_are_one_line_errors(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    for source, message in ((str(tmp_path / "missing.jsonl"), "does not exist"),
                            (str(tmp_path / "missing.parquet"), "does not exist")):
        r = subprocess.run([sys.executable, "-m", "ra3.cli", "data", "midtrain", "--source", source, "--out",
                            str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=120)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and last.startswith("ra3: error:") and message in last, r.stderr[-500:]
    src = tmp_path / "c.jsonl"
    corpus(src)
    run("midtrain", str(src), str(tmp_path / "o2"), shard_size=8, limit=20, progress=False)
    r = subprocess.run([sys.executable, "-m", "ra3.cli", "data", "midtrain", "--source", str(src), "--out",
                        str(tmp_path / "o2"), "--ngram", "8"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "other settings" in r.stderr.strip().splitlines()[-1]  # never mixes two runs' state


def test_decontaminates_against_a_benchmark_file(tmp_path):
    """A LiveCodeBench-style file (not shipped) given with benchmark_files: its questions leak into no kept row."""
    question = ("Given an array of integers nums and an integer target, return the number of pairs whose "
                "sum is strictly less than target.")
    lcb = tmp_path / "lcb.jsonl"
    lcb.write_text(json.dumps({"question_id": "lcb_pairs", "question_content": question, "starter_code": ""}) + "\n")
    src = tmp_path / "c.jsonl"
    leaked = f'def count_pairs(nums, target):\n    """{question}"""\n    return sum(1 for i in range(len(nums)) for j in range(i))\n'
    rows = [{"content": _program(i)} for i in range(5)] + [{"content": leaked}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = run("midtrain", str(src), str(tmp_path / "o"), progress=False,
                 filters=Filters(benchmarks=(), benchmark_files=(str(lcb),)))
    assert report["removed"] == {"benchmark_overlap": 1} and report["benchmark_tasks_matched"] == {"lcb_pairs": 1}
