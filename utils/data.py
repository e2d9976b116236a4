"""Dataset loading (local jsonl/json/csv/parquet through ``datasets``, or hub names), validation,
DeepSpeed-Chat's per-step split, tokenisation and collation.

Expected columns: step 1 ``prompt`` + ``response`` (``chosen`` accepted as the response); step 2
``prompt`` + ``chosen`` + ``rejected``; step 3 ``prompt`` (+ optional ``answers``, a list of gold
strings, for the oracle quality reward); evaluation ``question`` + ``answers``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from utils.errors import UserError

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
IGNORE_INDEX = -100


class DataError(UserError):
    pass


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in LOCAL_FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def json_lines(file: Path) -> Iterator[tuple[str, dict]]:
    """``("file:line", row)`` for each non-blank line of a JSONL file; a line that is not a JSON object
    stops with a :class:`DataError` naming the file and line (``datasets`` would fail deep inside)."""
    with Path(file).open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg}); fix or remove the line") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _check_json_lines(file: Path, required: Sequence[str]) -> None:
    for where, row in json_lines(file):
        check_row(row, required, where)


def check_row(row: Any, required: Sequence[str], where: str) -> None:
    """Every required key present and non-empty, else a :class:`DataError` naming ``where`` and the key."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with keys {list(required)}, got {type(row).__name__}")
    for key in required:
        if key not in row:
            raise DataError(f"{where}: missing key {key!r} (needed: {list(required)})")
        value = row[key]
        if value is None or (isinstance(value, (str, list)) and len(value) == 0):
            raise DataError(f"{where}: key {key!r} is empty")


def _load_local(file: Path, required: Sequence[str], cache_dir: str | None):
    import datasets

    fmt = LOCAL_FORMATS.get(file.suffix)
    if fmt is None:
        raise DataError(f"{file}: unsupported file type; use one of {sorted(LOCAL_FORMATS)}")
    if file.suffix == ".jsonl":
        _check_json_lines(file, required)
    ds = datasets.load_dataset(fmt, data_files=str(file), split="train", cache_dir=cache_dir)
    if file.suffix != ".jsonl":
        header_rows = 2 if fmt == "csv" else 1  # line numbers a user sees in the file
        for index, row in enumerate(ds):
            check_row(row, required, f"{file} row {index + header_rows}")
    return ds


def load_split(path: str, split: str, required: Sequence[str], cache_dir: str | None = None):
    """One split of a dataset: a local folder holding ``{split}.jsonl|json|csv|parquet``, a local file
    (its rows are the train split), or a hub name. ``None`` when a folder/hub dataset lacks the split."""
    local = Path(path)
    if local.is_dir():
        file = _split_file(local, split)
        return None if file is None else _load_local(file, required, cache_dir)
    if local.is_file():
        return _load_local(local, required, cache_dir) if split == "train" else None
    if local.suffix in LOCAL_FORMATS or str(path).startswith((".", "/")):
        raise DataError(f"--data_path {path}: no such file or folder")
    return _load_hub(path, split, required, cache_dir)


def _load_hub(name: str, split: str, required: Sequence[str], cache_dir: str | None):
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except ValueError:  # the dataset has no such split
        return None
    except Exception as err:  # offline, unknown name, …
        raise DataError(f"--data_path {name}: not a local path and could not be loaded from the hub ({err})") from None
    missing = [key for key in required if key not in ds.column_names]
    if missing:
        raise DataError(f"--data_path {name}: columns {missing} missing (has {ds.column_names})")
    return ds


def phase_indices(n: int, data_split: Sequence[float], phase: int, seed: int) -> np.ndarray:
    """DeepSpeed-Chat's split: a seeded shuffle of ``n`` rows cut by the weights; rows of ``phase``."""
    weights = np.asarray(data_split, dtype=float)
    bounds = np.round(np.cumsum(weights) / weights.sum() * n).astype(int)
    start = 0 if phase == 0 else bounds[phase - 1]
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[start:bounds[phase]])


def load_phase_data(paths: Sequence[str], data_split: Sequence[float], phase: int, required: Sequence[str],
                    seed: int, cache_dir: str | None = None, max_train: int | None = None,
                    optional: Sequence[str] = ()):
    """Train and eval sets of one step over all ``--data_path`` entries, refused when empty.

    ``optional`` columns are kept where every dataset has them."""
    import datasets

    trains, evals = [], []
    for path in paths:
        train = load_split(path, "train", required, cache_dir)
        if train is None:
            raise DataError(f"--data_path {path}: no train split (expected train.jsonl/json/csv/parquet)")
        trains.append(train.select(phase_indices(len(train), data_split, phase, seed)))
        test = load_split(path, "test", required, cache_dir)
        if test is not None:
            evals.append(test)
    columns = list(required) + [c for c in optional if c not in required and all(c in t.column_names for t in trains)]
    train = datasets.concatenate_datasets(trains).select_columns(columns)
    if max_train is not None:
        train = train.select(range(min(max_train, len(train))))
    if len(train) == 0:
        raise DataError(f"--data_path {' '.join(paths)} with --data_split {data_split}: "
                        f"no training rows for step {phase + 1}; check the split weights")
    evaluation = datasets.concatenate_datasets(evals).select_columns(columns) if evals else None
    return train, evaluation


def encode(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_len: int,
                  add_special_tokens: bool = True) -> list[int]:
    """Prompt ids with the tokenizer's BOS; long prompts keep their end (where the question is)."""
    ids = encode(tokenizer, prompt, add_special_tokens=add_special_tokens)
    return ids[-max_len:]


def encode_completion(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str,
                      max_len: int) -> tuple[list[int], int]:
    """``prompt + completion + EOS`` as ids and the prompt's length. Encoded separately and joined,
    so the boundary is tokenised as in generation (the completion follows the prompt's ids)."""
    prompt_ids = encode_prompt(tokenizer, prompt, max_len)
    completion_ids = encode(tokenizer, completion) + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_len]
    return ids, min(len(prompt_ids), len(ids))


def sft_features(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_len: int) -> dict[str, list[int]]:
    """Loss only on the response tokens: the prompt's labels are ignored."""
    ids, prompt_len = encode_completion(tokenizer, prompt, response, max_len)
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]}


def pad_batch(sequences: Sequence[Sequence[int]], pad_value: int, side: str = "right") -> torch.Tensor:
    width = max(len(s) for s in sequences)
    rows = [[pad_value] * (width - len(s)) + list(s) if side == "left" else list(s) + [pad_value] * (width - len(s))
            for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def collate_sft(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    ids = [f["input_ids"] for f in features]
    return {"input_ids": pad_batch(ids, pad_id),
            "attention_mask": pad_batch([[1] * len(i) for i in ids], 0),
            "labels": pad_batch([f["labels"] for f in features], IGNORE_INDEX)}


def collate_pairs(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one right-padded batch (one forward pass)."""
    ids = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
    return {"input_ids": pad_batch(ids, pad_id), "attention_mask": pad_batch([[1] * len(i) for i in ids], 0)}


def collate_prompts(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts, so generation continues every row at the same position."""
    return {"input_ids": pad_batch(prompt_ids, pad_id, side="left"),
            "attention_mask": pad_batch([[1] * len(p) for p in prompt_ids], 0, side="left")}
