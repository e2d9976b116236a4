"""utils.files: atomic folder and JSONL writes, with the modes the umask asks for."""
from __future__ import annotations

import os
import stat

import pytest

from utils.errors import UserError
from utils.files import staged_folder


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


def test_hf_checkpoints_are_readable_by_others(tmp_path, umask_022, toy_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.model import save_hf_checkpoint

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(toy_tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    out = save_hf_checkpoint(model, toy_tokenizer, tmp_path / "step1", {"flag": 1})
    assert _mode(out) == 0o755
    assert {p.name: _mode(p) for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}


def test_output_lock_refuses_a_second_writer_and_frees_the_folder_after(tmp_path, monkeypatch):
    from utils.files import OutputInUseError, output_lock

    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "step1"
    with output_lock(out):
        with pytest.raises(OutputInUseError, match=r"--output_dir .*step1: another run is writing there \(pid \d+"):
            with output_lock(out):
                pass
    with output_lock(out):  # released when the block ends
        pass


def test_output_lock_is_held_in_another_process(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "results"
    code = (f"import sys, time; from utils.files import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "held"
        from utils.files import OutputInUseError, output_lock
        with pytest.raises(OutputInUseError, match=f"pid {holder.pid}"):
            with output_lock(out, flag="--output_dir"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # a killed holder leaves no stale lock
        pass


def test_output_lock_is_taken_by_rank_zero_only(tmp_path, monkeypatch):
    from utils.files import output_lock

    out = tmp_path / "step3"
    monkeypatch.setenv("RANK", "0")
    with output_lock(out):
        monkeypatch.setenv("RANK", "1")
        with output_lock(out):  # the same run's other rank
            pass


# --- issue 10: leftovers of a killed save, output folders that cannot be one ----------------------------------

def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_staged_folder_removes_what_a_killed_save_left_and_keeps_live_saves(tmp_path, capsys):
    dead = _dead_pid()
    stale = tmp_path / f".model.tmp-{dead}-0badf00d"
    live = tmp_path / f".model.tmp-{os.getppid()}-0000beef"  # another save in progress (our parent is alive)
    other = tmp_path / f".model2.tmp-{dead}-0badf00d"  # another target's
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "half.safetensors").write_bytes(b"half")
    with staged_folder(tmp_path / "model") as tmp:
        (tmp / "a").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", live.name, other.name])
    assert capsys.readouterr().out == f"removed {stale}: a temporary folder left by a killed save (pid {dead})\n"


def test_honour_umask_keeps_executables_executable(tmp_path):
    from utils.files import honour_umask

    script = tmp_path / "zero_to_fp32.py"
    script.write_text("#!/usr/bin/env python\n")
    script.chmod(0o744)  # as DeepSpeed copies it next to its checkpoints
    previous = os.umask(0o002)
    try:
        honour_umask(tmp_path)
    finally:
        os.umask(previous)
    assert _mode(script) == 0o775


def test_check_output_folder_refuses_what_cannot_be_a_folder(tmp_path):
    from utils.errors import UserError
    from utils.files import check_output_folder

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UserError, match=rf"^--output_dir {notes}: a file is there, not a folder; move it away or "
                                        r"choose another --output_dir$"):
        check_output_folder(notes)
    with pytest.raises(UserError, match=rf"^--save_dir {notes}/a/b: {notes} is a file, so the folder cannot be "
                                        r"created; choose another --save_dir$"):
        check_output_folder(notes / "a" / "b", "--save_dir")
    check_output_folder(tmp_path / "new" / "deeper")  # to be created: fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")  # an existing empty folder: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt"]  # a check writes nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_check_output_folder_refuses_an_unwritable_parent(tmp_path):
    from utils.errors import UserError
    from utils.files import check_output_folder

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        with pytest.raises(UserError, match=rf"--output_dir {locked}/out: {locked} is not writable by this user"):
            check_output_folder(locked / "out")
    finally:
        locked.chmod(0o755)


# --- issue 19: folders this project did not write, shared places, inputs, the lock file, a full disk ---------

def _notes(folder):
    folder.mkdir(parents=True)
    (folder / "notes.md").write_text("mine")
    return folder


def test_a_folder_this_project_did_not_write_is_refused_and_never_deleted(tmp_path, capsys):
    from utils.files import check_output_folder, claim_output_folder

    notes = _notes(tmp_path / "notes")
    with pytest.raises(UserError, match=rf"^--output_dir {notes}: it holds files this project did not write; choose "
                                        r"another --output_dir, or pass --overwrite_output_dir to move it aside "
                                        r"\(it is never deleted\)$"):
        check_output_folder(notes)
    check_output_folder(notes, overwrite=True)
    claim_output_folder(notes)
    (aside,) = tmp_path.glob("notes.moved-*")
    assert (aside / "notes.md").read_text() == "mine" and not notes.exists()
    assert capsys.readouterr().out == f"moved {notes} to {aside}: it held files this project did not write " \
                                      "(nothing of it was deleted)\n"


def test_a_save_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    notes = _notes(tmp_path / "notes")
    with staged_folder(notes) as tmp:
        (tmp / "config.json").write_text("{}")
    (aside,) = tmp_path.glob("notes.moved-*")
    assert (aside / "notes.md").read_text() == "mine" and (notes / "config.json").is_file()
    assert f"moved {notes} to {aside}" in capsys.readouterr().out


def test_folders_of_ours_are_replaced_and_those_of_earlier_versions_recognised(tmp_path, toy_tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from utils.files import MARKER, check_output_folder
    from utils.model import save_hf_checkpoint

    earlier = tmp_path / "step1"
    earlier.mkdir()
    (earlier / "training_args.json").write_text("{}")  # as versions before the marker wrote it
    (earlier / "model.safetensors").write_bytes(b"old")
    check_output_folder(earlier)  # no refusal
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(toy_tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    save_hf_checkpoint(model, toy_tokenizer, earlier)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step1"] and (earlier / MARKER).is_file()
    AutoModelForCausalLM.from_pretrained(earlier)  # the marker does not disturb plain transformers
    check_output_folder(earlier)


def test_a_killed_runs_leftovers_do_not_make_a_folder_foreign(tmp_path):
    from utils.files import check_output_folder

    out = tmp_path / "step3"
    (out / ".actor.tmp-123-0badf00d").mkdir(parents=True)
    (out / ".actor.lock").write_text("")
    check_output_folder(out)


@pytest.mark.parametrize("where", ["cwd", "cwd_parent", "root", "home", "project"])
def test_folders_holding_more_than_a_run_are_refused(tmp_path, monkeypatch, where):
    from utils.files import PROJECT_ROOT, check_output_folder

    cwd = tmp_path / "work" / "here"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "work"))
    folder, what = {"cwd": (".", "the current folder"), "cwd_parent": ("../..", "a folder above the current one"),
                    "root": ("/", "the file-system root"), "home": (str(tmp_path / "work"), "your home folder"),
                    "project": (str(PROJECT_ROOT), "the project folder")}[where]
    with pytest.raises(UserError, match=rf"^--output_dir .*: that is {what}; give the run a folder of its own"):
        check_output_folder(folder, overwrite=True)


def test_an_output_folder_over_an_input_is_refused(tmp_path):
    from utils.files import check_apart_from_inputs

    model = _notes(tmp_path / "model")
    for out, where in ((model, "is"), (tmp_path, "holds"), (model / "sub", "lies inside")):
        with pytest.raises(UserError, match=rf"^--output_dir {out} {where} --model_name_or_path {model}: the run "
                                            r"would write over its own input; choose another --output_dir$"):
            check_apart_from_inputs(out, {"--model_name_or_path": [str(model)], "--data_path": ["hub/name"]})
    check_apart_from_inputs(tmp_path / "step2", {"--model_name_or_path": [str(model)], "--tokenizer": [None]})


def test_the_lock_file_is_removed_at_the_end(tmp_path, monkeypatch):
    from utils.files import output_lock

    monkeypatch.delenv("RANK", raising=False)
    with output_lock(tmp_path / "step1"):
        assert (tmp_path / ".step1.lock").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_won_on_a_removed_lock_file_is_retaken(tmp_path, monkeypatch):
    """The unlink race: an ending holder removes the file between our open and our flock; the lock won on
    that orphan would let a third run lock the new file at the same path too."""
    import fcntl

    from utils.files import OutputInUseError, output_lock

    monkeypatch.delenv("RANK", raising=False)
    lock, real_flock, calls = tmp_path / ".step1.lock", fcntl.flock, []

    def flock_after_the_holder_left(handle, operation):
        if not calls:
            lock.unlink()  # the holder's exit
        calls.append(operation)
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_left)
    with output_lock(tmp_path / "step1"):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        with pytest.raises(OutputInUseError):
            with output_lock(tmp_path / "step1"):
                pass


def test_a_full_disk_during_a_save_names_the_path_and_leaves_nothing(tmp_path):
    import errno

    target = tmp_path / "step1"
    with pytest.raises(OSError) as raised:
        with staged_folder(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")  # as a library's writer raises it
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as raised:  # one that names its file keeps it
        with staged_folder(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert raised.value.filename.endswith("model.safetensors")
