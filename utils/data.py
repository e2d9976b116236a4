"""Dataset loading, validation, format conversion, DeepSpeed-Chat's per-step split and blending,
tokenisation and collation.

``--data_path`` entries are local folders (``train`` and optionally ``test`` files; DeepSpeed-Chat's
``eval`` file counts as ``test``), local files (all rows are ``train``) or hub names (``owner/name``, a
longer name is a ``data_dir`` subset such as ``Anthropic/hh-rlhf/helpful-base``). Local files may be
jsonl, json, csv or parquet, jsonl and json also gzipped. Rows are checked where they are read (a bad
row stops with a :class:`DataError` naming the file and line), then converted from their source format
(:mod:`utils.data_formats`: canonical, rm-static, hh-rlhf) into the step's canonical columns, so one run
can blend entries of different formats.

Canonical columns: step 1 ``prompt`` + ``response``; step 2 ``prompt`` + ``chosen`` + ``rejected``;
step 3 ``prompt`` (+ optional ``answers``, a list of gold strings, for the oracle quality reward);
evaluation ``question`` + ``answers``. Tokenised results are cached by :mod:`utils.data_cache`.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from utils.data_formats import CANONICAL, detect_format, source_columns, split_hub_name, to_canonical
from utils.errors import UserError

LOCAL_FORMATS = {".jsonl": "json", ".jsonl.gz": "json", ".json": "json", ".json.gz": "json", ".csv": "csv",
                 ".parquet": "parquet"}
SPLIT_FILES = {"test": ("test", "eval")}  # file stems of a split in a folder; DeepSpeed-Chat writes eval.json
IGNORE_INDEX = -100


class DataError(UserError):
    pass


def local_suffix(file: Path) -> str | None:
    """The :data:`LOCAL_FORMATS` suffix ``file`` ends with (``.jsonl.gz`` counts whole), else ``None``."""
    return next((suffix for suffix in LOCAL_FORMATS if file.name.endswith(suffix)), None)


def _split_file(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_FILES.get(split, (split,)):
        for suffix in LOCAL_FORMATS:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _open_text(file: Path) -> IO[str]:
    opener = gzip.open if file.name.endswith(".gz") else open
    return opener(file, "rt", encoding="utf-8-sig")


def json_lines(file: Path | str) -> Iterator[tuple[str, dict]]:
    """``("file:line", row)`` for each non-blank line of a JSONL file (gzipped when it ends in ``.gz``); a
    line that is not a JSON object stops with a :class:`DataError` naming the file and line (``datasets``
    would fail deep inside)."""
    file = Path(file)
    try:
        with _open_text(file) as handle:
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
    except (OSError, EOFError, UnicodeDecodeError) as err:  # a truncated .gz, a binary file, …
        raise DataError(f"{file}: cannot be read as UTF-8 JSON lines ({err}); re-create or replace it") from None


def _check_json_lines(file: Path, required: Sequence[str]) -> str:
    """Check every row for what its format needs; the format, which the first row decides (one file,
    one format)."""
    fmt, needed = CANONICAL, tuple(required)
    for index, (where, row) in enumerate(json_lines(file)):
        if index == 0:
            fmt = detect_format(row)
            needed = source_columns(fmt, required)
        check_row(row, needed, where)
    return fmt


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


def _read_local(file: Path, required: Sequence[str], cache_dir: str | None):
    """A local file's rows as they are, checked, and their format."""
    import datasets

    suffix = local_suffix(file)
    if suffix is None:
        raise DataError(f"{file}: unsupported file type; use one of {list(LOCAL_FORMATS)}")
    # JSON lines are checked before ``datasets`` reads them, for line-precise errors
    fmt = _check_json_lines(file, required) if suffix.startswith(".jsonl") else None
    try:
        ds = datasets.load_dataset(LOCAL_FORMATS[suffix], data_files=str(file), split="train", cache_dir=cache_dir)
    except Exception as err:  # malformed json/csv/parquet: one line instead of the builder's traceback
        raise DataError(f"{file}: could not be read as {suffix[1:]} ({err}); fix or re-create it") from None
    if fmt is None:
        fmt = detect_format(ds.column_names)
        needed = source_columns(fmt, required)
        header_rows = 2 if suffix == ".csv" else 1  # line numbers a user sees in the file
        for index, row in enumerate(ds):
            check_row(row, needed, f"{file} row {index + header_rows}")
    return ds, fmt


