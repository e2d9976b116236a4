"""Process-group helpers: start-up (gloo on CPU, nccl on GPU) and shutdown, rank-0 printing, variable-size gather."""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launch_rank() -> int:
    """This process's global rank, also before the process group starts (the launchers set ``RANK``)."""
    return rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def print_rank0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(local_rank: int = -1) -> torch.device:
    """Start the process group through DeepSpeed (also in one process) and return this rank's device.

    A plain ``python -m`` run gets the single-process defaults DeepSpeed expects; launchers
    (``deepspeed``, ``torchrun``) set these variables themselves.
    """
    import deepspeed

    from utils import ds_ops

    # DeepSpeed calls torch collectives that torch now marks deprecated, once per ZeRO step.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.distributed\.\w+`? is deprecated")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
        os.environ.setdefault(key, value)
    if local_rank < 0:
        local_rank = int(os.environ["LOCAL_RANK"])
    if not is_distributed():
        ds_ops.ensure_built()  # bounded wait, stale build locks removed: DeepSpeed's own load waits forever
        deepspeed.init_distributed(dist_backend=default_backend())
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def shutdown() -> None:
    """End the process group while every rank is still alive: all ranks meet, then the backend joins its
    threads. Left to interpreter teardown, a gloo rank that finished first sometimes aborted with
    "terminate called without an active exception" (CI, step 2 on two processes, after its save);
    torch also asks for an explicit ``destroy_process_group`` before exit under NCCL."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def comm_device() -> torch.device:
    """Where tensors handed to a collective must live: this rank's GPU under NCCL (which serves CUDA
    tensors only), the CPU under gloo. Every collective below moves its input here itself, so no
    caller can hand NCCL a CPU tensor."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_variable(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate a 1-D tensor over ranks (sizes may differ); also return where this rank's part starts.

    The result lives on the input's device."""
    if not is_distributed() or world_size() == 1:
        return tensor, 0
    device = comm_device()
    size = torch.tensor([tensor.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in torch.cat(sizes).tolist()]
    padded = torch.zeros(max(counts), dtype=tensor.dtype, device=device)
    padded[: tensor.numel()] = tensor.to(device)
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    gathered = torch.cat([part[:count] for part, count in zip(parts, counts)])
    return gathered.to(tensor.device), sum(counts[: rank()])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over ranks, returned on the input's device."""
    if not is_distributed():
        return tensor
    total = tensor.to(comm_device(), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def all_reduce_mean(value: float) -> float:
    """Mean of a Python number over ranks (for logging)."""
    if not is_distributed():
        return value
    return all_reduce_sum(torch.tensor([value], dtype=torch.float64)).item() / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
