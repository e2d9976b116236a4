"""Calibration metrics for stated (verbalised) confidence -- step 4 of CONQORD.

Every metric takes two 1-D arrays of equal, non-zero length: ``confidence``
(floats in [0, 1], no NaN) and ``correct`` (0/1 ints or bools), and raises
``ValueError`` on anything else.

Conventions
===========
==================  ============================================================
Bins (ECE, MCE,     ``n_bins`` = B equal-width bins; a confidence c goes to bin
reliability plot)   ``min(floor(c * B), B - 1)`` computed in float64, i.e. bin
                    k = [k/B, (k+1)/B) for k < B-1 and the last bin
                    [(B-1)/B, 1] is closed. 0.0 is in bin 0 and 1.0 in bin B-1:
                    no example is ever dropped. A decimal edge such as 0.3 goes
                    to the upper bin (bin 3 for B=10) since fl(0.3 * 10) == 3.0.
ECE                 sum over non-empty bins of (n_b / N) * |mean_conf_b - acc_b|
MCE                 max over non-empty bins of |mean_conf_b - acc_b|
AURC ties           expected AURC over a uniformly random order inside each
                    group of equal confidence (result independent of input order)
PRR                 (AURC_random - AURC) / (AURC_random - AURC_oracle) with
                    AURC_random = error rate, oracle = all correct ranked first
Missing confidence  ``summarize`` fills None/NaN with ``missing_confidence``
                    (default 0.0: no stated confidence = no confidence)
                    through :func:`utils.confidence.resolve_confidence`, uses
                    the filled value in every metric, and reports the share of
                    missing values as ``parse_failure_rate``
NaN results         auroc: one class only; prr: all correct or all wrong;
                    pearson/spearman (statistic and p): < 2 examples or a
                    constant input; bootstrap_ci: every resample gave NaN
==================  ============================================================

Command line::

    python -m step4_evaluation.metrics --input FILE.jsonl [--n_bins 10]
        [--missing_confidence 0.0] [--bootstrap 0] [--seed 0]

reads JSON lines with ``confidence`` (number in [0, 1] or null) and ``correct``
(0/1 or bool) and prints one JSON object (``summarize``'s dict, NaN as null).
Invalid input prints ``error: FILE:LINE: ...`` and exits with status 2.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import stats
from sklearn.metrics import brier_score_loss

from utils.args import Parser, add_bootstrap_arg, add_missing_confidence_arg, add_n_bins_arg, add_seed_arg
from utils.confidence import MISSING_CONFIDENCE, resolve_confidence
from utils.errors import UserError
from utils.jsonl import json_lines, json_safe

# The training code's documented value (0.0): a missing stated confidence counts as no confidence.
MISSING_CONFIDENCE_DEFAULT = MISSING_CONFIDENCE
CI_METRICS = ("accuracy", "ece", "auroc", "spearman", "brier")

MetricFn = Callable[[np.ndarray, np.ndarray], float]


class BinStatistics(NamedTuple):
    """Per-bin statistics; ``mean_confidence`` and ``accuracy`` are NaN for empty bins."""

    edges: np.ndarray  # (B + 1,) bin edges k / B
    counts: np.ndarray  # (B,) number of examples per bin
    mean_confidence: np.ndarray  # (B,)
    accuracy: np.ndarray  # (B,)


def _validate(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (float confidence, int 0/1 correct) or raise ValueError."""
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct)
    if conf.ndim != 1 or corr.ndim != 1:
        raise ValueError("confidence and correct must be 1-D arrays")
    if conf.shape != corr.shape:
        raise ValueError(f"length mismatch: {conf.size} confidences vs {corr.size} correctness labels")
    if conf.size == 0:
        raise ValueError("empty input: at least one example is required")
    if not np.all((conf >= 0.0) & (conf <= 1.0)):  # also rejects NaN
        raise ValueError("confidence must lie in [0, 1] and contain no NaN")
    if corr.dtype.kind not in "biuf" or not np.all((corr == 0) | (corr == 1)):
        raise ValueError("correct must contain only 0/1 or booleans")
    return conf, corr.astype(int)


def bin_index(confidence: npt.ArrayLike, n_bins: int) -> np.ndarray:
    """The equal-width bin of each confidence: ``clip(floor(confidence * n_bins), 0, n_bins - 1)`` in float64;
    the clip only moves confidence 1.0 into the last (closed) bin."""
    return np.clip(np.floor(np.asarray(confidence, dtype=float) * n_bins).astype(int), 0, n_bins - 1)


