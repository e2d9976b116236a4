"""Step 4: answer benchmark questions with a stated confidence, judge them, score calibration, compare.

One *row* of the report is a checkpoint × prompting method × benchmark. For each row, under
``<output_dir>/<checkpoint>/<benchmark>/<method>/``:

* ``generations.jsonl`` — raw generations, appended batch by batch (an interrupted run resumes);
* ``predictions.jsonl`` — per example: question, answer, confidence, judge verdict and reason;
* ``summary.json`` and ``reliability.png`` (reliability diagram + confidence histogram); with ``--baselines``,
  ``reliability_<baseline>.png`` and the baselines' metrics on the same answers (see answer_logprob.py);
* with ``--retrieval_corpus``: ``generations_rag.jsonl``, ``retrieval.json`` (accuracy and
  retrieval rate per threshold τ) and ``retrieval.png``.

Over all rows evaluated into ``<output_dir>``, by this run and earlier ones (a row evaluated again
replaces its earlier result): ``results.md``, ``results.csv`` and ``results.json``; the Markdown table is
printed. One run at a time writes into an ``<output_dir>``.

With ``--dev_fraction``, each benchmark's dev questions are answered and judged too, but every reported
metric is over the test questions; the dev ones fit ``--recalibrate`` and choose τ (see recalibration.py).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm import tqdm

from step4_evaluation import judges
from step4_evaluation.answer_logprob import BASELINES, answer_log_probs, carries_popularity, with_baseline
from step4_evaluation.benchmarks import load_benchmark
from step4_evaluation.confidence_readout import READOUTS, confidence_distributions, expected_confidence
from step4_evaluation.metrics import auroc, confidence_and_correct, ece, summarize
from step4_evaluation.plots import reliability_diagram
from step4_evaluation.prompting import get_method
from step4_evaluation.recalibration import RECALIBRATORS, check_recalibration_flags, dev_splits, split_summary
from step4_evaluation.retrieval import BM25Retriever, load_passages, plot_sweep, tau_on_dev, threshold_sweep
from utils.args import (Parser, add_bootstrap_arg, add_dtype_arg, add_missing_confidence_arg, add_n_bins_arg,
                        add_output_dir_arg, add_overwrite_output_dir_arg, add_seed_arg, env_var_name, non_negative_int,
                        positive_float, positive_int, share_below_one)
from utils.confidence import ParsedConfidence, count_statuses
from utils.data import encode_prompt
from utils.errors import UserError
from utils.files import (atomic_file, check_apart_from_inputs, check_output_folder, claim_output_folder, mark_output,
                         output_lock)
from utils.generation import GenerationSettings, generate, response_ids
from utils.jsonl import json_safe, read_jsonl, write_jsonl
from utils.model import (CAUSAL_LM, checked_tokenizer, create_causal_lm, require_checkpoint,
                         require_vocabulary_fits)
from utils.profiling import peak_gpu_memory_gib
from utils.training import batched, set_seed

TABLE_COLUMNS = ("n", "accuracy", "ece", "auroc", "auroc_stated", "aurc", "pearson", "spearman", "brier",
                 "parse_failure_rate")
JUDGES = ("auto", "exact_match", "token_f1", "truthfulqa_reference", "llm")
ACTORS = "step 1 or step 3 (they write actors)"
RESULTS_JSON = "results.json"
DIFFICULTY_KEYS = ("n", "accuracy", "auroc", "ece", "brier", "ci")  # of summarize, kept per difficulty level


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description="CONQORD step 4: accuracy and confidence calibration.")
    g = parser.add_argument_group("what to evaluate")
    g.add_argument("--checkpoints", nargs="+", required=True,
                   help="NAME=PATH (or PATH, named by its folder) of each model to compare.")
    g.add_argument("--benchmarks", nargs="+", default=["toy=datasets/toy_world/eval/test.jsonl"],
                   help="KIND or KIND=PATH with KIND in truthfulqa, nq_open, toy, facts (no path: the hub's copy); "
                        "KIND/LABEL=PATH names a second set of the same kind (e.g. toy/seen=…/seen.jsonl).")
    g.add_argument("--methods", nargs="+", default=["zero_shot"],
                   help="Prompting methods: zero_shot (the fine-tuning format), vanilla, topk, cot.")
    g.add_argument("--topk", type=positive_int, default=2, help="Guesses asked for by the topk method.")
    g.add_argument("--max_examples", type=positive_int, default=None, help="A seeded random subset of each benchmark.")
    add_seed_arg(g)
    g.add_argument("--dev_fraction", type=share_below_one, default=0.0,
                   help="Share of each benchmark's questions held out as a seeded dev split (0: none): answered "
                        "like the rest, reported apart; every other metric is over the test questions.")
    add_output_dir_arg(g, default="results/step4")
    add_overwrite_output_dir_arg(g)
    gen = parser.add_argument_group("generation")
    gen.add_argument("--batch_size", type=positive_int, default=64)
    gen.add_argument("--max_new_tokens", type=positive_int, default=64)
    gen.add_argument("--max_prompt_len", type=positive_int, default=1024)
    add_dtype_arg(gen, default="fp32")
    j = parser.add_argument_group("judging")
    j.add_argument("--judge", choices=JUDGES, default="auto",
                   help="auto: TruthfulQA's reference metric on truthfulqa, exact match elsewhere.")
    j.add_argument("--truthfulqa_metric", choices=["rouge", "bleu"], default="rouge")
    j.add_argument("--judge_base_url", default=None, help="OpenAI-compatible endpoint of the LLM judge.")
    j.add_argument("--judge_model", default="gpt-4", help="LLM judge model name.")
    j.add_argument("--judge_api_key_env", type=env_var_name, default="OPENAI_API_KEY",
                   help="Environment variable holding the judge's API key (never logged).")
    j.add_argument("--judge_concurrency", type=positive_int, default=8)
    j.add_argument("--judge_max_retries", type=non_negative_int, default=4)
    j.add_argument("--judge_timeout", type=positive_float, default=60.0)
    j.add_argument("--judge_cache", default=None, help="Judge cache file (default: <output_dir>/judge_cache.jsonl).")
    m = parser.add_argument_group("metrics")
    m.add_argument("--confidence_readout", choices=READOUTS, default="stated",
                   help="stated: the number the greedy response wrote (the paper); expected: the mean of the model's "
                        "distribution over the values 0.0 … 1.0 at that place (same answer; see confidence_readout.py).")
    add_missing_confidence_arg(m, help_text="Confidence given to answers that state none (also counted as parse failures).")
    add_n_bins_arg(m, help_text="Equal-width ECE bins (10, 15, 20, ...).")
    add_bootstrap_arg(m, default=1000, help_text="Bootstrap resamples for 95%% intervals (0: none).")
    m.add_argument("--baselines", nargs="*", choices=BASELINES, default=[],
                   help="Training-free confidences scored on the same answers: answer_logprob (exp of the answer's "
                        "mean token log-probability), popularity (the question's popularity / 100; facts only).")
    m.add_argument("--recalibrate", choices=RECALIBRATORS, default="none",
                   help="A map confidence -> P(correct) fitted on the dev answers (needs --dev_fraction) and scored "
                        "on the test answers beside the raw confidence (*_recalibrated in summary.json).")
    r = parser.add_argument_group("adaptive retrieval")
    r.add_argument("--retrieval_corpus", default=None,
                   help="JSONL of {id, text} passages; enables confidence-gated retrieval (BM25).")
    r.add_argument("--retrieval_k", type=positive_int, default=2, help="Passages put in the prompt.")
    return parser


@dataclass(frozen=True)
class Row:
    checkpoint: str
    path: str
    benchmark: str
    method: str

    @property
    def key(self) -> str:
        return f"{self.checkpoint}/{self.benchmark}/{self.method}"


def parse_named(specs: Sequence[str], flag: str, name_of_path=lambda p: Path(p).name) -> list[tuple[str, str | None]]:
    named = []
    for spec in specs:
        if "=" in spec:
            name, path = spec.split("=", 1)
        else:
            name, path = (name_of_path(spec), spec) if flag == "--checkpoints" else (spec, None)
        named.append((name, path))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise UserError(f"{flag}: names must differ, got {names}; use NAME=PATH")
    return named


def benchmark_kind(name: str) -> str:
    """``toy/seen`` → ``toy``: the loader and judge of a labelled benchmark set."""
    return name.split("/", 1)[0]


def checked_checkpoint(path: str):
    """An actor folder step 4 can evaluate, checked before any weights load: its own tokenizer, left-padded."""
    require_checkpoint(path, "--checkpoints", ACTORS, CAUSAL_LM, weights=True)
    tokenizer = checked_tokenizer(path, "--checkpoints", padding_side="left")
    require_vocabulary_fits(path, "--checkpoints", tokenizer, path)
    return tokenizer


# ---------------------------------------------------------------- generation (resumable)

def generation_source(checkpoint: str, args: argparse.Namespace) -> str:
    """What a cached response depends on: the checkpoint's files (name, size, modification time; a hub
    name as given) and the generation flags. A retrained checkpoint or a regenerated world under the
    same names must not be answered from an earlier run's cache."""
    path = Path(checkpoint)
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else []
    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files] or [checkpoint]
    parts += [f"max_new_tokens={args.max_new_tokens}", f"max_prompt_len={args.max_prompt_len}", f"dtype={args.dtype}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def generate_missing(model, tokenizer, prompts: dict[str, str], file: Path, batch_size: int,
                     max_new_tokens: int, max_prompt_len: int, desc: str, source: str,
                     special_tokens: bool = True) -> dict[str, str]:
    """Greedy responses for the prompts not yet in ``file`` (appended as each batch finishes); all responses.

    A cached response is reused only for the same prompt and the same ``source`` (see
    :func:`generation_source`); other lines stay in the file, unused. ``special_tokens=False`` for
    chat-templated prompts, which already hold their BOS."""
    done = {r["id"]: r["response"] for r in (read_jsonl(file) if file.is_file() else [])
            if r.get("source") == source and r.get("prompt") == prompts.get(r["id"])}
    todo = [(i, p) for i, p in prompts.items() if i not in done]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a", encoding="utf-8") as out, tqdm(total=len(todo), desc=desc, disable=None) as bar:
        for chunk in batched(todo, batch_size):
            ids = [encode_prompt(tokenizer, p, max_prompt_len, special_tokens) for _, p in chunk]
            sequences, mask, width = generate(model, ids, settings, tokenizer.pad_token_id, tokenizer.eos_token_id)
            for (qid, prompt), resp in zip(chunk, response_ids(sequences, mask, width)):
                done[qid] = tokenizer.decode(resp, skip_special_tokens=True)
                out.write(json.dumps({"id": qid, "prompt": prompt, "response": done[qid], "source": source}) + "\n")
            out.flush()
            bar.update(len(chunk))
    return done


