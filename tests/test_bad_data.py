"""Bad data files stop at load time with one line naming the file (and line or row): empty files, values
of the wrong type, bytes that are not UTF-8, and malformed layouts, for steps 1-3 (utils.data) and step
4's benchmarks."""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from step4_evaluation.benchmarks import load_nq_open, load_toy, load_truthfulqa
from utils.data import DataError, load_split
from utils.data_split import load_phase_data

STEP1, STEP2, STEP3 = ("prompt", "response"), ("prompt", "chosen", "rejected"), ("prompt",)
GOOD = {"prompt": "Q?", "response": " a", "chosen": " a", "rejected": " b", "answers": ["a"]}
TQA_HEADER = "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
LATIN1 = "caf\u00e9".encode("latin-1")  # 0xe9 alone is not UTF-8
BARE_PARIS = re.escape("""key 'answers' must be a list of strings, not the bare string "Paris"; """
                       """give a list, e.g. ["Paris"]""")


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _refused(match: str, load, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        load(*args, **kwargs)
    assert "\n" not in str(info.value)  # one line
    return str(info.value)


def _parquet(path: Path, columns: dict, names: list[str] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pa.array(values, type=pa.string() if not values else None) for values in columns.values()]
    pq.write_table(pa.table(arrays, names=names or list(columns)), path)
    return path


# --- empty files (steps 1-3) ----------------------------------------------------------------------

def _write_empty(path: Path, kind: str) -> None:
    contents = {"zero": b"", "blank": b"\n  \n\t\n", "array": b" [ ]\n", "header": b"prompt,response\n\n"}
    if path.name.endswith(".parquet"):
        if kind == "zero":
            path.write_bytes(b"")
        else:
            _parquet(path, {"prompt": [], "response": []})
    elif path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(contents[kind]))
    else:
        path.write_bytes(contents[kind])


@pytest.mark.parametrize("name, kind", [
    ("train.jsonl", "zero"), ("train.jsonl", "blank"), ("train.jsonl.gz", "zero"), ("train.jsonl.gz", "blank"),
    ("train.json", "zero"), ("train.json", "blank"), ("train.json", "array"), ("train.json.gz", "blank"),
    ("train.csv", "zero"), ("train.csv", "blank"), ("train.csv", "header"),
    ("train.parquet", "zero"), ("train.parquet", "rows"),
])
def test_empty_file_is_refused_by_name(tmp_path, name, kind):
    file = tmp_path / name
    _write_empty(file, kind)
    _refused(re.escape(f"{file}: empty (no rows); "), load_phase_data, [str(tmp_path)], [1.0, 0.0, 0.0], 0,
             STEP1, seed=0)


def test_empty_test_split_is_refused_too(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [GOOD])
    (tmp_path / "test.jsonl").write_text("\n")
    _refused(re.escape(f"{tmp_path / 'test.jsonl'}: empty (no rows)"), load_phase_data, [str(tmp_path)],
             [1.0, 0.0, 0.0], 0, STEP1, seed=0)


# --- values of the wrong type (steps 1-3) ---------------------------------------------------------

@pytest.mark.parametrize("required, bad, expected", [
    (STEP1, {"prompt": 7}, "key 'prompt' must be a string, got int"),
    (STEP1, {"response": [" a"]}, "key 'response' must be a string, got list"),
    (STEP2, {"chosen": {"text": " a"}}, "key 'chosen' must be a string, got dict"),
    (("prompt", "answers"), {"answers": 3}, "key 'answers' must be a list of strings, got int"),
    (("prompt", "answers"), {"answers": "Paris"}, BARE_PARIS),
    (("prompt", "answers"), {"answers": ["a", 1]}, "key 'answers' holds an int .1.; every answer must be a string"),
    (("prompt", "answers"), {"answers": ["", " "]}, "key 'answers' is an empty answer list"),
    (("prompt", "answers"), {"answers": ["a", " "]}, "key 'answers' holds an empty answer"),
])
def test_value_of_the_wrong_type_names_file_line_and_key(tmp_path, required, bad, expected):
    file = _jsonl(tmp_path / "train.jsonl", [GOOD, GOOD, {**GOOD, **bad}])
    _refused(re.escape(f"{file}:3: ") + expected, load_split, str(file), "train", required)


