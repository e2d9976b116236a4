"""One step's train and eval sets: DeepSpeed-Chat's seeded per-step split of each ``--data_path`` entry's
train split (``--data_split``), the entries blended into one dataset (of any formats, read and checked by
:mod:`utils.data`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from utils.data import DataError, canonical, no_train_split, read_split, require_confidences


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
                    optional: Sequence[str] = (), allow_missing_confidence: bool = False):
    """Train and eval sets of one step, blended over all ``--data_path`` entries (of any formats),
    refused when empty.

    Each entry's train split is cut by ``data_split`` before conversion, so dropped rows never shift
    another step's share. ``optional`` columns are kept where every dataset has them. Where the step reads
    ``response``, responses without a usable confidence are refused unless ``allow_missing_confidence``."""
    trains, evals = [], []  # (source, rows)
    for path in paths:
        found = read_split(path, "train", required, optional, cache_dir)
        if found is None:
            raise no_train_split(path)
        rows, fmt = found
        phase_rows = rows.select(phase_indices(len(rows), data_split, phase, seed))
        trains.append(canonical(phase_rows, fmt, f"{path} (train)", required, optional))
        test = read_split(path, "test", required, optional, cache_dir)
        if test is not None:
            evals.append(canonical(*test, f"{path} (test)", required, optional))
    if "response" in required:
        require_confidences(trains + evals, allow_missing_confidence)
    train = _blend([part for _, part in trains], required, optional)
    if max_train is not None and max_train < len(train):
        # a seeded sample of the blend, not its first rows (which all come from the first --data_path)
        train = train.select(np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train]))
    if len(train) == 0:
        raise DataError(f"--data_path {' '.join(paths)} with --data_split {data_split}: "
                        f"no training rows for step {phase + 1}; check the split weights")
    evaluation = _blend([part for _, part in evals], required, optional) if evals else None
    return train, evaluation