# ---------------------------------------------------------------- judging

def judge_name(judge: str, benchmark: str) -> str:
    """The judge ``--judge`` picks for ``benchmark``."""
    if judge != "auto":
        return judge
    return "truthfulqa_reference" if benchmark_kind(benchmark) == "truthfulqa" else "exact_match"


def check_judging(args: argparse.Namespace, questions: dict[str, list[dict]]) -> None:
    """What the judges need, refused before any generation (judging comes after it)."""
    for benchmark, items in questions.items():
        if judge_name(args.judge, benchmark) == "truthfulqa_reference" and any(not q.get("incorrect_answers")
                                                                              for q in items):
            raise UserError(f"--judge truthfulqa_reference needs incorrect reference answers, which --benchmarks "
                            f"{benchmark} does not have; use exact_match, token_f1 or llm")
    if args.judge != "llm":
        return
    from step4_evaluation.llm_judge import api_key

    url = urlparse(args.judge_base_url) if args.judge_base_url is not None else None
    if url is not None and (url.scheme not in ("http", "https") or not url.netloc):  # else: every request fails
        raise UserError(f"--judge_base_url {args.judge_base_url}: not an http(s) URL; give the judge server's "
                        "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    try:
        api_key(args.judge_api_key_env)
    except ValueError as err:
        raise UserError(f"--judge llm: {err}; export it, or name another with --judge_api_key_env") from None


class Judging:
    """Chooses the judge per benchmark and runs it; LLM verdicts are cached on disk by the judge."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.llm = self._llm_judge() if args.judge == "llm" else None

    def name(self, benchmark: str) -> str:
        return judge_name(self.args.judge, benchmark)

    def verdicts(self, benchmark: str, questions: list[dict], answers: list[str]) -> list[judges.Verdict]:
        name = self.name(benchmark)
        benchmark = benchmark_kind(benchmark)
        if name == "llm":
            task = "truthfulqa" if benchmark == "truthfulqa" else "qa"
            items = [{"question": q["question"], "prediction": a, "correct_answers": q["answers"],
                      "incorrect_answers": q.get("incorrect_answers") or [], "task": task}
                     for q, a in zip(questions, answers)]
            return self.llm.judge_many(items)
        if name == "truthfulqa_reference":  # check_judging made sure of the incorrect answers
            return [judges.judge_truthfulqa_reference(a, q["answers"], q.get("incorrect_answers") or [],
                                                      metric=self.args.truthfulqa_metric)
                    for q, a in zip(questions, answers)]
        single = judges.judge_token_f1 if name == "token_f1" else judges.judge_exact_match
        return [single(a, q["answers"]) for q, a in zip(questions, answers)]

    def _llm_judge(self):
        from step4_evaluation.llm_judge import LLMJudge

        try:
            return LLMJudge(base_url=self.args.judge_base_url, model=self.args.judge_model,
                            api_key_env=self.args.judge_api_key_env,
                            cache_path=self.args.judge_cache or Path(self.args.output_dir) / "judge_cache.jsonl",
                            max_concurrency=self.args.judge_concurrency,
                            max_retries=self.args.judge_max_retries, timeout=self.args.judge_timeout)
        except ValueError as err:
            raise UserError(f"--judge llm: {err}") from None


def judged_records(questions: list[dict], responses: dict[str, str], method, verdicts_of,
                   distributions: dict[str, list[float]] | None = None) -> list[dict]:
    """One record per question. With ``distributions`` (the expected readout), ``confidence`` is the mean of
    the response's distribution and ``stated_confidence`` the number it wrote."""
    parsed = {q["id"]: method.parse(responses[q["id"]]) for q in questions}
    verdicts = verdicts_of([parsed[q["id"]].answer for q in questions])
    records = []
    for q, verdict in zip(questions, verdicts):
        p = parsed[q["id"]]
        record = {"id": q["id"], "question": q["question"], "response": responses[q["id"]],
                  "answer": p.answer, "confidence": p.confidence.value, "confidence_status": p.confidence.status,
                  "correct": None if verdict.correct is None else int(verdict.correct),
                  "judge": verdict.judge, "judge_status": verdict.status, "judge_score": verdict.score,
                  "judge_reason": verdict.reason, "gold": q["answers"], "difficulty": q.get("difficulty")}
        if q.get("popularity") is not None:
            record["popularity"] = q["popularity"]
        if distributions is not None:
            distribution = distributions.get(q["id"])
            record.update(stated_confidence=p.confidence.value, confidence_distribution=distribution,
                          confidence=None if distribution is None else expected_confidence(distribution))
        records.append(record)
    return records


# ---------------------------------------------------------------- metrics and reports

def confidence_summary(judged: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """:func:`summarize` of the judged records' ``confidence``, and inside each difficulty level its n, accuracy,
    mean confidence, AUROC, ECE, Brier and their bootstrap intervals (``ci``, with ``--bootstrap`` > 0)."""
    summary_of = partial(summarize, missing_confidence=args.missing_confidence, n_bins=args.n_bins,
                         bootstrap=args.bootstrap, seed=args.seed)
    summary = summary_of(judged)
    summary["by_difficulty"] = {}
    for level in sorted({r["difficulty"] for r in judged if r.get("difficulty")}):
        group = [r for r in judged if r.get("difficulty") == level]
        conf, _ = confidence_and_correct(group, args.missing_confidence)
        summary["by_difficulty"][level] = {"mean_confidence": float(conf.mean()),
                                           **{k: v for k, v in summary_of(group).items() if k in DIFFICULTY_KEYS}}
    return summary


def summarize_records(records: list[dict], args: argparse.Namespace, baselines: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics over judged examples (failed judgments excluded and counted), plus the view per difficulty; the
    same with each of ``baselines`` as the confidence under ``baselines``."""
    judged = [r for r in records if r["correct"] is not None]
    if not judged:
        first = f" ({records[0]['judge_reason']})" if records else ""
        raise UserError(f"no example could be judged{first}; see judge_reason in predictions.jsonl and rerun once the "
                        "judge works (generations are cached)")
    summary = confidence_summary(judged, args)
    summary["judge_failures"] = len(records) - len(judged)
    # the missing-confidence policy can make AUROC (a model that drops the confidence on the answers it
    # gets wrong scores well): report it also over the answers that state one
    stated = [r for r in judged if r["confidence"] is not None]
    summary["n_stated"] = len(stated)
    summary["auroc_stated"] = auroc(*confidence_and_correct(stated, args.missing_confidence)) if stated else float("nan")
    summary["confidence_statuses"] = count_statuses(_parsed(r) for r in judged)
    summary["confidence_readout"] = args.confidence_readout
    if args.confidence_readout != "stated":  # the paper's readout beside it, on the same answers
        stated_conf, stated_corr = confidence_and_correct([{**r, "confidence": r["stated_confidence"]} for r in judged],
                                                          args.missing_confidence)
        summary["stated_readout"] = {"ece": ece(stated_conf, stated_corr, args.n_bins),
                                     "auroc": auroc(stated_conf, stated_corr)}
    summary["baselines"] = {name: confidence_summary(with_baseline(judged, name), args) for name in baselines}
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


# ---------------------------------------------------------------- the run

def evaluate_row(row: Row, model, tokenizer, questions: list[dict], judging: Judging, args, retriever,
                 dev: set[str]) -> dict:
    method = get_method(row.method, k=args.topk)
    folder = Path(args.output_dir) / row.checkpoint / row.benchmark / row.method
    prompts = {q["id"]: method.build(q["question"], tokenizer) for q in questions}
    source = generation_source(row.path, args)
    special_tokens = not method.uses_chat_template(tokenizer)
    responses = generate_missing(model, tokenizer, prompts, folder / "generations.jsonl", args.batch_size,
                                 args.max_new_tokens, args.max_prompt_len, desc=row.key, source=source,
                                 special_tokens=special_tokens)
    baselines = [b for b in args.baselines if b != "popularity" or carries_popularity(questions)]
    # the prompts as generation encoded them, for the passes that score a response after its prompt
    prompt_ids = ({qid: encode_prompt(tokenizer, prompt, args.max_prompt_len, special_tokens)
                   for qid, prompt in prompts.items()}
                  if args.confidence_readout == "expected" or "answer_logprob" in baselines else {})
    distributions = None
    if args.confidence_readout == "expected":
        items = {qid: (ids, responses[qid]) for qid, ids in prompt_ids.items()}
        distributions = confidence_distributions(model, tokenizer, items, folder / "confidence_distributions.jsonl",
                                                 args.batch_size, source, desc=f"{row.key} readout")
    records = judged_records(questions, responses, method, lambda a: judging.verdicts(row.benchmark, questions, a),
                             distributions)
    if "answer_logprob" in baselines:
        items = {r["id"]: (prompt_ids[r["id"]], r["response"], r["answer"]) for r in records}
        means = answer_log_probs(model, tokenizer, items, args.batch_size, desc=f"{row.key} answer_logprob")
        for record in records:
            record["answer_logprob"] = means[record["id"]]
    if dev:
        for record in records:
            record["split"] = "dev" if record["id"] in dev else "test"
    write_jsonl(folder / "predictions.jsonl", records)
    test = [r for r in records if r.get("split") != "dev"]
    summary = summarize_records(test, args, baselines)
    if dev:
        summary.update(split_summary(records, args))
    summary.update(checkpoint=row.path, benchmark=row.benchmark, method=row.method, judge=judging.name(row.benchmark))
    judged = [r for r in test if r["correct"] is not None]
    for name in (None, *baselines):
        conf, corr = confidence_and_correct(judged if name is None else with_baseline(judged, name),
                                            args.missing_confidence)
        reliability_diagram(conf, corr, folder / (f"reliability_{name}.png" if name else "reliability.png"),
                            n_bins=args.n_bins, title=f"{row.key}+{name}" if name else row.key)
    if retriever is not None:
        summary["retrieval"] = adaptive_retrieval(row, model, tokenizer, questions, records, method, judging,
                                                  retriever, folder, source, args)
    write_json(folder / "summary.json", summary)
    return summary


def adaptive_retrieval(row: Row, model, tokenizer, questions, records, method, judging, retriever, folder,
                       source: str, args):
    """Answer again with the top-k passages, then sweep the confidence threshold over the test questions; with a
    dev split, retrieval.json holds that ``sweep`` and the τ chosen on dev (``tau_dev``, see tau_on_dev)."""
    evidence = retriever.retrieve([q["question"] for q in questions], args.retrieval_k)
    prompts = {q["id"]: method.build(q["question"], tokenizer, evidence=ev) for q, ev in zip(questions, evidence)}
    responses = generate_missing(model, tokenizer, prompts, folder / "generations_rag.jsonl", args.batch_size,
                                 args.max_new_tokens, args.max_prompt_len, desc=f"{row.key} +retrieval", source=source,
                                 special_tokens=not method.uses_chat_template(tokenizer))
    rag = judged_records(questions, responses, method, lambda a: judging.verdicts(row.benchmark, questions, a))
    write_jsonl(folder / "predictions_rag.jsonl", rag)
    both = [(r, g) for r, g in zip(records, rag) if r["correct"] is not None and g["correct"] is not None]
    test = gated([(r, g) for r, g in both if r.get("split") != "dev"], args.missing_confidence)
    sweep = threshold_sweep(*test)
    result: list | dict = sweep
    if any("split" in r for r in records):
        dev = gated([(r, g) for r, g in both if r["split"] == "dev"], args.missing_confidence)
        result = {"sweep": sweep, "tau_dev": tau_on_dev(threshold_sweep(*dev), *test, args.bootstrap, args.seed)
                  if dev[0] else None}  # None: no dev question judged both ways
    write_json(folder / "retrieval.json", result)
    plot_sweep(sweep, folder / "retrieval.png", title=f"{row.key}: confidence-gated retrieval")
    return result


def gated(pairs: list[tuple[dict, dict]], missing_confidence: float) -> tuple[list[float], list[int], list[int]]:
    """(confidence, correct without retrieval, correct with it) of (record, retrieval record) pairs."""
    conf = [missing_confidence if r["confidence"] is None else r["confidence"] for r, _ in pairs]
    return conf, [r["correct"] for r, _ in pairs], [g["correct"] for _, g in pairs]


def run(args: argparse.Namespace) -> dict[Row, dict]:
    set_seed(args.seed)
    check_recalibration_flags(args)
    checkpoints = parse_named(args.checkpoints, "--checkpoints")
    benchmarks = parse_named(args.benchmarks, "--benchmarks")
    out_dir = Path(args.output_dir)
    check_output_folder(out_dir, "--output_dir", overwrite=args.overwrite_output_dir)
    check_apart_from_inputs(out_dir, {"--checkpoints": [path for _, path in checkpoints],
                                      "--benchmarks": [path for _, path in benchmarks],
                                      "--retrieval_corpus": [args.retrieval_corpus]})
    for name in args.methods:
        try:
            get_method(name, k=args.topk)
        except ValueError as err:
            raise UserError(f"--methods: {err}") from None
    tokenizers = {name: checked_checkpoint(path) for name, path in checkpoints}
    questions = {name: load_benchmark(benchmark_kind(name), path, args.max_examples, args.seed)
                 for name, path in benchmarks}
    check_judging(args, questions)
    dev = dev_splits(args, questions)
    for name, items in questions.items():
        if "popularity" in args.baselines and not carries_popularity(items):
            print(f"[step 4] --baselines popularity: skipped on {name}, whose questions carry no popularity "
                  "percentile (the facts world's do)", flush=True)
    retriever = BM25Retriever(load_passages(args.retrieval_corpus)) if args.retrieval_corpus else None
    started = time.time()
    with output_lock(out_dir, "--output_dir"):
        claim_output_folder(out_dir)
        earlier = earlier_results(out_dir)
        judging = Judging(args)
        out_dir.mkdir(parents=True, exist_ok=True)
        mark_output(out_dir)
        summaries = evaluate_checkpoints(checkpoints, tokenizers, benchmarks, questions, judging, args, retriever,
                                         dev)
        kept = [row.key for row in earlier if row.key not in {r.key for r in summaries}]
        markdown = write_reports(out_dir, merge_results(earlier, summaries), args.n_bins)
    if kept:
        print(f"[step 4] results.* also hold {len(kept)} row{'s' if len(kept) > 1 else ''} from earlier runs into "
              f"{out_dir}: {', '.join(kept)}", flush=True)
    print(markdown, flush=True)
    print(json.dumps({"step4": {"seconds": round(time.time() - started, 1), "peak_gpu_memory_gib": peak_gpu_memory_gib()}}),
          flush=True)
    failures = sum(s["judge_failures"] + s.get("dev", {}).get("judge_failures", 0) for s in summaries.values())
    if failures:
        where = f"the LLM judge at {judging.llm.endpoint}: " if judging.llm else ""
        raise UserError(f"{failures} judgments failed ({where}see judge_reason in predictions.jsonl); the finished "
                        "ones are cached — rerun the same command to retry only the failed ones")
    return summaries


def evaluate_checkpoints(checkpoints: list[tuple[str, str]], tokenizers: dict[str, Any],
                         benchmarks: list[tuple[str, str | None]], questions: dict[str, list[dict]], judging: Judging,
                         args: argparse.Namespace, retriever, dev: dict[str, set[str]]) -> dict[Row, dict]:
    """Every row of this run, one checkpoint's weights in memory at a time."""
    summaries: dict[Row, dict] = {}
    for checkpoint, path in checkpoints:
        start = time.time()
        tokenizer = tokenizers[checkpoint]  # the evaluated checkpoint's own
        model = create_causal_lm(path, tokenizer, args.dtype).eval()
        if torch.cuda.is_available():
            model = model.cuda()
        for benchmark, _ in benchmarks:
            for method in args.methods:
                row = Row(checkpoint, path, benchmark, method)
                summaries[row] = evaluate_row(row, model, tokenizer, questions[benchmark], judging, args, retriever,
                                              dev[benchmark])
        print(f"[step 4] {checkpoint}: {time.time() - start:.1f}s", flush=True)
    return summaries
