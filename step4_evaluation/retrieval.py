"""Confidence-gated (adaptive) retrieval: BM25 over a passage file, and the threshold sweep.

The model answers every question twice, without and with the top-k retrieved passages in its prompt;
at threshold τ a question uses the retrieval answer exactly when its stated confidence is < τ. So
τ = 0 never retrieves, τ > 1 always does, and each τ costs no extra generation. With a dev split,
:func:`tau_on_dev` picks τ on the dev questions and reports what it gives on the test questions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from step4_evaluation.metrics import accuracy, bootstrap_ci
from step4_evaluation.plots import save_figure
from utils.data import DataError, check_row
from utils.jsonl import json_lines

DEFAULT_THRESHOLDS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2)) + (1.01,)


def load_passages(path: str | Path) -> list[dict]:
    """A JSONL file of ``{"id", "text"}`` passages; a bad line names the file, the line and the key."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--retrieval_corpus {path}: no such file (JSONL lines with id and text)")
    passages = []
    for where, row in json_lines(file):
        check_row(row, ("id", "text"), where)
        passages.append(row)
    if not passages:
        raise DataError(f"--retrieval_corpus {path}: no passages")
    return passages


class BM25Retriever:
    """BM25 (``bm25s``) over passage texts, English stopwords removed."""

    def __init__(self, passages: Sequence[dict]):
        import bm25s

        self._bm25s = bm25s
        self.texts = [p["text"] for p in passages]
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize(self.texts, stopwords="en", show_progress=False), show_progress=False)

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[str]]:
        k = min(k, len(self.texts))
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        docs, _ = self.index.retrieve(tokens, k=k, show_progress=False)
        return [[self.texts[i] for i in row] for row in docs]


def threshold_sweep(confidence: Sequence[float], correct_without: Sequence[int], correct_with: Sequence[int],
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict[str, float]]:
    """Accuracy and retrieval rate when retrieving for every question whose confidence is < τ."""
    conf = np.asarray(confidence, dtype=float)
    without, with_ = np.asarray(correct_without, dtype=float), np.asarray(correct_with, dtype=float)
    rows = []
    for tau in thresholds:
        retrieve = conf < tau
        rows.append({"tau": float(tau), "retrieval_rate": float(retrieve.mean()),
                     "accuracy": float(np.where(retrieve, with_, without).mean())})
    return rows


def tau_on_dev(dev_sweep: Sequence[dict], confidence: Sequence[float], correct_without: Sequence[int],
               correct_with: Sequence[int], bootstrap: int = 0, seed: int = 0) -> dict[str, object]:
    """The τ of ``dev_sweep`` with the best dev accuracy (ties: the smallest retrieval rate, then the smallest τ),
    and on the test questions (the other arguments) its accuracy and retrieval rate beside never (τ = 0) and
    always (τ > 1) retrieving; with ``bootstrap`` > 0, seeded 95% intervals of these three test accuracies (``ci``)."""
    best = min(dev_sweep, key=lambda r: (-r["accuracy"], r["retrieval_rate"], r["tau"]))
    conf = np.asarray(confidence, dtype=float)
    without, with_ = np.asarray(correct_without, dtype=float), np.asarray(correct_with, dtype=float)
    retrieve = conf < best["tau"]
    answered = np.where(retrieve, with_, without)
    result: dict[str, object] = {
        "tau": best["tau"], "dev_accuracy": best["accuracy"], "dev_retrieval_rate": best["retrieval_rate"],
        "n_test": int(conf.size), "test_accuracy": float(answered.mean()),
        "test_retrieval_rate": float(retrieve.mean()), "test_accuracy_never": float(without.mean()),
        "test_accuracy_always": float(with_.mean())}
    if bootstrap > 0:  # resampled test questions; accuracy only validates the confidences
        outcomes = {"test_accuracy": answered, "test_accuracy_never": without, "test_accuracy_always": with_}
        result["ci"] = {key: list(bootstrap_ci(accuracy, conf, correct, bootstrap, seed=seed))
                        for key, correct in outcomes.items()}
    return result


def plot_sweep(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Accuracy and retrieval rate against τ, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    taus = [min(r["tau"], 1.0) for r in rows]
    ax.plot(taus, [r["accuracy"] for r in rows], marker="o", label="accuracy")
    ax.plot(taus, [r["retrieval_rate"] for r in rows], marker="s", linestyle="--", label="retrieval rate")
    ax.set_xlabel("confidence threshold τ (retrieve when confidence < τ)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
