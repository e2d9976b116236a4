"""The real-model report: SmolLM2-135M-Instruct through the four steps, as ``docs/results_smollm2.md``.

    python -m experiments.smollm2_report [--results results/smollm2] [--models model_pth/smollm2]
                                         [--data datasets/facts_world] [--report docs/results_smollm2.md]

Reads what ``scripts/run_smollm2_pipeline.sh`` left: step 4's ``results.json`` of the base model's
prompts (``prompting/``) and of the trained checkpoints (``trained/``), each with its rows' training-free
baselines (``baselines``: the same answers scored by another confidence), each step's summary in its
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
# step-4 name of each step-3 form -> its folder under --models (step3_<form>, step3_<form>_oracle)
FORMS = {"ppo_alpha0": "alpha0", "conqord_paper": "paper", "conqord": "recommended"}
ORACLE = "_oracle"
CHECKPOINTS = ("base", "sft", *(name + arm for name in FORMS for arm in ("", ORACLE)))
METHODS = ("vanilla", "topk", "cot", "zero_shot")
SOURCES = ("stated", "answer_logprob", "popularity")  # the row's own confidence, then its baselines
THIRDS = ("low", "mid", "high")
BENCHMARK_NAMES = {"facts": "the real-facts world", "nq_open": "NQ-open", "truthfulqa": "TruthfulQA"}
WITH_CI = ("auroc", "ece", "brier", "spearman")
WHAT = {"base": "SmolLM2-135M-Instruct, no training", "sft": "step 1", "ppo_alpha0": "PPO, α = 0",
        "conqord_paper": "CONQORD, paper form (α·R_A in the sequence reward, the authors' summed R_A, α = 0.5)",
        "conqord": "CONQORD, recommended form (α = 32 on the confidence tokens, centred terms, Brier scoring, "
                   "PPO-ptx, 4 PPO epochs)",
        f"…{ORACLE}": "the same form with exact match against the gold answers as its quality reward "
                      "(otherwise the step-2 reward model's, the paper's setting)"}
SOURCE_WHAT = {"stated": "the confidence the answer states",
               "answer_logprob": "exp of the mean token log-probability of the answer (no training)",
               "popularity": "the question's popularity percentile / 100 (no model)"}


RECALIBRATED = ("ece", "auroc")  # step 4's --recalibrate: these again on the mapped confidence


def _records(summary: dict, source: str) -> dict:
    ci, ci_recalibrated = summary.get("ci") or {}, summary.get("ci_recalibrated") or {}
    return {"confidence": source, **{k: summary.get(k) for k in ("n", "accuracy", "auroc_stated", "parse_failure_rate")},
            **{k: (summary.get(k), ci.get(k)) for k in WITH_CI}, "by_difficulty": summary.get("by_difficulty") or {},
            **{f"{k}_recalibrated": (summary.get(f"{k}_recalibrated"), ci_recalibrated.get(k)) for k in RECALIBRATED},
            "recalibration": (summary.get("recalibration") or {}).get("method"), "n_dev": (summary.get("dev") or {}).get("n")}


def load_rows(results: Path) -> pd.DataFrame:
    """One row per checkpoint × benchmark × method × confidence source over every ``results.json`` under
    ``results``; metrics with an interval are (value, [low, high] or None) pairs."""
    records = []
    for file in sorted(results.glob("*/results.json")):
        for key, summary in json.loads(file.read_text()).items():
            benchmark, method = summary["benchmark"], summary["method"]
            row = {"checkpoint": key.removesuffix(f"/{benchmark}/{method}"),  # keys are NAME/BENCHMARK/METHOD
                   "benchmark": benchmark, "method": method, "judge": summary.get("judge"), "folder": file.parent.name}
            records.append({**row, **_records(summary, "stated")})
            records += [{**row, **_records(s, name)} for name, s in (summary.get("baselines") or {}).items()]
    frame = pd.DataFrame(records)
    if frame.empty:
        raise SystemExit(f"error: no results.json under {results}: run step 4 of the smollm2 preset first")
    return frame


def _rank(order: tuple[str, ...], column: pd.Series) -> pd.Series:
    return column.map({name: i for i, name in enumerate(order)}).fillna(len(order))  # unknown names last


def in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Base prompts, sft, then per form the reward-model arm and the oracle arm; a row's baselines after it."""
    ranks = {"c": _rank(CHECKPOINTS, frame["checkpoint"]), "m": _rank(METHODS, frame["method"]),
             "s": _rank(SOURCES, frame["confidence"])}
    ordered = frame.assign(**ranks).sort_values(["benchmark", *ranks], kind="stable").drop(columns=list(ranks))
    return ordered.assign(row=ordered["checkpoint"] + "/" + ordered["method"])


