"""Step 3's output folder between runs: resumable states that belong to the run that saved them.

``--output_dir/resume/`` holds DeepSpeed states of actor and critic (the last ``--save_total_limit``) and
``trainer_state.json``, written last, which names the newest complete state and records the flags and
input files that made it, so that ``--resume`` continues only the same run; ``train_log.jsonl`` the
per-step log. A run without ``--resume`` owns its folder and starts clean.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from step3_RL_finetune_LLM.rlhf_engine import Engines
from utils import dist
from utils.data_cache import path_stamp
from utils.errors import UserError
from utils.files import honour_umask, write_jsonl

RESUME_DIR = "resume"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"
# Flags a resumed run may change: how long it runs, how often and where it logs and saves, where the
# tokenised-data cache lives, launcher bookkeeping. Any other flag changes the run itself: --resume refuses.
RESUMABLE_CHANGES = frozenset({"resume", "max_steps", "num_train_epochs", "log_interval", "save_interval",
                               "save_total_limit", "print_loss", "enable_tensorboard", "tensorboard_path",
                               "local_rank", "output_dir", "deepspeed", "dry_run", "data_output_path"})


class RefusedRun(UserError):
    """Step 3 cannot do what its flags ask: resume another run's state, or never update the actor."""


def _input_paths(args: argparse.Namespace) -> dict[str, list[str]]:
    """The models and data files a run reads, by flag."""
    reward = args.reward_model_name_or_path or args.critic_model_name_or_path
    paths = {"data_path": args.data_path, "actor_model_name_or_path": [args.actor_model_name_or_path],
             "critic_model_name_or_path": [args.critic_model_name_or_path],
             "reward_model_name_or_path": [reward] if args.quality_reward == "model" else [],
             "tokenizer_model_name_or_path": [args.tokenizer_model_name_or_path],
             "unsupervised_dataset_name": args.unsupervised_dataset_name or []}
    return {flag: value for flag, value in paths.items() if value and value[0]}


def made_by(args: argparse.Namespace) -> dict[str, Any]:
    """What a resumable state records of the run that saved it: its flags (those a resume may not change) and
    its inputs' file names, sizes and mtimes (a rerun step 1 changes them); as JSON reads them back."""
    record = {"flags": {k: v for k, v in sorted(vars(args).items()) if k not in RESUMABLE_CHANGES},
              "inputs": {flag: [path_stamp(p) for p in paths] for flag, paths in _input_paths(args).items()}}
    return json.loads(json.dumps(record, default=str))


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _changes(old: dict[str, Any] | None, new: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """How the run that saved a state differs from this one: ``--flag old → new``, then changed inputs."""
    if old is None:
        return ["it records no flags (saved before step 3 recorded them)"]
    flags = [f"--{k} {_shown(old['flags'].get(k))} → {_shown(new['flags'].get(k))}"
             for k in sorted(old["flags"].keys() | new["flags"].keys()) if old["flags"].get(k) != new["flags"].get(k)]
    paths = _input_paths(args)
    inputs = [f"--{k} {_shown(paths.get(k, []))}: its files changed since the state was saved"
              for k in dict.fromkeys([*old["inputs"], *new["inputs"]])
              if old["inputs"].get(k) != new["inputs"].get(k) and old["flags"].get(k) == new["flags"].get(k)]
    return flags + inputs


def read_resume_state(out: Path, provenance: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The state ``--resume`` continues from, checked before any engine is built: it must exist, be complete
    and come from a run with the same flags and inputs (an alpha=2 run's weights would otherwise continue
    quietly under alpha=0)."""
    resume = out / RESUME_DIR
    file = resume / STATE_FILE
    if not file.is_file():
        raise RefusedRun(f"--resume: no resumable checkpoint in {resume} (it is written every --save_interval "
                         "steps); drop --resume to start afresh")
    state = json.loads(file.read_text())
    changes = _changes(state.get("made_by"), provenance, args)
    if changes:
        raise RefusedRun(f"--resume: {resume} was saved by a run with other flags or inputs: {', '.join(changes)}; "
                         "rerun with its values or drop --resume to start afresh")
    for name in ("actor", "critic"):
        folder = resume / name / f"step{state['step']}"
        if not folder.is_dir():  # DeepSpeed would only warn and go on with the step-1 weights
            raise RefusedRun(f"--resume: {file} names step {state['step']} but {folder} is missing; "
                             "drop --resume to start afresh")
    return state


def save_resumable(engines: Engines, out: Path, state: dict[str, Any], keep: int) -> None:
    resume = out / RESUME_DIR
    for name in ("actor", "critic"):
        getattr(engines, name).save_checkpoint(str(resume / name), tag=f"step{state['step']}")
    dist.barrier()  # every rank's shards are on disk before rank 0 names them
    if dist.is_main():
        honour_umask(resume)  # DeepSpeed makes zero_to_fp32.py executable by its owner only
        tmp = resume / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, resume / STATE_FILE)  # written last: names a complete checkpoint
        removed = _prune_states(resume, state["step"], keep)
        pruned = f" (removed {', '.join(removed)}: --save_total_limit {keep})" if removed else ""
        print(f"saved resumable state (step {state['step']}) to {resume}{pruned}", flush=True)
    dist.barrier()


def _prune_states(resume: Path, step: int, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest states up to ``step``: each holds the optimizer's moments, about
    three times the weights. Later ones (a killed run's, never named by the state file) go too."""
    removed = []
    for name in ("actor", "critic"):
        steps = sorted(int(p.name[4:]) for p in (resume / name).glob("step*") if p.name[4:].isdigit())
        kept = [s for s in steps if s <= step][-keep:]
        for old in (s for s in steps if s not in kept):
            shutil.rmtree(resume / name / f"step{old}")
            removed.append(f"{name}/step{old}")
    return removed


def load_resumable(engines: Engines, out: Path, step: int) -> None:
    for name in ("actor", "critic"):
        getattr(engines, name).load_checkpoint(str(out / RESUME_DIR / name), tag=f"step{step}")


def truncate_log(log_file: Path, step: int) -> None:
    """The resumed run logs the steps after its state again: drop the killed run's lines for them."""
    if not log_file.is_file():
        return
    rows = []
    for line in log_file.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # torn by the kill: it was being written after the last save
            continue
    write_jsonl(log_file, (row for row in rows if row["step"] <= step))


def start_afresh(out: Path) -> None:
    """Without --resume a run owns its folder: an older run's state would wait there for a later --resume,
    and its log would be appended to."""
    old = [path for path in (out / RESUME_DIR, out / LOG_FILE) if path.exists()]
    for path in old:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if old:
        print(f"step 3: removed {' and '.join(map(str, old))} of an earlier run (no --resume: starting afresh)",
              flush=True)
