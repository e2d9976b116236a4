"""Model folders checked at start, before any weights load: not a model (config, weights, tokenizer), the
wrong kind of model for a role (reward model vs causal LM), and step 3's tokenizer/vocabulary agreement."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, LlamaConfig

from step3_RL_finetune_LLM.rlhf_engine import STEP1, STEP2, check_inputs
from step3_RL_finetune_LLM.trainer import build_parser
from utils.errors import UserError
from utils.model import (CAUSAL_LM, REWARD_MODEL, checked_tokenizer, load_tokenizer, require_checkpoint,
                         require_vocabulary_fits, save_hf_checkpoint)
from worlds.toy_world import create_tiny_llama


def _reward_model(tokenizer, vocab_size: int | None = None):
    config = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=32, intermediate_size=96,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module")
def models(tmp_path_factory, toy_tokenizer) -> dict[str, Path]:
    """Tiny checkpoints as steps 1 and 2 write them, and broken or mismatched variants."""
    root = tmp_path_factory.mktemp("models")
    lm = save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1), toy_tokenizer, root / "lm")
    rm = save_hf_checkpoint(_reward_model(toy_tokenizer), toy_tokenizer, root / "rm")
    small = save_hf_checkpoint(_reward_model(toy_tokenizer, vocab_size=len(toy_tokenizer) - 8), toy_tokenizer,
                               root / "rm_small_vocab")
    other = load_tokenizer(str(lm))
    other.add_tokens(["<other_token>"])  # another vocabulary: one more token
    other_rm = root / "rm_other_tokenizer"
    _reward_model(other).save_pretrained(other_rm)
    other.save_pretrained(other_rm)
    small_lm = root / "lm_small_vocab"
    shutil.copytree(lm, small_lm)
    config = json.loads((small_lm / "config.json").read_text())
    (small_lm / "config.json").write_text(json.dumps({**config, "vocab_size": len(toy_tokenizer) - 8}))
    no_weights = root / "lm_no_weights"
    shutil.copytree(lm, no_weights)
    (no_weights / "model.safetensors").unlink()
    no_tokenizer = root / "lm_no_tokenizer"
    shutil.copytree(lm, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    return {"lm": lm, "lm_small_vocab": small_lm, "rm": rm, "rm_small_vocab": small, "rm_other_tokenizer": other_rm,
            "lm_no_weights": no_weights, "lm_no_tokenizer": no_tokenizer}


# --- not a model -------------------------------------------------------------------------------------------


def test_config_that_is_not_json_names_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    with pytest.raises(UserError) as info:
        require_checkpoint(tmp_path, "--actor_model_name_or_path", STEP1)
    message = str(info.value)
    assert message.startswith(f"--actor_model_name_or_path {tmp_path}: {tmp_path / 'config.json'}:3: not valid JSON")
    assert "\n" not in message


@pytest.mark.parametrize("content", ['{"hidden_size": 8}', "[1, 2]"], ids=["no-model_type", "not-an-object"])
def test_config_without_model_type_is_not_a_model(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(UserError, match=r"--model_name_or_path .*config\.json: no \"model_type\""):
        require_checkpoint(tmp_path, "--model_name_or_path", STEP1)


def test_folder_without_weights_is_refused_unless_only_the_config_is_needed(models):
    folder = models["lm_no_weights"]
    with pytest.raises(UserError) as info:
        require_checkpoint(folder, "--critic_model_name_or_path", STEP2, weights=True)
    assert str(info.value) == (
        f"--critic_model_name_or_path {folder}: no weights there (model.safetensors, pytorch_model.bin or a sharded "
        f"*.index.json); rerun {STEP2}, or copy the whole model folder")
    require_checkpoint(folder, "--critic_model_name_or_path", STEP2)  # a dry run reads config.json only


def test_sharded_checkpoint_needs_every_shard(tmp_path, toy_tokenizer):
    folder = tmp_path / "sharded"
    create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1).save_pretrained(folder, max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / "model.safetensors").exists()
    require_checkpoint(folder, "--model_name_or_path", STEP1, weights=True)
    (folder / shards[-1]).unlink()
    with pytest.raises(UserError, match=f"model.safetensors.index.json names {shards[-1]}, which is missing"):
        require_checkpoint(folder, "--model_name_or_path", STEP1, weights=True)


def test_folder_without_tokenizer_is_refused(models):
    folder = models["lm_no_tokenizer"]
    with pytest.raises(UserError) as info:
        checked_tokenizer(str(folder), "--checkpoints")
    message = str(info.value)
    assert message.startswith(f"--checkpoints {folder}: cannot load its tokenizer (ValueError: ")
    assert "tokenizer.json" in message and "\n" not in message


def test_hub_ids_pass_through():
    require_checkpoint("meta-llama/Llama-2-7b-hf", "--actor_model_name_or_path", STEP1, kind=CAUSAL_LM, weights=True)
    require_checkpoint("org/reward-model", "--reward_model_name_or_path", STEP2, kind=REWARD_MODEL, weights=True)


# --- the wrong kind of model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model, flag, producer, kind, expected", [
    ("rm", "--actor_model_name_or_path", STEP1, CAUSAL_LM,
     "is a reward model (LlamaForSequenceClassification), but this flag takes a causal LM: pass a folder written by "
     f"{STEP1}"),
    ("lm", "--reward_model_name_or_path", STEP2, REWARD_MODEL,
     "is a causal LM (LlamaForCausalLM), but this flag takes a reward model (its score head would start random): "
     f"pass a folder written by {STEP2}"),
])
def test_the_wrong_kind_of_model_for_the_flag(models, model, flag, producer, kind, expected):
    with pytest.raises(UserError) as info:
        require_checkpoint(models[model], flag, producer, kind=kind)
    assert str(info.value) == f"{flag} {models[model]}: {expected}"


def test_a_config_without_architectures_passes(tmp_path):
    LlamaConfig(hidden_size=32).save_pretrained(tmp_path)  # what the dry-run tests use
    require_checkpoint(tmp_path, "--reward_model_name_or_path", STEP2, kind=REWARD_MODEL)
    require_checkpoint(tmp_path, "--actor_model_name_or_path", STEP1, kind=CAUSAL_LM)


def test_vocabulary_smaller_than_the_tokenizer(models, toy_tokenizer):
    with pytest.raises(UserError) as info:
        require_vocabulary_fits(str(models["rm_small_vocab"]), "--critic_model_name_or_path", toy_tokenizer,
                                "--actor_model_name_or_path a")
    assert str(info.value) == (
        f"--critic_model_name_or_path {models['rm_small_vocab']}: its vocabulary ({len(toy_tokenizer) - 8}) is smaller "
        f"than the tokenizer's ({len(toy_tokenizer)}, from --actor_model_name_or_path a); use a model trained with "
        "that tokenizer")
    require_vocabulary_fits(str(models["rm"]), "--critic_model_name_or_path", toy_tokenizer, "x")


# --- step 3 -----------------------------------------------------------------------------------------------------


def _step3(actor: Path, critic: Path, *extra: str):
    return build_parser().parse_args(["--data_path", "none", "--actor_model_name_or_path", str(actor),
                                      "--critic_model_name_or_path", str(critic), "--output_dir", "unused", *extra])


def test_step3_actor_that_is_a_reward_model_exits_2_in_the_dry_run(models, tmp_path, capsys):
    from step3_RL_finetune_LLM.main import main

    code = main(["--data_path", "none", "--actor_model_name_or_path", str(models["rm"]), "--critic_model_name_or_path",
                 str(models["rm"]), "--output_dir", str(tmp_path / "out"), "--dry_run"])
    captured = capsys.readouterr()
    assert code == 2 and "== actor" not in captured.out
    assert captured.err == (f"error: --actor_model_name_or_path {models['rm']}: is a reward model "
                            "(LlamaForSequenceClassification), but this flag takes a causal LM: pass a folder written "
                            f"by {STEP1}\n")


def test_step3_causal_lm_as_the_reward_model_is_refused(models):
    with pytest.raises(UserError, match=r"^--reward_model_name_or_path .*/lm: is a causal LM \(LlamaForCausalLM\)"):
        check_inputs(_step3(models["lm"], models["rm"], "--reward_model_name_or_path", str(models["lm"])))


def test_step3_causal_lm_critic_is_refused_only_when_it_is_also_the_reward_model(models):
    with pytest.raises(UserError) as info:
        check_inputs(_step3(models["lm"], models["lm"]))
    assert str(info.value) == (
        f"--critic_model_name_or_path (also the reward model: no --reward_model_name_or_path) {models['lm']}: is a "
        "causal LM (LlamaForCausalLM), but this flag takes a reward model (its score head would start random): pass a "
        f"folder written by {STEP2}, or give the reward model as --reward_model_name_or_path")
    check_inputs(_step3(models["lm"], models["lm"], "--quality_reward", "oracle"))  # a fresh value head is fine
    check_inputs(_step3(models["lm"], models["lm"], "--reward_model_name_or_path", str(models["rm"])))


def test_step3_critic_with_another_tokenizer_is_refused_naming_both(models):
    critic = models["rm_other_tokenizer"]
    with pytest.raises(UserError) as info:
        check_inputs(_step3(models["lm"], critic))
    assert str(info.value) == (
        f"--critic_model_name_or_path {critic}: its tokenizer's vocabulary differs from the one PPO uses "
        f"(--actor_model_name_or_path {models['lm']}): 1 token(s) differ, e.g. '<other_token>'; use one trained "
        "with that tokenizer (step 2 started from the actor's step-1 folder)")


def test_step3_reward_model_with_another_tokenizer_is_refused(models):
    reward = models["rm_other_tokenizer"]
    with pytest.raises(UserError, match=r"^--reward_model_name_or_path .*rm_other_tokenizer: its tokenizer's vocab"):
        check_inputs(_step3(models["lm"], models["rm"], "--reward_model_name_or_path", str(reward)))


@pytest.mark.parametrize("role", ["actor", "critic", "reward"])
def test_step3_vocabulary_too_small_is_refused_before_any_engine(models, role):
    small = models["lm_small_vocab" if role == "actor" else "rm_small_vocab"]
    args = {"actor": _step3(small, models["rm"]),
            "critic": _step3(models["lm"], small, "--reward_model_name_or_path", str(models["rm"])),
            "reward": _step3(models["lm"], models["rm"], "--reward_model_name_or_path", str(small))}[role]
    with pytest.raises(UserError, match=rf"^--{role}_model_name_or_path {small}: its vocabulary \(504\) is smaller "):
        check_inputs(args)


def test_step3_folders_must_hold_weights_and_tokenizers_but_not_in_the_dry_run(models):
    with pytest.raises(UserError, match=r"^--actor_model_name_or_path .*lm_no_weights: no weights there"):
        check_inputs(_step3(models["lm_no_weights"], models["rm"]))
    check_inputs(_step3(models["lm_no_weights"], models["rm"], "--dry_run"))
    with pytest.raises(UserError, match=r"^--tokenizer_model_name_or_path .*lm_no_tokenizer: cannot load its tok"):
        check_inputs(_step3(models["lm"], models["rm"], "--tokenizer_model_name_or_path",
                            str(models["lm_no_tokenizer"])))
    check_inputs(_step3(models["lm_no_tokenizer"], models["rm"], "--tokenizer_model_name_or_path", str(models["lm"])))
    check_inputs(_step3(models["lm"], models["rm"]))  # the pipeline's own folders pass


# --- steps 1 and 2 ------------------------------------------------------------------------------------------


def _supervised(step: int, model: Path, toy_world_dir: Path, out: Path, capsys) -> tuple[int, str]:
    """Step 1 or 2's main in-process; model creation fails the test if the refusal comes too late."""
    from step1_supervised_finetuning_LM import main as step1_main
    from step2_reward_model import main as step2_main

    main, data = (step1_main, "step1_sft") if step == 1 else (step2_main, "step2_reward")
    code = main.main(["--data_path", str(toy_world_dir / data), "--model_name_or_path", str(model),
                      "--output_dir", str(out), "--dtype", "fp32", "--max_steps", "1"])
    return code, capsys.readouterr().err


@pytest.fixture()
def no_model_load(monkeypatch):
    from utils import model as model_module

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the refusal")
    monkeypatch.setattr(model_module, "_from_pretrained", refuse)


@pytest.mark.parametrize("step, name, message", [
    (1, "rm", "is a reward model (LlamaForSequenceClassification), but this flag takes a causal LM"),
    (1, "lm_no_weights", "no weights there"),
    (2, "lm_no_weights", "no weights there"),
    (1, "lm_no_tokenizer", "cannot load its tokenizer"),
    (2, "lm_small_vocab", "is smaller than the tokenizer's"),
])
def test_steps_1_and_2_refuse_a_model_folder_at_start(models, toy_world_dir, tmp_path, capsys, no_model_load,
                                                      step, name, message):
    code, err = _supervised(step, models[name], toy_world_dir, tmp_path / "out", capsys)
    assert code == 2 and f"--model_name_or_path {models[name]}: " in err and message in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
