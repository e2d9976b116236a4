"""The paper's prompting methods for stating a confidence: zero-shot, Vanilla, Top-k and CoT.

Each method is an object with ``build(question, tokenizer=None, evidence=None) -> str`` (the text the
model continues) and ``parse(response) -> ParsedResponse`` (the generated continuation only, without
the prompt). Confidences are always parsed by :mod:`utils.confidence` (the one parser).

* ``zero_shot``: exactly the fine-tuning format of :func:`utils.prompts.build_prompt`
  (``### Question: q\\n### Answer:``; the model continues `` answer\\n### Confidence: 0.x``). Never
  chat-templated: it is the format the checkpoints of steps 1-3 and the toy world were trained on.
* ``vanilla``: the paper's few-shot confidence prompt (an instruction, two demonstrations at
  confidence 0.9 and 0.2, then the query), blocks separated by blank lines.
* ``topk`` (Top-k, k=2 by default): the k best guesses, each with its confidence; the answer is the
  candidate with the highest stated confidence (ties: the first).
* ``cot``: the Vanilla prompt plus "Let's think it step by step." and an ``### Explanation:`` field
  before the answer.

Except for zero_shot, a tokenizer with a chat template gets the prompt as one user message (with the
generation prompt); the caller should then tokenize it with ``add_special_tokens=False`` (see
:meth:`PromptMethod.uses_chat_template`), since the template writes its own special tokens.

Evidence (adaptive retrieval) comes in two forms: the single line :func:`evidence_block`
(``### Retrieved Evidences: p1 | p2\\n``) put before the zero-shot prompt, which the toy world teaches,
and the list :func:`evidence_list_block` (``### Retrieved Evidences:\\n- p1\\n- p2\\n\\n``) put before
the query question of the few-shot prompts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from utils.confidence import ParsedConfidence, extract_answer, parse_confidence
from utils.prompts import ANSWER_TAG, CONFIDENCE_TAG, EVIDENCE_TAG, QUESTION_TAG, build_prompt
from utils.prompts import evidence_block  # noqa: F401  (re-exported: the zero-shot evidence form)

EXPLANATION_TAG = "### Explanation:"

INSTRUCTION = ("Please provide the answer and the Confidence (0.0 to 1.0) that the answer is truthful and "
               "informative for the Question.")
COT_INSTRUCTION = INSTRUCTION + " Let's think it step by step."

# The paper's Vanilla prompt has two demonstrations stated at confidence 0.9 and 0.2; the authors'
# demonstration texts are not available, so these two are our own: a well-known fact (0.9) and an
# obscure one (0.2). Each has up to MAX_TOPK guesses (for Top-k) and an explanation (for CoT).
@dataclass(frozen=True)
class Demonstration:
    question: str
    guesses: tuple[tuple[str, float], ...]  # best first; the first is the Vanilla/CoT answer
    explanation: str


DEMONSTRATIONS = (
    Demonstration(
        question="What is the largest planet in the Solar System?",
        guesses=(("Jupiter", 0.9), ("Saturn", 0.1), ("Neptune", 0.0), ("Uranus", 0.0), ("Earth", 0.0)),
        explanation="Jupiter is a gas giant whose mass is more than twice that of all the other planets "
                    "combined, and no other planet has a larger diameter."),
    Demonstration(
        question="Which river flows through the French town of Tarbes?",
        guesses=(("The Adour", 0.2), ("The Garonne", 0.1), ("The Gave de Pau", 0.1), ("The Arros", 0.1),
                 ("The Echez", 0.1)),
        explanation="Tarbes lies in the foothills of the Pyrenees, where several rivers run north; the Adour "
                    "rises nearby, but I am not sure it is the one that crosses the town."),
)
MAX_TOPK = min(len(d.guesses) for d in DEMONSTRATIONS)

_WS_RE = re.compile(r"\s+")
_QUESTION_RE = re.compile(r"#+\s*Question\s*:?", re.IGNORECASE)
_ANSWER_RE = re.compile(r"#+\s*Answer\s*:", re.IGNORECASE)
# "### Answer 1:" (also "### Answer:", read as the next candidate) and "### Confidence 1:".
ANSWER_TAG_RE = re.compile(r"#+\s*Answer\s*(?:\d+\s*:?|:)", re.IGNORECASE)
_NUMBERED_CONFIDENCE_RE = re.compile(r"#+\s*Confidence\s*\d+\s*:?", re.IGNORECASE)


@dataclass
class ParsedResponse:
    answer: str
    confidence: ParsedConfidence
    candidates: list[tuple[str, ParsedConfidence]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- evidence
def _one_line(passage: str) -> str:
    return _WS_RE.sub(" ", str(passage)).strip()


def evidence_list_block(passages: Sequence[str] | None) -> str:
    """The evidence block of the few-shot prompts: ``"### Retrieved Evidences:\\n- p1\\n- p2\\n\\n"``
    (each passage on one line); ``""`` without passages."""
    cleaned = [p for p in (_one_line(p) for p in passages or ()) if p]
    if not cleaned:
        return ""
    return EVIDENCE_TAG + "\n" + "".join(f"- {p}\n" for p in cleaned) + "\n"


# --------------------------------------------------------------------------------------------- methods
def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _before_next_question(response: str) -> str:
    """The response up to a new ``### Question`` block the model may start on its own."""
    match = _QUESTION_RE.search(response)
    return response if match is None else response[: match.start()]


