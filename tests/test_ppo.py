"""step3 ppo: GAE, per-token rewards, clipped losses and whitening against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from step3_RL_finetune_LLM.ppo import (actor_loss, critic_loss, gae, last_token_index,
                                       masked_mean, token_rewards, whiten)
from utils.model import gather_log_probs


def test_gae_hand_example():
    # one row, length 3, mask [1, 1, 0], gamma = 1, lam = 0.95
    rewards = torch.tensor([[0.1, 1.0, 5.0]])  # 5.0 sits after EOS: ignored
    values = torch.tensor([[0.5, 0.2, 7.0]])   # 7.0 sits after EOS: ignored (value after the end is 0)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # t=2: masked -> A_2 = 0
    # t=1: delta_1 = r_1 + V_2(=0) - V_1 = 1.0 - 0.2 = 0.8                 A_1 = 0.8
    # t=0: delta_0 = r_0 + V_1 - V_0 = 0.1 + 0.2 - 0.5 = -0.2
    #      A_0 = delta_0 + gamma*lam*A_1 = -0.2 + 0.95*0.8 = 0.56
    # returns = A + V (masked):  [0.56 + 0.5, 0.8 + 0.2, 0] = [1.06, 1.0, 0]
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert advantages.tolist()[0] == pytest.approx([0.56, 0.8, 0.0], abs=1e-6)
    assert returns.tolist()[0] == pytest.approx([1.06, 1.0, 0.0], abs=1e-6)


def test_gae_discounting():
    # two unmasked steps, gamma = 0.5, lam = 1: A_1 = r_1 - V_1 = 2 - 1 = 1;
    # A_0 = (r_0 + 0.5*V_1 - V_0) + 0.5*1*A_1 = (0 + 0.5 - 0) + 0.5 = 1.0 ; returns = [1.0, 2.0]
    advantages, returns = gae(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2), 0.5, 1.0)
    assert advantages.tolist()[0] == pytest.approx([1.0, 1.0])
    assert returns.tolist()[0] == pytest.approx([1.0, 2.0])


def test_token_rewards_hand_example():
    log_probs = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.2, -0.4, -9.0, -9.0]])
    ref_log_probs = torch.tensor([[-1.5, -1.0, -0.5, -1.0], [-0.2, -0.1, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    reward = torch.tensor([2.0, -1.0])
    rewards, kl = token_rewards(log_probs, ref_log_probs, reward, mask, kl_ctl=0.1)
    # kl = (lp - ref) * mask: row 0 [0.5, -1.0, 0, 0]; row 1 [0, -0.3, 0, 0]
    assert kl.tolist()[0] == pytest.approx([0.5, -1.0, 0.0, 0.0])
    assert kl.tolist()[1] == pytest.approx([0.0, -0.3, 0.0, 0.0])
    # rewards = -0.1*kl, plus the sequence reward at the last unmasked token (index 2 and 1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 2.0, 0.0])
    assert rewards.tolist()[1] == pytest.approx([0.0, 0.03 - 1.0, 0.0, 0.0])


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [3, 0, 2]


@pytest.mark.parametrize("ratio, advantage, expected", [
    (1.5, 1.0, -1.2),   # max(-1.5, -1.2): gain beyond 1+eps is clipped
    (1.5, -1.0, 1.5),   # max(1.5, 1.2): a worse action is not clipped
    (0.5, 1.0, -0.5),   # max(-0.5, -0.8)
    (0.5, -1.0, 0.8),   # max(0.5, 0.8): below 1-eps is clipped for negative advantage
    (1.1, 2.0, -2.2),   # inside the range: plain ratio*advantage
])
def test_actor_loss_clipping(ratio, advantage, expected):
    log_probs = torch.tensor([[math.log(ratio)]])
    loss = actor_loss(log_probs, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), cliprange=0.2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_actor_loss_ignores_masked_positions():
    log_probs = torch.tensor([[math.log(1.5), 5.0]])
    loss = actor_loss(log_probs, torch.zeros(1, 2), torch.tensor([[1.0, 100.0]]), torch.tensor([[1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.2, abs=1e-6)


@pytest.mark.parametrize("value, old, ret, expected", [
    (1.0, 0.0, 1.0, 0.5 * 0.64),   # raw error 0, clipped 0.2 -> (0.2-1)^2 = 0.64, the worse one counts
    (0.1, 0.0, 1.0, 0.5 * 0.81),   # inside the range: both (0.1-1)^2
    (-1.0, 0.0, -1.0, 0.5 * 0.64), # clipped to -0.2 -> (-0.2+1)^2 = 0.64
    (1.0, 0.0, 2.0, 0.5 * 3.24),   # raw (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24: max is the clipped one
    (0.5, 0.4, 0.45, 0.5 * 0.0025),  # inside the range (|0.5-0.4| <= 0.2): (0.05)^2
])
def test_critic_loss_clipping(value, old, ret, expected):
    loss = critic_loss(torch.tensor([[value]]), torch.tensor([[old]]), torch.tensor([[ret]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_whiten_masked_moments():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, generator=gen) * 4 + 7
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    out = whiten(values, mask)
    kept = out[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert kept.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert (out[~mask.bool()] == 0).all()
    # hand example: entries [1, 3] -> mean 2, var 1 -> [-1, 1]
    assert whiten(torch.tensor([[1.0, 3.0, 50.0]]), torch.tensor([[1.0, 1.0, 0.0]])).tolist()[0] == \
        pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)


def test_masked_mean_and_gather_log_probs():
    assert masked_mean(torch.tensor([[1.0, 2.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])).item() == 1.5
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # probs [0.5, 0.5] and [0.75, 0.25]
    got = gather_log_probs(logits, torch.tensor([[1, 0]]))
    assert got.tolist()[0] == pytest.approx([math.log(0.5), math.log(0.75)], abs=1e-6)
