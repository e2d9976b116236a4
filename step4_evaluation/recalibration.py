"""Held-out questions for step 4: a dev/test split of each benchmark, and recalibration fitted on dev.

The paper reports the raw stated confidence; a practitioner would recalibrate it on held-out data. With
``--dev_fraction F`` each benchmark's questions are split once into dev and test (:func:`dev_ids`), every
reported metric is computed on test, and with ``--recalibrate`` a map confidence → P(correct) fitted on the dev
answers (:func:`fit_recalibration`) is scored on the test answers beside the raw confidence (:func:`split_summary`).

AUROC counts ties as 1/2 (:func:`metrics.auroc`): a step function (isotonic, histogram) merges distinct
confidences into ties and can lower AUROC, while a monotone smooth map (Platt, beta) leaves it unchanged; both the
raw ``auroc`` and ``auroc_recalibrated`` are reported.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from step4_evaluation.metrics import auroc, bin_index, bin_statistics, bootstrap_ci, brier, confidence_and_correct, ece
from step4_evaluation.settings import MetricSettings, SplitSettings
from utils.errors import UserError

RECALIBRATORS = ("none", "platt", "beta", "isotonic", "histogram")
LOGIT_CLIP = 1e-3  # stated confidences of 0.0 and 1.0 have no logit; 1e-3 keeps the order of 0.0, 0.1, …, 1.0
RECALIBRATED = ("ece", "brier", "auroc")  # the metrics reported again on the recalibrated confidence


def dev_ids(ids: Sequence[str], fraction: float, seed: int, benchmark: str) -> set[str]:
    """The ``round(fraction * n)`` ids that come first in a seeded order of ``ids``: the dev questions.

    The order sorts by sha256 of (seed, benchmark, id), a seeded permutation in which a question's place depends
    on nothing else: the same question lands on the same side in every row (checkpoint, method) of its benchmark.
    """
    order = sorted(ids, key=lambda qid: hashlib.sha256(f"{seed}\0{benchmark}\0{qid}".encode()).hexdigest())
    return set(order[:round(fraction * len(order))])


def check_recalibration_flags(split: SplitSettings) -> None:
    if split.recalibrate != "none" and split.dev_fraction == 0:
        raise UserError(f"--recalibrate {split.recalibrate} is fitted on held-out questions: give --dev_fraction > 0 "
                        "(e.g. 0.3), or drop --recalibrate")


def dev_splits(split: SplitSettings, questions: dict[str, list[dict]]) -> dict[str, set[str]]:
    """Each benchmark's dev ids (none without ``--dev_fraction``), refused when dev or test would be empty."""
    if split.dev_fraction == 0:
        return {name: set() for name in questions}
    splits = {}
    for name, items in questions.items():
        splits[name] = dev_ids([q["id"] for q in items], split.dev_fraction, split.seed, name)
        if not 0 < len(splits[name]) < len(items):
            raise UserError(f"--dev_fraction {split.dev_fraction}: {name} has {len(items)} questions, which leaves "
                            f"{len(splits[name])} for dev and {len(items) - len(splits[name])} for test; both need "
                            "one at least: choose another fraction or more questions (--max_examples)")
    return splits


@dataclass(frozen=True)
class Recalibration:
    """A fitted map confidence → P(correct), and its description for summary.json."""

    method: str
    apply: Callable[[np.ndarray], np.ndarray]
    map: dict[str, Any]


def fit_recalibration(method: str, confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> Recalibration:
    """The ``method`` map (platt, beta, isotonic or histogram) fitted on dev (confidence, correct) pairs."""
    conf, corr = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=int)
    if method in ("platt", "beta") and corr.min() == corr.max():
        return _constant(method, float(corr.mean()))
    if method == "platt":
        return _platt(conf, corr)
    if method == "beta":
        return _beta(conf, corr)
    if method == "isotonic":
        return _isotonic(conf, corr)
    if method == "histogram":
        return _histogram(conf, corr, n_bins)
    raise ValueError(f"unknown recalibration {method!r}; choose one of {RECALIBRATORS[1:]}")


