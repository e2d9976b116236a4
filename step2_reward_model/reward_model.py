"""Step 2: reward model = causal-LM backbone + scalar head, pairwise loss ``-log σ(r_chosen − r_rejected)``."""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from utils import args as flags
from utils import dist
from utils.collate import collate_pairs, encode_completion
from utils.model import create_scalar_model, sequence_scores
from utils.training import SupervisedStep, run_supervised_step


def build_parser() -> argparse.ArgumentParser:
    return flags.supervised_parser("CONQORD step 2: reward model (pairwise loss, DeepSpeed).", learning_rate=5e-5)


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
    total = dist.all_reduce_sum(total)
    n = total[3].clamp(min=1)
    return {"accuracy": (total[0] / n).item(), "chosen_mean_score": (total[1] / n).item(),
            "rejected_mean_score": (total[2] / n).item()}


def _features(row: dict, tokenizer, max_len: int) -> dict:
    chosen, _ = encode_completion(tokenizer, row["prompt"], row["chosen"], max_len)
    rejected, _ = encode_completion(tokenizer, row["prompt"], row["rejected"], max_len)
    return {"chosen_ids": chosen, "rejected_ids": rejected}


STEP = SupervisedStep(name="step2", phase=1, columns=("prompt", "chosen", "rejected"),
                      producer="step 1 (bash step1_supervised_finetuning_LM/run_step1.sh) or fetch the base model",
                      create_model=create_scalar_model, features=_features, collate=collate_pairs,
                      loss=pairwise_loss, evaluate=evaluate_pairs)


def run(args: argparse.Namespace) -> dict:
    return run_supervised_step(args, STEP)
