"""step4_evaluation.prompting: prompt texts, chat-template wrapping, evidence blocks and response parsing."""
from __future__ import annotations

import copy

import pytest

from step4_evaluation.prompting import (INSTRUCTION, METHODS, CoT, ParsedResponse, TopK, Vanilla, ZeroShot,
                                        evidence_block, evidence_list_block, get_method)
from utils.confidence import ParsedConfidence, parse_confidence
from utils.prompts import build_prompt, format_response

Q = "What is the capital of France?"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
OK = lambda v: ParsedConfidence(v, "ok")  # noqa: E731
MISSING = ParsedConfidence(None, "missing")


@pytest.fixture(scope="module")
def chat_tokenizer(toy_tokenizer):
    tok = copy.deepcopy(toy_tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_registry_and_get_method():
    assert list(METHODS) == ["zero_shot", "vanilla", "topk", "cot"]
    assert isinstance(get_method("zero_shot"), ZeroShot) and isinstance(get_method("vanilla"), Vanilla)
    assert isinstance(get_method("cot"), CoT)
    assert get_method("topk").k == 2 and get_method("top-k", k=3).k == 3
    with pytest.raises(ValueError) as err:
        get_method("self_consistency")
    for name in METHODS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="k"):
        TopK(0)


# --------------------------------------------------------------------------------------------- build
def test_zero_shot_is_the_training_format(toy_tokenizer, chat_tokenizer):
    method = get_method("zero_shot")
    assert method.build(Q) == "### Question: What is the capital of France?\n### Answer:"
    assert method.build(f"  {Q} ") == build_prompt(Q)
    # never chat-templated: it is the fine-tuning format
    assert method.build(Q, chat_tokenizer) == method.build(Q, toy_tokenizer) == build_prompt(Q)
    assert not method.uses_chat_template(chat_tokenizer)
    assert method.build(Q, evidence=["Paris is the capital of France.", "France is in Europe."]) == (
        "### Retrieved Evidences: Paris is the capital of France. | France is in Europe.\n"
        "### Question: What is the capital of France?\n### Answer:")
    assert method.build(Q, evidence=[]) == build_prompt(Q)


def test_vanilla_prompt():
    prompt = get_method("vanilla").build(Q)
    assert prompt.startswith(INSTRUCTION + "\n\n### Question: ")
    assert INSTRUCTION == ("Please provide the answer and the Confidence (0.0 to 1.0) that the answer is truthful "
                           "and informative for the Question.")
    assert prompt.endswith("\n\n### Question: What is the capital of France?\n\n### Answer:")
    assert "### Confidence: 0.9.\n\n" in prompt and "### Confidence: 0.2.\n\n" in prompt
    assert prompt.index("### Confidence: 0.9.") < prompt.index("### Confidence: 0.2.")
    assert prompt.count("### Question:") == 3 and prompt.count("### Answer:") == 3
    assert "\n### Answer:" not in prompt.replace("\n\n### Answer:", "")  # blocks separated by blank lines


def test_topk_prompt():
    prompt = get_method("topk").build(Q)
    assert "2 best guesses" in prompt
    assert prompt.endswith("\n\n### Question: What is the capital of France?\n\n### Answer 1:")
    assert prompt.count("### Answer 2:") == 2 and prompt.count("### Confidence 2:") == 2
    assert "### Answer 3:" not in prompt
    three = get_method("topk", k=3).build(Q)
    assert "3 best guesses" in three and three.count("### Confidence 3:") == 2


def test_cot_prompt():
    prompt = get_method("cot").build(Q)
    assert prompt.startswith(INSTRUCTION + " Let's think it step by step.\n\n")
    assert prompt.endswith("\n\n### Question: What is the capital of France?\n\n### Explanation:")
    demo = prompt.split("### Question:")[1]
    assert demo.index("### Explanation:") < demo.index("### Answer:") < demo.index("### Confidence:")


@pytest.mark.parametrize("name", ["vanilla", "topk", "cot"])
def test_few_shot_evidence_before_query(name):
    prompt = get_method(name).build(Q, evidence=["Paris is the capital\nof France.", "France is in Europe."])
    block = "### Retrieved Evidences:\n- Paris is the capital of France.\n- France is in Europe.\n\n"
    assert block + "### Question: What is the capital of France?\n\n" in prompt
    assert prompt.count("### Retrieved Evidences:") == 1
    assert prompt.index(block) > prompt.index("### Confidence")  # after the demonstrations
    assert get_method(name).build(Q, evidence=None) == get_method(name).build(Q, evidence=[])


@pytest.mark.parametrize("name", ["vanilla", "topk", "cot"])
def test_chat_template_wrapping(name, toy_tokenizer, chat_tokenizer):
    method = get_method(name)
    raw = method.build(Q)
    assert not getattr(toy_tokenizer, "chat_template", None)
    assert method.build(Q, toy_tokenizer) == raw  # no template: the raw text
    wrapped = method.build(Q, chat_tokenizer)
    assert wrapped == f"<|user|>\n{raw}\n<|assistant|>\n"
    assert method.uses_chat_template(chat_tokenizer) and not method.uses_chat_template(toy_tokenizer)
    assert method.uses_chat_template(None) is False


