"""Reliability diagram of stated confidence (binning shared with ``metrics.ece``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from step4_evaluation.metrics import bin_statistics, ece


def reliability_diagram(
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    path: str | os.PathLike[str],
    n_bins: int = 10,
    title: str = "",
) -> Path:
    """Write a PNG: accuracy per confidence bin against the diagonal (annotated with ECE and n),
    and below it the histogram of confidences over the same bins.

    Bins follow ``metrics.bin_statistics`` (0.0 in the first bin, 1.0 in the
    last). Uses the Agg canvas directly, so pyplot's global state is untouched.
    The file is written to a temporary file in the target directory and then
    moved into place with ``os.replace``, so readers never see a partial PNG.
    Returns the written path.
    """
    bins = bin_statistics(confidence, correct, n_bins)
    width = 1.0 / n_bins
    left = bins.edges[:-1]
    filled = bins.counts > 0

    fig = Figure(figsize=(5, 6.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})

    top.bar(left[filled], bins.accuracy[filled], width=width, align="edge", edgecolor="black", label="accuracy")
    top.plot(left[filled] + width / 2, bins.mean_confidence[filled], "o", color="tab:red", label="mean confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.text(
        0.03,
        0.97,
        f"ECE = {ece(confidence, correct, n_bins):.4f}\nn = {int(bins.counts.sum())}",
        transform=top.transAxes,
        va="top",
    )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="lower right", fontsize="small")

    bottom.bar(left, bins.counts, width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set(xlabel="stated confidence", ylabel="count")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to a temporary file beside ``path``, then ``os.replace`` it into place, so
    readers never see a partial PNG. Returns the written path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target
