"""Step 3's output folder between runs: resumable states that belong to the run that saved them.

``--output_dir/resume/`` holds DeepSpeed states of actor and critic (the last ``--save_total_limit``), for each
``manifest-stepN.json`` (the sha256 of every file of that state) and ``trainer_state.json``, written last,
which names the newest complete state and records the flags and input files that made it, so that ``--resume``
continues only the same run; ``train_log.jsonl`` the per-step log. ``--resume`` loads only a state whose files
match its manifest exactly, and loads them with ``torch.load(weights_only=True)``: a planted pickle is refused,
never run. A run without ``--resume`` owns its folder: it moves an earlier run's items into ``earlier_run/``
and removes that only after its own first save, so a kill before then loses nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from step3_RL_finetune_LLM.rlhf_engine import Engines
from utils import dist
from utils.data_cache import path_stamp
from utils.errors import UserError
from utils.files import atomic_file, honour_umask, naming_the_path

RESUME_DIR = "resume"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"
EARLIER_RUN = "earlier_run"  # an earlier run's items, set aside by a fresh run until its first save
RUN_ITEMS = (RESUME_DIR, LOG_FILE, "actor", "critic")
# Flags a resumed run may change: how long it runs, how often and where it logs and saves, where the
# tokenised-data cache lives, launcher bookkeeping. Any other flag changes the run itself: --resume refuses.
RESUMABLE_CHANGES = frozenset({"resume", "max_steps", "num_train_epochs", "log_interval", "save_interval",
                               "save_total_limit", "print_loss", "enable_tensorboard", "tensorboard_path",
                               "local_rank", "output_dir", "overwrite_output_dir", "deepspeed", "dry_run",
                               "data_output_path"})


class RefusedRun(UserError):
    """``--resume`` cannot load the state it finds: none, another run's, or files that are not what was saved."""


def input_paths(args: argparse.Namespace) -> dict[str, list[str]]:
    """The models and data files a run reads, by flag."""
    reward = args.reward_model_name_or_path or args.critic_model_name_or_path
    paths = {"data_path": args.data_path, "actor_model_name_or_path": [args.actor_model_name_or_path],
             "critic_model_name_or_path": [args.critic_model_name_or_path],
             "reward_model_name_or_path": [reward] if args.quality_reward == "model" else [],
             "tokenizer_model_name_or_path": [args.tokenizer_model_name_or_path],
             "unsupervised_dataset_name": args.unsupervised_dataset_name or []}
    return {flag: value for flag, value in paths.items() if value and value[0]}


def made_by(args: argparse.Namespace, inputs: dict[str, list[str]]) -> dict[str, Any]:
    """What a resumable state records of the run that saved it: its flags (those a resume may not change: all
    of them, hence the whole namespace) and its inputs' (:func:`input_paths`) file names, sizes and mtimes (a
    rerun step 1 changes them); as JSON reads them back."""
    record = {"flags": {k: v for k, v in sorted(vars(args).items()) if k not in RESUMABLE_CHANGES},
              "inputs": {flag: [path_stamp(p) for p in paths] for flag, paths in inputs.items()}}
    return json.loads(json.dumps(record, default=str))


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _changes(old: dict[str, Any] | None, new: dict[str, Any], paths: dict[str, list[str]]) -> list[str]:
    """How the run that saved a state differs from this one: ``--flag old → new``, then changed inputs
    (``paths``: this run's :func:`input_paths`)."""
    if old is None:
        return ["it records no flags (saved before step 3 recorded them)"]
    flags = [f"--{k} {_shown(old['flags'].get(k))} → {_shown(new['flags'].get(k))}"
             for k in sorted(old["flags"].keys() | new["flags"].keys()) if old["flags"].get(k) != new["flags"].get(k)]
    inputs = [f"--{k} {_shown(paths.get(k, []))}: its files changed since the state was saved"
              for k in dict.fromkeys([*old["inputs"], *new["inputs"]])
              if old["inputs"].get(k) != new["inputs"].get(k) and old["flags"].get(k) == new["flags"].get(k)]
    return flags + inputs


