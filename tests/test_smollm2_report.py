"""The real-model report is built from step 4's results files: rows in the documented order, each row's
baselines after it, intervals beside the metrics, a table per popularity third."""
from __future__ import annotations

import json
from pathlib import Path

from experiments.smollm2_report import report

BASELINES = ("answer_logprob", "popularity")


def _summary(accuracy: float, auroc: float | None) -> dict:
    """The shape of step 4's summary (metrics.summarize + by_difficulty), bootstrap intervals included."""
    third = {"n": 3, "accuracy": accuracy, "mean_confidence": 0.5, "auroc": auroc, "ece": 0.1, "brier": 0.2,
             "ci": {"auroc": [0.11, 0.99] if auroc is not None else [None, None], "ece": [0.0, 0.3]}}
    return {"n": 9, "accuracy": accuracy, "ece": 0.2, "brier": 0.25, "auroc": auroc, "spearman": 0.3,
            "parse_failure_rate": 0.0, "by_difficulty": {level: third for level in ("high", "low", "mid")},
            "ci": {"accuracy": [0.1, 0.5], "ece": [0.05, 0.4], "auroc": [0.52, 0.91], "spearman": [-0.1, 0.6],
                   "brier": [0.2, 0.3]}}


def _results(folder: Path, rows: dict[str, float]) -> None:
    """A results.json of NAME/BENCHMARK/METHOD rows, each with its baselines, and their diagrams."""
    folder.mkdir(parents=True)
    summaries = {}
    for key, accuracy in rows.items():
        name, benchmark, method = key.split("/")
        summaries[key] = {**_summary(accuracy, 0.7), "benchmark": benchmark, "method": method, "checkpoint": name,
                          "judge": "exact_match", "auroc_stated": 0.66,
                          "baselines": {b: _summary(accuracy, None if b == "popularity" else 0.8) for b in BASELINES}}
        for suffix in ("", *(f"_{b}" for b in BASELINES)):
            figure = folder / name / benchmark / method / f"reliability{suffix}.png"
            figure.parent.mkdir(parents=True, exist_ok=True)
            figure.write_bytes(b"png")
    (folder / "results.json").write_text(json.dumps(summaries))


def _training_args(folder: Path, result: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "training_args.json").write_text(json.dumps({"result": result}))


def test_report_orders_rows_with_baselines_intervals_and_thirds(tmp_path: Path):
    results, models = tmp_path / "results", tmp_path / "models"
    _results(results / "trained", {"conqord_oracle/facts/zero_shot": 0.4, "conqord/facts/zero_shot": 0.3,
                                   "conqord_paper/facts/zero_shot": 0.25, "ppo_alpha0_oracle/facts/zero_shot": 0.2,
                                   "sft/facts/zero_shot": 0.1})
    _results(results / "prompting", {"base/facts/cot": 0.05, "base/facts/vanilla": 0.02})
    (results / "timings.json").write_text(json.dumps({"step 1 (SFT)": 61}))
    _training_args(models / "step2", {"steps": 40, "final": {"accuracy": 0.85}})
    _training_args(models / "step3_recommended_oracle" / "actor", {"steps": 15, "final": {"kl": 0.01}})
    out = report(results, models, tmp_path / "data", tmp_path / "docs" / "results_smollm2.md")
    lines = out.read_text().splitlines()

    main_rows = [line for line in lines if line.startswith("| ") and " | 9 | " in line]
    assert [line.split(" | ")[:2] for line in main_rows] == [
        ["| " + row, source] for row in ("base/vanilla", "base/cot", "sft/zero_shot", "ppo_alpha0_oracle/zero_shot",
                                         "conqord_paper/zero_shot", "conqord/zero_shot", "conqord_oracle/zero_shot")
        for source in ("stated", *BASELINES)]
    sft_stated = next(line for line in main_rows if line.startswith("| sft/zero_shot | stated |"))
    assert "| 0.700 [0.52, 0.91] |" in sft_stated and "| 0.660 |" in sft_stated  # auroc with its interval
    assert "| n/a |" in next(line for line in main_rows if line.startswith("| sft/zero_shot | popularity |"))
    header = next(line for line in lines if line.startswith("| row | confidence | low: n |"))
    assert header.index("low: AUROC") < header.index("mid: AUROC") < header.index("high: AUROC")
    thirds = lines[lines.index(header) + 2:]
    assert thirds[0].startswith("| base/vanilla | stated |") and "| 3 | 0.020 | 0.700 [0.11, 0.99] |" in thirds[0]
    text = "\n".join(lines)
    assert "| step2 |" in text and "accuracy 0.850" in text and "| step3_recommended_oracle |" in text
    assert "| step 1 (SFT) | 61 |" in text
    figures = tmp_path / "docs" / "figures" / "smollm2"
    assert (figures / "conqord_facts_zero_shot.png").is_file()
    assert (figures / "conqord_facts_zero_shot_answer_logprob.png").is_file()


def test_each_report_keeps_its_figures_in_a_folder_of_its_own_name(tmp_path: Path):
    results = tmp_path / "results"
    _results(results / "trained", {"conqord/facts/zero_shot": 0.3})
    docs = tmp_path / "docs"
    for name, folder in (("results_smollm2.md", "smollm2"), ("results_smollm2_long.md", "smollm2_long")):
        text = report(results, tmp_path / "models", tmp_path / "data", docs / name).read_text()
        assert f"](figures/{folder}/conqord_facts_zero_shot.png)" in text
        assert (docs / "figures" / folder / "conqord_facts_zero_shot.png").is_file()


def test_embedding_replaces_an_earlier_section(tmp_path: Path):
    from experiments.smollm2_report import embed, real_model_section

    report_file = tmp_path / "results_smollm2.md"
    results_md = tmp_path / "results.md"
    results_md.write_text("# Toy study\n\nbody\n")
    for version in ("first", "second"):
        report_file.write_text(f"# Real model\n\n{version} table\n")
        embed(results_md, real_model_section(report_file))
    text = results_md.read_text()
    assert text.startswith("# Toy study\n\nbody\n") and "## Real model" in text
    assert "second table" in text and "first table" not in text and text.count("smollm2:begin") == 1


def test_recalibrated_columns_appear_beside_the_raw_ones_only_when_step4_recalibrated(tmp_path: Path):
    results = tmp_path / "results"
    _results(results / "trained", {"sft/facts/zero_shot": 0.1})
    plain = report(results, tmp_path / "models", tmp_path / "data", tmp_path / "plain.md").read_text()
    assert "after isotonic" not in plain and "dev questions" not in plain
    file = results / "trained/results.json"
    summaries = json.loads(file.read_text())
    summaries["sft/facts/zero_shot"].update(
        ece_recalibrated=0.031, auroc_recalibrated=0.69, dev={"n": 4},
        ci_recalibrated={"ece": [0.01, 0.08], "auroc": [0.5, 0.85]}, recalibration={"method": "isotonic"})
    file.write_text(json.dumps(summaries))
    text = report(results, tmp_path / "models", tmp_path / "data", tmp_path / "recal.md").read_text()
    assert "| ece after isotonic (95% CI) | auroc after isotonic (95% CI) |" in text
    stated = next(line for line in text.splitlines() if line.startswith("| sft/zero_shot | stated |"))
    assert stated.endswith("| 0.031 [0.01, 0.08] | 0.690 [0.50, 0.85] |")
    popularity = next(line for line in text.splitlines() if line.startswith("| sft/zero_shot | popularity |"))
    assert popularity.endswith("| n/a | n/a |") and "4 dev questions per row" in text
