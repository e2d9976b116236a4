"""The one confidence parser (training and evaluation alike) and the stripping of the confidence span.

Conventions
-----------
* Accepted forms after ``### Confidence:``: ``0.9``, ``.9``, ``1``, ``1.0.``, ``90%`` (percent is
  divided by 100). Values outside [0, 1] are clamped (status ``clamped``).
* No ``### Confidence`` tag gives status ``missing``; a tag with no number after it gives
  ``malformed``. Both have ``value=None``; :func:`resolve_confidence` turns them into the documented
  :data:`MISSING_CONFIDENCE` (0.0: "stated no confidence" counts as "no confidence") or the value of
  ``--missing_confidence``. The authors used 1.0 in training and 0.0 in evaluation; we use one value
  in both places. It is the one place a missing confidence is filled: rewards (step 3), metrics and
  retrieval gating (step 4), where a record's missing confidence is None and an array's is NaN.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

MISSING_CONFIDENCE = 0.0

Status = Literal["ok", "clamped", "missing", "malformed"]

_TAG_RE = re.compile(r"#+\s*Confidence\s*:?", re.IGNORECASE)
_VALUE_RE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(%)?")
# Where the answer ends: the confidence tag (one "#" is enough for the parser), or any other "##" block the
# model starts on its own, such as a tag cut by the length limit (" Zinmol\n### Confid").
_ANSWER_END_RE = re.compile(rf"#{{2,}}|{_TAG_RE.pattern}", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedConfidence:
    value: float | None
    status: Status


def parse_confidence(text: str) -> ParsedConfidence:
    """Parse the first confidence statement in a generated response (see module conventions)."""
    tag = _TAG_RE.search(text)
    if tag is None:
        return ParsedConfidence(None, "missing")
    number = _VALUE_RE.match(text, tag.end())
    if number is None:
        return ParsedConfidence(None, "malformed")
    value = float(number.group(1)) / (100.0 if number.group(2) else 1.0)
    clamped = min(max(value, 0.0), 1.0)
    return ParsedConfidence(clamped, "ok" if clamped == value else "clamped")


def confidence_value_start(text: str) -> int | None:
    """Where the stated number of the first confidence statement begins in ``text`` (the character after
    the tag and its spaces), or None when :func:`parse_confidence` finds no number there."""
    tag = _TAG_RE.search(text)
    number = None if tag is None else _VALUE_RE.match(text, tag.end())
    return None if number is None else number.start(1)


def resolve_confidence(stated: ParsedConfidence | float | None, missing_value: float = MISSING_CONFIDENCE) -> float:
    """The number used for rewards and metrics: the stated value, or ``missing_value`` where none was stated
    (a parse without a value, None, or NaN)."""
    value = stated.value if isinstance(stated, ParsedConfidence) else stated
    return missing_value if value is None or math.isnan(value) else value


def count_statuses(parsed: Iterable[ParsedConfidence]) -> dict[str, int]:
    """Counts per status (always all four keys), for logging parse failures."""
    counts = Counter(p.status for p in parsed)
    return {status: counts.get(status, 0) for status in ("ok", "clamped", "missing", "malformed")}


def parse_failure_rate(parsed: Sequence[ParsedConfidence]) -> float:
    """Share of responses whose confidence is missing or malformed."""
    if not parsed:
        return 0.0
    return sum(p.value is None for p in parsed) / len(parsed)


def answer_end(text: str) -> int | None:
    """Where the answer of a response ends: the character of its confidence tag or of any other ``##`` block,
    None without one. The one rule behind :func:`extract_answer` and :func:`confidence_cut_index`, so the
    reward model scores the answer that is matched against the gold answers."""
    end = _ANSWER_END_RE.search(text)
    return None if end is None else end.start()


def extract_answer(text: str) -> str:
    """The answer text of a response: everything before :func:`answer_end`."""
    return text[: answer_end(text)].strip()


def confidence_cut_index(token_ids: Sequence[int], tokenizer) -> int:
    """Number of leading response tokens that belong to the answer (:func:`answer_end`: the confidence span
    and any other ``##`` block removed).

    Works on token ids for any tokenizer: the character where the answer ends is found in the decoded
    text, then the shortest token prefix that decodes to the whole answer is kept, so the whitespace
    before the tag goes too. Without an end, every token is kept.
    """
    ids = list(token_ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    end = answer_end(text)
    if end is None:
        return len(ids)
    return _shortest_prefix_covering(ids, tokenizer, len(text[:end].rstrip()))


def confidence_value_token_span(token_ids: Sequence[int], tokenizer) -> tuple[int, int] | None:
    """``[start, end)``: the tokens that hold the stated number (from the one where it begins, which may carry
    the space before it, to the one where it ends); None when no number is stated."""
    ids = list(token_ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    start = confidence_value_start(text)
    if start is None:
        return None
    end = _VALUE_RE.match(text, start).end(1)
    return (_shortest_prefix_covering(ids, tokenizer, start + 1) - 1,
            _shortest_prefix_covering(ids, tokenizer, end))


def answer_line_end_index(token_ids: Sequence[int], tokenizer) -> int:
    """Number of leading tokens up to the end of the response's first non-blank line: where a response
    without a confidence tag left the format (``" black\n4"``: the tokens of ``"\n4"`` come after it).
    A one-line response gives its length (it stopped where the tag should have begun)."""
    ids = list(token_ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    newline = text.find("\n", len(text) - len(text.lstrip()))
    if newline < 0:
        return len(ids)
    return _shortest_prefix_covering(ids, tokenizer, len(text[:newline].rstrip()))


def _shortest_prefix_covering(ids: list[int], tokenizer, chars: int) -> int:
    """The fewest leading tokens whose decoded text, right-stripped, has at least ``chars`` characters
    (binary search: a prefix's decoded length grows with its length)."""
    low, high = 0, len(ids)
    while low < high:
        mid = (low + high) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True).rstrip()) >= chars:
            high = mid
        else:
            low = mid + 1
    return low
