"""utils.jsonl: the one JSONL reader (strict, naming file and line) and the one writer (atomic, NaN as null)."""
from __future__ import annotations

import gzip
import json
import math
import re

import pytest

from utils.data_formats import DataError
from utils.jsonl import json_safe, read_jsonl, write_jsonl


def test_write_jsonl_is_atomic_and_counts(tmp_path):
    assert write_jsonl(tmp_path / "d" / "rows.jsonl", ({"i": i} for i in range(3))) == 3
    assert (tmp_path / "d" / "rows.jsonl").read_text().count("\n") == 3
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["rows.jsonl"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"old": 1}])

    def rows():
        yield {"new": 1}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"old": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_nan_and_infinities_are_written_as_null_at_any_depth(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": math.nan, "b": [1.0, -math.inf, (math.inf, 2)], "c": {"d": math.nan, "e": "NaN"}}])
    text = path.read_text()
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": None, "e": "NaN"}}
    assert json_safe({"x": (0.5, math.nan)}) == {"x": [0.5, None]}


def test_read_jsonl_round_trips_skips_blank_lines_and_reads_gzip(tmp_path):
    rows = [{"q": "café", "answers": ["a", "b"]}, {"q": "two", "n": 2}]
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, rows)
    path.write_text(path.read_text().replace("\n", "\n\n", 1))
    assert read_jsonl(path) == rows
    packed = tmp_path / "rows.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert read_jsonl(packed) == rows


@pytest.mark.parametrize("line, message", [
    ('{"q": 1', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"q": 1, "q": 2}', "key 'q' appears twice in one object"),
])
def test_a_bad_line_is_refused_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": 0}\n\n' + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: {message}")):
        read_jsonl(path)


def test_a_missing_file_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'absent.jsonl'}: cannot be read")):
        read_jsonl(tmp_path / "absent.jsonl")
