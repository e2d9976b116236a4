"""The expected confidence readout: the right tokens scored, batching that changes nothing, and step 4 using it
on the answers' stated confidences only."""
from __future__ import annotations

import json

import pytest
import torch

from step4_evaluation.benchmarks import load_benchmark
from step4_evaluation.confidence_readout import (CONFIDENCE_GRID, candidates, expected_confidence,
                                                 grid_log_probs)
from step4_evaluation.evaluate import build_parser, run, run_settings
from step4_evaluation.generation import generation_source
from utils.collate import encode_prompt
from utils.confidence import confidence_value_start
from utils.model import create_causal_lm, save_hf_checkpoint
from utils.prompts import build_prompt
from worlds.toy_world import create_tiny_llama


@pytest.mark.parametrize("text, value", [(" blue\n### Confidence: 0.6", "0.6"), (" x\n### Confidence:.9", ".9"),
                                         (" x ### confidence: 85%", "85%")])
def test_value_start_is_where_the_number_begins(text, value):
    assert text[confidence_value_start(text):] == value


@pytest.mark.parametrize("text", [" blue", " blue\n### Confidence: high", ""])
def test_no_number_no_value_start(text):
    assert confidence_value_start(text) is None


def test_expected_confidence_is_the_mean_over_the_grid():
    assert expected_confidence([0.0] * 6 + [1.0] + [0.0] * 4) == pytest.approx(0.6)
    assert expected_confidence([0.5] + [0.0] * 9 + [0.5]) == pytest.approx(0.5)


def test_candidates_share_the_context_and_differ_in_the_value(toy_tokenizer):
    prompt_ids = encode_prompt(toy_tokenizer, build_prompt("What color is the flag of Gox?"), 128)
    item = candidates(toy_tokenizer, prompt_ids, " blue\n### Confidence: ")
    assert len(item.ids) == len(CONFIDENCE_GRID) and item.ids[0][:len(prompt_ids)] == prompt_ids
    assert item.shared > len(prompt_ids)  # the answer and the tag are context too
    for value, ids in zip(CONFIDENCE_GRID, item.ids):
        assert toy_tokenizer.decode(ids[len(prompt_ids):]) == f" blue\n### Confidence: {value:.1f}"


@pytest.fixture(scope="module")
def tiny_model(toy_tokenizer):
    torch.manual_seed(0)
    return create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=2).eval()


def _sequence_log_prob(model, ids: list[int]) -> float:
    """log P of a whole unpadded sequence after its first token."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits.log_softmax(-1)[0]
    return float(sum(logits[t - 1, ids[t]] for t in range(1, len(ids))))


def test_batched_left_padded_scores_match_whole_sequences_one_by_one(tiny_model, toy_tokenizer):
    """The candidates' shared context cancels in the normalisation, so the grid distribution equals the softmax
    of the whole sequences' log-probabilities computed without padding, for prompts of different lengths."""
    items = [candidates(toy_tokenizer, encode_prompt(toy_tokenizer, build_prompt(q), 128), stem)
             for q, stem in [("What color is the flag of Gox?", " blue\n### Confidence: "),
                             ("Which animal is the emblem of the far northern republic of Ba?", " a bear\n### Confidence:")]]
    got = grid_log_probs(tiny_model, items, toy_tokenizer.pad_token_id).softmax(dim=1)
    for row, item in zip(got, items):
        want = torch.tensor([_sequence_log_prob(tiny_model, ids) for ids in item.ids]).softmax(dim=0)
        assert torch.allclose(row, want, atol=1e-5)
        assert row.sum().item() == pytest.approx(1.0)


def test_step4_expected_readout_replaces_stated_numbers_only(tmp_path, toy_world_dir, toy_tokenizer):
    checkpoint = tmp_path / "ckpt"
    save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1), toy_tokenizer, checkpoint)
    args = build_parser().parse_args(["--checkpoints", f"tiny={checkpoint}", "--output_dir", str(tmp_path / "out"),
                                      "--benchmarks", f"toy={toy_world_dir / 'eval/test.jsonl'}", "--max_examples",
                                      "3", "--max_new_tokens", "6", "--bootstrap", "0", "--confidence_readout",
                                      "expected"])
    # a random model states nothing: the cached generations say what it "answered"
    chosen = load_benchmark("toy", str(toy_world_dir / "eval/test.jsonl"), 3, args.seed)
    responses = [" red\n### Confidence: 0.9", " red\n### Confidence: 0.1", " red"]
    folder = tmp_path / "out/tiny/toy/zero_shot"
    folder.mkdir(parents=True)
    source = generation_source(str(checkpoint), run_settings(args).decoding)
    (folder / "generations.jsonl").write_text("".join(
        json.dumps({"id": q["id"], "prompt": build_prompt(q["question"]), "response": r, "source": source}) + "\n"
        for q, r in zip(chosen, responses)))
    summary = next(iter(run(args).values()))
    records = {r["id"]: r for r in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}
    stated = [records[q["id"]] for q in chosen]
    assert [r["stated_confidence"] for r in stated] == [0.9, 0.1, None]
    for record in stated[:2]:
        assert record["confidence"] == pytest.approx(expected_confidence(record["confidence_distribution"]))
    model = create_causal_lm(str(checkpoint), toy_tokenizer).eval()
    item = candidates(toy_tokenizer, encode_prompt(toy_tokenizer, build_prompt(chosen[0]["question"]), 1024),
                      " red\n### Confidence: ")
    want = grid_log_probs(model, [item], toy_tokenizer.pad_token_id).softmax(dim=1)[0]
    assert stated[0]["confidence_distribution"] == pytest.approx(want.tolist(), abs=1e-6)
    assert stated[2]["confidence"] is None and stated[2]["confidence_distribution"] is None
    assert summary["confidence_readout"] == "expected" and summary["parse_failure_rate"] == pytest.approx(1 / 3)
    assert set(summary["stated_readout"]) == {"ece", "auroc"}
    cache = folder / "confidence_distributions.jsonl"
    assert len(cache.read_text().splitlines()) == 2
    run(args)
    assert len(cache.read_text().splitlines()) == 2  # a rerun reads the cache
