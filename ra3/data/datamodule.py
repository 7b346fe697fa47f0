"""CodeDataModule: one DataModule for every phase, reading code snippets from JSONL or a `datasets` source.

Rows hold ``text`` (a whole program) or ``prompt`` + ``completion``. Each program is split into line
segments and tokenized per segment (``ra3.data.segments``), so later phases can insert
``# thought`` lines between segments without re-tokenization drift.
"""

from __future__ import annotations

import bisect
import json
import random
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ra3.data.segments import KIND_IDS, program_segments, encode_segments
from ra3.errors import Ra3Error
from ra3.data.rows import row_fields
from ra3.data.sources import expand_sources, rows_from_source

View = Literal["tokens", "programs", "prompts"]
VIEWS = ("tokens", "programs", "prompts")
LossMode = Literal["all", "code_only", "completion_only"]


@dataclass
class Example:
    """One tokenized program: ``ids`` and per-token segment kinds (``KIND_IDS``; -1 = bos)."""

    ids: list[int]
    kinds: list[int]


class MalformedRows:
    """Counts malformed rows per source; reports once, with the first offending row number."""

    def __init__(self, source: str, fatal: bool):
        self.source, self.fatal, self.count, self.first = source, fatal, 0, None

    def add(self, row_number: int, reason: str) -> None:
        if self.fatal:
            raise Ra3Error(f"malformed row {row_number} in '{self.source}': {reason}")
        self.count += 1
        if self.first is None:
            self.first = (row_number, reason)

    def report(self) -> None:
        if self.count:
            rank_zero_warn(f"skipped {self.count} malformed row(s) in '{self.source}' (first: row {self.first[0]}: {self.first[1]})")


def label_mask(kinds: list[int], loss_mode: LossMode) -> list[bool]:
    """Which tokens carry loss: ``all`` but bos; ``code_only`` also drops thought tokens;
    ``completion_only`` drops the prompt."""
    if loss_mode == "all":
        return [k != -1 for k in kinds]
    if loss_mode == "code_only":
        return [k not in (-1, KIND_IDS["thought"]) for k in kinds]
    if loss_mode == "completion_only":
        return [k not in (-1, KIND_IDS["prompt"]) for k in kinds]
    raise Ra3Error(f"loss_mode must be one of all, code_only, completion_only; got {loss_mode!r}")


def pack_best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of items per row, each row's total ≤ ``capacity``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, row index)
    for i in order:
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos == len(free):
            rows.append([i])
            r, idx = capacity - lengths[i], len(rows) - 1
        else:
            r, idx = free.pop(pos)
            rows[idx].append(i)
            r -= lengths[i]
        if r > 0:
            bisect.insort(free, (r, idx))
    return rows


class TokenCollator:
    """Builds training batches from examples.

    Packed (``packing=True``): each batch item is a list of examples concatenated into one row of
    ``max_length``; returns ``input_ids``, ``labels``, ``position_ids`` (restarting per document) and
    ``doc_ids`` (B, T; -1 on padding) from which the model builds a block-diagonal causal mask.
    Padded: one example per row, right-padded to the longest; returns ``input_ids``, ``labels``,
    ``attention_mask``. Both return ``tokens`` (non-padding token count).
    """

    def __init__(self, pad_id: int, loss_mode: LossMode, max_length: int, packing: bool):
        self.pad_id, self.loss_mode, self.max_length, self.packing = pad_id, loss_mode, max_length, packing

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        groups = items if self.packing else [[ex] for ex in items]
        T = self.max_length if self.packing else max(len(ex.ids) for ex in items)
        B = len(groups)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        position_ids = torch.zeros((B, T), dtype=torch.long)
        doc_ids = torch.full((B, T), -1, dtype=torch.long)
        for b, group in enumerate(groups):
            start = 0
            for d, ex in enumerate(group):
                n = len(ex.ids)
                ids = torch.tensor(ex.ids)
                keep = torch.tensor(label_mask(ex.kinds, self.loss_mode))
                input_ids[b, start : start + n] = ids
                labels[b, start : start + n] = torch.where(keep, ids, -100)
                position_ids[b, start : start + n] = torch.arange(n)
                doc_ids[b, start : start + n] = d
                start += n
        batch = {"input_ids": input_ids, "labels": labels, "tokens": int((doc_ids >= 0).sum())}
        if self.packing:
            batch.update(position_ids=position_ids, doc_ids=doc_ids)
        else:
            batch["attention_mask"] = (doc_ids >= 0).long()
        return batch


