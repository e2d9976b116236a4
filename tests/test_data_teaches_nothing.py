"""Data that would teach nothing, or be misread, is not used silently: step-1-format responses without a
usable confidence (refused with counts per file, or counted and trained on with --allow_missing_confidence;
step 1 and step 3's PPO-ptx rows), reward pairs whose replies are the same (dropped and counted, refused when
none is left), evaluation without a test split (a warning on every run), a pretty-printed JSON object and
a JSON key named twice."""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path

import pytest

from step4_evaluation.benchmarks import load_toy
from tests.test_nq_world import HH, NQ, SMALL
from tests.test_run_state import _ppo, tiny_model  # noqa: F401  (a fixture)
from utils.data import DataError, load_split
from utils.data_split import load_phase_data

STEP1, STEP2 = ("prompt", "response"), ("prompt", "chosen", "rejected")
PROMPT = "### Question: q?\n### Answer:"
REFUSAL_END = ("; end each response with '### Confidence: <number in [0, 1]>', or pass --allow_missing_confidence "
               "to train on them as they are")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _sft(confidence: str | None) -> dict:
    return {"prompt": PROMPT, "response": " a" + ("" if confidence is None else f"\n### Confidence: {confidence}")}


def _pair(chosen: str, rejected: str) -> dict:
    return {"prompt": PROMPT, "chosen": chosen, "rejected": rejected}


def _faults(tmp_path: Path) -> tuple[list[str], list[str]]:
    """Two entries with responses that state no usable confidence, and what is said of each split."""
    a = _jsonl(tmp_path / "a.jsonl", [_sft("0.5"), _sft(None), _sft("1.7"), _sft("-0.2"), _sft("nan"), _sft("90%")])
    b = tmp_path / "b"
    _jsonl(b / "train.jsonl", [_sft("1"), _sft(None)])
    _jsonl(b / "test.jsonl", [_sft(None)])
    faults = [f"{a} (train): 4 of 6 responses state no usable confidence (no readable number after the tag: 2, "
              f"no confidence line: 1, outside [0, 1]: 1; first at {a}:2)",
              f"{b} (train): 1 of 2 responses state no usable confidence (no confidence line: 1; first at "
              f"{b / 'train.jsonl'}:2)",
              f"{b} (test): 1 of 1 responses state no usable confidence (no confidence line: 1; first at "
              f"{b / 'test.jsonl'}:1)"]
    return [str(a), str(b)], faults


class _Reached(Exception):
    """Raised where a run gets past its data checks (the model or the engines are next)."""


def _reached(*args, **kwargs):
    raise _Reached


def _step1(monkeypatch, model: Path, out: Path, *argv: str) -> int:
    from step1_supervised_finetuning_LM import sft
    from step1_supervised_finetuning_LM.main import main

    monkeypatch.setattr(sft, "STEP", dataclasses.replace(sft.STEP, create_model=_reached))
    return main(["--model_name_or_path", str(model), "--output_dir", str(out), "--dtype", "fp32", *argv])


# --- step-1 responses without a usable confidence -------------------------------------------------------

def test_responses_without_a_usable_confidence_are_refused_with_counts_per_file(tmp_path):
    paths, faults = _faults(tmp_path)
    with pytest.raises(DataError) as info:
        load_phase_data(paths, [1.0, 0.0, 0.0], 0, STEP1, seed=0)
    assert str(info.value) == "; ".join(faults) + REFUSAL_END


def test_allowed_they_are_counted_per_file_and_trained_on(tmp_path, capsys):
    paths, faults = _faults(tmp_path)
    train, evaluation = load_phase_data(paths, [1.0, 0.0, 0.0], 0, STEP1, seed=0, allow_missing_confidence=True)
    assert len(train) == 8 and len(evaluation) == 1
    printed = [text for text in capsys.readouterr().out.splitlines() if "usable confidence" in text]
    assert printed == [f"{fault}; training on them (--allow_missing_confidence)" for fault in faults]


