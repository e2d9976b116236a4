"""Evaluation benchmarks as plain records: TruthfulQA (generation), NQ-open, the toy world and the facts world.

Every loader returns a list of dicts with the keys

* ``id`` (str): ``"{benchmark}-{index}"``, the 0-based position of the example in its source (file
  rows, or the hub split's rows), so it stays the same when a subset is drawn;
* ``question`` (str);
* ``answers`` (list[str]): the correct references / gold aliases, deduplicated in order. TruthfulQA:
  the Best Answer first, then the Correct Answers;
* ``incorrect_answers`` (list[str]): TruthfulQA's Incorrect Answers, ``[]`` for the others;
* ``benchmark``: ``"truthfulqa"``, ``"nq_open"``, ``"toy"`` or ``"facts"``;
* ``difficulty`` (str or None): the toy world's ``easy|medium|hard``, the facts world's popularity third
  ``low|mid|high``, None elsewhere;
* toy world only, when present in the file: ``sft_count`` (how often the fact was seen in SFT); facts
  world only: ``form`` and ``popularity`` (:mod:`worlds.facts_world`).

Local files are read directly (through :mod:`utils.data`'s readers, no ``datasets`` cache) so that a bad
row is reported as ``file:line``: an empty file, a byte that is not UTF-8, answers that are not a list of
strings (:data:`utils.data.COLUMN_TYPES`). Without a path, TruthfulQA and NQ-open come from the Hugging
Face hub.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from utils.data import DataError, check_value, csv_rows, empty_error
from utils.jsonl import json_lines

BENCHMARKS = ("truthfulqa", "nq_open", "toy", "facts")
TRUTHFULQA_HUB = ("truthfulqa/truthful_qa", "generation", "validation")  # formerly "truthful_qa"
NQ_OPEN_HUB = ("google-research-datasets/nq_open", None, "validation")  # formerly "nq_open"
TRUTHFULQA_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")
TRUTHFULQA_SEPARATOR = ";"  # the CSV joins answers with "; "
TOY_EVAL_FILE = "eval/test.jsonl"
FACTS_EVAL_FILE = "eval/facts.jsonl"
JSONL_EMPTY_HINT = "pass a file with one JSON question per line"


def _dedup(texts: Iterable[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        text = str(text).strip()
        if text and text not in seen:
            seen[text] = None
    return list(seen)


def _split_answers(cell: str | None) -> list[str]:
    return [part.strip() for part in (cell or "").split(TRUTHFULQA_SEPARATOR) if part.strip()]


def _record(benchmark: str, index: int, question: Any, answers: list[str], where: str,
            incorrect: list[str] | None = None, difficulty: str | None = None, **extra: Any) -> dict:
    if not isinstance(question, str):
        raise DataError(f"{where}: the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise DataError(f"{where}: the question is empty")
    if not answers:
        raise DataError(f"{where}: the answer list is empty (at least one correct answer is needed)")
    return {"id": f"{benchmark}-{index}", "question": question.strip(), "answers": answers,
            "incorrect_answers": incorrect or [], "benchmark": benchmark, "difficulty": difficulty, **extra}


def _existing_file(path: str | Path, what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file (expected {what})")
    return file


def _load_hub(hub: tuple[str, str | None, str]):
    import datasets

    name, config, split = hub
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, missing cache, hub errors: one actionable line
        raise DataError(f"could not load {name}"
                        f"{'/' + config if config else ''} ({split}) from the hub: {err}; "
                        "pass the path of a local copy instead") from err


# --------------------------------------------------------------------------------------------- TruthfulQA
def load_truthfulqa(path: str | None = None) -> list[dict]:
    """TruthfulQA (generation): the official CSV layout at ``path``, or the hub's validation split."""
    if path is None:
        rows = _load_hub(TRUTHFULQA_HUB)
        return [_record("truthfulqa", i, row["question"],
                        _dedup([row["best_answer"], *row["correct_answers"]]), f"{TRUTHFULQA_HUB[0]} row {i}",
                        incorrect=_dedup(row["incorrect_answers"]))
                for i, row in enumerate(rows)]

    file = _existing_file(path, "the TruthfulQA CSV")
    records = []
    for where, row in csv_rows(file, lambda line: f"{file}:{line}"):
        missing = [column for column in TRUTHFULQA_COLUMNS if column not in row]
        if missing:  # every row has the header's columns
            raise DataError(f"{file}: missing column {missing[0]!r} (needed: {list(TRUTHFULQA_COLUMNS)}; "
                            f"found: {list(row)})")
        answers = _dedup([row["Best Answer"], *_split_answers(row["Correct Answers"])])
        records.append(_record("truthfulqa", len(records), row["Question"], answers, where,
                               incorrect=_dedup(_split_answers(row["Incorrect Answers"]))))
    if not records:
        raise empty_error(file, "pass the TruthfulQA CSV: a header row, then one question per row")
    return records


