"""Step 4's reports: the metrics of a row (``summary.json``) and the tables over every row (``results.*``).

One *row* is a checkpoint × benchmark × prompting method (:class:`Row`). Its summary is :func:`summarize` of
the judged answers (failed judgments excluded and counted in ``judge_failures``) with the view per difficulty
level, AUROC over the answers that state a confidence, and the same metrics with each ``--baselines``
confidence on the same answers.

Over all rows evaluated into ``<output_dir>``, by this run and earlier ones (a row evaluated again replaces its
earlier result, in place): ``results.md``, ``results.csv`` and ``results.json``; each baseline's line follows
its row. JSON is written atomically, NaN as null.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from step4_evaluation.answer_logprob import with_baseline
from step4_evaluation.metrics import auroc, confidence_and_correct, ece, summarize
from step4_evaluation.settings import MetricSettings
from utils.confidence import ParsedConfidence, count_statuses
from utils.errors import UserError
from utils.files import atomic_file
from utils.jsonl import json_safe

TABLE_COLUMNS = ("n", "accuracy", "ece", "auroc", "auroc_stated", "aurc", "pearson", "spearman", "brier",
                 "parse_failure_rate")
RESULTS_JSON = "results.json"
DIFFICULTY_KEYS = ("n", "accuracy", "auroc", "ece", "brier", "ci")  # of summarize, kept per difficulty level


@dataclass(frozen=True)
class Row:
    """One row of the report; ``key`` names its folder under ``<output_dir>`` and its entry in results.json."""

    checkpoint: str
    path: str
    benchmark: str
    method: str

    @property
    def key(self) -> str:
        return f"{self.checkpoint}/{self.benchmark}/{self.method}"


def confidence_summary(judged: list[dict], metrics: MetricSettings) -> dict[str, Any]:
    """:func:`summarize` of the judged records' ``confidence``, and inside each difficulty level its n, accuracy,
    mean confidence, AUROC, ECE, Brier and their bootstrap intervals (``ci``, with ``--bootstrap`` > 0)."""
    summary_of = partial(summarize, missing_confidence=metrics.missing_confidence, n_bins=metrics.n_bins,
                         bootstrap=metrics.bootstrap, seed=metrics.seed)
    summary = summary_of(judged)
    summary["by_difficulty"] = {}
    for level in sorted({r["difficulty"] for r in judged if r.get("difficulty")}):
        group = [r for r in judged if r.get("difficulty") == level]
        conf, _ = confidence_and_correct(group, metrics.missing_confidence)
        summary["by_difficulty"][level] = {"mean_confidence": float(conf.mean()),
                                           **{k: v for k, v in summary_of(group).items() if k in DIFFICULTY_KEYS}}
    return summary


def summarize_records(records: list[dict], metrics: MetricSettings, baselines: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics over judged examples (failed judgments excluded and counted), plus the view per difficulty; the
    same with each of ``baselines`` as the confidence under ``baselines``."""
    judged = [r for r in records if r["correct"] is not None]
    if not judged:
        first = f" ({records[0]['judge_reason']})" if records else ""
        raise UserError(f"no example could be judged{first}; see judge_reason in predictions.jsonl and rerun once the "
                        "judge works (generations are cached)")
    summary = confidence_summary(judged, metrics)
    summary["judge_failures"] = len(records) - len(judged)
    # the missing-confidence policy can make AUROC (a model that drops the confidence on the answers it
    # gets wrong scores well): report it also over the answers that state one
    stated = [r for r in judged if r["confidence"] is not None]
    summary["n_stated"] = len(stated)
    summary["auroc_stated"] = (auroc(*confidence_and_correct(stated, metrics.missing_confidence)) if stated
                               else float("nan"))
    summary["confidence_statuses"] = count_statuses(_parsed(r) for r in judged)
    summary["confidence_readout"] = metrics.confidence_readout
    if metrics.confidence_readout != "stated":  # the paper's readout beside it, on the same answers
        stated_conf, stated_corr = confidence_and_correct([{**r, "confidence": r["stated_confidence"]} for r in judged],
                                                          metrics.missing_confidence)
        summary["stated_readout"] = {"ece": ece(stated_conf, stated_corr, metrics.n_bins),
                                     "auroc": auroc(stated_conf, stated_corr)}
    summary["baselines"] = {name: confidence_summary(with_baseline(judged, name), metrics) for name in baselines}
    return summary


