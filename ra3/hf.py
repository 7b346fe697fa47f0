"""Loading Hugging Face models and tokenizers with one-line errors (no Lightning): the one loader every phase,
``ra3 evaluate``, the data layer and the reports use."""

from __future__ import annotations

import logging
import os
from typing import Any

from ra3.errors import Ra3Error, first_line

log = logging.getLogger("ra3")


def looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def check_exists(name_or_path: str, what: str) -> None:
    """A one-line error for a local path that is not a directory (a hub id is left to the hub)."""
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return
    if looks_like_path(name_or_path) or os.path.exists(expanded):
        raise Ra3Error(f"{what} path '{name_or_path}' is not a directory (did the phase that writes it run?)")


def load_tokenizer(name_or_path: str):
    """``AutoTokenizer.from_pretrained`` with one-line errors; a missing pad token is set to eos (and said).
    Padding side: left (generation pads on the left; training batches build their own padding)."""
    from transformers import AutoTokenizer

    check_exists(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise Ra3Error(f"cannot load tokenizer '{name_or_path}': {first_line(e)}") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
            log.warning(f"tokenizer '{name_or_path}' has no pad or eos token: added '<|pad|>' as pad token")
        else:
            tok.pad_token = tok.eos_token
            log.warning(f"tokenizer '{name_or_path}' has no pad token: using its eos token {tok.eos_token!r} as pad")
    tok.padding_side = "left"
    return tok


def load_causal_lm(name_or_path: str, what: str = "model", **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)`` with one-line errors (an adapter directory
    loads onto its base when ``peft`` is installed)."""
    from transformers import AutoModelForCausalLM

    check_exists(name_or_path, what)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise Ra3Error(f"cannot load {what} '{name_or_path}'{offline}: {first_line(e)}") from None
