"""``ra3 consolidate CHECKPOINT OUT``: a Lightning checkpoint — a sharded FSDP2 folder (one file per rank) or a
single ``.ckpt`` file — to a Hugging Face ``save_pretrained`` directory (model + tokenizer).

The model is rebuilt from the checkpoint's hyper-parameters (its ``model`` path or ``model_config`` and its
tokenizer must still be readable), then the trained weights are loaded strictly and exported.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from ra3.errors import Ra3Error


def load_checkpoint(path: str | Path) -> dict:
    """The full checkpoint dict, from a sharded folder (gathered on CPU) or a single file."""
    path = Path(path)
    if path.is_dir():
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        if not (path / ".metadata").exists():
            raise Ra3Error(f"'{path}' is a folder but not a sharded checkpoint (no .metadata file)")
        return _load_distributed_checkpoint(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    raise Ra3Error(f"checkpoint '{path}' does not exist")


def policy_from_checkpoint(path: str | Path):
    """A ``PolicyModule`` (unsharded, CPU) holding the checkpoint's trained weights."""
    from ra3.policy.module import PolicyModule

    ckpt = load_checkpoint(path)
    hp = ckpt.get("hyper_parameters")
    if not hp or "state_dict" not in ckpt:
        raise Ra3Error(f"'{path}' is not a checkpoint of a ra3 PolicyModule (no hyper_parameters/state_dict)")
    if hp.get("model") is None and hp.get("model_config") is None and hp.get("init_from"):
        hp = {**hp, "model": hp["init_from"]}  # an RLVRModule names its start model init_from
    allowed = set(inspect.signature(PolicyModule.__init__).parameters) - {"self"}
    module = PolicyModule(**{k: v for k, v in hp.items() if k in allowed and k != "export_dir"})
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = module.model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied(module.model, k)]
    if module.is_peft:  # its checkpoints hold only the adapters; the base comes from its model path
        trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
        missing = [k for k in missing if k in trainable]
    if missing or unexpected:
        raise Ra3Error(f"checkpoint '{path}' does not match its model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return module


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and model.get_output_embeddings().weight is model.get_input_embeddings().weight


def consolidate(checkpoint: str | Path, out: str | Path) -> Path:
    return policy_from_checkpoint(checkpoint).export(out)


def main(args: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="ra3 consolidate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="sharded checkpoint folder (FSDP2) or .ckpt file")
    p.add_argument("out", help="output save_pretrained directory")
    a = p.parse_args(args)
    print(f"ra3 consolidate: wrote {consolidate(a.checkpoint, a.out)}")
