"""Step 3: PPO with the CONQORD dual reward — the loop, the PPO update, logging and saving.

``--output_dir`` holds the final ``actor/`` and ``critic/``, ``train_log.jsonl`` and, every ``--save_interval``
steps, the resumable state of :mod:`step3_RL_finetune_LLM.run_state`.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from step3_RL_finetune_LLM.experience import Experience, ExperienceMaker, response_log_probs, response_values
from step3_RL_finetune_LLM import run_state
from step3_RL_finetune_LLM.ppo import (PPOSettings, actor_loss, critic_loss, minibatch_rows, policy_advantages,
                                       ppo_settings)
from step3_RL_finetune_LLM.ptx import PtxBatches, load_ptx_batches, ptx_loss, ptx_settings
from step3_RL_finetune_LLM.rlhf_engine import Engines, build_engines, check_inputs
from utils import args as flags
from utils import dist, finite
from utils.collate import encode_prompt
from utils.data_cache import cached_dataset, data_fingerprint
from utils.data_split import load_phase_data
from utils.errors import TrainingDiverged, UserError, note_checkpoint
from utils.files import (check_apart_from_inputs, check_output_folder, claim_output_folder, mark_output,
                         output_lock)
from utils.generation import GenerationSettings
from utils.model import load_tokenizer, save_hf_checkpoint
from utils.profiling import PhaseTimer, peak_gpu_memory_gib
from utils.reward import reward_settings
from utils.training import Logger, make_loader, require_optimizer_steps, set_seed

PHASE = 2
# the logged numbers that stop a run when NaN/inf (others may be NaN legitimately: a Spearman of constants)
WATCHED = ("actor_loss", "critic_loss", "unsup_loss", "quality_reward", "alignment_reward", "total_reward", "kl")


def build_parser() -> argparse.ArgumentParser:
    parser = flags.Parser(description="CONQORD step 3: PPO with the dual (quality + order-preserving "
                                                 "alignment) reward, DeepSpeed.")
    flags.add_data_args(parser, with_max_seq_len=False)
    flags.add_ppo_args(parser)
    flags.add_lora_args(parser, "actor_")
    flags.add_lora_args(parser, "critic_")
    flags.add_only_optimize_lora(parser)
    flags.add_deepspeed_args(parser, prefixes=("actor_", "critic_"))
    flags.add_logging_args(parser)
    flags.add_dry_run_arg(parser)
    return parser


def warn_if_alignment_vanishes(args: argparse.Namespace) -> None:
    in_scope = args.per_device_generation_batch_size * (dist.world_size() if args.align_reward_scope == "global" else 1)
    if args.alpha > 0 and in_scope < 2:
        warnings.warn(f"R_A is identically zero: only {in_scope} rollout is in scope (--per_device_generation_batch_size "
                      f"{args.per_device_generation_batch_size}, --align_reward_scope {args.align_reward_scope}, "
                      f"{dist.world_size()} rank(s)); the run is plain RLHF. Raise the batch or use the global scope.",
                      stacklevel=2)


def ppo_update(engines: Engines, experience: Experience, ppo: PPOSettings,
               update_actor: bool = True, ptx: PtxBatches | None = None, ptx_start: int = 0) -> dict[str, float]:
    """``ppo_epochs`` passes of clipped actor and critic updates over minibatches of the experience (reshuffled
    after the first pass, :func:`minibatch_rows`); with ``ptx``, each actor update adds the PPO-ptx loss of one
    batch (batches ``ptx_start`` on)."""
    engines.actor.train()
    engines.critic.train()
    advantages = policy_advantages(experience.advantages, experience.mask, ppo.whiten_advantages,
                                   experience.routed_advantages)
    size = experience.sequences.shape[0]
    losses = {"actor_loss": 0.0, "critic_loss": 0.0, **({"unsup_loss": 0.0} if ptx is not None else {})}
    count = 0
    for epoch in range(ppo.ppo_epochs):
        for rows in minibatch_rows(size, ppo.per_device_training_batch_size, epoch):
            rows = rows.to(experience.sequences.device)
            seq, am, mask = experience.sequences[rows], experience.attention_mask[rows], experience.mask[rows]
            if update_actor:
                log_probs = response_log_probs(engines.actor, seq, am, experience.prompt_width, experience.temperature)
                loss = actor_loss(log_probs, experience.log_probs[rows], advantages[rows], mask, ppo.cliprange)
                losses["actor_loss"] += loss.item()
                if ptx is not None:  # InstructGPT's objective: one update of the PPO loss + coef x the LM loss
                    lm_loss = ptx_loss(engines.actor, ptx.batch(ptx_start + count, engines.actor.device))
                    losses["unsup_loss"] += lm_loss.item()
                    loss = loss + ppo.unsup_coef * lm_loss
                engines.actor.backward(loss)
                engines.actor.step()
            values = response_values(engines.critic, seq, am, experience.prompt_width).float()
            vloss = critic_loss(values, experience.values[rows], experience.returns[rows], mask, ppo.cliprange_value)
            engines.critic.backward(vloss)
            engines.critic.step()
            losses["critic_loss"] += vloss.item()
            count += 1
    return {k: v / count for k, v in losses.items()}


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The rollouts' sampling from step 3's flags: up to --max_answer_seq_len new tokens, sampled at
    --temperature / --top_p unless --greedy_rollouts."""
    return GenerationSettings(max_new_tokens=args.max_answer_seq_len, do_sample=not args.greedy_rollouts,
                              temperature=args.temperature, top_p=args.top_p)


