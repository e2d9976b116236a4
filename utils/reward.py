"""CONQORD's dual reward: quality plus the order-preserving alignment reward.

``R_A(i) = Σ_j (r_i − r_j)(c_i − c_j)`` over the rollouts in scope (``c`` = stated confidence);
``reduction="mean"`` divides by the number of rollouts in scope, so ``alpha`` means the same at any
batch size; ``"sum"`` is the authors' form. The total is ``clip(r + alpha·R_A, ±clip)``.

With the sum, ``∂R_i/∂r_i = 1 + alpha·Σ_j (c_i − c_j)`` (divided by N with the mean). Where that is
negative, a better answer earns a *lower* reward: the reward pays the model to answer worse when it
states a low confidence. :func:`wrong_way_share` measures how often that happens in a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Reduction = Literal["mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


def _scale(n: int, reduction: Reduction) -> float:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return 1.0 / n if reduction == "mean" else 1.0


def alignment_reward(quality: torch.Tensor, confidence: torch.Tensor,
                     reduction: Reduction = "mean") -> torch.Tensor:
    """``R_A`` for every rollout of a 1-D batch; zero for a batch of one (nothing to order against)."""
    if quality.shape != confidence.shape or quality.dim() != 1:
        raise ValueError(f"quality {tuple(quality.shape)} and confidence {tuple(confidence.shape)} "
                         "must be 1-D and of the same length")
    pairwise = (quality[:, None] - quality[None, :]) * (confidence[:, None] - confidence[None, :])
    return pairwise.sum(dim=1) * _scale(quality.numel(), reduction)


def quality_gradient(confidence: torch.Tensor, alpha: float, reduction: Reduction = "mean") -> torch.Tensor:
    """``∂R_i/∂r_i = 1 + alpha·Σ_j (c_i − c_j)`` (times 1/N for the mean), before clipping."""
    spread = confidence.numel() * confidence - confidence.sum()
    return 1.0 + alpha * spread * _scale(confidence.numel(), reduction)


def wrong_way_share(confidence: torch.Tensor, alpha: float, reduction: Reduction = "mean") -> float:
    """Share of rollouts for which a better answer would earn a lower total reward."""
    return (quality_gradient(confidence, alpha, reduction) < 0).float().mean().item()


@dataclass(frozen=True)
class DualReward:
    quality: torch.Tensor
    alignment: torch.Tensor
    total: torch.Tensor  # clipped


def dual_reward(quality: torch.Tensor, confidence: torch.Tensor, alpha: float,
                reduction: Reduction = "mean", clip: float = 5.0) -> DualReward:
    """``R = clip(r + alpha·R_A, ±clip)`` for every rollout of the batch."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    align = alignment_reward(quality, confidence, reduction)
    total = torch.clamp(quality + alpha * align, -clip, clip)
    return DualReward(quality=quality, alignment=align, total=total)


SCORING_RULES: tuple[str, ...] = ("none", "brier", "log")
MISSING_POLICIES: tuple[str, ...] = ("fixed", "worst")


def quality_target(quality: torch.Tensor, kind: str) -> torch.Tensor:
    """Quality on [0, 1] for a proper scoring rule: oracle correctness as is, a reward-model score
    through the logistic function (the pairwise loss makes σ(r_a − r_b) a preference probability)."""
    return quality.clamp(0.0, 1.0) if kind == "oracle" else torch.sigmoid(quality)


def confidence_score(confidence: torch.Tensor, target: torch.Tensor, rule: str, eps: float = 1e-3) -> torch.Tensor:
    """A proper scoring rule of the stated confidence against the quality target (higher is better):
    ``brier`` = −(c − t)², ``log`` = t·log c + (1 − t)·log(1 − c) with c clamped to [eps, 1 − eps].
    Unlike the order-only ``R_A``, both are maximised in expectation by c = P(good answer), so they
    anchor absolute confidence levels (ECE), not only their order (AUROC)."""
    if rule == "brier":
        return -(confidence - target) ** 2
    if rule == "log":
        c = confidence.clamp(eps, 1.0 - eps)
        return target * torch.log(c) + (1.0 - target) * torch.log(1.0 - c)
    raise ValueError(f"scoring rule must be one of {SCORING_RULES[1:]}, got {rule!r}")


# A rollout that states no confidence must not do better than any confidence it could have stated, or the
# policy learns to drop the tag whenever its answer is likely wrong (a missing 0.0 scores a perfect Brier on a
# wrong answer). Under the "worst" policy each confidence term takes its minimum over c in [0, 1] instead.

def worst_case_alignment_confidence(quality: torch.Tensor, confidence: torch.Tensor,
                                    stated: torch.Tensor) -> torch.Tensor:
    """``confidence`` with every unstated entry set to the value that minimises that rollout's own R_A.

    ``R_A(i)`` is linear in ``c_i`` with slope proportional to ``Σ_j (r_i − r_j) = N·(r_i − r̄)``: the
    minimum over [0, 1] is ``c_i = 1`` for an answer below the batch's mean quality and ``c_i = 0``
    otherwise (at the mean, R_A(i) does not depend on ``c_i``)."""
    worst = (quality < quality.mean()).to(confidence.dtype)
    return torch.where(stated, confidence, worst)


def worst_case_confidence_score(confidence: torch.Tensor, target: torch.Tensor, stated: torch.Tensor,
                                rule: str) -> torch.Tensor:
    """:func:`confidence_score`, with unstated entries scored at their worst: both rules are concave in
    ``c``, so the minimum over [0, 1] is at 0 or at 1 (−max(t, 1 − t)² for Brier)."""
    zeros, ones = torch.zeros_like(target), torch.ones_like(target)
    worst = torch.minimum(confidence_score(zeros, target, rule), confidence_score(ones, target, rule))
    return torch.where(stated, confidence_score(confidence, target, rule), worst)
