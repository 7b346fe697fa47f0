"""The diagnostic corpora (``ra3.experiments.diagnostics``): RA3's corpus with its wrong thoughts corrected, the oracle's with
RA3's wrong thoughts."""

import json

import pytest

from ra3.experiments.diagnostics import corrected, noisy_oracle, write
from ra3.errors import Ra3Error
from ra3.evaluation.metrics import thought_accuracy

PROMPT = 'def solve(xs):\n    """Tidy the list, then add 7 to each value."""'
TRUTH = {"task_id": "w/1", "prompt": PROMPT, "boundaries": [2, 5], "macros": ["tidy", ""],
         "intents": ["tidy the list", "add 7 to each value"]}
CODE = ["xs = sorted(xs)", "xs = [max(x, 0) for x in xs]", "xs = [x + 7 for x in xs]", "return xs"]


def program(thoughts: dict[int, str]) -> str:
    lines = []
    for i, line in enumerate(CODE):
        if i in thoughts:
            lines.append(f"\n    # {thoughts[i]}")
        lines.append(f"\n    {line}")
    return "".join(lines)


def test_corrected_and_noisy_oracle_change_exactly_the_wrong_thoughts():
    boot = {**TRUTH, "completion": program({0: "tidy the list", 3: "add 9 to each value", 1: "an extra thought"}),
            "thoughts": [{"line": 0, "text": "tidy the list"}, {"line": 1, "text": "an extra thought"},
                         {"line": 3, "text": "add 9 to each value"}]}
    boot["text"] = PROMPT + boot["completion"]
    assert thought_accuracy([boot])["exact"] == 0.5
    (fixed,), changed = corrected([boot])
    assert changed == 1 and fixed["completion"] == program({0: "tidy the list", 3: "add 7 to each value", 1: "an extra thought"})
    assert fixed["text"] == PROMPT + fixed["completion"] and thought_accuracy([fixed])["exact"] == 1.0

    oracle = {**TRUTH, "completion": program({0: "tidy the list", 3: "add 7 to each value"})}
    other = {**oracle, "task_id": "w/2"}  # not annotated by RA3: unchanged
    (noisy, same), changed = noisy_oracle([oracle, other], [boot])
    assert changed == 1 and same == other
    assert noisy["completion"] == program({0: "tidy the list", 3: "add 9 to each value"})
    assert noisy["text"] == PROMPT + noisy["completion"]


def test_write_names_a_missing_file_and_a_bad_kind(tmp_path):
    with pytest.raises(Ra3Error, match="does not exist"):
        write("corrected", str(tmp_path / "o.jsonl"), str(tmp_path / "missing.jsonl"))
    with pytest.raises(Ra3Error, match="kind must be one of"):
        write("shuffled", str(tmp_path / "o.jsonl"), str(tmp_path / "missing.jsonl"))
    boot = tmp_path / "b.jsonl"
    boot.write_text(json.dumps({**TRUTH, "completion": program({}), "thoughts": []}) + "\n")
    with pytest.raises(Ra3Error, match="needs --oracle"):
        write("noisy_oracle", str(tmp_path / "o.jsonl"), str(boot))
    assert write("corrected", str(tmp_path / "o.jsonl"), str(boot)) == {"kind": "corrected", "rows": 1, "thoughts_changed": 0}
