"""Dataset reading, validation and format conversion; :mod:`utils.data_split` cuts and blends what is read
here into a step's train and eval sets, :mod:`utils.collate` tokenises and batches their rows.

``--data_path`` entries are local folders (``train`` and optionally ``test`` files; DeepSpeed-Chat's
``eval`` file counts as ``test``), local files (all rows are ``train``) or hub names (``owner/name``, a
longer name is a ``data_dir`` subset such as ``Anthropic/hh-rlhf/helpful-base``). Local files may be
jsonl, json, csv or parquet, jsonl and json also gzipped. They are read here, not by ``datasets``, so that
every row is checked where it is read: an empty file, a byte that is not UTF-8, a malformed line or a
value of the wrong type (:data:`COLUMN_TYPES`) stops with a :class:`DataError` naming the file and line
(or row), before any model loads. Rows are then converted from their source format
(:mod:`utils.data_formats`: canonical, rm-static, hh-rlhf) into the step's canonical columns, so one run
can blend entries of different formats. JSON objects naming a key twice are refused (``json`` would keep
the last value silently, as a CSV header naming a column twice would).

Rows that teach nothing are not trained on silently: reward pairs with identical replies are dropped and
counted (:mod:`utils.data_formats`), and every ``response`` (step 1's rows, step 3's PPO-ptx rows) must
state a confidence that :func:`utils.confidence.parse_confidence` reads in [0, 1]; rows that do not are
counted per file and refused, or trained on with ``--allow_missing_confidence``.

Canonical columns: step 1 ``prompt`` + ``response``; step 2 ``prompt`` + ``chosen`` + ``rejected``;
step 3 ``prompt`` (+ optional ``answers``, a list of gold strings, for the oracle quality reward);
evaluation ``question`` + ``answers``. Tokenised results are cached by :mod:`utils.data_cache`.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from utils import dist
from utils.confidence import parse_confidence
from utils.data_formats import (CANONICAL, DataError, detect_format, given_source_columns, source_columns,
                                split_hub_name, to_canonical)
from utils.jsonl import (DuplicateKey, duplicate_key_error, first_duplicate, json_lines, json_object, text_lines,
                         unique_keys)

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".parquet")
SPLIT_FILES = {"test": ("test", "eval")}  # file stems of a split in a folder; DeepSpeed-Chat writes eval.json
WHERE = "_where"  # a temporary column: where a row came from ("file:line"), to name the first bad row
ALLOW_MISSING_CONFIDENCE = "--allow_missing_confidence"
# What a response's confidence status (utils.confidence) means for a training row.
_CONFIDENCE_FAULTS = {"missing": "no confidence line", "malformed": "no readable number after the tag",
                      "clamped": "outside [0, 1]"}
JSON_FILE_HINT = "a .json file holds one JSON array of objects, or one object per line"

TEXT, ANSWER_LIST = "text", "answer list"
# What each known column holds, for steps 1-3 and step 4's benchmarks alike. A bare string where a list
# of answers belongs would be matched letter by letter, so it is refused rather than wrapped.
COLUMN_TYPES: dict[str, str] = {"prompt": TEXT, "response": TEXT, "chosen": TEXT, "rejected": TEXT,
                                "question": TEXT, "answers": ANSWER_LIST, "answer": ANSWER_LIST,
                                "text": TEXT}  # retrieval passages
EMPTY_HINT = "add rows to it or remove it"
# Files whose rows all have the same columns: a missing column is the file's fault, said once.
_COLUMN_HINTS = {".csv": "the first line must be the header naming the columns",
                 ".parquet": "re-create it with the needed columns"}


def empty_error(file: Path | str, hint: str) -> DataError:
    return DataError(f"{file}: empty (no rows); {hint}")


def local_suffix(file: Path) -> str | None:
    """The :data:`LOCAL_SUFFIXES` entry ``file`` ends with (``.jsonl.gz`` counts whole), else ``None``."""
    return next((suffix for suffix in LOCAL_SUFFIXES if file.name.endswith(suffix)), None)


def _split_file(folder: Path, split: str) -> Path | None:
    """The folder's one file of ``split``; two (``train.jsonl`` and ``train.csv``) would leave the choice to
    the order of :data:`LOCAL_SUFFIXES`, so they are refused."""
    found = [folder / f"{stem}{suffix}" for stem in SPLIT_FILES.get(split, (split,)) for suffix in LOCAL_SUFFIXES
             if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(f"--data_path {folder}: {found[0].name} and {found[1].name} both hold the {split} split; "
                        "keep one")
    return found[0] if found else None


def no_train_split(path: str) -> DataError:
    folder = Path(path)
    if not folder.is_dir():
        return DataError(f"--data_path {path}: no train split")
    names = sorted(p.name for p in folder.iterdir())
    held = ", ".join(names[:10]) + (", …" if len(names) > 10 else "") if names else "nothing"
    expected = ", ".join(f"train{suffix}" for suffix in LOCAL_SUFFIXES)
    return DataError(f"--data_path {path}: no train file (expected {expected}; the folder holds: {held})")


def _json_rows(file: Path) -> Iterator[tuple[str, dict]]:
    """Rows of a ``.json`` file: one JSON array of objects (DeepSpeed-Chat's ``train.json``), else JSON lines.
    One object over several lines (pretty-printed) is neither, and refused: it could be one row or a table
    of columns."""
    text = "".join(line for _, line in text_lines(file))
    start = len(text) - len(text.lstrip())
    if text.startswith("[", start):
        yield from _json_array_rows(file, text, start)
        return
    try:
        end = json.JSONDecoder().raw_decode(text, start)[1]
    except json.JSONDecodeError:
        end = start  # not JSON from the start: json_lines names the line
    first, last = text.count("\n", 0, start) + 1, text.count("\n", 0, end) + 1
    if last > first:
        raise DataError(f"{file}:{first}: one JSON object over lines {first}-{last}; {JSON_FILE_HINT}: wrap it in "
                        "[ ] or write each row on one line")
    yield from json_lines(file, JSON_FILE_HINT)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_array_rows(file: Path, text: str, start: int) -> Iterator[tuple[str, dict]]:
    """``("file:line", row)`` for each item of the JSON array at ``text[start]``, decoded one item at a time
    so each row is named by the line it starts on."""
    decoder = json.JSONDecoder(object_pairs_hook=unique_keys)
    line, counted = 1, 0

    def line_at(pos: int) -> int:  # counted incrementally: the positions only grow
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, pos), pos
        return line

    def invalid(pos: int, message: str) -> DataError:
        return DataError(f"{file}:{line_at(pos)}: not valid JSON ({message}); fix it")

    pos = _JSON_SPACE.match(text, start + 1).end()
    more = not text.startswith("]", pos)
    while more:
        where = f"{file}:{line_at(pos)}"
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{file}:{err.lineno}: not valid JSON ({err.msg}); fix it") from None
        except DuplicateKey as err:
            raise duplicate_key_error(where, err) from None
        yield where, json_object(where, item)
        pos = _JSON_SPACE.match(text, pos).end()
        more = text.startswith(",", pos)
        if more:  # an item must follow: a trailing comma fails to decode, as in json.loads
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise invalid(pos, "Expecting ',' delimiter" if pos < len(text) else "the array is not closed")
    rest = _JSON_SPACE.match(text, pos + 1).end()
    if rest < len(text):
        raise invalid(rest, "Extra data after the array")


def csv_rows(file: Path, where: Callable[[int], str]) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where(line), {column: cell})`` for each record of a CSV file after its header line, every cell
    kept as text; ``where`` names a record by the line it starts on (a quoted cell may span lines).
    Records of blank cells are skipped. A header naming a column twice, or a record whose cell count
    differs from the header's (an unquoted comma would cut its text short), stops with a :class:`DataError`."""
    reader = csv.reader(line for _, line in text_lines(file))
    header: list[str] | None = None
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader, None)
        except csv.Error as err:
            raise DataError(f"{where(line)}: not valid CSV ({err}); fix the line") from None
        if cells is None:
            return
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header = [cell.strip() for cell in cells]
            duplicate = first_duplicate(header)
            if duplicate is not None:
                raise DataError(f"{where(line)}: column {duplicate!r} appears twice in the header; rename or "
                                "remove one")
            continue
        if len(cells) != len(header):
            raise DataError(f"{where(line)}: {len(cells)} cells, the header has {len(header)}; give one cell per "
                            "column (quote cells that hold commas)")
        yield where(line), dict(zip(header, cells))


