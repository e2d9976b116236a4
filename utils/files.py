"""Atomic writes shared by the steps and the data/model commands: a reader never sees half a file or
half a folder."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Iterator


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


def honour_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``open``/``mkdir`` would: files
    ``0666 & ~umask``, folders ``0777 & ~umask`` (0644 / 0755 under the usual 022). Libraries that write
    through private temporary files (safetensors: 0600) would otherwise leave checkpoints that nobody
    else on a shared machine can read."""
    mask = os.umask(0)
    os.umask(mask)  # reading the umask means setting it: put it back at once
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)

