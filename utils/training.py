"""What the steps share for training: seeding, optimizer groups, the DeepSpeed engines, loaders, logging and
batching. Steps 1 and 2 run their whole train loop here (:func:`run_supervised_step`); step 3 builds its
engines, loader and logger here; step 4 seeds and batches with it."""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from utils import dist, finite
from utils.ds_config import train_ds_config
from utils.errors import UserError
from utils.lora import is_lora_parameter
from utils.profiling import peak_gpu_memory_gib

NO_DECAY = ("bias", "norm.weight", "layernorm.weight", "ln_f.weight")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def optimizer_groups(model: nn.Module, weight_decay: float, lora_lr: float) -> list[dict[str, Any]]:
    """Decay for weights only; LoRA parameters get their own learning rate (DeepSpeed-Chat's grouping)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not any(key in name.lower() for key in NO_DECAY)
        groups.setdefault((decay, is_lora_parameter(name)), []).append(param)
    out = []
    for (decay, lora), params in groups.items():
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if lora:
            group["lr"] = lora_lr
        out.append(group)
    return out


def build_engine(model: nn.Module, ds_config: dict[str, Any], *, learning_rate: float, weight_decay: float,
                 lora_learning_rate: float, scheduler: str, warmup_steps: int, total_steps: int):
    """A DeepSpeed engine with a torch AdamW client optimizer and a transformers LR schedule."""
    import deepspeed
    from transformers import get_scheduler

    groups = optimizer_groups(model, weight_decay, lora_learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95))
    lr_scheduler = get_scheduler(scheduler, optimizer=optimizer, num_warmup_steps=warmup_steps,
                                 num_training_steps=max(total_steps, 1))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                      config=ds_config, dist_init_required=False)
    return engine


def build_frozen_engine(model: nn.Module, ds_config: dict[str, Any]):
    """A DeepSpeed engine for a model that is only evaluated (reference, reward model)."""
    import deepspeed

    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config, dist_init_required=False)
    engine.eval()
    return engine


def make_loader(dataset: Dataset, batch_size: int, collate: Callable, shuffle: bool, seed: int) -> DataLoader:
    """Each rank reads its share; the sampler pads so every rank runs the same number of steps
    (ZeRO-3's collectives hang otherwise)."""
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(),
                                 shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)


class Logger:
    """TensorBoard (tensorboardX) scalars on rank 0 only, in a run folder named after the run's output folder
    (``--tensorboard_path/<output folder name>``), so runs that share a ``--tensorboard_path`` (the toy
    pipeline's two step-3 runs) are separate curves side by side; a resumed run continues its own."""

    def __init__(self, enabled: bool, path: str, output_dir: str | os.PathLike):
        self.writer = None
        if enabled and dist.is_main():
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(path, Path(output_dir).resolve().name))

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is not None:
            for key, value in values.items():
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    evaluations: list[dict[str, float]] = field(default_factory=list)


def require_optimizer_steps(micro_batches: int, accumulation: int, source: str) -> int:
    """The optimizer steps of a run of ``micro_batches`` (described by ``source``): DeepSpeed updates once per
    ``accumulation`` of them, counting across epochs. A run that would make none is refused at start: it would
    save its input model unchanged."""
    if micro_batches < accumulation:
        raise UserError(f"{source} make {micro_batches} micro-batch(es) per rank in all, fewer than "
                        f"--gradient_accumulation_steps {accumulation}: the run would make no optimizer step; lower "
                        "--gradient_accumulation_steps or the batch size, or train on more data")
    return micro_batches // accumulation


