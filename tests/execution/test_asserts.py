"""Assert suites judged on the host: the forms that convert, the strict comparison, and forged verdicts that
pass the classic in-process harness but fail here (real sandbox, real HumanEval / MBPP tasks)."""

import gzip
import json

import pytest

from ra3.data.benchmarks import load_humaneval, load_mbpp
from ra3.execution import SandboxPool
from ra3.execution.asserts import judge, plain_equal, split_asserts
from ra3.execution.types import Job, TestCase


def test_each_assert_form_becomes_a_host_judged_call():
    suite = """
import math
def check(candidate):
    assert candidate(1, [2]) == (3, 'x')
    assert [4] == candidate(2, [])
    assert candidate(3, [])
    assert not candidate(4, [])
    assert candidate(5, []) is True
    assert candidate(6, []) is None
    assert abs(candidate(7, []) - 0.5) < 1e-6
    assert math.isclose(candidate(8, []), 2.0, rel_tol=0.001)
    assert set(candidate(9, [])) == set([1, 2])
    assert candidate(-1, list(range(3))) != 0
    assert True
    x = 5
    assert candidate(x, []) == 1
    for i in range(2):
        assert candidate(i, []) == i
"""
    split = split_asserts(suite, "f")
    calls = [t for t in split.tests if t.kind == "call"]
    assert [t.check for t in calls] == ["eq", "eq", "truthy", "falsy", "is_true", "is_none", "abs_lt", "isclose",
                                        "set_eq", "ne"]
    assert calls[0].args == [1, [2]] and calls[0].expected == (3, "x")
    assert calls[6].check_args == {"tol": 1e-6} and calls[7].check_args == {"rel_tol": 0.001}
    assert calls[9].args == [-1, [0, 1, 2]]
    assert (split.n_host, split.n_in_process, split.n_constant) == (10, 2, 1)
    rest = split.tests[-1]
    assert rest.kind == "assert" and "candidate(x, [])" in rest.code and rest.code.rstrip().endswith("check(f)")
    assert "candidate(1, [2])" not in rest.code  # converted asserts do not also run in-process


def test_mbpp_style_top_level_asserts_keep_their_own_imports():
    split = split_asserts("import math\nassert math.isclose(vol(2), 33.5, rel_tol=0.001)\nassert vol(1) > helper()\n", "vol")
    assert [t.kind for t in split.tests] == ["call", "assert"]
    assert split.tests[1].code.startswith("import math")


@pytest.mark.parametrize("out,expected,equal", [
    (True, 1, False), (1, True, False), (1, 1.0, True), ([1, 2], (1, 2), False), ((1, [2]), (1, [2]), True),
    ({"a": [True]}, {"a": [1]}, False), ({1, 2}, {2, 1}, True), ("1", 1, False), (None, None, True),
])
def test_plain_equality_is_strict_about_types(out, expected, equal):
    assert plain_equal(out, expected) is equal


def test_judge_tolerances_and_truth():
    assert judge(0.5000001, TestCase("call", expected=0.5, check="abs_lt", check_args={"tol": 1e-6}))
    assert not judge("0.5", TestCase("call", expected=0.5, check="abs_lt", check_args={"tol": 1e-6}))
    assert judge(4188.8, TestCase("call", expected=4188.790204786391, check="isclose", check_args={"rel_tol": 1e-3}))
    assert not judge(1, TestCase("call", check="is_true"))
    assert judge([2, 1, 2], TestCase("call", expected={1, 2}, check="set_eq"))
    assert judge([], TestCase("call", check="falsy")) and not judge([0], TestCase("call", check="falsy"))


