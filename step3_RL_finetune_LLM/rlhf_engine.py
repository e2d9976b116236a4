"""The four models of PPO as DeepSpeed engines: actor and critic train, reference and reward are frozen."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from utils import dist
from utils.ds_config import eval_ds_config, train_ds_config
from utils.errors import UserError
from utils.model import (CAUSAL_LM, REWARD_MODEL, apply_lora, checked_tokenizer, create_causal_lm, create_scalar_model,
                         require_checkpoint, require_vocabulary_fits)
from utils.training import build_engine, build_frozen_engine

STEP1 = "step 1 (bash step1_supervised_finetuning_LM/run_step1.sh)"
STEP2 = "step 2 (bash step2_reward_model/run_step2.sh)"


@dataclass
class Engines:
    actor: Any
    ref: Any
    critic: Any
    reward: Any | None  # None with --quality_reward oracle


def _train_config(args: argparse.Namespace, stage: int, world_size: int) -> dict[str, Any]:
    return train_ds_config(micro_batch_size=args.per_device_training_batch_size,
                           gradient_accumulation_steps=args.gradient_accumulation_steps,
                           world_size=world_size, zero_stage=stage, dtype=args.dtype, offload=args.offload,
                           gradient_clipping=args.gradient_clipping, zero3_settings=args.zero3_settings)


def _frozen_config(args: argparse.Namespace, stage: int, offload: bool, world_size: int) -> dict[str, Any]:
    # Frozen models follow ZeRO-3 when their trained twin uses it, else hold full weights (stage 0).
    return eval_ds_config(micro_batch_size=args.per_device_training_batch_size, world_size=world_size,
                          zero_stage=3 if stage == 3 else 0, dtype=args.dtype, offload=offload,
                          zero3_settings=args.zero3_settings)


def engine_configs(args: argparse.Namespace, world_size: int) -> dict[str, dict[str, Any] | None]:
    """The DeepSpeed config of each engine (``reward``: None with --quality_reward oracle); the dry run
    prints them for the launcher's world size."""
    return {"actor": _train_config(args, args.actor_zero_stage, world_size),
            "reference": _frozen_config(args, args.actor_zero_stage, args.offload_reference_model, world_size),
            "critic": _train_config(args, args.critic_zero_stage, world_size),
            "reward": _frozen_config(args, args.critic_zero_stage, False, world_size)
            if args.quality_reward == "model" else None}


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse unusable model folders before any weights load: each must be a model of its role's kind and,
    outside the dry run (config.json alone is enough there), hold its weights, share the actor's tokenizer
    and have an embedding that covers it."""
    loads = not args.dry_run
    require_checkpoint(args.actor_model_name_or_path, "--actor_model_name_or_path", STEP1, CAUSAL_LM, weights=loads)
    # any critic will do: from a causal LM its value head starts fresh, as PPO expects
    require_checkpoint(args.critic_model_name_or_path, "--critic_model_name_or_path", STEP2, weights=loads)
    reward = _reward_role(args)
    if reward is not None:
        require_checkpoint(*reward, REWARD_MODEL, weights=loads)
    if loads:
        _check_vocabularies(args)


def _reward_role(args: argparse.Namespace) -> tuple[str, str, str] | None:
    """Path, flag and producer of the frozen reward model; None with --quality_reward oracle."""
    if args.quality_reward != "model":
        return None
    if args.reward_model_name_or_path:
        return args.reward_model_name_or_path, "--reward_model_name_or_path", STEP2
    return (args.critic_model_name_or_path, "--critic_model_name_or_path (also the reward model: no "
            "--reward_model_name_or_path)", f"{STEP2}, or give the reward model as --reward_model_name_or_path")


def _check_vocabularies(args: argparse.Namespace) -> None:
    """The critic and reward model read the actor's token ids: same vocabulary, and embeddings that cover it
    (a mismatch is otherwise an IndexError mid-run, or scores of other tokens)."""
    tokenizer_flag = ("--tokenizer_model_name_or_path" if args.tokenizer_model_name_or_path
                      else "--actor_model_name_or_path")
    tokenizer_path = args.tokenizer_model_name_or_path or args.actor_model_name_or_path
    tokenizer, source = checked_tokenizer(tokenizer_path, tokenizer_flag), f"{tokenizer_flag} {tokenizer_path}"
    scalar_models = {args.critic_model_name_or_path: "--critic_model_name_or_path"}
    reward = _reward_role(args)
    if reward is not None:  # the critic's flag stays when it is the reward model too
        scalar_models.setdefault(reward[0], "--reward_model_name_or_path")
    for path, flag in scalar_models.items():
        _require_same_vocabulary(checked_tokenizer(path, flag).get_vocab(), tokenizer.get_vocab(), f"{flag} {path}",
                                 source)
    for path, flag in {args.actor_model_name_or_path: "--actor_model_name_or_path", **scalar_models}.items():
        require_vocabulary_fits(path, flag, tokenizer, source)


def _require_same_vocabulary(vocab: dict[str, int], expected: dict[str, int], model: str, source: str) -> None:
    differ = sorted(token for token in vocab.keys() | expected.keys() if vocab.get(token) != expected.get(token))
    if differ:
        raise UserError(f"{model}: its tokenizer's vocabulary differs from the one PPO uses ({source}): "
                        f"{len(differ)} token(s) differ, e.g. {differ[0]!r}; use one trained with that tokenizer "
                        "(step 2 started from the actor's step-1 folder)")


def build_engines(args: argparse.Namespace, tokenizer, total_steps: int) -> Engines:
    configs = engine_configs(args, dist.world_size())
    actor_config = configs["actor"]
    actor = create_causal_lm(args.actor_model_name_or_path, tokenizer, args.dtype, actor_config,
                             disable_dropout=args.disable_actor_dropout)
    if args.actor_gradient_checkpointing:
        actor.gradient_checkpointing_enable()
    apply_lora(actor, args.actor_lora_dim, args.actor_lora_module_name, args.actor_lora_scaling,
               args.actor_lora_dropout, args.only_optimize_lora)
    actor_engine = build_engine(actor, actor_config, learning_rate=args.actor_learning_rate,
                                weight_decay=args.actor_weight_decay, lora_learning_rate=args.actor_lora_learning_rate,
                                scheduler=args.lr_scheduler_type, warmup_steps=args.num_warmup_steps,
                                total_steps=total_steps)

    ref_config = configs["reference"]
    ref = build_frozen_engine(create_causal_lm(args.actor_model_name_or_path, tokenizer, args.dtype, ref_config,
                                               disable_dropout=True), ref_config)

    critic_config = configs["critic"]
    critic = create_scalar_model(args.critic_model_name_or_path, tokenizer, args.dtype, critic_config,
                                 disable_dropout=True)
    if args.critic_gradient_checkpointing:
        critic.gradient_checkpointing_enable()
    apply_lora(critic, args.critic_lora_dim, args.critic_lora_module_name, args.critic_lora_scaling,
               args.critic_lora_dropout, args.only_optimize_lora)
    critic_engine = build_engine(critic, critic_config, learning_rate=args.critic_learning_rate,
                                 weight_decay=args.critic_weight_decay,
                                 lora_learning_rate=args.critic_lora_learning_rate,
                                 scheduler=args.lr_scheduler_type, warmup_steps=args.num_warmup_steps,
                                 total_steps=total_steps)

    reward_engine = None
    if args.quality_reward == "model":
        path = args.reward_model_name_or_path or args.critic_model_name_or_path
        reward_config = configs["reward"]
        reward_engine = build_frozen_engine(create_scalar_model(path, tokenizer, args.dtype, reward_config,
                                                                disable_dropout=True), reward_config)
    return Engines(actor_engine, ref, critic_engine, reward_engine)
