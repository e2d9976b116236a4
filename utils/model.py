"""Building models from HF folders (under ZeRO-3 where asked), scalar heads, and checkpoints.

Reward model and critic are ``AutoModelForSequenceClassification`` with one label: transformers'
own "causal LM backbone + bias-free scalar head", so their checkpoints are plain HF folders. We read
the head ourselves (at the last non-pad token, or at every token for the critic), since PPO batches
are left-padded.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, PreTrainedTokenizerBase)

from utils.errors import UserError
from utils.lora import convert_linear_to_lora, fuse_lora_state_dict, lora_scalings, only_optimize_lora

ARGS_FILE = "training_args.json"
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class MissingCheckpointError(UserError):
    """A step's input checkpoint is absent; the message names the step that writes it."""


def require_checkpoint(path: str | os.PathLike, flag: str, producer: str) -> None:
    """Refuse a local checkpoint path that is not an HF folder, naming the step to run first.

    Names that are not local paths (hub ids such as ``meta-llama/Llama-2-7b-hf``) pass through.
    """
    p = Path(path)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not Path(p.parts[0]).exists()
    looks_local = not looks_like_hub_id
    if looks_local and not (p / "config.json").is_file():
        raise MissingCheckpointError(
            f"{flag} {path}: no checkpoint there (config.json missing). Run {producer} first, "
            f"or point {flag} at an existing Hugging Face model folder.")


def load_tokenizer(path: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer; a missing pad token becomes EOS (Llama-2 ships none)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


@contextlib.contextmanager
def _zero3_construction(ds_config: dict[str, Any] | None) -> Iterator[Any]:
    """Under ZeRO-3, keep transformers' DeepSpeed hook alive while building so weights come out
    partitioned (``zero.Init`` around the constructor fails with transformers 5 and a pad id)."""
    if ds_config is not None and ds_config["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # transformers holds the config only through a weak reference: this local keeps it alive
        hf_config = HfDeepSpeedConfig(ds_config)
        yield hf_config
    else:
        yield None


def _no_dropout(config) -> None:
    for key in ("dropout", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop",
                "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(config, key):
            setattr(config, key, 0.0)


def create_causal_lm(path: str, tokenizer: PreTrainedTokenizerBase, dtype: str = "fp32",
                     ds_config: dict[str, Any] | None = None, disable_dropout: bool = False) -> nn.Module:
    config = AutoConfig.from_pretrained(path)
    if disable_dropout:
        _no_dropout(config)
    config.pad_token_id = tokenizer.pad_token_id
    with _zero3_construction(ds_config):
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=TORCH_DTYPES[dtype])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def create_scalar_model(path: str, tokenizer: PreTrainedTokenizerBase, dtype: str = "fp32",
                        ds_config: dict[str, Any] | None = None, disable_dropout: bool = False) -> nn.Module:
    """Backbone + scalar head; from a causal-LM folder the head starts fresh, from a step-2 folder it loads."""
    config = AutoConfig.from_pretrained(path, num_labels=1)
    if disable_dropout:
        _no_dropout(config)
    config.pad_token_id = tokenizer.pad_token_id
    with _zero3_construction(ds_config):
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=TORCH_DTYPES[dtype])
    model.trainable_heads = ("score",)
    return model


def apply_lora(model: nn.Module, lora_dim: int, module_name: str, scaling: float = 1.0,
               dropout: float = 0.0, only_lora: bool = False) -> nn.Module:
    """LoRA when ``lora_dim > 0`` (else the model trains in full), then optionally freeze the rest."""
    if lora_dim > 0:
        convert_linear_to_lora(model, module_name, lora_dim, scaling, dropout)
        if only_lora:
            only_optimize_lora(model)
    return model


def _backbone(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def token_values(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position, shape (batch, seq): the critic's values."""
    hidden = _backbone(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                              position_ids=position_ids(attention_mask)).last_hidden_state
    return model.score(hidden).squeeze(-1)


def sequence_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at each row's last non-pad token, shape (batch,): the reward."""
    values = token_values(model, input_ids, attention_mask)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return values.gather(1, last[:, None]).squeeze(1)


def _full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer on CPU; under ZeRO-3 each is gathered in turn (all ranks take part)."""
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                state[name] = param.data.detach().cpu().clone()
        else:
            state[name] = param.detach().cpu().clone()
    persistent = model.state_dict().keys()  # non-persistent buffers (rotary tables) are not weights
    for name, buffer in model.named_buffers():
        if name in persistent:
            state.setdefault(name, buffer.detach().cpu().clone())
    return state


def save_hf_checkpoint(model: nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike,
                       args: dict[str, Any] | None = None, is_main: bool = True) -> Path:
    """Write a plain HF folder (LoRA fused, safetensors, tokenizer, the flags that made it) atomically:
    everything goes to a temporary sibling folder that replaces ``output_dir`` in one rename.

    Every rank must call this (ZeRO-3 gathers are collective); only ``is_main`` writes.
    """
    model = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    state = fuse_lora_state_dict(_full_state_dict(model), lora_scalings(model))
    out = Path(output_dir)
    if not is_main:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        (tmp / ARGS_FILE).write_text(json.dumps(args or {}, indent=2, sort_keys=True, default=str))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_training_args(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / ARGS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


@contextlib.contextmanager
def unwrapped_for_generation(engine) -> Iterator[nn.Module]:
    """The engine's model with full parameters and no ZeRO-3 fetch hooks, for fast ``generate``.

    Under ZeRO-3, per-module hooks refetch every parameter for every generated token; gathering once
    and lifting the hooks (TRL's pattern) makes rollouts several times faster and lets each rank
    generate on its own (no ``synced_gpus``). Other stages need nothing.
    """
    model = engine.module
    if engine.zero_optimization_stage() != 3:
        yield model
        return
    import deepspeed

    offload = engine.optimizer.parameter_offload
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        for param in model.parameters():
            param.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield model
        finally:
            offload._register_deepspeed_module(offload.module)
