"""The process group ends before the interpreter does: steps 1-3 destroy it after a successful run.

Left to interpreter teardown, a gloo rank of a two-process step 2 once aborted after its save
("terminate called without an active exception", exit -6), failing CI. Each check runs in a fresh
interpreter so the in-process group other tests share is left alone.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_checks(code: str) -> None:
    """Run ``code`` in a fresh interpreter; its asserts are the checks, and it prints ``ok`` at the end."""
    result = subprocess.run([sys.executable, "-c", code + "print('ok')\n"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_shutdown_destroys_the_group_and_is_a_no_op_without_one():
    _run_checks(
        "import torch.distributed as td\n"
        "from utils import dist\n"
        "dist.shutdown()\n"
        "dist.init_distributed()\n"
        "assert td.is_initialized()\n"
        "dist.shutdown()\n"
        "assert not td.is_initialized()\n")


def test_steps_1_to_3_end_their_process_group_after_a_successful_run():
    _run_checks(
        "import importlib\n"
        "import torch.distributed as td\n"
        "from utils import dist\n"
        "for step, flags in (('step1_supervised_finetuning_LM', ['--model_name_or_path', 'm']),\n"
        "                    ('step2_reward_model', ['--model_name_or_path', 'm']),\n"
        "                    ('step3_RL_finetune_LLM', ['--actor_model_name_or_path', 'm',\n"
        "                                               '--critic_model_name_or_path', 'm'])):\n"
        "    entry = importlib.import_module(step + '.main')\n"
        "    entry.run = lambda args: dist.init_distributed()  # the run stands in; the group is real\n"
        "    assert entry.main(['--data_path', 'd', '--output_dir', 'o', *flags]) == 0, step\n"
        "    assert not td.is_initialized(), step + ' left its process group'\n")
