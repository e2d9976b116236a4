"""CONQORD's dual reward: quality plus the order-preserving alignment reward.

``R_A(i) = Σ_j (r_i − r_j)(c_i − c_j)`` over the rollouts in scope (``c`` = stated confidence);
``reduction="mean"`` divides by the number of rollouts in scope, so ``alpha`` means the same at any
batch size; ``"sum"`` is the authors' form. The total is ``clip(r + alpha·R_A, ±clip)``, computed in one
place, :func:`dual_reward`, from :class:`RewardSettings`, with the extras beyond the paper that the settings
turn on (a proper scoring rule, the worst case for a missing confidence, centring, routing to the
confidence tokens, a penalty for a missing EOS).

With the sum, ``∂R_i/∂r_i = 1 + alpha·Σ_j (c_i − c_j)`` (divided by N with the mean). Where that is
negative, a better answer earns a *lower* reward: the reward pays the model to answer worse when it
states a low confidence. :func:`wrong_way_share` measures how often that happens in a batch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
from scipy import stats

from utils import dist

Reduction = Literal["mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum")
Scope = Literal["global", "device"]


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


@dataclass(frozen=True)
class RewardSettings:
    """How step 3 rewards a batch of rollouts. Each field is the step-3 flag of the same name (``--help`` there
    says more); built once from the parsed flags (:func:`reward_settings`) and never changed during a run: the
    scoring rule's warm-up is a function of the step (:meth:`confidence_scoring_weight_at`)."""

    alpha: float  # weight of R_A
    align_reward_scope: Scope  # R_A over the rollouts of all ranks (gathered) or of this rank (the authors')
    align_reward_reduction: Reduction
    clip_reward_value: float  # the sequence reward is clipped to ±this
    quality_reward: Literal["model", "oracle"]  # r from the reward model, or exact match against the golds
    score_with_confidence: bool  # the reward model sees the confidence text too (the authors' behaviour)
    missing_confidence: float  # the confidence of a rollout that states none
    # beyond the paper; the defaults leave each one off
    confidence_scoring_rule: str = "none"  # a proper scoring rule of the confidence against the quality
    confidence_scoring_weight: float = 0.0
    confidence_scoring_warmup_steps: int = 0  # the weight grows linearly over these first PPO steps
    alignment_on_confidence_tokens: bool = False  # the confidence terms go to the confidence tokens only
    missing_confidence_policy: str = "fixed"  # "worst": an unstated confidence scores its worst in every term
    center_confidence_terms: bool = False  # minus their mean over the scope: the baseline the critic never gives
    missing_eos_penalty: float = 0.0  # TRL's: off the sequence reward of a rollout cut by the length limit

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    def confidence_scoring_weight_at(self, step: int) -> float:
        """The scoring rule's weight for the rollouts of PPO step ``step`` (0-based): the full weight times the
        share of the warm-up done (no warm-up: full from the start). A constant confidence at the base rate is
        the scoring rule's quickest gain; reached first, it leaves R_A no spread of confidences to order."""
        weight, warmup = self.confidence_scoring_weight, self.confidence_scoring_warmup_steps
        return weight if warmup == 0 else weight * min(1.0, (step + 1) / warmup)


def reward_settings(args: argparse.Namespace) -> RewardSettings:
    """The settings from step 3's parsed flags (same names)."""
    return RewardSettings(**{f.name: getattr(args, f.name) for f in fields(RewardSettings)})


@dataclass(frozen=True)
class DualReward:
    """The rewards of this rank's rollouts, and diagnostics over the rollouts in scope."""

    quality: torch.Tensor  # r
    alignment: torch.Tensor  # R_A, unweighted
    confidence_terms: torch.Tensor  # alpha·R_A (+ the weighted scoring rule; centred when asked)
    total: torch.Tensor  # the clipped sequence reward, paid at each rollout's last token
    scope_size: int  # rollouts R_A ordered this one against (itself included)
    wrong_way_share: float  # see wrong_way_share(); 0 when R_A never reaches the answer
    spearman_quality_confidence: float  # NaN when quality or confidence is constant over the scope


