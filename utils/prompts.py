"""The one prompt/response format of the pipeline (the paper's ``### Question/Answer/Confidence``).

Training (steps 1-3) and the toy-world evaluation use the zero-shot form below; the paper's few-shot
evaluation prompts for real benchmarks build on the same blocks.
"""
from __future__ import annotations

QUESTION_TAG = "### Question:"
ANSWER_TAG = "### Answer:"
CONFIDENCE_TAG = "### Confidence:"
EVIDENCE_TAG = "### Retrieved Evidences:"


def build_prompt(question: str) -> str:
    """The text the model continues: the question block and an open answer block."""
    return f"{QUESTION_TAG} {question.strip()}\n{ANSWER_TAG}"


def evidence_block(passages: list[str] | None) -> str:
    """Retrieved passages on one line before the question block (the paper's evidence tag):
    ``"### Retrieved Evidences: p1 | p2\n"``. Whitespace inside a passage collapses to one space and
    ``|`` becomes ``/``, so the block stays one line and splits back; no passages give ``""``."""
    cleaned = [" ".join(p.split()).replace("|", "/") for p in passages or ()]
    cleaned = [p for p in cleaned if p]
    return f"{EVIDENCE_TAG} {' | '.join(cleaned)}\n" if cleaned else ""


def format_confidence(confidence: float) -> str:
    """One decimal, as in the paper's data (``0.0`` ... ``1.0``)."""
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence must lie in [0, 1], got {confidence}")
    return f"{confidence:.1f}"


def format_response(answer: str, confidence: float | None) -> str:
    """The completion after :func:`build_prompt`; ``confidence=None`` gives the answer alone.

    The leading space joins it to ``### Answer:``; the tokenizer's EOS token is appended by the
    caller, which knows the tokenizer.
    """
    text = f" {answer.strip()}"
    if confidence is not None:
        text += f"\n{CONFIDENCE_TAG} {format_confidence(confidence)}"
    return text
