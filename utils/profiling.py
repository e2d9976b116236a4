"""Where the time and the GPU memory go: per-phase wall clock and peak accelerator memory, for the
steps' summaries (``scripts/gpu_smoke.sh`` reads them)."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import torch


def _synchronize() -> None:
    # CUDA kernels run asynchronously: without a sync the time lands in whichever phase waits next
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class PhaseTimer:
    """Accumulates seconds per named phase: ``with timer("generation"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def per_step(self, steps: int) -> dict[str, float]:
        """``seconds_<phase>`` averaged over ``steps``."""
        return {f"seconds_{phase}": round(total / max(steps, 1), 4) for phase, total in self.seconds.items()}


def peak_gpu_memory_gib() -> float | None:
    """Peak memory this process allocated on its GPU so far (None without one)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)