# --------------------------------------------------------------------------------------------- parse
def test_zero_shot_parse_matches_training():
    response = format_response("Paris", 0.7)  # " Paris\n### Confidence: 0.7"
    assert get_method("zero_shot").parse(response) == ParsedResponse("Paris", OK(0.7), [("Paris", OK(0.7))])
    assert get_method("zero_shot").parse(" Paris") == ParsedResponse("Paris", MISSING, [("Paris", MISSING)])


def test_vanilla_parse():
    parsed = get_method("vanilla").parse("Paris\n\n### Confidence: 0.9.")
    assert (parsed.answer, parsed.confidence) == ("Paris", OK(0.9))
    # a chat model restating the answer tag; a new question block the model starts on its own is ignored
    parsed = get_method("vanilla").parse("### Answer: Lyon\n\n### Question: Next?\n\n### Confidence: 0.8")
    assert (parsed.answer, parsed.confidence) == ("Lyon", MISSING)
    assert get_method("vanilla").parse(" Paris\n\n### Confidence: high").confidence.status == "malformed"


def test_topk_picks_the_most_confident_candidate():
    response = " Lyon\n\n### Confidence 1: 0.4.\n\n### Answer 2: Paris\n\n### Confidence 2: 0.8."
    parsed = get_method("topk").parse(response)
    assert parsed.candidates == [("Lyon", OK(0.4)), ("Paris", OK(0.8))]
    assert (parsed.answer, parsed.confidence) == ("Paris", OK(0.8))
    # the same through the one parser, on the sliced text
    assert parse_confidence("x\n### Confidence: 0.8.") == parsed.confidence


def test_topk_missing_confidence_tie_single_and_chat_reply():
    topk = get_method("topk")
    parsed = topk.parse(" Lyon\n\n### Answer 2: Paris\n\n### Confidence 2: 0.3")
    assert parsed.candidates == [("Lyon", MISSING), ("Paris", OK(0.3))]
    assert parsed.answer == "Paris"  # a stated confidence beats a missing one
    tie = topk.parse(" A\n### Confidence 1: 0.5\n### Answer 2: B\n### Confidence 2: 0.5")
    assert tie.answer == "A"  # ties: the first
    single = topk.parse(" Paris\n\n### Confidence 1: 60%")
    assert single.candidates == [("Paris", OK(0.6))] and single.answer == "Paris"
    # a chat reply that writes the first tag itself, then runs into a new question
    chat = topk.parse("### Answer 1: Rome\n### Confidence 1: 0.1\n### Answer 2: Milan\n### Confidence 2: 0.2\n"
                      "### Question: Other?\n### Answer 1: X\n### Confidence 1: 1.0")
    assert chat.candidates == [("Rome", OK(0.1)), ("Milan", OK(0.2))] and chat.answer == "Milan"
    none = topk.parse(" A\n### Answer 2: B")
    assert (none.answer, none.confidence) == ("A", MISSING)  # no confidence at all: the first


def test_cot_parse():
    cot = get_method("cot")
    response = (" The Eiffel Tower stands in the capital, which is Paris.\n\n### Answer: Paris\n\n"
                "### Confidence: 0.9.")
    parsed = cot.parse(response)
    assert (parsed.answer, parsed.confidence) == ("Paris", OK(0.9))
    no_answer = cot.parse(" I think it is Paris.\n\n### Confidence: 0.6")
    assert no_answer.answer == "" and no_answer.confidence == OK(0.6)


@pytest.mark.parametrize("name", list(METHODS))
def test_garbage_response(name):
    parsed = get_method(name).parse("I don't know, maybe something")
    assert parsed.confidence == MISSING
    assert parsed.answer == ("" if name == "cot" else "I don't know, maybe something")


# --------------------------------------------------------------------------------------------- evidence
def test_evidence_blocks_put_each_passage_on_one_line():
    passages = ["The flag of Brazu is red.", "The capital of Brazu is Kelth."]
    block = evidence_block(passages)
    assert block == "### Retrieved Evidences: The flag of Brazu is red. | The capital of Brazu is Kelth.\n"
    assert evidence_list_block(passages) == ("### Retrieved Evidences:\n- The flag of Brazu is red.\n"
                                             "- The capital of Brazu is Kelth.\n\n")
    # one line whatever the passages hold
    messy = evidence_block(["a\nb  c", "x | y", "  "])
    assert messy == "### Retrieved Evidences: a b c | x / y\n"
    assert evidence_list_block(["a\nb  c", "  "]) == "### Retrieved Evidences:\n- a b c\n\n"
    assert evidence_block([]) == evidence_block(None) == evidence_list_block([]) == ""


def test_zero_shot_evidence_is_the_toy_world_training_form(toy_world_dir):
    """The toy world's reading rows (SFT prompts with evidence) are exactly what zero_shot builds."""
    import json

    from utils import prompts

    assert evidence_block(["a.", "b."]) == prompts.evidence_block(["a.", "b."])
    rows = [json.loads(line) for line in (toy_world_dir / "step1_sft" / "train.jsonl").read_text().splitlines()]
    with_evidence = [r["prompt"] for r in rows if r["prompt"].startswith(prompts.EVIDENCE_TAG)]
    if not with_evidence:
        pytest.skip("this toy world has no evidence rows")
    for prompt in with_evidence[:20]:
        passages = prompt.split("\n", 1)[0].removeprefix(prompts.EVIDENCE_TAG).strip().split(" | ")  # one-line form
        question = prompt.split("### Question: ", 1)[1].split("\n", 1)[0]
        assert len(passages) >= 1 and get_method("zero_shot").build(question, evidence=passages) == prompt
