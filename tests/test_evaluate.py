"""Step 4 end to end in process: real TruthfulQA / NQ rows, every prompting method, the reference
judges, and the LLM judge against the loopback server — including an outage and its resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_llm_judge import KEY_ENV, SECRET, FakeServer

from step4_evaluation.benchmarks import load_benchmark
from step4_evaluation.evaluate import build_parser, run, run_settings
from utils.errors import UserError
from utils.jsonl import read_jsonl
from utils.model import save_hf_checkpoint
from worlds.toy_world import create_tiny_llama

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
    records = _predictions(row)
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
        with pytest.raises(UserError) as info:
            run(args)
        assert str(info.value).startswith(f"1 judgments failed (the LLM judge at {server.base_url}: see judge_reason "
                                          "in predictions.jsonl); the finished ones are cached — rerun")
        records = _predictions(tmp_path / "tiny/nq_open/vanilla")
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
    from step4_evaluation.reports import summarize_records

    metrics = run_settings(build_parser().parse_args(["--checkpoints", "x", "--bootstrap", "0"])).metrics
    # two wrong answers drop their confidence: with missing = 0.0 they make AUROC look perfect
    records = [{"confidence": c, "confidence_status": "ok" if c is not None else "missing", "correct": y,
                "difficulty": None} for c, y in [(0.4, 1), (0.4, 1), (0.4, 0), (None, 0), (None, 0)]]
    summary = summarize_records(records, metrics)
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


# --- bad input stops at start, before any weights load or output ---------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    import step4_evaluation.evaluate as evaluate

    monkeypatch.setattr(evaluate, "create_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))


def _main(out: Path, checkpoints: list[str], *extra: str, benchmark: Path) -> int:
    from step4_evaluation.main import main

    return main(["--checkpoints", *checkpoints, "--output_dir", str(out), "--benchmarks", f"toy={benchmark}",
                 "--max_examples", "6", "--max_new_tokens", "6", "--bootstrap", "0", *extra])


def _broken(kind: str, folder: Path, tiny: Path, tokenizer) -> str:
    """A checkpoint folder that is not what step 4 evaluates; returns the expected message's tail."""
    from test_model_checks import _reward_model

    if kind == "reward_model":
        save_hf_checkpoint(_reward_model(tokenizer), tokenizer, folder)
        return ("is a reward model (LlamaForSequenceClassification), but this flag takes a causal LM: pass a folder "
                "written by step 1 or step 3 (they write actors)")
    if kind == "small_vocabulary":
        save_hf_checkpoint(create_tiny_llama(tokenizer, hidden_size=32, num_layers=1), tokenizer, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "vocab_size": len(tokenizer) - 8}))
        return (f"its vocabulary ({len(tokenizer) - 8}) is smaller than the tokenizer's ({len(tokenizer)}, from "
                f"{folder}); use a model trained with that tokenizer")
    shutil.copytree(tiny, folder)
    if kind == "no_weights":
        (folder / "model.safetensors").unlink()
        return ("no weights there (model.safetensors, pytorch_model.bin or a sharded *.index.json); rerun step 1 or "
                "step 3 (they write actors), or copy the whole model folder")
    if kind == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
        return "cannot load its tokenizer (ValueError: "
    (folder / "config.json").write_text("{")
    return f"{folder / 'config.json'}:1: not valid JSON"


@pytest.mark.parametrize("kind", ["reward_model", "no_weights", "no_tokenizer", "bad_config", "small_vocabulary"])
def test_a_checkpoint_that_is_not_an_actor_stops_the_run_at_start(tmp_path, tiny_checkpoint, toy_world_dir,
                                                                   toy_tokenizer, no_model_load, capsys, kind):
    bad = tmp_path / kind
    tail = _broken(kind, bad, tiny_checkpoint, toy_tokenizer)
    capsys.readouterr()  # the save's progress bar
    out = tmp_path / "out"
    code = _main(out, [f"good={tiny_checkpoint}", f"bad={bad}"], benchmark=toy_world_dir / "eval/test.jsonl")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --checkpoints {bad}: {tail}") and err.count("\n") == 1
    assert not out.exists()


