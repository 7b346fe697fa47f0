"""LoRA adapters (``peft``) and bitsandbytes quantisation of the policy: configs, loading, the adapters-disabled
reference, and the merged export (no Lightning)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ra3.errors import Ra3Error, first_line, import_object


def bnb_config(quantization: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


BNB_LINEARS = ("Linear4bit", "Linear8bitLt")  # bitsandbytes' quantised linear layers, by class name


def load_quantized(path: str, quantization: str, compute_dtype: torch.dtype, attn_implementation: str, option: str):
    """``path`` loaded with its weights in bitsandbytes ``8bit``/``4bit``, with one-line errors; ``option`` names the
    setting that asked for it (``quantization`` or ``reference_quantization``)."""
    try:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config(quantization, compute_dtype),
                                                     attn_implementation=attn_implementation)
    except Exception as e:  # ImportError, or a bnb build without a backend for this device
        raise Ra3Error(f"{option} {quantization!r} needs a working bitsandbytes and a loadable model '{path}' "
                       f"({type(e).__name__}: {first_line(e)})") from None
    if quantization == "4bit":
        check_4bit_shapes(model, option)
    return model


def check_4bit_shapes(model, option: str) -> None:
    """One-line error for a layer bitsandbytes cannot run in 4-bit: its CPU kernel (bnb >= 0.50) packs weights in
    blocks of ``blocksize`` (64) input features x 32 output features and fails with a reshape error otherwise.
    Real models' layers are multiples of 64; tiny test models often are not."""
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            continue
        block = state.blocksize
        if module.in_features % block or module.out_features % 32:
            raise Ra3Error(f"{option} '4bit': layer {name} ({module.in_features} -> {module.out_features} "
                           f"features) cannot be 4-bit quantised by bitsandbytes: in_features must be a multiple of "
                           f"{block} and out_features of 32; use {option} '8bit' or null")


LORA_SHORT = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules"}


def lora_config(spec: dict[str, Any]):
    """A ``peft.LoraConfig`` from the short form ``{r, alpha, dropout, target_modules}`` (defaults 16, 32, 0.0,
    ``all-linear``; any other ``LoraConfig`` field may be added) or from ``{class_path, init_args}``."""
    try:
        import peft
    except ImportError:
        raise Ra3Error("peft (LoRA) needs the peft package: pip install peft") from None
    spec = dict(spec)
    if "class_path" in spec:
        path = spec["class_path"] if "." in spec["class_path"] else f"peft.{spec['class_path']}"
        cls, kwargs = import_object(path, "peft config class"), dict(spec.get("init_args") or {})
    else:
        cls = peft.LoraConfig
        kwargs = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
        kwargs.update({LORA_SHORT.get(k, k): v for k, v in spec.items()})
    kwargs.setdefault("task_type", "CAUSAL_LM")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise Ra3Error(f"bad peft config: {first_line(e)}") from None


def is_adapter_dir(path: str | None) -> bool:
    return bool(path) and (Path(os.path.expanduser(path)) / "adapter_config.json").is_file()


def hf_model(model):
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class AdaptersDisabled:
    """The policy with its LoRA adapters switched off: the frozen initial model for a KL penalty at no extra weights
    (as TRL does). Not an ``nn.Module``, so it is neither registered, saved nor sharded a second time."""

    def __init__(self, model):
        self.model = model

    @property
    def config(self):
        return self.model.config

    def parameters(self):
        return self.model.parameters()

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights of a peft model's base with every active LoRA delta added — quantised base layers dequantised
    first, so the result computes what was trained — under the base model's own parameter names."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight

    base = hf_model(model)
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            weight = dequantize_module_weight(layer).detach().clone()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight += module.get_delta_weight(adapter).to(weight.dtype)
            out[f"{name}.weight"] = weight
            if getattr(layer, "bias", None) is not None:
                out[f"{name}.bias"] = layer.bias.detach()
            done.add(name)
        elif type(module).__name__ in BNB_LINEARS and not any(name.startswith(d + ".") for d in done):
            out[f"{name}.weight"] = dequantize_module_weight(module).detach().clone()
            if module.bias is not None:
                out[f"{name}.bias"] = module.bias.detach()
            done.add(name)
    saved = set(base.state_dict())  # persistent entries only (not e.g. rotary inv_freq)
    for key, value in [*base.named_parameters(), *base.named_buffers()]:
        owner = key.rsplit(".", 1)[0]
        if key not in saved or "lora_" in key or any(owner == d or owner.startswith(d + ".") for d in done):
            continue
        out[key] = value.detach()
    return out


def unsharded_peft_copy(model, state: dict[str, torch.Tensor]):
    """A CPU copy of a (FSDP2-sharded) peft model holding ``state``, its full state dict."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = get_peft_model(AutoModelForCausalLM.from_config(hf_model(model).config), model.peft_config["default"])
    skeleton.load_state_dict(state, strict=False, assign=True)
    hf_model(skeleton).tie_weights()
    return skeleton


def save_merged(model, directory: Path) -> None:
    """``save_pretrained`` of the merged weights (see ``merged_state_dict``) as a plain transformers model."""
    import copy

    from transformers import AutoModelForCausalLM

    state = merged_state_dict(model)
    config = copy.deepcopy(hf_model(model).config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    tied = plain.get_output_embeddings() is not None and getattr(config, "tie_word_embeddings", False)
    if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
        raise RuntimeError(f"merged LoRA weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        plain.tie_weights()
    plain.save_pretrained(directory)
