"""PPO pieces as pure tensor functions (DeepSpeed-Chat's formulation), over response positions only.

Shapes: ``(batch, response_len)``; ``mask`` is 1 on generated tokens up to and including EOS.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class PPOSettings:
    """PPO's own settings (the dual reward's are :class:`utils.reward.RewardSettings`). Each field is the step-3 flag
    of the same name (DeepSpeed-Chat's); built once from the parsed flags (:func:`ppo_settings`)."""

    kl_ctl: float  # per-token KL penalty to the reference
    gamma: float  # GAE's discount
    lam: float  # GAE's lambda
    cliprange: float  # the actor's policy-ratio clip
    cliprange_value: float  # the critic's value clip around the rollout's values
    whiten_advantages: bool  # normalise the GAE advantages over the batch
    ppo_epochs: int  # passes over each experience batch
    per_device_training_batch_size: int  # rollouts per PPO minibatch
    unsup_coef: float  # weight of the PPO-ptx loss (when there is ptx data)


def ppo_settings(args: argparse.Namespace) -> PPOSettings:
    """The settings from step 3's parsed flags (same names)."""
    return PPOSettings(**{f.name: getattr(args, f.name) for f in fields(PPOSettings)})


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last response token (EOS, or the final token when cut by length)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * positions).argmax(dim=1)


def token_rewards(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, sequence_reward: torch.Tensor,
                  mask: torch.Tensor, kl_ctl: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward: ``−kl_ctl·(log π − log π_ref)`` everywhere, plus the (already clipped)
    sequence reward at the last response token. Returns ``(rewards, kl)``."""
    kl = (log_probs - ref_log_probs) * mask
    rewards = -kl_ctl * kl
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += sequence_reward.to(rewards.dtype)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. Masked positions (after EOS) carry no reward and no value,
    so the value after the last response token is 0 (the episode ends there)."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(running)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, advantages + values


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def policy_advantages(advantages: torch.Tensor, mask: torch.Tensor, whitened: bool,
                      routed: torch.Tensor | None = None) -> torch.Tensor:
    """The advantages the actor is trained on: the GAE ones (whitened over the batch when asked) plus the
    confidence terms routed to the confidence tokens. Whitening sees the GAE part only, so the answer
    tokens' advantages never move with the confidence terms; the routed terms keep their scale (α sets it)."""
    advantages = whiten(advantages, mask) if whitened else advantages
    return advantages if routed is None else advantages + routed


def minibatch_rows(size: int, minibatch: int, epoch: int) -> list[torch.Tensor]:
    """Row indices of each minibatch in PPO epoch ``epoch``: the rollouts' own order in the first epoch (they
    come from a shuffled loader already), then a fresh permutation per epoch (TRL's), drawn from the global
    generator, which the trainer seeds per step: resumable, and nothing is drawn at ``--ppo_epochs 1``."""
    order = torch.arange(size) if epoch == 0 else torch.randperm(size)
    return list(order.split(minibatch))


def actor_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor, cliprange: float) -> torch.Tensor:
    """Clipped surrogate objective (negated, to minimise). The log-ratio is masked before ``exp``
    (DeepSpeed-Chat's form): after EOS a large drift would give ``inf``, and ``0 · inf`` is NaN."""
    ratio = torch.exp((log_probs - old_log_probs) * mask)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return masked_mean(torch.max(unclipped, clipped), mask)


def critic_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                cliprange_value: float) -> torch.Tensor:
    """Clipped value loss: the worse of the raw and the clipped prediction's squared error."""
    clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
