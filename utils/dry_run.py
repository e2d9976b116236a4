"""``--dry_run``: print what a run would build — each engine's DeepSpeed config and DeepSpeed's ZeRO memory
estimate for it — then stop, without loading weights or starting a process group.

Parameters are counted on the meta device from the checkpoint's config.json, so a folder holding only that
file (or a hub id, online) is enough. The world size is the launcher's: ``scripts/common.sh`` prints the
command it would run and passes its GPUs per node and node count in ``CONQORD_DRY_RUN_GPUS_PER_NODE`` and
``CONQORD_DRY_RUN_NODES`` (both 1 for a plain ``python -m … --dry_run``).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from utils import args as flags
from utils.errors import UserError
from utils.lora import is_lora_parameter
from utils.model import apply_lora, require_checkpoint
from utils.training import SupervisedStep, supervised_ds_config

GPUS_VAR, NODES_VAR = "CONQORD_DRY_RUN_GPUS_PER_NODE", "CONQORD_DRY_RUN_NODES"
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
GB = 2**30


@dataclass(frozen=True)
class World:
    gpus_per_node: int
    nodes: int

    @property
    def size(self) -> int:
        return self.gpus_per_node * self.nodes


def launch_world() -> World:
    return World(_env_count(GPUS_VAR), _env_count(NODES_VAR))


def _env_count(name: str) -> int:
    value = os.environ.get(name, "1")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{name}={value!r}: expects a positive integer (set by scripts/common.sh)")
    return int(value)


@dataclass(frozen=True)
class ParamCount:
    model: str  # class name
    total: int
    lora: int
    largest_layer: int  # DeepSpeed's "largest layer": the most parameters one module holds itself


def count_parameters(path: str, flag: str, scalar_head: bool, lora_dim: int = 0,
                     lora_module: str = "layers.") -> ParamCount:
    """The model a step builds from ``path`` (LoRA adapters included), on the meta device: no weights read."""
    try:
        config = AutoConfig.from_pretrained(path, **({"num_labels": 1} if scalar_head else {}))
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} {path}: cannot read its config.json ({err})") from err
    with torch.device("meta"):
        model = (AutoModelForSequenceClassification if scalar_head else AutoModelForCausalLM).from_config(config)
        apply_lora(model, lora_dim, lora_module)
    named = list(model.named_parameters())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    return ParamCount(type(model).__name__, sum(p.numel() for _, p in named),
                      sum(p.numel() for name, p in named if is_lora_parameter(name)), largest)


@dataclass(frozen=True)
class Engine:
    name: str
    flag: str
    path: str
    scalar_head: bool
    config: dict[str, Any]
    trained: bool
    lora_dim: int = 0
    lora_module: str = "layers."


def training_estimate(count: ParamCount, zero: dict[str, Any], world: World) -> float:
    """Print DeepSpeed's table for the engine's ZeRO stage; return this run's GPU memory (bytes)."""
    from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                               estimate_zero3_model_states_mem_needs_all_cold)
    from deepspeed.runtime.zero.stage_1_and_2 import (estimate_zero2_model_states_mem_needs,
                                                      estimate_zero2_model_states_mem_needs_all_cold)

    offload = "offload_optimizer" in zero
    device = "cpu" if offload else "none"
    if zero["stage"] == 3:
        estimate_zero3_model_states_mem_needs_all_cold(count.total, count.largest_layer, world.gpus_per_node,
                                                       world.nodes)
        # ZeRO-3 models are built partitioned (zero_init) and --offload moves parameters and optimizer alike
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(count.total, count.largest_layer, world.gpus_per_node,
                                                            world.nodes, cpu_offload=offload,
                                                            cpu_offload_params=offload, zero_init=True)
        options = f"offload_param={device}, offload_optimizer={device}, zero_init=1"
    else:
        if zero["stage"] < 2:
            print(f"ZeRO-{zero['stage']}: DeepSpeed estimates stages 2 and 3 only; its ZeRO-2 figures are a lower "
                  "bound (stage 1 keeps the full gradients on every GPU, stage 0 also the full optimizer state)")
        estimate_zero2_model_states_mem_needs_all_cold(count.total, world.gpus_per_node, world.nodes)
        cpu, gpu = estimate_zero2_model_states_mem_needs(count.total, world.gpus_per_node, world.nodes,
                                                         cpu_offload=offload)
        options = f"offload_optimizer={device}"
    print(f"this run (ZeRO-{zero['stage']}, {options}): {gpu / GB:.2f}GB per GPU, {cpu / GB:.2f}GB per CPU")
    return gpu


