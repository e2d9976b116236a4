"""Step 4's run: the flags, then one *row* of the report per checkpoint × prompting method × benchmark.

For each row, under ``<output_dir>/<checkpoint>/<benchmark>/<method>/``:

* ``generations.jsonl`` — raw generations, appended batch by batch (an interrupted run resumes; see generation.py);
* ``predictions.jsonl`` — per example: question, answer, confidence, judge verdict and reason (see judging.py);
* ``summary.json`` and ``reliability.png`` (reliability diagram + confidence histogram); with ``--baselines``,
  ``reliability_<baseline>.png`` and the baselines' metrics on the same answers (see answer_logprob.py);
* with ``--retrieval_corpus``: ``generations_rag.jsonl``, ``retrieval.json`` (accuracy and
  retrieval rate per threshold τ) and ``retrieval.png``.

Then ``results.md``, ``results.csv`` and ``results.json`` over every row evaluated into ``<output_dir>`` (see
reports.py); the Markdown table is printed. One run at a time writes into an ``<output_dir>``.

With ``--dev_fraction``, each benchmark's dev questions are answered and judged too, but every reported
metric is over the test questions; the dev ones fit ``--recalibrate`` and choose τ (see recalibration.py).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from step4_evaluation.answer_logprob import BASELINES, answer_log_probs, carries_popularity, with_baseline
from step4_evaluation.benchmarks import benchmark_kind, load_benchmark
from step4_evaluation.confidence_readout import READOUTS, confidence_distributions
from step4_evaluation.generation import generate_missing, generation_source
from step4_evaluation.judging import JUDGES, Judging, check_judging, judged_records
from step4_evaluation.metrics import confidence_and_correct
from step4_evaluation.plots import reliability_diagram
from step4_evaluation.prompting import get_method
from step4_evaluation.recalibration import RECALIBRATORS, check_recalibration_flags, dev_splits, split_summary
from step4_evaluation.reports import Row, earlier_results, merge_results, summarize_records, write_json, write_reports
from step4_evaluation.retrieval import BM25Retriever, load_passages, plot_sweep, tau_on_dev, threshold_sweep
from step4_evaluation.settings import DecodingSettings, JudgeSettings, MetricSettings, SplitSettings
from utils.args import (Parser, add_bootstrap_arg, add_dtype_arg, add_missing_confidence_arg, add_n_bins_arg,
                        add_output_dir_arg, add_overwrite_output_dir_arg, add_seed_arg, env_var_name, non_negative_int,
                        positive_float, positive_int, share_below_one)
from utils.collate import encode_prompt
from utils.confidence import resolve_confidence
from utils.errors import UserError
from utils.files import check_apart_from_inputs, check_output_folder, claim_output_folder, mark_output, output_lock
from utils.jsonl import write_jsonl
from utils.model import (CAUSAL_LM, checked_tokenizer, create_causal_lm, require_checkpoint,
                         require_vocabulary_fits)
from utils.profiling import peak_gpu_memory_gib
from utils.training import set_seed

ACTORS = "step 1 or step 3 (they write actors)"


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
class RunSettings:
    """Every setting a run passes down, built once from the flags by :func:`run_settings`; fields named after
    their flags."""

    output_dir: Path
    methods: tuple[str, ...]
    topk: int
    baselines: tuple[str, ...]
    retrieval_k: int
    decoding: DecodingSettings
    metrics: MetricSettings
    split: SplitSettings
    judge: JudgeSettings


def run_settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings(
        output_dir=Path(args.output_dir), methods=tuple(args.methods), topk=args.topk, baselines=tuple(args.baselines),
        retrieval_k=args.retrieval_k,
        decoding=DecodingSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                  max_prompt_len=args.max_prompt_len, dtype=args.dtype),
        metrics=MetricSettings(missing_confidence=args.missing_confidence, n_bins=args.n_bins,
                               bootstrap=args.bootstrap, seed=args.seed, confidence_readout=args.confidence_readout),
        split=SplitSettings(dev_fraction=args.dev_fraction, recalibrate=args.recalibrate, seed=args.seed),
        judge=JudgeSettings(judge=args.judge, truthfulqa_metric=args.truthfulqa_metric,
                            judge_base_url=args.judge_base_url, judge_model=args.judge_model,
                            judge_api_key_env=args.judge_api_key_env, judge_concurrency=args.judge_concurrency,
                            judge_max_retries=args.judge_max_retries, judge_timeout=args.judge_timeout,
                            judge_cache=args.judge_cache or Path(args.output_dir) / "judge_cache.jsonl"))


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


def checked_checkpoint(path: str):
    """An actor folder step 4 can evaluate, checked before any weights load: its own tokenizer, left-padded."""
    require_checkpoint(path, "--checkpoints", ACTORS, CAUSAL_LM, weights=True)
    tokenizer = checked_tokenizer(path, "--checkpoints", padding_side="left")
    require_vocabulary_fits(path, "--checkpoints", tokenizer, path)
    return tokenizer


def evaluate_row(row: Row, model, tokenizer, questions: list[dict], judging: Judging,
                 settings: RunSettings, retriever, dev: set[str]) -> dict:
    decoding, metrics = settings.decoding, settings.metrics
    method = get_method(row.method, k=settings.topk)
    folder = settings.output_dir / row.checkpoint / row.benchmark / row.method
    prompts = {q["id"]: method.build(q["question"], tokenizer) for q in questions}
    source = generation_source(row.path, decoding)
    special_tokens = not method.uses_chat_template(tokenizer)
    responses = generate_missing(model, tokenizer, prompts, folder / "generations.jsonl", decoding.batch_size,
                                 decoding.max_new_tokens, decoding.max_prompt_len, desc=row.key, source=source,
                                 special_tokens=special_tokens)
    baselines = [b for b in settings.baselines if b != "popularity" or carries_popularity(questions)]
    # the prompts as generation encoded them, for the passes that score a response after its prompt
    prompt_ids = ({qid: encode_prompt(tokenizer, prompt, decoding.max_prompt_len, special_tokens)
                   for qid, prompt in prompts.items()}
                  if metrics.confidence_readout == "expected" or "answer_logprob" in baselines else {})
    distributions = None
    if metrics.confidence_readout == "expected":
        items = {qid: (ids, responses[qid]) for qid, ids in prompt_ids.items()}
        distributions = confidence_distributions(model, tokenizer, items, folder / "confidence_distributions.jsonl",
                                                 decoding.batch_size, source, desc=f"{row.key} readout")
    records = judged_records(questions, responses, method, lambda a: judging.verdicts(row.benchmark, questions, a),
                             distributions)
    if "answer_logprob" in baselines:
        items = {r["id"]: (prompt_ids[r["id"]], r["response"], r["answer"]) for r in records}
        means = answer_log_probs(model, tokenizer, items, decoding.batch_size, desc=f"{row.key} answer_logprob")
        for record in records:
            record["answer_logprob"] = means[record["id"]]
    if dev:
        for record in records:
            record["split"] = "dev" if record["id"] in dev else "test"
    write_jsonl(folder / "predictions.jsonl", records)
    test = [r for r in records if r.get("split") != "dev"]
    summary = summarize_records(test, metrics, baselines)
    if dev:
        summary.update(split_summary(records, settings.split, metrics))
    summary.update(checkpoint=row.path, benchmark=row.benchmark, method=row.method, judge=judging.name(row.benchmark))
    judged = [r for r in test if r["correct"] is not None]
    for name in (None, *baselines):
        conf, corr = confidence_and_correct(judged if name is None else with_baseline(judged, name),
                                            metrics.missing_confidence)
        reliability_diagram(conf, corr, folder / (f"reliability_{name}.png" if name else "reliability.png"),
                            n_bins=metrics.n_bins, title=f"{row.key}+{name}" if name else row.key)
    if retriever is not None:
        summary["retrieval"] = adaptive_retrieval(row, model, tokenizer, questions, records, method, judging,
                                                  retriever, folder, source, settings)
    write_json(folder / "summary.json", summary)
    return summary


def adaptive_retrieval(row: Row, model, tokenizer, questions, records, method, judging, retriever, folder,
                       source: str, settings: RunSettings):
    """Answer again with the top-k passages, then sweep the confidence threshold over the test questions; with a
    dev split, retrieval.json holds that ``sweep`` and the τ chosen on dev (``tau_dev``, see tau_on_dev)."""
    decoding, metrics = settings.decoding, settings.metrics
    evidence = retriever.retrieve([q["question"] for q in questions], settings.retrieval_k)
    prompts = {q["id"]: method.build(q["question"], tokenizer, evidence=ev) for q, ev in zip(questions, evidence)}
    responses = generate_missing(model, tokenizer, prompts, folder / "generations_rag.jsonl", decoding.batch_size,
                                 decoding.max_new_tokens, decoding.max_prompt_len, desc=f"{row.key} +retrieval",
                                 source=source,
                                 special_tokens=not method.uses_chat_template(tokenizer))
    rag = judged_records(questions, responses, method, lambda a: judging.verdicts(row.benchmark, questions, a))
    write_jsonl(folder / "predictions_rag.jsonl", rag)
    both = [(r, g) for r, g in zip(records, rag) if r["correct"] is not None and g["correct"] is not None]
    test = gated([(r, g) for r, g in both if r.get("split") != "dev"], metrics.missing_confidence)
    sweep = threshold_sweep(*test)
    result: list | dict = sweep
    if any("split" in r for r in records):
        dev = gated([(r, g) for r, g in both if r["split"] == "dev"], metrics.missing_confidence)
        result = {"sweep": sweep, "tau_dev": tau_on_dev(threshold_sweep(*dev), *test, metrics.bootstrap, metrics.seed)
                  if dev[0] else None}  # None: no dev question judged both ways
    write_json(folder / "retrieval.json", result)
    plot_sweep(sweep, folder / "retrieval.png", title=f"{row.key}: confidence-gated retrieval")
    return result


def gated(pairs: list[tuple[dict, dict]], missing_confidence: float) -> tuple[list[float], list[int], list[int]]:
    """(confidence, correct without retrieval, correct with it) of (record, retrieval record) pairs."""
    conf = [resolve_confidence(r["confidence"], missing_confidence) for r, _ in pairs]
    return conf, [r["correct"] for r, _ in pairs], [g["correct"] for _, g in pairs]


def run(args: argparse.Namespace) -> dict[Row, dict]:
    set_seed(args.seed)
    settings = run_settings(args)
    check_recalibration_flags(settings.split)
    checkpoints = parse_named(args.checkpoints, "--checkpoints")
    benchmarks = parse_named(args.benchmarks, "--benchmarks")
    out_dir = settings.output_dir
    check_output_folder(out_dir, "--output_dir", overwrite=args.overwrite_output_dir)
    check_apart_from_inputs(out_dir, {"--checkpoints": [path for _, path in checkpoints],
                                      "--benchmarks": [path for _, path in benchmarks],
                                      "--retrieval_corpus": [args.retrieval_corpus]})
    for name in settings.methods:
        try:
            get_method(name, k=settings.topk)
        except ValueError as err:
            raise UserError(f"--methods: {err}") from None
    tokenizers = {name: checked_checkpoint(path) for name, path in checkpoints}
    questions = {name: load_benchmark(benchmark_kind(name), path, args.max_examples, args.seed)
                 for name, path in benchmarks}
    check_judging(settings.judge, questions)
    dev = dev_splits(settings.split, questions)
    for name, items in questions.items():
        if "popularity" in settings.baselines and not carries_popularity(items):
            print(f"[step 4] --baselines popularity: skipped on {name}, whose questions carry no popularity "
                  "percentile (the facts world's do)", flush=True)
    retriever = BM25Retriever(load_passages(args.retrieval_corpus)) if args.retrieval_corpus else None
    started = time.time()
    with output_lock(out_dir, "--output_dir"):
        claim_output_folder(out_dir)
        earlier = earlier_results(out_dir)
        judging = Judging(settings.judge)
        out_dir.mkdir(parents=True, exist_ok=True)
        mark_output(out_dir)
        summaries = evaluate_checkpoints(checkpoints, tokenizers, benchmarks, questions, judging, settings,
                                         retriever, dev)
        kept = [row.key for row in earlier if row.key not in {r.key for r in summaries}]
        markdown = write_reports(out_dir, merge_results(earlier, summaries), settings.metrics.n_bins)
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
                         settings: RunSettings, retriever, dev: dict[str, set[str]]) -> dict[Row, dict]:
    """Every row of this run, one checkpoint's weights in memory at a time."""
    summaries: dict[Row, dict] = {}
    for checkpoint, path in checkpoints:
        start = time.time()
        tokenizer = tokenizers[checkpoint]  # the evaluated checkpoint's own
        model = create_causal_lm(path, tokenizer, settings.decoding.dtype).eval()
        if torch.cuda.is_available():
            model = model.cuda()
        for benchmark, _ in benchmarks:
            for method in settings.methods:
                row = Row(checkpoint, path, benchmark, method)
                summaries[row] = evaluate_row(row, model, tokenizer, questions[benchmark], judging, settings,
                                              retriever, dev[benchmark])
        print(f"[step 4] {checkpoint}: {time.time() - start:.1f}s", flush=True)
    return summaries