class CodeDataModule(L.LightningDataModule):
    """Code for every phase: tokens (M-step), whole programs (E-step, bootstrap), RL prompts with tests (RLVR).

    ``setup`` reads the rows; :meth:`connect` says what to serve and with which tokenizer — the recipe calls
    ``data.connect(tokenizer=module.tokenizer, view=module.data_view)`` before fitting (``ra3 fit`` and ``run_em``
    do; with your own ``Trainer``, call it yourself). Programs are tokenised
    on first use, so the tokenizer is only needed by the ``tokens`` view.

    Args:
        train_files: JSONL files (glob patterns such as ``data/midtrain/*.jsonl`` allowed), local ``datasets``
            directories or hub dataset names for training.
        val_files: the same for validation; if empty, ``val_fraction`` of the training rows is held out.
        val_fraction: share of training rows held out for validation when ``val_files`` is empty.
        split: split name used for ``datasets`` sources.
        text_field: field holding a whole program.
        prompt_field: field holding a prompt (used with ``completion_field`` when both are present).
        completion_field: field holding the completion of ``prompt_field``.
        tokenizer_path: tokenizer name/path; by default the one handed in by :meth:`connect` (the model's).
        max_length: tokens per packed row / longest program; longer programs are truncated (and counted).
        batch_size: rows per batch.
        packing: pack several programs per row (no cross-document attention) instead of padding each.
        loss_mode: ``all`` tokens, ``code_only`` (thought comments masked) or ``completion_only`` (prompt masked).
        program_batch_size: programs (or RL prompts) per batch for modules that read whole rows (E-step, RLVR).
        rl_files: RL rows (``prompt`` + tests, see ``ra3.rlvr.rewards``) served to modules that read prompts (RLVR).
        on_malformed: ``skip`` malformed rows (reported once with the first row number) or ``error``.
        num_workers: DataLoader worker processes.
        seed: seed of the validation split and packing order.
        shuffle: reshuffle the training rows each epoch (seed + epoch); off: file order. Either way one process
            with batch size W × b reads the union of what W data-parallel processes with b each read.
    """

    def __init__(
        self,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        val_fraction: float = 0.0,
        split: str = "train",
        text_field: str = "text",
        prompt_field: str = "prompt",
        completion_field: str = "completion",
        tokenizer_path: str | None = None,
        max_length: int = 512,
        batch_size: int = 8,
        packing: bool = True,
        loss_mode: LossMode = "all",
        on_malformed: Literal["skip", "error"] = "skip",
        program_batch_size: int = 8,
        rl_files: list[str] | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        if loss_mode not in ("all", "code_only", "completion_only"):
            raise Ra3Error(f"loss_mode must be one of all, code_only, completion_only; got {loss_mode!r}")
        if on_malformed not in ("skip", "error"):
            raise Ra3Error(f"on_malformed must be 'skip' or 'error', got {on_malformed!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise Ra3Error(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.tokenizer = None
        self.view: View = "tokens"
        self.train_files = list(train_files or [])
        self.train_programs: list[dict] = []
        self.rl_rows: list[dict] = []
        self.val_programs: list[dict] = []
        self._examples: dict[str, list[Example]] = {}

    def connect(self, tokenizer: Any = None, view: View = "tokens") -> None:
        """What the phase reads: ``tokens`` (packed next-token rows), ``programs`` (whole program rows) or
        ``prompts`` (RL rows), and the tokenizer of the ``tokens`` view (``tokenizer_path`` wins over it)."""
        if view not in VIEWS:
            raise Ra3Error(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
        if self.hparams.tokenizer_path:  # loaded from the path on first use
            tokenizer = self.tokenizer
        if tokenizer is not self.tokenizer:
            self._examples = {}
        self.view, self.tokenizer = view, tokenizer

    # ---- reading ---------------------------------------------------------------------------------
    def _read_valid(self, sources: list[str], parse) -> list:
        """``parse(row)`` of every row of ``sources``; a row whose parse raises ``ValueError``/``KeyError``/
        ``TypeError`` is malformed (skipped and reported once per source, or fatal, per ``on_malformed``)."""
        out = []
        for source in expand_sources(sources):
            bad = MalformedRows(source, fatal=self.hparams.on_malformed == "error")
            for row_number, row in rows_from_source(source, self.hparams.split):
                try:
                    if isinstance(row, json.JSONDecodeError):
                        raise ValueError(f"invalid JSON ({row.msg})")
                    out.append(parse(row))
                except (ValueError, KeyError, TypeError) as e:
                    bad.add(row_number, str(e))
            bad.report()
        return out

    def read_programs(self, sources: list[str]) -> list[dict[str, str]]:
        """Programs (``{"text"}`` or ``{"prompt", "completion"}``) from ``sources``; malformed rows per ``on_malformed``."""
        hp = self.hparams
        return self._read_valid(sources, lambda row: row_fields(row, hp.text_field, hp.prompt_field, hp.completion_field))

    def encode(self, program: dict[str, Any]) -> Example:
        segments = program_segments(program.get("text"), program.get("prompt"), program.get("completion"))
        return Example(*encode_segments(self.tokenizer, segments))

    def _encode_all(self, programs: list[dict[str, str]]) -> list[Example]:
        examples = [self.encode(p) for p in programs]
        max_length = self.hparams.max_length
        too_long = sum(len(ex.ids) > max_length for ex in examples)
        if too_long:
            rank_zero_warn(f"{too_long} of {len(examples)} programs are longer than max_length={max_length} tokens: truncated")
            examples = [Example(ex.ids[:max_length], ex.kinds[:max_length]) for ex in examples]
        return examples

    def use_train_files(self, files: list[str]) -> None:
        """Serve ``files`` from the next ``setup`` on (e.g. a bootstrapped shard for the M-step)."""
        self.train_files = list(files)
        self.train_programs, self.val_programs, self._examples = [], [], {}

    @property
    def train_examples(self) -> list[Example]:
        """The training programs, tokenised (on first use, with the connected tokenizer)."""
        return self._encoded("train", self.train_programs)

    @property
    def val_examples(self) -> list[Example]:
        return self._encoded("val", self.val_programs)

    def _encoded(self, name: str, programs: list[dict]) -> list[Example]:
        if name not in self._examples:
            if self.hparams.tokenizer_path and self.tokenizer is None:
                from ra3.hf import load_tokenizer

                self.tokenizer = load_tokenizer(self.hparams.tokenizer_path)
            if self.tokenizer is None:
                raise Ra3Error("CodeDataModule needs a tokenizer: set data.tokenizer_path, or hand one in with "
                               "data.connect(tokenizer=module.tokenizer, view=module.data_view) before trainer.fit (the ra3 commands do)")
            self._examples[name] = self._encode_all(programs)
        return self._examples[name]

    def read_rl_rows(self, sources: list[str]) -> list[dict]:
        """RL rows (a ``prompt`` and tests in a shape ``ra3.data.rows.tests_from_row`` accepts)."""
        from ra3.data.rows import tests_from_row

        field = self.hparams.prompt_field

        def parse(row):
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise ValueError(f"needs a string '{field}'")
            tests_from_row(row)
            return {**row, "prompt": row[field]}

        rows = self._read_valid(sources, parse)
        if not rows:
            raise Ra3Error(f"no usable RL rows in {', '.join(sources)}")
        return rows

    def setup(self, stage: str | None = None) -> None:
        """Read the rows (``rl_files`` and/or ``train_files``/``val_files``) once; malformed rows per ``on_malformed``."""
        hp = self.hparams
        if not (self.train_files or hp.val_files or hp.rl_files):
            raise Ra3Error("CodeDataModule needs train_files (JSONL files, a datasets directory or a hub dataset name), "
                           "or rl_files for RLVR")
        if hp.rl_files and not self.rl_rows:
            self.rl_rows = self.read_rl_rows(list(hp.rl_files))
        if not (self.train_files or hp.val_files) or self.train_programs or self.val_programs:
            return
        train = self.read_programs(self.train_files)
        if self.train_files and not train:
            raise Ra3Error(f"no usable rows in {', '.join(self.train_files)}: the dataset is empty")
        if hp.val_files:
            val = self.read_programs(list(hp.val_files))
        else:
            rng = random.Random(hp.seed)
            order = list(range(len(train)))
            rng.shuffle(order)
            n_val = int(len(train) * hp.val_fraction)
            val = [train[i] for i in order[:n_val]]
            train = [train[i] for i in sorted(order[n_val:])]
        self.train_programs, self.val_programs, self._examples = train, val, {}

    def _require(self) -> str:
        """The connected view, checked against what was configured."""
        if self.view == "prompts" and not self.hparams.rl_files:
            raise Ra3Error("RLVR needs data.rl_files (rows with a prompt and tests)")
        if self.view != "prompts" and not (self.train_files or self.hparams.val_files):
            raise Ra3Error(f"the {self.view} view needs data.train_files (expert programs)")
        return self.view

    # ---- loaders ---------------------------------------------------------------------------------
    def _items(self, examples: list[Example]) -> list:
        if not self.hparams.packing:
            return examples
        rows = pack_best_fit([len(ex.ids) for ex in examples], self.hparams.max_length)
        return [[examples[i] for i in row] for row in rows]

    def _sampler(self, items, shuffle: bool, batch_size: int):
        """Training order: a permutation of seed + epoch (or file order), rank r of W taking items r, r+W, ...;
        the last incomplete global batch is dropped when there is at least one full one.

        Built here rather than left to Lightning (which always shuffles distributed training and pads the
        last batch with repeated rows), so one process with batch size W × b reads exactly the union of what
        W processes with b each read. Returns (sampler, drop_last).
        """
        from torch.utils.data import DistributedSampler

        kwargs = {"num_replicas": 1, "rank": 0}
        if self.trainer is not None:
            if self.trainer.overfit_batches:  # Lightning's overfit_batches means: the same first batches, unshuffled
                shuffle = False
            if self.trainer.world_size > 1:
                kwargs = self.trainer.strategy.distributed_sampler_kwargs
        drop_last = len(items) >= batch_size * kwargs["num_replicas"]
        return DistributedSampler(items, shuffle=shuffle, seed=self.hparams.seed, drop_last=drop_last, **kwargs), drop_last

    def _loader(self, examples: list[Example], train: bool) -> DataLoader:
        hp = self.hparams
        collate = TokenCollator(self.tokenizer.pad_token_id, hp.loss_mode, hp.max_length, hp.packing)
        items = self._items(examples)
        sampler, drop_last = self._sampler(items, hp.shuffle, hp.batch_size) if train else (None, False)
        return DataLoader(items, batch_size=hp.batch_size, sampler=sampler, drop_last=drop_last, collate_fn=collate,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)

    def _program_loader(self, programs: list[dict], train: bool) -> DataLoader:
        size = self.hparams.program_batch_size
        sampler, drop_last = self._sampler(programs, self.hparams.shuffle, size) if train else (None, False)
        return DataLoader(programs, batch_size=size, sampler=sampler, drop_last=drop_last, collate_fn=list)

    def train_dataloader(self) -> DataLoader:
        view = self._require()
        if view == "prompts":
            return self._program_loader(self.rl_rows, train=True)
        if view == "programs":
            return self._program_loader(self.train_programs, train=True)
        return self._loader(self.train_examples, train=True)

    def val_dataloader(self) -> DataLoader:
        view = self._require()
        if view == "prompts":
            return []
        if view == "programs":
            return self._program_loader(self.val_programs, train=False) if self.val_programs else []
        return self._loader(self.val_examples, train=False) if self.val_examples else []

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
