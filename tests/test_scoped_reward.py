"""utils.reward.dual_reward over two gloo ranks holding unequal slices of one batch (R_A's scope), and its
extras beyond the paper as step 3 uses them."""
from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from utils.reward import RewardSettings, dual_reward

QUALITY = [1.0, 0.0, 0.5, 0.2, 0.9, 0.1, 0.7, 0.3]
CONFIDENCE = [0.8, 0.6, 0.1, 0.3, 0.9, 0.2, 0.4, 0.7]
SLICES = [(0, 3), (3, 8)]  # rank 0 holds 3 rollouts, rank 1 holds 5


def _settings(scope: str, reduction: str) -> RewardSettings:
    return RewardSettings(alpha=0.5, align_reward_scope=scope, align_reward_reduction=reduction, clip_reward_value=5.0,
                          quality_reward="model", score_with_confidence=False, missing_confidence=0.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        lo, hi = SLICES[rank]
        quality, confidence = torch.tensor(QUALITY[lo:hi]), torch.tensor(CONFIDENCE[lo:hi])
        results = {}
        for scope in ("global", "device"):
            for reduction in ("sum", "mean"):
                out = dual_reward(quality, confidence, _settings(scope, reduction), step=0)
                results[f"{scope}-{reduction}"] = {
                    "total": out.total.tolist(), "alignment": out.alignment.tolist(),
                    "scope_size": out.scope_size, "wrong_way_share": out.wrong_way_share}
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump(results, handle)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("scoped")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=2, join=True)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def _single(quality, confidence, scope, reduction):
    return dual_reward(torch.tensor(quality), torch.tensor(confidence), _settings(scope, reduction), step=0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("rank", [0, 1])
def test_global_scope_equals_whole_batch(rank_results, rank, reduction):
    whole = _single(QUALITY, CONFIDENCE, "global", reduction)  # one process: the whole batch
    lo, hi = SLICES[rank]
    got = rank_results[rank][f"global-{reduction}"]
    assert len(got["total"]) == hi - lo
    assert got["total"] == pytest.approx(whole.total[lo:hi].tolist(), abs=1e-6)
    assert got["alignment"] == pytest.approx(whole.alignment[lo:hi].tolist(), abs=1e-6)
    assert got["scope_size"] == 8
    assert got["wrong_way_share"] == pytest.approx(whole.wrong_way_share)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("rank", [0, 1])
def test_device_scope_is_per_slice(rank_results, rank, reduction):
    lo, hi = SLICES[rank]
    own = _single(QUALITY[lo:hi], CONFIDENCE[lo:hi], "device", reduction)
    whole = _single(QUALITY, CONFIDENCE, "global", reduction)
    got = rank_results[rank][f"device-{reduction}"]
    assert got["scope_size"] == hi - lo
    assert got["total"] == pytest.approx(own.total.tolist(), abs=1e-6)
    assert got["alignment"] == pytest.approx(own.alignment.tolist(), abs=1e-6)
    # and it really differs from the global scope
    assert got["alignment"] != pytest.approx(whole.alignment[lo:hi].tolist(), abs=1e-4)


def test_single_process_hand_value():
    # batch of 3 from rank 0's slice, sum: R_A(0) = (1-0)(0.8-0.6) + (1-0.5)(0.8-0.1) = 0.2 + 0.35 = 0.55
    out = _single(QUALITY[:3], CONFIDENCE[:3], "device", "sum")
    assert out.alignment[0].item() == pytest.approx(0.55, abs=1e-6)
    assert out.total[0].item() == pytest.approx(1.0 + 0.5 * 0.55, abs=1e-6)


def test_confidence_terms_go_to_the_confidence_tokens_only_when_asked():
    q, c = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.9, 0.8, 0.1])
    base = dict(alpha=1.0, align_reward_scope="device", align_reward_reduction="mean", clip_reward_value=5.0,
                quality_reward="oracle", score_with_confidence=False, missing_confidence=0.0)
    plain = dual_reward(q, c, RewardSettings(**base), step=0)
    routed = dual_reward(q, c, RewardSettings(**base, alignment_on_confidence_tokens=True), step=0)
    assert torch.allclose(plain.total, q + plain.alignment)  # alpha = 1
    assert torch.allclose(routed.total, q)  # the sequence reward keeps the quality only
    assert torch.allclose(routed.confidence_terms, plain.alignment)
    big = dict(base, alpha=32.0)  # dR/dr = 1 + 32·(c_i − c̄) < 0 for the low-confidence rollout
    assert dual_reward(q, c, RewardSettings(**big), step=0).wrong_way_share > 0
    assert dual_reward(q, c, RewardSettings(**big, alignment_on_confidence_tokens=True), step=0).wrong_way_share == 0
    scored = dual_reward(q, c, RewardSettings(**base, confidence_scoring_rule="brier", confidence_scoring_weight=2.0),
                         step=0)
    assert torch.allclose(scored.total, q + plain.alignment - 2.0 * (c - q) ** 2)


