"""PPO-ptx (--unsupervised_dataset_name / --unsup_coef): resumable batches, the loss reaching the actor's
update, and its data checked before any engine is built."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from step3_RL_finetune_LLM.ptx import PtxBatches
from tests.test_run_state import _forbid_engines, _ppo, tiny_model  # noqa: F401  (a fixture)
from utils import dist
from utils.data import DataError


class _Rows(list):
    """A dataset stand-in: rows of SFT features whose ids name the row."""


def _dataset(n: int) -> _Rows:
    return _Rows({"input_ids": [i + 1, i + 2], "labels": [-100, i + 2]} for i in range(n))


def test_ptx_batches_are_a_function_of_their_index_and_cover_each_epoch(monkeypatch):
    batches = PtxBatches(_dataset(12), batch_size=2, pad_id=0, seed=5)
    assert batches.batches_per_epoch == 6
    epoch = [i for k in range(6) for i in batches.rows(k)]
    assert sorted(epoch) == list(range(12))  # every row once per epoch
    assert [batches.rows(k) for k in range(6)] == [PtxBatches(_dataset(12), 2, 0, 5).rows(k) for k in range(6)]
    assert [i for k in range(6, 12) for i in batches.rows(k)] != epoch  # the next epoch is shuffled anew
    batch = batches.batch(3, torch.device("cpu"))
    assert batch["input_ids"][:, 0].tolist() == [i + 1 for i in batches.rows(3)]


def test_ranks_draw_disjoint_shares(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        batches = PtxBatches(_dataset(8), batch_size=2, pad_id=0, seed=0)
        shares.append([i for k in range(batches.batches_per_epoch) for i in batches.rows(k)])
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == list(range(8))


@pytest.mark.slow
def test_the_lm_loss_reaches_the_actors_update(toy_world_dir, tiny_model, tmp_path):  # noqa: F811
    common = ("--alpha", "0", "--max_steps", "2", "--seed", "3")
    _ppo(toy_world_dir, tiny_model, tmp_path / "plain", *common)
    _ppo(toy_world_dir, tiny_model, tmp_path / "ptx", *common, "--unsupervised_dataset_name",
         str(toy_world_dir / "step1_sft"), "--unsup_coef", "1.0")
    log = [json.loads(line) for line in (tmp_path / "ptx/train_log.jsonl").read_text().splitlines()]
    assert all(row["unsup_loss"] > 0 for row in log)
    assert "unsup_loss" not in json.loads((tmp_path / "plain/train_log.jsonl").read_text().splitlines()[0])
    plain = load_file(tmp_path / "plain/actor/model.safetensors")
    ptx = load_file(tmp_path / "ptx/actor/model.safetensors")
    assert any(not torch.equal(plain[k], ptx[k]) for k in plain)


def test_unsupervised_data_is_checked_before_the_engines(toy_world_dir, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    bad = tmp_path / "ptx.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    _forbid_engines(monkeypatch)
    with pytest.raises(DataError, match=rf"{bad}:2: missing key 'response'"):
        _ppo(toy_world_dir, tiny_model, tmp_path / "out", "--max_steps", "1", "--unsupervised_dataset_name", str(bad))


@pytest.mark.parametrize("response", [" blue\n### Confidence: 0.6", " red\n### Confidence: 1.0", " a bear"])
def test_masked_confidence_labels_are_exactly_the_number(toy_tokenizer, response):
    """--unsup_mask_confidence: the labels of the stated number are ignored, every other label kept."""
    from step3_RL_finetune_LLM.ptx import without_confidence_labels
    from utils.collate import IGNORE_INDEX, sft_features

    features = partial(sft_features, toy_tokenizer, max_len=64)
    plain = features("### Question: What color is the flag of Gox?\n### Answer:", response)
    masked = without_confidence_labels(features, toy_tokenizer, "### Question: What color is the flag of Gox?\n"
                                       "### Answer:", response)
    assert masked["input_ids"] == plain["input_ids"]
    dropped = [i for i, (a, b) in enumerate(zip(plain["labels"], masked["labels"])) if a != b]
    assert all(masked["labels"][i] == IGNORE_INDEX for i in dropped)
    number = response.rsplit(" ", 1)[1] if "Confidence" in response else ""
    assert toy_tokenizer.decode([plain["input_ids"][i] for i in dropped]).strip() == number
    kept = toy_tokenizer.decode([t for t in masked["labels"] if t != IGNORE_INDEX], skip_special_tokens=True)
    assert kept.rstrip() == response.removesuffix(number).rstrip()  # the answer and the tag are still trained


def test_the_settings_are_the_flags_of_the_same_names():
    from step3_RL_finetune_LLM.ptx import ptx_settings
    from step3_RL_finetune_LLM.trainer import build_parser

    args = build_parser().parse_args(["--data_path", "d", "--actor_model_name_or_path", "a",
                                      "--critic_model_name_or_path", "c", "--output_dir", "o",
                                      "--unsupervised_dataset_name", "u1", "u2", "--unsup_mask_confidence",
                                      "--max_prompt_seq_len", "11", "--max_answer_seq_len", "7", "--seed", "5",
                                      "--per_device_training_batch_size", "3"])
    settings = ptx_settings(args)
    assert (settings.unsupervised_dataset_name, settings.unsup_mask_confidence, settings.max_prompt_seq_len,
            settings.max_answer_seq_len, settings.seed, settings.per_device_training_batch_size) == (
        ["u1", "u2"], True, 11, 7, 5, 3)