# --------------------------------------------------------------------------------------------- JSONL
def _question_rows(file: Path, answer_keys: tuple[str, ...]) -> Iterable[tuple[dict, list[str], str]]:
    """Yield ``(row, answers, where)`` for each non-blank line, checking question and answers."""
    for where, row in json_lines(file):
        if "question" not in row:
            raise DataError(f"{where}: missing key 'question'")
        key = next((k for k in answer_keys if k in row), None)
        if key is None:
            raise DataError(f"{where}: missing key {answer_keys[0]!r}"
                            + (f" (or {', '.join(map(repr, answer_keys[1:]))})" if len(answer_keys) > 1 else ""))
        check_value(key, row[key], where)
        yield row, _dedup(row[key]), where


def load_nq_open(path: str | None = None) -> list[dict]:
    """NQ-open: a local JSONL of ``{"question", "answer": [aliases]}`` (``answers`` also accepted), or the
    hub's validation split."""
    if path is None:
        rows = _load_hub(NQ_OPEN_HUB)
        return [_record("nq_open", i, row["question"], _dedup(row["answer"]), f"{NQ_OPEN_HUB[0]} row {i}")
                for i, row in enumerate(rows)]
    file = _existing_file(path, "an NQ-open JSONL file")
    records = [_record("nq_open", i, row["question"], answers, where)
               for i, (row, answers, where) in enumerate(_question_rows(file, ("answer", "answers")))]
    if not records:
        raise empty_error(file, JSONL_EMPTY_HINT)
    return records


def _world_rows(benchmark: str, path: str | None, eval_file: str) -> Iterable[tuple[dict, list[str], str]]:
    """A generated world's evaluation rows: ``path`` is the file, or the world's folder holding ``eval_file``."""
    what = f"the {benchmark} world's folder or its {eval_file}"
    if path is None:
        raise DataError(f"the {benchmark} benchmark needs a path: {what}")
    file = Path(path)
    if file.is_dir():
        file = file / eval_file
    file = _existing_file(file, what)
    rows = list(_question_rows(file, ("answers", "answer")))
    if not rows:
        raise empty_error(file, JSONL_EMPTY_HINT)
    return rows


def load_toy(path: str) -> list[dict]:
    """The toy world's evaluation questions: ``eval/test.jsonl`` (or the toy-world folder holding it)."""
    return [_record("toy", i, row["question"], answers, where, difficulty=row.get("difficulty"),
                    **({"sft_count": row["sft_count"]} if "sft_count" in row else {}))
            for i, (row, answers, where) in enumerate(_world_rows("toy", path, TOY_EVAL_FILE))]


def load_facts(path: str) -> list[dict]:
    """The facts world's evaluation questions (``eval/facts.jsonl``); the difficulty is the popularity third."""
    return [_record("facts", i, row["question"], answers, where, difficulty=row.get("third"),
                    form=row.get("form"), popularity=row.get("popularity"))
            for i, (row, answers, where) in enumerate(_world_rows("facts", path, FACTS_EVAL_FILE))]


# --------------------------------------------------------------------------------------------- dispatch
LOADERS: dict[str, Callable[[str | None], list[dict]]] = {
    "truthfulqa": load_truthfulqa, "nq_open": load_nq_open, "toy": load_toy, "facts": load_facts,
}


def subset_indices(n: int, max_examples: int | None, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of size ``max_examples`` (all when None or >= n), in order."""
    if max_examples is None or max_examples >= n:
        return list(range(n))
    if max_examples < 1:
        raise DataError(f"max_examples must be at least 1, got {max_examples}")
    chosen = np.random.default_rng(seed).choice(n, size=max_examples, replace=False)
    return sorted(int(i) for i in chosen)


def load_benchmark(name: str, path: str | None = None, max_examples: int | None = None,
                   seed: int = 0) -> list[dict]:
    """Load benchmark ``name`` (one of :data:`BENCHMARKS`; ``-`` and ``_`` interchangeable) from ``path``
    (None: the hub), keeping a seeded random subset of ``max_examples`` examples in file order."""
    key = name.strip().lower().replace("-", "_")
    if key not in LOADERS:
        raise DataError(f"unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}")
    records = LOADERS[key](path)
    return [records[i] for i in subset_indices(len(records), max_examples, seed)]


def benchmark_kind(name: str) -> str:
    """``toy/seen`` → ``toy``: the loader and judge of a labelled benchmark set (``--benchmarks KIND/LABEL=PATH``)."""
    return name.split("/", 1)[0]
