"""Rollouts and their rewards: sample, parse the confidence, score quality, the CONQORD dual reward."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Collection, Sequence

import numpy as np
import torch
from scipy import stats

from step3_RL_finetune_LLM.ppo import gae, last_token_index, token_rewards
from utils import dist
from utils.answer_match import exact_match
from utils.confidence import (ParsedConfidence, answer_line_end_index, confidence_cut_index, extract_answer,
                              parse_confidence, parse_failure_rate, resolve_confidence)
from utils.data import pad_batch
from utils.generation import GenerationSettings, generate, response_ids, stop_token_ids
from utils.lora import lora_fused
from utils.model import gather_log_probs, position_ids, sequence_scores, token_values, unwrapped_for_generation
from utils.profiling import PhaseTimer
from utils.reward import (confidence_score, dual_reward, quality_target, worst_case_alignment_confidence,
                          worst_case_confidence_score, wrong_way_share)


@dataclass
class RewardSettings:
    alpha: float
    scope: str  # "global" | "device"
    reduction: str  # "mean" | "sum"
    clip: float
    quality: str  # "model" | "oracle"
    score_with_confidence: bool
    missing_confidence: float
    kl_ctl: float
    gamma: float
    lam: float
    scoring_rule: str = "none"  # beyond the paper: a proper scoring rule on the stated confidence
    scoring_weight: float = 0.0
    alignment_on_confidence_tokens: bool = False  # beyond the paper: confidence terms → confidence tokens only
    missing_policy: str = "fixed"  # "fixed": missing_confidence in every term; "worst": each term's minimum
    center_confidence_terms: bool = False  # subtract their mean over the scope: the baseline the critic never gives
    missing_eos_penalty: float = 0.0  # TRL's: off the sequence reward of a rollout cut by the length limit


@dataclass
class Experience:
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    mask: torch.Tensor  # response positions
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0  # the sampler's: the update's log-probs must be of the same distribution
    # the confidence terms on the confidence tokens (--alignment_on_confidence_tokens), kept apart from
    # ``advantages`` so that whitening never moves the answer tokens' advantages with them
    routed_advantages: torch.Tensor | None = None


def response_log_probs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                       temperature: float = 1.0) -> torch.Tensor:
    """log π of every response token (positions ``prompt_width…``), shape (batch, response_len), under the
    distribution the rollouts are sampled from: the logits divided by ``temperature`` (TRL's form). Raw
    logits at T ≠ 1 would make the ratio and the KL describe another policy than the sampler's."""
    # the LM head only where a response token is predicted (positions prompt_width-1 … end-1)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   use_cache=False, logits_to_keep=sequences.shape[1] - prompt_width + 1).logits[:, :-1]
    if temperature != 1.0:  # skipped at 1.0: no second copy of the logits (the division would be exact anyway)
        logits = logits.float() / temperature
    return gather_log_probs(logits, sequences[:, prompt_width:])


def response_values(critic, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """The critic's value of the state before each response token."""
    return token_values(critic, sequences, attention_mask)[:, prompt_width - 1:-1]


def oracle_quality(answers: Sequence[str], golds: Sequence[Sequence[str]]) -> torch.Tensor:
    """Exact-match correctness (1.0 / 0.0) as the quality reward (toy world)."""
    return torch.tensor([float(exact_match(a, g)) for a, g in zip(answers, golds)])


def reward_model_inputs(prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], cuts: Sequence[int],
                        eos_id: int, pad_id: int, stop_ids: Collection[int] = ()) -> dict[str, torch.Tensor]:
    """``prompt + answer + EOS`` per rollout (right-padded), as the reward model was trained on. A response
    that ended on another stop token (Llama-3's ``<|eot_id|>``) ends on EOS instead, not on both."""
    ends = {eos_id, *stop_ids}
    rows = []
    for p, r, cut in zip(prompt_ids, responses, cuts):
        answer = list(r[:cut])
        if answer and answer[-1] in ends:
            answer.pop()
        rows.append(list(p) + answer + [eos_id])
    return {"input_ids": pad_batch(rows, pad_id), "attention_mask": pad_batch([[1] * len(r) for r in rows], 0)}


def scoped_dual_reward(quality: torch.Tensor, confidence: torch.Tensor, settings: RewardSettings,
                       stated: torch.Tensor | None = None, truncated: torch.Tensor | None = None) -> dict:
    """The dual reward over the rollouts in scope: all ranks' (gathered) or this rank's; returns this
    rank's rewards and batch diagnostics computed over the same scope.

    ``stated`` (bool per rollout, default all True) marks the rollouts whose confidence parsed; under
    ``missing_policy="worst"`` the others get, in R_A and in the scoring rule, the worst value they could
    have stated, so dropping the confidence never pays. ``truncated`` (bool per rollout) marks the rollouts
    that ended without a stop token; their sequence reward loses ``missing_eos_penalty`` before the clip
    (the reward model sees them closed by EOS, so it cannot see the cut). The quality that R_A and the
    scoring rule compare the confidence with stays the answer's."""
    worst = settings.missing_policy == "worst"
    stated = torch.ones_like(quality, dtype=torch.bool) if stated is None else stated.bool()
    offset, scope_q, scope_c, scope_stated = 0, quality, confidence, stated
    if settings.scope == "global":
        scope_q, offset = dist.all_gather_variable(quality)
        scope_c, _ = dist.all_gather_variable(confidence)
        if worst:
            scope_stated = dist.all_gather_variable(stated.float())[0].bool()
    if worst:
        scope_c = worst_case_alignment_confidence(scope_q, scope_c, scope_stated)
    reward = dual_reward(scope_q, scope_c, settings.alpha, settings.reduction, settings.clip)
    mine = slice(offset, offset + quality.numel())
    confidence_terms = settings.alpha * reward.alignment[mine]
    if settings.scoring_rule != "none":
        target = quality_target(quality, settings.quality)
        score = (worst_case_confidence_score(confidence, target, stated, settings.scoring_rule) if worst
                 else confidence_score(confidence, target, settings.scoring_rule))
        confidence_terms = confidence_terms + settings.scoring_weight * score
    if settings.center_confidence_terms:
        confidence_terms = confidence_terms - _scope_mean(confidence_terms, settings.scope)
    spearman = np.nan
    if scope_q.unique().numel() > 1 and scope_c.unique().numel() > 1:
        spearman = stats.spearmanr(scope_q.cpu().numpy(), scope_c.cpu().numpy()).statistic
    # routed, the sequence keeps the quality (see ExperienceMaker._experience)
    sequence = quality if settings.alignment_on_confidence_tokens else quality + confidence_terms
    if truncated is not None:
        sequence = sequence - settings.missing_eos_penalty * truncated.float()
    total = torch.clamp(sequence, -settings.clip, settings.clip)
    return {"total": total, "confidence_terms": confidence_terms, "alignment": reward.alignment[mine],
            "scope_size": scope_q.numel(),
            # routed to the confidence tokens, R_A never reaches the answer: dR/dr is 1 for every rollout
            "wrong_way_share": (wrong_way_share(scope_c, settings.alpha, settings.reduction)
                                if settings.alpha > 0 and not settings.alignment_on_confidence_tokens else 0.0),
            "spearman_quality_confidence": float(spearman)}


def scoring_weight_at(step: int, weight: float, warmup_steps: int) -> float:
    """The scoring rule's weight for the rollouts of PPO step ``step`` (0-based): ``weight`` times the share of
    the warm-up done, full after ``warmup_steps`` (0: full from the start). A constant confidence at the base
    rate is the scoring rule's quickest gain; reached first, it leaves R_A no spread of confidences to order."""
    return weight if warmup_steps == 0 else weight * min(1.0, (step + 1) / warmup_steps)


def on_confidence_tokens(confidence_terms: torch.Tensor, cuts: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """Each rollout's confidence terms as an advantage on its confidence tokens (response positions from
    its cut on), shape (batch, response_len). A cut past the response's end (a one-line rollout that
    stopped without a confidence) falls on its last token, where it chose to stop: else the terms would
    reach no token at all and silence would escape them."""
    starts = torch.minimum(torch.tensor(list(cuts), device=mask.device), last_token_index(mask))
    positions = torch.arange(mask.shape[1], device=mask.device)
    return confidence_terms[:, None] * (positions[None, :] >= starts[:, None]).float() * mask


def confidence_term_starts(responses: Sequence[Sequence[int]], parsed: Sequence[ParsedConfidence],
                           cuts: Sequence[int], tokenizer) -> list[int]:
    """Where each rollout's confidence terms start: its confidence tag (``cuts``), or, for a rollout with
    no tag, the end of its answer line, where it left the format (``" black\\n4"``): the penalty of a
    missing confidence then falls on the tokens that dropped the tag, not on its final EOS."""
    return [answer_line_end_index(r, tokenizer) if p.status == "missing" else cut
            for r, p, cut in zip(responses, parsed, cuts)]


def _scope_mean(values: torch.Tensor, scope: str) -> torch.Tensor:
    """Mean over the rollouts in scope: all ranks' (``"global"``) or this rank's."""
    if scope != "global":
        return values.mean()
    totals = dist.all_reduce_sum(torch.stack([values.sum(), torch.tensor(float(values.numel()), device=values.device)]))
    return totals[0] / totals[1]


class ExperienceMaker:
    def __init__(self, engines, tokenizer, generation: GenerationSettings, settings: RewardSettings,
                 timer: PhaseTimer | None = None):
        self.engines, self.tokenizer, self.generation, self.settings = engines, tokenizer, generation, settings
        self.timer = timer or PhaseTimer()  # "generation" and "experience" seconds
        self._warned_wrong_way = False

    @torch.no_grad()
    def rollout(self, prompt_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """Sample, then score the samples (log π of each response token) on the same gathered, hook-free
        weights: under ZeRO-3 a second forward through the engine would fetch every layer again."""
        actor = self.engines.actor
        with unwrapped_for_generation(actor) as model:
            model.eval()
            fused = lora_fused(model) if actor.zero_optimization_stage() == 3 else contextlib.nullcontext(model)
            # unfolding restores the weights bit for bit, so the old log-probs below are of the stored weights. The
            # samples come from the folded ones: in bf16 up to 1.2e-2 nats/token apart (mean 2.4e-3; fp32: 1e-6)
            with fused:
                sequences, attention_mask, width = generate(model, prompt_ids, self.generation,
                                                            self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
            sequences, attention_mask = sequences.to(actor.device), attention_mask.to(actor.device)
            # outside lora_fused: LoRA unfused, as the update's forward computes it
            log_probs = response_log_probs(model, sequences, attention_mask, width, self.generation.temperature)
        return sequences, attention_mask, width, log_probs

    @torch.no_grad()
    def make(self, prompt_ids: Sequence[Sequence[int]], golds: Sequence[Sequence[str]] | None) -> Experience:
        with self.timer("generation"):
            sequences, attention_mask, width, log_probs = self.rollout(prompt_ids)
        with self.timer("experience"):
            return self._experience(prompt_ids, golds, sequences, attention_mask, width, log_probs)

    def _experience(self, prompt_ids, golds, sequences: torch.Tensor, attention_mask: torch.Tensor,
                    width: int, log_probs: torch.Tensor) -> Experience:
        """Rewards, reference log-probs, values and advantages of a batch of rollouts."""
        device = self.engines.actor.device
        responses = response_ids(sequences, attention_mask, width)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        parsed = [parse_confidence(t) for t in texts]
        answers = [extract_answer(t) for t in texts]
        confidence = torch.tensor([resolve_confidence(p, self.settings.missing_confidence) for p in parsed])
        stated = torch.tensor([p.value is not None for p in parsed])
        stops = stop_token_ids(self.engines.actor.module, self.tokenizer.eos_token_id)
        truncated = torch.tensor([not r or r[-1] not in stops for r in responses])  # cut by --max_answer_seq_len
        correct = oracle_quality(answers, golds) if golds is not None else None
        # where the answer ends, decoded once for whichever of its two users is on
        needs_cuts = self.settings.alignment_on_confidence_tokens or (
            self.settings.quality == "model" and not self.settings.score_with_confidence)
        cuts = [confidence_cut_index(r, self.tokenizer) for r in responses] if needs_cuts else None
        quality = (correct if self.settings.quality == "oracle"
                   else self._model_quality(prompt_ids, responses, cuts, stops))
        reward = scoped_dual_reward(quality.float(), confidence.float(), self.settings, stated, truncated)

        self.engines.actor.eval()
        self.engines.critic.eval()
        mask = attention_mask[:, width:].float()
        ref_log_probs = response_log_probs(self.engines.ref, sequences, attention_mask, width,
                                           self.generation.temperature)
        values = response_values(self.engines.critic, sequences, attention_mask, width).float()
        rewards, kl = token_rewards(log_probs, ref_log_probs, reward["total"].to(device), mask, self.settings.kl_ctl)
        advantages, returns = gae(rewards, values, mask, self.settings.gamma, self.settings.lam)
        routed = None
        if self.settings.alignment_on_confidence_tokens:
            starts = confidence_term_starts(responses, parsed, cuts, self.tokenizer)
            routed = on_confidence_tokens(reward["confidence_terms"].to(device), starts, mask)
        experience = Experience(sequences, attention_mask, width, mask, log_probs, values, advantages, returns,
                                temperature=self.generation.temperature, routed_advantages=routed)
        experience.stats = self._stats(quality, confidence, parsed, correct, reward, kl, mask, truncated)
        return experience

    def _model_quality(self, prompt_ids, responses, cuts: list[int] | None, stops: Collection[int]) -> torch.Tensor:
        """Reward-model scores of the answers (``cuts`` None: of the whole responses, confidence kept)."""
        cuts = [len(r) for r in responses] if self.settings.score_with_confidence else cuts
        batch = reward_model_inputs(prompt_ids, responses, cuts, self.tokenizer.eos_token_id,
                                    self.tokenizer.pad_token_id, stops)
        engine = self.engines.reward
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        return sequence_scores(engine, batch["input_ids"], batch["attention_mask"]).float().cpu()

    def _stats(self, quality, confidence, parsed: list[ParsedConfidence], correct, reward, kl, mask,
               truncated: torch.Tensor) -> dict[str, float]:
        stats_ = {"quality_reward": quality.mean().item(), "alignment_reward": reward["alignment"].mean().item(),
                  "total_reward": reward["total"].mean().item(), "confidence_mean": confidence.mean().item(),
                  "parse_failure_rate": parse_failure_rate(parsed), "kl": (kl.sum(1)).mean().item(),
                  "response_length": mask.sum(1).mean().item(), "wrong_way_share": reward["wrong_way_share"],
                  "spearman_quality_confidence": reward["spearman_quality_confidence"],
                  "align_scope_size": float(reward["scope_size"]), "truncated_rate": truncated.float().mean().item()}
        if correct is not None:
            stats_["accuracy"] = correct.mean().item()
        if self.settings.scoring_rule != "none":
            stats_["confidence_scoring_weight"] = self.settings.scoring_weight  # ramps with the warm-up
        if stats_["wrong_way_share"] > 0 and not self._warned_wrong_way:
            self._warned_wrong_way = True
            remedy = "lower --alpha" + (" or use --align_reward_reduction mean" if self.settings.reduction == "sum" else "")
            warnings.warn(f"{100 * stats_['wrong_way_share']:.0f}% of rollouts have dR/dr < 0: with alpha="
                          f"{self.settings.alpha} and the '{self.settings.reduction}' reduction the reward pays them "
                          f"to answer worse; {remedy} (logged as wrong_way_share)", stacklevel=2)
        return stats_
