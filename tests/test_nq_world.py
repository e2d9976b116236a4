"""The real-data preset's files: disjoint NQ-open pools, answer-quality pairs, hh-rlhf sample."""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from utils.data import DataError
from utils.prompts import QUESTION_TAG
from worlds.nq_world import NQWorldConfig, generate, read_nq_open, wh_word

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NQ, HH = SHARED / "NQ-open.dev.jsonl", SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"
SMALL = NQWorldConfig(sft_questions=20, reward_questions=10, ppo_questions=10, hh_pairs=5)


def _rows(file: Path) -> list[dict]:
    return [json.loads(line) for line in file.read_text().splitlines()]


def _question(prompt: str) -> str:
    return prompt.split(QUESTION_TAG, 1)[1].split("\n", 1)[0].strip()


@pytest.fixture()
def small_files(tmp_path: Path) -> tuple[Path, Path]:
    nq = tmp_path / "nq.jsonl"
    kinds = ("when did event {} happen", "who founded company {}", "where is town {}")
    nq.write_text("".join(json.dumps({"question": kinds[i % 3].format(i), "answer": [f"answer {i}", f"alias {i}"]}) + "\n"
                          for i in range(60)))
    hh = tmp_path / "hh.jsonl.gz"
    pairs = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"}
             for i in range(8)]
    pairs.append({"chosen": "\n\nHuman: empty\n\nAssistant: ", "rejected": "\n\nHuman: empty\n\nAssistant: x"})
    with gzip.open(hh, "wt") as handle:
        handle.writelines(json.dumps(p) + "\n" for p in pairs)
    return nq, hh


def test_pools_are_disjoint_and_evaluation_is_the_rest(tmp_path: Path, small_files):
    nq, hh = small_files
    sizes = generate(tmp_path / "out", nq, hh, SMALL)
    out = tmp_path / "out"
    trained = set()
    for file in ("step1_sft/train.jsonl", "step1_sft/test.jsonl", "step2_nq/train.jsonl", "step2_nq/test.jsonl",
                 "step3_ppo/train.jsonl"):
        trained |= {_question(r["prompt"]) for r in _rows(out / file)}
    held_out = {r["question"] for r in _rows(out / "eval" / "nq_open.jsonl")}
    assert len(trained) == 40 and len(held_out) == 20 and not trained & held_out
    assert sizes["eval/nq_open"] == 20 and sizes["step2_hh/train"] == 5


def test_rows_have_the_pipeline_format(tmp_path: Path, small_files):
    nq, hh = small_files
    generate(tmp_path, nq, hh, SMALL)
    sft = _rows(tmp_path / "step1_sft" / "train.jsonl")[0]
    assert sft["prompt"].endswith("### Answer:") and "\n### Confidence: " in sft["response"]
    for pair in _rows(tmp_path / "step2_nq" / "train.jsonl"):
        assert pair["chosen"] != pair["rejected"]
        number = int(re.search(r"\d+", _question(pair["prompt"])).group())
        assert pair["chosen"] == f" answer {number}"  # the first gold of its own question
        other = int(pair["rejected"].split()[-1])  # the gold of another question of the same kind
        assert other != number and other % 3 == number % 3
    ppo = _rows(tmp_path / "step3_ppo" / "train.jsonl")[0]
    assert ppo["answers"] and ppo["prompt"].startswith(QUESTION_TAG)
    assert all("empty" not in p["chosen"] for p in _rows(tmp_path / "step2_hh" / "train.jsonl"))


def test_pools_larger_than_the_questions_are_refused(tmp_path: Path, small_files):
    nq, hh = small_files
    with pytest.raises(DataError, match="lower the pool sizes"):
        generate(tmp_path, nq, hh, NQWorldConfig(sft_questions=60))


def test_malformed_nq_row_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "nq.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": ["a"]}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(DataError, match=r"nq.jsonl:2"):
        read_nq_open(bad)


@pytest.mark.parametrize("answer, message", [("Paris", "not the bare string"), ([1], "holds an int"),
                                             (["  "], "empty answer list")])
def test_nq_answer_must_be_a_list_of_strings(tmp_path: Path, answer, message):
    bad = tmp_path / "nq.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": answer}) + "\n")
    with pytest.raises(DataError, match=f"nq.jsonl:1: key 'answer' .*{message}"):
        read_nq_open(bad)


def test_wh_word():
    assert wh_word("when did it happen") == "when"
    assert wh_word("how many moons has mars") == "how many"
    assert wh_word("the capital of france is") == "other"


def test_command_refuses_a_missing_file(tmp_path: Path):
    run = subprocess.run([sys.executable, "datasets/prepare_nq_world.py", "--nq", str(tmp_path / "none.jsonl"),
                          "--hh", str(tmp_path / "none.gz")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "--nq" in run.stderr and "no such file" in run.stderr


@pytest.mark.skipif(not (NQ.is_file() and HH.is_file()), reason="real data absent (../shared/data)")
def test_real_files_give_the_preset_pools(tmp_path: Path):
    sizes = generate(tmp_path, NQ, HH, NQWorldConfig())
    assert sizes["eval/nq_open"] == 3610 - 2400
    hh = _rows(tmp_path / "step2_hh" / "train.jsonl")
    assert len(hh) == 600 and all(len(p["chosen"]) <= 600 for p in hh)
