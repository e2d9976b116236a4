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
import types
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase)

from utils import dist
from utils.errors import TrainingDiverged, UserError
from utils.files import staged_folder
from utils.finite import DIVERGED_HINT, agreed
from utils.generation import stop_token_ids
from utils.lora import convert_linear_to_lora, fuse_lora_state_dict, lora_scalings, only_optimize_lora

ARGS_FILE = "training_args.json"
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCALAR_HEAD = "score"  # transformers' name for the head of every causal LM's *ForSequenceClassification
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what from_pretrained reads; NAME.index.json when sharded
CAUSAL_LM, REWARD_MODEL = "causal LM", "reward model"  # the kinds of model a flag takes
# why the wrong kind matters (an LM head may be tied to the embeddings, so it need not start random)
_WRONG_KIND = {CAUSAL_LM: "", REWARD_MODEL: " (its score head would start random)"}


class MissingCheckpointError(UserError):
    """A step's input checkpoint is absent; the message names the step that writes it."""


class NotAModelError(UserError):
    """A checkpoint path holds something other than the model its flag takes."""


def _is_hub_id(path: str | os.PathLike) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", str(path))) and not Path(Path(path).parts[0]).exists()


def require_checkpoint(path: str | os.PathLike, flag: str, producer: str, kind: str | None = None,
                       weights: bool = False) -> None:
    """Refuse, before any weights load, a local path that is not the HF model folder ``flag`` takes: no
    config.json (naming the step to run first), a config.json that is not a model's, a model of the wrong
    ``kind`` (:data:`CAUSAL_LM` or :data:`REWARD_MODEL`, read from config.json's ``architectures``) and, with
    ``weights``, a folder without its weights (a dry run needs config.json only).

    Names that are not local paths (hub ids such as ``meta-llama/Llama-2-7b-hf``) pass through.
    """
    if _is_hub_id(path):
        return
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise MissingCheckpointError(
            f"{flag} {path}: no checkpoint there (config.json missing). Run {producer} first, "
            f"or point {flag} at an existing Hugging Face model folder.")
    config = _model_config(folder, flag, producer)
    if kind is not None:
        _require_kind(config, folder, flag, producer, kind)
    if weights:
        _require_weights(folder, flag, producer)


def _model_config(folder: Path, flag: str, producer: str) -> dict[str, Any]:
    file = folder / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        where = f"{file}:{err.lineno}" if isinstance(err, json.JSONDecodeError) else str(file)
        raise NotAModelError(f"{flag} {folder}: {where}: not valid JSON ({getattr(err, 'msg', err)}); rerun "
                             f"{producer}, or copy the whole model folder") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise NotAModelError(f'{flag} {folder}: {file}: no "model_type", so not a Hugging Face model\'s config; '
                             f"point {flag} at a model folder")
    return config


def _model_kind(architecture: str) -> str | None:
    """:data:`REWARD_MODEL` for a ``*ForSequenceClassification`` (what step 2 writes), :data:`CAUSAL_LM` for
    an LM-head architecture, None for any other."""
    if architecture.endswith("ForSequenceClassification"):
        return REWARD_MODEL
    return CAUSAL_LM if architecture.endswith(("ForCausalLM", "LMHeadModel")) else None


def _require_kind(config: dict[str, Any], folder: Path, flag: str, producer: str, kind: str) -> None:
    """Building one kind from the other loads the backbone and starts the head at random, silently."""
    architectures = config.get("architectures") or []
    if not architectures:  # a bare config (e.g. a dry run's) says nothing
        return
    found = _model_kind(architectures[0])
    wrong = found != REWARD_MODEL if kind == REWARD_MODEL else found == REWARD_MODEL
    if wrong:
        what = f"a {found}" if found else "another kind of model"
        raise NotAModelError(f"{flag} {folder}: is {what} ({architectures[0]}), but this flag takes a {kind}"
                             f"{_WRONG_KIND[kind]}: pass a folder written by {producer}")


def _require_weights(folder: Path, flag: str, producer: str) -> None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return
        index = folder / f"{name}.index.json"
        if index.is_file():
            _require_shards(index, flag, producer)
            return
    raise NotAModelError(f"{flag} {folder}: no weights there ({', '.join(WEIGHT_FILES)} or a sharded *.index.json); "
                         f"rerun {producer}, or copy the whole model folder")


