"""Reading the stated confidence as the mean of the model's distribution over the values it could have
written (``--confidence_readout expected``), instead of the one value greedy decoding wrote (``stated``).

Why: PPO with a proper scoring rule optimises the score of *sampled* confidences, so what it trains is
the distribution over values; greedy decoding reads that distribution's mode, which for a two-peaked
distribution (say 55 % on ``0.0`` and 45 % on ``0.8``) sits at one end. The mean is what averaging the
verbalised confidence over many sampled answers estimates (Xiong et al., ICLR 2024), computed exactly.

Conventions
-----------
* Candidates: the eleven one-decimal values of the fine-tuning format, :data:`CONFIDENCE_GRID`. Each is
  scored as the continuation of the prompt and of the response up to where its number begins; the
  probabilities are renormalised over the eleven (mass on other strings, e.g. ``0.65``, is ignored).
* Only a response that states a number gets a readout: a missing or malformed confidence stays missing
  (``--missing_confidence`` and the parse-failure rate apply unchanged), and the answer is the greedy one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from utils.confidence import confidence_value_start
from utils.model import gather_log_probs, position_ids
from utils.prompts import format_confidence
from utils.training import batched

CONFIDENCE_GRID = tuple(i / 10 for i in range(11))
READOUTS = ("stated", "expected")


@dataclass(frozen=True)
class Candidates:
    """The token ids of one response continued by each grid value, and how many leading ids they share."""
    ids: list[list[int]]
    shared: int


def candidates(tokenizer, prompt_ids: Sequence[int], stem: str) -> Candidates:
    """``prompt_ids`` followed by ``stem + value`` for each grid value. The stem and value are encoded together,
    as the tokenizer would merge them (``": 0.6"`` gives ``"Ġ0"``); what all candidates share is context."""
    ids = [list(prompt_ids) + tokenizer(stem + format_confidence(v), add_special_tokens=False)["input_ids"]
           for v in CONFIDENCE_GRID]
    shared = 0
    while shared < min(map(len, ids)) and len({seq[shared] for seq in ids}) == 1:
        shared += 1
    return Candidates(ids, shared)


@torch.no_grad()
def tail_log_probs(model, sequences: list[list[int]], starts: list[int],
                   pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched forward pass: ``(log_probs, scored)``, both of shape (sequences, tail), where row i holds
    log P(token | the tokens before it) of ``sequences[i][starts[i]:]`` right-aligned and 0 elsewhere, and
    ``scored`` marks those places. Every start must be at least 1 (a first token has no context).

    Left-padded (attention mask, positions that skip the padding, as ``generate`` uses them), so every
    sequence ends in the last column and the LM head is needed only over the longest scored tail."""
    width = max(map(len, sequences))
    tail = max(len(seq) - start for seq, start in zip(sequences, starts))
    device = next(model.parameters()).device
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    scored = torch.zeros((len(sequences), tail), dtype=torch.bool)
    for row, (seq, start) in enumerate(zip(sequences, starts)):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
        scored[row, tail - (len(seq) - start):] = True
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
                   logits_to_keep=tail + 1).logits
    token_log_probs = gather_log_probs(logits[:, :-1], ids[:, width - tail:]).cpu()
    return token_log_probs * scored, scored


def grid_log_probs(model, batch: list[Candidates], pad_id: int) -> torch.Tensor:
    """log P(value | context) of every grid value for each item, shape (items, grid), unnormalised; the
    tokens the candidates share are context only."""
    sequences = [seq for item in batch for seq in item.ids]
    starts = [item.shared for item in batch for _ in item.ids]  # first candidate-specific token
    log_probs, _ = tail_log_probs(model, sequences, starts, pad_id)
    return log_probs.sum(dim=1).view(len(batch), len(CONFIDENCE_GRID))


def expected_confidence(distribution: Sequence[float]) -> float:
    """The mean of a distribution over :data:`CONFIDENCE_GRID`."""
    return float(sum(p * v for p, v in zip(distribution, CONFIDENCE_GRID)))


def confidence_distributions(model, tokenizer, items: dict[str, tuple[list[int], str]], file: Path,
                             batch_size: int, source: str, desc: str) -> dict[str, list[float]]:
    """Per id, the distribution over :data:`CONFIDENCE_GRID` after ``(prompt_ids, response)``, for every
    response that states a number; cached in ``file`` like the generations (same id, response and source)."""
    stems = {qid: response[:start] for qid, (_, response) in items.items()
             if (start := confidence_value_start(response)) is not None}
    done = {}
    if file.is_file():
        for line in file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("source") == source and row["id"] in items and row.get("response") == items[row["id"]][1]:
                done[row["id"]] = row["distribution"]
    todo = [qid for qid in stems if qid not in done]
    per_batch = max(1, batch_size // len(CONFIDENCE_GRID))
    with file.open("a", encoding="utf-8") as out, tqdm(total=len(todo), desc=desc, disable=None) as bar:
        for chunk in batched(todo, per_batch):
            batch = [candidates(tokenizer, items[qid][0], stems[qid]) for qid in chunk]
            probs = grid_log_probs(model, batch, tokenizer.pad_token_id).softmax(dim=1)
            for qid, p in zip(chunk, probs.tolist()):
                done[qid] = p
                out.write(json.dumps({"id": qid, "response": items[qid][1], "source": source,
                                      "distribution": p}) + "\n")
            out.flush()
            bar.update(len(chunk))
    return {qid: done[qid] for qid in stems}
