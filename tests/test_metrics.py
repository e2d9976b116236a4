"""Tests for step4_evaluation.metrics: hand examples, library cross-checks, degenerate inputs, CLI."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import brier_score_loss, roc_auc_score

from step4_evaluation import metrics as m

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {
    "n", "accuracy", "ece", "mce", "brier", "auroc", "aurc", "prr", "pearson", "pearson_p",
    "spearman", "spearman_p", "parse_failure_rate", "n_bins", "missing_confidence",
}  # fmt: skip

# Hand example with 0.0, 1.0 and the interior edge 0.3 (B = 10):
#   bin 0: conf {0.0, 0.0}, correct {0, 1}        -> |0    - 1/2| = 0.5,   weight 2/8
#   bin 2: conf {0.25},     correct {0}           -> |0.25 - 0  | = 0.25,  weight 1/8
#   bin 3: conf {0.3},      correct {1}           -> |0.3  - 1  | = 0.7,   weight 1/8
#   bin 5: conf {0.55},     correct {1}           -> |0.55 - 1  | = 0.45,  weight 1/8
#   bin 9: conf {1.0, 1.0, 0.95}, correct {1,1,0} -> |2.95/3 - 2/3| = 0.95/3, weight 3/8
#   ECE = (2*0.5 + 0.25 + 0.7 + 0.45 + 0.95) / 8 = 3.35 / 8 = 0.41875
#   MCE = max(0.5, 0.25, 0.7, 0.45, 0.95/3) = 0.7
# Dropping the 0.0s (original code) would give 2.35/8; putting 0.3 with 0.25 would give 0.275... != 0.41875.
HAND_CONF = np.array([0.0, 0.0, 0.3, 0.25, 1.0, 1.0, 0.95, 0.55])
HAND_CORRECT = np.array([0, 1, 1, 0, 1, 1, 0, 1])


def random_sample(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(size=n)
    correct = (rng.uniform(size=n) < 0.3 + 0.5 * conf).astype(int)
    return conf, correct


def naive_aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    """AURC with a stable descending sort (ties broken by input order)."""
    order = np.argsort(-conf, kind="stable")
    errors = 1 - correct[order]
    return float(np.mean(np.cumsum(errors) / np.arange(1, len(conf) + 1)))


# --- hand examples ---------------------------------------------------------


def test_ece_hand_example_with_edges() -> None:
    assert m.ece(HAND_CONF, HAND_CORRECT) == pytest.approx(0.41875, abs=1e-12)


def test_mce_hand_example() -> None:
    assert m.mce(HAND_CONF, HAND_CORRECT) == pytest.approx(0.7, abs=1e-12)


def test_bins_keep_every_example_and_put_decimal_edges_in_upper_bin() -> None:
    edges = np.arange(11) / 10  # 0.0, 0.1, ..., 1.0
    bins = m.bin_statistics(edges, np.ones(11, dtype=int), n_bins=10)
    assert bins.counts.tolist() == [1] * 9 + [2]  # k/10 -> bin k, 1.0 -> last bin
    assert bins.counts.sum() == 11


def test_bin_statistics_empty_bins_are_nan() -> None:
    bins = m.bin_statistics([0.05, 0.95], [1, 0], n_bins=4)
    assert bins.counts.tolist() == [1, 0, 0, 1]
    assert np.isnan(bins.accuracy[1:3]).all() and np.isnan(bins.mean_confidence[1:3]).all()
    assert bins.accuracy[[0, 3]].tolist() == [1.0, 0.0]


def test_brier_hand_example() -> None:
    # ((0-0)^2 + (1-0)^2 + (0.5-1)^2 + (0.8-1)^2) / 4 = (0 + 1 + 0.25 + 0.04) / 4 = 0.3225
    assert m.brier([0.0, 1.0, 0.5, 0.8], [0, 0, 1, 1]) == pytest.approx(0.3225, abs=1e-12)


def test_aurc_and_prr_hand_example() -> None:
    # ranked correct pattern 1,0,1,0 -> risks 0, 1/2, 1/3, 2/4 -> AURC = (4/3)/4 = 1/3
    # oracle 1,1,0,0 -> 0, 0, 1/3, 1/2 -> 5/24; random = error rate = 1/2
    # PRR = (1/2 - 1/3) / (1/2 - 5/24) = (1/6) / (7/24) = 4/7
    conf, correct = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])
    assert m.aurc(conf, correct) == pytest.approx(1 / 3, abs=1e-12)
    assert m.prr(conf, correct) == pytest.approx(4 / 7, abs=1e-12)


def test_prr_oracle_is_one_and_reversed_is_negative() -> None:
    correct = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1])
    oracle_conf = np.where(correct == 1, 0.9, 0.1)
    assert m.prr(oracle_conf, correct) == pytest.approx(1.0, abs=1e-12)
    # errors first with 2 correct / 2 wrong: risks 1, 1, 2/3, 1/2 -> 19/24; PRR = (1/2 - 19/24)/(7/24) = -1
    assert m.prr([0.1, 0.9, 0.2, 0.8], [1, 0, 1, 0]) == pytest.approx(-1.0, abs=1e-12)
    assert m.prr(1 - oracle_conf, correct) < 0


def test_aurc_ties_are_averaged_over_orders() -> None:
    # tie group {0.5, 0.5} holds one error: the two orders give 5/6 and 4/3 summed risks
    # -> AURC = ((5/6 + 4/3) / 2) / 4 = 13/48
    assert m.aurc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(13 / 48, abs=1e-12)
    assert m.aurc([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(13 / 48, abs=1e-12)


def test_aurc_equals_mean_over_all_input_orders() -> None:
    rng = np.random.default_rng(3)
    conf = rng.choice([0.2, 0.5, 0.8], size=6)
    correct = rng.integers(0, 2, size=6)
    brute = np.mean([naive_aurc(conf[list(p)], correct[list(p)]) for p in itertools.permutations(range(6))])
    assert m.aurc(conf, correct) == pytest.approx(brute, abs=1e-12)


def test_aurc_matches_stable_sort_without_ties() -> None:
    conf, correct = random_sample(7)
    assert m.aurc(conf, correct) == pytest.approx(naive_aurc(conf, correct), abs=1e-12)


def test_constant_confidence_gives_random_aurc_and_zero_prr() -> None:
    correct = np.array([1, 0, 1, 1, 0])
    assert m.aurc(np.full(5, 0.6), correct) == pytest.approx(0.4, abs=1e-12)
    assert m.prr(np.full(5, 0.6), correct) == pytest.approx(0.0, abs=1e-12)


# --- cross-checks against scikit-learn / scipy / netcal ------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_sklearn_and_scipy(seed: int) -> None:
    conf, correct = random_sample(seed)
    assert m.auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-6)
    assert m.brier(conf, correct) == pytest.approx(brier_score_loss(correct, conf), abs=1e-6)
    assert m.brier(conf, correct) == pytest.approx(np.mean((conf - correct) ** 2), abs=1e-12)
    assert m.accuracy(conf, correct) == pytest.approx(correct.mean(), abs=1e-12)
    for ours, theirs in ((m.pearson, stats.pearsonr), (m.spearman, stats.spearmanr)):
        statistic, p_value = ours(conf, correct)
        expected = theirs(conf, correct)
        assert statistic == pytest.approx(expected.statistic, abs=1e-6)
        assert p_value == pytest.approx(expected.pvalue, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ece_agrees_with_netcal_away_from_edges(seed: int) -> None:
    from netcal.metrics import ECE  # netcal: linspace(0,1,B+1) edges, numpy histogram [a,b), last bin closed

    conf, correct = random_sample(seed)
    distance_to_edge = np.abs(conf * 10 - np.round(conf * 10))
    conf, correct = conf[distance_to_edge > 1e-6], correct[distance_to_edge > 1e-6]
    assert m.ece(conf, correct, n_bins=10) == pytest.approx(ECE(bins=10).measure(conf, correct), abs=1e-6)


def test_netcal_puts_decimal_edge_in_lower_bin_unlike_us() -> None:
    """Documents the only divergence: netcal's edge linspace(0,1,11)[3] is 0.30000000000000004."""
    from netcal.metrics import ECE

    conf, correct = np.array([0.25, 0.3]), np.array([0, 1])
    assert ECE(bins=10).measure(conf, correct) == pytest.approx(abs(0.275 - 0.5), abs=1e-9)  # one bin
    assert m.ece(conf, correct) == pytest.approx((0.25 + 0.7) / 2, abs=1e-12)  # two bins