def bin_statistics(confidence: npt.ArrayLike, correct: npt.ArrayLike, n_bins: int = 10) -> BinStatistics:
    """Equal-width binning (:func:`bin_index`) shared by ECE, MCE, the reliability diagram and histogram
    recalibration."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf, corr = _validate(confidence, correct)
    index = bin_index(conf, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore"):  # 0/0 -> NaN marks empty bins
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / counts
        acc = np.bincount(index, weights=corr, minlength=n_bins) / counts
    return BinStatistics(np.linspace(0.0, 1.0, n_bins + 1), counts, mean_conf, acc)


def _bin_gaps(confidence: npt.ArrayLike, correct: npt.ArrayLike, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight n_b / N, |mean_conf_b - acc_b|) for the non-empty bins."""
    bins = bin_statistics(confidence, correct, n_bins)
    filled = bins.counts > 0
    weights = bins.counts[filled] / bins.counts.sum()
    return weights, np.abs(bins.mean_confidence[filled] - bins.accuracy[filled])


def accuracy(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Fraction of correct examples (``confidence`` is only validated)."""
    _, corr = _validate(confidence, correct)
    return float(corr.mean())


def ece(confidence: npt.ArrayLike, correct: npt.ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error: sum_b (n_b / N) |mean_conf_b - acc_b|.

    ``n_bins`` equal-width bins, bin k = [k/B, (k+1)/B), last bin closed at 1.0;
    index = ``min(floor(c * B), B - 1)`` in float64, so 0.0 -> bin 0, 1.0 -> bin
    B-1 and every example is counted exactly once. Empty bins contribute 0.
    (netcal uses ``np.linspace`` edges, so it differs only for confidences
    within rounding of an interior edge, e.g. 0.3 -> its bin 2, our bin 3.)
    """
    weights, gaps = _bin_gaps(confidence, correct, n_bins)
    return float(np.sum(weights * gaps))


def ece_if_calibrated(confidence: npt.ArrayLike, n_bins: int = 10, draws: int = 1000, seed: int = 0) -> float:
    """ECE's sampling floor: the mean ECE a perfectly calibrated model with these confidences would get on this many
    questions, each outcome drawn as Bernoulli(confidence) (``draws`` times, fixed ``seed``).

    ECE is biased upwards on a finite set: a model whose confidences are exact probabilities still scores
    about sqrt(c(1 - c) / n_b) per bin. Spread confidences fill more, smaller bins than a constant one, so
    their floor is higher; read ECE against it.
    """
    conf, _ = _validate(confidence, np.zeros(np.shape(confidence)))
    outcomes = np.random.default_rng(seed).random((draws, conf.size)) < conf
    return float(np.mean([ece(conf, drawn.astype(float), n_bins) for drawn in outcomes]))


def mce(confidence: npt.ArrayLike, correct: npt.ArrayLike, n_bins: int = 10) -> float:
    """Maximum calibration error: max over non-empty bins of |mean_conf_b - acc_b| (bins as in ``ece``)."""
    _, gaps = _bin_gaps(confidence, correct, n_bins)
    return float(gaps.max())


def brier(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Brier score: mean (confidence - correct)^2, via sklearn's ``brier_score_loss``."""
    conf, corr = _validate(confidence, correct)
    return float(brier_score_loss(corr, conf, pos_label=1))


def auroc(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """ROC AUC of confidence as a score for correctness (ties count 1/2); NaN if only one class is present."""
    conf, corr = _validate(confidence, correct)
    if corr.min() == corr.max():
        return math.nan
    # the Mann-Whitney form of sklearn's roc_auc_score (tests compare the two), ~20x faster: the bootstrap
    # calls it thousands of times per row and per difficulty level
    ranks = stats.rankdata(conf)  # average ranks: a tie between a right and a wrong answer counts 1/2
    positives = int(corr.sum())
    negatives = corr.size - positives
    return float((ranks[corr == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _expected_risks(conf: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """Risk (error rate among the k most confident) for k = 1..N, averaged over tie orders.

    Within a group of m tied examples holding e errors, a uniformly random
    order puts on average j * e / m of those errors among its first j members;
    risk is linear in the error count, so this gives the exact expectation.
    """
    # unique(-conf) numbers the groups by descending confidence.
    _, group, sizes = np.unique(-conf, return_inverse=True, return_counts=True)
    group_errors = np.bincount(group, weights=1 - corr)
    errors_before = np.cumsum(group_errors) - group_errors
    ranked_before = np.cumsum(sizes) - sizes
    rank_group = np.sort(group)  # group of each rank position 1..N
    k = np.arange(1, conf.size + 1)
    expected_errors = errors_before[rank_group] + (k - ranked_before[rank_group]) * (
        group_errors[rank_group] / sizes[rank_group]
    )
    return expected_errors / k


def aurc(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Area under the risk-coverage curve: mean over k = 1..N of the error rate among the top-k by confidence.

    Ties: the expected value over a uniformly random order within each group of
    equal confidence (so the result does not depend on input order, and a
    constant confidence gives exactly the error rate). Lower is better.
    """
    conf, corr = _validate(confidence, correct)
    return float(_expected_risks(conf, corr).mean())


def prr(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Prediction-rejection ratio (AURC_random - AURC) / (AURC_random - AURC_oracle).

    AURC_random = error rate (the constant risk of a random ranking), oracle =
    all correct examples ranked first. 1 = oracle, 0 = random (or constant
    confidence), negative = worse than random. NaN if all correct or all wrong.
    """
    conf, corr = _validate(confidence, correct)
    if corr.min() == corr.max():
        return math.nan
    random_aurc = 1.0 - corr.mean()
    oracle_aurc = aurc(corr.astype(float), corr)
    return float((random_aurc - aurc(conf, corr)) / (random_aurc - oracle_aurc))


def _correlation(test: Callable[..., Any], confidence: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[float, float]:
    conf, corr = _validate(confidence, correct)
    if conf.size < 2 or np.ptp(conf) == 0 or np.ptp(corr) == 0:
        return math.nan, math.nan
    result = test(conf, corr.astype(float))
    return float(result.statistic), float(result.pvalue)


def pearson(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[float, float]:
    """(Pearson r, two-sided p) via ``scipy.stats.pearsonr``; (NaN, NaN) if < 2 examples or an input is constant."""
    return _correlation(stats.pearsonr, confidence, correct)


def spearman(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[float, float]:
    """(Spearman rho, two-sided p) via ``scipy.stats.spearmanr``; (NaN, NaN) if < 2 examples or an input is constant."""
    return _correlation(stats.spearmanr, confidence, correct)


def bootstrap_ci(
    metric_fn: MetricFn,
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric_fn(confidence, correct)``.

    Resamples examples with replacement using ``numpy.random.default_rng(seed)``,
    so equal seeds give equal resamples. NaN resample values (e.g. AUROC of a
    one-class resample) are ignored; (NaN, NaN) if all of them are NaN.
    """
    conf, corr = _validate(confidence, correct)
    if n_resamples < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("need n_resamples >= 1 and 0 < alpha < 1")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for r in range(n_resamples):  # one resample at a time keeps memory O(N)
        idx = rng.integers(0, conf.size, size=conf.size)
        values[r] = metric_fn(conf[idx], corr[idx])
    if np.all(np.isnan(values)):
        return math.nan, math.nan
    low, high = np.nanpercentile(values, [50.0 * alpha, 100.0 - 50.0 * alpha])
    return float(low), float(high)


def _parse_record(record: Any) -> tuple[float | None, int]:
    """Validate one per-example record -> (stated confidence or None, correct 0/1)."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected an object with 'confidence' and 'correct', got {type(record).__name__}")
    for key in ("confidence", "correct"):
        if key not in record:
            raise ValueError(f"missing key '{key}'")
    conf = record["confidence"]
    if conf is not None:
        if isinstance(conf, (bool, np.bool_)) or not isinstance(conf, numbers.Real) or not 0.0 <= conf <= 1.0:
            raise ValueError(f"invalid 'confidence' {conf!r}: expected a number in [0, 1] or null")
        conf = float(conf)
    corr = record["correct"]
    if not isinstance(corr, (numbers.Real, np.bool_)) or corr not in (0, 1):
        raise ValueError(f"invalid 'correct' {corr!r}: expected 0/1 or a boolean")
    return conf, int(corr)


def _stated_and_correct(records_or_arrays: Any) -> tuple[np.ndarray, np.ndarray]:
    """(stated confidence with NaN where missing, correct) from records or a (confidence, correct) pair."""
    data = records_or_arrays
    if isinstance(data, tuple) and len(data) == 2 and not any(isinstance(x, Mapping) for x in data):
        confidence, correct = data
        return np.array(list(confidence), dtype=float), np.asarray(correct)  # None -> NaN
    parsed = []
    for i, record in enumerate(data):
        try:
            parsed.append(_parse_record(record))
        except ValueError as err:
            raise ValueError(f"record {i}: {err}") from None
    stated = np.array([math.nan if c is None else c for c, _ in parsed], dtype=float)
    return stated, np.array([y for _, y in parsed], dtype=int)


def _resolve_each(stated: np.ndarray, missing_confidence: float) -> np.ndarray:
    """:func:`resolve_confidence` of each stated confidence (NaN: missing)."""
    return np.array([resolve_confidence(c, missing_confidence) for c in stated], dtype=float)


def confidence_and_correct(records: Iterable[Mapping[str, Any]],
                           missing_confidence: float = MISSING_CONFIDENCE_DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` arrays of records, missing confidences filled as :func:`summarize` does."""
    stated, correct = _stated_and_correct(list(records))
    return _resolve_each(stated, missing_confidence), correct


def summarize(
    records_or_arrays: Iterable[Mapping[str, Any]] | tuple[npt.ArrayLike, npt.ArrayLike],
    missing_confidence: float = MISSING_CONFIDENCE_DEFAULT,
    n_bins: int = 10,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics for one evaluation run, as a JSON-ready dict of Python scalars.

    ``records_or_arrays`` is an iterable of mappings with keys ``confidence``
    (number in [0, 1] or None) and ``correct`` (0/1 or bool), or a tuple
    ``(confidence, correct)`` of arrays where None/NaN marks a missing
    confidence. Missing confidences are replaced by ``missing_confidence``
    (default 0.0) before every metric and counted in ``parse_failure_rate``.
    With ``bootstrap`` > 0, ``ci`` maps each of CI_METRICS to a 95% percentile
    interval [low, high] from ``bootstrap`` resamples (the same resamples for
    every metric, seeded by ``seed``). NaN values stay NaN (see module doc).
    Raises ValueError on empty or invalid input.
    """
    if not 0.0 <= missing_confidence <= 1.0:
        raise ValueError(f"missing_confidence must lie in [0, 1], got {missing_confidence!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap!r}")
    stated, correct = _stated_and_correct(records_or_arrays)
    if stated.size == 0:
        raise ValueError("no examples to summarize")
    missing = np.isnan(stated)
    conf, corr = _validate(_resolve_each(stated, missing_confidence), correct)
    pearson_r, pearson_p = pearson(conf, corr)
    spearman_r, spearman_p = spearman(conf, corr)
    summary: dict[str, Any] = {
        "n": int(conf.size),
        "accuracy": accuracy(conf, corr),
        "ece": ece(conf, corr, n_bins),
        "mce": mce(conf, corr, n_bins),
        "brier": brier(conf, corr),
        "auroc": auroc(conf, corr),
        "aurc": aurc(conf, corr),
        "prr": prr(conf, corr),
        "pearson": pearson_r,
        "pearson_p": pearson_p,
        "spearman": spearman_r,
        "spearman_p": spearman_p,
        "parse_failure_rate": float(missing.mean()),
        "n_bins": int(n_bins),
        "missing_confidence": float(missing_confidence),
    }
    if bootstrap > 0:
        ci_fns: dict[str, MetricFn] = {
            "accuracy": accuracy,
            "ece": partial(ece, n_bins=n_bins),
            "auroc": auroc,
            "spearman": lambda c, y: spearman(c, y)[0],
            "brier": brier,
        }
        summary["ci"] = {
            name: list(bootstrap_ci(ci_fns[name], conf, corr, n_resamples=bootstrap, seed=seed))
            for name in CI_METRICS
        }
    return summary


def _read_records(path: str) -> tuple[list[float | None], list[int]]:
    """Read (:func:`utils.jsonl.json_lines`) and validate a JSONL file of records; errors name the file and line."""
    stated: list[float | None] = []
    correct: list[int] = []
    for where, row in json_lines(path):
        try:
            conf, corr = _parse_record(row)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        stated.append(conf)
        correct.append(corr)
    if not stated:
        raise ValueError(f"{path}: no records")
    return stated, correct


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m step4_evaluation.metrics",
        description="Calibration metrics of stated confidence from a JSONL file of {confidence, correct} records.",
    )
    parser.add_argument("--input", required=True, help="JSONL file; one {'confidence': float|null, 'correct': 0/1} per line")
    add_n_bins_arg(parser, help_text="equal-width bins for ECE/MCE (default 10)")
    add_missing_confidence_arg(parser, help_text="value used for a null confidence (default %(default)s)")
    add_bootstrap_arg(parser, default=0, help_text="bootstrap resamples for CIs; 0 = none")
    add_seed_arg(parser, default=0, help_text="bootstrap seed")
    args = parser.parse_args(argv)
    try:
        summary = summarize(
            _read_records(args.input),
            missing_confidence=args.missing_confidence,
            n_bins=args.n_bins,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except (OSError, ValueError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(json_safe(summary), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