def _parquet_rows(file: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file).read()
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{file}: cannot be read as parquet ({err}); re-create it") from None
    duplicate = first_duplicate(table.column_names)
    if duplicate is not None:  # rows as dicts would keep only one of them
        raise DataError(f"{file}: column {duplicate!r} appears twice; rename or remove one")
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{file} row {number}", row


def check_value(key: str, value: Any, where: str) -> None:
    """``value`` of column ``key`` present, non-empty and of its :data:`COLUMN_TYPES` type (any type for
    other columns), else a :class:`DataError` naming ``where`` and the key."""
    kind = COLUMN_TYPES.get(key)
    if kind == ANSWER_LIST and isinstance(value, list):
        _check_answer_list(key, value, where)
    elif value is None or (isinstance(value, (str, list)) and len(value) == 0):
        raise DataError(f"{where}: key {key!r} is empty")
    elif kind == TEXT and not isinstance(value, str):
        raise DataError(f"{where}: key {key!r} must be a string, got {type(value).__name__}")
    elif kind == ANSWER_LIST and isinstance(value, str):
        quoted = json.dumps(value, ensure_ascii=False)
        raise DataError(f"{where}: key {key!r} must be a list of strings, not the bare string {quoted}; "
                        f"give a list, e.g. [{quoted}]")
    elif kind == ANSWER_LIST:
        raise DataError(f"{where}: key {key!r} must be a list of strings, got {type(value).__name__}")