def train_loop(engine, loader: DataLoader, loss_fn: Callable[[Any, dict], torch.Tensor],
               evaluate: Callable[[], dict[str, float]], *, name: str, epochs: int, max_steps: int | None,
               eval_interval: int, logger: Logger, print_loss: bool, log_interval: int) -> TrainResult:
    """Plain epoch loop; ``engine.step()`` applies the update at each accumulation boundary. A non-finite
    loss or eval metric, or a run whose every update DeepSpeed skipped, raises ``TrainingDiverged``
    (:mod:`utils.finite`) before the weights take a NaN update or the caller saves them."""
    result = TrainResult()
    start = time.time()
    device = engine.device
    updates = finite.UpdateCounter(engine)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        engine.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=None if dist.is_main() else True, leave=False)
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = loss_fn(engine, batch)
            finite.require_finite({"training loss": loss.item()},
                                  f"{name}, epoch {epoch + 1}, optimizer step {result.steps + 1}", finite.SUPERVISED_HINT)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            if not boundary:
                continue
            result.steps += 1
            if result.steps % log_interval == 0:
                value = dist.all_reduce_mean(loss.item())
                logger.scalars({"loss": value, "lr": engine.get_lr()[0]}, result.steps, "train/")
                bar.set_postfix(loss=f"{value:.4f}")
                if print_loss:
                    dist.print_rank0(f"epoch {epoch + 1} step {result.steps} loss {value:.4f}")
            if eval_interval and result.steps % eval_interval == 0:
                _record(result, evaluate(), logger, engine, name)
            if max_steps is not None and result.steps >= max_steps:
                break
        if not eval_interval:
            _record(result, evaluate(), logger, engine, name)
        if max_steps is not None and result.steps >= max_steps:
            break
    if eval_interval:
        _record(result, evaluate(), logger, engine, name)
    finite.require_applied_updates({"model": updates}, name, finite.SUPERVISED_HINT)
    result.seconds = time.time() - start
    return result


def _record(result: TrainResult, metrics: dict[str, float], logger: Logger, engine, name: str) -> None:
    engine.train()
    finite.require_finite(metrics, f"{name}, evaluation at step {result.steps}", finite.SUPERVISED_HINT)
    metrics = {"step": result.steps, **metrics}
    result.evaluations.append(metrics)
    logger.scalars(metrics, result.steps, "eval/")
    dist.print_rank0("eval " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in metrics.items()))


