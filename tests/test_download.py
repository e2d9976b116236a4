"""``python -m tools.download``, with the hub stubbed at ``huggingface_hub.snapshot_download`` (no network)."""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                    RepositoryNotFoundError)

from tools.download import main

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
DATASET_FILES = ("README.md", "harmless-base/train.jsonl.gz", "harmless-base/test.jsonl.gz",
                 "helpful-base/train.jsonl.gz")


class FakeHub:
    """Stands in for ``snapshot_download``: writes the repo's files that match ``allow_patterns``,
    or writes a first file and then raises ``error`` (a download that breaks half-way)."""

    def __init__(self, files: tuple[str, ...], error: BaseException | None = None):
        self.files, self.error, self.calls = files, error, []

    def __call__(self, repo_id: str, *, local_dir, repo_type=None, revision=None, allow_patterns=None, **_):
        self.calls.append(dict(repo_id=repo_id, local_dir=Path(local_dir), repo_type=repo_type,
                               revision=revision, allow_patterns=allow_patterns))
        for name in self.files:
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / name).write_text(name)
                if self.error is not None:
                    raise self.error
        return str(local_dir)


@pytest.fixture
def online(tmp_path, monkeypatch):
    """Run in an empty folder (the default targets are relative) with the hub considered reachable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path


def stub(monkeypatch, files=MODEL_FILES, error=None) -> FakeHub:
    hub = FakeHub(files, error)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    return hub


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def http_error(cls, message: str):
    # hub HTTP errors want a response; only its headers and request are read
    return cls(message, response=SimpleNamespace(headers={}, request=None, status_code=404))


def test_model_lands_in_model_pth_under_its_last_name(online, monkeypatch, capsys):
    hub = stub(monkeypatch)
    assert main(["model", "meta-llama/Llama-2-7b-hf", "--revision", "v1"]) == 0
    target = online / "model_pth" / "Llama-2-7b-hf"
    assert sorted(p.name for p in target.iterdir()) == sorted(MODEL_FILES)
    [call] = hub.calls
    assert (call["repo_id"], call["repo_type"], call["revision"], call["allow_patterns"]) == \
        ("meta-llama/Llama-2-7b-hf", "model", "v1", None)
    # it downloaded into a hidden sibling, which became the target
    assert call["local_dir"].resolve().parent == target.parent and call["local_dir"].name.startswith(".Llama-2-7b-hf.tmp-")
    assert leftovers(online / "model_pth") == ["Llama-2-7b-hf"]
    assert "model_pth/Llama-2-7b-hf" in capsys.readouterr().out


def test_dataset_subset_fetches_only_that_folder(online, monkeypatch):
    hub = stub(monkeypatch, DATASET_FILES)
    assert main(["dataset", "Anthropic/hh-rlhf", "--subset", "harmless-base"]) == 0
    target = online / "datasets" / "hh-rlhf"
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == \
        ["harmless-base/test.jsonl.gz", "harmless-base/train.jsonl.gz"]
    [call] = hub.calls
    assert (call["repo_type"], call["allow_patterns"]) == ("dataset", ["harmless-base/*"])


def test_dataset_local_dir_and_whole_repo(online, monkeypatch):
    hub = stub(monkeypatch, ("conqord_step1_data/train.json", "conqord_step2_data/train.json"))
    assert main(["dataset", "hooope/CONQORD_dataset", "--subset", "conqord_step1_data",
                 "--local_dir", "data/conqord"]) == 0
    assert (online / "data/conqord/conqord_step1_data/train.json").is_file()
    assert not (online / "data/conqord/conqord_step2_data").exists()
    assert hub.calls[0]["allow_patterns"] == ["conqord_step1_data/*"]


def test_unknown_subset_is_an_error_not_an_empty_folder(online, monkeypatch, capsys):
    stub(monkeypatch, DATASET_FILES)
    assert main(["dataset", "Anthropic/hh-rlhf", "--subset", "harmless-bse"]) == 2
    assert "has no folder harmless-bse/" in capsys.readouterr().err
    assert leftovers(online / "datasets") == []


def test_offline_mode_says_what_to_place_where_without_calling_the_hub(online, monkeypatch, capsys):
    hub = stub(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["model", "meta-llama/Llama-2-7b-hf"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: offline: place the model's Hugging Face folder (config.json, weights, tokenizer) at "
                   "model_pth/Llama-2-7b-hf, or run this command where the hub is reachable\n")
    assert hub.calls == []
    assert main(["dataset", "Anthropic/hh-rlhf", "--subset", "harmless-base"]) == 2
    assert "place the dataset's harmless-base/ folder at datasets/hh-rlhf/harmless-base" in capsys.readouterr().err


def test_offline_cli_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "tools.download", "model", "meta-llama/Llama-2-7b-hf"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: offline: place the model's Hugging Face folder (config.json, weights, tokenizer) at "
        "model_pth/Llama-2-7b-hf, or run this command where the hub is reachable"]
    assert not (tmp_path / "model_pth").exists() or leftovers(tmp_path / "model_pth") == []


@pytest.mark.parametrize("error", [
    OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."),
    LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder"),
    ConnectionError("[Errno -3] Temporary failure in name resolution"),
], ids=lambda e: type(e).__name__)
def test_unreachable_hub_fails_at_once_and_leaves_no_half_folder(online, monkeypatch, capsys, error):
    stub(monkeypatch, error=error)
    assert main(["model", "meta-llama/Llama-2-7b-hf"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: could not download meta-llama/Llama-2-7b-hf ({type(error).__name__}: ")
    assert line.endswith("place the model's Hugging Face folder (config.json, weights, tokenizer) at "
                         "model_pth/Llama-2-7b-hf, or run this command where the hub is reachable")
    assert leftovers(online / "model_pth") == []


def test_repo_not_found(online, monkeypatch, capsys):
    stub(monkeypatch, error=http_error(RepositoryNotFoundError, "404 Client Error. Repository Not Found"))
    assert main(["dataset", "Anthropic/no-such-set"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: no dataset Anthropic/no-such-set on the Hugging Face hub")
    assert "https://huggingface.co/datasets/Anthropic/no-such-set" in line
    assert leftovers(online / "datasets") == []


def test_gated_repo_says_how_to_get_access(online, monkeypatch, capsys):
    stub(monkeypatch, error=http_error(GatedRepoError, "403 Client Error. Access to model is restricted"))
    assert main(["model", "meta-llama/Llama-2-7b-hf"]) == 2
    assert "gated: accept its terms at https://huggingface.co/meta-llama/Llama-2-7b-hf" in capsys.readouterr().err


def test_existing_target_is_refused_unless_forced(online, monkeypatch, capsys):
    hub = stub(monkeypatch)
    target = online / "model_pth" / "Llama-2-7b-hf"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("keep")
    assert main(["model", "meta-llama/Llama-2-7b-hf"]) == 2
    assert "model_pth/Llama-2-7b-hf already exists and is not empty; pass --force" in capsys.readouterr().err
    assert hub.calls == [] and (target / "mine.txt").is_file()

    assert main(["model", "meta-llama/Llama-2-7b-hf", "--force"]) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(MODEL_FILES)
    assert leftovers(online / "model_pth") == ["Llama-2-7b-hf"]


def test_existing_empty_folder_is_filled(online, monkeypatch):
    stub(monkeypatch)
    (online / "model_pth" / "Llama-2-7b-hf").mkdir(parents=True)
    assert main(["model", "meta-llama/Llama-2-7b-hf"]) == 0
    assert (online / "model_pth" / "Llama-2-7b-hf" / "config.json").is_file()