def test_step1_refuses_them_before_loading_the_model_unless_allowed(tmp_path, tiny_model, monkeypatch,  # noqa: F811
                                                                   capsys):
    paths, faults = _faults(tmp_path)
    out = tmp_path / "out"
    assert _step1(monkeypatch, tiny_model, out, "--data_path", *paths, "--data_split", "1,0,0") == 2
    assert capsys.readouterr().err == f"error: {'; '.join(faults)}{REFUSAL_END}\n" and not out.exists()
    with pytest.raises(_Reached):
        _step1(monkeypatch, tiny_model, out, "--data_path", *paths, "--data_split", "1,0,0",
               "--allow_missing_confidence")
    assert f"{faults[0]}; training on them (--allow_missing_confidence)" in capsys.readouterr().out.splitlines()


def test_ppo_ptx_rows_are_checked_too(toy_world_dir, tiny_model, tmp_path, monkeypatch, capsys):  # noqa: F811
    from step3_RL_finetune_LLM import trainer

    monkeypatch.setattr(trainer, "build_engines", _reached)
    ptx = _jsonl(tmp_path / "ptx.jsonl", [_sft("0.3"), _sft(None)])
    fault = f"{ptx} (train): 1 of 2 responses state no usable confidence (no confidence line: 1; first at {ptx}:2)"
    with pytest.raises(DataError, match=re.escape(fault + REFUSAL_END)):
        _ppo(toy_world_dir, tiny_model, tmp_path / "out", "--max_steps", "1", "--unsupervised_dataset_name", str(ptx))
    with pytest.raises(_Reached):
        _ppo(toy_world_dir, tiny_model, tmp_path / "out", "--max_steps", "1", "--unsupervised_dataset_name", str(ptx),
             "--allow_missing_confidence")
    assert f"{fault}; training on them (--allow_missing_confidence)" in capsys.readouterr().out


def test_the_toy_world_passes_every_check(toy_world_dir, capsys):
    train, evaluation = load_phase_data([str(toy_world_dir / "step1_sft")], [1.0, 0.0, 0.0], 0, STEP1, seed=0)
    pairs, _ = load_phase_data([str(toy_world_dir / "step2_reward")], [0.0, 1.0, 0.0], 1, STEP2, seed=0)
    assert len(train) and len(evaluation) and len(pairs)
    assert "dropped" not in capsys.readouterr().out


def test_the_nq_world_passes_every_check(tmp_path, capsys):
    from worlds.nq_world import generate

    if not (NQ.is_file() and HH.is_file()):
        pytest.skip(f"{NQ} or {HH} absent")
    generate(tmp_path, NQ, HH, SMALL)
    load_phase_data([str(tmp_path / "step1_sft")], [1.0, 0.0, 0.0], 0, STEP1, seed=0)
    load_phase_data([str(tmp_path / "step2_nq"), str(tmp_path / "step2_hh")], [0.0, 1.0, 0.0], 1, STEP2, seed=0)
    assert "are the same" not in capsys.readouterr().out


# --- reward pairs whose replies are the same ------------------------------------------------------------

def test_pairs_with_the_same_replies_are_dropped_and_counted(tmp_path, capsys):
    file = _jsonl(tmp_path / "pairs.jsonl", [_pair(" a", " b"), _pair(" a", " a"), _pair(" a", "a \n"),
                                             _pair(" c", " d")])
    pairs, _ = load_phase_data([str(file)], [0.0, 1.0, 0.0], 1, STEP2, seed=0)
    assert list(zip(pairs["chosen"], pairs["rejected"])) == [(" a", " b"), (" c", " d")]
    assert f"{file} (train): dropped 2 of 4 rm-static rows (chosen and rejected are the same: 2)" in \
        capsys.readouterr().out
    assert len(load_split(str(file), "train", STEP1)) == 4  # step 1 learns the chosen reply: nothing to drop


def test_hh_rlhf_pairs_with_the_same_reply_are_counted_with_the_other_reasons(tmp_path, capsys):
    def dialogue(reply: str) -> str:
        return f"\n\nHuman: q?\n\nAssistant: {reply}"

    file = _jsonl(tmp_path / "hh.jsonl", [{"chosen": dialogue("yes"), "rejected": dialogue("no")},
                                          {"chosen": dialogue("same"), "rejected": dialogue("same")},
                                          {"chosen": dialogue(""), "rejected": dialogue("no")}])
    assert load_split(str(file), "train", STEP2)["chosen"] == [" yes"]
    assert (f"{file} (train): dropped 2 of 3 hh-rlhf rows (chosen and rejected are the same: 1, empty response: 1)"
            in capsys.readouterr().out)


