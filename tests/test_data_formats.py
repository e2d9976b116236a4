"""Source formats (rm-static, hh-rlhf, canonical), the hub registry, local layouts (gz, DeepSpeed-Chat's
train.json/eval.json), blending formats across ``--data_path`` entries, and the tokenised cache."""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import datasets
import pytest

from utils.data import DataError, load_split
from utils.data_cache import cache_folder, cached_dataset, data_fingerprint
from utils.data_formats import (CANONICAL, HH_RLHF, RM_STATIC, detect_format, hub_format, split_dialogue,
                                split_hub_name)
from utils.data_split import load_phase_data, phase_indices
from utils.jsonl import json_lines

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
STEP1, STEP2, STEP3 = ("prompt", "response"), ("prompt", "chosen", "rejected"), ("prompt",)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # not the user's cache


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _dialogue(question: str, reply: str, earlier: str = "") -> str:
    return f"{earlier}\n\nHuman: {question}\n\nAssistant: {reply}"


def _hh(i: int) -> dict:
    earlier = _dialogue("hi", "hello")  # a second turn: the prompt must run to the LAST assistant turn
    return {"chosen": _dialogue(f"q{i}?", f"good {i}", earlier), "rejected": _dialogue(f"q{i}?", f"bad {i}", earlier)}


def _rm_static(i: int, response: bool = True) -> dict:
    row = {"prompt": f"\n\nHuman: q{i}?\n\nAssistant:", "chosen": f" good {i}", "rejected": f" bad {i}"}
    return {**row, "response": f" sft {i}"} if response else row


# --- detection and the registry -------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [("Dahoas/rm-static", RM_STATIC), ("Dahoas/full-hh-rlhf", RM_STATIC),
                                       ("Anthropic/hh-rlhf", HH_RLHF), ("Anthropic/hh-rlhf/harmless-base", HH_RLHF),
                                       ("anthropic/HH-RLHF/helpful-base", HH_RLHF),
                                       ("hooope/CONQORD_dataset/conqord_step1_data", RM_STATIC),
                                       ("someone/else", None)])
def test_registry_by_hub_name(name, fmt):
    assert hub_format(name) == fmt


def test_detection_by_columns_when_the_name_is_unknown():
    assert detect_format(["chosen", "rejected"]) == HH_RLHF
    assert detect_format(["prompt", "response", "chosen", "rejected"]) == RM_STATIC
    assert detect_format(["prompt", "chosen", "rejected"]) == RM_STATIC
    assert detect_format(["prompt", "response"]) == CANONICAL
    assert detect_format(["prompt", "answers"], hub_name="someone/else") == CANONICAL
    assert detect_format(["prompt", "chosen", "rejected"], hub_name="Anthropic/hh-rlhf") == HH_RLHF  # the name wins


def test_split_hub_name():
    assert split_hub_name("Anthropic/hh-rlhf/helpful-base") == ("Anthropic/hh-rlhf", "helpful-base")
    assert split_hub_name("hooope/CONQORD_dataset/conqord_step3_data") == ("hooope/CONQORD_dataset",
                                                                           "conqord_step3_data")
    assert split_hub_name("Dahoas/rm-static") == ("Dahoas/rm-static", None)


def test_split_dialogue_keeps_the_prompt_through_the_last_assistant_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: more  text "
    assert split_dialogue(text) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:", " more  text ")
    assert split_dialogue("\n\nHuman: no reply") is None


