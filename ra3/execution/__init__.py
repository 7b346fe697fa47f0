"""Code-execution sandbox (a leaf package: no Lightning, no torch)."""

from ra3.execution.sandbox import LocalSandbox, Sandbox, SandboxPool, run_many
from ra3.execution.types import ExecutionResult, Job, Status, TestCase, evalplus_timeouts

__all__ = ["ExecutionResult", "Job", "LocalSandbox", "Sandbox", "SandboxPool", "Status", "TestCase", "evalplus_timeouts", "run_many"]
