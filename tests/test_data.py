"""utils.data: line-precise data errors, the per-step split, SFT labels and prompt collation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from utils.collate import IGNORE_INDEX, collate_prompts, collate_sft, pad_batch, sft_features
from utils.data import DataError, load_split
from utils.data_split import load_phase_data, phase_indices

REQUIRED = ("prompt", "response")


def _write(folder, lines, name="train.jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _row(prompt="### Question: q?\n### Answer:", response=" a\n### Confidence: 0.5"):
    return json.dumps({"prompt": prompt, "response": response})


def test_invalid_json_names_file_and_line(tmp_path):
    path = _write(tmp_path / "d", [_row(), _row(), '{"prompt": "x", "response": ', _row()])
    with pytest.raises(DataError) as info:
        load_split(str(tmp_path / "d"), "train", REQUIRED, cache_dir=str(tmp_path / "cache"))
    assert str(path) in str(info.value)
    assert f"{path}:3" in str(info.value)


def test_missing_key_names_key_and_line(tmp_path):
    path = _write(tmp_path / "d", [_row(), json.dumps({"prompt": "only a prompt"}), _row()])
    with pytest.raises(DataError) as info:
        load_split(str(path), "train", REQUIRED, cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert f"{path}:2" in message
    assert "'response'" in message


@pytest.mark.parametrize("bad", [{"prompt": "p", "response": ""}, {"prompt": "p", "response": None},
                                 {"prompt": [], "response": "r"}])
def test_empty_value_is_refused(tmp_path, bad):
    path = _write(tmp_path / "d", [_row(), _row(), _row(), json.dumps(bad)])
    with pytest.raises(DataError, match=":4.*empty"):
        load_split(str(path), "train", REQUIRED, cache_dir=str(tmp_path / "cache"))


def test_non_object_row_is_refused(tmp_path):
    path = _write(tmp_path / "d", ['["prompt", "response"]'])
    with pytest.raises(DataError, match=":1"):
        load_split(str(path), "train", REQUIRED, cache_dir=str(tmp_path / "cache"))


def test_missing_local_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_split(str(tmp_path / "nope.jsonl"), "train", REQUIRED)


def test_load_phase_data_and_empty_phase(tmp_path):
    folder = tmp_path / "d"
    _write(folder, [_row(response=f" a{i}\n### Confidence: 0.5") for i in range(10)])
    _write(folder, [_row(response=" t\n### Confidence: 1")], name="test.jsonl")
    cache = str(tmp_path / "cache")
    train, evaluation = load_phase_data([str(folder)], [1.0, 1.0, 0.0], phase=0, required=REQUIRED, seed=3,
                                        cache_dir=cache)
    assert len(train) == 5 and len(evaluation) == 1
    other, _ = load_phase_data([str(folder)], [1.0, 1.0, 0.0], phase=1, required=REQUIRED, seed=3, cache_dir=cache)
    assert set(train["response"]).isdisjoint(other["response"])
    assert len(set(train["response"]) | set(other["response"])) == 10
    with pytest.raises(DataError, match="step 3"):
        load_phase_data([str(folder)], [1.0, 1.0, 0.0], phase=2, required=REQUIRED, seed=3, cache_dir=cache)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 101])
@pytest.mark.parametrize("split", [(2.0, 4.0, 4.0), (1.0, 1.0, 1.0), (10.0, 0.0, 0.0), (0.3, 0.3, 0.4)])
def test_phase_indices_partition(n, split):
    parts = [phase_indices(n, split, phase, seed=42) for phase in range(3)]
    joined = np.concatenate(parts)
    assert len(joined) == n  # disjoint and complete: no index twice, none missing
    assert sorted(joined.tolist()) == list(range(n))
    for part in parts:
        assert part.tolist() == sorted(part.tolist())


def test_phase_indices_sizes_follow_weights():
    sizes = [len(phase_indices(100, (2.0, 4.0, 4.0), phase, seed=0)) for phase in range(3)]
    assert sizes == [20, 40, 40]
    assert len(phase_indices(100, (10.0, 0.0, 0.0), 1, seed=0)) == 0
    # the seed shuffles, the same seed repeats
    assert phase_indices(100, (1, 1, 1), 0, seed=0).tolist() == phase_indices(100, (1, 1, 1), 0, seed=0).tolist()
    assert phase_indices(100, (1, 1, 1), 0, seed=0).tolist() != phase_indices(100, (1, 1, 1), 0, seed=1).tolist()


def test_sft_features_mask_the_prompt(toy_tokenizer):
    prompt = "### Question: What color is the flag of Firi?\n### Answer:"
    response = " red\n### Confidence: 0.8"
    features = sft_features(toy_tokenizer, prompt, response, max_len=128)
    ids, labels = features["input_ids"], features["labels"]
    prompt_ids = toy_tokenizer(prompt)["input_ids"]
    response_ids = toy_tokenizer(response, add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == toy_tokenizer.bos_token_id
    assert ids == prompt_ids + response_ids + [toy_tokenizer.eos_token_id]
    assert labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids):] == response_ids + [toy_tokenizer.eos_token_id]
    assert len(labels) == len(ids)


def test_sft_features_truncation_keeps_alignment(toy_tokenizer):
    prompt = "### Question: What color is the flag of Firi?\n### Answer:"
    features = sft_features(toy_tokenizer, prompt, " red\n### Confidence: 0.8", max_len=6)
    assert len(features["input_ids"]) == len(features["labels"]) == 6
    # the prompt gives way first (keeping one token), so the row still trains on its response's start
    response_ids = toy_tokenizer(" red\n### Confidence: 0.8", add_special_tokens=False)["input_ids"]
    assert features["labels"][0] == IGNORE_INDEX and features["labels"][1:] == response_ids[:5]
    # a short completion keeps all of it and the prompt's end
    short = sft_features(toy_tokenizer, prompt, " red", max_len=6)
    red = toy_tokenizer(" red", add_special_tokens=False)["input_ids"] + [toy_tokenizer.eos_token_id]
    assert short["input_ids"][-len(red):] == red and short["labels"].count(IGNORE_INDEX) == 6 - len(red)


def test_collate_prompts_left_pads():
    batch = collate_prompts([[5, 6, 7], [8], [9, 10]], pad_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8], [2, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_collate_sft_right_pads():
    batch = collate_sft([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}],
                        pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert pad_batch([[1], [2, 3]], 9, side="left").tolist() == [[9, 1], [2, 3]]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_other_local_formats_load_through_datasets(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"prompt": ["p1", "p2", "p3"], "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"]})
    folder = tmp_path / "pairs"
    folder.mkdir()
    file = folder / f"train{suffix}"
    {".csv": lambda: frame.to_csv(file, index=False), ".parquet": lambda: frame.to_parquet(file),
     ".json": lambda: frame.to_json(file, orient="records", lines=True)}[suffix]()
    ds = load_split(str(folder), "train", ("prompt", "chosen", "rejected"))
    assert ds["chosen"] == ["a", "b", "c"]
    assert load_split(str(folder), "test", ("prompt",)) is None


def test_csv_row_with_empty_value_names_the_row(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("prompt,response\np1,r1\np2,\n")
    with pytest.raises(DataError, match=r"train.csv row 3: key 'response' is empty"):
        load_split(str(file), "train", ("prompt", "response"))
