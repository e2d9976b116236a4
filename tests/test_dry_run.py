"""--dry_run: parameters counted on the meta device from config.json alone, DeepSpeed's ZeRO estimate, the
launcher's world size in the printed configs, and the run scripts' resolved command (hostfile included)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from utils.dry_run import Engine, World, count_parameters, launch_world, report
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=512)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A model folder holding only config.json: no weights, no tokenizer."""
    path = tmp_path_factory.mktemp("tiny")
    LlamaConfig(**TINY).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama7b(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama7b")
    LlamaConfig().save_pretrained(path)  # the defaults are Llama-2-7B's shape
    return path


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_counts_match_the_built_models(tiny: Path):
    config = LlamaConfig(**TINY)
    assert count_parameters(str(tiny), "--model", scalar_head=False).total == _numel(LlamaForCausalLM(config))
    config.num_labels = 1
    scalar = count_parameters(str(tiny), "--model", scalar_head=True)
    assert scalar.total == _numel(AutoModelForSequenceClassification.from_config(config))
    assert scalar.model == "LlamaForSequenceClassification" and scalar.lora == 0


def test_lora_adapters_are_counted(tiny: Path):
    plain = count_parameters(str(tiny), "--model", scalar_head=False)
    lora = count_parameters(str(tiny), "--model", scalar_head=False, lora_dim=8, lora_module="layers.")
    # per layer: q, k, v, o (64 -> 64) and gate, up (64 -> 128), down (128 -> 64); rank 8 adds 8 * (in + out)
    per_layer = 4 * 8 * (64 + 64) + 3 * 8 * (64 + 128)
    assert lora.lora == 2 * per_layer
    assert lora.total == plain.total + lora.lora


def test_llama2_7b_shape_counted_on_meta(llama7b: Path):
    count = count_parameters(str(llama7b), "--model", scalar_head=False)
    assert count.total == pytest.approx(6.74e9, rel=1e-3)
    assert count.largest_layer == 32000 * 4096  # embeddings (and the untied lm_head)


def test_unreadable_config_is_a_user_error(tmp_path: Path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="--model_name_or_path"):
        count_parameters(str(tmp_path), "--model_name_or_path", scalar_head=False)


def test_launch_world_from_env(monkeypatch):
    monkeypatch.setenv("CONQORD_DRY_RUN_GPUS_PER_NODE", "4")
    monkeypatch.setenv("CONQORD_DRY_RUN_NODES", "2")
    assert launch_world() == World(4, 2) and launch_world().size == 8
    monkeypatch.setenv("CONQORD_DRY_RUN_NODES", "zero")
    with pytest.raises(UserError, match="CONQORD_DRY_RUN_NODES"):
        launch_world()


def _engine(path: Path, stage: int, trained: bool = True, offload: bool = False) -> Engine:
    zero = {"stage": stage, **({"offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}}
                               if offload else {})}
    return Engine("model", "--model_name_or_path", str(path), False, {"zero_optimization": zero}, trained)


def test_zero3_estimate_is_deepspeeds(llama7b: Path, capsys):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    report([_engine(llama7b, 3)], World(4, 1), "bf16")
    out = capsys.readouterr().out
    assert "HW: Setup with 1 node, 4 GPUs per node." in out
    count = count_parameters(str(llama7b), "--model", scalar_head=False)
    _, gpu, _ = estimate_zero3_model_states_mem_needs(count.total, count.largest_layer, 4, 1, cpu_offload=False,
                                                      cpu_offload_params=False, zero_init=True)
    assert f"this run (ZeRO-3, offload_param=none, offload_optimizer=none, zero_init=1): {gpu / 2**30:.2f}GB per GPU" \
        in out


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_lower_stages_use_the_zero2_estimate(tiny: Path, capsys, stage):
    report([_engine(tiny, stage, offload=stage > 0)], World(2, 2), "bf16")
    out = capsys.readouterr().out
    assert "HW: Setup with 2 nodes, 2 GPUs per node." in out
    assert f"this run (ZeRO-{stage}, offload_optimizer={'cpu' if stage else 'none'})" in out
    assert ("lower bound" in out) == (stage < 2)


def test_frozen_engine_holds_weights_only(llama7b: Path, capsys):
    report([_engine(llama7b, 0, trained=False)], World(4, 1), "bf16")
    out = capsys.readouterr().out
    assert "Estimated memory" not in out  # DeepSpeed's estimators are for training
    assert f"frozen, weights only (ZeRO-0): {6738415616 * 2 / 2**30:.2f}GB per GPU" in out


def test_step3_main_dry_run_starts_no_process_group(tiny: Path, tmp_path: Path, capsys):
    from step3_RL_finetune_LLM.main import main

    if torch.distributed.is_initialized():  # left by an earlier in-process step run in this pytest process
        torch.distributed.destroy_process_group()
    code = main(["--data_path", "none", "--actor_model_name_or_path", str(tiny), "--critic_model_name_or_path",
                 str(tiny), "--output_dir", str(tmp_path / "out"), "--actor_zero_stage", "3", "--dry_run"])
    assert code == 0
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "out").exists()
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("== ")] == \
        ["== actor", "== reference", "== critic", "== reward"]