def test_reward_model_inputs_end_on_eos_whatever_stop_token_ended_the_rollout():
    from step3_RL_finetune_LLM.experience import reward_model_inputs

    eos, eot, pad = 2, 9, 0
    batch = reward_model_inputs([[5], [5], [5]], [[7, 8, eos], [7, 8, eot], [7, 8, 3, 4]], [3, 3, 2], eos, pad,
                                stop_ids=[eos, eot])
    assert batch["input_ids"].tolist() == [[5, 7, 8, eos], [5, 7, 8, eos], [5, 7, 8, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1]] * 3


# ---------------------------------------------------------------- no escape through a missing confidence

def _terms(quality, confidence, stated, policy, rule="brier", on_tokens=True, center=False):
    settings = RewardSettings(alpha=4.0, align_reward_scope="device", align_reward_reduction="mean",
                              clip_reward_value=5.0, quality_reward="oracle", score_with_confidence=False,
                              missing_confidence=0.0, confidence_scoring_rule=rule, confidence_scoring_weight=2.0,
                              alignment_on_confidence_tokens=on_tokens, missing_confidence_policy=policy,
                              center_confidence_terms=center)
    out = dual_reward(torch.tensor(quality), torch.tensor(confidence), settings, 0, torch.tensor(stated))
    return out.confidence_terms + (0.0 if on_tokens else out.total)


@pytest.mark.parametrize("rule", ["none", "brier", "log"])
@pytest.mark.parametrize("on_tokens", [True, False])
@pytest.mark.parametrize("center", [False, True])
def test_dropping_the_confidence_never_pays_under_the_worst_policy(rule, on_tokens, center):
    quality = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    confidence = [0.9, 0.2, 0.4, 0.6, 0.1, 0.7]
    for i in range(len(quality)):
        stated = [j != i for j in range(len(quality))]
        silent = _terms(quality, confidence, stated, "worst", rule, on_tokens, center)[i]
        for c in torch.linspace(0, 1, 11).tolist():
            spoken = confidence.copy()
            spoken[i] = c
            assert silent <= _terms(quality, spoken, [True] * len(quality), "worst", rule, on_tokens, center)[i] + 1e-6


@pytest.mark.parametrize("rule", ["none", "brier"])
def test_centered_confidence_terms_have_zero_mean_and_keep_their_differences(rule):
    quality, confidence = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0], [0.9, 0.2, 0.4, 0.6, 0.1, 0.7]
    raw = _terms(quality, confidence, [True] * 6, "worst", rule)
    centered = _terms(quality, confidence, [True] * 6, "worst", rule, center=True)
    assert abs(centered.mean().item()) < 1e-6 and raw.mean().abs() > 1e-3
    assert torch.allclose(centered - centered[0], raw - raw[0], atol=1e-6)


def test_the_fixed_policy_lets_a_wrong_answer_escape_the_brier_term():
    """The defect the worst policy fixes: a wrong answer that states nothing counts as confidence 0.0,
    the best Brier score it could get, better than any honest confidence above 0."""
    quality = [1.0, 0.0, 1.0, 0.0]
    # the experience maker fills the unstated confidence with --missing_confidence (0.0) before scoring
    silent = _terms(quality, [0.9, 0.0, 0.8, 0.3], [True, False, True, True], "fixed", "brier")[1]
    spoken = _terms(quality, [0.9, 0.3, 0.8, 0.3], [True] * 4, "fixed", "brier")[1]
    worst = _terms(quality, [0.9, 0.0, 0.8, 0.3], [True, False, True, True], "worst", "brier")[1]
    assert silent > spoken > worst