def _clipped(confidence: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(confidence, dtype=float), LOGIT_CLIP, 1 - LOGIT_CLIP)


def _logit(confidence: np.ndarray) -> np.ndarray:
    clipped = _clipped(confidence)
    return np.log(clipped / (1 - clipped))[:, None]


def _constant(method: str, value: float) -> Recalibration:
    """A dev set with one class only has no logistic fit (the maximum likelihood is at infinity): the map is then
    the constant dev accuracy, as isotonic and histogram binning give there."""
    return Recalibration(method, lambda c: np.full(np.shape(c), value), {"constant": value})


def _platt(conf: np.ndarray, corr: np.ndarray) -> Recalibration:
    """Logistic regression of correct on logit(confidence) (clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP]).

    On the logit, not the raw value: sigmoid(a·logit(c) + b) holds the identity (a = 1, b = 0), so a calibrated
    confidence can stay as it is, and it fits the usual over-confidence (a < 1) at both ends; on the raw value
    the map could not even return c. sklearn's default mild L2 penalty (C = 1) keeps the fit finite when a small
    dev set is separable. A dev set with one class only has no fit at all (the maximum likelihood is at
    infinity): the map is then the constant dev accuracy, as isotonic and histogram binning give there."""
    if corr.min() == corr.max():
        value = float(corr.mean())
        return Recalibration("platt", lambda c: np.full(np.shape(c), value), {"constant": value})
    model = LogisticRegression().fit(_logit(conf), corr)
    return Recalibration("platt", lambda c: model.predict_proba(_logit(c))[:, 1],
                         {"feature": "logit", "clip": LOGIT_CLIP, "coef": float(model.coef_[0, 0]),
                          "intercept": float(model.intercept_[0])})


BETA_FEATURES = ("ln c", "-ln(1 - c)")


def _beta_features(confidence: np.ndarray, keep: list[int]) -> np.ndarray:
    clipped = _clipped(confidence)
    return np.stack([np.log(clipped), -np.log1p(-clipped)], axis=1)[:, keep]


def _beta_fit(conf: np.ndarray, corr: np.ndarray, keep: list[int]) -> tuple[list[float], float]:
    """([a, b], m) of a logistic regression on the features in ``keep``; a dropped feature's slope is 0."""
    model = LogisticRegression().fit(_beta_features(conf, keep), corr)
    coefficients = [0.0, 0.0]
    for i, slope in zip(keep, model.coef_[0]):
        coefficients[i] = float(slope)
    return coefficients, float(model.intercept_[0])


def _beta(conf: np.ndarray, corr: np.ndarray) -> Recalibration:
    """Beta calibration (Kull, Silva Filho & Flach, AISTATS 2017): sigmoid(a·ln c − b·ln(1 − c) + m), a logistic
    regression on the two features (clipped as Platt's logit).

    Platt's map is the case a = b; two slopes let the low end and the high end of the scale be stretched apart
    (a model under-confident near 1 and about right near 0 needs b > a), and a = b = 1, m = 0 is the identity.
    A map with a < 0 or b < 0 would fall somewhere and reorder the answers: that feature is dropped and the other
    refitted (as Kull et al.'s ``betacal`` package does), so the map never decreases and AUROC stays as it was."""
    coefficients, intercept = _beta_fit(conf, corr, [0, 1])
    if min(coefficients) < 0:  # keep the rising feature, refit on it alone
        coefficients, intercept = _beta_fit(conf, corr, [int(np.argmax(coefficients))])
    if min(coefficients) < 0:  # it falls alone too: no rising map fits better than the dev accuracy
        return _constant("beta", float(corr.mean()))

    def apply(confidence: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(_beta_features(confidence, [0, 1]) @ np.array(coefficients) + intercept)))

    return Recalibration("beta", apply, {"features": list(BETA_FEATURES), "clip": LOGIT_CLIP, "a": coefficients[0],
                                         "b": coefficients[1], "intercept": intercept})