# --- degenerate and invalid inputs --------------------------------------------


def test_single_class_gives_nan_auroc_and_prr() -> None:
    assert math.isnan(m.auroc([0.2, 0.7, 0.9], [1, 1, 1]))
    assert math.isnan(m.prr([0.2, 0.7, 0.9], [0, 0, 0]))
    assert m.brier([0.2, 0.7, 0.9], [1, 1, 1]) == pytest.approx((0.64 + 0.09 + 0.01) / 3, abs=1e-12)


def test_constant_input_gives_nan_correlations_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning would fail the test
        for fn in (m.pearson, m.spearman):
            assert all(math.isnan(v) for v in fn([0.5, 0.5, 0.5], [0, 1, 1]))
            assert all(math.isnan(v) for v in fn([0.1, 0.5, 0.9], [1, 1, 1]))
            assert all(math.isnan(v) for v in fn([0.5], [1]))


@pytest.mark.parametrize("fn", [m.accuracy, m.ece, m.mce, m.brier, m.auroc, m.aurc, m.prr, m.pearson, m.spearman])
def test_empty_input_raises(fn) -> None:
    with pytest.raises(ValueError, match="empty"):
        fn(np.array([]), np.array([]))


@pytest.mark.parametrize(
    ("conf", "correct", "message"),
    [
        ([0.5, 1.2], [0, 1], r"\[0, 1\]"),
        ([0.5, math.nan], [0, 1], "NaN"),
        ([0.5, 0.6], [0, 2], "0/1"),
        ([0.5, 0.6], [1], "length mismatch"),
    ],
)
def test_invalid_inputs_raise(conf, correct, message) -> None:
    with pytest.raises(ValueError, match=message):
        m.ece(conf, correct)