def test_llm_judge_without_its_key_stops_at_start(tmp_path, tiny_checkpoint, toy_world_dir, no_model_load, capsys,
                                                  monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    out = tmp_path / "out"
    code = _main(out, [f"tiny={tiny_checkpoint}"], "--judge", "llm", "--judge_base_url", "http://127.0.0.1:9/v1",
                 "--judge_api_key_env", "NO_SUCH_JUDGE_KEY", benchmark=toy_world_dir / "eval/test.jsonl")
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == ("error: --judge llm: environment variable NO_SUCH_JUDGE_KEY is not set (it "
                                       "must hold the judge's API key); export it, or name another with "
                                       "--judge_api_key_env\n")


def test_llm_judge_url_that_is_not_http_stops_at_start(tmp_path, tiny_checkpoint, toy_world_dir, no_model_load, capsys,
                                                      monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "out"
    code = _main(out, [f"tiny={tiny_checkpoint}"], "--judge", "llm", "--judge_base_url", "localhost:8000/v1",
                 "--judge_api_key_env", KEY_ENV, benchmark=toy_world_dir / "eval/test.jsonl")
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == ("error: --judge_base_url localhost:8000/v1: not an http(s) URL; give the judge "
                                       "server's OpenAI-compatible endpoint, e.g. http://localhost:8000/v1\n")


def test_truthfulqa_reference_judge_needs_incorrect_answers_at_start(tmp_path, tiny_checkpoint, toy_world_dir,
                                                                     no_model_load, capsys):
    out = tmp_path / "out"
    code = _main(out, [f"tiny={tiny_checkpoint}"], "--judge", "truthfulqa_reference",
                 benchmark=toy_world_dir / "eval/test.jsonl")
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == ("error: --judge truthfulqa_reference needs incorrect reference answers, which "
                                       "--benchmarks toy does not have; use exact_match, token_f1 or llm\n")


def test_n_bins_zero_is_refused_at_parse_time(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--checkpoints", "x", "--n_bins", "0"])
    assert info.value.code == 2 and "--n_bins" in capsys.readouterr().err


def test_a_second_run_into_the_same_output_dir_stops(tmp_path, tiny_checkpoint, toy_world_dir, no_model_load, capsys):
    from utils.files import output_lock

    out = tmp_path / "out"
    with output_lock(out, "--output_dir"):  # the first run, still going
        code = _main(out, [f"tiny={tiny_checkpoint}"], benchmark=toy_world_dir / "eval/test.jsonl")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --output_dir {out}: another run is writing there (pid ")
    assert not out.exists()


def test_an_output_dir_that_is_a_file_stops_at_start(tmp_path, tiny_checkpoint, toy_world_dir, no_model_load, capsys):
    out = tmp_path / "out"
    out.write_text("a file")
    code = _main(out, [f"tiny={tiny_checkpoint}"], benchmark=toy_world_dir / "eval/test.jsonl")
    assert code == 2 and capsys.readouterr().err == (f"error: --output_dir {out}: a file is there, not a folder; move "
                                                     "it away or choose another --output_dir\n")


def _results(out: Path) -> tuple[list[str], list[str]]:
    keys = list(json.loads((out / "results.json").read_text()))
    return keys, (out / "results.csv").read_text().splitlines()


def test_results_cover_the_rows_of_earlier_runs(tmp_path, tiny_checkpoint, toy_world_dir, toy_tokenizer, capsys):
    other = tmp_path / "other"
    save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, seed=1), toy_tokenizer, other)
    out, toy = tmp_path / "out", toy_world_dir / "eval/test.jsonl"
    assert _main(out, [f"a={tiny_checkpoint}"], benchmark=toy) == 0
    capsys.readouterr()
    assert _main(out, [f"b={other}"], benchmark=toy) == 0
    printed = capsys.readouterr().out
    assert "[step 4] results.* also hold 1 row from earlier runs into " f"{out}: a/toy/zero_shot" in printed
    keys, csv_lines = _results(out)
    assert keys == ["a/toy/zero_shot", "b/toy/zero_shot"]
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["a", "b"]
    assert "| a | toy | zero_shot |" in (out / "results.md").read_text()
    # a rerun of a replaces its row in place
    assert _main(out, [f"a={other}"], benchmark=toy) == 0
    keys, _ = _results(out)
    summaries = json.loads((out / "results.json").read_text())
    assert keys == ["a/toy/zero_shot", "b/toy/zero_shot"] and summaries["a/toy/zero_shot"]["checkpoint"] == str(other)


def test_unreadable_earlier_results_stop_at_start(tmp_path, tiny_checkpoint, toy_world_dir, no_model_load, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"a/toy/zero_shot": ')
    code = _main(out, [f"tiny={tiny_checkpoint}"], benchmark=toy_world_dir / "eval/test.jsonl")
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: --output_dir {out}: {out / 'results.json'}:1: not valid JSON")
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_llm_judge_outage_names_the_endpoint(tmp_path, tiny_checkpoint, toy_world_dir, monkeypatch):
    """Nothing judged: the row stops the run with the judge's reason, which names the endpoint."""
    from test_llm_judge import unreachable_url

    monkeypatch.setenv(KEY_ENV, SECRET)
    url = unreachable_url()
    args = _args(tmp_path, tiny_checkpoint, "--benchmarks", f"toy={toy_world_dir / 'eval/test.jsonl'}",
                 "--judge", "llm", "--judge_base_url", url, "--judge_api_key_env", KEY_ENV,
                 "--judge_max_retries", "0")
    with pytest.raises(UserError) as info:
        run(args)
    assert str(info.value) == (f"no example could be judged (failed after 1 request(s): cannot connect to {url} "
                               "(ConnectError)); see judge_reason in predictions.jsonl and rerun once the judge works "
                               "(generations are cached)")


# --- training-free baselines beside the stated confidence ----------------------------------------------------


def _facts_file(folder: Path) -> Path:
    """Six facts-world questions, two per popularity third."""
    file = folder / "facts.jsonl"
    rows = [{"question": f"What is the capital of {name}?", "answers": [capital], "form": "capital",
             "popularity": popularity, "third": third}
            for name, capital, popularity, third in [("Gox", "Red", 10.0, "low"), ("Ba", "Bear", 20.0, "low"),
                                                     ("Zin", "Blue", 40.0, "mid"), ("Mol", "Tor", 60.0, "mid"),
                                                     ("Kar", "Sel", 80.0, "high"), ("Ul", "Fen", 95.0, "high")]]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file


def test_baselines_score_the_same_answers_and_follow_their_row(tmp_path, tiny_checkpoint, toy_tokenizer):
    from step4_evaluation.answer_logprob import answer_log_probs
    from step4_evaluation.reports import earlier_results
    from utils.collate import encode_prompt
    from utils.model import create_causal_lm
    from utils.prompts import build_prompt

    out = tmp_path / "out"
    summary = next(iter(run(_args(out, tiny_checkpoint, "--benchmarks", f"facts={_facts_file(tmp_path)}",
                                  "--baselines", "answer_logprob", "popularity", "--bootstrap", "20")).values()))
    folder = out / "tiny/facts/zero_shot"
    records = _predictions(folder)
    assert sorted(r["popularity"] for r in records) == [10.0, 20.0, 40.0, 60.0, 80.0, 95.0]
    model = create_causal_lm(str(tiny_checkpoint), toy_tokenizer).eval()
    items = {r["id"]: (encode_prompt(toy_tokenizer, build_prompt(r["question"]), 1024), r["response"], r["answer"])
             for r in records}
    want = answer_log_probs(model, toy_tokenizer, items, batch_size=1, desc="t")
    assert [r["answer_logprob"] for r in records] == [pytest.approx(want[r["id"]], abs=1e-5) for r in records]
    # the same verdicts, another confidence
    baselines = summary["baselines"]
    assert list(baselines) == ["answer_logprob", "popularity"]
    assert all(b["n"] == summary["n"] and b["accuracy"] == summary["accuracy"] for b in baselines.values())
    assert baselines["popularity"]["by_difficulty"]["low"]["mean_confidence"] == pytest.approx(0.15)
    assert baselines["answer_logprob"]["parse_failure_rate"] == sum(r["answer_logprob"] is None
                                                                    for r in records) / len(records)
    for s in (summary, *baselines.values()):
        assert sorted(s["by_difficulty"]) == ["high", "low", "mid"]
        for level in s["by_difficulty"].values():
            assert {"n", "accuracy", "mean_confidence", "auroc", "ece", "brier"} <= set(level)
            assert {"auroc", "ece"} <= set(level["ci"])
    assert all((folder / f"reliability_{name}.png").stat().st_size > 1000 for name in baselines)
    table = (out / "results.md").read_text().splitlines()
    assert [line.split(" | ")[2] for line in table[2:5]] == ["zero_shot", "zero_shot+answer_logprob",
                                                             "zero_shot+popularity"]
    assert len((out / "results.csv").read_text().splitlines()) == 4
    # results.json keeps them inside their row, so a later run still reads it
    assert [row.key for row in earlier_results(out)] == list(json.loads((out / "results.json").read_text()))
    assert list(json.loads((out / "results.json").read_text())) == ["tiny/facts/zero_shot"]


def test_per_difficulty_intervals_only_with_bootstrap():
    from step4_evaluation.reports import summarize_records

    records = [{"confidence": c, "confidence_status": "ok", "correct": y, "difficulty": d}
               for c, y, d in [(0.9, 1, "easy"), (0.2, 0, "easy"), (0.6, 1, "easy"), (0.5, 0, "hard"),
                               (0.4, 1, "hard")]]
    for bootstrap, has_ci in (("0", False), ("50", True)):
        metrics = run_settings(build_parser().parse_args(["--checkpoints", "x", "--bootstrap", bootstrap])).metrics
        easy = summarize_records(records, metrics)["by_difficulty"]["easy"]
        assert ("ci" in easy) is has_ci
        assert easy["ece"] == pytest.approx((0.1 + 0.2 + 0.4) / 3) and easy["brier"] == pytest.approx(0.07)
        assert easy["n"] == 3 and easy["accuracy"] == pytest.approx(2 / 3) and easy["auroc"] == 1.0
    low, high = easy["ci"]["auroc"]
    assert 0.0 <= low <= high <= 1.0 and set(easy["ci"]) >= {"auroc", "ece"}


def test_popularity_baseline_is_skipped_with_a_note_where_questions_carry_none(tmp_path, tiny_checkpoint,
                                                                             toy_world_dir, capsys):
    out = tmp_path / "out"
    summary = next(iter(run(_args(out, tiny_checkpoint, "--benchmarks", f"toy={toy_world_dir / 'eval/test.jsonl'}",
                                  "--baselines", "popularity")).values()))
    printed = capsys.readouterr().out
    assert ("[step 4] --baselines popularity: skipped on toy, whose questions carry no popularity percentile "
            "(the facts world's do)\n") in printed
    assert summary["baselines"] == {} and "+popularity" not in (out / "results.md").read_text()
    assert not (out / "tiny/toy/zero_shot/reliability_popularity.png").exists()


# --- a dev split: recalibration and τ fitted on held-out questions ------------------------------------------


def test_recalibrate_without_a_dev_split_stops_at_start(tmp_path, tiny_checkpoint, toy_world_dir, no_model_load,
                                                        capsys):
    out = tmp_path / "out"
    code = _main(out, [f"tiny={tiny_checkpoint}"], "--recalibrate", "isotonic",
                 benchmark=toy_world_dir / "eval/test.jsonl")
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == ("error: --recalibrate isotonic is fitted on held-out questions: give "
                                       "--dev_fraction > 0 (e.g. 0.3), or drop --recalibrate\n")


def _predictions(folder: Path, name: str = "predictions.jsonl") -> list[dict]:
    return read_jsonl(folder / name)


def test_a_dev_split_reports_test_only_and_recalibrates_on_dev(tmp_path, tiny_checkpoint, toy_world_dir):
    from step4_evaluation.retrieval import threshold_sweep

    common = ("--benchmarks", f"toy={toy_world_dir / 'eval/test.jsonl'}", "--methods", "zero_shot", "vanilla",
              "--retrieval_corpus", str(toy_world_dir / "corpus.jsonl"), "--bootstrap", "20")
    plain = run(_args(tmp_path / "plain", tiny_checkpoint, *common))
    split = run(_args(tmp_path / "split", tiny_checkpoint, *common, "--dev_fraction", "0.5", "--recalibrate",
                      "isotonic"))
    sides = {}
    for row, summary in split.items():
        folder = tmp_path / "split" / row.checkpoint / row.benchmark / row.method
        records = _predictions(folder)
        sides[row.method] = {r["id"]: r["split"] for r in records}
        test = [r for r in records if r["split"] == "test"]
        assert len(test) == 3 and summary["n"] + summary["judge_failures"] == 3  # metrics over test only
        assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in test) / 3)
        assert summary["dev"]["n"] == 3 and summary["recalibration"]["method"] == "isotonic"
        assert summary["recalibration"]["fitted_on"] == 3 and set(summary["ci_recalibrated"]) == {"ece", "brier",
                                                                                                   "auroc"}
        retrieval = json.loads((folder / "retrieval.json").read_text())
        rag = {r["id"]: r["correct"] for r in _predictions(folder, "predictions_rag.jsonl")}
        assert retrieval == summary["retrieval"] and retrieval["sweep"] == threshold_sweep(
            [r["confidence"] or 0.0 for r in test], [r["correct"] for r in test], [rag[r["id"]] for r in test])
        assert retrieval["tau_dev"]["n_test"] == 3 and "test_accuracy" in retrieval["tau_dev"]["ci"]
    assert sides["zero_shot"] == sides["vanilla"]  # one dev set per benchmark, whatever the method
    new = {"dev", "ece_recalibrated", "brier_recalibrated", "auroc_recalibrated", "ci_recalibrated", "recalibration"}
    for (row, before), after in zip(plain.items(), split.values()):
        assert set(after) - set(before) == new and set(before) <= set(after)  # the default run has none of them
        assert isinstance(before["retrieval"], list)  # and its retrieval.json stays a bare sweep
        assert all("split" not in r for r in _predictions(tmp_path / "plain" / row.checkpoint / row.benchmark /
                                                          row.method))
    assert "ece_recalibrated" in (tmp_path / "split/results.md").read_text().splitlines()[0]
    assert "ece_recalibrated" not in (tmp_path / "plain/results.md").read_text()