def _isotonic(conf: np.ndarray, corr: np.ndarray) -> Recalibration:
    """The non-decreasing step function closest to the dev outcomes; outside the dev range, its end values."""
    model = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(conf, corr)
    return Recalibration("isotonic", model.predict, {"x_thresholds": model.X_thresholds_.tolist(),
                                                     "y_thresholds": model.y_thresholds_.tolist()})


def _histogram(conf: np.ndarray, corr: np.ndarray, n_bins: int) -> Recalibration:
    """Each of ``n_bins`` equal-width bins (the bins of ECE) mapped to the dev accuracy inside it; a bin no dev
    confidence fell into is mapped to the dev accuracy overall (nothing better is known there)."""
    bins = bin_statistics(conf, corr, n_bins)
    values = np.where(bins.counts > 0, bins.accuracy, corr.mean())

    def apply(confidence: np.ndarray) -> np.ndarray:
        return values[bin_index(confidence, n_bins)]

    return Recalibration("histogram", apply, {"edges": bins.edges.tolist(), "values": values.tolist()})


def fit_on_dev(records: list[dict], method: str, missing_confidence: float, n_bins: int = 10) -> Recalibration:
    """The ``method`` map fitted on the judged dev answers among ``records`` (tagged by ``split``)."""
    dev = [r for r in records if r["split"] == "dev" and r["correct"] is not None]
    return fit_recalibration(method, *confidence_and_correct(dev, missing_confidence), n_bins)


def recalibrated_test(records: list[dict], fitted: Recalibration, missing_confidence: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(recalibrated confidence, correct) of the judged test answers among ``records``."""
    test = [r for r in records if r["split"] == "test" and r["correct"] is not None]
    conf, corr = confidence_and_correct(test, missing_confidence)
    return np.clip(fitted.apply(conf), 0.0, 1.0), corr  # float rounding must not leave [0, 1]


def split_summary(records: list[dict], split: SplitSettings, metrics: MetricSettings) -> dict[str, Any]:
    """``dev``: n, accuracy, ECE and failed judgments of the row's dev answers; with ``--recalibrate``, the
    map fitted on them (``recalibration``) and the test answers' ECE, Brier and AUROC under it (with
    ``--bootstrap``, their intervals in ``ci_recalibrated``, the resamples of the raw ``ci``)."""
    dev = [r for r in records if r["split"] == "dev" and r["correct"] is not None]
    dev_conf, dev_corr = confidence_and_correct(dev, metrics.missing_confidence)
    summary: dict[str, Any] = {"dev": {
        "n": len(dev), "judge_failures": sum(r["split"] == "dev" for r in records) - len(dev),
        "accuracy": float(dev_corr.mean()) if dev else float("nan"),
        "ece": ece(dev_conf, dev_corr, metrics.n_bins) if dev else float("nan")}}
    if split.recalibrate == "none":
        return summary
    if not dev:
        raise UserError(f"--recalibrate {split.recalibrate}: no dev answer could be judged, nothing to fit on; see "
                        "judge_reason in predictions.jsonl and rerun once the judge works (generations are cached)")
    fitted = fit_on_dev(records, split.recalibrate, metrics.missing_confidence, metrics.n_bins)
    recalibrated, corr = recalibrated_test(records, fitted, metrics.missing_confidence)
    scorers = {"ece": lambda c, y: ece(c, y, metrics.n_bins), "brier": brier, "auroc": auroc}
    summary.update({f"{name}_recalibrated": scorers[name](recalibrated, corr) for name in RECALIBRATED})
    if metrics.bootstrap > 0:
        summary["ci_recalibrated"] = {name: list(bootstrap_ci(scorers[name], recalibrated, corr, metrics.bootstrap,
                                                              seed=metrics.seed)) for name in RECALIBRATED}
    summary["recalibration"] = {"method": fitted.method, "fitted_on": len(dev), "map": fitted.map}
    return summary
