"""Assert-style test suites turned into host-judged call tests (stdlib only).

HumanEval's ``check(candidate)`` and MBPP's ``assert f(x) == y`` lines normally run inside the program's own
process, where the program can return an object whose ``__eq__`` is always true, patch ``abs``/``isinstance``, or
walk the harness's frames. :func:`split_asserts` parses each assert (AST) and, where its form allows, evaluates
the arguments and the expected value on the host, sends only the arguments into the sandbox (a ``call`` test)
and leaves the verdict to :func:`judge` on the host, over plain decoded data. Forms recognised (``f`` is the
entry point or the ``check`` function's parameter; ``E``, ``T``, args: expressions of literals, ``math`` and a
few pure builtins)::

    assert f(args) == E        assert E == f(args)        assert f(args)          assert not f(args)
    assert f(args) is True     assert f(args) is False    assert f(args) is None  assert f(args) != E
    assert abs(f(args) - E) < T   (or <=, or E - f(args))     assert math.isclose(f(args), E, rel_tol=.., abs_tol=..)
    assert set(f(args)) == set(E)

Everything else (loops, helper variables, asserts over several calls) stays one in-process ``assert`` test
(counted: ``AssertSplit.n_in_process``). Asserts that do not call the program at all (``assert True``) are dropped.
"""

from __future__ import annotations

import ast
import builtins
import copy
import math
from dataclasses import dataclass, field
from typing import Any

from ra3.execution.types import TestCase

# Names an expected value or argument may use; evaluated on the host with no other builtins.
_PURE = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "complex", "dict", "divmod", "enumerate", "float", "frozenset", "int", "len", "list",
    "max", "min", "pow", "range", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip", "bytes", "chr",
    "ord", "map", "filter", "True", "False", "None")}
_PURE["math"] = math

CHECKS = ("eq", "ne", "truthy", "falsy", "is_true", "is_false", "is_none", "abs_lt", "abs_le", "isclose", "set_eq")


@dataclass
class AssertSplit:
    """``tests``: host-judged ``call`` tests, then (if any) one in-process ``assert`` test with the rest."""

    tests: list[TestCase] = field(default_factory=list)
    n_host: int = 0
    n_in_process: int = 0
    n_constant: int = 0


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _host_value(node: ast.AST) -> tuple[bool, Any]:
    """(True, value) if ``node`` is an expression of literals, ``math`` and pure builtins (benchmark data: trusted)."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if not _names(node) <= set(_PURE) or any(isinstance(n, (ast.Lambda, ast.NamedExpr, ast.Await)) for n in ast.walk(node)):
        return False, None
    try:
        return True, eval(compile(ast.Expression(node), "<test>", "eval"), {"__builtins__": {}}, dict(_PURE))
    except Exception:
        return False, None


def _call(node: ast.AST, functions: set[str]) -> list | None:
    """The host-evaluated positional arguments of ``f(args)`` for ``f`` in ``functions``, else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions) or node.keywords:
        return None
    if any(isinstance(a, ast.Starred) for a in node.args):
        return None
    values = []
    for a in node.args:
        ok, value = _host_value(a)
        if not ok:
            return None
        values.append(value)
    return values


def _convert(test: ast.AST, functions: set[str]) -> TestCase | None:
    """One assert's test expression as a host-judged call test, if its form is one of the module's."""
    def make(args, check, expected=None, **opts):
        return TestCase("call", args=args, expected=expected, check=check, check_args=opts)

    if (args := _call(test, functions)) is not None:
        return make(args, "truthy")
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and (args := _call(test.operand, functions)) is not None:
        return make(args, "falsy")
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, (ast.Eq, ast.NotEq)):
            check = "eq" if isinstance(op, ast.Eq) else "ne"
            for call, other in ((left, right), (right, left)):
                if (args := _call(call, functions)) is not None:
                    ok, expected = _host_value(other)
                    return make(args, check, expected) if ok else None
            if check == "eq" and all(isinstance(s, ast.Call) and isinstance(s.func, ast.Name) and s.func.id == "set"
                                     and len(s.args) == 1 and not s.keywords for s in (left, right)):
                for call, other in ((left.args[0], right.args[0]), (right.args[0], left.args[0])):
                    if (args := _call(call, functions)) is not None:
                        ok, expected = _host_value(other)
                        return make(args, "set_eq", set(expected)) if ok else None
            return None
        if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value in (True, False, None):
            if (args := _call(left, functions)) is not None:
                return make(args, {True: "is_true", False: "is_false", None: "is_none"}[right.value])
            return None
        if isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name) \
                and left.func.id == "abs" and len(left.args) == 1 and isinstance(left.args[0], ast.BinOp) \
                and isinstance(left.args[0].op, ast.Sub):
            ok_tol, tol = _host_value(right)
            diff = left.args[0]
            for call, other in ((diff.left, diff.right), (diff.right, diff.left)):
                if (args := _call(call, functions)) is not None:
                    ok, expected = _host_value(other)
                    return make(args, "abs_lt" if isinstance(op, ast.Lt) else "abs_le", expected, tol=tol) \
                        if ok and ok_tol else None
        return None
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "isclose" \
            and isinstance(test.func.value, ast.Name) and test.func.value.id == "math" and len(test.args) == 2:
        opts = {}
        for kw in test.keywords:
            ok, value = _host_value(kw.value)
            if not ok or kw.arg not in ("rel_tol", "abs_tol"):
                return None
            opts[kw.arg] = value
        a, b = test.args
        for call, other in ((a, b), (b, a)):
            if (args := _call(call, functions)) is not None:
                ok, expected = _host_value(other)
                return make(args, "isclose", expected, **opts) if ok else None
    return None


