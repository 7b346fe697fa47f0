"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for Hugging Face causal LMs (no Lightning import).

Layout: one FSDP unit per decoder block plus the root unit (the whole ``*ForCausalLM``: embeddings, final
norm, LM head — tied or not, they live in one unit). Every forward must therefore go through the root
module (``model(...)``, e.g. with ``logits_to_keep``), never through ``model.get_decoder()`` alone.

Generation under sharding: :func:`gathered` all-gathers every unit *once* and keeps the full weights until
the block ends, so a rollout of T tokens costs one all-gather per unit instead of T (see
``tests/policy/test_sharding.py``, which counts them).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    return bool(fsdp_modules(model))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a HF causal LM (``model.model.layers`` for Llama/Qwen/Mistral/...)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__}: cannot find the decoder blocks (expected get_decoder().layers)")
    return list(layers)


def shard_causal_lm(model: nn.Module, mesh, param_dtype: str | None = "bfloat16", reduce_dtype: str | None = "float32",
                    reshard_after_forward: bool = True) -> nn.Module:
    """Apply ``fully_shard`` per decoder block and to the root, in place, on the 1-D ``mesh``.

    ``param_dtype``/``reduce_dtype``: the ``MixedPrecisionPolicy`` (``None``: the parameters' own dtype).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    for name, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
        if value is not None and value not in DTYPES:
            raise ValueError(f"fsdp {name} must be one of {', '.join(DTYPES)} or null, got {value!r}")
    policy = MixedPrecisionPolicy(param_dtype=DTYPES.get(param_dtype), reduce_dtype=DTYPES.get(reduce_dtype))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _param_groups(state) -> list:
    """An FSDP state's parameter groups: a list in newer torch (``_fsdp_param_groups``, 2.13), one group or ``None``
    in older (``_fsdp_param_group``, 2.11: ``gathered`` failed there on a GPU before this)."""
    if hasattr(state, "_fsdp_param_groups"):
        return list(state._fsdp_param_groups)
    group = getattr(state, "_fsdp_param_group", None)
    return [group] if group is not None else []


@contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Full (unsharded) weights for the duration of the block: one all-gather per FSDP unit, not per forward.

    A no-op for an unsharded model. Meant for generation under ``torch.no_grad``; memory: a full copy of the
    weights per rank while it lasts.
    """
    units = fsdp_modules(model)
    if not units:
        yield model
        return
    if units[0] is model:
        model._get_fsdp_state()._lazy_init()  # settle which unit is root before saving reshard settings
    saved = [[g.post_forward_mesh_info for g in _param_groups(u._get_fsdp_state())] for u in units]
    auto = [u._get_fsdp_state()._auto_reshard_after_forward for u in units]
    for u in units:
        u.unshard()
        u.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for u, infos, a in zip(units, saved, auto):
            state = u._get_fsdp_state()
            for g, info in zip(_param_groups(state), infos):
                g.post_forward_mesh_info = info
            state._auto_reshard_after_forward = a
            u.reshard()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict on CPU (a collective: call it on every rank)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
