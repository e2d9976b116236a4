"""The real-model report is built from step 4's results files, rows in the documented order."""
from __future__ import annotations

import json
from pathlib import Path

from experiments.smollm2_report import report


def _results(folder: Path, rows: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    summaries = {}
    for key, accuracy in rows.items():
        name, benchmark, method = key.split("/")
        summaries[key] = {"benchmark": benchmark, "method": method, "judge": "exact_match", "n": 10,
                          "accuracy": accuracy, "ece": 0.2, "auroc": None, "parse_failure_rate": 0.0}
        figure = folder / name / benchmark / method / "reliability.png"
        figure.parent.mkdir(parents=True)
        figure.write_bytes(b"png")
    (folder / "results.json").write_text(json.dumps(summaries))


def test_report_orders_rows_and_copies_diagrams(tmp_path: Path):
    results = tmp_path / "results"
    _results(results / "trained", {"conqord/nq_open/zero_shot": 0.3, "sft/nq_open/zero_shot": 0.1})
    _results(results / "prompting", {"base/nq_open/cot": 0.05, "base/nq_open/vanilla": 0.02})
    (results / "timings.json").write_text(json.dumps({"step 1 (SFT)": 61}))
    out = report(results, tmp_path / "models", tmp_path / "data", tmp_path / "docs" / "results_smollm2.md")
    text = out.read_text()
    order = [text.index(f"| {row} |") for row in ("base/vanilla", "base/cot", "sft/zero_shot", "conqord/zero_shot")]
    assert order == sorted(order)
    assert "| 0.300 |" in text and "| n/a |" in text and "| step 1 (SFT) | 61 |" in text
    assert (tmp_path / "docs" / "figures" / "smollm2" / "conqord_nq_open_zero_shot.png").is_file()


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