def test_dry_run_refuses_a_missing_checkpoint(tmp_path: Path, capsys):
    from step1_supervised_finetuning_LM.main import main

    code = main(["--data_path", "none", "--model_name_or_path", str(tmp_path / "absent"), "--output_dir",
                 str(tmp_path / "out"), "--dry_run"])
    assert code == 2
    assert "config.json missing" in capsys.readouterr().err


def test_dry_run_still_refuses_bad_flags(tiny: Path, capsys):
    from step1_supervised_finetuning_LM.main import main

    with pytest.raises(SystemExit) as info:
        main(["--data_path", "none", "--model_name_or_path", str(tiny), "--output_dir", "out", "--zero_stage", "5",
              "--dry_run"])
    assert info.value.code == 2 and "--zero_stage" in capsys.readouterr().err


# --- the run scripts -------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONQORD_")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's python
    return {**env, "PATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}


def _script(step: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = {1: "step1_supervised_finetuning_LM/run_step1.sh", 3: "step3_RL_finetune_LLM/run_step3.sh"}[step]
    return subprocess.run(["bash", script, "--dry_run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _configs(stdout: str) -> list[dict]:
    prefix = "deepspeed config: "
    return [json.loads(line[len(prefix):]) for line in stdout.splitlines() if line.startswith(prefix)]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_step1_script_dry_run(tiny: Path, tmp_path: Path):
    result = _script(1, _env(CONQORD_NPROC="4", CONQORD_BASE_MODEL=str(tiny), CONQORD_OUT=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    command = next(line for line in result.stdout.splitlines() if line.startswith("dry run: would launch: "))
    assert command.startswith("dry run: would launch: deepspeed --num_gpus 4 --master_port ")
    assert "--module step1_supervised_finetuning_LM.main --data_path" in command and "--dry_run" not in command
    [config] = _configs(result.stdout)
    assert config["train_batch_size"] == 32 * 64 * 4  # micro x accumulation x GPUs
    assert "HW: Setup with 1 node, 4 GPUs per node." in result.stdout
    assert "this run (ZeRO-3," in result.stdout
    assert _files(tmp_path) == []


def test_step3_script_dry_run(tiny: Path, tmp_path: Path):
    for step in ("step1", "step2"):
        LlamaConfig(**TINY).save_pretrained(tmp_path / step)
    before = _files(tmp_path)
    result = _script(3, _env(CONQORD_NPROC="4", CONQORD_OUT=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dry run: would launch: deepspeed --num_gpus 4 --master_port " in result.stdout
    actor, reference, critic, reward = _configs(result.stdout)
    assert actor["train_batch_size"] == critic["train_batch_size"] == 1 * 32 * 4
    assert reference["train_batch_size"] == reward["train_batch_size"] == 1 * 4
    assert reference["zero_optimization"]["offload_param"] == {"device": "cpu"}  # --offload_reference_model
    assert result.stdout.count("HW: Setup with 1 node, 4 GPUs per node.") == 2  # actor and critic train
    assert result.stdout.count("frozen, weights only (ZeRO-3") == 2
    assert _files(tmp_path) == before


def _fake_python(tmp_path: Path) -> str:
    """A ``python`` that reports what launch() hands the step, so the launcher side is tested in milliseconds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text('#!/usr/bin/env bash\necho "world $CONQORD_DRY_RUN_GPUS_PER_NODE x $CONQORD_DRY_RUN_NODES: $*"\n')
    fake.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def test_hostfile_sets_nodes_and_launcher_flag(tmp_path: Path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nworker-1 slots=4\n\nworker-2 slots=4\n")
    result = _script(1, _env(CONQORD_NPROC="4", CONQORD_HOSTFILE=str(hostfile), PATH=_fake_python(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert f"dry run: would launch: deepspeed --hostfile {hostfile} --num_gpus 4 --master_port " in result.stdout
    assert "world 4 x 2: -m step1_supervised_finetuning_LM.main" in result.stdout  # world size 8
    assert result.stdout.rstrip().endswith("--dry_run")


def test_missing_hostfile_exits_2_naming_it(tmp_path: Path):
    missing = tmp_path / "no-such-hostfile"
    result = _script(3, _env(CONQORD_HOSTFILE=str(missing), PATH=_fake_python(tmp_path)))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: CONQORD_HOSTFILE={missing}: no such file"
    assert result.stdout == ""