def test_wrong_types_in_a_json_array_and_parquet_name_the_row(tmp_path):
    array = tmp_path / "train.json"
    array.write_text(json.dumps([GOOD, {**GOOD, "response": 5}], indent=2))  # the second object starts on line 11
    _refused(re.escape(f"{array}:11: key 'response' must be a string, got int"), load_split, str(array), "train",
             STEP1)
    parquet = tmp_path / "train.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([1, 2]), "response": pa.array(["a", "b"])}), parquet)
    _refused(re.escape(f"{parquet} row 1: key 'prompt' must be a string, got int"), load_split, str(parquet),
             "train", STEP1)


def test_rm_static_response_is_type_checked_where_given(tmp_path):
    rm = {"prompt": "\n\nHuman: q?\n\nAssistant:", "chosen": " a", "rejected": " b"}
    file = _jsonl(tmp_path / "train.jsonl", [rm, {**rm, "response": None}, {**rm, "response": ["x"]}])
    _refused(re.escape(f"{file}:3: key 'response' must be a string, got list"), load_split, str(file), "train", STEP1)


def test_csv_cells_stay_text(tmp_path):
    """pandas read '1' as the float 1.0 and 'NA' as a missing value: a prompt "1" became 1.0."""
    file = tmp_path / "train.csv"
    file.write_text("prompt,response\n1,NA\n007,null\n")
    rows = load_split(str(file), "train", STEP1)
    assert rows["prompt"] == ["1", "007"] and rows["response"] == ["NA", "null"]


# --- step 3's optional answers, over the whole file -----------------------------------------------

def _step3(paths: list[str]):
    return load_phase_data(paths, [0.0, 0.0, 1.0], 2, STEP3, seed=0, optional=("answers",))


@pytest.mark.parametrize("bad, expected", [
    ({"answers": 3}, "key 'answers' must be a list of strings, got int"),
    ({"answers": "Paris"}, BARE_PARIS),
    ({"answers": [None]}, "key 'answers' holds a NoneType"),
    ({"answers": None}, "key 'answers' is empty"),
    ({"prompt": "Q?"}, re.escape("missing key 'answers'")),
])
def test_optional_answers_are_checked_in_every_row(tmp_path, bad, expected):
    rows = [{"prompt": f"Q{i}?", "answers": [f"a{i}"]} for i in range(5)]
    rows[3] = {"prompt": "Q3?", **bad} if "prompt" not in bad else bad
    file = _jsonl(tmp_path / "train.jsonl", rows)
    _refused(re.escape(f"{file}:4: ") + expected, _step3, [str(file)])


def test_optional_answers_only_in_later_rows_are_refused(tmp_path):
    file = _jsonl(tmp_path / "train.jsonl", [{"prompt": "Q1?"}, {"prompt": "Q2?", "answers": ["a"]}])
    _refused(re.escape(f"{file}:2: key 'answers' is given here but not in the first row"), _step3, [str(file)])