def test_confidence_terms_reach_the_last_token_of_a_rollout_without_confidence():
    from step3_RL_finetune_LLM.experience import on_confidence_tokens

    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]).float()
    terms = torch.tensor([2.0, -3.0])
    # row 0 states its confidence from token 2 on; row 1 states none (its cut is its length, 3)
    added = on_confidence_tokens(terms, [2, 3], mask)
    assert added.tolist() == [[0, 0, 2, 2, 0], [0, 0, -3, 0, 0]]


def test_a_tagless_rollout_is_penalised_where_it_dropped_the_tag_not_on_its_answer(toy_tokenizer):
    """" black\n4" (the seed-7 collapse): the terms fall on the tokens of "\n4</s>", never on " black";
    a tagged rollout keeps them on its confidence span, a one-line silent rollout on its last token."""
    from step3_RL_finetune_LLM.experience import confidence_term_starts, on_confidence_tokens
    from utils.confidence import confidence_cut_index, parse_confidence

    texts = [" black\n### Confidence: 0.4</s>", " black\n4</s>", " black</s>"]
    responses = [toy_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    parsed = [parse_confidence(t) for t in texts]
    cuts = [confidence_cut_index(r, toy_tokenizer) for r in responses]
    starts = confidence_term_starts(responses, parsed, cuts, toy_tokenizer)
    width = max(map(len, responses))
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in responses])
    added = on_confidence_tokens(torch.tensor([1.0, -1.0, -1.0]), starts, mask)
    for row, response in zip(added, responses):
        hit = [i for i, v in enumerate(row.tolist()) if v != 0]
        assert toy_tokenizer.decode(response[:hit[0]]) == " black"
    assert toy_tokenizer.decode(responses[0][starts[0]:]).startswith("\n### Confidence")
    assert toy_tokenizer.decode(responses[1][starts[1]:]) == "\n4</s>"
    assert starts[2] == len(responses[2]) and added[2].nonzero().flatten().tolist() == [len(responses[2]) - 1]


def _scored(warmup: int) -> RewardSettings:
    return RewardSettings(alpha=0.0, align_reward_scope="device", align_reward_reduction="mean", clip_reward_value=50.0,
                          quality_reward="oracle", score_with_confidence=False, missing_confidence=0.0,
                          confidence_scoring_rule="brier", confidence_scoring_weight=32.0,
                          confidence_scoring_warmup_steps=warmup)


def test_the_scoring_weight_ramps_linearly_over_the_warm_up_then_stays():
    assert [_scored(4).confidence_scoring_weight_at(step) for step in range(6)] == [8.0, 16.0, 24.0, 32.0, 32.0, 32.0]
    assert [_scored(0).confidence_scoring_weight_at(step) for step in (0, 1, 300)] == [32.0] * 3


def test_the_reward_takes_the_warm_up_weight_of_its_step():
    """The settings never change during a run: the reward computes the weight from the step it is given."""
    q, c = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.9, 0.8, 0.1])
    for step, weight in ((0, 8.0), (2, 24.0), (9, 32.0)):
        assert torch.allclose(dual_reward(q, c, _scored(4), step).total, q - weight * (c - q) ** 2)


def test_the_settings_are_the_flags_of_the_same_names():
    from step3_RL_finetune_LLM.ppo import ppo_settings
    from step3_RL_finetune_LLM.trainer import build_parser
    from utils.reward import reward_settings

    required = ["--data_path", "d", "--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c",
                "--output_dir", "o"]
    assert reward_settings(build_parser().parse_args(required)).missing_confidence_policy == "fixed"
    args = build_parser().parse_args([*required, "--missing_confidence_policy", "worst", "--alpha", "3",
                                      "--confidence_scoring_warmup_steps", "7", "--gamma", "0.5", "--cliprange", "0.3",
                                      "--unsup_coef", "2"])
    rewarding, ppo = reward_settings(args), ppo_settings(args)
    assert (rewarding.missing_confidence_policy, rewarding.alpha, rewarding.confidence_scoring_warmup_steps) == (
        "worst", 3.0, 7)
    assert (ppo.gamma, ppo.cliprange, ppo.unsup_coef) == (0.5, 0.3, 2.0)
