"""JSON lines: the one reader and the one writer of ``.jsonl`` files.

Reading is strict (:func:`json_lines`, :func:`read_jsonl`): every line is UTF-8 and, unless blank, one JSON
object that names each key once; anything else stops with a :class:`DataError` (exit 2) naming the file and
line. Gzipped files (``.gz``) are read too. Writing (:func:`write_jsonl`) is atomic and strict JSON: NaN and
infinities are written as null (:func:`json_safe`). The checks of a JSON object (:func:`unique_keys`,
:func:`json_object`) are shared with :mod:`utils.data`'s reader of ``.json`` arrays.
"""
from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from utils.data_formats import DataError
from utils.files import atomic_file


def first_duplicate(names: Sequence[str]) -> str | None:
    return next((name for i, name in enumerate(names) if name in names[:i]), None)


def text_lines(file: Path | str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 text file (gunzipped when it ends in ``.gz``). A byte
    that is not UTF-8 stops with a :class:`DataError` naming the file and line, an unreadable file (a
    truncated or fake ``.gz``) with one naming the file."""
    file = Path(file)
    opener = gzip.open if file.name.endswith(".gz") else open
    try:
        with opener(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:  # line by line, to name the line: no UTF-8 character holds a newline byte
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{file}:{number}: not UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} "
                                    "of the line); re-save the file as UTF-8") from None
                yield number, text
    except (OSError, EOFError) as err:
        raise DataError(f"{file}: cannot be read ({err}); re-create or replace it") from None


class DuplicateKey(Exception):
    """Raised by :func:`unique_keys` inside ``json``; the reader turns it into a :class:`DataError` naming the line
    (:func:`duplicate_key_error`)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing an object that names a key twice (``json`` keeps the last silently)."""
    duplicate = first_duplicate([key for key, _ in pairs])
    if duplicate is not None:
        raise DuplicateKey(duplicate)
    return dict(pairs)


def duplicate_key_error(where: str, err: DuplicateKey) -> DataError:
    return DataError(f"{where}: key {err.key!r} appears twice in one object; rename or remove one")


def json_object(where: str, item: Any) -> dict:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return item


def json_lines(file: Path | str, hint: str = "") -> Iterator[tuple[str, dict]]:
    """``("file:line", row)`` for each non-blank line of a JSONL file (gzipped when it ends in ``.gz``); a
    line that is not a JSON object, or names a key twice, stops with a :class:`DataError` naming the file
    and line (and ending with ``hint`` where the line is not JSON)."""
    file = Path(file)
    for number, line in text_lines(file):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            row = json.loads(line, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg}); fix or remove the line"
                            + (f" ({hint})" if hint else "")) from None
        except DuplicateKey as err:
            raise duplicate_key_error(where, err) from None
        yield where, json_object(where, row)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every row of a JSONL file, checked as :func:`json_lines` says (a missing file is a :class:`DataError`)."""
    return [row for _, row in json_lines(path)]


def json_safe(value: Any) -> Any:
    """``value`` with every float NaN or infinity (in dicts, lists and tuples, at any depth) replaced by None,
    so that ``json.dumps`` writes strict JSON (null) instead of ``NaN``, which most readers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` one JSON object a line, NaN and infinities as null, atomically
    (:func:`utils.files.atomic_file`); returns the number of rows."""
    count = 0
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(json_safe(row)) + "\n")
            count += 1
    return count
