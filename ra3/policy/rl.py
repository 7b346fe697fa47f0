"""The RL pieces the E-step and RLVR share, as pure functions: group baselines and the clipped surrogate.

``policy_gradient_loss`` is the one clipped surrogate: RLVR aggregates it per completion (``loss_type``), the
E-step treats every latent action (thought token or think/act decision) as a one-token completion and takes the
token-level mean (``dapo``). The k3 KL to a reference is ``PolicyModule.kl_k3``.
"""

from __future__ import annotations

import torch

from ra3.errors import Ra3Error


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str = "rloo", scale: bool = False) -> torch.Tensor:
    """(N,) rewards in consecutive groups of ``group_size`` -> (N,) advantages (zero for constant groups)."""
    r = rewards.view(-1, group_size)
    if kind == "rloo":
        adv = (r - (r.sum(1, keepdim=True) - r) / (group_size - 1))
    elif kind == "mean":
        adv = r - r.mean(1, keepdim=True)
    else:
        raise Ra3Error(f"advantage must be 'rloo' or 'mean', got {kind!r}")
    if scale:
        adv = adv / (r.std(1, keepdim=True) + 1e-6)
    return adv.reshape(-1)



LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def rl_advantages(rewards: torch.Tensor, valid: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """(N,) rewards in groups of G (``valid`` False = no reward) -> (N,) advantages; 0 where not valid."""
    r = torch.where(valid, rewards, torch.zeros_like(rewards)).view(-1, group_size)
    v = valid.view(-1, group_size).float()
    n = v.sum(1, keepdim=True).clamp(min=1)
    mean = (r * v).sum(1, keepdim=True) / n
    adv = (r - mean) * v
    if scale == "group":
        std = (((r - mean) ** 2 * v).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        adv = adv / (std + 1e-4)
    elif scale == "batch":
        adv = adv / (rewards[valid].std() + 1e-4 if valid.sum() > 1 else 1.0)
    elif scale != "none":
        raise Ra3Error(f"scale_rewards must be group, batch or none; got {scale!r}")
    return adv.reshape(-1)


def distinct_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (N, T) tensors, read side by side -> (``rows``: (U,) index of each distinct row's first copy,
    ``inverse``: (N,) position in ``rows`` of every row), so ``x[rows][inverse]`` equals ``x``."""
    key = torch.cat([t.long() for t in tensors], 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = key.shape[0]
    first = torch.full((int(inverse.max()) + 1 if n else 0,), n, dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=key.device), "amin")
    return first, inverse


def _divide(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp(min=1)


def policy_gradient_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                         loss_type: str, eps_low: float, eps_high: float, max_new_tokens: int,
                         mean=_divide) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate aggregated as ``loss_type`` (see the module docstring).

    ``logp``/``old_logp``/``mask``: (N, T) per completion token; ``advantages``: (N,). ``mean(total, count)``
    divides a sum by a count (``RLVRModule`` passes one that counts over all data-parallel ranks).
    Returns (loss, clip fraction)."""
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv) * mask
    if loss_type == "grpo":
        lengths = mask.sum(1)
        has = lengths > 0
        loss = mean((per_token.sum(1)[has] / lengths[has]).sum(), has.sum().float())
    elif loss_type == "dr_grpo":
        loss = mean(per_token.sum(), torch.tensor(float(logp.shape[0] * max_new_tokens), device=logp.device))
    elif loss_type == "dapo":
        loss = mean(per_token.sum(), mask.sum())
    else:
        raise Ra3Error(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    clip_frac = (((ratio - clipped).abs() > 1e-6).float() * mask).sum() / mask.sum().clamp(min=1)
    return loss, clip_frac
