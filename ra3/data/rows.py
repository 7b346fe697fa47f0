"""What a data row means (no Lightning): a training program's fields, an RL problem's tests.

The one place the data layer (``CodeDataModule``), the rewards and ``ra3 data`` read rows from; each helper raises
``ValueError`` naming what is wrong, so the caller decides whether a malformed row is skipped or fatal.
"""

from __future__ import annotations

import json
from typing import Any

from ra3.execution import TestCase
from ra3.execution.asserts import called_function, split_asserts

PASSTHROUGH = ("task_id", "boundaries", "skills", "intents", "macros")  # kept for the ground-truth scoring of thoughts


def row_fields(row: Any, text_field: str, prompt_field: str, completion_field: str) -> dict[str, Any]:
    """``{"text": ...}`` or ``{"prompt": ..., "completion": ...}`` (plus ``task_id``/``boundaries``/``skills``
    when present); raises ``ValueError`` naming what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    extra = {k: row[k] for k in PASSTHROUGH if k in row}
    if prompt_field in row and completion_field in row:
        prompt, completion = row[prompt_field], row[completion_field]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError(f"'{prompt_field}' and '{completion_field}' must be strings")
        return {"prompt": prompt, "completion": completion, **extra}
    if text_field in row:
        if not isinstance(row[text_field], str) or not row[text_field].strip():
            raise ValueError(f"'{text_field}' must be a non-empty string")
        return {"text": row[text_field], **extra}
    raise ValueError(f"missing '{text_field}' (or '{prompt_field}' + '{completion_field}')")



def tests_from_row(row: dict) -> tuple[list[TestCase], str | None, bool]:
    """(tests, entry point, whether the completion is a whole program) of an RL row; ``ValueError`` if none."""
    if row.get("test_cases") and row.get("entry_point"):
        cases = [TestCase("call", args=list(c["args"]) if "args" in c else [c["input"]], expected=c["expected"])
                 for c in row["test_cases"]]
        return cases, row["entry_point"], False
    if row.get("tests"):  # asserts judged on the host where their form allows (a policy cannot forge them)
        entry = row.get("entry_point") or next(filter(None, map(called_function, row["tests"])), None)
        return split_asserts("\n".join(row["tests"]), entry).tests, entry, False
    io = row.get("input_output")
    if io:
        io = json.loads(io) if isinstance(io, str) else io
        return [TestCase("stdio", stdin=i, expected=o) for i, o in zip(io["inputs"], io["outputs"])], None, True
    raise ValueError("needs 'tests' (asserts), 'test_cases' + 'entry_point', or 'input_output'")
