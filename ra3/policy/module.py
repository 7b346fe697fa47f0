"""PolicyModule: a Hugging Face causal LM + tokenizer as a LightningModule, shared by every phase.

Loading, export (``save_pretrained`` so the next phase or a user loads it with plain transformers),
optimizer/schedule and the packed forward pass live here; the phases (M-step, E-step, RLVR) only
add their loss.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ra3.errors import Ra3Error, first_line
from ra3.hf import check_exists, load_causal_lm, load_tokenizer
from ra3.policy.attention import packed_attention_mask, packed_block_mask
from ra3.policy.peft import (BNB_LINEARS, AdaptersDisabled, hf_model, is_adapter_dir, load_quantized, lora_config,
                             save_merged, unsharded_peft_copy)
from ra3.policy.sharding import DTYPES, full_state_dict, gathered, is_sharded, shard_causal_lm


def build_config(model_config: dict[str, Any], tokenizer) -> Any:
    """A transformers config from ``{"model_type": ..., <field>: ...}``; unknown fields are an error."""
    from transformers import CONFIG_MAPPING

    cfg = dict(model_config)
    model_type = cfg.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise Ra3Error(f"model_config.model_type must be one of the transformers model types (e.g. 'llama'), got {model_type!r}")
    config_cls = CONFIG_MAPPING[model_type]
    known = set(config_cls().to_dict())
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise Ra3Error(f"model_config has keys that {config_cls.__name__} does not define: {', '.join(unknown)}")
    cfg.setdefault("vocab_size", len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg.setdefault(name, getattr(tokenizer, name))
    return config_cls(**cfg)


def make_optimizer(name: str, groups: list[dict], **kwargs) -> torch.optim.Optimizer:
    """AdamW from torch or (8-bit, optionally paged) from bitsandbytes, with a one-line error if bnb cannot."""
    if name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    try:
        import bitsandbytes as bnb

        cls = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit}[name]
        return cls(groups, **kwargs)
    except Exception as e:  # ImportError, or a bnb build without a backend for this device
        raise Ra3Error(f"optimizer {name!r} needs a working bitsandbytes ({type(e).__name__}: {first_line(e)}); "
                       "use optimizer: adamw") from None


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning rate / peak at optimizer ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine
    decay to ``min_lr_ratio`` at ``total_steps``, flat after it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PolicyModule(L.LightningModule):
    """A causal LM policy.

    Args:
        model: HF hub name or local directory of a causal LM (``from_pretrained``). Leave empty and set
            ``model_config`` to build a fresh, randomly initialised model instead.
        tokenizer: hub name or directory of the tokenizer; defaults to ``model``.
        model_config: fields of a transformers config, with ``model_type`` (e.g. ``llama``), for a model
            built from scratch; unknown fields are an error.
        attn_implementation: ``sdpa``, ``eager``, ``flex_attention`` or ``flash_attention_2``. Packed rows: sdpa and
            eager get a dense (B, 1, T, T) block-diagonal mask; flex_attention a block-sparse ``BlockMask``
            (faster for long packed rows on GPU: masked blocks are skipped).
        learning_rate: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps, then cosine decay to ``min_lr_ratio`` × peak.
        min_lr_ratio: final learning rate as a fraction of the peak.
        schedule_offset / schedule_steps: this fit is steps ``schedule_offset ..`` of one schedule ``schedule_steps``
            long (default: offset 0, this fit's own length). ``ra3 em`` sets them so that a later round's M-step
            continues the curve instead of warming up to the peak again on an already-fitted model.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        optimizer: ``adamw`` (torch), or bitsandbytes' ``adamw8bit`` / ``paged_adamw8bit`` (8-bit states).
        export_dir: where ``save_pretrained`` writes the policy (and tokenizer) when fit ends.
        init_seed: seed for the random initialisation of a model built from ``model_config``.
        fsdp_param_dtype: FSDP2 compute/all-gather dtype of the parameters (``bfloat16``, ``float16``,
            ``float32`` or null = their own dtype); only used under ``ModelParallelStrategy``/``FSDP2Strategy``.
        fsdp_reduce_dtype: FSDP2 gradient reduce-scatter dtype (null = the parameters' dtype).
        fsdp_reshard_after_forward: free each block's gathered weights after its forward (ZeRO-3);
            ``False`` keeps them until backward (ZeRO-2: faster, more memory).
        peft: LoRA adapters (needs ``peft``): the short form ``{r, alpha, dropout, target_modules}`` (defaults 16, 32,
            0.0, ``all-linear``) or a ``peft.LoraConfig`` as ``{class_path, init_args}``. Only the adapters train;
            checkpoints hold only them; with ``beta > 0`` the frozen reference is this model with its adapters
            disabled (no copy). A ``model`` directory holding an adapter (``adapter_config.json``, e.g. a previous
            phase's export with ``export_adapter``) is loaded onto its base and trained further instead.
        quantization: load the base weights through bitsandbytes: ``4bit`` (nf4; with ``peft`` this is QLoRA) or
            ``8bit``. Needs ``peft`` (quantised weights do not train).
        weights_dtype: dtype of the weights as loaded: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (the
            checkpoint's own, e.g. bf16 for most hub models). Default: ``float32`` for full fine-tuning — the optimizer
            updates these master weights, and ``bf16-mixed`` autocasts only the compute —, ``auto`` under ``peft``
            (the frozen base; adapters are kept in fp32).
        export_adapter: with ``peft``, export only the adapter (loads with transformers + peft) instead of the merged
            model (default: merged, so ``ra3 evaluate`` and the next phase read it as any model).
    """

    def __init__(
        self,
        model: str | None = None,
        tokenizer: str | None = None,
        model_config: dict[str, Any] | None = None,
        attn_implementation: str = "sdpa",
        learning_rate: float = 3e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        schedule_offset: int = 0,
        schedule_steps: int | None = None,
        gradient_checkpointing: bool = False,
        optimizer: str = "adamw",
        export_dir: str | None = None,
        init_seed: int = 0,
        fsdp_param_dtype: str | None = "bfloat16",
        fsdp_reduce_dtype: str | None = "float32",
        fsdp_reshard_after_forward: bool = True,
        peft: dict[str, Any] | None = None,
        quantization: str | None = None,
        export_adapter: bool = False,
        weights_dtype: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if model is None and model_config is None:
            raise Ra3Error("set either model (hub name or path of a causal LM) or model_config (to build one from scratch)")
        if model is not None and model_config is not None:
            raise Ra3Error("set model or model_config, not both")
        if optimizer not in ("adamw", "adamw8bit", "paged_adamw8bit"):
            raise Ra3Error(f"optimizer must be adamw, adamw8bit or paged_adamw8bit; got {optimizer!r}")
        for name, value in (("fsdp_param_dtype", fsdp_param_dtype), ("fsdp_reduce_dtype", fsdp_reduce_dtype)):
            if value is not None and value not in DTYPES:
                raise Ra3Error(f"{name} must be one of {', '.join(DTYPES)} or null, got {value!r}")
        if weights_dtype not in (None, "auto", *DTYPES):
            raise Ra3Error(f"weights_dtype must be one of auto, {', '.join(DTYPES)} or null; got {weights_dtype!r}")
        if learning_rate <= 0:
            raise Ra3Error(f"learning_rate must be > 0, got {learning_rate}")
        if quantization not in (None, "4bit", "8bit"):
            raise Ra3Error(f"quantization must be 4bit, 8bit or null; got {quantization!r}")
        adapter = is_adapter_dir(model)
        if quantization and not (peft or adapter):
            raise Ra3Error("quantization trains nothing without adapters: set peft (QLoRA) as well")
        if quantization and model is None:
            raise Ra3Error("quantization loads the base weights from model: it needs model, not model_config")
        tokenizer_path = tokenizer or model
        if tokenizer_path is None:
            raise Ra3Error("a model built from model_config needs a tokenizer path")
        self.tokenizer = load_tokenizer(tokenizer_path)
        if adapter:
            self.model = self._load_adapter(model).train()
        else:
            self.model = self._load_model(model, model_config).train()  # from_pretrained returns eval mode
            if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
                self.model.resize_token_embeddings(len(self.tokenizer))
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False
        if peft is not None and not adapter:
            self.model = self._add_adapters(self.model, lora_config(peft))
        self.strict_loading = not self.is_peft  # checkpoints of a peft policy hold only the adapters

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    def _add_adapters(self, model, config):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if self.hparams.quantization:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=self.hparams.gradient_checkpointing)
        try:
            model = get_peft_model(model, config)
        except ValueError as e:
            if "not found in the base model" not in str(e) and "target_modules" not in str(e):
                raise Ra3Error(f"cannot add LoRA adapters: {first_line(e)}") from None
            names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) or type(m).__name__ in BNB_LINEARS})
            raise Ra3Error(f"peft target_modules {config.target_modules!r} match no layer of the model; "
                           f"its linear layers are: {', '.join(names)}") from None
        if self.hparams.model and os.path.isdir(os.path.expanduser(self.hparams.model)):
            for cfg in model.peft_config.values():  # an exported adapter finds its base from anywhere
                cfg.base_model_name_or_path = str(Path(os.path.expanduser(self.hparams.model)).resolve())
        return model

    def _load_adapter(self, path: str):
        """A saved adapter on its base model (``base_model_name_or_path`` of its config), trainable."""
        from peft import PeftConfig, PeftModel

        config = PeftConfig.from_pretrained(path)
        base_path = config.base_model_name_or_path
        if not base_path:
            raise Ra3Error(f"adapter '{path}' does not name its base model (base_model_name_or_path is empty)")
        base = self._load_model(base_path, None)
        if self.hparams.quantization:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=self.hparams.gradient_checkpointing)
        return PeftModel.from_pretrained(base, path, is_trainable=True)

    def _load_model(self, model: str | None, model_config: dict | None):
        from transformers import AutoModelForCausalLM

        hp = self.hparams
        dtype = hp.get("weights_dtype") or ("auto" if hp.get("peft") or is_adapter_dir(hp.model) else "float32")
        if model_config is not None:
            config = build_config(model_config, self.tokenizer)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hp.init_seed)
                return AutoModelForCausalLM.from_config(config, attn_implementation=hp.attn_implementation,
                                                        dtype=DTYPES.get(dtype, torch.float32))
        if not hp.get("quantization"):
            return load_causal_lm(model, attn_implementation=hp.attn_implementation, dtype=DTYPES.get(dtype, dtype))
        check_exists(model, "model")
        return load_quantized(model, hp.quantization, torch.float32, hp.attn_implementation, "quantization")

    def make_reference(self, quantization: str | None = None):
        """A frozen copy of the initial policy (for a KL penalty): a deep copy, or the same weights reloaded in
        bitsandbytes ``8bit``/``4bit`` (memory: about 1/4 or 1/8 of fp32; kept whole on every rank, unsharded).
        Under ``peft``: the policy with its adapters disabled (``quantization`` is not needed then)."""
        if self.is_peft:
            if quantization is not None:
                rank_zero_info("ra3: peft policy: the reference is the base model with adapters disabled; "
                               "reference_quantization is not used")
            return AdaptersDisabled(self.model)
        if quantization is None:
            import copy

            return copy.deepcopy(self.model).eval().requires_grad_(False)
        if quantization not in ("8bit", "4bit"):
            raise Ra3Error(f"reference_quantization must be 8bit, 4bit or null; got {quantization!r}")
        if self.hparams.model is None:
            raise Ra3Error("reference_quantization loads the reference from the model path: it needs model, not model_config")
        ref = load_quantized(self.hparams.model, quantization, next(self.model.parameters()).dtype,
                              self.hparams.attn_implementation, "reference_quantization")
        return ref.eval().requires_grad_(False)

    # ---- data ------------------------------------------------------------------------------------
    data_view = "tokens"  # what this phase reads from a CodeDataModule: tokens, programs or prompts

    def setup(self, stage: str) -> None:
        """Check that the datamodule serves this phase's view (``data.connect(tokenizer=module.tokenizer,
        view=module.data_view)``, which the recipe calls before fitting — ``ra3 fit``, ``run_em`` — as LitGPT's recipes
        call ``data.connect``); one clear error instead of batches of the wrong shape."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        view = getattr(datamodule, "view", self.data_view) if hasattr(datamodule, "connect") else self.data_view
        if view != self.data_view:
            raise Ra3Error(f"{type(self).__name__} reads {self.data_view!r} but the datamodule serves {view!r}: call "
                           f"data.connect(tokenizer=module.tokenizer, view=module.data_view) before trainer.fit")

    # ---- sharding --------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """FSDP2 under ``ModelParallelStrategy``: one unit per decoder block + the root (policy and reference)."""
        mesh = self._device_mesh
        if mesh is None or is_sharded(self.model):
            return
        if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
            raise Ra3Error("ra3 shards with FSDP2 only: use strategy ra3.policy.strategies.FSDP2Strategy, or set "
                           "ModelParallelStrategy(data_parallel_size=<nodes x devices>, tensor_parallel_size=1)")
        dp = self._dp_mesh()
        hp = self.hparams
        for model in (self.model, getattr(self, "reference", None)):
            if isinstance(model, torch.nn.Module) and not getattr(hf_model(model), "is_quantized", False):  # bnb: whole
                shard_causal_lm(hf_model(model), dp, hp.fsdp_param_dtype, hp.fsdp_reduce_dtype, hp.fsdp_reshard_after_forward)

    def generation(self):
        """Context for sampling from the policy: full weights gathered once if sharded (see ``sharding.gathered``)."""
        return gathered(hf_model(self.model))

    def _dp_mesh(self):
        """The data-parallel part of the strategy's device mesh (``None`` outside ModelParallelStrategy)."""
        mesh = self._device_mesh
        if mesh is None or "data_parallel" not in (mesh.mesh_dim_names or ()):
            return mesh
        return mesh["data_parallel"]

    def _dp_world(self):
        """(process group, size) of data parallelism: the mesh's ``data_parallel`` dim, or all ranks."""
        dp = self._dp_mesh()
        if dp is not None:
            return dp.get_group(), dp.size()
        world = self.trainer.world_size if self._trainer is not None else 1
        return None, world

    def global_token_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``total / count`` with ``count`` summed over data-parallel ranks, times the world size: after the
        gradient averaging of DDP/FSDP the update equals the token mean of the global batch."""
        group, world = self._dp_world()
        if world == 1:
            return total / count.clamp(min=1)
        global_count = count.detach().to(torch.float32).clone()
        torch.distributed.all_reduce(global_count, group=group)
        return total * world / global_count.clamp(min=1)

    def kl_k3(self, ref_logp: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """k3 estimate of KL(policy || reference), ``exp(r) - r - 1`` with ``r = ref_logp - logp`` per sampled token,
        averaged over the tokens where ``mask`` (same shape; default all) of the global batch."""
        mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask
        d = ref_logp - logp
        return self.global_token_mean(((torch.exp(d) - d - 1) * mask).sum(), mask.sum().float())

    def log_samples_table(self, key: str, columns: list[str], rows, every: int) -> None:
        """A W&B table of samples every ``every`` steps (rank 0, W&B logger only); ``rows`` is a callable giving the
        rows, so nothing is computed otherwise. A failure to log warns and never stops training."""
        from lightning.pytorch.loggers import WandbLogger

        if not every or self.global_step % every or not isinstance(self.logger, WandbLogger) or not self.trainer.is_global_zero:
            return
        try:
            self.logger.log_table(key, columns=columns, data=rows(), step=self.global_step)
        except Exception as e:
            rank_zero_warn(f"could not log the W&B table {key}: {e}")

    # ---- forward ---------------------------------------------------------------------------------
    def forward_logits(self, model, input_ids: torch.Tensor, keep: torch.Tensor, attention_mask=None,
                       position_ids=None, doc_ids=None) -> torch.Tensor:
        """fp32 logits (N, V) at the N positions where ``keep`` (B, T) is True, row-major.

        One call of the root module (required under FSDP2); the LM head runs on the kept positions only.
        ``doc_ids`` (B, T) marks packed documents (see ``packed_attention_mask``).
        """
        impl = model.config._attn_implementation
        if doc_ids is not None and impl == "flex_attention":
            attention_mask = packed_block_mask(doc_ids)
        elif doc_ids is not None and impl != "flash_attention_2":  # flash: varlen from the restarting position ids
            dtype = next(model.parameters()).dtype
            if torch.is_autocast_enabled(input_ids.device.type):
                dtype = torch.get_autocast_dtype(input_ids.device.type)
            attention_mask = packed_attention_mask(doc_ids, dtype)
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False,
                    logits_to_keep=keep)
        return out.logits.float()

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = make_optimizer(hp.optimizer, groups, lr=hp.learning_rate, betas=tuple(hp.betas))
        total = hp.get("schedule_steps") or (max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1)
        offset = hp.get("schedule_offset") or 0

        def schedule(step: int) -> float:
            return lr_factor(step + offset, hp.warmup_steps, total, hp.min_lr_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def manual_update(self, loss: torch.Tensor, max_grad_norm: float) -> None:
        """One optimizer step under manual optimization (the RL phases): backward, clip, step."""
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if max_grad_norm > 0:
            self.clip_gradients(opt, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()

    # ---- export ----------------------------------------------------------------------------------
    def export(self, directory: str | os.PathLike) -> Path:
        """``save_pretrained`` of model and tokenizer, loadable with plain transformers. Call it on every rank:
        a sharded model is gathered first (a collective); rank 0 writes."""
        directory = Path(directory)
        leader = self._trainer is None or self._trainer.is_global_zero
        state = full_state_dict(self.model) if is_sharded(self.model) else None
        if leader:
            directory.mkdir(parents=True, exist_ok=True)
            if not self.is_peft:
                self.model.save_pretrained(directory, state_dict=state)
            else:
                model = self.model if state is None else unsharded_peft_copy(self.model, state)  # sharded: gathered
                with torch.no_grad():
                    if self.hparams.get("export_adapter"):
                        model.save_pretrained(directory)
                    else:
                        save_merged(model, directory)
            self.tokenizer.save_pretrained(directory)
        if self._trainer is not None:
            self._trainer.strategy.barrier("ra3-export")
        return directory

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A peft policy's checkpoint holds only what trains (the adapters): the base is re-read from ``model``."""
        if self.is_peft:
            trainable = {"model." + n for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            path = self.export(self.hparams.export_dir)
            rank_zero_info(f"ra3: exported policy to {path}")
