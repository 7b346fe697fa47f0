"""Train a byte-level BPE tokenizer on a code corpus and save it as a HF tokenizer directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"


def _texts(files: Iterable[str | os.PathLike], field: str = "text") -> Iterator[str]:
    for path in files:
        with open(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)[field]


def train_bpe_tokenizer(files: list[str | os.PathLike], out_dir: str | os.PathLike, vocab_size: int = 1024):
    """Byte-level BPE (GPT-2 pre-tokenizer, so ``"\\n" + indentation`` is one pre-token) saved with
    ``save_pretrained`` to ``out_dir``; returns the ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(files), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast
