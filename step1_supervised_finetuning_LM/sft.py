"""Step 1: supervised fine-tuning on ``prompt → response (with confidence)``, loss on response tokens."""
from __future__ import annotations

import argparse
import math

import torch

from utils import args as flags
from utils import dist
from utils.collate import collate_sft, sft_features
from utils.model import CAUSAL_LM, create_causal_lm
from utils.training import SupervisedStep, run_supervised_step


def build_parser() -> argparse.ArgumentParser:
    return flags.supervised_parser("CONQORD step 1: supervised fine-tuning (LoRA, DeepSpeed).", learning_rate=1e-4)


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
        loss = lm_loss(engine, batch).double()  # NaN (0/0) for a batch without response tokens: weight 0
        total += torch.stack([torch.where(tokens > 0, loss * tokens, 0.0), tokens.double()])
    total = dist.all_reduce_sum(total)
    loss = (total[0] / total[1].clamp(min=1)).item()
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def _features(row: dict, tokenizer, max_len: int) -> dict:
    return sft_features(tokenizer, row["prompt"], row["response"], max_len)


STEP = SupervisedStep(name="step1", phase=0, columns=("prompt", "response"),
                      producer="python datasets/generate_toy_world.py (toy world) or fetch the base model",
                      create_model=create_causal_lm, features=_features, collate=collate_sft, loss=lm_loss,
                      evaluate=evaluate_perplexity, input_kind=CAUSAL_LM)


def run(args: argparse.Namespace) -> dict:
    return run_supervised_step(args, STEP)