def frozen_estimate(count: ParamCount, zero: dict[str, Any], world: World, dtype: str) -> float:
    """Weights only (DeepSpeed has no estimator for engines that never step); return GPU bytes."""
    weights = count.total * BYTES[dtype]
    offloaded = zero["stage"] == 3 and "offload_param" in zero  # below stage 3 DeepSpeed ignores offload_param
    gpu, cpu = float(weights), 0.0
    if zero["stage"] == 3:  # partitioned, one layer gathered at a time; offloaded partitions live in CPU memory
        layer = count.largest_layer * BYTES[dtype]
        gpu, cpu = (layer, weights / world.nodes) if offloaded else (layer + weights / world.size, 0.0)
    print(f"frozen, weights only (ZeRO-{zero['stage']}{', offload_param=cpu' if offloaded else ''}): "
          f"{gpu / GB:.2f}GB per GPU, {cpu / GB:.2f}GB per CPU")
    return gpu


def report(engines: list[Engine], world: World, dtype: str) -> None:
    nodes = f"{world.nodes} node{'s' if world.nodes > 1 else ''}"
    print(f"dry run: world size {world.size} ({nodes} x {world.gpus_per_node} GPUs); "
          "no weights loaded, no process group started, nothing written")
    total = 0.0
    for engine in engines:
        count = count_parameters(engine.path, engine.flag, engine.scalar_head, engine.lora_dim, engine.lora_module)
        print(f"\n== {engine.name}: {count.model} from {engine.path} ({engine.flag})")
        lora = f" ({count.lora:,} in LoRA adapters)" if count.lora else ""
        print(f"parameters: {count.total:,}{lora}, largest layer {count.largest_layer:,}")
        print(f"deepspeed config: {json.dumps(engine.config)}")
        zero = engine.config["zero_optimization"]
        if not engine.trained:
            total += frozen_estimate(count, zero, world, dtype)
            continue
        total += training_estimate(count, zero, world)
        if engine.lora_dim:
            print("  (counts every parameter as trained; LoRA's frozen base weights need no gradients or optimizer "
                  "state, so this is an upper bound)")
        if dtype == "fp32":
            print("  (DeepSpeed's figures assume 16-bit weights; --dtype fp32 needs more)")
    print(f"\nmodel states per GPU, all engines: {total / GB:.2f}GB (activations, caches and buffers come on top)")


def supervised(args: argparse.Namespace, step: SupervisedStep, scalar_head: bool) -> None:
    """Steps 1 and 2: one trained engine."""
    flags.check_args(args)
    require_checkpoint(args.model_name_or_path, "--model_name_or_path", step.producer, step.input_kind)
    world = launch_world()
    report([Engine(step.name, "--model_name_or_path", args.model_name_or_path, scalar_head,
                   supervised_ds_config(args, world.size), True, args.lora_dim, args.lora_module_name)],
           world, args.dtype)


def ppo(args: argparse.Namespace, engine_configs: Callable[[argparse.Namespace, int], dict[str, Any]],
        check_inputs: Callable[[argparse.Namespace], None]) -> None:
    """Step 3: actor, reference, critic and reward engines (step 3's builders passed in: utils never imports
    a step)."""
    flags.check_args(args)
    check_inputs(args)
    world = launch_world()
    configs = engine_configs(args, world.size)
    actor = ("--actor_model_name_or_path", args.actor_model_name_or_path)
    engines = [Engine("actor", *actor, False, configs["actor"], True, args.actor_lora_dim, args.actor_lora_module_name),
               Engine("reference", *actor, False, configs["reference"], False),
               Engine("critic", "--critic_model_name_or_path", args.critic_model_name_or_path, True, configs["critic"],
                      True, args.critic_lora_dim, args.critic_lora_module_name)]
    if configs["reward"] is not None:
        engines.append(Engine("reward", "--reward_model_name_or_path",
                              args.reward_model_name_or_path or args.critic_model_name_or_path, True,
                              configs["reward"], False))
    report(engines, world, args.dtype)