def read_resume_state(out: Path, provenance: dict[str, Any], inputs: dict[str, list[str]]) -> dict[str, Any]:
    """The state ``--resume`` continues from, checked before any engine is built: it must exist, be complete
    and come from a run with the same flags and inputs (an alpha=2 run's weights would otherwise continue
    quietly under alpha=0); ``provenance`` is this run's :func:`made_by`, ``inputs`` its :func:`input_paths`."""
    resume = out / RESUME_DIR
    file = resume / STATE_FILE
    if not file.is_file():
        earlier = (f"; {out / EARLIER_RUN} holds an earlier run's items, set aside by a run killed before its first "
                   f"save: move them back into {out} to resume that run") if (out / EARLIER_RUN).is_dir() else ""
        raise RefusedRun(f"--resume: no resumable checkpoint in {resume} (it is written every --save_interval "
                         f"steps){earlier}; drop --resume to start afresh")
    state = json.loads(file.read_text())
    changes = _changes(state.get("made_by"), provenance, inputs)
    if changes:
        raise RefusedRun(f"--resume: {resume} was saved by a run with other flags or inputs: {', '.join(changes)}; "
                         "rerun with its values or drop --resume to start afresh")
    for name in ("actor", "critic"):
        folder = resume / name / f"step{state['step']}"
        if not folder.is_dir():  # DeepSpeed would only warn and go on with the step-1 weights
            raise RefusedRun(f"--resume: {file} names step {state['step']} but {folder} is missing; "
                             "drop --resume to start afresh")
    _check_manifest(resume, state["step"])
    return state


def _manifest(resume: Path, step: int) -> Path:
    return resume / f"manifest-step{step}.json"


def _sha256_sums(resume: Path, step: int) -> dict[str, str]:
    """Every file of the state at ``step``, by path under ``resume``."""
    files = sorted(p for name in ("actor", "critic") for p in (resume / name / f"step{step}").rglob("*") if p.is_file())
    return {p.relative_to(resume).as_posix(): _sha256(p) for p in files}


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check_manifest(resume: Path, step: int) -> None:
    """The state's files are exactly those its save wrote (DeepSpeed unpickles them: a planted file would run)."""
    manifest = _manifest(resume, step)
    if not manifest.is_file():
        raise RefusedRun(f"--resume: {manifest} is missing, so the files of step {step}'s state cannot be checked "
                         "(saved before step 3 wrote manifests, or tampered with); drop --resume to start afresh")
    expected, found = json.loads(manifest.read_text()), _sha256_sums(resume, step)
    problems = ([f"{name} changed" for name in expected.keys() & found.keys() if expected[name] != found[name]]
                + [f"{name} is missing" for name in expected.keys() - found.keys()]
                + [f"{name} was added" for name in found.keys() - expected.keys()])
    if problems:
        raise RefusedRun(f"--resume: the files of {resume} differ from {manifest.name} "
                         f"({', '.join(sorted(problems))}); it is not loaded: drop --resume to start afresh")