def _answer_and_confidence(text: str) -> tuple[str, ParsedConfidence]:
    return extract_answer(text), parse_confidence(text)


class PromptMethod:
    """One prompting method: :meth:`build` the prompt, :meth:`parse` the model's continuation."""

    name: str = ""
    chat: bool = True  # wrap in the tokenizer's chat template when it has one
    stop_strings: tuple[str, ...] = (QUESTION_TAG,)  # generation may stop at a new question block

    def text(self, question: str, evidence: Sequence[str] | None = None) -> str:
        raise NotImplementedError

    def uses_chat_template(self, tokenizer=None) -> bool:
        return self.chat and has_chat_template(tokenizer)

    def build(self, question: str, tokenizer=None, evidence: Sequence[str] | None = None) -> str:
        prompt = self.text(question, evidence)
        if self.uses_chat_template(tokenizer):
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
        return prompt

    def parse(self, response: str) -> ParsedResponse:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ZeroShot(PromptMethod):
    """The fine-tuning format; parsed exactly as in training (``extract_answer`` + ``parse_confidence``)."""

    name = "zero_shot"
    chat = False

    def text(self, question: str, evidence: Sequence[str] | None = None) -> str:
        return evidence_block(evidence) + build_prompt(question)

    def parse(self, response: str) -> ParsedResponse:
        answer, confidence = _answer_and_confidence(response)
        return ParsedResponse(answer, confidence, [(answer, confidence)])


def _block(tag: str, text: str) -> str:
    return f"{tag} {text}"


def _few_shot(instruction: str, demos: list[list[str]], question: str, evidence: Sequence[str] | None,
              open_tag: str) -> str:
    """Instruction, demonstrations (each a list of blocks) and the query, all separated by blank lines;
    the text ends with the open ``open_tag`` the model continues."""
    parts = [instruction] + ["\n\n".join(blocks) for blocks in demos]
    query = evidence_list_block(evidence) + f"{_block(QUESTION_TAG, question.strip())}\n\n{open_tag}"
    return "\n\n".join(parts + [query])


class Vanilla(PromptMethod):
    """The paper's few-shot Vanilla prompt; the model continues after ``### Answer:``."""

    name = "vanilla"

    def text(self, question: str, evidence: Sequence[str] | None = None) -> str:
        demos = [[_block(QUESTION_TAG, d.question), _block(ANSWER_TAG, d.guesses[0][0]),
                  _block(CONFIDENCE_TAG, f"{d.guesses[0][1]:.1f}.")] for d in DEMONSTRATIONS]
        return _few_shot(INSTRUCTION, demos, question, evidence, ANSWER_TAG)

    def parse(self, response: str) -> ParsedResponse:
        text = _before_next_question(response)
        tag = _ANSWER_RE.search(text)  # a chat model may restate "### Answer:" in its reply
        if tag is not None and not text[: tag.start()].strip():
            text = text[tag.end():]
        answer, confidence = _answer_and_confidence(text)
        return ParsedResponse(answer, confidence, [(answer, confidence)])


