"""Tokenised data cached under ``--data_output_path`` and reused by later runs (DeepSpeed-Chat keeps its
tokenised data there too).

A cache folder is ``<root>/tokenized/<sha256 of the fingerprint>``; the fingerprint holds what the
tokenised rows depend on: the data files (with sizes and modification times), ``--data_split``, the
phase, seed, row cap, tokenizer (its files' stamps and vocabulary size), length limit and step. Hub
datasets are keyed by name only: delete the folder after the hub copy changes. Rank 0 builds and saves
atomically; the other ranks wait at a barrier and load, so the root must be a folder every rank sees.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from transformers import PreTrainedTokenizerBase

from utils import dist
from utils.data import DataError

CACHE_VERSION = 2  # bump when a change to conversion or tokenisation makes old folders wrong
T = TypeVar("T")  # a datasets.Dataset or DatasetDict


def path_stamp(path: str) -> list:
    """What a change to ``path`` changes: a file's size and mtime, those of a folder's files, or the
    name itself (a hub name)."""
    local = Path(path)
    if local.is_file():
        stat = local.stat()
        return [str(local.resolve()), stat.st_size, stat.st_mtime_ns]
    if local.is_dir():
        files = sorted(f for f in local.iterdir() if f.is_file())
        return [str(local.resolve()), [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]]
    return [path]


def data_fingerprint(args, tokenizer: PreTrainedTokenizerBase, *, step: str, phase: int,
                     columns: Sequence[str], max_len: int) -> dict[str, Any]:
    """The cache key of one step's tokenised data under the shared data flags of ``args``."""
    return {"version": CACHE_VERSION, "step": step, "phase": phase, "columns": list(columns),
            "data": [path_stamp(p) for p in args.data_path], "data_split": list(args.data_split),
            "seed": args.seed, "max_train_examples": args.max_train_examples,
            # rows refused without the flag must not be reused from a run that had it
            "allow_missing_confidence": args.allow_missing_confidence,
            "tokenizer": [path_stamp(tokenizer.name_or_path), len(tokenizer)], "max_len": max_len}


def cache_folder(root: str, fingerprint: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    return Path(root) / "tokenized" / key


def _save(data, folder: Path) -> None:
    """Through a temporary sibling and one rename, so a folder that exists is complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    data.save_to_disk(str(tmp))
    try:
        tmp.rename(folder)
    except OSError:  # a concurrent run saved the same data first: keep theirs
        shutil.rmtree(tmp)
        if not folder.is_dir():
            raise


def cached_dataset(root: str | None, fingerprint: dict[str, Any], build: Callable[[], T]) -> T:
    """``build()``'s dataset, from ``root``'s cache when an earlier run saved it; without ``root``
    just ``build()``."""
    import datasets

    if root is None:
        return build()
    folder = cache_folder(root, fingerprint)
    write = dist.is_main() and not folder.is_dir()
    if write:
        _save(build(), folder)
    dist.print_rank0(f"data cache: {'wrote' if write else 'reused'} {folder}")
    dist.barrier()  # the other ranks load what rank 0 wrote
    if not folder.is_dir():
        raise DataError(f"{folder}: not visible on rank {dist.rank()}; --data_output_path must be a folder "
                        "every rank can read (a shared file system)")
    return datasets.load_from_disk(str(folder))
