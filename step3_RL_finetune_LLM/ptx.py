"""PPO-ptx (InstructGPT; DeepSpeed-Chat's ``--unsupervised_dataset_name`` / ``--unsup_coef``): the actor's
language-modelling loss on step-1-format rows, one batch added to each of its PPO minibatch losses
(InstructGPT's combined objective; DeepSpeed-Chat takes a separate optimizer step instead).

PPO moves the actor towards what is rewarded on *its* prompts; on the toy world that also moves answers to
questions it never trains on (held-out countries lose accuracy). Mixing in the SFT loss holds what SFT
taught.

Batches are a pure function of their index (a seeded permutation per epoch, each rank its share), so a
resumed run draws exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import torch

from utils import dist
from utils.collate import IGNORE_INDEX, collate_sft, sft_features
from utils.confidence import confidence_value_token_span
from utils.data_split import load_phase_data

COLUMNS = ("prompt", "response")
ALL_ROWS = (1.0, 0.0, 0.0)  # --data_split weights: every row of the unsupervised data goes to this use


class PtxBatches:
    """The k-th batch of this rank's share of a tokenised SFT dataset, for any k (epochs wrap around)."""

    def __init__(self, dataset, batch_size: int, pad_id: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.collate = partial(collate_sft, pad_id=pad_id)
        self.per_batch = batch_size * dist.world_size()  # rows of one batch over all ranks
        self.batches_per_epoch = max(1, -(-len(dataset) // self.per_batch))

    def rows(self, k: int) -> list[int]:
        """Dataset indices of this rank's k-th batch (the epoch's last batch wraps to its first rows)."""
        epoch, index = divmod(k, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        start = index * self.per_batch + dist.rank() * self.batch_size
        return [int(order[i % len(order)]) for i in range(start, start + self.batch_size)]

    def batch(self, k: int, device: torch.device) -> dict[str, torch.Tensor]:
        features = [self.dataset[i] for i in self.rows(k)]
        return {key: value.to(device) for key, value in self.collate(features).items()}


@dataclass(frozen=True)
class PtxSettings:
    """What PPO-ptx reads of step 3's flags; each field is the flag of the same name. Built once at start
    (:func:`ptx_settings`)."""

    unsupervised_dataset_name: list[str] | None  # step-1-format files of the ptx rows; None: no PPO-ptx
    unsup_mask_confidence: bool  # ignore the labels of the stated confidence number in the ptx loss
    allow_missing_confidence: bool  # accept rows whose response states no confidence
    max_prompt_seq_len: int  # with max_answer_seq_len, the token limit of a ptx row
    max_answer_seq_len: int
    per_device_training_batch_size: int  # ptx rows per actor update, per rank
    seed: int  # the per-epoch permutation of the rows
    data_output_path: str | None  # where the data split is cached


def ptx_settings(args: argparse.Namespace) -> PtxSettings:
    """The settings from step 3's parsed flags (same names)."""
    return PtxSettings(**{f.name: getattr(args, f.name) for f in fields(PtxSettings)})


def load_ptx_batches(settings: PtxSettings, tokenizer) -> PtxBatches | None:
    """The ``--unsupervised_dataset_name`` rows, checked and tokenised at start (before any model loads);
    ``None`` without the flag."""
    if not settings.unsupervised_dataset_name:
        return None
    rows, _ = load_phase_data(settings.unsupervised_dataset_name, ALL_ROWS, 0, COLUMNS, settings.seed,
                              settings.data_output_path, allow_missing_confidence=settings.allow_missing_confidence)
    max_len = settings.max_prompt_seq_len + settings.max_answer_seq_len
    features = partial(sft_features, tokenizer, max_len=max_len)
    if settings.unsup_mask_confidence:
        features = partial(without_confidence_labels, features, tokenizer)
    tokenised = rows.map(lambda row: features(row["prompt"], row["response"]), remove_columns=list(COLUMNS))
    return PtxBatches(tokenised, settings.per_device_training_batch_size, tokenizer.pad_token_id, settings.seed)


def without_confidence_labels(features, tokenizer, prompt: str, response: str) -> dict[str, list[int]]:
    """``features(prompt, response)`` with the labels of the stated confidence number ignored: step 1's
    confidences (random on the toy world) would otherwise pull every level back to theirs at each update,
    while the answers and the format, tag included, are still held."""
    row = features(prompt, response)
    prompt_len = sum(label == IGNORE_INDEX for label in row["labels"])
    span = confidence_value_token_span(row["input_ids"][prompt_len:], tokenizer)
    if span is not None:
        start, end = (prompt_len + i for i in span)
        row["labels"][start:end] = [IGNORE_INDEX] * (end - start)
    return row


def ptx_loss(actor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The actor's LM loss on the batch's response tokens (the prompt's labels are ignored)."""
    return actor(**batch, use_cache=False).loss
