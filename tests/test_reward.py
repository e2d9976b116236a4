"""utils.reward: the CONQORD alignment reward R_A, the clipped total and the wrong-way diagnostics."""
from __future__ import annotations

import pytest
import torch

from utils.reward import (RewardSettings, alignment_reward, confidence_score, dual_reward, quality_gradient,
                          worst_case_alignment_confidence, worst_case_confidence_score, wrong_way_share)

R = torch.tensor([1.0, 0.0, 1.0, 0.5], dtype=torch.float64)
C = torch.tensor([0.9, 0.2, 0.4, 0.6], dtype=torch.float64)
# R_A(i) = sum_j (r_i - r_j)(c_i - c_j):
#   i=0 (r=1,   c=0.9): (1)(0.7)     + (0)(0.5)     + (0.5)(0.3)   = 0.7  + 0   + 0.15 = 0.85
#   i=1 (r=0,   c=0.2): (-1)(-0.7)   + (-1)(-0.2)   + (-0.5)(-0.4) = 0.7  + 0.2 + 0.2  = 1.10
#   i=2 (r=1,   c=0.4): (0)(-0.5)    + (1)(0.2)     + (0.5)(-0.2)  = 0    + 0.2 - 0.1  = 0.10
#   i=3 (r=0.5, c=0.6): (-0.5)(-0.3) + (0.5)(0.4)   + (-0.5)(0.2)  = 0.15 + 0.2 - 0.1  = 0.25
SUM = [0.85, 1.10, 0.10, 0.25]
MEAN = [0.85 / 4, 1.10 / 4, 0.10 / 4, 0.25 / 4]  # = [0.2125, 0.275, 0.025, 0.0625]


def _paper_reward(quality, confidence, alpha, reduction="mean", clip=5.0):
    """The paper's ``clip(r + alpha·R_A, ±clip)`` on one device: utils.reward.dual_reward, every extra off."""
    settings = RewardSettings(alpha=alpha, align_reward_scope="device", align_reward_reduction=reduction,
                              clip_reward_value=clip, quality_reward="model", score_with_confidence=False,
                              missing_confidence=0.0)
    return dual_reward(quality, confidence, settings, step=0)


@pytest.mark.parametrize("reduction, expected", [("sum", SUM), ("mean", MEAN)])
def test_alignment_reward_hand_example(reduction, expected):
    got = alignment_reward(R, C, reduction)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)


def test_alignment_reward_default_is_mean():
    assert alignment_reward(R, C).tolist() == pytest.approx(MEAN, abs=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_batch_of_one_is_zero(reduction):
    assert alignment_reward(torch.tensor([0.7]), torch.tensor([0.3]), reduction).tolist() == [0.0]
    out = _paper_reward(torch.tensor([0.7]), torch.tensor([0.3]), alpha=2.0, reduction=reduction)
    assert out.total.tolist() == pytest.approx([0.7])


def test_order_matters_sign():
    # confidence ranked like quality -> positive; ranked against it -> negative
    q = torch.tensor([0.0, 1.0])
    assert (alignment_reward(q, torch.tensor([0.1, 0.9]), "sum") > 0).all()
    assert (alignment_reward(q, torch.tensor([0.9, 0.1]), "sum") < 0).all()


@pytest.mark.parametrize("quality, confidence", [
    (torch.zeros(3), torch.zeros(4)),
    (torch.zeros(2, 2), torch.zeros(2, 2)),
])
def test_shape_mismatch_raises(quality, confidence):
    with pytest.raises(ValueError):
        alignment_reward(quality, confidence)


def test_unknown_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        alignment_reward(R, C, "max")


def test_dual_reward_hand_example_mean():
    out = _paper_reward(R, C, alpha=1.0, reduction="mean", clip=5.0)
    # total = r + 1.0 * R_A(mean) = [1 + 0.2125, 0 + 0.275, 1 + 0.025, 0.5 + 0.0625]
    assert out.total.tolist() == pytest.approx([1.2125, 0.275, 1.025, 0.5625], abs=1e-12)
    assert out.alignment.tolist() == pytest.approx(MEAN, abs=1e-12)
    assert out.quality is R


def test_dual_reward_clipping():
    out = _paper_reward(R, C, alpha=2.0, reduction="sum", clip=1.5)
    # unclipped r + 2*R_A(sum) = [2.7, 2.2, 1.2, 1.0] -> clipped at 1.5
    assert out.total.tolist() == pytest.approx([1.5, 1.5, 1.2, 1.0], abs=1e-12)
    # alignment itself is not clipped
    assert out.alignment.tolist() == pytest.approx(SUM, abs=1e-12)
    low = _paper_reward(torch.tensor([-4.0, 3.0]), torch.tensor([0.5, 0.5]), alpha=1.0, clip=2.0)
    assert low.total.tolist() == [-2.0, 2.0]


def test_negative_alpha_raises():
    with pytest.raises(ValueError, match="alpha"):
        _paper_reward(R, C, alpha=-0.1)


def test_zero_alpha_is_plain_quality():
    assert _paper_reward(R, C, alpha=0.0).total.tolist() == pytest.approx(R.tolist())


# N = 8, alpha = 0.5, c = four 0s and four 1s, sum(c) = 4:
#   sum:  dR_i/dr_i = 1 + 0.5 * (8 c_i - 4)     -> c=0: 1 - 2 = -1 ; c=1: 1 + 2 = 3
#   mean: dR_i/dr_i = 1 + 0.5 * (8 c_i - 4) / 8 -> c=0: 0.75      ; c=1: 1.25
CONF8 = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)