def _calls_any(node: ast.AST, functions: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions for n in ast.walk(node))


def called_function(assert_line: str) -> str | None:
    """The first function an assert calls that is not a builtin (MBPP rows name their entry point this way)."""
    try:
        tree = ast.parse(assert_line.strip())
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
            return node.func.id
    return None


def split_asserts(source: str, entry_point: str | None) -> AssertSplit:
    """Split an assert-style suite into host-judged call tests and an in-process remainder.

    ``source``: HumanEval's ``test`` field (a ``def check(candidate)``; ``check(entry_point)`` is appended to the
    remainder) or MBPP-style top-level asserts calling ``entry_point``. Unparseable source stays whole in-process.
    """
    split = AssertSplit()
    try:
        module = ast.parse(source)
    except SyntaxError:
        split.tests.append(TestCase("assert", code=source))
        split.n_in_process = source.count("assert")
        return split
    check = next((s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is not None:
        functions = {check.args.args[0].arg} if check.args.args else set()
        if entry_point:
            functions.add(entry_point)
        prelude = [s for s in module.body if s is not check and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
                                                                      and getattr(s.value.func, "id", None) == "check")]
        units = check.body
    else:
        functions = {entry_point} if entry_point else set()
        prelude, units = [], module.body
    kept: list[ast.stmt] = []
    for stmt in units:
        if isinstance(stmt, ast.Assert):
            if not _calls_any(stmt.test, functions):
                ok, value = _host_value(stmt.test)
                if ok and value:
                    split.n_constant += 1
                    continue
            test = _convert(stmt.test, functions)
            if test is not None:
                split.tests.append(test)
                split.n_host += 1
                continue
        kept.append(stmt)
    split.n_in_process = sum(isinstance(n, ast.Assert) for s in kept for n in ast.walk(s))
    if split.n_in_process:
        if check is not None:
            body = copy.copy(check)
            body.body = kept
            code = ast.unparse(ast.Module(body=[*prelude, body], type_ignores=[])) + f"\ncheck({entry_point})\n"
        else:
            code = ast.unparse(ast.Module(body=kept, type_ignores=[])) + "\n"
        split.tests.append(TestCase("assert", code=code))
    return split


# ---- judging on the host ---------------------------------------------------------------------------------------
_NUMBERS = (int, float, complex)


def _canon(x: Any) -> Any:
    """A hashable, type-tagged form: ``True`` and ``1`` differ, ``1`` and ``1.0`` do not (numeric equality)."""
    t = type(x)
    if t is bool:
        return ("bool", x)
    if t in _NUMBERS:
        return ("num", x)
    if t in (str, bytes) or x is None:
        return (t.__name__, x)
    if t in (list, tuple):
        return (t.__name__, tuple(_canon(v) for v in x))
    if t in (set, frozenset):
        return ("set", frozenset(_canon(v) for v in x))
    if t is dict:
        return ("dict", frozenset((_canon(k), _canon(v)) for k, v in x.items()))
    return ("opaque", id(x))  # anything else (a user class, an undecodable value) equals nothing


def plain_equal(out: Any, expected: Any) -> bool:
    """Equality over plain decoded data: same container types element by element, ``bool`` is not ``int``,
    numbers compare by value; anything that is not plain data is never equal."""
    try:
        return _canon(out) == _canon(expected)
    except TypeError:  # an unhashable inside a set/dict cannot come from the decoder; be safe
        return False


def _number(x: Any) -> bool:
    return type(x) in _NUMBERS


def judge(out: Any, test: TestCase, truth: bool | None = None) -> bool:
    """The host's verdict on a converted assert (``test.check``) given the program's decoded output and, for
    ``truthy``/``falsy``, the truth value the sandbox saw (``bool(value)``: a ``re.Match`` is true; a lying
    ``__bool__`` gains nothing over returning ``True``)."""
    check, opts, expected = test.check, test.check_args, test.expected
    if check == "eq":
        return plain_equal(out, expected)
    if check == "ne":
        return _canon(out)[0] != "opaque" and not plain_equal(out, expected)
    if check in ("truthy", "falsy"):
        value = truth if _canon(out)[0] == "opaque" else bool(out)
        return value is not None and value == (check == "truthy")
    if check in ("is_true", "is_false"):
        return type(out) is bool and out is (check == "is_true")
    if check == "is_none":
        return out is None
    if check in ("abs_lt", "abs_le"):
        if not (_number(out) and _number(expected)):
            return False
        d = abs(out - expected)
        return d < opts["tol"] if check == "abs_lt" else d <= opts["tol"]
    if check == "isclose":
        return _number(out) and _number(expected) and type(out) is not complex and \
            math.isclose(out, expected, **opts)
    if check == "set_eq":
        if type(out) not in (list, tuple, set, frozenset, str, dict):
            return False
        try:
            return _canon(set(out)) == _canon(expected)
        except TypeError:
            return False
    raise ValueError(f"unknown assert check {check!r}; one of {', '.join(CHECKS)}")
