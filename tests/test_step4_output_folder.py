"""Step 4's --output_dir (issue 19): a folder this project did not write is refused or, with
--overwrite_output_dir, moved aside; an output folder over an evaluated checkpoint is refused. No model loads."""
from __future__ import annotations

from pathlib import Path

import pytest

from utils.model import save_hf_checkpoint
from worlds.toy_world import create_tiny_llama


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, toy_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("step4_out") / "tiny"
    save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, num_heads=2), toy_tokenizer,
                       folder)
    return folder


@pytest.fixture()
def no_model_load(monkeypatch):
    import step4_evaluation.evaluate as evaluate

    monkeypatch.setattr(evaluate, "create_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))


def _main(out: Path, checkpoint: Path, benchmark: Path, *extra: str) -> int:
    from step4_evaluation.main import main

    return main(["--checkpoints", f"tiny={checkpoint}", "--output_dir", str(out), "--benchmarks", f"toy={benchmark}",
                 "--max_examples", "2", *extra])


def test_a_folder_step4_did_not_write_is_refused_or_moved_aside(tmp_path, checkpoint, toy_world_dir, no_model_load,
                                                                 capsys, monkeypatch):
    import step4_evaluation.evaluate as evaluate

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.md").write_text("mine")
    benchmark = toy_world_dir / "eval/test.jsonl"
    assert _main(notes, checkpoint, benchmark) == 2
    assert capsys.readouterr().err == (f"error: --output_dir {notes}: it holds files this project did not write; "
                                       "choose another --output_dir, or pass --overwrite_output_dir to move it aside "
                                       "(it is never deleted)\n")
    monkeypatch.setattr(evaluate, "evaluate_checkpoints", lambda *a, **k: {})  # the folder handling only
    assert _main(notes, checkpoint, benchmark, "--overwrite_output_dir") == 0
    (aside,) = tmp_path.glob("notes.moved-*")
    assert (aside / "todo.md").read_text() == "mine" and (notes / "results.json").is_file()
    assert _main(notes, checkpoint, benchmark) == 0  # ours now


def test_an_output_folder_inside_a_checkpoint_is_refused(checkpoint, toy_world_dir, no_model_load, capsys):
    assert _main(checkpoint / "results", checkpoint, toy_world_dir / "eval/test.jsonl") == 2
    assert capsys.readouterr().err == (f"error: --output_dir {checkpoint}/results lies inside --checkpoints "
                                       f"{checkpoint}: the run would write over its own input; choose another "
                                       "--output_dir\n")
