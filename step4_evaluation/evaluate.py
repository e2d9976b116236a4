"""Step 4: answer held-out questions with a confidence, judge them, score calibration, compare checkpoints.

Per checkpoint it writes ``<output_dir>/<name>/predictions.jsonl`` (appended batch by batch, so an
interrupted run resumes where it stopped) and ``summary.json``; over all checkpoints a Markdown table
``comparison.md`` and ``comparison.json``, and the table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from step4_evaluation.judges import exact_match
from step4_evaluation.metrics import auroc, summarize
from step4_evaluation.plots import reliability_diagram
from utils.confidence import MISSING_CONFIDENCE, ParsedConfidence, count_statuses, extract_answer, parse_confidence
from utils.data import DataError, encode_prompt
from utils.errors import UserError
from utils.generation import GenerationSettings, generate, response_ids
from utils.model import create_causal_lm, load_tokenizer, require_checkpoint
from utils.prompts import build_prompt
from utils.training import batched, set_seed

TABLE_COLUMNS = ("n", "accuracy", "ece", "auroc", "pearson", "spearman", "brier", "parse_failure_rate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="CONQORD step 4: evaluate confidence calibration.")
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="NAME=PATH (or PATH, named by its folder) of each model to compare.")
    parser.add_argument("--eval_data", required=True, help="JSONL with question, answers (+ difficulty).")
    parser.add_argument("--output_dir", default="results/step4")
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_prompt_len", type=int, default=256)
    parser.add_argument("--missing_confidence", type=float, default=MISSING_CONFIDENCE,
                        help="Confidence given to answers that state none (also counted as parse failures).")
    parser.add_argument("--n_bins", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for 95%% intervals (0: none).")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    return parser


def parse_checkpoint_specs(specs: Sequence[str]) -> list[tuple[str, str]]:
    named = []
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
        named.append((name, path))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise UserError(f"--checkpoints: names must differ, got {names}; use NAME=PATH")
    return named


def load_questions(path: str, max_examples: int | None, seed: int) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--eval_data {path}: no such file (the toy world's is datasets/toy_world/eval/test.jsonl; "
                        "run python datasets/generate_toy_world.py)")
    rows = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            for key in ("question", "answers"):
                if not row.get(key):
                    raise DataError(f"{path}:{number}: missing or empty key {key!r}")
            rows.append({"id": row.get("id", f"q{number}"), **row})
    if not rows:
        raise DataError(f"--eval_data {path}: no questions")
    if max_examples is not None and max_examples < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_examples, replace=False))
        rows = [rows[i] for i in keep]
    return rows


def _done_ids(file: Path) -> set[str]:
    if not file.is_file():
        return set()
    with file.open(encoding="utf-8") as handle:
        return {json.loads(line)["id"] for line in handle if line.strip()}


def answer_questions(model, tokenizer, questions: list[dict], file: Path, batch_size: int,
                     max_new_tokens: int, max_prompt_len: int, desc: str) -> None:
    """Greedy answers for the questions not yet in ``file``, appended as each batch finishes."""
    done = _done_ids(file)
    todo = [q for q in questions if q["id"] not in done]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a", encoding="utf-8") as out, tqdm(total=len(todo), desc=desc, disable=None) as bar:
        for chunk in batched(todo, batch_size):
            prompts = [encode_prompt(tokenizer, build_prompt(q["question"]), max_prompt_len) for q in chunk]
            sequences, mask, width = generate(model, prompts, settings, tokenizer.pad_token_id, tokenizer.eos_token_id)
            for question, ids in zip(chunk, response_ids(sequences, mask, width)):
                out.write(json.dumps(judge(question, tokenizer.decode(ids, skip_special_tokens=True))) + "\n")
            out.flush()
            bar.update(len(chunk))


def judge(question: dict, response: str) -> dict:
    parsed = parse_confidence(response)
    answer = extract_answer(response)
    return {"id": question["id"], "question": question["question"], "response": response, "answer": answer,
            "confidence": parsed.value, "confidence_status": parsed.status, "gold": question["answers"],
            "correct": int(exact_match(answer, question["answers"])), "judge": "exact_match",
            "difficulty": question.get("difficulty")}


def read_predictions(file: Path, ids: Iterable[str]) -> list[dict]:
    wanted = set(ids)
    with file.open(encoding="utf-8") as handle:
        return [r for r in map(json.loads, filter(str.strip, handle)) if r["id"] in wanted]


def summarize_predictions(records: list[dict], missing_confidence: float, n_bins: int, bootstrap: int,
                          seed: int) -> dict[str, Any]:
    """Overall metrics, plus accuracy, mean confidence and AUROC inside each difficulty level."""
    summary = summarize(records, missing_confidence=missing_confidence, n_bins=n_bins, bootstrap=bootstrap, seed=seed)
    summary["confidence_statuses"] = count_statuses(ParsedConfidence(r["confidence"], r["confidence_status"])
                                                    for r in records)
    levels = sorted({r["difficulty"] for r in records if r.get("difficulty")})
    summary["by_difficulty"] = {}
    for level in levels:
        group = [r for r in records if r.get("difficulty") == level]
        conf = np.array([missing_confidence if r["confidence"] is None else r["confidence"] for r in group])
        corr = np.array([r["correct"] for r in group])
        summary["by_difficulty"][level] = {"n": len(group), "accuracy": float(corr.mean()),
                                           "mean_confidence": float(conf.mean()), "auroc": auroc(conf, corr)}
    return summary


def _write_json(path: Path, data: Any) -> None:
    """Atomic: a reader never sees half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_nan_to_none(data), indent=2))
    os.replace(tmp, path)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def comparison_table(summaries: dict[str, dict]) -> str:
    def cell(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else \
            (f"{value:.3f}" if isinstance(value, float) else str(value))

    levels = sorted({lvl for s in summaries.values() for lvl in s.get("by_difficulty", {})})
    header = ["checkpoint", *TABLE_COLUMNS, *(f"acc/conf/auroc {lvl}" for lvl in levels)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summaries.items():
        by_level = [("/".join(cell(s["by_difficulty"][lvl][k]) for k in ("accuracy", "mean_confidence", "auroc"))
                     if lvl in s["by_difficulty"] else "n/a") for lvl in levels]
        lines.append("| " + " | ".join([name, *(cell(s[c]) for c in TABLE_COLUMNS), *by_level]) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, dict]:
    set_seed(args.seed)
    checkpoints = parse_checkpoint_specs(args.checkpoints)
    for _, path in checkpoints:
        require_checkpoint(path, "--checkpoints", "the step that writes it (steps 1 and 3 write actors)")
    questions = load_questions(args.eval_data, args.max_examples, args.seed)
    out_dir = Path(args.output_dir)
    summaries: dict[str, dict] = {}
    for name, path in checkpoints:
        start = time.time()
        tokenizer = load_tokenizer(path, padding_side="left")  # the evaluated checkpoint's own tokenizer
        model = create_causal_lm(path, tokenizer, args.dtype).eval()
        if torch.cuda.is_available():
            model = model.cuda()
        predictions = out_dir / name / "predictions.jsonl"
        answer_questions(model, tokenizer, questions, predictions, args.batch_size, args.max_new_tokens,
                         args.max_prompt_len, desc=name)
        records = read_predictions(predictions, (q["id"] for q in questions))
        summary = summarize_predictions(records, args.missing_confidence, args.n_bins, args.bootstrap, args.seed)
        summary.update(checkpoint=path, seconds=round(time.time() - start, 1))
        conf = [args.missing_confidence if r["confidence"] is None else r["confidence"] for r in records]
        reliability_diagram(conf, [r["correct"] for r in records], out_dir / name / "reliability.png",
                            n_bins=args.n_bins, title=name)
        _write_json(out_dir / name / "summary.json", summary)
        summaries[name] = summary
    table = comparison_table(summaries)
    (out_dir / "comparison.md").write_text(table + "\n")
    _write_json(out_dir / "comparison.json", summaries)
    print(table, flush=True)
    return summaries
