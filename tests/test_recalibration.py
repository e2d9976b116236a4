"""The dev/test split of step 4 and the recalibration maps fitted on dev (recalibration.py)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from step4_evaluation.metrics import auroc, ece
from step4_evaluation.recalibration import dev_ids, dev_splits, fit_recalibration, split_summary
from step4_evaluation.settings import MetricSettings, SplitSettings
from utils.args import share_below_one
from utils.errors import UserError

IDS = [f"toy-{i}" for i in range(200)]


def test_the_split_is_sized_by_the_fraction_and_seeded():
    for fraction in (0.1, 0.3, 0.5, 0.75):
        assert len(dev_ids(IDS, fraction, seed=1, benchmark="toy")) == round(fraction * len(IDS))
    dev = dev_ids(IDS, 0.3, seed=1, benchmark="toy")
    assert dev <= set(IDS) and dev == dev_ids(list(reversed(IDS)), 0.3, seed=1, benchmark="toy")  # order-free
    assert dev != dev_ids(IDS, 0.3, seed=2, benchmark="toy")  # the seed draws another split
    assert dev != dev_ids(IDS, 0.3, seed=1, benchmark="toy/seen")  # and so does another benchmark
    assert dev_ids(IDS, 0.0, seed=1, benchmark="toy") == set()


def test_dev_splits_are_one_per_benchmark_and_refuse_an_empty_side():
    questions = {"toy": [{"id": i} for i in IDS[:10]], "nq_open": [{"id": f"nq-{i}"} for i in range(4)]}
    split = SplitSettings(dev_fraction=0.5, recalibrate="none", seed=3)
    splits = dev_splits(split, questions)
    assert {name: len(ids) for name, ids in splits.items()} == {"toy": 5, "nq_open": 2}
    assert splits == dev_splits(split, questions)  # every row of a benchmark gets this same set
    none = SplitSettings(dev_fraction=0.0, recalibrate="none", seed=3)
    assert dev_splits(none, questions) == {"toy": set(), "nq_open": set()}
    with pytest.raises(UserError, match=r"^--dev_fraction 0.1: nq_open has 4 questions, which leaves 0 for dev"):
        dev_splits(SplitSettings(dev_fraction=0.1, recalibrate="none", seed=3), questions)


@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "nan"])
def test_dev_fraction_outside_0_1_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"must lie in \[0, 1\)"):
        share_below_one(text)


def test_histogram_maps_each_bin_to_its_dev_accuracy():
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.15, 0.15])
    corr = np.array([1, 0, 1, 0, 0, 0])
    fitted = fit_recalibration("histogram", conf, corr, n_bins=10)
    # 0.9 -> its bin's 0.5; 0.15 -> 0.0; an empty bin (0.5) -> the dev accuracy overall, 2/6
    assert fitted.apply(np.array([0.9, 0.95, 0.15, 0.5])) == pytest.approx([0.5, 0.5, 0.0, 1 / 3])
    assert fitted.map["edges"] == pytest.approx(np.linspace(0, 1, 11)) and len(fitted.map["values"]) == 10
    assert fitted.apply(np.array([1.0, 0.0])) == pytest.approx([0.5, 1 / 3])  # 1.0 in the last bin, as in ECE


def test_isotonic_is_monotone_and_within_0_1():
    rng = np.random.default_rng(0)
    conf = rng.random(300)
    corr = (rng.random(300) < conf ** 2).astype(int)
    fitted = fit_recalibration("isotonic", conf, corr)
    grid = np.linspace(-0.5, 1.5, 201)  # outside the dev range too: clipped
    mapped = fitted.apply(grid)
    assert np.all(np.diff(mapped) >= 0) and mapped.min() >= 0 and mapped.max() <= 1
    assert len(fitted.map["x_thresholds"]) == len(fitted.map["y_thresholds"]) > 1


def test_platt_recovers_a_known_logistic_relation():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.02, 0.98, 4000)
    logit = np.log(conf / (1 - conf))
    corr = (rng.random(conf.size) < 1 / (1 + np.exp(-(0.5 * logit - 1.0)))).astype(int)
    fitted = fit_recalibration("platt", conf, corr)
    assert fitted.map["feature"] == "logit"
    assert fitted.map["coef"] == pytest.approx(0.5, abs=0.1)
    assert fitted.map["intercept"] == pytest.approx(-1.0, abs=0.15)
    assert fitted.apply(np.array([0.5]))[0] == pytest.approx(1 / (1 + np.e), abs=0.04)


def test_platt_on_one_class_is_the_constant_dev_accuracy():
    fitted = fit_recalibration("platt", np.array([0.2, 0.9, 0.6]), np.array([0, 0, 0]))
    assert fitted.map == {"constant": 0.0} and list(fitted.apply(np.array([0.1, 1.0]))) == [0.0, 0.0]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_beta_recovers_a_known_two_slope_relation_that_platt_cannot_fit():
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.02, 0.98, 20000)
    # right about right near 0 (a = 1), under-confident near 1 (b = 2.5): not a Platt map, whose slopes are equal
    corr = (rng.random(conf.size) < _sigmoid(np.log(conf) - 2.5 * np.log(1 - conf) + 0.3)).astype(int)
    fitted = fit_recalibration("beta", conf, corr)
    assert fitted.map["features"] == ["ln c", "-ln(1 - c)"]
    assert (fitted.map["a"], fitted.map["b"], fitted.map["intercept"]) == (
        pytest.approx(1.0, abs=0.1), pytest.approx(2.5, abs=0.2), pytest.approx(0.3, abs=0.15))
    grid = np.linspace(0.02, 0.98, 49)
    truth = _sigmoid(np.log(grid) - 2.5 * np.log(1 - grid) + 0.3)
    beta_error = np.abs(fitted.apply(grid) - truth).max()
    platt_error = np.abs(fit_recalibration("platt", conf, corr).apply(grid) - truth).max()
    assert beta_error < 0.01 < platt_error  # one slope for both ends misses by 0.03 somewhere


def test_beta_keeps_a_calibrated_confidence_and_the_order():
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.02, 0.98, 20000)
    corr = (rng.random(conf.size) < conf).astype(int)
    fitted = fit_recalibration("beta", conf, corr)
    grid = np.linspace(0.05, 0.95, 19)
    assert fitted.apply(grid) == pytest.approx(grid, abs=0.03)  # a = b = 1, m = 0: the identity
    assert auroc(fitted.apply(conf), corr) == pytest.approx(auroc(conf, corr))


def test_beta_drops_a_falling_slope_so_the_map_never_reorders():
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.02, 0.98, 4000)
    # rising at the low end, falling at the high end: the two-feature fit has b < 0
    corr = (rng.random(conf.size) < _sigmoid(2 * np.log(conf) + 1.5 * np.log(1 - conf) + 1)).astype(int)
    fitted = fit_recalibration("beta", conf, corr)
    assert fitted.map["b"] == 0.0 and fitted.map["a"] > 0
    mapped = fitted.apply(np.linspace(0, 1, 101))
    assert np.all(np.diff(mapped) > 0)  # strictly rising: no new ties, AUROC unchanged
    assert auroc(fitted.apply(conf), corr) == pytest.approx(auroc(conf, corr))


def test_beta_with_no_rising_fit_is_the_constant_dev_accuracy():
    conf = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 20)
    corr = np.array([1, 1, 1, 0, 0, 0] * 20)  # falling everywhere
    fitted = fit_recalibration("beta", conf, corr)
    assert fitted.map == {"constant": 0.5} and list(fitted.apply(np.array([0.1, 0.9]))) == [0.5, 0.5]
    one_class = fit_recalibration("beta", np.array([0.2, 0.9]), np.array([1, 1]))
    assert one_class.map == {"constant": 1.0}


def _overconfident(rng, n):
    """Confidence c, right with probability c³: a model that states far more than it knows."""
    conf = rng.choice(np.round(np.linspace(0.1, 1.0, 10), 1), n)
    return conf, (rng.random(n) < conf ** 3).astype(int)


def test_isotonic_lowers_ece_on_held_out_answers_of_a_miscalibrated_model():
    rng = np.random.default_rng(2)
    dev, test = _overconfident(rng, 400), _overconfident(rng, 400)
    recalibrated = fit_recalibration("isotonic", *dev).apply(test[0])
    assert ece(recalibrated, test[1]) < ece(*test) / 2


def _records(pairs, split):
    return [{"id": f"{split}-{i}", "confidence": c, "correct": y, "split": split} for i, (c, y) in enumerate(pairs)]


def _settings(recalibrate: str = "isotonic", bootstrap: int = 0) -> tuple[SplitSettings, MetricSettings]:
    return (SplitSettings(dev_fraction=0.5, recalibrate=recalibrate, seed=0),
            MetricSettings(missing_confidence=0.0, n_bins=10, bootstrap=bootstrap, seed=0, confidence_readout="stated"))


def test_split_summary_fits_on_dev_and_scores_test_only():
    # dev: 0.9 is right half the time; test: the same, plus a failed judgment on each side
    dev = _records([(0.9, 1), (0.9, 0), (0.2, 0), (None, 0), (0.9, None)], "dev")
    test = _records([(0.9, 1), (0.9, 0), (0.9, 1), (0.2, 0), (0.9, None)], "test")
    summary = split_summary(dev + test, *_settings(recalibrate="histogram", bootstrap=30))
    assert summary["dev"] == {"n": 4, "judge_failures": 1, "accuracy": 0.25,
                              "ece": pytest.approx((2 * 0.4 + 0.2) / 4)}
    assert summary["recalibration"]["method"] == "histogram" and summary["recalibration"]["fitted_on"] == 4
    # test confidences 0.9, 0.9, 0.9, 0.2 -> 0.5, 0.5, 0.5, 0.0 against 1, 0, 1, 0
    assert summary["ece_recalibrated"] == pytest.approx(3 / 4 * (2 / 3 - 0.5))
    assert summary["brier_recalibrated"] == pytest.approx(3 * 0.25 / 4)
    assert summary["auroc_recalibrated"] == pytest.approx(0.75) == auroc([0.9, 0.9, 0.9, 0.2], [1, 0, 1, 0])
    assert set(summary["ci_recalibrated"]) == {"ece", "brier", "auroc"}
    assert set(split_summary(dev + test, *_settings(recalibrate="none"))) == {"dev"}


def test_isotonic_ties_can_lower_auroc():
    dev = _records([(0.6, 1), (0.7, 0), (0.8, 1), (0.9, 0)], "dev")  # falling: pooled to one level, 0.5
    test = _records([(0.6, 0), (0.9, 1)], "test")
    summary = split_summary(dev + test, *_settings())
    assert auroc([0.6, 0.9], [0, 1]) == 1.0 and summary["auroc_recalibrated"] == 0.5  # a tie counts 1/2


def test_no_judged_dev_answer_leaves_nothing_to_fit():
    records = _records([(0.9, None)], "dev") + _records([(0.9, 1)], "test")
    with pytest.raises(UserError, match=r"^--recalibrate isotonic: no dev answer could be judged"):
        split_summary(records, *_settings())
    assert split_summary(records, *_settings(recalibrate="none"))["dev"]["n"] == 0
