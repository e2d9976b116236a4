"""Step 1: supervised fine-tuning on ``prompt → response (with confidence)``, loss on response tokens."""
from __future__ import annotations

import argparse
import json
import math
from functools import partial

import torch

from utils import args as flags
from utils import dist
from utils.data import collate_sft, load_phase_data, sft_features
from utils.ds_config import train_ds_config
from utils.model import apply_lora, create_causal_lm, load_tokenizer, require_checkpoint, save_hf_checkpoint
from utils.training import Logger, build_engine, make_loader, set_seed, steps_per_epoch, train_loop

PHASE = 0
COLUMNS = ("prompt", "response")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="CONQORD step 1: supervised fine-tuning (LoRA, DeepSpeed).")
    flags.add_data_args(parser)
    flags.add_model_args(parser)
    flags.add_training_args(parser, learning_rate=1e-4)
    flags.add_lora_args(parser)
    flags.add_only_optimize_lora(parser)
    flags.add_deepspeed_args(parser)
    flags.add_logging_args(parser)
    return parser


def lm_loss(engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return engine(**batch, use_cache=False).loss


@torch.no_grad()
def evaluate_perplexity(engine, loader) -> dict[str, float]:
    """Token-weighted mean loss on response tokens over all ranks, and its exponential."""
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in loader:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        tokens = (batch["labels"][:, 1:] != -100).sum()
        total += torch.stack([lm_loss(engine, batch).double() * tokens, tokens.double()])
    if dist.is_distributed():
        torch.distributed.all_reduce(total)
    loss = (total[0] / total[1].clamp(min=1)).item()
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def run(args: argparse.Namespace) -> dict:
    flags.check_args(args)
    dist.init_distributed(args.local_rank)
    set_seed(args.seed)
    require_checkpoint(args.model_name_or_path, "--model_name_or_path",
                       "python datasets/generate_toy_world.py (toy world) or fetch the base model")
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or args.model_name_or_path)
    train, evaluation = load_phase_data(args.data_path, args.data_split, PHASE, COLUMNS, args.seed,
                                        args.data_output_path, args.max_train_examples)
    encode = partial(_features, tokenizer=tokenizer, max_len=args.max_seq_len)
    train = train.map(encode, remove_columns=list(COLUMNS))
    evaluation = (evaluation if evaluation is not None else train.select(range(min(len(train), 256))))
    if "response" in evaluation.column_names:
        evaluation = evaluation.map(encode, remove_columns=list(COLUMNS))
    collate = partial(collate_sft, pad_id=tokenizer.pad_token_id)
    train_loader = make_loader(train.with_format(None), args.per_device_train_batch_size, collate, True, args.seed)
    eval_loader = make_loader(evaluation, args.per_device_eval_batch_size, collate, False, args.seed)

    ds_config = train_ds_config(micro_batch_size=args.per_device_train_batch_size,
                                gradient_accumulation_steps=args.gradient_accumulation_steps,
                                world_size=dist.world_size(), zero_stage=args.zero_stage, dtype=args.dtype,
                                offload=args.offload, gradient_clipping=args.gradient_clipping)
    model = create_causal_lm(args.model_name_or_path, tokenizer, args.dtype, ds_config, args.disable_dropout)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    apply_lora(model, args.lora_dim, args.lora_module_name, args.lora_scaling, args.lora_dropout,
               args.only_optimize_lora)
    total_steps = args.max_steps or steps_per_epoch(train_loader, args.gradient_accumulation_steps) * args.num_train_epochs
    engine = build_engine(model, ds_config, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                          lora_learning_rate=args.lora_learning_rate, scheduler=args.lr_scheduler_type,
                          warmup_steps=args.num_warmup_steps, total_steps=total_steps)
    logger = Logger(args.enable_tensorboard, args.tensorboard_path, "step1_sft")
    dist.print_rank0(f"step 1: {len(train)} training rows, {len(evaluation)} eval rows, {total_steps} steps")
    result = train_loop(engine, train_loader, lm_loss, lambda: evaluate_perplexity(engine, eval_loader),
                        epochs=args.num_train_epochs, max_steps=args.max_steps, eval_interval=args.eval_interval,
                        logger=logger, print_loss=args.print_loss, log_interval=args.log_interval)
    logger.close()
    summary = {"steps": result.steps, "seconds": round(result.seconds, 1), "final": result.evaluations[-1]}
    save_hf_checkpoint(engine, tokenizer, args.output_dir, {**vars(args), "result": summary}, dist.is_main())
    dist.print_rank0(json.dumps({"step1": summary}))
    return summary


def _features(row: dict, tokenizer, max_len: int) -> dict:
    return sft_features(tokenizer, row["prompt"], row["response"], max_len)