def test_summarize_empty_raises() -> None:
    with pytest.raises(ValueError, match="no examples"):
        m.summarize([])


# --- summarize ----------------------------------------------------------------


def test_summarize_fills_missing_confidence_and_counts_it() -> None:
    records = [
        {"confidence": None, "correct": True},
        {"confidence": 0.9, "correct": 1},
        {"confidence": 0.2, "correct": 0},
        {"confidence": None, "correct": 0},
    ]
    summary = m.summarize(records)
    assert set(summary) == SUMMARY_KEYS
    assert summary["parse_failure_rate"] == 0.5
    assert summary["missing_confidence"] == 0.0
    filled = np.array([0.0, 0.9, 0.2, 0.0])
    correct = np.array([1, 1, 0, 0])
    assert summary["ece"] == pytest.approx(m.ece(filled, correct), abs=1e-12)
    assert summary["brier"] == pytest.approx(m.brier(filled, correct), abs=1e-12)
    # the same data as arrays (None/NaN = missing) and another fill value
    as_arrays = m.summarize(([None, 0.9, 0.2, math.nan], correct), missing_confidence=0.5)
    assert as_arrays["brier"] == pytest.approx(m.brier([0.5, 0.9, 0.2, 0.5], correct), abs=1e-12)
    assert as_arrays["parse_failure_rate"] == 0.5


def test_summarize_reports_bad_record_index() -> None:
    with pytest.raises(ValueError, match="record 1: missing key 'correct'"):
        m.summarize([{"confidence": 0.1, "correct": 0}, {"confidence": 0.2}])


def test_bootstrap_ci_contains_estimate_and_is_deterministic() -> None:
    conf, correct = random_sample(11, n=300)
    ci = m.bootstrap_ci(m.auroc, conf, correct, n_resamples=200, seed=5)
    assert ci == m.bootstrap_ci(m.auroc, conf, correct, n_resamples=200, seed=5)
    assert ci != m.bootstrap_ci(m.auroc, conf, correct, n_resamples=200, seed=6)
    assert ci[0] < m.auroc(conf, correct) < ci[1]
    assert 0.0 < ci[1] - ci[0] < 0.3


def test_bootstrap_ci_ignores_nan_resamples() -> None:
    # with 1 wrong in 8, some resamples have one class only -> NaN AUROC, ignored
    conf = np.linspace(0.1, 0.9, 8)
    correct = np.array([0, 1, 1, 1, 1, 1, 1, 1])
    low, high = m.bootstrap_ci(m.auroc, conf, correct, n_resamples=200)
    assert not math.isnan(low) and not math.isnan(high)
    assert all(math.isnan(v) for v in m.bootstrap_ci(m.auroc, conf[1:], correct[1:], n_resamples=20))


def test_summarize_bootstrap_ci_keys() -> None:
    conf, correct = random_sample(4)
    summary = m.summarize((conf, correct), bootstrap=50, seed=1)
    assert set(summary["ci"]) == {"accuracy", "ece", "auroc", "spearman", "brier"}
    for name, (low, high) in summary["ci"].items():
        assert low <= summary[name] <= high, name
    json.dumps(summary, allow_nan=False)


