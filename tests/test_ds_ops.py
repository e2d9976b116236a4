"""DeepSpeed's CPU comm op: a killed build's lock no longer hangs every later run; a live build is waited on
for a bounded time, naming its lock."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils import ds_ops

ROOT = Path(__file__).resolve().parent.parent
OP = "deepspeed_shm_comm"


def _python(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built_op_folder(tmp_path_factory) -> Path:
    """A cache holding the built op (the project cache's, copied: a cold build takes a minute)."""
    cache = tmp_path_factory.mktemp("extensions")
    env = {"TORCH_EXTENSIONS_DIR": str(cache)}
    done = _python("from utils import ds_ops; ds_ops.ensure_built()", env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (cache / OP).is_dir()
    return cache


def test_a_killed_builds_lock_no_longer_hangs_the_process_group_start(built_op_folder, tmp_path):
    cache = tmp_path / "extensions"
    shutil.copytree(built_op_folder, cache)
    (cache / OP / "lock").write_text("")  # what torch's FileBaton leaves when its builder is killed
    code = "from utils import dist; dist.init_distributed(); dist.shutdown(); print('started')"
    try:
        done = _python(code, {"TORCH_EXTENSIONS_DIR": str(cache), "RANK": "0", "WORLD_SIZE": "1"}, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("init_distributed waited on a stale torch build lock")
    assert done.returncode == 0, done.stderr
    assert f"removed {cache / OP / 'lock'}: left by a killed DeepSpeed op build" in done.stdout
    assert "started" in done.stdout and not (cache / OP / "lock").exists()


def test_a_live_build_is_waited_on_for_a_bounded_time_naming_its_lock(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; h = open(sys.argv[1], 'a+'); fcntl.flock(h, fcntl.LOCK_EX); h.write('pid 1 on x'); "
        "h.flush(); print('held', flush=True); time.sleep(60)"), str(tmp_path / ds_ops.BUILD_LOCK)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(ds_ops.OpBuildLockError, match=rf"{tmp_path / ds_ops.BUILD_LOCK}: held by pid 1 on x .*"
                                                          rf"{ds_ops.TIMEOUT_ENV}"):
            with ds_ops.build_lock(tmp_path, timeout=2):
                pass
        assert time.monotonic() - start < 10
        assert f"waiting for {tmp_path / ds_ops.BUILD_LOCK}" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    with ds_ops.build_lock(tmp_path, timeout=2):  # the holder's death released it
        assert "pid" in (tmp_path / ds_ops.BUILD_LOCK).read_text()


def test_the_cache_is_the_projects_and_keyed_by_versions(monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "")  # recorded, so the variable ensure_built sets is undone too
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    import torch

    folder = ds_ops.extensions_dir()
    assert folder.parent == ds_ops.PROJECT_CACHE and torch.__version__ in folder.name


def test_a_bad_timeout_is_named(monkeypatch):
    monkeypatch.setenv(ds_ops.TIMEOUT_ENV, "soon")
    with pytest.raises(ds_ops.UserError, match=f"{ds_ops.TIMEOUT_ENV}='soon'"):
        ds_ops._timeout()
