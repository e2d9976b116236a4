"""The training-free baselines of step 4: the answer's tokens scored (and only them), padding that changes
nothing, the popularity baseline."""
from __future__ import annotations

import math

import pytest
import torch

from step4_evaluation.answer_logprob import (answer_log_probs, answer_span, baseline_confidence, carries_popularity,
                                             with_baseline)
from step4_evaluation.prompting import get_method
from utils.collate import encode_prompt
from utils.prompts import build_prompt
from worlds.toy_world import create_tiny_llama


@pytest.mark.parametrize("method, response, span", [
    ("zero_shot", " red\n### Confidence: 0.9", " red"),
    ("zero_shot", " red", " red"),  # no tag: the whole response
    ("zero_shot", " red ### Confid", " red"),  # a tag cut by the length limit
    ("vanilla", " ### Answer: red\n### Confidence: 0.9", " red"),  # a restated tag is context
    ("cot", " Gox flies red.\n### Answer: red\n### Confidence: 0.8", " red"),  # the explanation is context
    ("topk", " blue\n### Confidence 1: 0.2\n### Answer 2: red\n### Confidence 2: 0.7", " red"),  # the chosen guess
])
def test_the_span_is_the_parsed_answer_without_the_confidence_tag(method, response, span):
    answer = get_method(method).parse(response).answer
    start, end = answer_span(response, answer)
    assert response[start:end] == span
    assert response[:start].rstrip().endswith(":") or start == 0  # nothing of the answer left in the context


@pytest.mark.parametrize("response, answer", [(" ### Confidence: 0.9", ""), (" red", "blue")])
def test_no_answer_no_span(response, answer):
    assert answer_span(response, answer) is None


@pytest.fixture(scope="module")
def tiny_model(toy_tokenizer):
    return create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=2).eval()


def _by_hand(model, tokenizer, prompt_ids: list[int], answer_text: str) -> float:
    """Mean log P of the answer's tokens after the prompt, one unpadded sequence."""
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids
    with torch.no_grad():
        log_probs = model(input_ids=torch.tensor([ids])).logits.log_softmax(-1)[0]
    return float(sum(log_probs[len(prompt_ids) + i - 1, t] for i, t in enumerate(answer_ids)) / len(answer_ids))


def test_mean_answer_log_prob_by_hand_alone_and_in_a_padded_batch(tiny_model, toy_tokenizer):
    def prompt(question: str) -> list[int]:
        return encode_prompt(toy_tokenizer, build_prompt(question), 128)

    items = {"short": (prompt("What color is the flag of Gox?"), " red\n### Confidence: 0.9", "red"),
             "long": (prompt("Which animal is the emblem of the far northern republic of Ba, by the sea?"),
                      " a big brown bear ### Confidence: 0.2", "a big brown bear"),
             "empty": (prompt("Who?"), " ### Confidence: 0.5", "")}
    alone = answer_log_probs(tiny_model, toy_tokenizer, {"short": items["short"]}, batch_size=4, desc="t")
    batch = answer_log_probs(tiny_model, toy_tokenizer, items, batch_size=4, desc="t")
    want = _by_hand(tiny_model, toy_tokenizer, items["short"][0], " red")
    assert alone["short"] == pytest.approx(want, abs=1e-5) and batch["short"] == pytest.approx(want, abs=1e-5)
    assert batch["long"] == pytest.approx(_by_hand(tiny_model, toy_tokenizer, items["long"][0], " a big brown bear"),
                                          abs=1e-5)
    assert batch["empty"] is None and list(batch) == list(items)


def test_confidences_of_the_baselines():
    records = [{"answer_logprob": -0.5, "popularity": 62.5, "confidence": 0.9}, {"answer_logprob": None,
                                                                                  "popularity": 0, "confidence": 0.9}]
    assert baseline_confidence("popularity", records[0]) == pytest.approx(0.625)
    assert [r["confidence"] for r in with_baseline(records, "answer_logprob")] == [pytest.approx(math.exp(-0.5)), None]
    assert [r["confidence"] for r in with_baseline(records, "popularity")] == [pytest.approx(0.625), 0.0]
    assert records[0]["confidence"] == 0.9  # the records themselves keep the stated confidence


@pytest.mark.parametrize("popularities, carried", [([0, 50.5, 100], True), ([50, None], False), ([50, 101], False)])
def test_popularity_carried_only_when_every_question_has_a_percentile(popularities, carried):
    assert carries_popularity([{"popularity": p} for p in popularities]) is carried
    assert not carries_popularity([{"question": "no popularity key"}])