def test_hub_names_load_with_data_dir_and_convert(monkeypatch):
    calls = []

    def fake_load_dataset(name, data_dir=None, split=None, cache_dir=None):
        calls.append((name, data_dir, split))
        if split != "train":
            raise ValueError(f'Unknown split "{split}"')
        return datasets.Dataset.from_list([_hh(i) for i in range(3)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)  # no network in tests
    ds = load_split("Anthropic/hh-rlhf/helpful-base", "train", STEP2)
    assert calls == [("Anthropic/hh-rlhf", "helpful-base", "train")]
    assert ds.column_names == list(STEP2) and ds[0]["chosen"] == " good 0"
    assert load_split("Anthropic/hh-rlhf/helpful-base", "test", STEP2) is None


def test_hub_dataset_lacking_a_format_column_is_refused(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: datasets.Dataset.from_list([{"chosen": "\n\nHuman: q\n\nAssistant: a"}]))
    with pytest.raises(DataError, match=r"\['rejected'\] missing for its hh-rlhf format"):
        load_split("Anthropic/hh-rlhf", "train", STEP2)


# --- local formats --------------------------------------------------------------------------------

def test_rm_static_rows_for_each_step(tmp_path):
    folder = tmp_path / "rm"
    _jsonl(folder / "train.jsonl", [_rm_static(i) for i in range(4)])
    _jsonl(folder / "test.jsonl", [_rm_static(9, response=False)])
    step1 = load_split(str(folder), "train", STEP1)
    assert step1.column_names == list(STEP1) and step1["response"][0] == " sft 0"
    assert load_split(str(folder), "test", STEP1)["response"] == [" good 9"]  # no response: the chosen one
    step2 = load_split(str(folder), "train", STEP2)
    assert step2[1] == {"prompt": "\n\nHuman: q1?\n\nAssistant:", "chosen": " good 1", "rejected": " bad 1"}
    assert load_split(str(folder), "train", STEP3).column_names == ["prompt"]


def test_hh_rlhf_rows_for_each_step(tmp_path):
    file = _jsonl(tmp_path / "hh.jsonl", [_hh(i) for i in range(3)])
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: q1?\n\nAssistant:"
    assert load_split(str(file), "train", STEP1)[1] == {"prompt": prompt, "response": " good 1"}
    assert load_split(str(file), "train", STEP2)[1] == {"prompt": prompt, "chosen": " good 1", "rejected": " bad 1"}
    assert load_split(str(file), "train", STEP3)[1] == {"prompt": prompt}


def test_hh_rlhf_unusable_pairs_are_dropped_and_counted(tmp_path, capsys):
    other = {"chosen": _dialogue("q?", "yes"), "rejected": _dialogue("another q?", "no")}
    no_turn = {"chosen": "\n\nHuman: q?", "rejected": "\n\nHuman: q?"}
    empty = {"chosen": _dialogue("q?", ""), "rejected": _dialogue("q?", "no")}
    file = _jsonl(tmp_path / "hh.jsonl", [_hh(0), other, no_turn, empty, _hh(1)])
    pairs = load_split(str(file), "train", STEP2)
    assert pairs["chosen"] == [" good 0", " good 1"]
    out = capsys.readouterr().out
    assert "dropped 3 of 5 hh-rlhf rows" in out and "chosen and rejected prompts differ: 1" in out
    # step 1 learns the chosen reply only: a pair with another rejected prompt still serves
    assert load_split(str(file), "train", STEP1)["response"] == [" good 0", " yes", " good 1"]
    assert len(load_split(str(file), "train", STEP3)) == 4  # prompts need no reply


def test_hh_rlhf_row_missing_rejected_names_the_line(tmp_path):
    file = _jsonl(tmp_path / "hh.jsonl", [_hh(0), {"chosen": _hh(1)["chosen"], "rejected": ""}])
    with pytest.raises(DataError, match=r"hh.jsonl:2: key 'rejected' is empty"):
        load_split(str(file), "train", STEP2)
    assert len(load_split(str(file), "train", STEP1)) == 2  # step 1 does not read 'rejected'


def test_deepspeed_chat_layout_train_json_and_eval_json(tmp_path):
    folder = tmp_path / "ds_chat"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps([_rm_static(i, response=False) for i in range(5)]))
    (folder / "eval.json").write_text(json.dumps([_rm_static(7, response=False)]))
    train, evaluation = load_phase_data([str(folder)], [1.0, 0.0, 0.0], phase=0, required=STEP1, seed=1,
                                        allow_missing_confidence=True)  # rm-static replies state none
    assert len(train) == 5 and train.column_names == list(STEP1)
    assert evaluation["response"] == [" good 7"]


