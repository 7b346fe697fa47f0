"""Diagnostic corpora for the study (not methods): does RA3 lose to the oracle through its thoughts' *content*?

- ``corrected``: RA3's bootstrapped corpus with every thought that sits at a true routine boundary but says
  something else replaced by the world's thought. Same programs, placement and format as RA3's corpus; only the
  content errors are gone.
- ``noisy_oracle``: the oracle corpus with RA3's content errors: where RA3's thought at a true boundary of the
  same program (``task_id``) is wrong, the oracle's thought there gets RA3's text. RA3's placement errors (missing
  or extra thoughts; boundary F1 0.98–1.00) are not copied, nor are errors on programs RA3 did not annotate.

Paired over bases: corrected − RA3 large and positive says content is the lever; oracle − noisy oracle says the
same from the oracle's side; a small corrected − RA3 with a large oracle − RA3 points at the programs, placement,
format or schedule instead. No Lightning here.
"""

from __future__ import annotations

import json
from pathlib import Path

from ra3.data.segments import indentation, is_comment_line, split_lines, thought_segment
from ra3.errors import Ra3Error
from ra3.data.io import write_jsonl
from ra3.evaluation.metrics import true_thought_lines

KINDS = ("corrected", "noisy_oracle")


def _rewrite_thoughts(completion: str, texts: dict[int, str]) -> str:
    """``completion`` with its k-th comment line's text replaced by ``texts[k]`` (indentation kept)."""
    out, k = [], 0
    for seg in split_lines(completion):
        if is_comment_line(seg):
            if k in texts:
                seg = thought_segment(texts[k], indentation(seg)).text
                seg = seg if completion.startswith("\n") or out else seg.lstrip("\n")
            k += 1
        out.append(seg)
    return "".join(out)


def _with_completion(row: dict, completion: str) -> dict:
    return {**row, "completion": completion, "text": row["prompt"] + completion}


def corrected(bootstrapped: list[dict]) -> tuple[list[dict], int]:
    """(rows, thoughts changed): every thought at a true boundary carries the world's text."""
    out, changed = [], 0
    for r in bootstrapped:
        if not r.get("thoughts") or r.get("boundaries") is None or not r.get("intents"):
            out.append(r)
            continue
        truth = dict(zip(true_thought_lines(r), r["intents"]))
        order = sorted(r["thoughts"], key=lambda t: t["line"])
        fix = {k: truth[t["line"]] for k, t in enumerate(order) if t["line"] in truth and t["text"] != truth[t["line"]]}
        changed += len(fix)
        new = _with_completion(r, _rewrite_thoughts(r["completion"], fix)) if fix else r
        out.append({**new, "thoughts": [{**t, "text": truth.get(t["line"], t["text"])} for t in order]})
    return out, changed


def noisy_oracle(oracle: list[dict], bootstrapped: list[dict]) -> tuple[list[dict], int]:
    """(rows, thoughts changed): the oracle's thought at true boundary k gets RA3's text where RA3's was wrong."""
    by_id = {r["task_id"]: r for r in bootstrapped if "task_id" in r}
    out, changed = [], 0
    for r in oracle:
        b = by_id.get(r.get("task_id"))
        if b is None or b.get("boundaries") is None or not b.get("intents"):
            out.append(r)
            continue
        placed = {t["line"]: t["text"] for t in b.get("thoughts", [])}
        wrong = {k: placed[line] for k, (line, intent) in enumerate(zip(true_thought_lines(b), b["intents"]))
                 if line in placed and placed[line] != intent}
        changed += len(wrong)
        out.append(_with_completion(r, _rewrite_thoughts(r["completion"], wrong)) if wrong else r)
    return out, changed


def write(kind: str, out: str, bootstrapped: str, oracle: str | None = None) -> dict:
    """Build the ``kind`` corpus into ``out`` (JSONL) and ``out``.stats.json; returns the stats."""
    def read(path: str) -> list[dict]:
        if not Path(path).exists():
            raise Ra3Error(f"diagnostic corpus: {path} does not exist")
        return [json.loads(line) for line in open(path) if line.strip()]

    if kind not in KINDS:
        raise Ra3Error(f"diagnostic corpus kind must be one of {', '.join(KINDS)}; got {kind!r}")
    boot = read(bootstrapped)
    if kind == "corrected":
        rows, changed = corrected(boot)
    else:
        if oracle is None:
            raise Ra3Error("the noisy_oracle corpus needs --oracle (the oracle corpus)")
        rows, changed = noisy_oracle(read(oracle), boot)
    write_jsonl(Path(out), rows)
    stats = {"kind": kind, "rows": len(rows), "thoughts_changed": changed}
    Path(str(out) + ".stats.json").write_text(json.dumps(stats, indent=1))
    return stats
