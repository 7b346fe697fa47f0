"""Optional vLLM rollout engine (``pip install 'ra3[vllm]'``, GPU only), behind the same ``RolloutEngine`` protocol
as ``HFEngine``: ``generate(prompts, n, config) -> list[list[Completion]]``, plus ``sync_weights(state_dict)``
after each policy update (colocated: the vLLM engine lives in the training process, on the same GPU).

Status: written against vLLM's offline ``LLM`` API; **not yet run on a GPU in this project** (no GPU machine was
lent when it was written) — treat it as experimental until a GPU run is recorded in the README.
A server-mode or SGLang engine plugs in by implementing the same two methods.
"""

from __future__ import annotations

from typing import Any

from ra3.errors import Ra3Error
from ra3.rollout.sampling import Completion, SamplingConfig, cut_at_stop, encode_prompt


class VLLMEngine:
    """Sampling with vLLM. ``model_path``: a ``save_pretrained`` directory or hub name of the initial policy.

    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization: 0.3`` to leave room for training).
    """

    def __init__(self, model_path: str, tokenizer, engine_kwargs: dict[str, Any] | None = None):
        try:
            import vllm
        except ImportError:
            raise Ra3Error("rollout_engine 'vllm' needs vLLM on a GPU machine: pip install 'ra3[vllm]' "
                           "(or use rollout_engine: hf)") from None
        import torch

        if not torch.cuda.is_available():
            raise Ra3Error("rollout_engine 'vllm' needs a CUDA GPU; use rollout_engine: hf on CPU")
        self.vllm, self.tokenizer = vllm, tokenizer
        kwargs = {"gpu_memory_utilization": 0.3, "enable_prefix_caching": True, **(engine_kwargs or {})}
        self.llm = vllm.LLM(model=str(model_path), **kwargs)

    def generate(self, prompts: list[str], n: int, config: SamplingConfig,
                 seeds: list[int] | None = None, on_done=None) -> list[list[Completion]]:
        def params(seed):
            return self.vllm.SamplingParams(n=n, temperature=config.temperature, top_p=config.top_p,
                                            max_tokens=config.max_new_tokens, seed=seed)

        inputs = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts]
        sampling = [params(s) for s in seeds] if seeds is not None else params(None)
        outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        result = []
        for out in outputs:
            group = []
            for o in out.outputs:
                ids = list(o.token_ids)
                ended_by_eos = bool(ids) and ids[-1] == eos
                if ended_by_eos:
                    ids = ids[:-1]
                text, stopped = cut_at_stop(self.tokenizer.decode(ids), config.stop)
                if stopped:
                    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                group.append(Completion(text, ids, ended_by_eos or stopped, ended_by_eos))
                if on_done is not None:
                    on_done(len(result), len(group) - 1, group[-1])
            result.append(group)
        return result

    def sync_weights(self, state_dict: dict) -> None:
        """Load the trained policy's (full, unsharded) weights into the vLLM model, in place."""
        model = None
        executor = self.llm.llm_engine.model_executor
        for path in ("driver_worker.model_runner.model", "driver_worker.worker.model_runner.model"):
            obj = executor
            try:
                for attr in path.split("."):
                    obj = getattr(obj, attr)
                model = obj
                break
            except AttributeError:
                continue
        if model is None:
            raise Ra3Error(f"cannot reach the model inside vLLM {self.vllm.__version__} for weight sync "
                           "(set VLLM_ENABLE_V1_MULTIPROCESSING=0 so the engine runs in-process)")
        model.load_weights(state_dict.items())
        self.llm.reset_prefix_cache()
