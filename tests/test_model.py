"""utils.model: padding-independent scalar scores, checkpoint guards, atomic HF checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from utils.errors import UserError
from utils.lora import convert_linear_to_lora, lora_layers
from utils.model import (ARGS_FILE, MissingCheckpointError, require_checkpoint, save_hf_checkpoint, sequence_scores,
                         token_values, values_at_every_token)

PAD = 0
SEQS = [[5, 9, 13, 2, 40], [7, 21, 3], [11, 12]]


def tiny_config(**extra) -> LlamaConfig:
    settings = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, pad_token_id=PAD)
    return LlamaConfig(**{**settings, **extra})


def padded(seqs, side):
    width = max(map(len, seqs))
    ids, mask = [], []
    for s in seqs:
        pad = [PAD] * (width - len(s))
        ids.append(pad + s if side == "left" else s + pad)
        ones = [1] * len(s)
        mask.append([0] * len(pad) + ones if side == "left" else ones + [0] * len(pad))
    return torch.tensor(ids), torch.tensor(mask)


@pytest.fixture(scope="module")
def scalar_model():
    torch.manual_seed(0)
    model = values_at_every_token(AutoModelForSequenceClassification.from_config(tiny_config(num_labels=1)).eval())
    with torch.no_grad():  # a non-trivial head
        model.score.weight.normal_()
    return model


def test_sequence_scores_ignore_padding_side(scalar_model):
    with torch.no_grad():
        left = sequence_scores(scalar_model, *padded(SEQS, "left"))
        right = sequence_scores(scalar_model, *padded(SEQS, "right"))
        alone = torch.stack([sequence_scores(scalar_model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
                             for s in SEQS])
    assert left.shape == (3,)
    assert torch.isfinite(left).all()
    assert torch.allclose(left, right, atol=1e-5)
    assert torch.allclose(left, alone, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-4)  # the scores do depend on the sequence


def test_sequence_score_is_last_real_token_value(scalar_model):
    ids, mask = padded(SEQS, "right")
    with torch.no_grad():
        values = token_values(scalar_model, ids, mask)
        scores = sequence_scores(scalar_model, ids, mask)
    assert values.shape == ids.shape
    for row, seq in enumerate(SEQS):
        assert scores[row] == pytest.approx(values[row, len(seq) - 1].item(), abs=1e-6)


def test_require_checkpoint_missing_local_folder(tmp_path):
    missing = tmp_path / "step1_out"
    with pytest.raises(MissingCheckpointError) as info:
        require_checkpoint(missing, "--actor_model_name_or_path", "step 1 (step1_supervised_finetuning_LM)")
    message = str(info.value)
    assert "step 1 (step1_supervised_finetuning_LM)" in message
    assert "--actor_model_name_or_path" in message
    assert str(missing) in message
    assert isinstance(info.value, UserError)


def test_require_checkpoint_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(MissingCheckpointError, match="step 2"):
        require_checkpoint(tmp_path, "--critic_model_name_or_path", "step 2")


def test_require_checkpoint_passes(tmp_path):
    require_checkpoint("meta-llama/Llama-2-7b-hf", "--model_name_or_path", "step 1")  # hub id: not checked
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # enough for a dry run
    require_checkpoint(tmp_path, "--model_name_or_path", "step 1")


def _lora_causal_lm(vocab: int, seed: int):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(vocab_size=vocab)).eval()
    convert_linear_to_lora(model, "layers.", rank=4)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=gen) * 0.5)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_save_hf_checkpoint_roundtrip_and_replace(tmp_path, toy_tokenizer):
    vocab = len(toy_tokenizer)
    ids = torch.tensor([[0, 17, 250, 33, 400, 5]])
    out = tmp_path / "ckpt" / "actor"

    first = _lora_causal_lm(vocab, seed=0)
    assert save_hf_checkpoint(first, toy_tokenizer, out, args={"alpha": 0.5, "lora_dim": 4}) == out
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any(True for _ in lora_layers(loaded))
    assert torch.allclose(_logits(loaded, ids), _logits(first, ids), atol=1e-5)
    assert json.loads((out / ARGS_FILE).read_text()) == {"alpha": 0.5, "lora_dim": 4}
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["actor"]  # no .tmp folder left beside it

    second = _lora_causal_lm(vocab, seed=7)
    assert not torch.allclose(_logits(second, ids), _logits(first, ids), atol=1e-3)
    save_hf_checkpoint(second, toy_tokenizer, out, args={"alpha": 1.0})
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.allclose(_logits(reloaded, ids), _logits(second, ids), atol=1e-5)
    assert json.loads((out / ARGS_FILE).read_text()) == {"alpha": 1.0}
    assert sorted(p.name for p in out.parent.iterdir()) == ["actor"]  # no .tmp / .old left


def test_save_hf_checkpoint_non_main_writes_nothing(tmp_path, toy_tokenizer, monkeypatch):
    from utils import dist

    monkeypatch.setattr(dist, "rank", lambda: 1)
    model = _lora_causal_lm(len(toy_tokenizer), seed=0)
    out = tmp_path / "nothing"
    save_hf_checkpoint(model, toy_tokenizer, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_zero3_construction_partitions_the_weights(tmp_path, toy_tokenizer):
    """Under ZeRO-3 the model must come out partitioned (transformers' DeepSpeed hook kept alive while
    building); run in a subprocess so the process group does not leak into other tests."""
    import subprocess
    import sys
    from pathlib import Path

    from worlds.toy_world import create_tiny_llama

    save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1), toy_tokenizer, tmp_path / "m")
    script = f"""
from utils import dist
from utils.ds_config import train_ds_config
from utils.model import create_causal_lm, create_scalar_model, load_tokenizer
dist.init_distributed()
tok = load_tokenizer({str(tmp_path / 'm')!r})
for stage in (3, 0):
    config = train_ds_config(micro_batch_size=2, gradient_accumulation_steps=1, world_size=1, zero_stage=stage, dtype="fp32")
    for build in (create_causal_lm, create_scalar_model):
        model = build({str(tmp_path / 'm')!r}, tok, "fp32", config)
        weights = [p for p in model.parameters()]
        partitioned = all(hasattr(p, "ds_id") and p.numel() == 0 for p in weights)
        print(stage, build.__name__, partitioned)
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line[:1] in "03"]
    assert lines == ["3 create_causal_lm True", "3 create_scalar_model True",
                     "0 create_causal_lm False", "0 create_scalar_model False"]
