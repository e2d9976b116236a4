"""What each rank of tests/test_four_ranks.py runs; the deepspeed launcher starts one per rank, as on the
users' 4-GPU node (``--no_local_rank``: the rank comes from the environment).

    python -m tests.four_ranks_run steps WORLD BASE OUT STEP3_FLAG...
        steps 1-3 in this process, as tests/zero_matrix_cells.py runs them (ZeRO-3 with LoRA, every
        parameter partitioned and prefetched), the given step-3 flags added
    python -m tests.four_ranks_run fail RANK STEP1_ARG...
        step 1's entry point, where rank RANK alone finds its base model missing (one node without the
        checkpoint) after the process group has started, while the other ranks go on
"""
from __future__ import annotations

import sys
from pathlib import Path


def run_steps(world: str, base: str, out: str, ppo_extra: list[str]) -> int:
    from tests.zero_matrix_cells import run_cell
    from utils import dist

    run_cell(Path(world), Path(base), Path(out), stage=3, lora=4, offload=False, ppo_extra=ppo_extra)
    dist.shutdown()  # as the steps' entry points do: the group ends before interpreter teardown
    return 0


def fail_on_rank(failing_rank: int, argv: list[str]) -> int:
    from step1_supervised_finetuning_LM.main import main
    from utils import dist, model
    from utils.errors import UserError

    real = model.require_checkpoint

    def require_checkpoint(path, flag, *args, **kwargs):
        if dist.rank() == failing_rank:
            raise UserError(f"{flag} {path}: no checkpoint on rank {failing_rank} (the test's one-rank failure)")
        return real(path, flag, *args, **kwargs)

    model.require_checkpoint = require_checkpoint  # step 1 imports it from utils.model when it runs
    return main(argv)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "steps":
        raise SystemExit(run_steps(rest[0], rest[1], rest[2], rest[3:]))
    raise SystemExit(fail_on_rank(int(rest[0]), rest[1:]))
