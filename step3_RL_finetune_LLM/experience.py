"""Rollouts and their rewards: sample, parse the confidence, score quality, then the dual reward
(:func:`utils.reward.dual_reward`), the KL penalty and GAE."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Collection, Sequence

import torch

from step3_RL_finetune_LLM.ppo import PPOSettings, gae, last_token_index, token_rewards
from utils.answer_match import exact_match
from utils.collate import pad_batch
from utils.confidence import (ParsedConfidence, answer_line_end_index, confidence_cut_index, extract_answer,
                              parse_confidence, parse_failure_rate, resolve_confidence)
from utils.generation import GenerationSettings, generate, response_ids, stop_token_ids
from utils.lora import lora_fused
from utils.model import gather_log_probs, position_ids, sequence_scores, token_values, unwrapped_for_generation
from utils.profiling import PhaseTimer
from utils.reward import DualReward, RewardSettings, dual_reward


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


class ExperienceMaker:
    def __init__(self, engines, tokenizer, generation: GenerationSettings, reward_settings: RewardSettings,
                 ppo_settings: PPOSettings, timer: PhaseTimer | None = None):
        self.engines, self.tokenizer, self.generation = engines, tokenizer, generation
        self.reward_settings, self.ppo_settings = reward_settings, ppo_settings
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
    def make(self, prompt_ids: Sequence[Sequence[int]], golds: Sequence[Sequence[str]] | None, step: int) -> Experience:
        """The experience of PPO step ``step`` (0-based: the reward's warm-up depends on it)."""
        with self.timer("generation"):
            sequences, attention_mask, width, log_probs = self.rollout(prompt_ids)
        with self.timer("experience"):
            return self._experience(prompt_ids, golds, sequences, attention_mask, width, log_probs, step)

    def _experience(self, prompt_ids, golds, sequences: torch.Tensor, attention_mask: torch.Tensor,
                    width: int, log_probs: torch.Tensor, step: int) -> Experience:
        """Rewards, reference log-probs, values and advantages of a batch of rollouts."""
        device = self.engines.actor.device
        settings, ppo = self.reward_settings, self.ppo_settings
        responses = response_ids(sequences, attention_mask, width)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        parsed = [parse_confidence(t) for t in texts]
        answers = [extract_answer(t) for t in texts]
        confidence = torch.tensor([resolve_confidence(p, settings.missing_confidence) for p in parsed])
        stated = torch.tensor([p.value is not None for p in parsed])
        stops = stop_token_ids(self.engines.actor.module, self.tokenizer.eos_token_id)
        truncated = torch.tensor([not r or r[-1] not in stops for r in responses])  # cut by --max_answer_seq_len
        correct = oracle_quality(answers, golds) if golds is not None else None
        # where the answer ends, decoded once for whichever of its two users is on
        needs_cuts = settings.alignment_on_confidence_tokens or (
            settings.quality_reward == "model" and not settings.score_with_confidence)
        cuts = [confidence_cut_index(r, self.tokenizer) for r in responses] if needs_cuts else None
        quality = (correct if settings.quality_reward == "oracle"
                   else self._model_quality(prompt_ids, responses, cuts, stops))
        reward = dual_reward(quality.float(), confidence.float(), settings, step, stated, truncated)

        self.engines.actor.eval()
        self.engines.critic.eval()
        mask = attention_mask[:, width:].float()
        ref_log_probs = response_log_probs(self.engines.ref, sequences, attention_mask, width,
                                           self.generation.temperature)
        values = response_values(self.engines.critic, sequences, attention_mask, width).float()
        rewards, kl = token_rewards(log_probs, ref_log_probs, reward.total.to(device), mask, ppo.kl_ctl)
        advantages, returns = gae(rewards, values, mask, ppo.gamma, ppo.lam)
        routed = None
        if settings.alignment_on_confidence_tokens:
            starts = confidence_term_starts(responses, parsed, cuts, self.tokenizer)
            routed = on_confidence_tokens(reward.confidence_terms.to(device), starts, mask)
        experience = Experience(sequences, attention_mask, width, mask, log_probs, values, advantages, returns,
                                temperature=self.generation.temperature, routed_advantages=routed)
        experience.stats = self._stats(quality, confidence, parsed, correct, reward, kl, mask, truncated, step)
        return experience

    def _model_quality(self, prompt_ids, responses, cuts: list[int] | None, stops: Collection[int]) -> torch.Tensor:
        """Reward-model scores of the answers (``cuts`` None: of the whole responses, confidence kept)."""
        cuts = [len(r) for r in responses] if self.reward_settings.score_with_confidence else cuts
        batch = reward_model_inputs(prompt_ids, responses, cuts, self.tokenizer.eos_token_id,
                                    self.tokenizer.pad_token_id, stops)
        engine = self.engines.reward
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        return sequence_scores(engine, batch["input_ids"], batch["attention_mask"]).float().cpu()

    def _stats(self, quality, confidence, parsed: list[ParsedConfidence], correct, reward: DualReward, kl, mask,
               truncated: torch.Tensor, step: int) -> dict[str, float]:
        settings = self.reward_settings
        stats_ = {"quality_reward": quality.mean().item(), "alignment_reward": reward.alignment.mean().item(),
                  "total_reward": reward.total.mean().item(), "confidence_mean": confidence.mean().item(),
                  "parse_failure_rate": parse_failure_rate(parsed), "kl": (kl.sum(1)).mean().item(),
                  "response_length": mask.sum(1).mean().item(), "wrong_way_share": reward.wrong_way_share,
                  "spearman_quality_confidence": reward.spearman_quality_confidence,
                  "align_scope_size": float(reward.scope_size), "truncated_rate": truncated.float().mean().item()}
        if correct is not None:
            stats_["accuracy"] = correct.mean().item()
        if settings.confidence_scoring_rule != "none":
            stats_["confidence_scoring_weight"] = settings.confidence_scoring_weight_at(step)  # ramps with the warm-up
        if stats_["wrong_way_share"] > 0 and not self._warned_wrong_way:
            self._warned_wrong_way = True
            reduction = settings.align_reward_reduction
            remedy = "lower --alpha" + (" or use --align_reward_reduction mean" if reduction == "sum" else "")
            warnings.warn(f"{100 * stats_['wrong_way_share']:.0f}% of rollouts have dR/dr < 0: with alpha="
                          f"{settings.alpha} and the '{reduction}' reduction the reward pays them "
                          f"to answer worse; {remedy} (logged as wrong_way_share)", stacklevel=2)
        return stats_
