"""Steps 1-3 on four gloo ranks through the deepspeed launcher, as on the users' 4-GPU node (CI otherwise
sees one and two): ZeRO-3 with LoRA and every parameter partitioned and prefetched, a prompt count that
leaves a short last rollout batch, and one rank failing at start. Each rank runs tests/four_ranks_run.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.test_zero_matrix import _assert_plain_checkpoints, _env
from utils.dist import _free_port

ROOT = Path(__file__).resolve().parents[1]
RANKS = 4
pytestmark = pytest.mark.slow


def _launch(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run the deepspeed launcher on RANKS processes; past ``timeout`` kill its whole process group (the
    ranks too, which would otherwise wait on) and fail."""
    command = ["deepspeed", "--num_gpus", str(RANKS), "--master_port", str(_free_port()),
               "--no_local_rank", "--module", "tests.four_ranks_run", *args]
    with subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as launch:
        try:
            stdout, stderr = launch.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            stdout, stderr = launch.communicate()
            pytest.fail(f"the 4-rank launch still ran after {timeout} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, launch.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, toy_tokenizer) -> Path:
    from utils.model import save_hf_checkpoint
    from worlds.toy_world import create_tiny_llama

    base = tmp_path_factory.mktemp("four_ranks") / "base"
    save_hf_checkpoint(create_tiny_llama(toy_tokenizer), toy_tokenizer, base)
    return base


def test_steps_1_to_3_on_four_ranks(toy_world_dir: Path, base_model: Path, tmp_path: Path):
    # 22 prompts: the sampler pads them to 6 a rank, rollout batches of 4 then 2
    result = _launch(["steps", str(toy_world_dir), str(base_model), str(tmp_path), "--max_train_examples", "22",
                      "--log_interval", "1"], timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    log = [json.loads(line) for line in (tmp_path / "step3/train_log.jsonl").read_text().splitlines()]
    assert [r["align_scope_size"] for r in log] == [RANKS * 4, RANKS * 2]  # every rank's rollouts in R_A's scope
    _assert_plain_checkpoints(tmp_path, base_model)


def test_one_rank_failing_at_start_ends_the_launch(toy_world_dir: Path, base_model: Path, tmp_path: Path):
    """Rank 2 stops after the process group started; the others go on towards ZeRO-3's collectives, where
    they would wait for it: the deepspeed launcher ends them as soon as one rank exits non-zero."""
    result = _launch(["fail", "2", "--data_path", str(toy_world_dir / "step1_sft"), "--data_split", "10,0,0",
                      "--model_name_or_path", str(base_model), "--output_dir", str(tmp_path / "step1"),
                      "--dtype", "fp32", "--zero_stage", "3", "--max_steps", "2"], timeout=300)
    assert result.returncode != 0
    assert "error: --model_name_or_path" in result.stderr and "no checkpoint on rank 2" in result.stderr
    assert not (tmp_path / "step1").exists()