def _check_answer_list(key: str, answers: list, where: str) -> None:
    wrong = [answer for answer in answers if not isinstance(answer, str)]
    if wrong:
        name = type(wrong[0]).__name__
        raise DataError(f"{where}: key {key!r} holds {'an' if name[0] in 'aeiou' else 'a'} {name} ({wrong[0]!r}); "
                        "every answer must be a string")
    blank = sum(not answer.strip() for answer in answers)
    if blank == len(answers):
        raise DataError(f"{where}: key {key!r} is an empty answer list (at least one non-blank answer is needed)")
    if blank:  # an empty gold would count an empty reply as correct
        raise DataError(f"{where}: key {key!r} holds an empty answer; remove it")


def check_row(row: Any, required: Sequence[str], where: str, given: Sequence[str] = ()) -> None:
    """Every ``required`` key present with a valid value (:func:`check_value`), each ``given`` key valid
    where the row has a value, else a :class:`DataError` naming ``where`` and the key."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with keys {list(required)}, got {type(row).__name__}")
    for key in required:
        if key not in row:
            raise DataError(f"{where}: missing key {key!r} (needed: {list(required)})")
        check_value(key, row[key], where)
    for key in given:
        if row.get(key) not in (None, ""):
            check_value(key, row[key], where)


def _checked_rows(file: Path, rows: Iterable[tuple[str, dict]], required: Sequence[str], optional: Sequence[str],
                  column_hint: str | None) -> tuple[list[dict], str]:
    """Every row checked for what its format needs and cut to the columns the step reads (+ :data:`WHERE`);
    and the format, which the first row decides (one file, one format).

    An ``optional`` column the first row has is read from every row, so every row needs it; one that only
    later rows have is refused, as the rows before would lack it. With ``column_hint`` (files whose rows
    all have the same columns) a missing column is one error naming the file, ending with the hint."""
    kept: list[dict] = []
    fmt, needed, given, columns = CANONICAL, (), (), ()
    for where, row in rows:
        if not kept:
            fmt = detect_format(row)
            needed = tuple(dict.fromkeys(source_columns(fmt, required) + tuple(c for c in optional if c in row)))
            given = given_source_columns(fmt, required)
            columns = tuple(dict.fromkeys(needed + given))
            missing = [column for column in needed if column not in row]
            if missing and column_hint:
                raise DataError(f"{file}: no column {missing[0]!r} (columns: {list(row)}); {column_hint}")
        late = next((column for column in optional if column in row and column not in needed), None)
        if late is not None:
            raise DataError(f"{where}: key {late!r} is given here but not in the first row; give it in every row "
                            "or in none")
        check_row(row, needed, where, given)
        kept.append({**{column: row.get(column) for column in columns}, WHERE: where})
    if not kept:
        raise empty_error(file, EMPTY_HINT)
    return kept, fmt


def _local_rows(file: Path, suffix: str) -> Iterator[tuple[str, dict]]:
    if suffix.startswith(".jsonl"):
        return json_lines(file)
    if suffix.startswith(".json"):
        return _json_rows(file)
    if suffix == ".csv":
        return csv_rows(file, lambda line: f"{file} row {line}")
    return _parquet_rows(file)


def _read_local(file: Path, required: Sequence[str], optional: Sequence[str]):
    """A local file's rows, checked and cut to the columns the step reads, and their format."""
    import datasets

    suffix = local_suffix(file)
    if suffix is None:
        raise DataError(f"{file}: unsupported file type; use one of {list(LOCAL_SUFFIXES)}")
    if file.stat().st_size == 0:  # a parquet reader cannot even open it
        raise empty_error(file, EMPTY_HINT)
    rows, fmt = _checked_rows(file, _local_rows(file, suffix), required, optional, _COLUMN_HINTS.get(suffix))
    return datasets.Dataset.from_list(rows), fmt