def test_optional_answers_are_checked_in_a_csv_too(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("prompt,answers\nQ?,Paris\n")  # a CSV cell is a string: it cannot hold a list
    _refused(re.escape(f"{file} row 2: key 'answers' must be a list of strings"), _step3, [str(file)])


def test_optional_answers_load_and_stay_lists(tmp_path):
    file = _jsonl(tmp_path / "train.jsonl", [{"prompt": f"Q{i}?", "answers": [f"a{i}", "b"]} for i in range(3)])
    prompts, _ = _step3([str(file)])
    assert prompts["answers"] == [["a0", "b"], ["a1", "b"], ["a2", "b"]]


# --- bytes that are not UTF-8 (steps 1-3) ---------------------------------------------------------

@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz", "train.json", "train.csv"])
def test_non_utf8_names_file_and_line(tmp_path, name):
    header = b"prompt,response\n" if name.endswith(".csv") else b""
    good = b"p,r\n" if name.endswith(".csv") else json.dumps(GOOD).encode() + b"\n"
    bad = b"p," + LATIN1 + b"\n" if name.endswith(".csv") else b'{"prompt": "' + LATIN1 + b'", "response": "r"}\n'
    data = header + good + good + bad
    file = tmp_path / name
    file.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    line = 4 if header else 3
    _refused(re.escape(f"{file}:{line}: not UTF-8 (byte 0xe9 at byte ") + r"\d+" + re.escape(" of the line); re-save"),
             load_split, str(file), "train", STEP1)


# --- malformed layouts (steps 1-3) ----------------------------------------------------------------

def test_json_array_of_non_objects_names_the_row(tmp_path):
    file = tmp_path / "train.json"
    file.write_text(json.dumps([GOOD, "just a string"]))
    _refused(re.escape(f"{file}:1: expected a JSON object, got str"), load_split, str(file), "train", STEP1)


def test_invalid_json_array_names_the_line(tmp_path):
    file = tmp_path / "train.json"
    file.write_text('[\n  {"prompt": "p", "response": "r"},\n  {"prompt": "p" "response": "r"}\n]\n')
    _refused(re.escape(f"{file}:3: not valid JSON"), load_split, str(file), "train", STEP1)


@pytest.mark.parametrize("text, line, message", [
    ('[\n  {"prompt": "p", "response": "r"},\n]\n', 3, "Expecting value"),  # a trailing comma
    ('[\n  {"prompt": "p", "response": "r"}\n  {"prompt": "p", "response": "r"}\n]\n', 3, "Expecting ',' delimiter"),
    ('[\n  {"prompt": "p", "response": "r"}\n', 3, "the array is not closed"),
    ('[{"prompt": "p", "response": "r"}]\n\n[]\n', 3, "Extra data after the array"),
])
def test_malformed_json_array_names_the_line(tmp_path, text, line, message):
    """The array is read one item at a time (to name each row's line): its syntax is checked as json.loads does."""
    file = tmp_path / "train.json"
    file.write_text(text)
    _refused(re.escape(f"{file}:{line}: not valid JSON ({message}); fix it"), load_split, str(file), "train", STEP1)


def test_csv_without_header_says_so(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("p1,r1\np2,r2\n")
    _refused(re.escape(f"{file}: no column 'prompt' (columns: ['p1', 'r1']); the first line must be the header"),
             load_split, str(file), "train", STEP1)


def test_csv_duplicate_column_is_refused(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("prompt,response,prompt\np,r,q\n")
    _refused(re.escape(f"{file} row 1: column 'prompt' appears twice in the header"), load_split, str(file),
             "train", STEP1)


def test_csv_row_with_an_unquoted_comma_is_refused(tmp_path):
    """pandas took the first cells and dropped the rest of the text silently."""
    file = tmp_path / "train.csv"
    file.write_text("prompt,response\np,r\nQ?, yes, and more\n")
    _refused(re.escape(f"{file} row 3: 3 cells, the header has 2"), load_split, str(file), "train", STEP1)


def test_parquet_duplicate_column_is_refused(tmp_path):
    file = _parquet(tmp_path / "train.parquet", {"a": ["p"], "b": ["r"], "c": ["q"]}, names=["prompt", "response",
                                                                                              "prompt"])
    _refused(re.escape(f"{file}: column 'prompt' appears twice"), load_split, str(file), "train", STEP1)


def test_folder_without_train_file_lists_what_it_holds(tmp_path):
    (tmp_path / "train.txt").write_text("x")
    _refused(re.escape(f"--data_path {tmp_path}: no train file (expected train.jsonl, ") + ".*"
             + re.escape("the folder holds: train.txt)"), load_phase_data, [str(tmp_path)], [1.0, 0.0, 0.0], 0,
             STEP1, seed=0)


def test_folder_with_two_train_files_is_refused(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [GOOD])
    (tmp_path / "train.csv").write_text("prompt,response\np,r\n")
    _refused(re.escape(f"--data_path {tmp_path}: train.jsonl and train.csv both hold the train split; keep one"),
             load_split, str(tmp_path), "train", STEP1)


# --- step 4's benchmarks --------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\n \n"])
@pytest.mark.parametrize("load", [load_toy, load_nq_open])
def test_benchmark_jsonl_empty(tmp_path, load, content):
    file = tmp_path / "test.jsonl"
    file.write_bytes(content)
    _refused(re.escape(f"{file}: empty (no rows); "), load, str(file))


@pytest.mark.parametrize("content", ["", "\n\n", TQA_HEADER])
def test_truthfulqa_csv_empty(tmp_path, content):
    file = tmp_path / "tqa.csv"
    file.write_text(content)
    _refused(re.escape(f"{file}: empty (no rows); "), load_truthfulqa, str(file))


@pytest.mark.parametrize("key", ["answers", "answer"])
@pytest.mark.parametrize("value, expected", [
    ("Paris", re.escape('the bare string "Paris"; give a list, e.g. ["Paris"]')),
    ([1, "a"], "holds an int .1.; every answer must be a string"),
    ([None, "a"], "holds a NoneType"),
    (["a", ""], "holds an empty answer"),
])
@pytest.mark.parametrize("load", [load_toy, load_nq_open])
def test_benchmark_answers_must_be_a_list_of_strings(tmp_path, load, key, value, expected):
    file = _jsonl(tmp_path / "test.jsonl", [{"question": "Q1?", key: ["a"]}, {"question": "Q2?", key: value}])
    _refused(re.escape(f"{file}:2: key '{key}' ") + ".*" + expected, load, str(file))


@pytest.mark.parametrize("load", [load_toy, load_nq_open])
def test_benchmark_jsonl_not_utf8(tmp_path, load):
    file = tmp_path / "test.jsonl"
    file.write_bytes(b'{"question": "Q?", "answers": ["a"]}\n{"question": "' + LATIN1 + b'", "answers": ["a"]}\n')
    _refused(re.escape(f"{file}:2: not UTF-8 (byte 0xe9"), load, str(file))


def test_truthfulqa_csv_not_utf8(tmp_path):
    file = tmp_path / "tqa.csv"
    file.write_bytes(TQA_HEADER.encode() + b"A,B,Q?,Best,Best,Wrong,s\nA,B," + LATIN1 + b"?,Best,Best,Wrong,s\n")
    _refused(re.escape(f"{file}:3: not UTF-8 (byte 0xe9"), load_truthfulqa, str(file))


def test_truthfulqa_csv_row_with_extra_cells(tmp_path):
    file = tmp_path / "tqa.csv"
    file.write_text(TQA_HEADER + "A,B,Q?,Best,Best,Wrong,s\nA,B,Q, with a comma?,Best,Best,Wrong,s\n")
    _refused(re.escape(f"{file}:3: 8 cells, the header has 7"), load_truthfulqa, str(file))


# --- in-process runs: the refusal comes at start, before any model loads ---------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, toy_tokenizer) -> dict[str, Path]:
    """A one-layer Llama (step 1's output) and a one-layer reward model (step 2's)."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from utils.model import save_hf_checkpoint
    from worlds.toy_world import create_tiny_llama

    root = tmp_path_factory.mktemp("bad_data_models")
    lm = create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    config = LlamaConfig(vocab_size=len(toy_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=toy_tokenizer.pad_token_id)
    rm = AutoModelForSequenceClassification.from_config(config)
    return {"lm": save_hf_checkpoint(lm, toy_tokenizer, root / "lm"),
            "rm": save_hf_checkpoint(rm, toy_tokenizer, root / "rm")}


def test_step3_refuses_an_int_answers_row_before_building_engines(tmp_path, tiny_models, monkeypatch, capsys):
    """With the reward model's quality, ``answers`` is optional; an int in row 3 crashed the rollout of its batch."""
    from step3_RL_finetune_LLM import trainer
    from step3_RL_finetune_LLM.main import main

    monkeypatch.setattr(trainer, "build_engines", lambda *a, **k: pytest.fail("the engines were built first"))
    rows = [{"prompt": f"Q{i}?", "answers": [f"a{i}"]} for i in range(4)]
    rows[2]["answers"] = 3
    data = _jsonl(tmp_path / "ppo" / "train.jsonl", rows)
    out = tmp_path / "out"
    code = main(["--data_path", str(data.parent), "--data_split", "0,0,10", "--actor_model_name_or_path",
                 str(tiny_models["lm"]), "--critic_model_name_or_path", str(tiny_models["rm"]),
                 "--output_dir", str(out), "--quality_reward", "model", "--dtype", "fp32"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == f"error: {data}:3: key 'answers' must be a list of strings, got int\n"


def test_step1_refuses_an_empty_train_file_before_loading_the_model(tmp_path, tiny_models, monkeypatch, capsys):
    import dataclasses

    from step1_supervised_finetuning_LM import sft
    from step1_supervised_finetuning_LM.main import main

    monkeypatch.setattr(sft, "STEP", dataclasses.replace(sft.STEP, create_model=lambda *a, **k: pytest.fail("loaded")))
    data = tmp_path / "sft" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("\n")
    out = tmp_path / "out"
    code = main(["--data_path", str(data.parent), "--model_name_or_path", str(tiny_models["lm"]), "--output_dir",
                 str(out), "--dtype", "fp32"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == f"error: {data}: empty (no rows); add rows to it or remove it\n"
