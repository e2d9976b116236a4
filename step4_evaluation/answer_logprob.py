"""Training-free confidence baselines of step 4 (``--baselines``), set beside the stated confidence on the
same answers and the same verdicts.

* ``answer_logprob``: exp(mean token log-probability of the row's own answer, given its prompt), the model's
  length-normalised likelihood of what it answered. The mean, not the sum, so that a long answer is not
  less "confident" for its length alone: the common likelihood baseline (the quantity of LM-Polygraph's
  Perplexity estimator; Kadavath et al., 2022). Each record keeps the mean log-probability itself as
  ``answer_logprob``.
* ``popularity``: the question's ``popularity`` percentile / 100 (the facts world); a benchmark whose
  questions do not all carry one in [0, 100] gets no such baseline.

Conventions
-----------
* The answer is the one the method's parser read (the record's ``answer``, the text before the confidence
  tag). It is found in the response where an answer begins (the response's start, or after an
  ``### Answer:`` / ``### Answer i:`` tag) and is followed by nothing but blanks before a ``#`` or the end.
  The blanks before it belong to it, as generated (`` Paris`` is one token); what precedes them in the
  response (a CoT explanation, a restated tag) is context, after the prompt.
* Teacher forcing: the prompt ids as generation encoded them, then ``tokenizer(text)`` of the context and
  of the answer (no special tokens). Re-tokenising decoded text may differ from the generated ids by a
  token at a boundary (a merge across it); accepted, as for the ``expected`` readout.
* An empty answer, or one not found there, has no likelihood: None, a missing confidence.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

from tqdm import tqdm

from step4_evaluation.confidence_readout import tail_log_probs
from step4_evaluation.prompting import ANSWER_TAG_RE
from utils.training import batched

BASELINES = ("answer_logprob", "popularity")

_AFTER_ANSWER_RE = re.compile(r"\s*(?:#|$)")


def answer_span(response: str, answer: str) -> tuple[int, int] | None:
    """``[start, end)``: the characters of ``answer`` in ``response``, with the blanks before it (see the
    module's conventions); None when the answer is empty or not there."""
    if not answer:
        return None
    for start in (0, *(tag.end() for tag in ANSWER_TAG_RE.finditer(response))):
        begin = len(response) - len(response[start:].lstrip())
        end = begin + len(answer)
        if response.startswith(answer, begin) and _AFTER_ANSWER_RE.match(response, end):
            return start, end
    return None


def teacher_forced(tokenizer, prompt_ids: Sequence[int], response: str, answer: str) -> tuple[list[int], int] | None:
    """The ids of prompt, context and answer, and where the answer's ids begin; None without an answer span."""
    span = answer_span(response, answer)
    if span is None:
        return None
    start, end = span
    context = list(prompt_ids) + (tokenizer(response[:start], add_special_tokens=False)["input_ids"] if start else [])
    answer_ids = tokenizer(response[start:end], add_special_tokens=False)["input_ids"]
    return context + answer_ids, len(context)


def answer_log_probs(model, tokenizer, items: dict[str, tuple[list[int], str, str]], batch_size: int,
                     desc: str) -> dict[str, float | None]:
    """Per id of ``(prompt_ids, response, answer)``: the mean log-probability of the answer's tokens, None
    without an answer. One batched forward pass per ``batch_size`` answers."""
    forced = {qid: teacher_forced(tokenizer, *item) for qid, item in items.items()}
    means: dict[str, float | None] = {qid: None for qid, f in forced.items() if f is None}
    todo = [qid for qid, f in forced.items() if f is not None]
    with tqdm(total=len(todo), desc=desc, disable=None) as bar:
        for chunk in batched(todo, batch_size):
            log_probs, scored = tail_log_probs(model, [forced[q][0] for q in chunk], [forced[q][1] for q in chunk],
                                               tokenizer.pad_token_id)
            means.update(zip(chunk, (log_probs.sum(dim=1) / scored.sum(dim=1)).tolist()))
            bar.update(len(chunk))
    return {qid: means[qid] for qid in items}


def carries_popularity(questions: list[dict]) -> bool:
    """Whether every question has a popularity percentile the ``popularity`` baseline can use."""
    return all(isinstance(q.get("popularity"), (int, float)) and 0 <= q["popularity"] <= 100 for q in questions)


def baseline_confidence(name: str, record: dict) -> float | None:
    """The confidence baseline ``name`` gives a predictions.jsonl record (None: missing)."""
    if name == "answer_logprob":
        return None if record["answer_logprob"] is None else math.exp(record["answer_logprob"])
    return record["popularity"] / 100


def with_baseline(records: list[dict], name: str) -> list[dict]:
    """The records with baseline ``name`` as their ``confidence``: what the metrics then score."""
    return [{**r, "confidence": baseline_confidence(name, r)} for r in records]