def _read_hub(name: str, split: str, required: Sequence[str], cache_dir: str | None):
    """A hub dataset's split as it is (+ :data:`WHERE`) and its format (registry, else columns); ``None``
    without the split."""
    import datasets

    repo, data_dir = split_hub_name(name)
    try:
        ds = datasets.load_dataset(repo, data_dir=data_dir, split=split, cache_dir=cache_dir)
    except ValueError:  # the dataset has no such split
        return None
    except Exception as err:  # offline, unknown name, …
        raise DataError(f"--data_path {name}: not a local path and could not be loaded from the hub ({err})") from None
    fmt = detect_format(ds.column_names, hub_name=name)
    missing = [key for key in source_columns(fmt, required) if key not in ds.column_names]
    if missing:
        raise DataError(f"--data_path {name}: columns {missing} missing for its {fmt} format (has {ds.column_names})")
    return ds.add_column(WHERE, [f"{name} ({split}) row {number}" for number in range(1, len(ds) + 1)]), fmt


def read_split(path: str, split: str, required: Sequence[str], optional: Sequence[str], cache_dir: str | None):
    """``(rows as in the source + WHERE, format)`` of one split, ``None`` where a folder/hub dataset lacks it."""
    local = Path(path)
    if local.is_dir():
        file = _split_file(local, split)
        return None if file is None else _read_local(file, required, optional)
    if local.is_file():
        return _read_local(local, required, optional) if split == "train" else None
    if local_suffix(local) or str(path).startswith((".", "/")):
        raise DataError(f"--data_path {path}: no such file or folder")
    return _read_hub(path, split, required, cache_dir)


def load_split(path: str, split: str, required: Sequence[str], cache_dir: str | None = None,
               optional: Sequence[str] = ()):
    """One split of a dataset in the canonical ``required`` columns (+ the ``optional`` ones it has): a
    local folder holding ``{split}.jsonl|json|csv|parquet`` (``.gz`` too), a local file (its rows are the
    train split), or a hub name. ``None`` when a folder/hub dataset lacks the split. ``cache_dir`` is the
    ``datasets`` cache of hub downloads."""
    found = read_split(path, split, required, optional, cache_dir)
    if found is None:
        return None
    _, rows = canonical(*found, f"{path} ({split})", required, optional)
    return rows.remove_columns(WHERE)


def canonical(rows, fmt: str, source: str, required: Sequence[str], optional: Sequence[str]) -> tuple:
    """``(source, rows converted from fmt)``, :data:`WHERE` kept."""
    return source, to_canonical(rows, fmt, required, (*optional, WHERE), source=source)


def _confidence_faults(rows, source: str) -> str | None:
    """How many ``response`` rows state no confidence the one parser reads in [0, 1], and where the first
    is; ``None`` when every row does."""
    statuses = [parse_confidence(response).status for response in rows["response"]]
    bad = [i for i, status in enumerate(statuses) if status != "ok"]
    if not bad:
        return None
    kinds = ", ".join(f"{_CONFIDENCE_FAULTS[status]}: {n}"
                      for status, n in Counter(statuses[i] for i in bad).most_common())
    return (f"{source}: {len(bad)} of {len(rows)} responses state no usable confidence ({kinds}; first at "
            f"{rows[bad[0]][WHERE]})")


def require_confidences(parts: Sequence[tuple[str, Any]], allowed: bool) -> None:
    """Refuses ``(source, rows)`` parts whose responses would teach no confidence (one line over all
    files), or with ``allowed`` prints their counts and lets them train."""
    faults = [fault for fault in (_confidence_faults(rows, source) for source, rows in parts) if fault]
    if faults and not allowed:
        raise DataError("; ".join(faults) + "; end each response with '### Confidence: <number in [0, 1]>', or "
                        f"pass {ALLOW_MISSING_CONFIDENCE} to train on them as they are")
    for fault in faults:
        dist.print_rank0(f"{fault}; training on them ({ALLOW_MISSING_CONFIDENCE})")