class CoT(PromptMethod):
    """Vanilla plus "Let's think it step by step." and an explanation before the answer; the model
    continues after ``### Explanation:`` and then writes ``### Answer:`` and ``### Confidence:``."""

    name = "cot"

    def text(self, question: str, evidence: Sequence[str] | None = None) -> str:
        demos = [[_block(QUESTION_TAG, d.question), _block(EXPLANATION_TAG, d.explanation),
                  _block(ANSWER_TAG, d.guesses[0][0]), _block(CONFIDENCE_TAG, f"{d.guesses[0][1]:.1f}.")]
                 for d in DEMONSTRATIONS]
        return _few_shot(COT_INSTRUCTION, demos, question, evidence, EXPLANATION_TAG)

    def parse(self, response: str) -> ParsedResponse:
        text = _before_next_question(response)
        tag = _ANSWER_RE.search(text)
        if tag is None:  # no answer block: the answer is missing; a confidence may still be stated
            confidence = parse_confidence(text)
            return ParsedResponse("", confidence, [("", confidence)])
        answer, confidence = _answer_and_confidence(text[tag.end():])
        return ParsedResponse(answer, confidence, [(answer, confidence)])


class TopK(PromptMethod):
    """The paper's Top-k: the k best guesses, ``### Answer i:`` / ``### Confidence i:`` for i = 1..k."""

    name = "topk"

    def __init__(self, k: int = 2):
        if not isinstance(k, int) or not 1 <= k <= MAX_TOPK:
            raise ValueError(f"top-k needs 1 <= k <= {MAX_TOPK} (the demonstrations' guesses), got {k!r}")
        self.k = k

    def __repr__(self) -> str:
        return f"TopK(k={self.k})"

    def instruction(self) -> str:
        return (f"Please provide your {self.k} best guesses of the answer and, for each, the Confidence "
                "(0.0 to 1.0) that it is truthful and informative for the Question.")

    def text(self, question: str, evidence: Sequence[str] | None = None) -> str:
        demos = []
        for d in DEMONSTRATIONS:
            blocks = [_block(QUESTION_TAG, d.question)]
            for i, (guess, confidence) in enumerate(d.guesses[: self.k], start=1):
                blocks += [_block(f"### Answer {i}:", guess), _block(f"### Confidence {i}:", f"{confidence:.1f}.")]
            demos.append(blocks)
        return _few_shot(self.instruction(), demos, question, evidence, "### Answer 1:")

    def parse(self, response: str) -> ParsedResponse:
        text = _before_next_question(response)
        if ANSWER_TAG_RE.match(text.lstrip()) is None:
            text = "### Answer 1:" + text  # the prompt ends with the first answer tag
        tags = list(ANSWER_TAG_RE.finditer(text))
        candidates = []
        for tag, following in zip(tags, tags[1:] + [None]):
            segment = text[tag.end(): following.start() if following else len(text)]
            # "### Confidence 2:" -> "### Confidence:" so that the one parser reads it
            segment = _NUMBERED_CONFIDENCE_RE.sub(CONFIDENCE_TAG, segment)
            candidates.append(_answer_and_confidence(segment))
        best = max(range(len(candidates)),
                   key=lambda i: (candidates[i][1].value is not None, candidates[i][1].value or 0.0, -i))
        answer, confidence = candidates[best]
        return ParsedResponse(answer, confidence, candidates)


METHODS: dict[str, PromptMethod] = {"zero_shot": ZeroShot(), "vanilla": Vanilla(), "topk": TopK(2), "cot": CoT()}
_ALIASES = {"zeroshot": "zero_shot", "top_k": "topk", "chain_of_thought": "cot"}


def get_method(name: str, k: int = 2) -> PromptMethod:
    """The method ``name`` (one of :data:`METHODS`); ``k`` sets the number of guesses of ``topk``."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown prompting method {name!r}; choose one of {list(METHODS)}")
    return TopK(k) if key == "topk" else METHODS[key]