def save_resumable(engines: Engines, out: Path, state: dict[str, Any], keep: int) -> None:
    """Every rank writes its shards of actor and critic; then rank 0 writes the manifest and, last, the state
    file that names them. A failed save (a full disk) removes its half-written ``stepN`` folders and re-raises
    an ``OSError`` naming the path. Its first success ends the fresh start (:func:`drop_earlier_run`)."""
    resume = out / RESUME_DIR
    tag = f"step{state['step']}"
    try:
        with naming_the_path(resume):
            for name in ("actor", "critic"):
                getattr(engines, name).save_checkpoint(str(resume / name), tag=tag)
    except BaseException:
        for name in ("actor", "critic"):
            shutil.rmtree(resume / name / tag, ignore_errors=True)
        raise
    dist.barrier()  # every rank's shards are on disk before rank 0 names them
    if dist.is_main():
        honour_umask(resume)  # DeepSpeed makes zero_to_fp32.py executable by its owner only
        with naming_the_path(resume):
            _write_json_atomic(_manifest(resume, state["step"]), _sha256_sums(resume, state["step"]))
            _write_json_atomic(resume / STATE_FILE, state)  # written last: names a complete checkpoint
        removed = _prune_states(resume, state["step"], keep)
        pruned = f" (removed {', '.join(removed)}: --save_total_limit {keep})" if removed else ""
        print(f"saved resumable state (step {state['step']}) to {resume}{pruned}", flush=True)
        drop_earlier_run(out)
    dist.barrier()


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _prune_states(resume: Path, step: int, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest states up to ``step``: each holds the optimizer's moments, about
    three times the weights. Later ones (a killed run's, never named by the state file) go too."""
    removed = []
    for name in ("actor", "critic"):
        steps = sorted(int(p.name[4:]) for p in (resume / name).glob("step*") if p.name[4:].isdigit())
        kept = [s for s in steps if s <= step][-keep:]
        for old in (s for s in steps if s not in kept):
            shutil.rmtree(resume / name / f"step{old}")
            _manifest(resume, old).unlink(missing_ok=True)
            removed.append(f"{name}/step{old}")
    return removed


def load_resumable(engines: Engines, out: Path, step: int) -> None:
    for name in ("actor", "critic"):
        engine = getattr(engines, name)
        with weights_only_loading(engine):
            engine.load_checkpoint(str(out / RESUME_DIR / name), tag=f"step{step}")


def _safe_globals() -> list[type]:
    """What DeepSpeed 0.19's ZeRO optimizer states hold besides tensors and plain containers (found by
    ``torch.serialization.get_unsafe_globals_in_checkpoint``): plain records, built without running code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_loading(engine) -> Iterator[None]:
    """DeepSpeed reads every state file through its checkpoint engine's ``load``, which unpickles with
    ``weights_only=False``; for the block it reads them with ``weights_only=True`` (tensors, plain data and
    :func:`_safe_globals` only), so a planted pickle is refused before its payload runs."""
    checkpoint_engine = engine.checkpoint_engine
    allowed = _safe_globals()

    def load(path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            lines = str(err).splitlines()
            reason = next((line[line.index("Unsupported"):].split(" was not")[0] for line in lines
                           if "Unsupported" in line), lines[0])
            raise RefusedRun(f"--resume: {path} holds more than tensors and plain data ({reason}); it was not "
                             "loaded: drop --resume to start afresh") from None

    checkpoint_engine.load = load  # an instance attribute: shadows the class's method
    try:
        yield
    finally:
        del checkpoint_engine.load


def truncate_log(log_file: Path, step: int) -> None:
    """The resumed run logs the steps after its state again: drop the killed run's lines for them."""
    if not log_file.is_file():
        return
    kept = []
    for line in log_file.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)  # as written: a re-serialised line could differ from the trainer's (NaN)
        except json.JSONDecodeError:  # torn by the kill: it was being written after the last save
            continue
    with atomic_file(log_file) as handle:
        handle.write("".join(f"{line}\n" for line in kept))


def start_afresh(out: Path) -> None:
    """Without --resume a run owns its folder: an earlier run's state would wait there for a later --resume, and
    its log would be appended to. Its items are moved into ``earlier_run/``, removed at this run's first save
    (:func:`drop_earlier_run`): killed before that, the earlier run stays recoverable. An ``earlier_run/`` left
    by a run killed so is kept, and that run's items (a log, nothing resumable) are removed."""
    aside = out / EARLIER_RUN
    items = [out / name for name in RUN_ITEMS if (out / name).exists()]
    if aside.is_dir():
        for path in items:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        removed = f" (removed that run's {', '.join(p.name for p in items)})" if items else ""
        print(f"step 3: kept {aside}, an earlier run's items set aside by a run killed before its first save"
              f"{removed}; it is removed at this run's first save; to keep it, stop now and move its items back "
              f"into {out}", flush=True)
        return
    if not items:
        return
    aside.mkdir()
    for path in items:
        path.rename(aside / path.name)
    print(f"step 3: moved {', '.join(p.name for p in items)} of an earlier run to {aside} (no --resume: starting "
          f"afresh); it is removed at this run's first save; if this run is stopped before, move them back into "
          f"{out} to recover that run", flush=True)


def drop_earlier_run(out: Path) -> None:
    """This run has saved: the earlier run's items set aside at its start are no longer needed (rank 0)."""
    aside = out / EARLIER_RUN
    if aside.is_dir():
        shutil.rmtree(aside)
        print(f"step 3: removed {aside} (the earlier run's items; this run has saved)", flush=True)