def _parsed(record: dict) -> ParsedConfidence:
    return ParsedConfidence(record["confidence"], record["confidence_status"])


def write_json(path: Path, data: Any) -> None:
    """Atomic: a reader never sees half a file. NaN is written as null."""
    with atomic_file(path) as handle:
        handle.write(json.dumps(json_safe(data), indent=2))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def results_table(summaries: dict[Row, dict]) -> tuple[list[str], list[list[str]]]:
    levels = sorted({lvl for s in summaries.values() for lvl in s.get("by_difficulty", {})})
    recalibrated = any("ece_recalibrated" in s for s in summaries.values())  # else the table stays as it was
    columns = (*TABLE_COLUMNS, *(["ece_recalibrated"] if recalibrated else []))
    header = ["checkpoint", "benchmark", "method", *columns, "judge",
              *(f"acc/conf/auroc {lvl}" for lvl in levels)]
    rows = []
    for row, s in summaries.items():
        # each baseline right after its row: the same answers and verdicts with another confidence
        for method, summary in [(row.method, s), *((f"{row.method}+{name}", b) for name, b in
                                                   s.get("baselines", {}).items())]:
            by_difficulty = summary.get("by_difficulty", {})
            by_level = ["/".join(_cell(by_difficulty[lvl][k]) for k in ("accuracy", "mean_confidence", "auroc"))
                        if lvl in by_difficulty else "n/a" for lvl in levels]
            # .get: an earlier run's row may predate a column
            rows.append([row.checkpoint, row.benchmark, method, *(_cell(summary.get(c)) for c in columns),
                         s["judge"], *by_level])
    return header, rows


def write_reports(out_dir: Path, summaries: dict[Row, dict], n_bins: int) -> str:
    header, rows = results_table(summaries)
    markdown = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                         ["| " + " | ".join(r) + " |" for r in rows])
    bins = " or ".join(str(b) for b in sorted({s.get("n_bins", n_bins) for s in summaries.values()}))
    (out_dir / "results.md").write_text(
        markdown + f"\n\nECE: {bins} equal-width bins, every confidence in exactly one bin (0.0 in the first, 1.0 in "
        "the last); missing confidences are filled with --missing_confidence and counted in parse_failure_rate.\n")
    with (out_dir / "results.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    write_json(out_dir / RESULTS_JSON, {row.key: s for row, s in summaries.items()})
    return markdown


def earlier_results(out_dir: Path) -> dict[Row, dict]:
    """The rows earlier runs evaluated into ``out_dir`` (its results.json), in their order."""
    file = out_dir / RESULTS_JSON
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        # a key is CHECKPOINT/BENCHMARK/METHOD, where names may hold "/": the name is what precedes the rest
        return {Row(key.removesuffix(f"/{s['benchmark']}/{s['method']}"), s["checkpoint"], s["benchmark"],
                    s["method"]): s for key, s in data.items()}
    except json.JSONDecodeError as err:
        problem = f"{file}:{err.lineno}: not valid JSON ({err.msg})"
    except (ValueError, KeyError, TypeError, AttributeError):
        problem = f"{file}: not the results.json step 4 writes"
    raise UserError(f"--output_dir {out_dir}: {problem}; move it away, and results.* start afresh with this run")


def merge_results(earlier: dict[Row, dict], current: dict[Row, dict]) -> dict[Row, dict]:
    """Every row evaluated into the folder: earlier rows in their order, this run's replacing the same keys in
    place and new ones appended."""
    merged = {row.key: (row, s) for row, s in earlier.items()}
    merged.update({row.key: (row, s) for row, s in current.items()})
    return dict(merged.values())
