"""The real-model report: SmolLM2-135M-Instruct through the four steps, as ``docs/results_smollm2.md``.

    python -m experiments.smollm2_report [--results results/smollm2] [--models model_pth/smollm2]
                                         [--data datasets/nq_world] [--report docs/results_smollm2.md]

Reads what ``scripts/run_smollm2_pipeline.sh`` left: step 4's ``results.json`` of the base model's
prompts (``prompting/``) and of the trained checkpoints (``trained/``), each step's summary in its
``training_args.json``, the wall times in ``timings.json``. Copies the reliability diagrams to
``docs/figures/smollm2/``, and embeds the report as a section of ``docs/results.md`` (the toy study's
generated report keeps it when regenerated). A hand-written ``docs/results_smollm2_reading.md`` is included when present.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from utils.args import Parser

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("n", "accuracy", "ece", "auroc", "auroc_stated", "pearson", "spearman", "brier", "parse_failure_rate")
ROW_ORDER = ("base/vanilla", "base/topk", "base/cot", "sft/zero_shot", "ppo_alpha0/zero_shot",
             "conqord_paper/zero_shot", "conqord/zero_shot")
WHAT = {"base": "SmolLM2-135M-Instruct, no training", "sft": "step 1", "ppo_alpha0": "PPO, α = 0",
        "conqord_paper": "CONQORD, paper form (α·R_A in the sequence reward, the authors' summed R_A, α = 0.5)",
        "conqord": "CONQORD, our form (α·R_A on the confidence tokens, α = 32)"}


def load_rows(results: Path) -> pd.DataFrame:
    """One row per checkpoint × benchmark × method over every ``results.json`` under ``results``."""
    records = []
    for file in sorted(results.glob("*/results.json")):
        for key, summary in json.loads(file.read_text()).items():
            interval = (summary.get("ci") or {}).get("auroc")
            records.append({"checkpoint": key.split("/")[0],  # keys are NAME/BENCHMARK/METHOD
                            **{k: summary.get(k) for k in ("benchmark", "method", "judge", *METRICS)},
                            "auroc 95% CI": "[{:.2f}, {:.2f}]".format(*interval) if interval and None not in interval
                            else "n/a", "folder": file.parent.name})
    frame = pd.DataFrame(records)
    if frame.empty:
        raise SystemExit(f"error: no results.json under {results}: run step 4 of the smollm2 preset first")
    return frame


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame[columns].itertuples(index=False)]
    return lines


def in_order(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(row=frame["checkpoint"] + "/" + frame["method"])
    rank = {name: i for i, name in enumerate(ROW_ORDER)}
    return frame.assign(rank=frame["row"].map(rank).fillna(len(rank))).sort_values(["benchmark", "rank"])


PPO_KEYS = ("quality_reward", "alignment_reward", "confidence_mean", "spearman_quality_confidence", "kl")


def last_rollouts(log: Path, last: int = 3) -> dict[str, float]:
    """Step 3's rollout statistics, averaged over the last ``last`` log lines (one line: 8 rollouts)."""
    if not log.is_file():
        return {}
    lines = pd.read_json(log, lines=True).tail(last)
    return {f"{key} (last {len(lines)} logs)" if key == PPO_KEYS[0] else key: float(lines[key].mean())
            for key in PPO_KEYS if key in lines}


def step_summaries(models: Path) -> list[str]:
    lines = ["| step | checkpoint | optimizer steps | s/step | final |", "|---|---|---|---|---|"]
    for folder in ("step1", "step2", "step3_alpha0/actor", "step3_paper/actor", "step3/actor"):
        file = models / folder / "training_args.json"
        if not file.is_file():
            continue
        result = json.loads(file.read_text()).get("result", {})
        final = result.get("final") or last_rollouts(file.parent.parent / "train_log.jsonl")
        final_text = ", ".join(f"{k} {_cell(v)}" for k, v in final.items() if k != "step" and isinstance(v, (int, float)))
        lines.append(f"| {folder.split('/')[0]} | `{models / folder}` | {result.get('steps', 'n/a')} | "
                     f"{_cell(result.get('seconds_per_step'))} | {final_text} |")
    return lines


