"""Every tensor handed to a collective lives on the communication device (NCCL serves CUDA tensors only).

gloo accepts CPU tensors, so CPU runs never saw step 3 hand NCCL the CPU tensors it builds (quality,
confidence, logged means). Here torch.distributed's collectives are replaced by NCCL-like ones that
refuse a tensor off the communication device — a ``meta`` device stands in for the GPU — and each
call site that reaches a collective is driven up to it.
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from utils import dist

GPU = torch.device("meta")  # not the CPU, where every tensor of this test starts


class ReachedCollective(Exception):
    """The collective was called with every tensor on the communication device."""


def _nccl_like(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if tensor.device != GPU:
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
    raise ReachedCollective


@pytest.fixture
def nccl(monkeypatch):
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 0)
    monkeypatch.setattr(dist, "comm_device", lambda: GPU, raising=False)
    monkeypatch.setattr(torch.distributed, "all_gather", lambda outputs, tensor, *a, **k: _nccl_like(tensor, *outputs))
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, *a, **k: _nccl_like(tensor))


def test_the_guard_refuses_cpu_tensors(nccl):
    with pytest.raises(RuntimeError, match="device type cpu"):
        torch.distributed.all_reduce(torch.zeros(1))


def test_dist_helpers_move_cpu_inputs_to_the_communication_device(nccl):
    with pytest.raises(ReachedCollective):
        dist.all_gather_variable(torch.ones(3))
    with pytest.raises(ReachedCollective):
        dist.all_reduce_mean(0.5)
    with pytest.raises(ReachedCollective):
        dist.all_reduce_sum(torch.zeros(2, dtype=torch.float64))


def test_step3_alignment_reward_gather(nccl):
    """R_A over all ranks' rollouts: quality and confidence are built on the CPU."""
    from utils.reward import RewardSettings, dual_reward

    settings = RewardSettings(alpha=0.5, align_reward_scope="global", align_reward_reduction="mean",
                              clip_reward_value=5.0, quality_reward="oracle", score_with_confidence=False,
                              missing_confidence=0.0)
    with pytest.raises(ReachedCollective):
        dual_reward(torch.tensor([1.0, 0.0]), torch.tensor([0.9, 0.2]), settings, step=0)


def test_step3_logged_means(nccl):
    from step3_RL_finetune_LLM.trainer import _record

    buffer = [SimpleNamespace(stats={"quality_reward": 0.5})]
    with pytest.raises(ReachedCollective):
        _record(buffer, [{"actor_loss": 0.1}], step=1, epoch=0, seconds=1.0)


@pytest.mark.parametrize("evaluate", ["step1_supervised_finetuning_LM.sft:evaluate_perplexity",
                                      "step2_reward_model.reward_model:evaluate_pairs"])
def test_step1_and_step2_evaluation_totals(nccl, evaluate):
    import importlib

    module, name = evaluate.split(":")
    engine = SimpleNamespace(device=torch.device("cpu"), eval=lambda: None)
    with pytest.raises(ReachedCollective):
        getattr(importlib.import_module(module), name)(engine, loader=[])


def test_no_collective_bypasses_utils_dist():
    """Only utils/dist.py talks to torch.distributed's collectives, so the device rule lives in one place."""
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"torch\.distributed\.(all_reduce|all_gather\w*|broadcast\w*|reduce_scatter\w*|reduce|gather|"
                         r"scatter)\(|import torch\.distributed")
    offenders = [f"{path.relative_to(root)}:{number}"
                 for folder in ("utils", "step1_supervised_finetuning_LM", "step2_reward_model",
                                "step3_RL_finetune_LLM", "step4_evaluation")
                 for path in (root / folder).rglob("*.py") if path.name != "dist.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"collectives outside utils/dist.py: {offenders}"
