"""Step 2: reward model = causal-LM backbone + scalar head, pairwise loss ``-log σ(r_chosen − r_rejected)``."""
from __future__ import annotations

import argparse
import json
from functools import partial

import torch
import torch.nn.functional as F

from utils import args as flags
from utils import dist
from utils.data import collate_pairs, encode_completion, load_phase_data
from utils.ds_config import train_ds_config
from utils.model import (apply_lora, create_scalar_model, load_tokenizer, require_checkpoint, save_hf_checkpoint,
                         sequence_scores)
from utils.training import Logger, build_engine, make_loader, set_seed, steps_per_epoch, train_loop

PHASE = 1
COLUMNS = ("prompt", "chosen", "rejected")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="CONQORD step 2: reward model (pairwise loss, DeepSpeed).")
    flags.add_data_args(parser)
    flags.add_model_args(parser)
    flags.add_training_args(parser, learning_rate=5e-5)
    flags.add_lora_args(parser)
    flags.add_only_optimize_lora(parser)
    flags.add_deepspeed_args(parser)
    flags.add_logging_args(parser)
    return parser


def pair_scores(engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and rejected halves of a :func:`collate_pairs` batch."""
    scores = sequence_scores(engine, batch["input_ids"], batch["attention_mask"])
    half = scores.shape[0] // 2
    return scores[:half], scores[half:]


def pairwise_loss(engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    chosen, rejected = pair_scores(engine, batch)
    return -F.logsigmoid(chosen - rejected).mean()


@torch.no_grad()
def evaluate_pairs(engine, loader) -> dict[str, float]:
    """Share of pairs ranked right, and mean scores, over all ranks."""
    engine.eval()
    total = torch.zeros(4, dtype=torch.float64, device=engine.device)
    for batch in loader:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        chosen, rejected = pair_scores(engine, batch)
        total += torch.stack([(chosen > rejected).sum(), chosen.sum(), rejected.sum(),
                              torch.tensor(chosen.numel(), device=chosen.device)]).double()
    if dist.is_distributed():
        torch.distributed.all_reduce(total)
    n = total[3].clamp(min=1)
    return {"accuracy": (total[0] / n).item(), "chosen_mean_score": (total[1] / n).item(),
            "rejected_mean_score": (total[2] / n).item()}


def _features(row: dict, tokenizer, max_len: int) -> dict:
    chosen, _ = encode_completion(tokenizer, row["prompt"], row["chosen"], max_len)
    rejected, _ = encode_completion(tokenizer, row["prompt"], row["rejected"], max_len)
    return {"chosen_ids": chosen, "rejected_ids": rejected}


def run(args: argparse.Namespace) -> dict:
    flags.check_args(args)
    dist.init_distributed(args.local_rank)
    set_seed(args.seed)
    require_checkpoint(args.model_name_or_path, "--model_name_or_path",
                       "step 1 (bash step1_supervised_finetuning_LM/run_step1.sh) or fetch the base model")
    tokenizer = load_tokenizer(args.tokenizer_name_or_path or args.model_name_or_path)
    train, evaluation = load_phase_data(args.data_path, args.data_split, PHASE, COLUMNS, args.seed,
                                        args.data_output_path, args.max_train_examples)
    encode = partial(_features, tokenizer=tokenizer, max_len=args.max_seq_len)
    train = train.map(encode, remove_columns=list(COLUMNS))
    evaluation = (evaluation if evaluation is not None else train.select(range(min(len(train), 256))))
    if "chosen" in evaluation.column_names:
        evaluation = evaluation.map(encode, remove_columns=list(COLUMNS))
    collate = partial(collate_pairs, pad_id=tokenizer.pad_token_id)
    train_loader = make_loader(train, args.per_device_train_batch_size, collate, True, args.seed)
    eval_loader = make_loader(evaluation, args.per_device_eval_batch_size, collate, False, args.seed)

    ds_config = train_ds_config(micro_batch_size=args.per_device_train_batch_size,
                                gradient_accumulation_steps=args.gradient_accumulation_steps,
                                world_size=dist.world_size(), zero_stage=args.zero_stage, dtype=args.dtype,
                                offload=args.offload, gradient_clipping=args.gradient_clipping)
    model = create_scalar_model(args.model_name_or_path, tokenizer, args.dtype, ds_config, args.disable_dropout)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    apply_lora(model, args.lora_dim, args.lora_module_name, args.lora_scaling, args.lora_dropout,
               args.only_optimize_lora)
    total_steps = args.max_steps or steps_per_epoch(train_loader, args.gradient_accumulation_steps) * args.num_train_epochs
    engine = build_engine(model, ds_config, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                          lora_learning_rate=args.lora_learning_rate, scheduler=args.lr_scheduler_type,
                          warmup_steps=args.num_warmup_steps, total_steps=total_steps)
    logger = Logger(args.enable_tensorboard, args.tensorboard_path, "step2_reward")
    dist.print_rank0(f"step 2: {len(train)} training pairs, {len(evaluation)} eval pairs, {total_steps} steps")
    before = evaluate_pairs(engine, eval_loader)
    dist.print_rank0("before training: " + json.dumps(before))
    result = train_loop(engine, train_loader, pairwise_loss, lambda: evaluate_pairs(engine, eval_loader),
                        epochs=args.num_train_epochs, max_steps=args.max_steps, eval_interval=args.eval_interval,
                        logger=logger, print_loss=args.print_loss, log_interval=args.log_interval)
    logger.close()
    summary = {"steps": result.steps, "seconds": round(result.seconds, 1), "before": before,
               "final": result.evaluations[-1]}
    save_hf_checkpoint(engine, tokenizer, args.output_dir, {**vars(args), "result": summary}, dist.is_main())
    dist.print_rank0(json.dumps({"step2": summary}))
    return summary
