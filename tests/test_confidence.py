"""utils.confidence: the one confidence parser, answer extraction and the token cut of the confidence span."""
from __future__ import annotations

import pytest

from utils.confidence import (MISSING_CONFIDENCE, ParsedConfidence, answer_line_end_index, confidence_cut_index,
                              count_statuses, extract_answer, parse_confidence, parse_failure_rate,
                              resolve_confidence)


@pytest.mark.parametrize("text, value, status", [
    (" red\n### Confidence: 0.9", 0.9, "ok"),
    (" red\n### Confidence: .9", 0.9, "ok"),
    (" red\n### Confidence: 1", 1.0, "ok"),
    (" red\n### Confidence: 1.0.", 1.0, "ok"),          # trailing full stop ignored
    (" red\n### Confidence: 90%", 0.9, "ok"),           # percent divided by 100
    (" red\n### Confidence: 0%", 0.0, "ok"),
    (" red\n### Confidence: 0", 0.0, "ok"),
    (" red\n### Confidence: 150%", 1.0, "clamped"),
    (" red\n### Confidence: 1.7", 1.0, "clamped"),
    (" red\n### Confidence: 0.75</s>", 0.75, "ok"),
    (" red\n### confidence : 0.3", 0.3, "ok"),          # case and spaces
    (" red\n###Confidence:0.4", 0.4, "ok"),
    (" red\n### CONFIDENCE: 0.2", 0.2, "ok"),
])
def test_parse_values(text, value, status):
    parsed = parse_confidence(text)
    assert parsed.status == status
    assert parsed.value == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("text, status", [
    (" red\n### Confidence:", "malformed"),
    (" red\n### Confidence: high", "malformed"),
    (" red\n### Confidence: ", "malformed"),
    (" red", "missing"),
    ("", "missing"),
    (" red\nConfidence 0.9", "missing"),  # no ### tag
])
def test_parse_failures(text, status):
    parsed = parse_confidence(text)
    assert parsed == ParsedConfidence(None, status)


def test_first_tag_wins():
    assert parse_confidence(" red\n### Confidence: 0.2\n### Confidence: 0.8").value == pytest.approx(0.2)
    # the first tag is malformed: it is not skipped in favour of the later number
    assert parse_confidence(" red\n### Confidence: ?\n### Confidence: 0.8").status == "malformed"


def test_resolve_confidence_default_and_custom():
    assert MISSING_CONFIDENCE == 0.0
    missing, malformed = ParsedConfidence(None, "missing"), ParsedConfidence(None, "malformed")
    assert resolve_confidence(missing) == 0.0
    assert resolve_confidence(malformed) == 0.0
    assert resolve_confidence(missing, 0.7) == 0.7
    assert resolve_confidence(malformed, 1.0) == 1.0
    assert resolve_confidence(ParsedConfidence(0.4, "ok"), 0.7) == 0.4
    assert resolve_confidence(ParsedConfidence(0.0, "ok"), 0.7) == 0.0  # a stated zero is not "missing"
    assert resolve_confidence(ParsedConfidence(1.0, "clamped"), 0.0) == 1.0


def test_count_statuses_and_failure_rate():
    texts = ["### Confidence: 0.5", "### Confidence: 2", "no tag", "### Confidence:", "### Confidence: 0.1"]
    parsed = [parse_confidence(t) for t in texts]
    assert count_statuses(parsed) == {"ok": 2, "clamped": 1, "missing": 1, "malformed": 1}
    assert parse_failure_rate(parsed) == pytest.approx(2 / 5)
    assert count_statuses([]) == {"ok": 0, "clamped": 0, "missing": 0, "malformed": 0}
    assert parse_failure_rate([]) == 0.0
    assert parse_failure_rate(parsed[:2]) == 0.0  # clamped is a parse success


@pytest.mark.parametrize("text, answer", [
    (" red\n### Confidence: 0.8", "red"),
    ("  The capital is Firi  \n### Confidence: 0.8", "The capital is Firi"),
    (" Firi\n### Question: What is the capital of Zo?\n### Answer: Bo", "Firi"),
    (" lion ### Confidence: 1", "lion"),
    (" blue eagle\n", "blue eagle"),
    ("\n### Confidence: 0.5", ""),
    ("", ""),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("answer", [" red", " Firi", " The flag of Firi is red.", " gold"])
def test_cut_index_keeps_exactly_the_answer(toy_tokenizer, answer):
    text = f"{answer}\n### Confidence: 0.8</s>"
    ids = toy_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert toy_tokenizer.eos_token_id in ids  # "</s>" became the EOS token
    cut = confidence_cut_index(ids, toy_tokenizer)
    assert 0 < cut < len(ids)
    assert toy_tokenizer.decode(ids[:cut]) == answer
    # the kept prefix is the shortest one: one token fewer loses part of the answer
    assert toy_tokenizer.decode(ids[:cut - 1]) != answer


def test_cut_index_without_tag_keeps_everything(toy_tokenizer):
    ids = toy_tokenizer(" red</s>", add_special_tokens=False)["input_ids"]
    assert confidence_cut_index(ids, toy_tokenizer) == len(ids)
    ids = toy_tokenizer(" red", add_special_tokens=False)["input_ids"]
    assert confidence_cut_index(ids, toy_tokenizer) == len(ids)


@pytest.mark.parametrize("answer, rest", [(" black", "\n4</s>"), (" black", "\n\n### Answer: red</s>"),
                                          ("\n black", "\nConfidence 0.4</s>")])
def test_answer_line_end_is_where_a_tagless_response_leaves_the_format(toy_tokenizer, answer, rest):
    ids = toy_tokenizer(answer + rest, add_special_tokens=False)["input_ids"]
    end = answer_line_end_index(ids, toy_tokenizer)
    assert toy_tokenizer.decode(ids[:end]) == answer
    assert toy_tokenizer.decode(ids[:end - 1]) != answer


def test_answer_line_end_of_a_one_line_response_is_its_length(toy_tokenizer):
    for text in (" red</s>", " red", ""):
        ids = toy_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert answer_line_end_index(ids, toy_tokenizer) == len(ids)


def test_cut_index_empty_answer(toy_tokenizer):
    ids = toy_tokenizer("\n### Confidence: 0.5</s>", add_special_tokens=False)["input_ids"]
    assert confidence_cut_index(ids, toy_tokenizer) == 0
    ids = toy_tokenizer("### Confidence: 0.5</s>", add_special_tokens=False)["input_ids"]
    assert confidence_cut_index(ids, toy_tokenizer) == 0
    assert confidence_cut_index([], toy_tokenizer) == 0
