"""Stopping a run that diverged, before it saves: NaN/inf in a loss, a logged statistic or the weights, or an
optimizer that applied none of its updates (DeepSpeed skips a step whose gradients overflow, in bf16 and fp16
alike, without a word). Each raises :class:`~utils.errors.TrainingDiverged`, which ends the run with status 1.

A verdict that could differ between ranks is all-reduced first, so every rank stops at the same point: one
that stopped alone would leave the others waiting in a collective. Callers therefore run a check on all ranks.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from utils import dist
from utils.errors import TrainingDiverged

SUPERVISED_HINT = "try a lower --learning_rate (and --lora_learning_rate with LoRA)"
PPO_HINT = "try a lower --actor_learning_rate / --critic_learning_rate, and check --alpha and --kl_ctl"
DIVERGED_HINT = ("try a lower learning rate (steps 1 and 2: --learning_rate; step 3: --actor_learning_rate / "
                 "--critic_learning_rate, and check --alpha and --kl_ctl)")


def agreed(ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (the same answer on all of them)."""
    failures = dist.all_reduce_sum(torch.tensor([0.0 if ok else 1.0], dtype=torch.float64))
    return failures.item() == 0


def require_finite(values: Mapping[str, object], where: str, hint: str) -> None:
    """Raise unless every number among ``values`` is finite on every rank; ``where`` names the step and moment."""
    bad = {name: value for name, value in values.items()
           if isinstance(value, (int, float)) and not math.isfinite(value)}
    if agreed(not bad):
        return
    shown = ", ".join(f"{name} {value}" for name, value in bad.items()) or "a non-finite value on another rank"
    raise TrainingDiverged(f"{where}: {shown}: training diverged, so no model is saved; {hint}")


def weights_finite(engine) -> bool:
    """Whether this rank's weights of ``engine`` are finite (under ZeRO-3, its partition of each parameter)."""
    return all(bool(torch.isfinite(getattr(p, "ds_tensor", p)).all()) for p in engine.module.parameters())


def require_finite_weights(engines: Mapping[str, object], where: str, hint: str) -> None:
    """Raise unless the weights of every engine (by name) are finite on every rank."""
    bad = [name for name, engine in engines.items() if not weights_finite(engine)]
    if agreed(not bad):
        return
    shown = " and ".join(bad) or "a model on another rank"
    raise TrainingDiverged(f"{where}: the {shown} weights hold NaN/inf: training diverged, so they are not saved; "
                           f"{hint}")


class UpdateCounter:
    """Counts an engine's optimizer steps from now on, and those DeepSpeed skipped (same on every rank: the
    overflow verdict is all-reduced by DeepSpeed)."""

    def __init__(self, engine):
        self.engine = engine
        self.steps, self.skipped = engine.global_steps, engine.skipped_steps

    def done(self) -> tuple[int, int]:
        return self.engine.global_steps - self.steps, self.engine.skipped_steps - self.skipped


def require_applied_updates(counters: Mapping[str, UpdateCounter], where: str, hint: str) -> None:
    """Raise when an engine that took optimizer steps had every one skipped: its weights are the input's."""
    for name, counter in counters.items():
        steps, skipped = counter.done()
        if steps and skipped >= steps:
            raise TrainingDiverged(f"{where}: DeepSpeed skipped all {steps} optimizer steps of the {name} (NaN/inf "
                                   f"gradients), so it is unchanged and not saved; {hint}")
