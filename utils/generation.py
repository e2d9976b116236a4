"""Batched generation shared by PPO rollouts and evaluation: left-padded prompts in, response ids out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from utils.data import collate_prompts


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: Sequence[Sequence[int]], settings: GenerationSettings,
             pad_id: int, eos_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Generate for a batch; return ``(sequences, attention_mask, prompt_width)``.

    ``sequences`` is ``[left-padded prompt | response]``; response tokens after the first EOS are
    pad and masked out (the EOS itself is kept and scored).
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_prompts(prompt_ids, pad_id).items()}
    width = batch["input_ids"].shape[1]
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                "top_k": 0} if settings.do_sample else {"do_sample": False}
    output = model.generate(**batch, max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
                            eos_token_id=eos_id, use_cache=True, **sampling)
    response = output[:, width:]
    after_eos = (response == eos_id).long().cumsum(dim=1) - (response == eos_id).long() > 0
    response = response.masked_fill(after_eos, pad_id)
    mask = torch.cat([batch["attention_mask"], (~after_eos).long()], dim=1)
    return torch.cat([batch["input_ids"], response], dim=1), mask, width


def response_ids(sequences: torch.Tensor, mask: torch.Tensor, prompt_width: int) -> list[list[int]]:
    """Each row's response tokens (EOS included where generated), as lists."""
    return [row[m.bool()].tolist() for row, m in zip(sequences[:, prompt_width:], mask[:, prompt_width:])]
