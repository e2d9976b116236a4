"""Atomic writes shared by the steps and the data/model commands: a reader never sees half a file or
half a folder; and output folders that never replace what the user did not ask them to.

Every folder this project writes carries :data:`MARKER`, an empty hidden file (plain ``transformers`` ignores
it); folders of earlier versions are recognised by the files they wrote (:data:`EARLIER_SIGNS`). Only such a
folder is ever deleted or replaced; a non-empty folder of anything else is refused at start, or with
``--overwrite_output_dir`` moved aside to a visible sibling (:func:`move_aside`), never deleted. A failed
write removes its own partial output and re-raises an ``OSError`` naming the path it was writing."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import IO, Iterable, Iterator

from utils.dist import launch_rank
from utils.errors import UserError

MARKER = ".conqord-output"
# What earlier versions wrote, before the marker: an HF checkpoint's flags (steps 1-2, step 3's actor/),
# step 3's log and resumable state, step 4's results and an interrupted step 4's generation cache
# (<checkpoint>/<benchmark>/<method>/), an imported GGUF's record; glob patterns
EARLIER_SIGNS = ("training_args.json", "train_log.jsonl", "resume/trainer_state.json", "actor/training_args.json",
                 "results.json", "judge_cache.jsonl", "*/*/*/generations.jsonl", "conversion.json")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A UTF-8 text handle on a temporary sibling of ``path`` (its folder created) that replaces ``path`` in one
    rename when the block ends normally, and is removed when it raises: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming_the_path(path), tmp.open("w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(target: Path, ours: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``target`` to fill; it replaces ``target`` in one rename when the block ends
    normally and is removed when it raises. An older ``target`` of ours is moved aside first and then
    removed; any other folder is only moved aside (:func:`move_aside`). The finished folder carries
    :data:`MARKER`. An ``OSError`` that names no file is re-raised naming ``target``.

    ``ours=False``: third-party files fetched as they are (a hub download, whose ``--force`` asked to replace
    what is there): no marker, and the older folder is removed whoever wrote it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    # mkdir, not tempfile.mkdtemp: the finished folder gets the user's umask, not mode 0700
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        with naming_the_path(target):
            yield tmp
            if ours:
                mark_output(tmp)
            honour_umask(tmp)
            if ours and _is_foreign(target):
                move_aside(target)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old)
            else:
                tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def naming_the_path(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (a library's writer, a full disk) as one naming ``path``, so
    that the line a failed run ends with says where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def mark_output(folder: Path) -> None:
    """Mark ``folder`` as written by this project: it may be replaced by a later run."""
    (folder / MARKER).touch()


def is_ours(folder: Path) -> bool:
    """Whether ``folder`` was written by this project (this version's marker or an earlier version's files)."""
    return any(next(folder.glob(name), None) is not None for name in (MARKER, *EARLIER_SIGNS))


def move_aside(folder: Path) -> Path:
    """Rename a folder this project did not write to a visible sibling ``NAME.moved-YYYYmmdd-HHMMSS`` (never
    deleted: it is the user's) and say where."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = folder.with_name(f"{folder.name}.moved-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.moved-{stamp}-{n}")
    folder.rename(aside)
    print(f"moved {folder} to {aside}: it held files this project did not write (nothing of it was deleted)",
          flush=True)
    return aside


def remove_stale_staging(target: Path) -> None:
    """Remove the temporary siblings (``.NAME.tmp-PID-HEX``) that a killed save into ``target`` left, with a
    printed line; a live pid's folder is a save in progress and stays. Pids are looked up on this host:
    a folder that another host's live save is filling would be taken for stale (one writer per output
    folder, :func:`output_lock`, keeps such saves apart)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.tmp-(\d+)-[0-9a-f]+")
    for path in target.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and not _alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path}: a temporary folder left by a killed save (pid {match[1]})", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def honour_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``open``/``mkdir`` would: files
    ``0666 & ~umask``, folders and executables ``0777 & ~umask`` (0644 / 0755 under the usual 022).
    Libraries that write through private temporary files (safetensors: 0600) would otherwise leave
    checkpoints that nobody else on a shared machine can read; DeepSpeed makes its ``zero_to_fp32.py``
    executable for its owner only."""
    mask = os.umask(0)
    os.umask(mask)  # reading the umask means setting it: put it back at once
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            executable = path.is_dir() or path.stat().st_mode & stat.S_IXUSR
            path.chmod((0o777 if executable else 0o666) & ~mask)


class OutputFolderError(UserError):
    """An output folder that cannot be one: a file is there, or its parent cannot be made or written."""


def check_output_folder(folder: str | os.PathLike, flag: str = "--output_dir", overwrite: bool = False) -> None:
    """Refuse at start an output folder that the final save would fail on (after hours of training, and
    having renamed a user's file aside): an existing file, a path under a file, a parent this user cannot
    write; one that holds what is not a run's output (the current folder or one above it, the project,
    home, ``/``); and a non-empty folder this project did not write, unless ``overwrite`` (then
    :func:`claim_output_folder` moves it aside). Writes nothing."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{flag} {folder}: a file is there, not a folder; move it away or choose another "
                                f"{flag}")
    existing = next((p for p in folder.parents if p.exists()), folder)  # "/" has no parents
    if not existing.is_dir():
        raise OutputFolderError(f"{flag} {folder}: {existing} is a file, so the folder cannot be created; "
                                f"choose another {flag}")
    _refuse_shared_places(folder, flag)
    # the parent too: steps 1-2 replace the folder by a rename there, and the output lock lives there
    for place in (existing, folder) if folder.is_dir() else (existing,):
        if not os.access(place, os.W_OK | os.X_OK):
            raise OutputFolderError(f"{flag} {folder}: {place} is not writable by this user; choose another {flag}")
    if not overwrite and _is_foreign(folder):
        raise OutputFolderError(f"{flag} {folder}: it holds files this project did not write; choose another "
                                f"{flag}, or pass --overwrite_output_dir to move it aside (it is never deleted)")


def _refuse_shared_places(folder: Path, flag: str) -> None:
    """Folders that hold far more than one run's output: replacing or filling them would lose the user's files."""
    real = folder.resolve()
    cwd = Path.cwd().resolve()
    places = {cwd: "the current folder", Path.home().resolve(): "your home folder",
              PROJECT_ROOT: "the project folder", Path(real.anchor): "the file-system root"}
    what = places.get(real) or ("a folder above the current one" if real in cwd.parents else None)
    what = what or ("a folder above the project" if real in PROJECT_ROOT.parents else None)
    if what:
        raise OutputFolderError(f"{flag} {folder}: that is {what}; give the run a folder of its own (e.g. "
                                f"{folder / 'out'})")


# What a killed save or run of ours leaves in a folder: staging folders, an old copy, a lock (hidden)
_OUR_LEFTOVERS = re.compile(r"\..+\.(tmp-\d+-[0-9a-f]+|old-\d+|lock)")


def _is_foreign(folder: Path) -> bool:
    """A folder holding files this project did not write (our leftovers aside)."""
    return (folder.is_dir() and not is_ours(folder)
            and any(not _OUR_LEFTOVERS.fullmatch(path.name) for path in folder.iterdir()))


def claim_output_folder(folder: str | os.PathLike) -> None:
    """With ``--overwrite_output_dir``, once the folder's lock is held: move a folder this project did not
    write aside (:func:`check_output_folder` refused it otherwise). Rank 0 only, as the lock."""
    folder = Path(folder).absolute()
    if launch_rank() == 0 and _is_foreign(folder):
        move_aside(folder)


class InputOverwriteError(UserError):
    """The output folder is, holds or lies inside one of the run's inputs."""


def check_apart_from_inputs(folder: str | os.PathLike, inputs: dict[str, Iterable[str | None]],
                            flag: str = "--output_dir") -> None:
    """Refuse at start an output folder that equals, contains or lies inside an input path (by flag): the save
    would replace or mix with what the run read. Inputs that are no local path (hub ids) are skipped."""
    out = Path(folder).resolve()
    for name, paths in inputs.items():
        for path in filter(None, paths):
            source = Path(path).resolve()
            if not Path(path).exists():
                continue
            if source == out or out in source.parents or source in out.parents:
                where = ("is" if source == out else "holds" if out in source.parents else "lies inside")
                raise InputOverwriteError(f"{flag} {out} {where} {name} {source}: the run would write over its "
                                          f"own input; choose another {flag}")


class OutputInUseError(UserError):
    """Another run holds the output folder's lock."""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, flag: str = "--output_dir") -> Iterator[None]:
    """One writer per output folder: rank 0 holds an exclusive ``flock`` on the sibling ``.NAME.lock``
    for the block; a second run into the same folder stops at once with the holder's pid, host and start.
    The lock file is removed when the block ends.

    A sibling, not a file inside: steps 1 and 2 replace their whole folder by a rename. ``flock`` dies
    with its process, so a killed run leaves no stale lock (only its file); other ranks of the same run
    write only what rank 0 coordinates and take no lock."""
    folder = Path(folder).resolve()
    if launch_rank() != 0:
        yield
        return
    lock = folder.parent / f".{folder.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = _locked(lock, folder, flag)
    try:
        record_holder(handle)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: a waiter that opened it sees another inode and retries
        handle.close()  # releases the flock


def _locked(lock: Path, folder: Path, flag: str):
    """An open handle on ``lock`` holding its ``flock``. A holder removes the file before releasing it, so a
    lock won on a file no longer at ``lock`` (removed, or replaced by a newer run's) is no lock: retry."""
    while True:
        handle = lock.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(handle, "a process")
            handle.close()
            raise OutputInUseError(f"{flag} {folder}: another run is writing there ({holder}); wait for it to end "
                                   f"or choose another {flag}") from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        held = os.fstat(handle.fileno())
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return handle
        handle.close()


def record_holder(handle) -> None:
    """Write this process (pid, host, start) into a lock file whose ``flock`` it holds: a process that finds
    the lock held names its holder (:func:`lock_holder`)."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()


def lock_holder(handle, unknown: str) -> str:
    """Who holds the lock file open in ``handle``, as :func:`record_holder` wrote it (``unknown`` if nothing yet)."""
    handle.seek(0)
    return handle.read().strip() or unknown