def _require_shards(index: Path, flag: str, producer: str) -> None:
    """Every shard a sharded checkpoint's index names must be there (a partial copy fails mid-load)."""
    folder = index.parent
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise NotAModelError(f'{flag} {folder}: {index}: not a weight index (JSON with a "weight_map"); rerun '
                             f"{producer}, or copy the whole model folder") from None
    missing = sorted(shard for shard in shards if not (folder / shard).is_file())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotAModelError(f"{flag} {folder}: {index.name} names {missing[0]}, which is missing{more}; rerun "
                             f"{producer}, or copy the whole model folder")


def checked_tokenizer(path: str | os.PathLike, flag: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """:func:`load_tokenizer`, a tokenizer that cannot load refused in one line naming ``flag``."""
    try:
        return load_tokenizer(str(path), padding_side)
    except (OSError, ValueError) as err:  # missing or unreadable files; transformers' text spans lines
        reason = (str(err).strip().splitlines() or [""])[0]
        raise NotAModelError(f"{flag} {path}: cannot load its tokenizer ({type(err).__name__}: {reason}); the folder "
                             "needs the model's tokenizer files (tokenizer.json and tokenizer_config.json, as "
                             "save_pretrained writes them)") from None


def require_vocabulary_fits(path: str | os.PathLike, flag: str, tokenizer: PreTrainedTokenizerBase,
                            tokenizer_source: str) -> None:
    """Refuse a model with fewer embedding rows than ``tokenizer`` has tokens: the first token past the end
    is an IndexError mid-run. Reads the config only."""
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise NotAModelError(f"{flag} {path}: cannot read its config ({(str(err).splitlines() or [''])[0]})") from None
    size = getattr(config.get_text_config(), "vocab_size", None)
    if size is not None and size < len(tokenizer):
        raise NotAModelError(f"{flag} {path}: its vocabulary ({size}) is smaller than the tokenizer's "
                             f"({len(tokenizer)}, from {tokenizer_source}); use a model trained with that tokenizer")


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


_DROPOUT_KEY = re.compile(r"dropout|pdrop|layerdrop")


def _no_dropout(config: PretrainedConfig) -> None:
    """Every dropout probability the config has set to 0, whatever its family calls it (OPT's
    ``activation_dropout``, GPT-2's ``*_pdrop``, ``layerdrop``), in nested configs too: a fixed list of
    names left some on, and a dropped-out forward makes the PPO ratio of an unchanged policy differ from 1."""
    for key in config.to_dict():
        value = getattr(config, key, None)
        if isinstance(value, PretrainedConfig):
            _no_dropout(value)
        elif _DROPOUT_KEY.search(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(config, key, 0.0)


def _from_pretrained(auto_class, path: str, tokenizer: PreTrainedTokenizerBase, dtype: str,
                     ds_config: dict[str, Any] | None, disable_dropout: bool, **config_kwargs) -> nn.Module:
    """``auto_class`` from ``path`` with the tokenizer's pad id, every token's input embedding trainable."""
    config = AutoConfig.from_pretrained(path, **config_kwargs)
    if disable_dropout:
        _no_dropout(config)
    config.pad_token_id = tokenizer.pad_token_id
    with _zero3_construction(ds_config):
        model = auto_class.from_pretrained(path, config=config, dtype=TORCH_DTYPES[dtype])
    # The embedding's padding_idx (the config's pad id) never gets a gradient. Pad positions are masked out of
    # attention and loss anyway, so it only matters where the pad id is also a real token: with pad := EOS
    # (Llama, Mistral, Qwen2 base) it froze EOS's embedding, the token the reward is read at.
    model.get_input_embeddings().padding_idx = None
    return model


def create_causal_lm(path: str, tokenizer: PreTrainedTokenizerBase, dtype: str = "fp32",
                     ds_config: dict[str, Any] | None = None, disable_dropout: bool = False) -> nn.Module:
    model = _from_pretrained(AutoModelForCausalLM, path, tokenizer, dtype, ds_config, disable_dropout)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # the tokenizer's EOS (what training appends) first, the checkpoint's other stop ids kept (Llama-3's list)
    stops = stop_token_ids(model, tokenizer.eos_token_id)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    return model


def create_scalar_model(path: str, tokenizer: PreTrainedTokenizerBase, dtype: str = "fp32",
                        ds_config: dict[str, Any] | None = None, disable_dropout: bool = False) -> nn.Module:
    """Backbone + scalar head; from a causal-LM folder the head starts fresh, from a step-2 folder it loads."""
    model = _from_pretrained(AutoModelForSequenceClassification, path, tokenizer, dtype, ds_config, disable_dropout,
                             num_labels=1)
    if not isinstance(getattr(model, SCALAR_HEAD, None), nn.Linear):
        raise UserError(f"{path}: {type(model).__name__} has no linear `{SCALAR_HEAD}` head; the reward model and "
                        "critic need a causal-LM architecture whose sequence-classification head is named so")
    model.trainable_heads = (SCALAR_HEAD,)
    return values_at_every_token(model)


def values_at_every_token(model: nn.Module) -> nn.Module:
    """Make a ``*ForSequenceClassification`` model's forward return its head at every position.

    Calls then go through the root module (``engine(...)``), so ZeRO-3 sees whole forwards and can trace
    and prefetch them; calling backbone and head one by one left every layer fetched on demand.
    Checkpoints stay plain ``AutoModelForSequenceClassification`` folders."""
    model.forward = types.MethodType(_head_at_every_token, model)
    return model


def _head_at_every_token(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The head's value at every position, shape (batch, seq)."""
    hidden = getattr(model, model.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                     position_ids=position_ids, use_cache=False).last_hidden_state
    return getattr(model, SCALAR_HEAD)(hidden).squeeze(-1)


def apply_lora(model: nn.Module, lora_dim: int, module_name: str, scaling: float = 1.0,
               dropout: float = 0.0, only_lora: bool = False) -> nn.Module:
    """LoRA when ``lora_dim > 0`` (else the model trains in full), then optionally freeze the rest."""
    if lora_dim > 0:
        convert_linear_to_lora(model, module_name, lora_dim, scaling, dropout)
        if only_lora:
            only_optimize_lora(model)
    return model


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def gather_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(label) at each position."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def token_values(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position, shape (batch, seq): the critic's values. ``model`` is a
    :func:`values_at_every_token` model or the DeepSpeed engine around one."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))


def sequence_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at each row's last non-pad token, shape (batch,): the reward."""
    values = token_values(model, input_ids, attention_mask)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return values.gather(1, last[:, None]).squeeze(1)


def release_zero3_parameters(engine) -> None:
    """Put every ZeRO-3 parameter back in its partition before gathering outside a forward pass.

    A no-grad forward (evaluation, experience) lets ZeRO-3 prefetch parameters for a backward that never
    comes; they stay in flight, and a later gather skips them and then fails to re-partition them
    ("Cannot partition a param in flight"). No-op below stage 3 and for bare models."""
    if getattr(engine, "zero_optimization_partition_weights", lambda: False)():
        # the ZeRO-3 optimizer's own call (DeepSpeedZeRoOffload's for a frozen engine): the engine's
        # empty_partition_cache() adds gc.collect() and empty_cache(), ~0.27 s at every rollout on CPU
        engine.optimizer.empty_partition_cache()


def consolidated_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The full weights on CPU on rank 0 (``None`` on other ranks); every rank must call this.

    Under ZeRO-3 (``model`` is then the engine) DeepSpeed gathers one module at a time and only rank 0
    keeps a copy: a 7B model costs ~14 GB of host memory once, not once per rank.
    """
    if getattr(model, "zero_optimization_partition_weights", lambda: False)():
        release_zero3_parameters(model)
        return model._zero3_consolidated_16bit_state_dict()
    module = getattr(model, "module", model)
    if any(hasattr(p, "ds_id") for p in module.parameters()):
        raise TypeError("a ZeRO-3 partitioned model: pass its DeepSpeed engine, which can gather it")
    if not dist.is_main():
        return None
    return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}


def save_hf_checkpoint(model: nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike,
                       args: dict[str, Any] | None = None) -> Path:
    """Write a plain HF folder (LoRA fused, safetensors, tokenizer, the flags that made it) atomically:
    everything goes to a temporary sibling folder that replaces ``output_dir`` in one rename.

    Every rank must call this (ZeRO-3 gathers are collective); only rank 0 writes, and every rank returns
    once the folder is complete (the next step may read it at once). Weights holding NaN/inf are not written:
    every rank raises ``TrainingDiverged``.
    """
    state = consolidated_state_dict(model)
    finite = state is None or all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
    if not agreed(finite):  # rank 0 holds the state; the others learn its verdict
        raise TrainingDiverged(f"the weights to be saved to {output_dir} hold NaN/inf: training diverged, so they are "
                               f"not saved; {DIVERGED_HINT}")
    if state is not None:  # rank 0
        _write_hf_folder(getattr(model, "module", model), state, tokenizer, Path(output_dir), args)
    dist.barrier()
    return Path(output_dir)


def _write_hf_folder(model: nn.Module, state: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase,
                     out: Path, args: dict[str, Any] | None) -> None:
    state = fuse_lora_state_dict(state, lora_scalings(model))
    with staged_folder(out) as tmp:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        (tmp / ARGS_FILE).write_text(json.dumps(args or {}, indent=2, sort_keys=True, default=str))


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

    release_zero3_parameters(engine)
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