def batched(items: Iterable, size: int) -> Iterable[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class SupervisedStep:
    """What distinguishes step 1 from step 2 for :func:`run_supervised_step`."""
    name: str  # "step1" / "step2": log lines and the data cache key
    phase: int  # index into --data_split
    columns: tuple[str, ...]
    producer: str  # what writes --model_name_or_path, for the missing-checkpoint message
    create_model: Callable  # (path, tokenizer, dtype, ds_config, disable_dropout) -> nn.Module
    features: Callable  # (row, tokenizer, max_len) -> dict of id lists
    collate: Callable  # (features, pad_id) -> batch
    loss: Callable  # (engine, batch) -> loss
    evaluate: Callable  # (engine, loader) -> metrics
    input_kind: str | None = None  # utils.model.CAUSAL_LM where --model_name_or_path must be one (step 1)


def supervised_ds_config(args, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of steps 1 and 2; the dry run passes the launcher's world size."""
    return train_ds_config(micro_batch_size=args.per_device_train_batch_size,
                           gradient_accumulation_steps=args.gradient_accumulation_steps,
                           world_size=world_size, zero_stage=args.zero_stage, dtype=args.dtype,
                           offload=args.offload, gradient_clipping=args.gradient_clipping,
                           zero3_settings=args.zero3_settings)


def run_supervised_step(args, step: SupervisedStep) -> dict:
    """Checks of the flags and ``--output_dir``, then the run under the folder's lock (one writer)."""
    from utils import args as flags
    from utils.files import check_apart_from_inputs, check_output_folder, claim_output_folder, output_lock

    flags.check_args(args)
    check_output_folder(args.output_dir, overwrite=args.overwrite_output_dir)
    check_apart_from_inputs(args.output_dir, {"--model_name_or_path": [args.model_name_or_path],
                                              "--tokenizer_name_or_path": [args.tokenizer_name_or_path],
                                              "--data_path": args.data_path})
    with output_lock(Path(args.output_dir)):
        claim_output_folder(args.output_dir)
        return _train_supervised(args, step)


def _train_supervised(args, step: SupervisedStep) -> dict:
    """Data, model (+LoRA), DeepSpeed engine, evaluation before and during training, atomic save."""
    from functools import partial

    from datasets import DatasetDict

    from utils.data_cache import cached_dataset, data_fingerprint
    from utils.data_split import load_phase_data
    from utils.model import (apply_lora, checked_tokenizer, require_checkpoint, require_vocabulary_fits,
                             save_hf_checkpoint)

    dist.init_distributed(args.local_rank)
    set_seed(args.seed)
    require_checkpoint(args.model_name_or_path, "--model_name_or_path", step.producer, step.input_kind, weights=True)
    tokenizer_flag = "--tokenizer_name_or_path" if args.tokenizer_name_or_path else "--model_name_or_path"
    tokenizer_path = args.tokenizer_name_or_path or args.model_name_or_path
    tokenizer = checked_tokenizer(tokenizer_path, tokenizer_flag)
    require_vocabulary_fits(args.model_name_or_path, "--model_name_or_path", tokenizer, f"{tokenizer_flag} {tokenizer_path}")

    def tokenized() -> DatasetDict:
        """``train`` and, where the data has a test split, ``eval``."""
        train, evaluation = load_phase_data(args.data_path, args.data_split, step.phase, step.columns, args.seed,
                                            args.data_output_path, args.max_train_examples,
                                            allow_missing_confidence=args.allow_missing_confidence)
        encode = partial(step.features, tokenizer=tokenizer, max_len=args.max_seq_len)
        splits = {"train": train} if evaluation is None else {"train": train, "eval": evaluation}
        return DatasetDict({name: rows.map(encode, remove_columns=list(step.columns))
                            for name, rows in splits.items()})

    fingerprint = data_fingerprint(args, tokenizer, step=step.name, phase=step.phase, columns=step.columns,
                                   max_len=args.max_seq_len)
    data = cached_dataset(args.data_output_path, fingerprint, tokenized)
    train = data["train"]
    if "eval" in data:
        evaluation = data["eval"]
    else:  # no test split: score a slice of the training rows, and say so on every run (cached or not)
        evaluation = train.select(range(min(len(train), 256)))
        dist.print_rank0(f"warning: --data_path {' '.join(args.data_path)} has no test split, so the eval scores "
                         f"are of {len(evaluation)} training rows, not held-out ones; add a test file (e.g. "
                         "test.jsonl beside train.jsonl)")
    collate = partial(step.collate, pad_id=tokenizer.pad_token_id)
    train_loader = make_loader(train, args.per_device_train_batch_size, collate, True, args.seed)
    eval_loader = make_loader(evaluation, args.per_device_eval_batch_size, collate, False, args.seed)
    source = (f"{len(train)} training rows in {len(train_loader)} batch(es) per rank (--per_device_train_batch_size "
              f"{args.per_device_train_batch_size}, {dist.world_size()} rank(s)) x --num_train_epochs "
              f"{args.num_train_epochs}")
    available = require_optimizer_steps(len(train_loader) * args.num_train_epochs, args.gradient_accumulation_steps,
                                        source)
    total_steps = min(args.max_steps or available, available)  # --max_steps stops early; epochs bound the run

    ds_config = supervised_ds_config(args, dist.world_size())
    model = step.create_model(args.model_name_or_path, tokenizer, args.dtype, ds_config, args.disable_dropout)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    apply_lora(model, args.lora_dim, args.lora_module_name, args.lora_scaling, args.lora_dropout,
               args.only_optimize_lora)
    engine = build_engine(model, ds_config, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                          lora_learning_rate=args.lora_learning_rate, scheduler=args.lr_scheduler_type,
                          warmup_steps=args.num_warmup_steps, total_steps=total_steps)
    logger = Logger(args.enable_tensorboard, args.tensorboard_path, args.output_dir)
    dist.print_rank0(f"{step.name}: {len(train)} training rows, {len(evaluation)} eval rows, {total_steps} steps")
    before = step.evaluate(engine, eval_loader)
    dist.print_rank0("before training: " + json.dumps(before))
    result = train_loop(engine, train_loader, step.loss, lambda: step.evaluate(engine, eval_loader), name=step.name,
                        epochs=args.num_train_epochs, max_steps=args.max_steps, eval_interval=args.eval_interval,
                        logger=logger, print_loss=args.print_loss, log_interval=args.log_interval)
    logger.close()
    summary = {"steps": result.steps, "seconds": round(result.seconds, 1),
               "seconds_per_step": round(result.seconds / max(result.steps, 1), 4),
               "peak_gpu_memory_gib": peak_gpu_memory_gib(), "before": before, "final": result.evaluations[-1]}
    folder = save_hf_checkpoint(engine, tokenizer, args.output_dir, {**vars(args), "result": summary})
    dist.print_rank0(f"saved the {step.name} model to {folder}")
    dist.print_rank0(json.dumps({step.name: summary}))
    return summary