def test_host_judged_share_of_humaneval_and_mbpp_asserts(shared_data):
    """Goal >= 95 % of each benchmark's asserts judged on the host (measured: 98.6 % / 99.8 %)."""
    rows = [json.loads(line) for line in gzip.open(shared_data / "HumanEval.jsonl.gz", "rt")]
    he = [split_asserts(r["test"], r["entry_point"]) for r in rows]
    mbpp = [split_asserts(r["assertion"], r["entry_point"]) for r in map(json.loads, open(shared_data / "MbppPlus.jsonl"))]
    for splits in (he, mbpp):
        host, rest = sum(s.n_host for s in splits), sum(s.n_in_process for s in splits)
        assert host / (host + rest) >= 0.95


# ---- forged verdicts ----------------------------------------------------------------------------------------
ALWAYS_EQUAL = "class _Yes:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n" \
               "    def __bool__(self): return True\n"
INT_ALWAYS_EQUAL = "class _Int(int):\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n" \
                   "    __hash__ = int.__hash__\n"
PATCH_BUILTINS = "import builtins, math\nbuiltins.abs = lambda x: 0\nmath.isclose = lambda *a, **k: True\n"


def _forgeries(entry: str, canonical: str) -> dict[str, str]:
    """Programs that answer wrongly but pass asserts run in their own process."""
    return {
        "eq_always_true": f"{ALWAYS_EQUAL}def {entry}(*args):\n    return _Yes()\n",
        "int_subclass_eq": f"{INT_ALWAYS_EQUAL}def {entry}(*args):\n    return _Int(0)\n",
        "bool_for_int": f"{canonical}\n_real = {entry}\ndef {entry}(*args):\n    r = _real(*args)\n"
                        f"    return (r == 1) if type(r) is int and r in (0, 1) else r\n",
        "patched_builtins": f"{PATCH_BUILTINS}def {entry}(*args):\n    return 0.5\n",
        # breaks the classic harness's own JSON writer, so no in-process control for this one
        "patched_isinstance": f"import builtins\nbuiltins.isinstance = lambda *a: True\n{ALWAYS_EQUAL}"
                              f"def {entry}(*args):\n    return _Yes()\n",
    }


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as p:
        yield p


@pytest.mark.parametrize("bench,task_ids", [
    ("humaneval", {"eq_always_true": "HumanEval/0", "int_subclass_eq": "HumanEval/13", "bool_for_int": "HumanEval/13",
                   "patched_builtins": "HumanEval/2", "patched_isinstance": "HumanEval/0"}),
    ("mbpp", {"eq_always_true": "Mbpp/2", "int_subclass_eq": "Mbpp/9", "bool_for_int": "Mbpp/9",
              "patched_builtins": "Mbpp/82", "patched_isinstance": "Mbpp/2"}),
])
def test_forged_answers_fail_on_the_host_but_pass_in_process(pool, shared_data, bench, task_ids):
    if bench == "humaneval":
        problems = {p.task_id: p for p in load_humaneval(str(shared_data / "HumanEval.jsonl.gz"))}
        raw = {r["task_id"]: r["test"] + f"\ncheck({r['entry_point']})\n"
               for r in map(json.loads, gzip.open(shared_data / "HumanEval.jsonl.gz", "rt"))}
    else:
        problems = {p.task_id: p for p in load_mbpp(str(shared_data / "MbppPlus.jsonl"))}
        raw = {r["task_id"]: r["assertion"] for r in map(json.loads, open(shared_data / "MbppPlus.jsonl"))}
    for name, task_id in task_ids.items():
        p = problems[task_id]
        canonical = p.canonical_solution
        program = _forgeries(p.entry_point, canonical)[name]
        if bench == "humaneval":
            program = p.prompt.split(f"def {p.entry_point}")[0] + program  # the prompt's imports, as a completion has
        classic = Job(program, [TestCase("assert", code=raw[task_id])], entry_point=p.entry_point)
        host, in_process = pool.run_many([p.job(program), classic])
        if name != "patched_isinstance":
            assert in_process.passed, (name, task_id, in_process.detail)  # the forgery is real
        assert not host.passed, (name, task_id)
