"""EStepModule: latent inference by policy gradient — where should thoughts go, and what should they say?

One training step, top to bottom:

1. Roll out: for B expert programs sample G think/act annotations each (``ra3.em.latent``); expert
   lines are teacher-forced, only the decisions and the thought tokens are sampled.
2. Reward each annotation (the ELBO, per sample)::

       R = sum_t log pi(a_t | s_t, z_<=t)  -  c * #thoughts  -  format_penalty * #malformed thoughts
       (minus sum_t log pi(a_t | s_t) without thoughts when ``reward_gain``: the thoughts' gain)

3. Advantages, group-relative: ``rloo`` (R_i minus the mean of the other G-1) or ``mean`` (R_i minus the
   group mean); optionally divided by the group's std.
4. Loss on latent actions only — each think/act decision and each sampled thought token — with the
   clipped surrogate ``-min(r A, clip(r, 1-eps, 1+eps) A)``, ``r = pi_new / pi_rollout``, averaged over
   all latent actions of the batch; ``ppo_epochs`` updates per rollout; optional k3 KL to a frozen
   reference (``beta > 0`` only: otherwise no reference copy exists).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ra3.data.segments import encode_segments
from ra3.errors import Ra3Error
from ra3.evaluation.metrics import boundary_scores, names_skill
from ra3.policy.module import PolicyModule
from ra3.policy.rl import group_advantages, policy_gradient_loss
from ra3.em.latent import (LatentConfig, LatentRollout, LatentRolloutEngine, ThoughtFormat, decision_logprobs,
                           program_from_row, render)
from ra3.rollout.sampling import sample_seed

MODES = ("best", "best_well_formed", "sample")  # which annotation of a group the bootstrap keeps


class EStepModule(PolicyModule):
    """Policy-gradient latent inference (the E-step). Batches are lists of expert program rows.

    Args:
        group_size: annotations per program (G >= 2, for group-relative baselines).
        thought_cost: c, the cost per thought (the KL to the prior, approximated).
        reward_gain: reward the log-likelihood *gain* over the same program without thoughts.
        format_penalty: subtracted per malformed thought (empty, code inside the comment, too long).
        advantage: ``rloo`` or ``mean`` group baseline.
        scale_advantages: divide advantages by the group's reward std.
        alpha: prior weight on "no new thought" mixed into the decision (1 = never think).
        temperature: thought-token sampling temperature.
        max_thought_tokens: tokens per thought at most.
        max_thoughts: thoughts per program at most.
        max_rollout_length: tokens per annotated program at most.
        thought_retries: draw a malformed thought again from the same point up to this many times
            (``LatentConfig.thought_retries``; used by the bootstrap too). 0 = off.
        rollout_lookahead: expert lines fed per forward ahead of the think/act decisions (rolled back at a
            "think"; the annotations are the same): fewer forwards for a policy that rarely thinks. 1 = off.
        clip_epsilon: PPO clip range.
        ppo_epochs: policy updates per rollout batch.
        beta: weight of the KL to a frozen copy of the initial policy (0: no copy is made).
        max_grad_norm: gradient clipping norm (0 = off).
        thought_format: how thoughts look and what makes them malformed.
        table_every_n_steps: log a W&B table of annotated programs this often (0 = never).
        reference_quantization: load the frozen reference (``beta > 0``) in bitsandbytes ``8bit`` or ``4bit``.
    """

    data_view = "programs"

    def __init__(self, *args, group_size: int = 4, thought_cost: float = 0.05, reward_gain: bool = False,
                 format_penalty: float = 0.1, advantage: str = "rloo", scale_advantages: bool = False,
                 alpha: float = 0.0, temperature: float = 1.0, max_thought_tokens: int = 16, max_thoughts: int = 8,
                 max_rollout_length: int = 1024, rollout_lookahead: int = 8, thought_retries: int = 0, clip_epsilon: float = 0.2,
                 ppo_epochs: int = 1, beta: float = 0.0, max_grad_norm: float = 1.0, thought_format: ThoughtFormat | None = None,
                 table_every_n_steps: int = 50, reference_quantization: str | None = None, **kwargs):
        self.check_hparams(group_size, thought_cost, alpha, advantage, ppo_epochs, rollout_lookahead)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["thought_format"])
        self.automatic_optimization = False
        self.thought_format = thought_format or ThoughtFormat()
        self.latent_config = LatentConfig(group_size, alpha, temperature, max_thought_tokens, max_thoughts, max_rollout_length,
                                          rollout_lookahead, thought_retries)
        self.engine = LatentRolloutEngine(self.model, self.tokenizer, self.thought_format)
        self.reference = None
        if beta > 0:
            self.reference = self.make_reference(reference_quantization)
        self.last_rollout: LatentRollout | None = None

    @staticmethod
    def check_hparams(group_size: int = 4, thought_cost: float = 0.05, alpha: float = 0.0, advantage: str = "rloo",
                      ppo_epochs: int = 1, rollout_lookahead: int = 8, **_) -> None:
        """One-line errors for impossible settings (called before any model is loaded)."""
        if group_size < 2:
            raise Ra3Error(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
        if thought_cost < 0:
            raise Ra3Error(f"thought_cost (c) must be >= 0, got {thought_cost}")
        if not 0.0 <= alpha <= 1.0:
            raise Ra3Error(f"alpha must be in [0, 1], got {alpha}")
        if advantage not in ("rloo", "mean"):
            raise Ra3Error(f"advantage must be 'rloo' or 'mean', got {advantage!r}")
        if ppo_epochs < 1:
            raise Ra3Error(f"ppo_epochs must be >= 1, got {ppo_epochs}")
        if rollout_lookahead < 1:
            raise Ra3Error(f"rollout_lookahead must be >= 1, got {rollout_lookahead}")

    # ---- reward ----------------------------------------------------------------------------------
    def rewards(self, rollout: LatentRollout, plain_logprob: torch.Tensor) -> torch.Tensor:
        """(N,) reward per annotation. Override to change it (the expert log-likelihoods and thought
        counts are in ``rollout``; ``plain_logprob`` is each sample's log-likelihood without thoughts)."""
        hp = self.hparams
        r = rollout.expert_logprob - hp.thought_cost * rollout.n_thoughts - hp.format_penalty * rollout.n_malformed
        return r - plain_logprob if hp.reward_gain else r

    @torch.no_grad()
    def plain_logprob(self, programs) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum and count of expert-token log-probs of each program *without* thoughts: (B,), (B,)."""
        encoded = []
        for p in programs:
            ids, _ = encode_segments(self.tokenizer, list(p.context), bos=True, eos=False)
            code, _ = encode_segments(self.tokenizer, list(p.lines), bos=False, eos=True)
            encoded.append((ids + code, len(ids)))
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        expert = torch.zeros((len(encoded), width), dtype=torch.bool)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for b, (ids, n_ctx) in enumerate(encoded):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            expert[b, n_ctx : len(ids)] = True
            attention[b, : len(ids)] = 1
        input_ids, expert = input_ids.to(self.device), expert.to(self.device)
        keep = torch.zeros_like(expert)
        keep[:, :-1] = True
        logits = self.forward_logits(self.model, input_ids, keep, attention_mask=attention.to(self.device))
        logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:].reshape(-1, 1)).view(len(encoded), -1)
        return (logp * expert[:, 1:]).sum(1), expert[:, 1:].sum(1)

    # ---- loss ------------------------------------------------------------------------------------
    def latent_logprobs(self, model, rollout: LatentRollout) -> torch.Tensor:
        """Log-probs of all latent actions — sampled thought tokens, then decisions — flattened (M,)."""
        ids = rollout.input_ids
        thought = torch.zeros_like(rollout.latent_mask)
        thought[:, :-1] = rollout.latent_mask[:, 1:]  # the position that predicts each thought token
        has = rollout.decision_pos >= 0
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(has)
        decision = torch.zeros_like(thought)
        decision[rows[has], rollout.decision_pos[has]] = True
        keep = thought | decision
        logp = torch.log_softmax(self.forward_logits(model, ids, keep, attention_mask=rollout.attention_mask), -1)
        index = torch.full(keep.shape, -1, dtype=torch.long, device=ids.device)
        index[keep] = torch.arange(int(keep.sum()), device=ids.device)
        lp_thought = logp[index[thought]].gather(-1, ids[:, 1:][rollout.latent_mask[:, 1:]][:, None]).squeeze(-1)
        lp_dec = decision_logprobs(logp[index[rows[has], rollout.decision_pos[has]]], rollout.decision_marker[has],
                                   rollout.decision_expert[has], rollout.decision_think[has], rollout.alpha)
        return torch.cat([lp_thought, lp_dec])

    def policy_loss(self, rollout: LatentRollout, advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hp = self.hparams
        thought = rollout.latent_mask[:, 1:]
        has = rollout.decision_pos >= 0
        old = torch.cat([rollout.token_logprobs[:, 1:][thought], rollout.decision_logprob[has]])
        adv = torch.cat([advantages[:, None].expand_as(thought)[thought], advantages[:, None].expand_as(has)[has]])
        new = self.latent_logprobs(self.model, rollout)
        # every latent action is its own one-token "completion": the token-level mean over the batch (dapo)
        loss, clip_frac = policy_gradient_loss(new[:, None], old[:, None], adv, torch.ones_like(new[:, None]), "dapo",
                                               hp.clip_epsilon, hp.clip_epsilon, 1, mean=self.global_token_mean)
        stats = {"clip_frac": clip_frac.detach()}
        if self.reference is not None:
            with torch.no_grad():
                ref = self.latent_logprobs(self.reference, rollout)
            kl = self.kl_k3(ref, new)
            loss = loss + hp.beta * kl
            stats["kl"] = kl.detach()
        return loss, stats

    # ---- bootstrapping ---------------------------------------------------------------------------
    @torch.no_grad()
    def annotate(self, rows: list[dict], group_size: int, generator: torch.Generator, mode: str = "best",
                 min_gain: float | None = None, drop_malformed: bool = False) -> list[dict]:
        """What the bootstrap writes: annotated copies of ``rows`` (``prompt``/``completion`` or ``text`` rewritten
        with thoughts), one of ``group_size`` rollouts kept per program by ``mode`` (``MODES``: the ``best`` by
        reward, the best with the fewest malformed thoughts, or the first ``sample``). With ``min_gain``, a program
        whose kept annotation does not beat the plain program's log-likelihood by more than ``min_gain`` nats (after
        the thought cost) stays plain (``thoughts`` empty, ``kept_plain`` true). With ``drop_malformed``, the kept
        annotation's malformed thoughts are removed (counted in ``dropped``): the M-step never learns from a thought
        that breaks the format rules."""
        programs = [program_from_row(r) for r in rows]
        config = dataclasses.replace(self.latent_config, group_size=group_size)
        rollout = self.engine.rollout(programs, config, generator)
        plain, _ = self.plain_logprob(programs)
        plain_g = plain.cpu().repeat_interleave(group_size)
        rewards = self.rewards(rollout.to("cpu"), plain_g).view(-1, group_size)
        gains = rewards - (0 if self.hparams.reward_gain else plain_g.view(-1, group_size))
        if mode == "best_well_formed":  # the fewest malformed thoughts first, then the reward
            malformed = rollout.n_malformed.cpu().view(-1, group_size).float()
            picks = torch.where(malformed == malformed.min(1, keepdim=True).values, rewards, -float("inf")).argmax(1).tolist()
        else:
            picks = rewards.argmax(1).tolist() if mode == "best" else [0] * len(rows)
        out = []
        for b, (row, g) in enumerate(zip(rows, picks)):
            i = b * group_size + g
            if min_gain is not None and float(gains[b, g]) <= min_gain:
                out.append({**row, "thoughts": [], "estep_reward": float(rewards[b, g]), "kept_plain": True})
                continue
            text, thoughts, dropped = rollout.texts[i], rollout.thoughts[i], []
            if drop_malformed and any(bad for *_, bad in thoughts):
                dropped = [{"line": t, "text": s} for t, s, bad in thoughts if bad]
                thoughts = [th for th in thoughts if not th[2]]
                text = render(programs[b], thoughts, self.thought_format)
            new = {k: v for k, v in row.items() if k not in ("text", "completion")}
            if "prompt" in row and "completion" in row:
                new["completion"] = text[len(row["prompt"]):]
            new["text"] = text
            new["thoughts"] = [{"line": t, "text": s, "malformed": bad} for t, s, bad in thoughts]
            if dropped:
                new["dropped"] = dropped
            new["estep_reward"] = float(rewards[b, g])
            if int(rollout.n_redrawn[i]):
                new["redrawn"] = int(rollout.n_redrawn[i])
            out.append(new)
        return out

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        hp, G = self.hparams, self.hparams.group_size
        programs = [program_from_row(row) for row in batch]
        with self.generation():
            seeds = [sample_seed("".join(seg.text for seg in (*p.context, *p.lines)), self.global_step, hp.init_seed)
                     for p in programs]  # a program's annotations do not depend on its batch, rank or world size
            rollout = self.engine.rollout(programs, self.latent_config, seeds=seeds)
        rollout = rollout.to(self.device)
        self.last_rollout = rollout
        plain, n_expert = self.plain_logprob(programs)
        rewards = self.rewards(rollout, plain.repeat_interleave(G))
        advantages = group_advantages(rewards, G, hp.advantage, hp.scale_advantages)

        for _ in range(hp.ppo_epochs):
            loss, stats = self.policy_loss(rollout, advantages)
            self.manual_update(loss, hp.max_grad_norm)
        if self.lr_schedulers() is not None:
            self.lr_schedulers().step()
        self._log_step(programs, rollout, rewards, plain, n_expert, loss, stats)
        return loss

    def _log_step(self, programs, rollout, rewards, plain, n_expert, loss, stats) -> None:
        G = self.hparams.group_size
        grouped = rewards.view(-1, G)
        n_tok = n_expert.repeat_interleave(G).clamp(min=1).float()
        thought_tokens = rollout.latent_mask.sum().float()
        metrics = {
            "estep/loss": loss.detach(),
            "estep/reward_mean": rewards.mean(),
            "estep/reward_std": rewards.std(),
            "estep/thought_rate": rollout.n_thoughts.sum() / rollout.n_boundaries.sum().clamp(min=1),
            "estep/thoughts_per_program": rollout.n_thoughts.float().mean(),
            "estep/thought_len": thought_tokens / rollout.n_thoughts.sum().clamp(min=1),
            "estep/malformed_rate": rollout.n_malformed.sum() / rollout.n_thoughts.sum().clamp(min=1),
            "estep/redrawn_per_thought": rollout.n_redrawn.sum() / rollout.n_thoughts.sum().clamp(min=1),
            "estep/expert_nll_with_thoughts": (-rollout.expert_logprob / n_tok).mean(),
            "estep/expert_nll_without_thoughts": (-plain / n_expert.clamp(min=1)).mean(),
            "estep/elbo": (rollout.expert_logprob - self.hparams.thought_cost * rollout.n_thoughts).mean(),
            "estep/zero_std_frac": (grouped.std(1) < 1e-6).float().mean(),
            "estep/lr": torch.tensor(self.optimizers().param_groups[0]["lr"]),
            **{f"estep/{k}": v for k, v in stats.items()},
        }
        truth = [p.boundaries for p in programs for _ in range(G)]
        if all(t is not None for t in truth):
            predicted = [{t for t, *_ in th} for th in rollout.thoughts]
            precision, recall, f1 = boundary_scores(predicted, [set(t) for t in truth])
            metrics.update({"estep/boundary_precision": precision, "estep/boundary_recall": recall, "estep/boundary_f1": f1})
            labels = [getattr(p, "labels", None) for p in programs for _ in range(G)]
            if all(labels):
                metrics["estep/thought_names_skill"] = torch.tensor(names_skill(rollout.thoughts, truth, labels))
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()}, prog_bar=False)
        self.log("estep/reward", rewards.mean(), prog_bar=True)
        self.log_samples_table("estep/samples", ["task_id", "annotated", "reward", "thoughts"], lambda: [
            [programs[i // G].task_id, rollout.texts[i], float(rewards[i]), int(rollout.n_thoughts[i])]
            for i in range(0, len(rollout.texts), max(1, G))][:8], self.hparams.table_every_n_steps)

