"""Run steps 1, 2 and 3 in this process for ZeRO cells given on the command line, the way the GPU path
runs them: every parameter partitioned and prefetched (tiny models otherwise stay below ZeRO-3's
persistence threshold, and nothing is ever partitioned), train → eval → save → reload.

    python tests/zero_matrix_cells.py WORLD BASE OUT STAGE:LORA:OFFLOAD ...   (prints one JSON line per cell)

Used by tests/test_zero_matrix.py, one and two processes (``torchrun`` passes its rank in the environment).
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Sequence

# Real partitioning and prefetch on a hidden-32 model: persist nothing, fetch in small buckets ahead.
ZERO3_SETTINGS = ["stage3_param_persistence_threshold=0", "stage3_prefetch_bucket_size=5e4",
                  "stage3_max_live_parameters=1e5", "stage3_max_reuse_distance=0"]


def step_flags(stage: int, lora: int, offload: bool) -> tuple[list[str], list[str], list[str]]:
    common = ["--dtype", "fp32", "--seed", "1", "--zero3_settings", *ZERO3_SETTINGS] + (["--offload"] if offload else [])
    supervised = ["--zero_stage", str(stage), "--lora_dim", str(lora), "--max_steps", "2", "--learning_rate", "1e-2",
                  "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--max_seq_len", "64",
                  "--max_train_examples", "16", "--lr_scheduler_type", "constant", *common]
    ppo = ["--actor_zero_stage", str(stage), "--critic_zero_stage", str(stage), "--actor_lora_dim", str(lora),
           "--critic_lora_dim", str(lora), "--quality_reward", "model", "--per_device_generation_batch_size", "4",
           "--per_device_training_batch_size", "2", "--max_prompt_seq_len", "32", "--max_answer_seq_len", "8",
           "--max_steps", "2", "--save_interval", "1", "--actor_learning_rate", "1e-2", "--critic_learning_rate", "1e-2",
           "--actor_gradient_checkpointing"] + (["--offload_reference_model"] if offload else []) + common
    return supervised, supervised, ppo


def run_cell(world: Path, base: Path, out: Path, stage: int, lora: int, offload: bool,
             ppo_extra: Sequence[str] = ()) -> dict:
    """``ppo_extra``: step-3 flags added last (argparse keeps the last value of a repeated flag)."""
    from step1_supervised_finetuning_LM import sft
    from step2_reward_model import reward_model
    from step3_RL_finetune_LLM import trainer

    step1_flags, step2_flags, step3_flags = step_flags(stage, lora, offload)
    step1, step2, step3 = out / "step1", out / "step2", out / "step3"
    sft.run(sft.build_parser().parse_args(
        ["--data_path", str(world / "step1_sft"), "--data_split", "10,0,0", "--model_name_or_path", str(base),
         "--output_dir", str(step1), *step1_flags]))
    reward_model.run(reward_model.build_parser().parse_args(
        ["--data_path", str(world / "step2_reward"), "--data_split", "0,10,0", "--model_name_or_path", str(step1),
         "--output_dir", str(step2), *step2_flags]))
    summary = trainer.run(trainer.build_parser().parse_args(
        ["--data_path", str(world / "step3_ppo"), "--data_split", "0,0,10", "--actor_model_name_or_path", str(step1),
         "--critic_model_name_or_path", str(step2), "--output_dir", str(step3), *step3_flags, *ppo_extra]))
    return {"steps": summary["steps"]}


def main(argv: list[str]) -> None:
    from utils import dist

    world, base, out, *cells = argv
    for cell in cells:
        stage, lora, offload = (int(x) for x in cell.split(":"))
        result = {"cell": cell}
        try:
            result.update(run_cell(Path(world), Path(base), Path(out) / cell.replace(":", "-"), stage, lora, bool(offload)))
            result["ok"] = True
        except Exception as err:  # report the cell and go on: the test names every failing cell
            traceback.print_exc()
            result.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[-1][-300:] if str(err) else ''}")
        if dist.is_main():
            print("CELL " + json.dumps(result), flush=True)
    dist.shutdown()  # as the steps' entry points do: the group ends before interpreter teardown


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
