"""Tokenisation of rows and their collation into padded batches: SFT rows (labels only on the response),
reward pairs and prompts for generation."""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def encode(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_len: int,
                  add_special_tokens: bool = True) -> list[int]:
    """Prompt ids with the tokenizer's BOS; long prompts keep their end (where the question is)."""
    ids = encode(tokenizer, prompt, add_special_tokens=add_special_tokens)
    return ids[-max_len:]


def encode_completion(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str,
                      max_len: int) -> tuple[list[int], int]:
    """``prompt + completion + EOS`` as ids and the prompt's length. Encoded separately and joined,
    so the boundary is tokenised as in generation (the completion follows the prompt's ids).

    Over ``max_len``, the prompt loses its start first (its end holds the question), so the completion
    always keeps at least ``max_len - 1`` of its tokens: a row cut to its prompt alone would train on
    nothing (a NaN loss) and make a reward pair's halves identical."""
    completion_ids = (encode(tokenizer, completion) + [tokenizer.eos_token_id])[:max(max_len - 1, 1)]
    prompt_ids = encode_prompt(tokenizer, prompt, max(max_len - len(completion_ids), 1))
    return prompt_ids + completion_ids, len(prompt_ids)


def sft_features(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int) -> dict[str, list[int]]:
    """Loss only on the response tokens: the prompt's labels are ignored."""
    ids, prompt_len = encode_completion(tokenizer, prompt, response, max_len)
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]}


def pad_batch(sequences: Sequence[Sequence[int]], pad_value: int, side: str = "right") -> torch.Tensor:
    width = max(len(s) for s in sequences)
    rows = [[pad_value] * (width - len(s)) + list(s) if side == "left" else list(s) + [pad_value] * (width - len(s))
            for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def collate_sft(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    ids = [f["input_ids"] for f in features]
    return {"input_ids": pad_batch(ids, pad_id),
            "attention_mask": pad_batch([[1] * len(i) for i in ids], 0),
            "labels": pad_batch([f["labels"] for f in features], IGNORE_INDEX)}


def collate_pairs(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one right-padded batch (one forward pass)."""
    ids = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
    return {"input_ids": pad_batch(ids, pad_id), "attention_mask": pad_batch([[1] * len(i) for i in ids], 0)}


def collate_prompts(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts, so generation continues every row at the same position."""
    return {"input_ids": pad_batch(prompt_ids, pad_id, side="left"),
            "attention_mask": pad_batch([[1] * len(p) for p in prompt_ids], 0, side="left")}
