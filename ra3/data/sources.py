"""Reading rows from a source (no Lightning): a ``.jsonl``/``.json`` file (optionally ``.gz``), a ``.parquet`` file,
a local ``datasets`` directory, or a hub dataset name (``streaming=True`` for hub-sized sources).

Every reader yields ``(row number, row)``; a JSON line that does not parse yields its ``json.JSONDecodeError`` in
place of the row, so the caller decides whether a malformed row is fatal or counted.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ra3.errors import Ra3Error, first_line


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row or the ``json.JSONDecodeError``) for each non-blank line."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    yield lineno, e


def _iter_dataset(name: str, split: str, streaming: bool = False) -> Iterator[tuple[int, Any]]:
    import datasets

    path = Path(os.path.expanduser(name))
    try:
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(path))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        elif name.endswith(".parquet"):
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=streaming)
        else:
            ds = datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as e:  # datasets raises many types for "not found / offline"
        raise Ra3Error(f"cannot load dataset '{name}' (split {split!r}): {first_line(e)}") from None
    for i, row in enumerate(ds, 1):
        yield i, row


def expand_sources(sources: list[str]) -> list[str]:
    """``sources`` with every glob pattern (``data/midtrain/*.jsonl``, the shards ``ra3 data`` writes) replaced by its
    matches in sorted order; a pattern that matches nothing is an error naming it."""
    import glob

    out = []
    for source in sources:
        if glob.has_magic(source):
            matches = sorted(glob.glob(os.path.expanduser(source)))
            if not matches:
                raise Ra3Error(f"no file matches '{source}'")
            out += matches
        else:
            out.append(source)
    return out


def rows_from_source(source: str, split: str = "train", streaming: bool = False) -> Iterator[tuple[int, Any]]:
    """Rows of a ``.jsonl``/``.json`` (``.gz``) or ``.parquet`` file, a local ``datasets`` directory or a hub dataset
    name, with row numbers; ``streaming`` reads a hub dataset without downloading it whole."""
    path = Path(os.path.expanduser(source))
    if source.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        if not path.is_file():
            raise Ra3Error(f"data file '{source}' does not exist")
        return iter_jsonl(path)
    if source.endswith(".parquet") and not path.is_file():
        raise Ra3Error(f"data file '{source}' does not exist")
    return _iter_dataset(source, split, streaming)
