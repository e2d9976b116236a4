"""Step 4 end to end in process: real TruthfulQA / NQ rows, every prompting method, the reference
judges, and the LLM judge against the loopback server — including an outage and its resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_llm_judge import KEY_ENV, SECRET, FakeServer

from step4_evaluation.benchmarks import load_benchmark
from step4_evaluation.evaluate import build_parser, run
from utils.errors import UserError
from utils.model import save_hf_checkpoint
from utils.toy_world import create_tiny_llama

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRUTHFULQA, NQ = SHARED / "TruthfulQA.csv", SHARED / "NQ-open.dev.jsonl"
needs_data = pytest.mark.skipif(not (TRUTHFULQA.is_file() and NQ.is_file()), reason="../shared/data absent")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, toy_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1), toy_tokenizer, path)
    return path


def _args(out: Path, checkpoint: Path, *extra: str):
    return build_parser().parse_args(["--checkpoints", f"tiny={checkpoint}", "--output_dir", str(out),
                                      "--max_examples", "6", "--max_new_tokens", "6", "--bootstrap", "0",
                                      "--batch_size", "4", *extra])


@needs_data
def test_benchmarks_methods_and_reports(tmp_path, tiny_checkpoint):
    summaries = run(_args(tmp_path, tiny_checkpoint, "--benchmarks", f"truthfulqa={TRUTHFULQA}", f"nq_open={NQ}",
                          "--methods", "vanilla", "topk", "cot"))
    assert len(summaries) == 6
    judges = {(row.benchmark, s["judge"]) for row, s in summaries.items()}
    assert judges == {("truthfulqa", "truthfulqa_reference"), ("nq_open", "exact_match")}
    row = tmp_path / "tiny/truthfulqa/topk"
    records = [json.loads(line) for line in (row / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["judge"] == "truthfulqa_rougeL" and "rougeL" in r["judge_reason"] for r in records)
    assert (row / "reliability.png").stat().st_size > 1000
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[1].startswith("tiny,truthfulqa,vanilla,6,")
    assert "ECE: 10 equal-width bins" in (tmp_path / "results.md").read_text()


@needs_data
def test_llm_judge_outage_exits_and_resumes_from_the_cache(tmp_path, tiny_checkpoint, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = FakeServer()
    try:
        args = _args(tmp_path, tiny_checkpoint, "--benchmarks", f"nq_open={NQ}", "--methods", "vanilla",
                     "--judge", "llm", "--judge_base_url", server.base_url, "--judge_model", "m",
                     "--judge_api_key_env", KEY_ENV, "--judge_max_retries", "1", "--judge_timeout", "2")
        broken = load_benchmark("nq_open", str(NQ), 6, args.seed)[2]["question"]
        server.always[broken] = ("content", "maybe")  # a malformed reply, every time
        with pytest.raises(UserError, match="1 judgments failed.*rerun"):
            run(args)
        records = [json.loads(line) for line in (tmp_path / "tiny/nq_open/vanilla/predictions.jsonl").read_text().splitlines()]
        failed = [r for r in records if r["judge_status"] == "failed"]
        assert [r["question"] for r in failed] == [broken] and failed[0]["correct"] is None
        before = len(server.requests)
        del server.always[broken]  # the judge is back
        summaries = run(args)
        assert len(server.requests) - before == 1  # only the failed judgment is asked again
        summary = next(iter(summaries.values()))
        assert summary["judge_failures"] == 0 and summary["n"] == 6 and summary["judge"] == "llm"
        assert SECRET not in (tmp_path / "judge_cache.jsonl").read_text()
    finally:
        server.close()


def test_auroc_over_stated_confidences_ignores_the_missing_ones():
    from step4_evaluation.evaluate import summarize_records

    args = build_parser().parse_args(["--checkpoints", "x", "--bootstrap", "0"])
    # two wrong answers drop their confidence: with missing = 0.0 they make AUROC look perfect
    records = [{"confidence": c, "confidence_status": "ok" if c is not None else "missing", "correct": y,
                "difficulty": None} for c, y in [(0.4, 1), (0.4, 1), (0.4, 0), (None, 0), (None, 0)]]
    summary = summarize_records(records, args)
    # AUROC with missing -> 0.0: positives (0.4, 0.4) vs negatives (0.4, 0, 0): (0.5 + 1 + 1) / 3 each
    assert summary["auroc"] == pytest.approx(2.5 / 3)
    assert summary["auroc_stated"] == pytest.approx(0.5) and summary["n_stated"] == 3
    assert summary["parse_failure_rate"] == pytest.approx(0.4)


def test_cached_generations_are_reused_only_for_the_same_checkpoint_and_prompt(tmp_path, toy_world_dir, toy_tokenizer):
    checkpoint = tmp_path / "ckpt"
    save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1), toy_tokenizer, checkpoint)
    toy = ("--benchmarks", f"toy={toy_world_dir / 'eval/test.jsonl'}", "--methods", "zero_shot")
    args = _args(tmp_path / "out", checkpoint, *toy)
    cache = tmp_path / "out/tiny/toy/zero_shot/generations.jsonl"

    def lines() -> int:
        return len(cache.read_text().splitlines())

    run(args)
    assert lines() == 6
    run(args)
    assert lines() == 6  # an interrupted or repeated run answers nothing twice
    save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, seed=1), toy_tokenizer,
                       checkpoint)  # retrained under the same name
    run(args)
    assert lines() == 12  # the earlier model's answers are not reused
    run(_args(tmp_path / "out", checkpoint, *toy, "--max_new_tokens", "5"))
    assert lines() == 18  # nor answers generated under other generation flags