def copy_figures(frame: pd.DataFrame, results: Path, figures: Path) -> list[str]:
    figures.mkdir(parents=True, exist_ok=True)
    links = []
    for row in frame.itertuples():
        source = results / row.folder / row.checkpoint / row.benchmark / row.method / "reliability.png"
        if source.is_file():
            name = f"{row.checkpoint}_{row.benchmark}_{row.method}.png"
            shutil.copyfile(source, figures / name)
            links.append(f"![{row.checkpoint} {row.benchmark} {row.method}](figures/{figures.name}/{name})")
    return links


def report(results: Path, models: Path, data: Path, out: Path) -> Path:
    frame = in_order(load_rows(results))
    timings = json.loads((results / "timings.json").read_text()) if (results / "timings.json").is_file() else {}
    config = json.loads((data / "config.json").read_text()) if (data / "config.json").is_file() else {}
    lines = ["# A real pretrained model: SmolLM2-135M-Instruct on NQ-open and TruthfulQA", "",
             "Generated by `python -m experiments.smollm2_report` from the run of `bash scripts/run_smollm2_pipeline.sh` "
             "(2-core CPU, no GPU). Rows: " + "; ".join(f"`{k}` = {v}" for k, v in WHAT.items()) + ".", "",
             f"Data (`datasets/nq_world/config.json`): {json.dumps(config.get('rows', {}))}. "
             "NQ-open questions are dealt into disjoint pools: none of the evaluated questions was seen in steps 1-3.", ""]
    if timings:
        lines += ["## Wall time per step", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in timings.items()] + [""]
    lines += ["## Training", "", *step_summaries(models), ""]
    for benchmark, group in frame.groupby("benchmark", sort=True):
        judge = ", ".join(sorted(set(group["judge"].dropna())))
        columns = ["row", *METRICS[:4], "auroc 95% CI", *METRICS[4:]]
        lines += [f"## {benchmark} (judge: {judge})", "", *markdown_table(group, columns), ""]
    lines += ["ECE: 10 equal-width bins; a missing confidence counts as 0.0 and as a parse failure; "
              "`auroc_stated`: AUROC over the answers that state a confidence; intervals: step 4's bootstrap.", ""]
    reading = out.with_name(out.stem + "_reading.md")
    if reading.is_file():
        lines += ["## Reading", "", reading.read_text().strip(), ""]
    lines += ["## Reliability diagrams", "", *copy_figures(frame, results, out.parent / "figures" / "smollm2")]
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return out


BEGIN, END = "<!-- smollm2:begin -->", "<!-- smollm2:end -->"


def real_model_section(report_file: Path) -> list[str]:
    """The real-model report as a section of ``docs/results.md`` (headings one level down, figure links
    relative to ``docs/``), between markers so a later report replaces it."""
    body = [("#" + line if line.startswith("#") else line) for line in report_file.read_text().splitlines()]
    return [BEGIN, f"(From [{report_file.name}]({report_file.name}).)", "", *body, END]


def embed(results_md: Path, section: list[str]) -> None:
    """Put ``section`` into ``results_md`` in place of an earlier one, or at its end."""
    text = results_md.read_text() if results_md.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(section) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    tmp = results_md.with_name(f".{results_md.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, results_md)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/smollm2")
    parser.add_argument("--models", default="model_pth/smollm2")
    parser.add_argument("--data", default="datasets/nq_world")
    parser.add_argument("--report", default="docs/results_smollm2.md")
    parser.add_argument("--embed_in", default="docs/results.md",
                        help="Also put the report into this file as a section ('' : don't).")
    args = parser.parse_args(argv)
    out = report(Path(args.results), Path(args.models), Path(args.data), Path(args.report))
    if args.embed_in:
        embed(Path(args.embed_in), real_model_section(out))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
