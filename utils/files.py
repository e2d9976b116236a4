"""Atomic writes shared by the steps and the data/model commands: a reader never sees half a file or
half a folder."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

from utils.dist import launch_rank
from utils.errors import UserError


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` to ``path`` through a temporary sibling and one rename; returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A temporary sibling of ``target`` to fill; it replaces ``target`` in one rename when the block ends
    normally (an older ``target`` is moved aside first and then removed) and is removed when it raises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    # mkdir, not tempfile.mkdtemp: the finished folder gets the user's umask, not mode 0700
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        honour_umask(tmp)
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


def check_output_folder(folder: str | os.PathLike, flag: str = "--output_dir") -> None:
    """Refuse at start an output folder that the final save would fail on (after hours of training, and
    having renamed a user's file aside): an existing file, a path under a file, a parent this user cannot
    write. Writes nothing."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{flag} {folder}: a file is there, not a folder; move it away or choose another "
                                f"{flag}")
    existing = next((p for p in folder.parents if p.exists()), folder)  # "/" has no parents
    if not existing.is_dir():
        raise OutputFolderError(f"{flag} {folder}: {existing} is a file, so the folder cannot be created; "
                                f"choose another {flag}")
    # the parent too: steps 1-2 replace the folder by a rename there, and the output lock lives there
    for place in (existing, folder) if folder.is_dir() else (existing,):
        if not os.access(place, os.W_OK | os.X_OK):
            raise OutputFolderError(f"{flag} {folder}: {place} is not writable by this user; choose another {flag}")



class OutputInUseError(UserError):
    """Another run holds the output folder's lock."""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, flag: str = "--output_dir") -> Iterator[None]:
    """One writer per output folder: rank 0 holds an exclusive ``flock`` on the sibling ``.NAME.lock``
    for the block; a second run into the same folder stops at once with the holder's pid, host and start.

    A sibling, not a file inside: steps 1 and 2 replace their whole folder by a rename. ``flock`` dies
    with its process, so a killed run leaves no stale lock; other ranks of the same run write only
    what rank 0 coordinates and take no lock."""
    folder = Path(folder).resolve()
    if launch_rank() != 0:
        yield
        return
    lock = folder.parent / f".{folder.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = lock.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process"
        handle.close()
        raise OutputInUseError(f"{flag} {folder}: another run is writing there ({holder}); wait for it to end "
                               f"or choose another {flag}") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the flock
