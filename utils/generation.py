"""Batched generation shared by PPO rollouts and evaluation: left-padded prompts in, response ids out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from utils.collate import collate_prompts


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0


def stop_token_ids(model: nn.Module, eos_id: int) -> list[int]:
    """``eos_id``, then every other id the model's generation config stops at: Llama-3 lists
    ``<|eot_id|>`` beside ``<|end_of_text|>`` (a chat-tuned model ends its turn with it), Qwen2 Instruct
    ``<|endoftext|>`` beside ``<|im_end|>``."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys([eos_id, *(i for i in configured if i is not None)]))


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: Sequence[Sequence[int]], settings: GenerationSettings,
             pad_id: int, eos_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Generate for a batch; return ``(sequences, attention_mask, prompt_width)``.

    ``sequences`` is ``[left-padded prompt | response]``; a row stops at EOS or at any other
    :func:`stop_token_ids` id; response tokens after it are pad and masked out (the stop token itself
    is kept and scored). The attention mask, not the token id, marks padding: pad may equal EOS.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_prompts(prompt_ids, pad_id).items()}
    width = batch["input_ids"].shape[1]
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                "top_k": 0} if settings.do_sample else {"do_sample": False}
    stops = stop_token_ids(model, eos_id)
    output = model.generate(**batch, max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
                            eos_token_id=stops, use_cache=True, **sampling)
    response = output[:, width:]
    stopped = torch.isin(response, torch.tensor(stops, device=response.device)).long()
    after_stop = stopped.cumsum(dim=1) - stopped > 0
    response = response.masked_fill(after_stop, pad_id)
    mask = torch.cat([batch["attention_mask"], (~after_stop).long()], dim=1)
    return torch.cat([batch["input_ids"], response], dim=1), mask, width


def response_ids(sequences: torch.Tensor, mask: torch.Tensor, prompt_width: int) -> list[list[int]]:
    """Each row's response tokens (EOS included where generated), as lists."""
    return [row[m.bool()].tolist() for row, m in zip(sequences[:, prompt_width:], mask[:, prompt_width:])]
