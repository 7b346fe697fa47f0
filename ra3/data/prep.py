"""``ra3 data``: real corpora in, rows that ``CodeDataModule`` / ``RLVRModule`` read out (no Lightning).

``ra3 data midtrain --source SRC --out DIR`` keeps Python programs that

1. parse (``ast.parse``) and fall within line / character bounds (optionally with comments and docstrings
   stripped: ``--strip_comments``);
2. are not exact duplicates (sha1 of the text with blank lines and trailing spaces removed);
3. are not near duplicates: MinHash over 5-token shingles with an LSH index (``datasketch``: a small, well-kept
   implementation of exactly this; ``datatrove`` has the same MinHash stage but brings a whole pipeline
   framework with it), Jaccard threshold ``--near_dup_threshold``;
4. share no ``--ngram``-token window with any shipped benchmark (HumanEval prompts and solutions, MBPP(+) prompts,
   code and tests): decontamination, reporting which benchmark tasks each removed row matched.

``ra3 data rl --source SRC --out DIR`` keeps problems with a prompt and tests (asserts, call tests or
stdin/stdout), deduplicated and decontaminated on their prompts; when a row carries a reference solution, the
row is kept only if the solution passes its tests in the sandbox.

Input is read as a stream (``--streaming`` for hub datasets) in shards of ``--shard_size`` rows; each output
shard is written atomically together with the dedup state, so an interrupted run resumes at the first missing
shard with the same result. ``DIR/report.json`` counts the rows each filter removed.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import pickle
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ra3.errors import Ra3Error
from ra3.data.io import atomic_write_text, write_jsonl
from ra3.data.sources import rows_from_source

TEXT_FIELDS = ("text", "content", "code", "completion", "solution")
LICENSE_FIELDS = ("license", "licenses", "max_stars_repo_licenses", "repo_license")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Word and punctuation tokens (whitespace-insensitive): the unit of shingles and n-grams."""
    return _TOKEN.findall(text)


