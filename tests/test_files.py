"""utils.files: atomic folder and JSONL writes, with the modes the umask asks for."""
from __future__ import annotations

import os
import stat

import pytest

from utils.files import staged_folder, write_jsonl


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_staged_folder_gives_files_and_folders_the_umask_modes(tmp_path, umask_022):
    target = tmp_path / "checkpoint"
    with staged_folder(target) as tmp:
        private = tmp / "model.safetensors"
        private.write_bytes(b"weights")
        private.chmod(0o600)  # as safetensors writes it
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "x.json").write_text("{}")
    assert _mode(target) == 0o755 and _mode(target / "sub") == 0o755
    assert _mode(target / "model.safetensors") == 0o644 and _mode(target / "sub" / "x.json") == 0o644


def test_staged_folder_replaces_an_old_folder_and_leaves_nothing_on_error(tmp_path, umask_022):
    target = tmp_path / "out"
    with staged_folder(target) as tmp:
        (tmp / "a").write_text("old")
    with staged_folder(target) as tmp:
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "new"
    with pytest.raises(RuntimeError):
        with staged_folder(target) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_jsonl_is_atomic_and_counts(tmp_path):
    assert write_jsonl(tmp_path / "d" / "rows.jsonl", ({"i": i} for i in range(3))) == 3
    assert (tmp_path / "d" / "rows.jsonl").read_text().count("\n") == 3
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["rows.jsonl"]


def test_hf_checkpoints_are_readable_by_others(tmp_path, umask_022, toy_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.model import save_hf_checkpoint

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(toy_tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    out = save_hf_checkpoint(model, toy_tokenizer, tmp_path / "step1", {"flag": 1})
    assert _mode(out) == 0o755
    assert {p.name: _mode(p) for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}
