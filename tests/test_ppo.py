"""step3 ppo: GAE, per-token rewards, clipped losses and whitening against hand-computed values; the update
stays on-policy (the sampler's log-probs, the routed terms kept out of whitening, reshuffled PPO epochs)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from step3_RL_finetune_LLM import trainer
from step3_RL_finetune_LLM.experience import Experience, ExperienceMaker
from step3_RL_finetune_LLM.ppo import (PPOSettings, actor_loss, critic_loss, gae, last_token_index,
                                       masked_mean, token_rewards, whiten)
from utils.generation import GenerationSettings
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


def test_actor_loss_stays_finite_under_a_huge_drift_after_eos():
    """exp(1000) is inf; unmasked, the padded position's 0 advantage times inf made the whole loss NaN."""
    log_probs = torch.tensor([[math.log(1.5), 1000.0]])
    loss = actor_loss(log_probs, torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.2, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_stored_old_log_probs_are_the_samplers(temperature):
    """The old log-prob of each sampled token equals log_softmax of the scores ``generate`` drew it from
    (after its temperature warper), at T = 1 and at T = 0.5, where the raw logits gave another policy."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=0,
                                         eos_token_id=2)).eval()
    sampled = []
    plain_generate = model.generate

    def generate_keeping_scores(**kwargs):  # the sampler's processed distribution, step by step
        out = plain_generate(**kwargs, output_scores=True, return_dict_in_generate=True)
        sampled.append(torch.stack(out.scores, dim=1).log_softmax(-1))
        return out.sequences

    model.generate = generate_keeping_scores
    engines = SimpleNamespace(actor=SimpleNamespace(module=model, device=torch.device("cpu"),
                                                    zero_optimization_stage=lambda: 0))
    maker = ExperienceMaker(engines, SimpleNamespace(pad_token_id=0, eos_token_id=2),
                            GenerationSettings(max_new_tokens=6, temperature=temperature), reward_settings=None,
                            ppo_settings=None)
    sequences, attention_mask, width, log_probs = maker.rollout([[5, 9, 13], [7, 21, 3, 4, 60]])
    response, mask = sequences[:, width:], attention_mask[:, width:].bool()
    sampler = sampled[0].gather(-1, response[..., None]).squeeze(-1)
    assert (log_probs[mask] - sampler[mask]).abs().max().item() < 1e-5


class _Engine:
    device = torch.device("cpu")

    def train(self):
        pass

    def backward(self, loss):
        pass

    def step(self):
        pass


def _update(monkeypatch, experience: Experience, **flags) -> list[dict]:
    """``ppo_update`` with stand-in engines and forwards: what each actor minibatch saw (rows = column 0)."""
    seen = []
    zeros = lambda seq: torch.zeros(seq.shape[0], experience.mask.shape[1])  # noqa: E731
    monkeypatch.setattr(trainer, "response_log_probs", lambda model, seq, am, width, temperature=1.0:
                        seen.append({"rows": seq[:, 0].tolist(), "temperature": temperature}) or zeros(seq))
    monkeypatch.setattr(trainer, "response_values", lambda critic, seq, am, width: zeros(seq))
    monkeypatch.setattr(trainer, "actor_loss", lambda lp, old, advantages, mask, clip:
                        seen[-1].update(advantages=advantages) or torch.tensor(0.0))
    ppo = PPOSettings(**{"kl_ctl": 0.1, "gamma": 1.0, "lam": 0.95, "whiten_advantages": False, "ppo_epochs": 1,
                         "per_device_training_batch_size": 2, "cliprange": 0.2, "cliprange_value": 0.2,
                         "unsup_coef": 0.0, **flags})
    trainer.ppo_update(SimpleNamespace(actor=_Engine(), critic=_Engine()), experience, ppo)
    return seen


def _experience(rows: int, advantages: torch.Tensor | None = None, **fields) -> Experience:
    width = 4 if advantages is None else advantages.shape[1]
    advantages = torch.zeros(rows, width) if advantages is None else advantages
    sequences = torch.arange(rows)[:, None].repeat(1, width + 1)  # column 0 names the row
    mask = torch.ones(rows, width)
    return Experience(sequences, torch.ones(rows, width + 1, dtype=torch.long), 1, mask, torch.zeros(rows, width),
                      torch.zeros(rows, width), advantages, torch.zeros(rows, width), **fields)


def test_the_update_scores_under_the_rollouts_temperature(monkeypatch):
    seen = _update(monkeypatch, _experience(4, temperature=0.7))
    assert [s["temperature"] for s in seen] == [0.7, 0.7]


def test_whitening_keeps_the_answer_tokens_blind_to_the_routed_confidence_terms(monkeypatch):
    """2 x 4: answer tokens 0-1, confidence tokens 2-3. Only the confidence terms differ between the two runs;
    whitened together with them, row 0's answer tokens went from [1.75, 0.88] to [0.29, 0.00]."""
    gae_part = torch.tensor([[1.0, 0.5, 0.2, 0.1], [-1.0, -0.5, -0.2, -0.1]])
    answers = []
    for terms in ([0.0, 0.0], [3.0, -1.0]):
        routed = torch.tensor([[0.0, 0.0, terms[0], terms[0]], [0.0, 0.0, terms[1], terms[1]]])
        seen = _update(monkeypatch, _experience(2, gae_part, routed_advantages=routed), whiten_advantages=True)
        answers.append(seen[0]["advantages"][:, :2])
    assert torch.equal(answers[0], answers[1])
    assert torch.allclose(answers[0], whiten(gae_part, torch.ones(2, 4))[:, :2])


def test_ppo_epochs_after_the_first_reshuffle_the_minibatches_reproducibly(monkeypatch):
    def orders(seed: int) -> list[list[int]]:
        torch.manual_seed(seed)  # as the trainer does before each step's rollouts
        seen = _update(monkeypatch, _experience(8), ppo_epochs=3)
        return [sum((s["rows"] for s in seen[e * 4:(e + 1) * 4]), []) for e in range(3)]

    first = orders(0)
    assert first[0] == list(range(8))  # as before: --ppo_epochs 1 is unchanged
    assert all(sorted(epoch) == list(range(8)) for epoch in first[1:])
    assert first[1] != list(range(8)) and first[1] != first[2]
    assert orders(0) == first  # seeded: a resumed run repeats it