def strip_comments(source: str) -> str:
    """``source`` without ``#`` comments and docstrings (module, class and function), blank lines dropped."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                drop.update(range(first.lineno, first.end_lineno + 1))
    lines = source.splitlines()
    comments: dict[int, int] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.start[1]
    out = []
    for i, line in enumerate(lines, 1):
        if i in drop:
            continue
        if i in comments:
            line = line[: comments[i]].rstrip()
        if line.strip():
            out.append(line)
    return "\n".join(out) + "\n"


BENCHMARK_FIELDS = ("prompt", "canonical_solution", "code", "test", "test_list", "question", "question_content",
                    "problem", "solution", "starter_code")


def benchmark_ngrams(n: int, names: tuple[str, ...] = ("humaneval", "mbppplus"),
                     files: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """``{n-gram: task_id}`` over the shipped benchmarks' prompts, solutions and tests, and over benchmark ``files``
    (any source ``rows_from_source`` reads, e.g. a LiveCodeBench jsonl: ``BENCHMARK_FIELDS`` are indexed)."""
    from ra3.data.benchmarks import _default_source, _read_rows

    sources = {"humaneval": (["HumanEval.jsonl.gz"], "openai_humaneval"), "mbppplus": (["MbppPlus.jsonl.gz"], "evalplus/mbppplus")}
    rows: list[tuple[str, dict]] = []
    for name in names:
        rows += [(name, row) for row in _read_rows(_default_source(*sources[name]), "test")]
    for path in files:
        rows += [(Path(path).name, row) for _, row in rows_from_source(path, "test") if isinstance(row, dict)]
    index: dict[tuple[str, ...], str] = {}
    for number, (name, row) in enumerate(rows):
        task = str(row.get("task_id") or row.get("question_id") or f"{name}/{number}")
        for text in (row.get(k) for k in BENCHMARK_FIELDS):
            if isinstance(text, list):
                text = "\n".join(map(str, text))
            if isinstance(text, str):
                t = tokens(text)
                for i in range(len(t) - n + 1):
                    index.setdefault(tuple(t[i : i + n]), task)
    return index


@dataclass
class DedupState:
    """What the filters remember across shards (pickled beside each shard: the unit of resume)."""

    exact: set[str] = field(default_factory=set)
    lsh: Any = None
    counts: dict[str, int] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)  # benchmark task -> rows removed for it
    rows_read: int = 0
    rows_kept: int = 0  # rows written to shards
    next_key: int = 0


@dataclass
class Filters:
    min_lines: int = 3
    max_lines: int = 1000
    max_chars: int = 100_000
    strip_comments: bool = False
    near_dup_threshold: float | None = 0.85
    ngram: int = 13
    benchmarks: tuple[str, ...] = ("humaneval", "mbppplus")
    num_perm: int = 128
    benchmark_files: tuple[str, ...] = ()  # more benchmarks to decontaminate against (e.g. a LiveCodeBench jsonl)


class Pipeline:
    def __init__(self, filters: Filters):
        self.f = filters
        self.contamination = benchmark_ngrams(filters.ngram, filters.benchmarks, filters.benchmark_files)

    def new_state(self) -> DedupState:
        state = DedupState()
        if self.f.near_dup_threshold is not None:
            from datasketch import MinHashLSH

            state.lsh = MinHashLSH(threshold=self.f.near_dup_threshold, num_perm=self.f.num_perm)
        return state

    def _drop(self, state: DedupState, reason: str) -> None:
        state.counts[reason] = state.counts.get(reason, 0) + 1

    def check_text(self, text: str, state: DedupState, parse: bool = True) -> str | None:
        """The text to keep (stripped if asked), or None after counting why it was dropped."""
        if parse:
            try:
                ast.parse(text)
            except (SyntaxError, ValueError):
                return self._drop(state, "not_python")
            if self.f.strip_comments:
                try:
                    text = strip_comments(text)
                except (SyntaxError, tokenize.TokenError, ValueError):
                    return self._drop(state, "not_python")
            n_lines = sum(1 for line in text.splitlines() if line.strip())
            if not self.f.min_lines <= n_lines <= self.f.max_lines or len(text) > self.f.max_chars:
                return self._drop(state, "length")
        key = hashlib.sha1("\n".join(line.rstrip() for line in text.splitlines() if line.strip()).encode()).hexdigest()
        if key in state.exact:
            return self._drop(state, "exact_duplicate")
        t = tokens(text)
        for i in range(len(t) - self.f.ngram + 1):
            task = self.contamination.get(tuple(t[i : i + self.f.ngram]))
            if task is not None:
                state.matched[task] = state.matched.get(task, 0) + 1
                return self._drop(state, "benchmark_overlap")
        if state.lsh is not None:
            from datasketch import MinHash

            m = MinHash(num_perm=self.f.num_perm)
            for i in range(max(1, len(t) - 4)):
                m.update(" ".join(t[i : i + 5]).encode())
            if state.lsh.query(m):
                return self._drop(state, "near_duplicate")
            state.lsh.insert(str(state.next_key), m)
            state.next_key += 1
        state.exact.add(key)
        return text


def _text_of(row: dict, field: str | None) -> str | None:
    for name in ([field] if field else TEXT_FIELDS):
        if isinstance(row.get(name), str):
            return row[name]
    return None


def _midtrain_row(row: dict, text: str, row_number: int) -> dict:
    out = {"text": text, "source_row": row_number}
    for k in LICENSE_FIELDS + ("task_id", "id", "repo_name", "path"):
        if k in row:
            out[k] = row[k]
    return out


def _rl_row(row: dict, row_number: int) -> dict | None:
    """An RL row (prompt + tests), or None if the source row has neither a prompt nor tests ``RLVRModule`` reads."""
    from ra3.data.rows import tests_from_row

    prompt = next((row[k] for k in ("prompt", "question", "problem", "text") if isinstance(row.get(k), str)), None)
    rl = {k: row[k] for k in ("tests", "test_cases", "entry_point", "input_output", "task_id") if k in row}
    if isinstance(rl.get("tests"), str):
        rl["tests"] = [line for line in rl["tests"].splitlines() if line.strip().startswith("assert")]
    if "test_list" in row and "tests" not in rl:
        rl["tests"] = list(row["test_list"])
    if prompt is None:
        return None
    try:
        tests_from_row(rl)
    except (ValueError, KeyError, TypeError):
        return None
    rl["prompt"], rl["source_row"] = prompt, row_number
    solution = next((row[k] for k in ("solution", "canonical_solution", "code", "reference") if isinstance(row.get(k), str)), None)
    if solution is not None:
        rl["reference"] = solution
    for k in LICENSE_FIELDS:
        if k in row:
            rl[k] = row[k]
    return rl


def _verify(rows: list[dict], state: DedupState, pipeline: Pipeline) -> list[dict]:
    """Keep rows whose reference solution passes their tests (rows without one are kept as they are)."""
    from ra3.execution import SandboxPool, Status
    from ra3.data.rows import tests_from_row

    checked = [r for r in rows if "reference" in r]
    if not checked:
        return rows
    from ra3.execution.types import Job

    jobs = []
    for r in checked:
        tests, entry, _ = tests_from_row(r)
        jobs.append(Job(r["reference"], tests, entry_point=entry, timeout=5.0, job_id=str(r.get("task_id", r["source_row"]))))
    with SandboxPool() as pool:
        results = pool.run_many(jobs)
    failed = {id(r) for r, res in zip(checked, results) if res.status != Status.PASSED}
    for _ in failed:
        pipeline._drop(state, "reference_fails_tests")
    return [r for r in rows if id(r) not in failed]


def run(kind: str, source: str, out_dir: str, split: str = "train", text_field: str | None = None, streaming: bool = False,
        shard_size: int = 10_000, limit: int | None = None, filters: Filters | None = None, progress: bool = True) -> dict:
    """Filter ``source`` into ``out_dir/<kind>-NNNNN.jsonl`` shards; resumable; returns the report."""
    if kind not in ("midtrain", "rl"):
        raise Ra3Error(f"ra3 data: kind must be 'midtrain' or 'rl', got {kind!r}")
    filters = filters or Filters()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(filters)
    state_path = out / "state.pkl"
    settings = {"kind": kind, "source": source, "split": split, "text_field": text_field, "filters": vars(filters)}
    if state_path.exists():
        saved = pickle.loads(state_path.read_bytes())
        if saved["settings"] != json.loads(json.dumps(settings, default=list)):
            raise Ra3Error(f"{out} holds a run with other settings ({saved['settings']}); use another --out")
        state, shard = saved["state"], saved["shard"]
    else:
        state, shard = pipeline.new_state(), 0
    rows: Iterator = rows_from_source(source, split, streaming)
    bar = None
    kept: list[dict] = []
    seen = 0
    for row_number, row in rows:
        if bar is None and progress:  # after the source opened: an error stays the last line printed
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"ra3 data {kind}", unit=" rows", initial=state.rows_read)
        seen += 1
        if limit is not None and seen > limit:
            break
        if seen <= state.rows_read:
            continue  # consumed before an interruption
        state.rows_read = seen
        if bar is not None:
            bar.update(1)
        if not isinstance(row, dict):
            pipeline._drop(state, "malformed")
        elif kind == "midtrain":
            text = _text_of(row, text_field)
            if text is None:
                pipeline._drop(state, "no_text")
            elif (text := pipeline.check_text(text, state)) is not None:
                kept.append(_midtrain_row(row, text, row_number))
        else:
            rl = _rl_row(row, row_number)
            if rl is None:
                pipeline._drop(state, "no_prompt_or_tests")
            elif pipeline.check_text(rl["prompt"], state, parse=False) is not None:
                kept.append(rl)
        if len(kept) >= shard_size:
            shard = _write_shard(kind, out, kept, shard, state, pipeline, settings)
            kept = []
    if kept:
        shard = _write_shard(kind, out, kept, shard, state, pipeline, settings)
    if bar is not None:
        bar.close()
    report = {"kind": kind, "source": source, "rows_read": state.rows_read, "rows_kept": state.rows_kept, "removed": dict(sorted(state.counts.items())),
        "benchmark_tasks_matched": dict(sorted(state.matched.items())), "shards": shard,
        "dedup": "exact sha1 + MinHash LSH (datasketch)" if filters.near_dup_threshold is not None else "exact sha1",
        "filters": vars(filters)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=list))
    return report


def _write_shard(kind: str, out: Path, rows: list[dict], shard: int, state: DedupState, pipeline: Pipeline, settings: dict) -> int:
    if kind == "rl":
        rows = _verify(rows, state, pipeline)
    write_jsonl(out / f"{kind}-{shard:05d}.jsonl", rows)
    state.rows_kept += len(rows)
    tmp = out / "state.pkl.tmp"
    tmp.write_bytes(pickle.dumps({"state": state, "shard": shard + 1, "settings": json.loads(json.dumps(settings, default=list))}))
    tmp.replace(out / "state.pkl")
    return shard + 1
