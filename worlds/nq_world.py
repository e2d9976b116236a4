"""The real-data preset's files: NQ-open questions dealt into disjoint pools, plus hh-rlhf pairs.

No question is shared between training and evaluation: the NQ-open questions are shuffled once
(seeded) and dealt into four pools, one per use.

Files (under ``out_dir``):

* ``step1_sft/{train,test}.jsonl``: ``prompt`` (the paper's ``### Question: … ### Answer:``) and
  ``response`` = the first gold answer + ``### Confidence: x``, ``x`` drawn uniformly from 0.0…1.0 and
  independent of correctness (the authors' SFT data states confidences too; calibration can only come
  from step 3, and sampled rollouts then explore every level);
* ``step2_nq/{train,test}.jsonl``: answer-quality pairs, chosen = a gold answer, rejected = the gold
  answer of another question that starts with the same wh-word (a year for a "when" question, a name
  for a "who" question), so the reward model has to judge correctness, not the kind of answer;
* ``step2_hh/train.jsonl``: hh-rlhf pairs in their raw format (``chosen``/``rejected`` dialogues), a
  seeded sample of the short ones (so they fit the preset's sequence length) whose last assistant turns
  are both non-empty;
* ``step3_ppo/train.jsonl``: ``prompt`` and the gold ``answers`` (for ``--quality_reward oracle``);
* ``eval/nq_open.jsonl``: the held-out questions in NQ-open's own format (``question``, ``answer``).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from utils.data import DataError, check_row
from utils.jsonl import json_lines, write_jsonl
from utils.prompts import build_prompt, format_response

WH_WORDS = ("when", "who", "where", "what", "which", "how many", "how much", "how", "why")


@dataclass(frozen=True)
class NQWorldConfig:
    seed: int = 0
    sft_questions: int = 1200
    reward_questions: int = 600
    ppo_questions: int = 600
    hh_pairs: int = 600
    hh_max_chars: int = 600  # of the whole chosen dialogue: such pairs fit the preset's 256 tokens
    test_fraction: float = 0.05


def read_nq_open(path: str | Path) -> list[dict]:
    """NQ-open JSONL rows ``{"question", "answer": [aliases]}``, refused with file:line when malformed."""
    rows = []
    for where, row in json_lines(Path(path)):
        check_row(row, ("question", "answer"), where)
        rows.append({"question": row["question"].strip(), "answer": row["answer"]})
    return rows


def read_hh_rlhf(path: str | Path) -> Iterator[dict]:
    """hh-rlhf rows (``chosen``, ``rejected``) from a ``.jsonl`` or ``.jsonl.gz`` file."""
    for where, row in json_lines(Path(path)):
        if not {"chosen", "rejected"} <= row.keys():
            raise DataError(f"{where}: expected hh-rlhf's chosen/rejected dialogues")
        yield {"chosen": row["chosen"], "rejected": row["rejected"]}


def _answered(pair: dict) -> bool:
    """Both dialogues end in a non-empty assistant turn (some hh-rlhf rows end in an empty one)."""
    return all(pair[key].rpartition("Assistant:")[2].strip() for key in ("chosen", "rejected"))


def wh_word(question: str) -> str:
    lowered = question.lower()
    return next((w for w in WH_WORDS if lowered.startswith(w + " ") or f" {w} " in f" {lowered} "), "other")


def _sft_rows(questions: list[dict], rng: random.Random) -> list[dict]:
    return [{"prompt": build_prompt(q["question"]),
             "response": format_response(q["answer"][0], rng.randint(0, 10) / 10)} for q in questions]


def _wrong_answer(question: dict, same_kind: list[dict], rng: random.Random) -> str:
    golds = {a.lower() for a in question["answer"]}
    for _ in range(20):
        other = rng.choice(same_kind)["answer"][0]
        if other.lower() not in golds:
            return other
    raise DataError(f"no wrong answer found for {question['question']!r}: too few questions of its kind")


def _reward_rows(questions: list[dict], everything: list[dict], rng: random.Random) -> list[dict]:
    by_kind: dict[str, list[dict]] = {}
    for q in everything:
        by_kind.setdefault(wh_word(q["question"]), []).append(q)
    return [{"prompt": build_prompt(q["question"]), "chosen": format_response(q["answer"][0], None),
             "rejected": format_response(_wrong_answer(q, by_kind[wh_word(q["question"])], rng), None)}
            for q in questions]


def _split(rows: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    n_test = max(1, round(len(rows) * fraction))
    return rows[n_test:], rows[:n_test]


def generate(out_dir: str | Path, nq_path: str | Path, hh_path: str | Path, config: NQWorldConfig) -> dict[str, int]:
    """Write every file of the preset; returns the rows written per file."""
    out = Path(out_dir)
    rng = random.Random(config.seed)
    questions = read_nq_open(nq_path)
    needed = config.sft_questions + config.reward_questions + config.ppo_questions
    if needed >= len(questions):
        raise DataError(f"{nq_path}: {len(questions)} questions, but the pools ask for {needed} "
                        f"and evaluation needs the rest; lower the pool sizes")
    order = questions[:]
    rng.shuffle(order)
    sft, rest = order[:config.sft_questions], order[config.sft_questions:]
    reward, rest = rest[:config.reward_questions], rest[config.reward_questions:]
    ppo, held_out = rest[:config.ppo_questions], rest[config.ppo_questions:]

    short = [r for r in read_hh_rlhf(hh_path) if len(r["chosen"]) <= config.hh_max_chars and _answered(r)]
    hh = rng.sample(short, min(config.hh_pairs, len(short)))
    sizes = {}
    for name, rows in (("step1_sft", _sft_rows(sft, rng)), ("step2_nq", _reward_rows(reward, questions, rng))):
        train, test = _split(rows, config.test_fraction)
        sizes[f"{name}/train"] = write_jsonl(out / name / "train.jsonl", train)
        sizes[f"{name}/test"] = write_jsonl(out / name / "test.jsonl", test)
    sizes["step2_hh/train"] = write_jsonl(out / "step2_hh" / "train.jsonl", hh)
    sizes["step3_ppo/train"] = write_jsonl(out / "step3_ppo" / "train.jsonl",
                                           ({"prompt": build_prompt(q["question"]), "answers": q["answer"]} for q in ppo))
    sizes["eval/nq_open"] = write_jsonl(out / "eval" / "nq_open.jsonl", held_out)
    (out / "config.json").write_text(json.dumps({**asdict(config), "nq_path": str(nq_path),
                                                 "hh_path": str(hh_path), "rows": sizes}, indent=2))
    return sizes