def _cell(value) -> str:
    if isinstance(value, tuple):  # (value, interval)
        value, interval = value
        if interval and None not in interval and value is not None:
            return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(frame: pd.DataFrame, columns: list[str], header: list[str] | None = None) -> list[str]:
    lines = ["| " + " | ".join(header or columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame[columns].itertuples(index=False)]
    return lines


def thirds_table(group: pd.DataFrame) -> list[str]:
    """Accuracy and AUROC (95% CI) per popularity third, for the rows whose benchmark has them."""
    levels = sorted({lvl for d in group["by_difficulty"] for lvl in d},
                    key=lambda lvl: (THIRDS.index(lvl) if lvl in THIRDS else len(THIRDS), lvl))
    if not levels:
        return []
    table = group[["row", "confidence"]].copy()
    for level in levels:
        parts = group["by_difficulty"].map(lambda d: d.get(level, {}))
        table[f"{level}: n"] = parts.map(lambda p: p.get("n"))
        table[f"{level}: accuracy"] = parts.map(lambda p: p.get("accuracy"))
        table[f"{level}: AUROC"] = parts.map(lambda p: (p.get("auroc"), (p.get("ci") or {}).get("auroc")))
    return ["Per popularity third (the question's entity's population rank):", "",
            *markdown_table(table, list(table.columns)), ""]


PPO_KEYS = ("quality_reward", "alignment_reward", "confidence_mean", "spearman_quality_confidence", "kl")


def last_rollouts(log: Path, last: int = 3) -> dict[str, float]:
    """Step 3's rollout statistics, averaged over the last ``last`` log lines."""
    if not log.is_file():
        return {}
    lines = pd.read_json(log, lines=True).tail(last)
    return {f"{key} (last {len(lines)} logs)" if key == PPO_KEYS[0] else key: float(lines[key].mean())
            for key in PPO_KEYS if key in lines}


def step_summaries(models: Path) -> list[str]:
    """Each step's training summary; step 2's ``accuracy`` is its held-out pair accuracy."""
    lines = ["| step | checkpoint | optimizer steps | s/step | final |", "|---|---|---|---|---|"]
    step3 = [f"step3_{form}{arm}/actor" for form in FORMS.values() for arm in ("", ORACLE)]
    for folder in ("step1", "step2", *step3):
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
    """Each row's reliability diagram (``reliability.png``, a baseline's ``reliability_<name>.png``)."""
    figures.mkdir(parents=True, exist_ok=True)
    links = []
    for row in frame.itertuples():
        suffix = "" if row.confidence == "stated" else f"_{row.confidence}"
        source = results / row.folder / row.checkpoint / row.benchmark / row.method / f"reliability{suffix}.png"
        if source.is_file():
            name = f"{row.checkpoint}_{row.benchmark}_{row.method}{suffix}.png".replace("/", "_")
            shutil.copyfile(source, figures / name)
            links.append(f"![{row.checkpoint} {row.benchmark} {row.method} {row.confidence}](figures/{figures.name}/{name})")
    return links


def report(results: Path, models: Path, data: Path, out: Path) -> Path:
    frame = in_order(load_rows(results))
    timings = json.loads((results / "timings.json").read_text()) if (results / "timings.json").is_file() else {}
    config = json.loads((data / "config.json").read_text()) if (data / "config.json").is_file() else {}
    benchmarks = ", ".join(BENCHMARK_NAMES.get(b, b) for b in sorted(frame["benchmark"].unique()))
    lines = [f"# A real pretrained model: SmolLM2-135M-Instruct on {benchmarks}", "",
             "Generated by `python -m experiments.smollm2_report` from the run of `bash scripts/run_smollm2_pipeline.sh` "
             "(CPU, no GPU). Rows: " + "; ".join(f"`{k}` = {v}" for k, v in WHAT.items()) + ". Confidence: "
             + "; ".join(f"`{k}` = {v}" for k, v in SOURCE_WHAT.items()) + " (same answers, same correctness).", "",
             f"Data (`{data}/config.json`, the real-facts world): {json.dumps(config.get('rows', {}))}. Countries are "
             "dealt into disjoint pools: no country or city of the evaluated facts questions was seen in steps 1-3.", ""]
    if timings:
        lines += ["## Wall time per step", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in timings.items()] + [""]
    lines += ["## Training", "", "Step 2's `accuracy`: the reward model's pair accuracy on held-out questions.", "",
              *step_summaries(models), ""]
    columns = ["row", "confidence", "n", "accuracy", *WITH_CI, "auroc_stated", "parse_failure_rate"]
    header = [*columns[:4], *(f"{k} (95% CI)" for k in WITH_CI), *columns[8:]]
    methods = sorted(set(frame["recalibration"].dropna()))
    if methods:  # step 4 ran with --dev_fraction and --recalibrate: the mapped confidence beside the raw one
        columns += [f"{k}_recalibrated" for k in RECALIBRATED]
        header += [f"{k} after {'/'.join(methods)} (95% CI)" for k in RECALIBRATED]
    for benchmark, group in frame.groupby("benchmark", sort=True):
        judge = ", ".join(sorted(set(group["judge"].dropna())))
        lines += [f"## {benchmark} (judge: {judge})", "", *markdown_table(group, columns, header), "",
                  *thirds_table(group)]
    lines += ["ECE: 10 equal-width bins; a missing confidence counts as 0.0 and as a parse failure; "
              "`auroc_stated`: AUROC over the answers that state a confidence; intervals: step 4's bootstrap.", ""]
    if methods:
        n_dev = sorted({int(n) for n in frame["n_dev"].dropna()})
        lines += [f"Every metric is over the test questions; {'/'.join(map(str, n_dev))} dev questions per row (a seeded "
                  f"split, the same in every row of a question set) fit the {'/'.join(methods)} map of the stated "
                  "confidence, scored on test in the last columns (the training-free baselines are not recalibrated; "
                  "a step map ties the confidences it merges, and ties count 1/2 in AUROC).", ""]
    reading = out.with_name(out.stem + "_reading.md")
    if reading.is_file():
        lines += ["## Reading", "", reading.read_text().strip(), ""]
    figures = out.parent / "figures" / out.stem.removeprefix("results_")  # one folder per report: profiles side by side
    lines += ["## Reliability diagrams", "", *copy_figures(frame, results, figures)]
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
    parser.add_argument("--data", default="datasets/facts_world")
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
