"""DeepSpeed config dicts built from a few flags (train and eval), as DeepSpeed-Chat does.

We always pass a ``torch.optim.AdamW`` client optimizer, so the config names no optimizer: that
avoids JIT-compiling DeepSpeed's fused CPU Adam and keeps one optimizer on CPU and GPU alike.
TensorBoard scalars are written by the steps themselves (tensorboardX), not by DeepSpeed.
"""
from __future__ import annotations

from typing import Any, Iterable

DTYPES = ("fp32", "fp16", "bf16")


def _precision(dtype: str) -> dict[str, Any]:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    return {"fp16": {"enabled": dtype == "fp16", "loss_scale_window": 100},
            "bf16": {"enabled": dtype == "bf16"}}


def _zero(stage: int, offload: bool, settings: Iterable[tuple[str, float]] = ()) -> dict[str, Any]:
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    zero: dict[str, Any] = {
        "stage": stage,
        "stage3_param_persistence_threshold": 1e4,
        "stage3_max_live_parameters": 3e7,
        "stage3_prefetch_bucket_size": 3e7,
        "memory_efficient_linear": False,
        **dict(settings),
    }
    if offload:
        zero["offload_param"] = {"device": "cpu"}
        zero["offload_optimizer"] = {"device": "cpu"}
    return zero


def train_ds_config(*, micro_batch_size: int, gradient_accumulation_steps: int, world_size: int,
                    zero_stage: int, dtype: str = "bf16", offload: bool = False,
                    gradient_clipping: float = 1.0, steps_per_print: int = 10**9,
                    zero3_settings: Iterable[tuple[str, float]] = ()) -> dict[str, Any]:
    """Config for an engine that trains (SFT model, reward model, actor, critic)."""
    config = {
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "steps_per_print": steps_per_print,
        "zero_optimization": _zero(zero_stage, offload, zero3_settings),
        "gradient_clipping": gradient_clipping,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
        # a torch client optimizer may be offloaded (else DeepSpeed insists on its own CPU Adam)
        "zero_force_ds_cpu_optimizer": False,
        **_precision(dtype),
    }
    return config


def eval_ds_config(*, micro_batch_size: int, world_size: int, zero_stage: int, dtype: str = "bf16",
                   offload: bool = False, zero3_settings: Iterable[tuple[str, float]] = ()) -> dict[str, Any]:
    """Config for a frozen engine (reference and reward models in PPO): no optimizer state."""
    zero = _zero(zero_stage, False, zero3_settings)
    if offload:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_batch_size": micro_batch_size * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "steps_per_print": 10**9,
        "zero_optimization": zero,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
        **_precision(dtype),
    }
