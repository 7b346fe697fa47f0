"""RLVRModule: GRPO-family RL with verifiable (unit-test) rewards, from a base, NTP or RA3 checkpoint.

One training step, top to bottom:

1. Sample ``num_generations`` (G) completions for each of the batch's prompts (``ra3.rollout.sampling``,
   the same sampler as evaluation); reward jobs go to the sandbox pool as soon as each generation chunk is
   done, so execution overlaps the next chunk's generation.
2. Rewards ``(prompts, completions, **columns) -> list[float | None]`` (``ra3.rlvr.rewards``); ``None`` (e.g. a
   sandbox error) drops the sample from the loss and from its group's baseline. Optional DAPO pieces: a soft
   overlong penalty (``overlong_buffer``) and dynamic sampling (``dynamic_sampling``: groups whose rewards are all
   equal carry no signal, so they are replaced by groups of freshly drawn prompts, up to ``max_sampling_rounds``).
3. Advantages ``A = R - mean_group(R)``, divided by the group std (``scale_rewards: group``), the batch std
   (``batch``) or nothing (``none``); zero for constant-reward groups.
4. Clipped surrogate per completion token ``l = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``, with
   ``r = pi / pi_old``, aggregated by ``loss_type``:
   ``grpo``: mean over each completion's tokens, then over completions;
   ``dr_grpo``: sum over all tokens / (N × max_new_tokens) (no length or std normalisation);
   ``dapo``: sum over all tokens / number of tokens (token-level mean), asymmetric clip.
   Plus ``beta`` × k3 KL to a frozen reference when ``beta > 0`` (otherwise no reference exists).
   Log-probs are those of ``log_softmax(logits / temperature)``: the distribution the sampler drew from
   (``rlvr/sampler_logp_gap`` logs the mean |difference| to the sampler's own, ~0 unless ``top_p`` < 1 or bf16).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch

from ra3.errors import Ra3Error, import_object
from ra3.policy.module import PolicyModule
from ra3.policy.rl import LOSS_TYPES, distinct_rows, policy_gradient_loss, rl_advantages
from ra3.rlvr.rewards import FormatReward, UnitTestReward, WeightedSum
from ra3.rollout import ENGINES, make_engine
from ra3.rollout.ragged_cache import CompileError
from ra3.rollout.sampling import SamplingConfig, encode_prompt, sample_seed

log = logging.getLogger(__name__)


def overlong_reward(reward: float | None, length: int, max_new_tokens: int, buffer: int, penalty: float) -> float | None:
    """DAPO's soft overlong punishment: ``reward - penalty * (length - (max_new_tokens - buffer)) / buffer`` past
    ``max_new_tokens - buffer`` tokens (unchanged with ``buffer`` 0 or no reward)."""
    if reward is None or buffer <= 0:
        return reward
    return reward - penalty * min(1.0, max(0, length - (max_new_tokens - buffer)) / buffer)


class RLVRModule(PolicyModule):
    """GRPO-family policy optimisation on prompts with unit tests. Batches are lists of RL rows.

    Args:
        init_from: the checkpoint to start from (base, NTP or RA3 ``save_pretrained`` dir, or a hub name);
            the same as ``model``.
        num_generations: completions per prompt (G >= 2).
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        max_new_tokens: completion length cap.
        stop: strings that end a completion (besides eos).
        loss_type: ``grpo``, ``dr_grpo`` or ``dapo``.
        epsilon: clip range (lower side, and upper side unless ``epsilon_high`` is set).
        epsilon_high: upper clip range (DAPO's clip-higher; default 0.28 for ``dapo``, else ``epsilon``).
        scale_rewards: divide advantages by the ``group`` or ``batch`` reward std, or ``none``
            (default: ``none`` for ``dr_grpo``, else ``group``).
        beta: weight of the k3 KL to a frozen copy of the initial policy (0: no copy is made).
        ppo_epochs: policy updates per generated batch.
        mask_truncated: leave completions that hit ``max_new_tokens`` out of the loss (DAPO's overlong filtering).
        overlong_buffer: DAPO's soft overlong punishment: a completion longer than ``max_new_tokens -
            overlong_buffer`` tokens loses ``overlong_penalty`` × (excess / buffer) of reward (0 = off). Keep the
            evaluation's cap at ``max_new_tokens`` or above, or RLVR teaches a shorter style than evaluation allows.
        overlong_penalty: the reward lost at the cap with ``overlong_buffer`` > 0.
        dynamic_sampling: DAPO's dynamic sampling: drop the groups whose rewards are all equal (zero advantage: no
            gradient) and sample groups of further prompts drawn from the RL rows until the batch has
            ``program_batch_size`` informative groups or ``max_sampling_rounds`` generation rounds ran (logged:
            ``rlvr/prompts_sampled``, ``rlvr/sampling_rounds``, ``rlvr/kept_groups``).
        max_sampling_rounds: generation rounds per step at most with ``dynamic_sampling``.
        partial_credit: unit-test reward = fraction of tests passed instead of all-or-nothing.
        format_weight: weight of the format reward (valid Python) added to the unit-test reward (with the default
            ``reward_funcs`` only).
        reward_funcs: the reward as in TRL: functions ``(prompts, completions, **columns) -> list[float | None]``
            summed with ``reward_weights`` (default 1 each). Each is ``unit_tests`` (this module's sandboxed
            unit-test reward; ``partial_credit`` applies), ``format``, a dotted path to a function or to a class
            made without arguments (``my_pkg.rewards.length``), or ``{class_path, init_args}``. Default:
            ``[unit_tests]`` (plus ``format`` at ``format_weight``).
        reward_weights: one weight per ``reward_funcs`` entry.
        generation_batch_size: prompts × G generated per chunk (reward jobs start after each chunk).
        max_grad_norm: gradient clipping norm (0 = off).
        sandbox_workers: parallel sandbox processes (default: CPU count).
        table_every_n_steps: W&B table of prompts/completions/rewards this often (0 = never).
        reference_quantization: load the frozen reference (``beta > 0``) in bitsandbytes ``8bit`` or ``4bit``.
        rollout_engine: ``auto`` (``ragged_compiled`` on a CPU when the run decodes at least
            ``compile_min_decode_steps``, else ``ragged``; a compile that fails falls back to ``ragged`` with a warning), ``ragged`` (continuous batching over a ragged KV cache, ``ra3.rollout.ragged_engine``),
            ``ragged_compiled`` (the same, its steps under ``torch.compile``: faster once compiled in the
            first steps; log-probs within ~1e-5 of ``ragged``'s), ``hf`` (``model.generate`` on padded batches; the
            same completions as ``ragged``) or ``vllm`` (GPU,
            ``pip install 'ra3[vllm]'``; weights synced into vLLM after every update; experimental, never run).
        compile_min_decode_steps: the decoding steps of a run (``trainer.max_steps`` × ``max_new_tokens``) from which
            ``auto`` compiles: the compiled sampler saves a near-fixed time per decoding step, and on 2 CPU cores its
            compile (~20 s the first time on a machine, ~5 s from inductor's cache) is earned back after ~15,000
            (~3,000 warm): 240 steps at 64 tokens, 70 at 200 (docs/benchmarks.md). Not measured on a GPU, where
            ``auto`` stays eager.
        vllm_kwargs: arguments of ``vllm.LLM`` (e.g. ``gpu_memory_utilization``).
    """

    data_view = "prompts"

    def __init__(self, *args, init_from: str | None = None, num_generations: int = 4, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 128, stop: list[str] | None = None, loss_type: str = "grpo",
                 epsilon: float = 0.2, epsilon_high: float | None = None, scale_rewards: str | None = None,
                 beta: float = 0.0, ppo_epochs: int = 1, mask_truncated: bool = False, overlong_buffer: int = 0,
                 overlong_penalty: float = 1.0, dynamic_sampling: bool = False, max_sampling_rounds: int = 3,
                 partial_credit: bool = False,
                 format_weight: float = 0.0, reward_funcs: list[str | dict[str, Any]] | None = None,
                 reward_weights: list[float] | None = None, generation_batch_size: int = 64, max_grad_norm: float = 1.0,
                 sandbox_workers: int | None = None, table_every_n_steps: int = 50,
                 reference_quantization: str | None = None, rollout_engine: str = "auto", compile_min_decode_steps: int = 15_000,
                 vllm_kwargs: dict[str, Any] | None = None, **kwargs):
        if rollout_engine not in ("auto", *ENGINES, "vllm"):
            raise Ra3Error(f"rollout_engine must be auto, {', '.join(ENGINES)} or vllm, got {rollout_engine!r}")
        if num_generations < 2:
            raise Ra3Error(f"num_generations must be >= 2 for group-relative advantages, got {num_generations}")
        if not 0 <= overlong_buffer < max_new_tokens:
            raise Ra3Error(f"overlong_buffer must be in [0, max_new_tokens={max_new_tokens}), got {overlong_buffer}")
        if max_sampling_rounds < 1:
            raise Ra3Error(f"max_sampling_rounds must be >= 1, got {max_sampling_rounds}")
        if loss_type not in LOSS_TYPES:
            raise Ra3Error(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
        if init_from is not None:
            if kwargs.get("model") not in (None, init_from):
                raise Ra3Error("set init_from or model, not both")
            kwargs["model"] = init_from
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.scale_rewards = scale_rewards or ("none" if loss_type == "dr_grpo" else "group")
        self.eps_high = epsilon_high if epsilon_high is not None else (0.28 if loss_type == "dapo" else epsilon)
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                       stop=list(stop if stop is not None else ["\ndef ", "\nclass ", "\nprint(", "\nassert", "\nif __name__"]),
                                       batch_size=generation_batch_size, logprobs=True)
        self.reference = self.make_reference(reference_quantization) if beta > 0 else None
        self.unit_tests: UnitTestReward | None = None  # built with the sandbox pool when fit starts
        self.reward_parts = self._resolve_rewards(reward_funcs, reward_weights, format_weight)
        self.extra_columns: dict[str, list] = {}  # log_extra columns of this step's reward calls, one value per sample
        self.reward_metrics: dict[str, list[float]] = {}  # log_metric values of this step's reward calls
        self._pool = None
        self._compile_failed = False  # auto's compiled sampler failed once: eager from then on
        self._vllm, self._vllm_step = None, 0  # vLLM starts from the initial weights: no sync before step 0

    def _resolve_rewards(self, funcs, weights, format_weight: float) -> list[tuple[Any, float]]:
        """(callable, weight) pairs from ``reward_funcs``/``reward_weights``, with one-line errors; the built-in
        unit-test reward stays the name ``unit_tests`` until ``reward_function`` (it needs the fit's sandbox pool)."""
        if funcs is None:
            return [("unit_tests", 1.0)] + ([(FormatReward(), format_weight)] if format_weight else [])
        if format_weight:
            raise Ra3Error("format_weight applies to the default reward only; with reward_funcs list 'format' and weigh "
                           "it in reward_weights")
        weights = [1.0] * len(funcs) if weights is None else list(weights)
        if len(weights) != len(funcs) or not funcs:
            raise Ra3Error(f"reward_weights needs one weight per reward_funcs entry: {len(funcs)} functions, "
                           f"{len(weights)} weights")
        out = []
        for spec in funcs:
            if spec == "unit_tests":
                out.append(spec)
                continue
            if spec == "format":
                out.append(FormatReward())
                continue
            path, kwargs = (spec["class_path"], dict(spec.get("init_args") or {})) if isinstance(spec, dict) else (spec, None)
            obj = import_object(path, "reward function")
            fn = obj(**(kwargs or {})) if isinstance(obj, type) else obj
            if kwargs and not isinstance(obj, type):
                raise Ra3Error(f"reward function {path!r} is not a class: it takes no init_args")
            if not callable(fn):
                raise Ra3Error(f"reward function {path!r} is not callable")
            out.append(fn)
        return list(zip(out, map(float, weights)))

    def reward_function(self):
        """The reward (protocol of ``ra3.rlvr.rewards``) from ``reward_funcs``/``reward_weights``; override to use your own."""
        if self.unit_tests is None:  # outside fit: the reward makes its own pool when first called
            self.unit_tests = UnitTestReward(partial=self.hparams.partial_credit)
        parts = [(self.unit_tests if f == "unit_tests" else f, w) for f, w in self.reward_parts]
        if len(parts) == 1 and parts[0][1] == 1.0:
            return parts[0][0]
        return WeightedSum(parts)

    def on_fit_start(self) -> None:
        from ra3.execution import SandboxPool

        self._pool = SandboxPool(workers=self.hparams.sandbox_workers)
        self.unit_tests = UnitTestReward(self._pool, partial=self.hparams.partial_credit)
        if self.hparams.rollout_engine == "vllm" and self._vllm is None:
            from ra3.rollout.vllm_engine import VLLMEngine

            self._vllm = VLLMEngine(self.hparams.model, self.tokenizer, self.hparams.vllm_kwargs)

    def engine_name(self) -> str:
        """The sampler ``rollout_engine`` names; ``auto`` resolved by the run's length and device."""
        name = self.hparams.rollout_engine
        if name != "auto":
            return name
        steps = self._trainer.max_steps if self._trainer is not None else -1
        decoding = steps * self.hparams.max_new_tokens if steps > 0 else 0
        compile = decoding >= self.hparams.compile_min_decode_steps and self.device.type == "cpu" and not self._compile_failed
        return "ragged_compiled" if compile else "ragged"

    def rollout_engine(self):
        """The sampler for this step: ``RaggedEngine``/``HFEngine`` on the live policy, or vLLM with the latest
        weights synced."""
        if self._vllm is None:
            return make_engine(self.engine_name(), self.model, self.tokenizer)
        if self._vllm_step != self.global_step:
            from ra3.policy.sharding import full_state_dict

            self._vllm.sync_weights(full_state_dict(self.model))
            self._vllm_step = self.global_step
        return self._vllm

    def on_fit_end(self) -> None:
        if self._pool is not None:
            self._pool.close()
        super().on_fit_end()

    # ---- one step --------------------------------------------------------------------------------
    def generate_and_score(self, rows: list[dict], round: int = 0) -> tuple[list, list[float | None]]:
        """G completions per row and their rewards (with the overlong penalty); reward jobs for a chunk run while the
        next is generated. ``round``: the step's generation round (dynamic sampling), part of the sampling seed."""
        G = self.hparams.num_generations
        engine = self.rollout_engine()
        per_chunk = max(1, self.sampling.batch_size // G)
        completions, futures = [], []
        reward_fn = self.reward_function()
        from concurrent.futures import ThreadPoolExecutor

        def score(prompts, texts, **columns):
            extra, metrics = {}, {}
            values = reward_fn(prompts, texts, **columns, log_extra=lambda column, v: extra.setdefault(column, []).extend(v),
                               log_metric=lambda name, v: metrics.setdefault(name, []).append(float(v)))
            return values, extra, metrics

        with ThreadPoolExecutor(1) as scorer:
            for i in range(0, len(rows), per_chunk):
                chunk = rows[i : i + per_chunk]
                seeds = [sample_seed(r["prompt"], self.global_step, self.hparams.init_seed + 104_729 * round) for r in chunk]
                with self.generation():
                    try:
                        done = engine.generate([r["prompt"] for r in chunk], G, self.sampling, seeds=seeds)
                    except CompileError as e:
                        if self.hparams.rollout_engine != "auto":
                            raise
                        log.warning("%s; rollout_engine auto goes on with 'ragged'", e)
                        self._compile_failed = True
                        engine = self.rollout_engine()
                        done = engine.generate([r["prompt"] for r in chunk], G, self.sampling, seeds=seeds)
                flat = [c for cs in done for c in cs]
                completions += flat
                prompts = [r["prompt"] for r in chunk for _ in range(G)]
                columns = {k: [r.get(k) for r in chunk for _ in range(G)] for k in chunk[0] if k != "prompt"}
                futures.append(scorer.submit(score, prompts, [c.text for c in flat], **columns))
            results = [f.result() for f in futures]
        names = {c for _, extra, _ in results for c in extra}
        for values, extra, _ in results:
            for column, logged in extra.items():
                if len(logged) != len(values):
                    raise Ra3Error(f"reward log_extra({column!r}) got {len(logged)} values for {len(values)} completions")
        self.extra_columns = {c: [x for values, extra, _ in results for x in extra.get(c, [""] * len(values))] for c in names}
        self.reward_metrics = {n: [v for _, _, m in results for v in m.get(n, [])] for n in {n for _, _, m in results for n in m}}
        rewards = [x for values, _, _ in results for x in values]
        return completions, [overlong_reward(r, len(c.token_ids), self.hparams.max_new_tokens, self.hparams.overlong_buffer,
                                             self.hparams.overlong_penalty) for r, c in zip(rewards, completions)]

    def extra_prompts(self, n: int, exclude: list[dict], round: int) -> list[dict]:
        """``n`` RL rows for dynamic sampling, drawn without replacement from the data's RL rows other than
        ``exclude`` (seeded by the run seed, step, round and rank)."""
        import random

        source = getattr(self.trainer.datamodule, "rl_rows", None) if self._trainer is not None else None
        if not source:
            raise Ra3Error("dynamic_sampling draws further prompts from the DataModule's rl_rows: none found")
        seen = {r["prompt"] for r in exclude}
        pool = [r for r in source if r["prompt"] not in seen]
        rank = self.trainer.global_rank if self._trainer is not None else 0
        rng = random.Random(hash((self.hparams.init_seed, self.global_step, round, rank)))
        return rng.sample(pool, min(n, len(pool)))

    def sample_batch(self, batch: list[dict]) -> tuple[list[dict], list, list[float | None], dict[str, float]]:
        """The step's rows, completions (G per row, in row order) and rewards; with ``dynamic_sampling`` only the
        groups with reward variance, topped up with fresh prompts' groups (see the class docstring). If no group
        has variance, the first round's (zero-advantage) groups are returned."""
        hp, G = self.hparams, self.hparams.num_generations
        first = completions, rewards = self.generate_and_score(batch)
        stats = {"sampling_rounds": 1.0, "prompts_sampled": float(len(batch))}
        if not hp.dynamic_sampling:
            return batch, completions, rewards, stats
        first_columns, metrics = self.extra_columns, dict(self.reward_metrics)
        rows, kept_c, kept_r, columns, drawn, new_rows = [], [], [], {}, list(batch), batch
        while True:
            for i, row in enumerate(new_rows):
                group = [r for r in rewards[i * G:(i + 1) * G] if r is not None]
                if len(rows) < len(batch) and len(group) >= 2 and max(group) - min(group) > 1e-6:
                    rows.append(row)
                    kept_c += completions[i * G:(i + 1) * G]
                    kept_r += rewards[i * G:(i + 1) * G]
                    for c, values in self.extra_columns.items():
                        columns.setdefault(c, [""] * (len(kept_r) - G)).extend(values[i * G:(i + 1) * G])
            for c in columns:  # a column one round's reward did not log
                columns[c] += [""] * (len(kept_r) - len(columns[c]))
            if len(rows) >= len(batch) or stats["sampling_rounds"] >= hp.max_sampling_rounds:
                break
            new_rows = self.extra_prompts(len(batch) - len(rows), drawn, int(stats["sampling_rounds"]))
            if not new_rows:
                break
            drawn += new_rows
            completions, rewards = self.generate_and_score(new_rows, round=int(stats["sampling_rounds"]))
            for name, values in self.reward_metrics.items():
                metrics.setdefault(name, []).extend(values)
            stats["sampling_rounds"] += 1
        stats.update(prompts_sampled=float(len(drawn)), kept_groups=float(len(rows)))
        self.reward_metrics = metrics
        if not rows:
            self.extra_columns = first_columns
            return (batch, *first, stats)
        self.extra_columns = columns
        return rows, kept_c, kept_r, stats

    def _sequences(self, rows: list[dict], completions: list) -> tuple[torch.Tensor, ...]:
        G = self.hparams.num_generations
        seqs, starts = [], []
        for i, c in enumerate(completions):
            prompt = encode_prompt(self.tokenizer, rows[i // G]["prompt"])
            ids = c.token_ids + ([self.tokenizer.eos_token_id] if c.ended_by_eos else [])
            seqs.append(prompt + ids)
            starts.append(len(prompt))
        width = max(map(len, seqs))
        input_ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        completion = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, (s, start) in enumerate(zip(seqs, starts)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention[i, : len(s)] = 1
            completion[i, start : len(s)] = True
        return input_ids.to(self.device), attention.to(self.device), completion.to(self.device)

    def token_logprobs(self, model, input_ids, attention, completion, with_entropy: bool = False):
        """Per-token log-probs (N, S-1) of ``input_ids[:, 1:]`` (fp32) under ``log_softmax(logits / temperature)`` —
        the sampler's distribution — where ``completion[:, 1:]``, else 0; optionally the entropy there. The LM head
        runs on completion positions only.

        Identical rows (a group's samples often coincide once the policy is sure) go through the model once and
        their copies index that one result, so the loss and its gradient are those of the full batch while the
        forward and backward shrink to the distinct rows (``rlvr/distinct_fraction`` logs how many)."""
        rows, inverse = distinct_rows(input_ids, attention, completion)
        if len(rows) == len(input_ids):
            return self._row_logprobs(model, input_ids, attention, completion, with_entropy)
        width = int(attention[rows].sum(1).max())  # right-padded rows: trim the columns only the copies needed
        logp, entropy = self._row_logprobs(model, input_ids[rows, :width], attention[rows, :width],
                                           completion[rows, :width], with_entropy)
        pad = (0, input_ids.shape[1] - width)
        return (torch.nn.functional.pad(logp, pad)[inverse],
                None if entropy is None else torch.nn.functional.pad(entropy, pad)[inverse])

    def _row_logprobs(self, model, input_ids, attention, completion, with_entropy: bool):
        target = completion[:, 1:]
        keep = torch.zeros_like(completion)
        keep[:, :-1] = target
        logits = self.forward_logits(model, input_ids, keep, attention_mask=attention)
        if self.hparams.temperature > 0:
            logits = logits / self.hparams.temperature
        logp_all = torch.log_softmax(logits, -1)
        logp = torch.zeros(target.shape, dtype=torch.float32, device=input_ids.device)
        logp[target] = logp_all.gather(-1, input_ids[:, 1:][target][:, None]).squeeze(-1)
        if not with_entropy:
            return logp, None
        entropy = torch.zeros_like(logp)
        with torch.no_grad():
            entropy[target] = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        batch, completions, rewards, sampling_stats = self.sample_batch(batch)
        valid = torch.tensor([r is not None for r in rewards], device=self.device)
        R = torch.tensor([r if r is not None else 0.0 for r in rewards], dtype=torch.float32, device=self.device)
        advantages = rl_advantages(R, valid, hp.num_generations, self.scale_rewards)
        input_ids, attention, completion = self._sequences(batch, completions)
        mask = completion[:, 1:] & valid[:, None]
        truncated = torch.tensor([not c.finished for c in completions], device=self.device)
        if hp.mask_truncated:
            mask &= ~truncated[:, None]
        with torch.no_grad():
            # one update per batch: the sampling policy is the policy being updated, so the graded forward below
            # gives old_logp too (as TRL does); several updates need it fixed first
            old_logp = entropy = None
            if hp.ppo_epochs > 1:
                old_logp, entropy = self.token_logprobs(self.model, input_ids, attention, completion, with_entropy=True)
            ref_logp = self.token_logprobs(self.reference, input_ids, attention, completion)[0] if self.reference is not None else None
        for _ in range(hp.ppo_epochs):
            logp, epoch_entropy = self.token_logprobs(self.model, input_ids, attention, completion,
                                                      with_entropy=old_logp is None)
            if old_logp is None:
                old_logp, entropy = logp.detach(), epoch_entropy
            loss, clip_frac = policy_gradient_loss(logp, old_logp, advantages, mask, hp.loss_type, hp.epsilon,
                                                   self.eps_high, hp.max_new_tokens, mean=self.global_token_mean)
            kl = None
            if ref_logp is not None:
                kl = self.kl_k3(ref_logp, logp, mask)
                loss = loss + hp.beta * kl
            self.manual_update(loss, hp.max_grad_norm)
        if self.lr_schedulers() is not None:
            self.lr_schedulers().step()
        gap = self.sampler_gap(completions, old_logp, completion)
        distinct = len(distinct_rows(input_ids, attention, completion)[0]) / len(input_ids)
        self._log(batch, completions, rewards, R, valid, loss, clip_frac, kl, entropy, completion, truncated,
                  {**sampling_stats, "distinct_fraction": distinct, **({"sampler_logp_gap": gap} if gap is not None else {})})
        return loss

    @staticmethod
    def sampler_gap(completions: list, logp: torch.Tensor, completion: torch.Tensor) -> float | None:
        """Mean |trainer − sampler| log-prob over the completion tokens (None if the engine gave no log-probs)."""
        if any(c.logprobs is None for c in completions):
            return None
        target = completion[:, 1:]
        mine = [logp[i][target[i]].tolist() for i in range(len(completions))]
        diffs = [abs(a - b) for c, m in zip(completions, mine) for a, b in zip(c.logprobs, m)]
        return sum(diffs) / max(1, len(diffs))

    def _log(self, batch, completions, rewards, R, valid, loss, clip_frac, kl, entropy, completion, truncated,
             extra: dict[str, float]) -> None:
        G = self.hparams.num_generations
        rv = R[valid]
        grouped = R.view(-1, G)
        statuses = Counter(s for s in self.extra_columns.get("status", []) if s)
        tokens = completion[:, 1:].float()
        metrics = {  # log_metric values of the reward functions first: a built-in name keeps its meaning
            **{f"rlvr/{name}": torch.tensor(sum(vs) / len(vs)) for name, vs in self.reward_metrics.items()},
            "rlvr/loss": loss.detach(),
            "rlvr/reward_mean": rv.mean() if rv.numel() else torch.tensor(0.0),
            "rlvr/reward_std": rv.std() if rv.numel() > 1 else torch.tensor(0.0),
            **({"rlvr/pass_rate": torch.tensor(statuses["passed"] / len(completions))} if statuses else {}),  # unit tests ran
            "rlvr/zero_std_frac": (grouped.std(1) < 1e-6).float().mean(),
            "rlvr/clip_frac": clip_frac.detach(),
            "rlvr/entropy": (entropy * tokens).sum() / tokens.sum().clamp(min=1),
            "rlvr/completion_length": torch.tensor(float(sum(len(c.token_ids) for c in completions)) / len(completions)),
            "rlvr/truncated_frac": truncated.float().mean(),
            "rlvr/no_reward_frac": 1 - valid.float().mean(),
            "rlvr/lr": torch.tensor(self.optimizers().param_groups[0]["lr"]),
            **{f"rlvr/status_{s}": torch.tensor(float(n)) for s, n in statuses.items()},
            **{f"rlvr/{k}": torch.tensor(v) for k, v in extra.items()},
        }
        if kl is not None:
            metrics["rlvr/kl"] = kl.detach()
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()})
        self.log("rlvr/reward", metrics["rlvr/reward_mean"], prog_bar=True)
        extra = sorted(self.extra_columns)
        self.log_samples_table("rlvr/samples", ["task_id", "prompt", "completion", "reward", *extra], lambda: [
            [batch[i // G].get("task_id", ""), batch[i // G]["prompt"], c.text, rewards[i], *(self.extra_columns[e][i] for e in extra)]
            for i, c in enumerate(completions)][:16], self.hparams.table_every_n_steps)
