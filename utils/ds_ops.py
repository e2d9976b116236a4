"""DeepSpeed's JIT-built ops, in a project-owned cache and built under a lock that dies with its holder.

torch builds a JIT op under a ``lock`` file in the op's build folder, and every other process waits for
that file to vanish, without limit and without a word. A run killed mid-build leaves the file behind, so
every later run on the machine hangs in ``deepspeed.init_distributed``. Here each build runs under an
``flock`` on ``<cache>/.build.lock``, which the kernel releases when its holder dies: a torch ``lock`` file
found while holding it is a killed build's and is removed (with a printed line). Waiting for a live build
is bounded by :data:`TIMEOUT_ENV` and says which lock it waits on.

The cache is ``<repo>/.cache/torch_extensions/py<X.Y>-torch<version>`` unless ``TORCH_EXTENSIONS_DIR`` is set
(torch then keys op folders by name alone, so the versions go into the path). It is torch's variable, so once
set, DeepSpeed's own later loads in the run go there too. On CUDA nothing is built here (NCCL needs no op).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from utils.errors import UserError
from utils.files import lock_holder, record_holder

PROJECT_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "torch_extensions"
TIMEOUT_ENV = "CONQORD_OP_BUILD_TIMEOUT"
DEFAULT_TIMEOUT_S = 900.0  # a cold build of the CPU comm op takes about a minute on 2 cores
BUILD_LOCK = ".build.lock"


class OpBuildLockError(UserError):
    """Another process held the op-build lock for longer than the timeout."""


def extensions_dir() -> Path:
    """Where torch builds JIT ops: ``TORCH_EXTENSIONS_DIR``, set to the project's cache when unset."""
    import torch

    versions = f"py{sys.version_info.major}.{sys.version_info.minor}-torch{torch.__version__}"
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT_CACHE / versions))
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={text!r}: expects a number of seconds") from None


@contextlib.contextmanager
def build_lock(folder: Path, timeout: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``folder/.build.lock`` for the block, waiting at most ``timeout`` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BUILD_LOCK
    with path.open("a+", encoding="utf-8") as handle:
        deadline, announced = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = lock_holder(handle, "another process")
                if time.monotonic() >= deadline:
                    raise OpBuildLockError(
                        f"{path}: held by {holder} for over {timeout:.0f} s while building a DeepSpeed op; wait for "
                        f"it to end, or raise {TIMEOUT_ENV}") from None
                if not announced:
                    print(f"waiting for {path} ({holder} is building a DeepSpeed op; at most {timeout:.0f} s)",
                          flush=True)
                    announced = True
                time.sleep(1.0)
        record_holder(handle)
        yield  # closing the handle releases the flock


def remove_stale_torch_lock(build_folder: Path) -> None:
    """torch's baton file in an op's build folder; called under :func:`build_lock`, so it is a killed build's."""
    baton = build_folder / "lock"
    if baton.exists():
        baton.unlink()
        print(f"removed {baton}: left by a killed DeepSpeed op build", flush=True)


def _needed_builders() -> list:
    """The op builders ``deepspeed.init_distributed`` loads on this accelerator (the CPU's shared-memory
    collectives; none on CUDA), as DeepSpeed decides it: present and compatible."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return []
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    return [builder] if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False) else []


def ensure_built() -> None:
    """Build (or load) the ops DeepSpeed is about to load, one process at a time, before it does; DeepSpeed
    then finds them loaded in this process and never waits on torch's baton."""
    builders = _needed_builders()
    if not builders:
        return
    cache = extensions_dir()
    with build_lock(cache, _timeout()):
        for builder in builders:
            from torch.utils.cpp_extension import _get_build_directory

            remove_stale_torch_lock(Path(_get_build_directory(builder.name, verbose=False)))
            builder.load(verbose=False)