def test_an_entry_of_only_such_pairs_is_refused(tmp_path, tiny_model, monkeypatch, capsys):  # noqa: F811
    from step2_reward_model import reward_model
    from step2_reward_model.main import main

    monkeypatch.setattr(reward_model, "STEP", dataclasses.replace(reward_model.STEP, create_model=_reached))
    file = _jsonl(tmp_path / "pairs" / "train.jsonl", [_pair(" a", " a"), _pair(" b", " b ")])
    out = tmp_path / "out"
    code = main(["--data_path", str(file.parent), "--data_split", "0,10,0", "--model_name_or_path", str(tiny_model),
                 "--output_dir", str(out), "--dtype", "fp32"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: {file.parent} (train): none of its 2 rm-static rows "
                                                        "is usable (chosen and rejected are the same: 2); fix the "
                                                        "rows or remove the entry")


# --- evaluation without a test split --------------------------------------------------------------------

def test_step1_without_a_test_split_warns_on_every_run(tmp_path, tiny_model, monkeypatch, capsys):  # noqa: F811
    data = tmp_path / "sft"
    _jsonl(data / "train.jsonl", [_sft("0.5")] * 3)
    warning = (f"warning: --data_path {data} has no test split, so the eval scores are of 3 training rows, not "
               "held-out ones; add a test file (e.g. test.jsonl beside train.jsonl)")
    cache = ("--data_output_path", str(tmp_path / "cache"))
    for run in ("wrote", "reused"):  # a reused cache says it again
        with pytest.raises(_Reached):
            _step1(monkeypatch, tiny_model, tmp_path / "out", "--data_path", str(data), "--data_split", "1,0,0", *cache)
        out = capsys.readouterr().out
        assert warning in out.splitlines() and f"data cache: {run}" in out
    _jsonl(data / "test.jsonl", [_sft("0.5")])
    with pytest.raises(_Reached):
        _step1(monkeypatch, tiny_model, tmp_path / "out", "--data_path", str(data), "--data_split", "1,0,0", *cache)
    assert "no test split" not in capsys.readouterr().out


# --- JSON that would be misread -------------------------------------------------------------------------

def test_a_pretty_printed_json_object_says_what_a_json_file_may_hold(tmp_path):
    file = tmp_path / "train.json"
    file.write_text(json.dumps(_sft("0.5"), indent=2) + "\n")
    with pytest.raises(DataError) as info:
        load_split(str(file), "train", STEP1)
    assert str(info.value) == (f"{file}:1: one JSON object over lines 1-4; a .json file holds one JSON array of "
                               "objects, or one object per line: wrap it in [ ] or write each row on one line")


def test_json_lines_in_a_json_file_still_load(tmp_path):
    file = _jsonl(tmp_path / "train.json", [_sft("0.5"), _sft("0.6")])
    assert len(load_split(str(file), "train", STEP1)) == 2


GOOD_LINE = json.dumps(_sft("0.5")) + "\n"
TWICE = '{"prompt": "q", "response": "a", "prompt": "r"}\n'
ARRAY_TWICE = '[\n  {"prompt": "q", "response": "a"},\n  {"prompt": "q", "response": "a",\n   "prompt": "r"}\n]\n'


@pytest.mark.parametrize("name, text, line", [
    ("train.jsonl", GOOD_LINE + TWICE, 2),
    ("train.jsonl.gz", GOOD_LINE + GOOD_LINE + TWICE, 3),
    ("train.json", GOOD_LINE + TWICE, 2),  # JSON lines
    ("train.json", ARRAY_TWICE, 3),  # the object starts on line 3
])
def test_a_key_named_twice_is_refused_with_file_line_and_key(tmp_path, name, text, line):
    file = tmp_path / name
    file.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    with pytest.raises(DataError) as info:
        load_split(str(file), "train", STEP1)
    assert str(info.value) == f"{file}:{line}: key 'prompt' appears twice in one object; rename or remove one"


def test_step4_benchmarks_refuse_a_key_named_twice_too(tmp_path):
    file = tmp_path / "test.jsonl"
    file.write_text('{"question": "Q?", "answers": ["a"]}\n{"question": "Q?", "answers": ["a"], "answers": ["b"]}\n')
    with pytest.raises(DataError, match=re.escape(f"{file}:2: key 'answers' appears twice in one object")):
        load_toy(str(file))