@pytest.mark.parametrize("name", ["train.jsonl.gz", "train.json.gz"])
def test_gzipped_files(tmp_path, name):
    file = _jsonl(tmp_path / "gz" / name, [_hh(i) for i in range(3)])
    assert load_split(str(file), "train", STEP2)["rejected"] == [" bad 0", " bad 1", " bad 2"]
    assert len(load_split(str(tmp_path / "gz"), "train", STEP1)) == 3  # found in a folder too


def test_gzipped_bad_line_names_file_and_line(tmp_path):
    file = tmp_path / "bad.jsonl.gz"
    with gzip.open(file, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(_hh(0)) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl.gz:2: not valid JSON"):
        load_split(str(file), "train", STEP2)


def test_a_gz_that_is_not_gzip_is_one_clear_error(tmp_path):
    file = tmp_path / "fake.jsonl.gz"
    file.write_text(json.dumps(_hh(0)))
    with pytest.raises(DataError, match="fake.jsonl.gz: cannot be read"):
        load_split(str(file), "train", STEP2)


def test_unsupported_file_type(tmp_path):
    file = tmp_path / "rows.txt"
    file.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_split(str(file), "train", STEP1)


# --- the real hh-rlhf file ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hh_file() -> Path:
    if not HH_FILE.is_file():
        pytest.skip(f"{HH_FILE} absent (the shared copy of Anthropic/hh-rlhf harmless-base test)")
    return HH_FILE


def test_real_hh_rlhf_harmless_file(hh_file, capsys):
    assert sum(1 for _ in json_lines(hh_file)) == 2312
    pairs, evaluation = load_phase_data([str(hh_file)], [0.0, 1.0, 0.0], phase=1, required=STEP2, seed=0)
    assert evaluation is None  # a single file is all train rows
    assert "dropped 9 of 2312 hh-rlhf rows" in capsys.readouterr().out  # 5 prompt mismatches, 4 empty replies
    assert len(pairs) == 2303
    assert all(p.endswith("\n\nAssistant:") and p.startswith("\n\nHuman:") for p in pairs["prompt"])
    assert all(c.strip() and r.strip() for c, r in zip(pairs["chosen"], pairs["rejected"]))
    assert all(c.startswith(" ") for c in pairs["chosen"][:100])  # the reply keeps its leading space
    prompts, _ = load_phase_data([str(hh_file)], [0.0, 0.0, 1.0], phase=2, required=STEP3, seed=0)
    assert len(prompts) == 2312


# --- blending -------------------------------------------------------------------------------------

def test_blending_formats_with_data_split(tmp_path):
    hh = _jsonl(tmp_path / "hh.jsonl.gz", [_hh(i) for i in range(12)])
    rm = tmp_path / "rm"
    _jsonl(rm / "train.jsonl", [_rm_static(100 + i) for i in range(9)])
    _jsonl(rm / "test.jsonl", [_rm_static(999)])
    paths, split = [str(hh), str(rm)], [1.0, 1.0, 1.0]
    seen = set()
    for phase, required in enumerate((STEP1, STEP2, STEP3)):
        train, evaluation = load_phase_data(paths, split, phase, required, seed=5, allow_missing_confidence=True)
        assert train.column_names == list(required)
        expected = len(phase_indices(12, split, phase, 5)) + len(phase_indices(9, split, phase, 5))
        assert len(train) == expected == 7  # 4 hh-rlhf rows + 3 rm-static rows per step
        prompts = set(train["prompt"])
        assert any("Human: hi" in p for p in prompts) and any("q10" in p for p in prompts)  # both sources
        assert prompts.isdisjoint(seen)  # the steps' shares do not overlap
        seen |= prompts
        assert evaluation["prompt"] == ["\n\nHuman: q999?\n\nAssistant:"]


def test_max_train_examples_samples_the_whole_blend(tmp_path):
    hh = _jsonl(tmp_path / "hh.jsonl", [_hh(i) for i in range(20)])
    rm = _jsonl(tmp_path / "rm" / "train.jsonl", [_rm_static(100 + i) for i in range(20)])
    train, _ = load_phase_data([str(hh), str(rm.parent)], [1, 0, 0], 0, STEP1, seed=3, max_train=10,
                               allow_missing_confidence=True)
    sources = ["Human: hi" in p for p in train["prompt"]]
    assert len(train) == 10 and any(sources) and not all(sources)  # rows from both datasets, not the first ten
    again, _ = load_phase_data([str(hh), str(rm.parent)], [1, 0, 0], 0, STEP1, seed=3, max_train=10,
                               allow_missing_confidence=True)
    assert again["prompt"] == train["prompt"]  # seeded


def test_blending_keeps_optional_columns_only_where_all_sources_have_them(tmp_path):
    qa = _jsonl(tmp_path / "qa.jsonl", [{"prompt": f"Q{i}", "answers": [f"a{i}"]} for i in range(3)])
    hh = _jsonl(tmp_path / "hh.jsonl", [_hh(i) for i in range(3)])
    only_qa, _ = load_phase_data([str(qa)], [0, 0, 1], 2, STEP3, seed=0, optional=("answers",))
    assert only_qa.column_names == ["prompt", "answers"]
    blended, _ = load_phase_data([str(qa), str(hh)], [0, 0, 1], 2, STEP3, seed=0, optional=("answers",))
    assert blended.column_names == ["prompt"] and len(blended) == 6


# --- the tokenised cache --------------------------------------------------------------------------

def _args(data: Path, **overrides) -> argparse.Namespace:
    return argparse.Namespace(**{"data_path": [str(data)], "data_split": [1.0, 0.0, 0.0], "seed": 1,
                                 "max_train_examples": None, "allow_missing_confidence": False, **overrides})


def test_cache_is_written_once_then_reused(tmp_path, toy_tokenizer, capsys):
    data = _jsonl(tmp_path / "d" / "train.jsonl", [{"prompt": "p", "response": "r"}])
    builds = []

    def build() -> datasets.DatasetDict:
        builds.append(1)
        return datasets.DatasetDict(train=datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]]}),
                                    eval=datasets.Dataset.from_dict({"input_ids": [[4]]}))

    root = str(tmp_path / "cache")
    fingerprint = data_fingerprint(_args(data.parent), toy_tokenizer, step="step1", phase=0, columns=STEP1, max_len=8)
    first = cached_dataset(root, fingerprint, build)
    assert "data cache: wrote" in capsys.readouterr().out
    second = cached_dataset(root, fingerprint, build)
    assert "data cache: reused" in capsys.readouterr().out
    assert len(builds) == 1
    assert second["train"]["input_ids"] == first["train"]["input_ids"] == [[1, 2, 3]]
    assert second["eval"]["input_ids"] == [[4]]
    folder = cache_folder(root, fingerprint)
    assert folder.parent == Path(root) / "tokenized"
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind

    longer = data_fingerprint(_args(data.parent), toy_tokenizer, step="step1", phase=0, columns=STEP1, max_len=16)
    assert cache_folder(root, longer) != folder
    cached_dataset(root, longer, build)
    assert len(builds) == 2


def test_cache_key_follows_the_data_and_flags(tmp_path, toy_tokenizer):
    data = _jsonl(tmp_path / "d" / "train.jsonl", [{"prompt": "p", "response": "r"}])

    def key(**overrides) -> Path:
        return cache_folder("root", data_fingerprint(_args(data.parent, **overrides), toy_tokenizer, step="step1",
                                                     phase=0, columns=STEP1, max_len=8))

    base = key()
    assert key() == base
    assert key(data_split=[2.0, 4.0, 4.0]) != base and key(seed=2) != base and key(max_train_examples=5) != base
    assert key(allow_missing_confidence=True) != base  # a cache built with the flag must not skip the refusal
    _jsonl(data, [{"prompt": "p", "response": "r"}, {"prompt": "p2", "response": "r2"}])  # the file changed
    assert key() != base


def test_no_cache_root_builds_every_time(capsys):
    builds = []
    ds = cached_dataset(None, {"any": 1}, lambda: builds.append(1) or datasets.Dataset.from_dict({"x": [1]}))
    cached_dataset(None, {"any": 1}, lambda: builds.append(1) or datasets.Dataset.from_dict({"x": [1]}))
    assert ds["x"] == [1] and len(builds) == 2 and "data cache" not in capsys.readouterr().out