def _read_hub(name: str, split: str, required: Sequence[str], cache_dir: str | None):
    """A hub dataset's split as it is and its format (registry, else columns); ``None`` without the split."""
    import datasets

    repo, data_dir = split_hub_name(name)
    try:
        ds = datasets.load_dataset(repo, data_dir=data_dir, split=split, cache_dir=cache_dir)
    except ValueError:  # the dataset has no such split
        return None
    except Exception as err:  # offline, unknown name, …
        raise DataError(f"--data_path {name}: not a local path and could not be loaded from the hub ({err})") from None
    fmt = detect_format(ds.column_names, hub_name=name)
    missing = [key for key in source_columns(fmt, required) if key not in ds.column_names]
    if missing:
        raise DataError(f"--data_path {name}: columns {missing} missing for its {fmt} format (has {ds.column_names})")
    return ds, fmt


def _read_split(path: str, split: str, required: Sequence[str], cache_dir: str | None):
    """``(rows as in the source, format)`` of one split, ``None`` where a folder/hub dataset lacks it."""
    local = Path(path)
    if local.is_dir():
        file = _split_file(local, split)
        return None if file is None else _read_local(file, required, cache_dir)
    if local.is_file():
        return _read_local(local, required, cache_dir) if split == "train" else None
    if local_suffix(local) or str(path).startswith((".", "/")):
        raise DataError(f"--data_path {path}: no such file or folder")
    return _read_hub(path, split, required, cache_dir)


def load_split(path: str, split: str, required: Sequence[str], cache_dir: str | None = None,
               optional: Sequence[str] = ()):
    """One split of a dataset in the canonical ``required`` columns (+ the ``optional`` ones it has): a
    local folder holding ``{split}.jsonl|json|csv|parquet`` (``.gz`` too), a local file (its rows are the
    train split), or a hub name. ``None`` when a folder/hub dataset lacks the split."""
    found = _read_split(path, split, required, cache_dir)
    return None if found is None else to_canonical(*found, required, optional, source=f"{path} ({split})")


def phase_indices(n: int, data_split: Sequence[float], phase: int, seed: int) -> np.ndarray:
    """DeepSpeed-Chat's split: a seeded shuffle of ``n`` rows cut by the weights; rows of ``phase``."""
    weights = np.asarray(data_split, dtype=float)
    bounds = np.round(np.cumsum(weights) / weights.sum() * n).astype(int)
    start = 0 if phase == 0 else bounds[phase - 1]
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[start:bounds[phase]])


def _blend(parts: Sequence, required: Sequence[str], optional: Sequence[str]):
    """Rows of all parts in one dataset; ``optional`` columns kept where every part has them."""
    import datasets

    columns = list(required) + [c for c in optional
                                if c not in required and all(c in part.column_names for part in parts)]
    return datasets.concatenate_datasets([part.select_columns(columns) for part in parts])


def load_phase_data(paths: Sequence[str], data_split: Sequence[float], phase: int, required: Sequence[str],
                    seed: int, cache_dir: str | None = None, max_train: int | None = None,
                    optional: Sequence[str] = ()):
    """Train and eval sets of one step, blended over all ``--data_path`` entries (of any formats),
    refused when empty.

    Each entry's train split is cut by ``data_split`` before conversion, so dropped rows never shift
    another step's share. ``optional`` columns are kept where every dataset has them."""
    trains, evals = [], []
    for path in paths:
        found = _read_split(path, "train", required, cache_dir)
        if found is None:
            raise DataError(f"--data_path {path}: no train split (expected train.jsonl/json/csv/parquet)")
        rows, fmt = found
        phase_rows = rows.select(phase_indices(len(rows), data_split, phase, seed))
        trains.append(to_canonical(phase_rows, fmt, required, optional, source=f"{path} (train)"))
        test = load_split(path, "test", required, cache_dir, optional)
        if test is not None:
            evals.append(test)
    train = _blend(trains, required, optional)
    if max_train is not None and max_train < len(train):
        # a seeded sample of the blend, not its first rows (which all come from the first --data_path)
        train = train.select(np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train]))
    if len(train) == 0:
        raise DataError(f"--data_path {' '.join(paths)} with --data_split {data_split}: "
                        f"no training rows for step {phase + 1}; check the split weights")
    evaluation = _blend(evals, required, optional) if evals else None
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
    so the boundary is tokenised as in generation (the completion follows the prompt's ids).

    Over ``max_len``, the prompt loses its start first (its end holds the question), so the completion
    always keeps at least ``max_len - 1`` of its tokens: a row cut to its prompt alone would train on
    nothing (a NaN loss) and make a reward pair's halves identical."""
    completion_ids = (encode(tokenizer, completion) + [tokenizer.eos_token_id])[:max(max_len - 1, 1)]
    prompt_ids = encode_prompt(tokenizer, prompt, max(max_len - len(completion_ids), 1))
    return prompt_ids + completion_ids, len(prompt_ids)


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