def _prompt_features(row: dict, tokenizer, max_len: int) -> dict:
    return {"prompt_ids": encode_prompt(tokenizer, row["prompt"], max_len)}


def check_actor_trains(args: argparse.Namespace, total_steps: int, steps_per_epoch: int) -> None:
    """The actor is updated only after --freezing_actor_steps: covering the whole run, step 3 would save the
    step-1 model unchanged, silently."""
    if args.freezing_actor_steps < total_steps:
        return
    source = (f"--max_steps {args.max_steps}" if args.max_steps else f"{steps_per_epoch} rollout batches per epoch x "
              f"--num_train_epochs {args.num_train_epochs}; no --max_steps")
    raise UserError(f"--freezing_actor_steps {args.freezing_actor_steps} >= the run's {total_steps} steps ({source}): "
                    "the actor would never be updated and step 3 would save the step-1 model unchanged; lower "
                    "--freezing_actor_steps or raise --max_steps")


def run(args: argparse.Namespace) -> dict:
    """Checks of the flags and ``--output_dir``, then the run under the folder's lock (one writer)."""
    flags.check_args(args)
    check_output_folder(args.output_dir, overwrite=args.overwrite_output_dir)
    inputs = run_state.input_paths(args)
    check_apart_from_inputs(args.output_dir, {f"--{flag}": paths for flag, paths in inputs.items()})
    with output_lock(Path(args.output_dir)):
        claim_output_folder(args.output_dir)
        return _train(args, inputs)


@dataclass
class _Run:
    """What a run's setup builds, read by its steps and its end."""

    args: argparse.Namespace
    out: Path
    provenance: dict
    state: dict  # where a resumed run starts: {"step", "seconds"} (0 afresh)
    tokenizer: object
    engines: Engines
    maker: ExperienceMaker
    ppo: PPOSettings
    ptx: PtxBatches | None
    loader: object
    has_golds: bool
    steps_per_epoch: int
    total_steps: int
    minibatches: int  # PPO minibatches per experience batch
    timer: PhaseTimer
    logger: Logger
    updates_done: dict[str, finite.UpdateCounter]
    start: float  # time.time() at the first step


def _train(args: argparse.Namespace, inputs: dict[str, list[str]]) -> dict:
    run = _setup(args, inputs)
    step, buffer = run.state["step"], []
    # rank 0 only, and quiet when stdout is not a terminal (tqdm's disable=None): logs keep their lines
    bar = tqdm(total=run.total_steps, initial=step, desc="step 3 (PPO)", unit="step",
               disable=None if dist.is_main() else True)
    for epoch, batch in _batches(run.loader, run.steps_per_epoch, run.total_steps, step):
        torch.manual_seed(args.seed + step * 1000 + dist.rank())  # resumable, rank-distinct sampling
        golds = [row["answers"] for row in batch] if run.has_golds else None
        buffer.append(_rollouts(run.maker, [row["prompt_ids"] for row in batch], golds, step))
        step += 1
        bar.update(1)
        if len(buffer) >= args.generation_batches or step >= run.total_steps:
            _ppo_step(run, buffer, step, epoch)
            buffer = []
    bar.close()
    return _finish(run, step)


