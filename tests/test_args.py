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
    assert args.save_total_limit == 2


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
    # refused at start instead of accepted silently (issue 10)
    (["--save_interval", "-1"], "--save_interval"),
    (["--freezing_actor_steps", "-2"], "--freezing_actor_steps"),
    (["--num_warmup_steps", "-1"], "--num_warmup_steps"),
    (["--save_total_limit", "0"], "--save_total_limit"),
    (["--save_total_limit", "-1"], "--save_total_limit"),
    # NaN/inf reached the losses, and seeds outside numpy's range crashed (issue 19)
    (["--alpha", "nan"], "--alpha"),
    (["--alpha", "inf"], "--alpha"),
    (["--kl_ctl", "nan"], "--kl_ctl"),
    (["--actor_learning_rate", "inf"], "--actor_learning_rate"),
    (["--actor_learning_rate", "1e39"], "--actor_learning_rate"),  # inf in float32, where the optimizer computes
    (["--critic_learning_rate", "nan"], "--critic_learning_rate"),
    (["--unsup_coef", "inf"], "--unsup_coef"),
    (["--temperature", "nan"], "--temperature"),
    (["--gamma", "nan"], "--gamma"),
    (["--data_split", "nan,1,1"], "--data_split"),
    (["--data_split", "inf,0,0"], "--data_split"),
    (["--zero3_settings", "stage3_param_persistence_threshold=nan"], "--zero3_settings"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999"], "--seed"),
    # no abbreviations: --alph was taken for --alpha
    (["--alph", "0"], "--alph"),
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


# --- refused at start instead of accepted silently (issue 10) -------------------------------------------



def _supervised(*extra: str):
    from utils.args import supervised_parser

    return supervised_parser("test", 1e-4).parse_args(["--data_path", "d", "--model_name_or_path", "m",
                                                       "--output_dir", "o", *extra])


@pytest.mark.parametrize("extra, message", [
    (["--offload", "--zero_stage", "0"], "--offload needs ZeRO stage >= 1, got --zero_stage 0"),
    (["--only_optimize_lora"], "--only_optimize_lora with --lora_dim 0 would train no adapter"),
])
def test_supervised_flag_combinations_are_refused(extra, message):
    from utils.args import check_args

    with pytest.raises(SystemExit, match=message):
        check_args(_supervised(*extra))


def test_step3_flag_combinations_are_refused():
    from utils.args import check_args

    with pytest.raises(SystemExit, match="got --critic_zero_stage 0"):
        check_args(build_parser().parse_args(REQUIRED + ["--offload", "--actor_zero_stage", "3"]))
    with pytest.raises(SystemExit, match="--actor_lora_dim 0 --critic_lora_dim 0 would train no adapter"):
        check_args(build_parser().parse_args(REQUIRED + ["--only_optimize_lora"]))
    with pytest.raises(SystemExit, match="--unsup_mask_confidence .* give --unsupervised_dataset_name"):
        check_args(build_parser().parse_args(REQUIRED + ["--unsup_mask_confidence"]))
    # an adapter on one model is enough: the other trains its scalar head only, on purpose
    check_args(build_parser().parse_args(REQUIRED + ["--only_optimize_lora", "--actor_lora_dim", "8"]))
    check_args(_supervised("--offload", "--zero_stage", "2", "--only_optimize_lora", "--lora_dim", "4"))


@pytest.mark.parametrize("flag, value", [("--batch_size", "0"), ("--n_bins", "0"), ("--max_new_tokens", "0"),
                                         ("--topk", "0"), ("--max_examples", "0"), ("--bootstrap", "-1"),
                                         ("--retrieval_k", "0"), ("--judge_concurrency", "0"),
                                         ("--missing_confidence", "2"), ("--judge_timeout", "0"),
                                         ("--judge_timeout", "inf"), ("--missing_confidence", "nan"),
                                         ("--seed", "-1"), ("--seed", "4294967296"), ("--max_ex", "3")])
def test_step4_bad_numbers_exit_2_before_anything_loads(capsys, flag, value):
    from step4_evaluation.evaluate import build_parser as step4_parser

    with pytest.raises(SystemExit) as info:
        step4_parser().parse_args(["--checkpoints", "m", flag, value])
    assert info.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--learning_rate", "nan"), ("--learning_rate", "inf"),
                                         ("--lora_learning_rate", "inf"), ("--weight_decay", "nan"),
                                         ("--gradient_clipping", "inf"), ("--seed", "-1"), ("--seed", "99999999999"),
                                         ("--learn", "1e-3")])
def test_supervised_bad_numbers_exit_2_naming_the_flag(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        _supervised(flag, value)
    assert info.value.code == 2 and flag in capsys.readouterr().err


def test_the_extreme_seeds_parse():
    assert _supervised("--seed", "0").seed == 0 and _supervised("--seed", str(2**32 - 1)).seed == 2**32 - 1


@pytest.mark.parametrize("argv, named", [
    (["--judge_api_key", "sk-SECRET-123"], "unrecognized arguments: --judge_api_key (1 value not shown)"),
    (["--judge_api_key=sk-SECRET-123"], "unrecognized arguments: --judge_api_key (1 value not shown)"),
    (["--judge_api_key_env", "sk-SECRET-123"], "argument --judge_api_key_env: expects the NAME"),
    (["--topk", "2", "sk-SECRET-123"], "unrecognized arguments: (1 value not shown)"),
])
def test_a_key_given_on_the_command_line_is_never_echoed(capsys, argv, named):
    """``--judge_api_key`` was taken by prefix for ``--judge_api_key_env``, and the error printed the key."""
    from step4_evaluation.evaluate import build_parser as step4_parser

    with pytest.raises(SystemExit) as info:
        step4_parser().parse_args(["--checkpoints", "m", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "SECRET" not in err and named in err.splitlines()[-1]


def test_unknown_flags_are_named_and_their_values_counted(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(REQUIRED + ["--token", "abc", "--other=xyz", "--flag"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --token --other --flag (2 values not shown)" in err and "abc" not in err


def test_the_metrics_command_refuses_a_bad_seed_and_nan(capsys):
    from step4_evaluation.metrics import main

    for argv in (["--seed", "-1"], ["--missing_confidence", "nan"], ["--see", "1"]):
        with pytest.raises(SystemExit) as info:
            main(["--input", "x.jsonl", *argv])
        assert info.value.code == 2 and argv[0] in capsys.readouterr().err


def _parser_calls():
    """Every ``ArgumentParser(...)`` and ``add_parser(...)`` call in the project's code, by file and line."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        if {".venv", "tests", "shared"} & set(path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("ArgumentParser", "add_parser"):
                yield f"{path.relative_to(root)}:{node.lineno}", node


def test_every_parser_refuses_abbreviations():
    """The project's parsers are ``utils.args.Parser`` (its subparsers too); a standalone script's say
    ``allow_abbrev=False`` itself."""
    plain = [where for where, node in _parser_calls()
             if not any(k.arg == "allow_abbrev" and getattr(k.value, "value", True) is False for k in node.keywords)
             and not where.startswith("tools/download.py")]  # its subparsers are Parsers
    assert plain == []