def test_quality_gradient_and_wrong_way_share_hand_example():
    assert quality_gradient(CONF8, 0.5, "sum").tolist() == pytest.approx([-1.0] * 4 + [3.0] * 4)
    assert quality_gradient(CONF8, 0.5, "mean").tolist() == pytest.approx([0.75] * 4 + [1.25] * 4)
    assert wrong_way_share(CONF8, 0.5, "sum") == pytest.approx(0.5)
    assert wrong_way_share(CONF8, 0.5, "mean") == 0.0
    assert wrong_way_share(CONF8, 0.0, "sum") == 0.0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_quality_gradient_is_finite_difference(reduction):
    gen = torch.Generator().manual_seed(0)
    quality = torch.rand(6, generator=gen, dtype=torch.float64)
    confidence = torch.rand(6, generator=gen, dtype=torch.float64)
    alpha, h = 0.7, 1e-4
    base = _paper_reward(quality, confidence, alpha, reduction, clip=1e9).total
    analytic = quality_gradient(confidence, alpha, reduction)
    for i in range(6):
        bumped = quality.clone()
        bumped[i] += h
        numeric = (_paper_reward(bumped, confidence, alpha, reduction, clip=1e9).total[i] - base[i]) / h
        assert numeric.item() == pytest.approx(analytic[i].item(), abs=1e-6)


def test_confidence_scores_by_hand():
    from utils.reward import confidence_score, quality_target

    c = torch.tensor([0.9, 0.2, 0.0])
    t = torch.tensor([1.0, 1.0, 0.0])
    # brier: -(0.1)^2, -(0.8)^2, -(0)^2
    assert torch.allclose(confidence_score(c, t, "brier"), torch.tensor([-0.01, -0.64, 0.0]))
    # log: log 0.9, log 0.2, log(1 - 0.001) (c=0 clamped to eps=1e-3, target 0)
    expected = torch.log(torch.tensor([0.9, 0.2, 0.999]))
    assert torch.allclose(confidence_score(c, t, "log"), expected)
    with pytest.raises(ValueError, match="scoring rule"):
        confidence_score(c, t, "none")
    assert torch.allclose(quality_target(torch.tensor([0.0, 1.0]), "oracle"), torch.tensor([0.0, 1.0]))
    assert torch.allclose(quality_target(torch.tensor([0.0]), "model"), torch.tensor([0.5]))


@pytest.mark.parametrize("rule", ["brier", "log"])
def test_scoring_rules_are_maximised_by_the_true_probability(rule):
    from utils.reward import confidence_score

    p = 0.7  # P(good answer); expected score over t ~ Bernoulli(p) peaks at c = p
    grid = torch.linspace(0.05, 0.95, 19)
    expected = p * confidence_score(grid, torch.ones_like(grid), rule) + \
        (1 - p) * confidence_score(grid, torch.zeros_like(grid), rule)
    assert grid[expected.argmax()].item() == pytest.approx(p, abs=0.03)


# ---------------------------------------------------------------- no escape through a missing confidence

GRID = torch.linspace(0.0, 1.0, 11)


def _random_batch(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).float(), torch.rand(n, generator=g)


@pytest.mark.parametrize("seed", range(20))
def test_worst_case_alignment_confidence_minimises_the_rollouts_own_alignment_reward(seed):
    quality, confidence = _random_batch(seed)
    quality[0] = 0.5 * seed % 1.0  # also a quality between the others
    for i in range(len(quality)):
        stated = torch.ones(len(quality), dtype=torch.bool)
        stated[i] = False
        filled = worst_case_alignment_confidence(quality, confidence, stated)
        silent = alignment_reward(quality, filled)[i]
        for c in GRID:
            spoken = confidence.clone()
            spoken[i] = c
            assert silent <= alignment_reward(quality, spoken)[i] + 1e-6


@pytest.mark.parametrize("rule", ["brier", "log"])
def test_worst_case_score_is_below_every_stated_confidence(rule):
    target = torch.tensor([0.0, 1.0, 0.3, 0.5, 0.9])
    silent = worst_case_confidence_score(torch.zeros(5), target, torch.zeros(5, dtype=torch.bool), rule)
    for c in GRID:
        assert (silent <= confidence_score(torch.full((5,), float(c)), target, rule) + 1e-6).all()
    stated = worst_case_confidence_score(torch.full((5,), 0.7), target, torch.ones(5, dtype=torch.bool), rule)
    assert torch.equal(stated, confidence_score(torch.full((5,), 0.7), target, rule))