def _setup(args: argparse.Namespace, inputs: dict[str, list[str]]) -> _Run:
    """Everything before the first step: checks, data, engines, the settings (built once), the output folder;
    ``inputs``: the run's :func:`run_state.input_paths`."""
    dist.init_distributed(args.local_rank)
    set_seed(args.seed)
    check_inputs(args)
    out = Path(args.output_dir)
    provenance = run_state.made_by(args, inputs)
    state = run_state.read_resume_state(out, provenance, inputs) if args.resume else {"step": 0, "seconds": 0.0}
    warn_if_alignment_vanishes(args)
    if args.enable_hybrid_engine:
        warnings.warn("--enable_hybrid_engine is ignored: rollouts gather the ZeRO-3 weights once and generate "
                      "without DeepSpeed's hooks", stacklevel=1)
    tokenizer = load_tokenizer(args.tokenizer_model_name_or_path or args.actor_model_name_or_path, padding_side="left")
    prompts = _prompts(args, tokenizer)
    ptx = load_ptx_batches(ptx_settings(args), tokenizer)
    loader = make_loader(prompts, args.per_device_generation_batch_size, list, True, args.seed)
    steps_per_epoch = len(loader)
    total_steps = args.max_steps or steps_per_epoch * args.num_train_epochs
    minibatches = args.ppo_epochs * -(-args.per_device_generation_batch_size // args.per_device_training_batch_size)
    _check_updates(args, total_steps, steps_per_epoch, minibatches)
    engines = build_engines(args, tokenizer, total_steps * minibatches // args.gradient_accumulation_steps)
    generation = generation_settings(args)
    timer = PhaseTimer()
    ppo = ppo_settings(args)
    maker = ExperienceMaker(engines, tokenizer, generation, reward_settings(args), ppo, timer)
    if args.resume:
        run_state.load_resumable(engines, out, state["step"])
        note_checkpoint(_resume_note(out, state["step"]))
    updates_done = {name: finite.UpdateCounter(getattr(engines, name)) for name in ("actor", "critic")}
    logger = Logger(args.enable_tensorboard, args.tensorboard_path, out)
    _prepare_output(out, args.resume, state["step"])
    dist.print_rank0(f"step 3: {len(prompts)} prompts, {steps_per_epoch} rollout batches per epoch, {total_steps} steps, "
                     f"alpha={args.alpha} ({args.align_reward_reduction}, {args.align_reward_scope}), "
                     f"quality={args.quality_reward}")
    return _Run(args=args, out=out, provenance=provenance, state=state, tokenizer=tokenizer, engines=engines,
                maker=maker, ppo=ppo, ptx=ptx, loader=loader, has_golds="answers" in prompts.column_names,
                steps_per_epoch=steps_per_epoch, total_steps=total_steps, minibatches=minibatches, timer=timer,
                logger=logger, updates_done=updates_done, start=time.time())


def _prompts(args: argparse.Namespace, tokenizer):
    """The PPO prompts, tokenized (cached by :func:`cached_dataset`), with their gold answers when present."""
    required = ("prompt", "answers") if args.quality_reward == "oracle" else ("prompt",)

    def tokenized():
        prompts, _ = load_phase_data(args.data_path, args.data_split, PHASE, required, args.seed,
                                     args.data_output_path, args.max_train_examples, optional=("answers",))
        return prompts.map(lambda row: _prompt_features(row, tokenizer, args.max_prompt_seq_len),
                           remove_columns=["prompt"])

    fingerprint = data_fingerprint(args, tokenizer, step="step3", phase=PHASE, columns=required,
                                   max_len=args.max_prompt_seq_len)
    return cached_dataset(args.data_output_path, fingerprint, tokenized)


def _check_updates(args: argparse.Namespace, total_steps: int, steps_per_epoch: int, minibatches: int) -> None:
    """The actor must be updated, and often enough for --gradient_accumulation_steps."""
    check_actor_trains(args, total_steps, steps_per_epoch)
    actor_batches = total_steps - args.freezing_actor_steps
    require_optimizer_steps(actor_batches * minibatches, args.gradient_accumulation_steps,
                            f"{actor_batches} rollout batch(es) updating the actor (the run's {total_steps} less "
                            f"--freezing_actor_steps {args.freezing_actor_steps}) x {minibatches} PPO minibatch(es) "
                            f"each (--ppo_epochs {args.ppo_epochs}, --per_device_generation_batch_size "
                            f"{args.per_device_generation_batch_size}, --per_device_training_batch_size "
                            f"{args.per_device_training_batch_size})")


def _prepare_output(out: Path, resume: bool, resumed_step: int) -> None:
    """Rank 0 marks the folder and cuts the log back to the resumed step (or clears an older run's state)."""
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        mark_output(out)
        if resume:
            run_state.truncate_log(out / run_state.LOG_FILE, resumed_step)
        else:
            run_state.start_afresh(out)
    dist.barrier()


def _batches(loader, steps_per_epoch: int, total_steps: int, done: int):
    """``(epoch, batch)`` of every step still to run: the batches consumed before a resumed checkpoint are
    skipped; --max_steps may ask for more epochs than --num_train_epochs."""
    for epoch in range(-(-total_steps // steps_per_epoch)):
        loader.sampler.set_epoch(epoch)
        for index, batch in enumerate(loader):
            position = epoch * steps_per_epoch + index
            if position >= done:
                yield epoch, batch
            if position + 1 >= total_steps:
                return


def _ppo_step(run: _Run, buffer: list[Experience], step: int, epoch: int) -> None:
    """PPO on the buffered experience batches, then the checks, the log row and the resumable save of ``step``."""
    args, engines = run.args, run.engines
    update_actor = step > args.freezing_actor_steps
    first = step - len(buffer)  # experiences are numbered from 0 over the run: resumable ptx batches
    with run.timer("training"):
        losses = [ppo_update(engines, experience, run.ppo, update_actor, run.ptx, (first + i) * run.minibatches)
                  for i, experience in enumerate(buffer)]
    # every step, so NaN weights never reach a rollout or a resumable save
    finite.require_finite_weights({"actor": engines.actor, "critic": engines.critic},
                                  f"step 3, PPO step {step}", finite.PPO_HINT)
    seconds = run.state["seconds"] + time.time() - run.start  # a resumed run counts the earlier runs' time
    row = _record(buffer, losses, step, epoch, seconds)
    finite.require_finite({k: row[k] for k in WATCHED if k in row}, f"step 3, PPO step {step}", finite.PPO_HINT)
    run.logger.scalars(row, step, "train/")
    if dist.is_main():
        with (run.out / run_state.LOG_FILE).open("a") as handle:
            handle.write(json.dumps(row) + "\n")
    if step % args.log_interval == 0 or step == run.total_steps:
        dist.print_rank0(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.save_interval and step % args.save_interval == 0:
        run_state.save_resumable(engines, run.out, {"step": step, "seconds": round(seconds, 1),
                                                    "made_by": run.provenance}, args.save_total_limit)
        note_checkpoint(_resume_note(run.out, step))


def _finish(run: _Run, step: int) -> dict:
    """After the last step: the updates really applied, the actor and critic saved, the run's summary."""
    run.logger.close()
    finite.require_applied_updates(run.updates_done, "step 3", finite.PPO_HINT)
    run_seconds, done = time.time() - run.start, step - run.state["step"]  # this run's steps (a resume skips some)
    summary = {"steps": step, "seconds": round(run.state["seconds"] + run_seconds, 1),
               "run_seconds": round(run_seconds, 1), "seconds_per_step": round(run_seconds / max(done, 1), 4),
               **run.timer.per_step(done), "peak_gpu_memory_gib": peak_gpu_memory_gib()}
    for name in ("actor", "critic"):
        folder = save_hf_checkpoint(getattr(run.engines, name), run.tokenizer, run.out / name,
                                    {**vars(run.args), "result": summary})
        dist.print_rank0(f"saved {name} to {folder}")
    if dist.is_main():
        run_state.drop_earlier_run(run.out)
    dist.print_rank0(json.dumps({"step3": summary}))
    return summary


def _rollouts(maker: ExperienceMaker, prompts: list, golds: list | None, step: int) -> Experience:
    """The experience of PPO step ``step`` (0-based)."""
    try:
        return maker.make(prompts, golds, step)
    except RuntimeError as err:  # torch's sampler refuses NaN/inf probabilities: huge but finite weights
        if "probability tensor contains" not in str(err):
            raise
        raise TrainingDiverged(f"step 3, PPO step {step + 1}: the actor's sampling probabilities hold NaN/inf: "
                               f"training diverged, so no model is saved; {finite.PPO_HINT}") from None


def _resume_note(out: Path, step: int) -> str:
    return f"{out / run_state.RESUME_DIR} (step {step}); continue it with --resume"


def _record(buffer: list[Experience], losses: list[dict[str, float]], step: int, epoch: int, seconds: float) -> dict:
    """Means over the buffered experience batches and over ranks."""
    keys = buffer[0].stats.keys()
    record: dict = {"step": step, "epoch": epoch, "seconds": round(seconds, 1)}
    for key in keys:
        record[key] = dist.all_reduce_mean(sum(e.stats[key] for e in buffer) / len(buffer))
    for key in losses[0]:
        record[key] = dist.all_reduce_mean(sum(loss[key] for loss in losses) / len(losses))
    return record
