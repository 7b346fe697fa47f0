"""Jobs and results of the code-execution sandbox (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"  # assertion / wrong answer
    ERROR = "error"  # exception, or the program ended before its tests finished
    SYNTAX_ERROR = "syntax_error"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    KILLED = "killed"  # a signal or a resource limit other than time/memory
    SANDBOX_ERROR = "sandbox_error"  # our fault: never a score, counted separately


@dataclass
class TestCase:
    """One test. ``kind``:

    - ``assert``: ``code`` runs in the program's namespace and passes if it raises nothing.
    - ``call``: ``entry_point(*args)`` is called in the sandbox and its return value is compared *outside*
      the sandbox with ``expected`` (the expected value never enters the sandbox).
    - ``stdio``: the program runs as ``__main__`` with ``stdin`` as standard input; what it prints is
      compared outside with ``expected`` (whitespace-normalised, floats within ``atol``).

    ``check`` (``call`` only): a converted assert's form (``ra3.execution.asserts.judge``: ``eq``, ``truthy``,
    ``abs_lt``, ``isclose``, ...) with ``check_args`` (its tolerances); empty = the job's ``compare`` rules.
    """

    __test__ = False  # not a pytest class

    kind: str
    code: str = ""
    args: list[Any] = field(default_factory=list)
    stdin: str = ""
    expected: Any = None
    has_expected: bool = True
    check: str = ""
    check_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """A program and its tests.

    ``timeout``: seconds per test (per call / assert block / stdin run). ``program_timeout``: wall-clock
    seconds for the whole job (default: the sum of the per-test timeouts + 2 s start-up).
    ``compare``: how ``call`` outputs are compared (see ``ra3.execution.compare.outputs_match``).
    """

    program: str
    tests: list[TestCase]
    entry_point: str | None = None
    timeout: float | list[float] = 3.0
    program_timeout: float | None = None
    atol: float = 0.0
    compare: str = "exact"
    memory_mb: int = 4096
    stop_on_failure: bool = False
    job_id: str = ""

    def test_timeouts(self) -> list[float]:
        if isinstance(self.timeout, (int, float)):
            return [float(self.timeout)] * len(self.tests)
        if len(self.timeout) != len(self.tests):
            raise ValueError(f"{len(self.timeout)} timeouts for {len(self.tests)} tests")
        return [float(t) for t in self.timeout]

    def wall_timeout(self) -> float:
        return self.program_timeout if self.program_timeout is not None else sum(self.test_timeouts()) + 2.0


def evalplus_timeouts(reference_times: list[float], base: float = 1.0, factor: float = 4.0) -> list[float]:
    """EvalPlus-style per-test limits: ``max(base, factor × reference time)``."""
    return [max(base, factor * t) for t in reference_times]


@dataclass
class ExecutionResult:
    """Outcome of one job. ``status`` is the job's verdict (``passed`` only if every test passed);
    ``test_statuses`` has one entry per test (``None`` = not run); ``outputs`` the decoded return
    values / stdout of ``call`` and ``stdio`` tests; ``missing_protections`` names what the backend
    could not provide."""

    status: Status
    test_statuses: list[Status | None]
    outputs: list[Any] = field(default_factory=list)
    test_times: list[float | None] = field(default_factory=list)
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    backend: str = ""
    missing_protections: tuple[str, ...] = ()
    job_id: str = ""

    @property
    def passed(self) -> bool:
        return self.status == Status.PASSED

    @property
    def n_passed(self) -> int:
        return sum(s == Status.PASSED for s in self.test_statuses)

    @property
    def fraction_passed(self) -> float:
        return self.n_passed / max(1, len(self.test_statuses))