def dual_reward(quality: torch.Tensor, confidence: torch.Tensor, settings: RewardSettings, step: int,
                stated: torch.Tensor | None = None, truncated: torch.Tensor | None = None) -> DualReward:
    """The dual reward of this rank's rollouts at PPO step ``step`` (0-based), R_A over the rollouts in scope:
    all ranks' (gathered) or this rank's.

    ``stated`` (bool per rollout, default all True) marks the rollouts whose confidence parsed; under
    ``missing_confidence_policy="worst"`` the others get, in R_A and in the scoring rule, the worst value they
    could have stated, so dropping the confidence never pays. ``truncated`` (bool per rollout) marks the
    rollouts that ended without a stop token; their sequence reward loses ``missing_eos_penalty`` before the
    clip (the reward model sees them closed by EOS, so it cannot see the cut). The quality that R_A and the
    scoring rule compare the confidence with stays the answer's."""
    worst = settings.missing_confidence_policy == "worst"
    stated = torch.ones_like(quality, dtype=torch.bool) if stated is None else stated.bool()
    offset, scope_q, scope_c, scope_stated = 0, quality, confidence, stated
    if settings.align_reward_scope == "global":
        scope_q, offset = dist.all_gather_variable(quality)
        scope_c, _ = dist.all_gather_variable(confidence)
        if worst:
            scope_stated = dist.all_gather_variable(stated.float())[0].bool()
    if worst:
        scope_c = worst_case_alignment_confidence(scope_q, scope_c, scope_stated)
    alignment = alignment_reward(scope_q, scope_c, settings.align_reward_reduction)[offset:offset + quality.numel()]
    terms = settings.alpha * alignment
    if settings.confidence_scoring_rule != "none":
        target = quality_target(quality, settings.quality_reward)
        rule = settings.confidence_scoring_rule
        score = (worst_case_confidence_score(confidence, target, stated, rule) if worst
                 else confidence_score(confidence, target, rule))
        terms = terms + settings.confidence_scoring_weight_at(step) * score
    if settings.center_confidence_terms:
        terms = terms - _scope_mean(terms, settings.align_reward_scope)
    # routed, the confidence terms become an advantage on the confidence tokens: the sequence keeps the quality
    routed = settings.alignment_on_confidence_tokens
    sequence = quality if routed else quality + terms
    if truncated is not None:
        sequence = sequence - settings.missing_eos_penalty * truncated.float()
    total = torch.clamp(sequence, -settings.clip_reward_value, settings.clip_reward_value)
    # routed, R_A never reaches the answer: dR/dr is 1 for every rollout
    wrong_way = (wrong_way_share(scope_c, settings.alpha, settings.align_reward_reduction)
                 if settings.alpha > 0 and not routed else 0.0)
    return DualReward(quality=quality, alignment=alignment, confidence_terms=terms, total=total,
                      scope_size=scope_q.numel(), wrong_way_share=wrong_way,
                      spearman_quality_confidence=_spearman(scope_q, scope_c))


def _scope_mean(values: torch.Tensor, scope: Scope) -> torch.Tensor:
    """Mean over the rollouts in scope: all ranks' (``"global"``) or this rank's."""
    if scope != "global":
        return values.mean()
    totals = dist.all_reduce_sum(torch.stack([values.sum(), torch.tensor(float(values.numel()), device=values.device)]))
    return totals[0] / totals[1]


def _spearman(quality: torch.Tensor, confidence: torch.Tensor) -> float:
    if quality.unique().numel() > 1 and confidence.unique().numel() > 1:
        return float(stats.spearmanr(quality.cpu().numpy(), confidence.cpu().numpy()).statistic)
    return float(np.nan)
