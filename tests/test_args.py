"""utils.args through step 3's parser: refusals exit with argparse's status 2 and name the flag."""
from __future__ import annotations

import pytest

from step3_RL_finetune_LLM.trainer import build_parser

REQUIRED = ["--data_path", "data/step3", "--actor_model_name_or_path", "actor",
            "--critic_model_name_or_path", "critic", "--output_dir", "out"]


def test_defaults_parse():
    args = build_parser().parse_args(REQUIRED)
    assert args.alpha == 0.5
    assert args.align_reward_scope == "global"
    assert args.align_reward_reduction == "mean"
    assert args.data_split == [2.0, 4.0, 4.0]
    assert args.missing_confidence == 0.0


def test_valid_values_parse():
    args = build_parser().parse_args(REQUIRED + ["--alpha", "0", "--align_reward_scope", "device",
                                                 "--align_reward_reduction", "sum", "--data_split", "0,0,1"])
    assert args.alpha == 0.0 and args.align_reward_scope == "device" and args.align_reward_reduction == "sum"
    assert args.data_split == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("extra, flag", [
    (["--alpha", "-1"], "--alpha"),
    (["--alpha", "abc"], "--alpha"),
    (["--align_reward_scope", "nowhere"], "--align_reward_scope"),
    (["--align_reward_reduction", "max"], "--align_reward_reduction"),
    (["--data_split", "1,2"], "--data_split"),
    (["--data_split", "1,-1,2"], "--data_split"),
    (["--data_split", "0,0,0"], "--data_split"),
    (["--data_split", "a,b,c"], "--data_split"),
    (["--missing_confidence", "1.5"], "--missing_confidence"),
    (["--gamma", "2"], "--gamma"),
    (["--per_device_generation_batch_size", "0"], "--per_device_generation_batch_size"),
])
def test_bad_values_exit_2_naming_the_flag(capsys, extra, flag):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(REQUIRED + extra)
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_missing_required_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(REQUIRED[2:])
    assert info.value.code == 2
    assert "--data_path" in capsys.readouterr().err