# --- command line -------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "step4_evaluation.metrics", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_matches_summarize(tmp_path: Path) -> None:
    conf, correct = random_sample(9, n=50)
    records = [{"confidence": float(c), "correct": int(y)} for c, y in zip(conf, correct)]
    records[3]["confidence"] = None
    records[4]["correct"] = bool(records[4]["correct"])
    path = write_lines(tmp_path / "eval.jsonl", [json.dumps(r) for r in records])

    result = run_cli("--input", str(path), "--n_bins", "5", "--bootstrap", "20", "--seed", "3")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = m.summarize(records, n_bins=5, bootstrap=20, seed=3)
    assert set(printed) == SUMMARY_KEYS | {"ci"}
    for key in SUMMARY_KEYS:
        assert printed[key] == pytest.approx(expected[key], abs=1e-12), key
    assert printed["ci"] == expected["ci"]  # JSON round-trips floats exactly
    assert printed["parse_failure_rate"] == pytest.approx(1 / 50)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """In-process CLI run (no interpreter start-up) -> (exit code, stdout, stderr)."""
    code = m.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_null_for_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "one_class.jsonl", ['{"confidence": 0.4, "correct": 1}'] * 3)
    code, out, err = run_main(capsys, "--input", str(path))
    assert code == 0, err
    printed = json.loads(out)
    assert printed["auroc"] is None and printed["prr"] is None and printed["pearson"] is None
    assert printed["accuracy"] == 1.0


GOOD_LINE = '{"confidence": 0.5, "correct": 1}'


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [('{"confidence": 0.4}', "missing key 'correct'"), ("not json at all", "not valid JSON")],
)
def test_cli_subprocess_bad_line_exits_2_naming_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD_LINE, GOOD_LINE, bad_line, GOOD_LINE])
    result = run_cli("--input", str(path))
    assert result.returncode == 2
    assert f"{path}:3:" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"correct": 1}', "missing key 'confidence'"),
        ('{"confidence": 1.5, "correct": 1}', "'confidence'"),
        ('{"confidence": NaN, "correct": 1}', "'confidence'"),
        ('{"confidence": true, "correct": 1}', "'confidence'"),
        ('{"confidence": "high", "correct": 1}', "'confidence'"),
        ('{"confidence": 0.5, "correct": 2}', "'correct'"),
        ('{"confidence": 0.5, "correct": "yes"}', "'correct'"),
        ("[0.5, 1]", "expected a JSON object"),
    ],
)
def test_cli_invalid_values_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: str, expected: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD_LINE, "", bad_line])  # blank line still counts
    code, out, err = run_main(capsys, "--input", str(path))
    assert code == 2 and out == ""
    assert f"{path}:3:" in err and expected in err


@pytest.mark.parametrize("content", [None, "", "\n\n"])
def test_cli_missing_or_empty_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    path = tmp_path / "input.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, _, err = run_main(capsys, "--input", str(path))
    assert code == 2 and str(path) in err


def test_main_returns_zero_on_success(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "ok.jsonl", ['{"confidence": 0.9, "correct": 1}', '{"confidence": 0.1, "correct": 0}'])
    code, out, _ = run_main(capsys, "--input", str(path))
    assert code == 0 and json.loads(out)["auroc"] == 1.0


def test_ece_if_calibrated_is_zero_for_certain_confidences_and_matches_the_binomial_for_a_constant() -> None:
    assert m.ece_if_calibrated([0.0, 1.0, 1.0, 0.0]) == 0.0
    # one bin of n = 100 at c = 0.5: E|mean of Bernoulli(0.5) − 0.5| ≈ sqrt(0.25 / 100) · sqrt(2 / π)
    floor = m.ece_if_calibrated(np.full(100, 0.5), draws=4000)
    assert floor == pytest.approx(0.05 * math.sqrt(2 / math.pi), abs=0.004)
    constant = np.full(100, 0.5)
    assert m.ece_if_calibrated(constant, draws=200, seed=3) == m.ece_if_calibrated(constant, draws=200, seed=3)


def test_ece_if_calibrated_is_higher_for_spread_confidences_than_for_a_constant_of_the_same_mean() -> None:
    spread = np.repeat([0.15, 0.35, 0.65, 0.85], 75)
    assert m.ece_if_calibrated(spread) > m.ece_if_calibrated(np.full(300, 0.5)) + 0.01
    with pytest.raises(ValueError, match="confidence must lie in"):
        m.ece_if_calibrated([0.5, 1.5])


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_counts_ties_as_sklearn_does(seed: int) -> None:
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 11, size=200) / 10  # stated confidences: many ties, across classes too
    correct = (rng.random(200) < conf).astype(int)
    assert m.auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-12)
    assert m.auroc([0.5, 0.5], [1, 0]) == 0.5
