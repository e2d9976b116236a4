"""utils.lora on a tiny Llama: zero-init adapters, fuse/unfuse, fused state dicts, freezing."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from utils.lora import (LoRALinear, convert_linear_to_lora, fuse_lora, fuse_lora_state_dict, lora_fused,
                        lora_layers, lora_scalings, only_optimize_lora, unfuse_lora)

CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4)
INPUT = torch.tensor([[1, 5, 9, 13, 2, 40, 63, 7], [3, 3, 8, 21, 34, 55, 0, 1]])


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def randomise_b(model, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=gen) * 0.5)


@pytest.fixture
def lora_model():
    model = tiny_llama()
    names = convert_linear_to_lora(model, "layers.", rank=4, scaling=2.0)
    return model, names


def test_conversion_targets_and_zero_init(lora_model):
    model, names = lora_model
    # 7 linear layers (q, k, v, o, gate, up, down) per decoder layer; lm_head is not under "layers."
    assert len(names) == 14
    assert all(".layers." in n for n in names)
    assert not isinstance(model.lm_head, LoRALinear)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoRALinear)
    assert layer.scaling == pytest.approx(2.0 / 4)
    assert tuple(layer.lora_a.shape) == (4, 32) and tuple(layer.lora_b.shape) == (32, 4)
    assert torch.count_nonzero(layer.lora_b) == 0
    assert torch.count_nonzero(layer.lora_a) > 0


def test_fresh_adapter_leaves_logits_unchanged(lora_model):
    model, _ = lora_model
    assert torch.allclose(logits(model), logits(tiny_llama()), atol=1e-6)


def test_randomised_adapter_changes_logits(lora_model):
    model, _ = lora_model
    randomise_b(model)
    assert not torch.allclose(logits(model), logits(tiny_llama()), atol=1e-3)


def test_fuse_matches_unfused_and_unfuse_restores(lora_model):
    model, _ = lora_model
    randomise_b(model)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    unfused = logits(model)
    fuse_lora(model)
    assert all(layer.fused for layer in lora_layers(model))
    q = model.model.layers[0].self_attn.q_proj
    # fused weight really holds W + B·A·scaling
    expected = original["model.layers.0.self_attn.q_proj.weight"] + \
        original["model.layers.0.self_attn.q_proj.lora_b"] @ original["model.layers.0.self_attn.q_proj.lora_a"] * 0.5
    assert torch.allclose(q.weight, expected, atol=1e-6)
    assert torch.allclose(logits(model), unfused, atol=1e-5)
    fuse_lora(model)  # fusing twice is a no-op
    assert torch.allclose(q.weight, expected, atol=1e-6)
    unfuse_lora(model)
    assert not any(layer.fused for layer in lora_layers(model))
    for name, param in model.named_parameters():
        assert torch.allclose(param, original[name], atol=1e-6), name
    assert torch.allclose(logits(model), unfused, atol=1e-5)


def test_lora_fused_context_unfuses_on_exit(lora_model):
    model, _ = lora_model
    randomise_b(model)
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    with pytest.raises(RuntimeError):
        with lora_fused(model):
            assert model.model.layers[1].mlp.down_proj.fused
            raise RuntimeError("boom")
    assert not model.model.layers[1].mlp.down_proj.fused
    assert torch.allclose(model.model.layers[1].mlp.down_proj.weight, before, atol=1e-6)


def test_fused_state_dict_loads_into_plain_model(lora_model):
    model, _ = lora_model
    randomise_b(model)
    state = fuse_lora_state_dict(model.state_dict(), lora_scalings(model))
    assert not any(k.endswith(("lora_a", "lora_b")) for k in state)
    plain = tiny_llama(seed=123)  # different random weights: everything must come from the state dict
    plain.load_state_dict(state, strict=True)
    assert torch.allclose(logits(plain), logits(model), atol=1e-5)
    # the LoRA model's own state dict is untouched (no in-place fusion)
    assert not any(layer.fused for layer in lora_layers(model))


def test_lora_scalings_skip_fused_layers(lora_model):
    model, names = lora_model
    assert set(lora_scalings(model)) == set(names)
    assert all(s == pytest.approx(0.5) for s in lora_scalings(model).values())
    fuse_lora(model)
    assert lora_scalings(model) == {}


def test_pattern_matching_nothing_names_the_flag():
    model = tiny_llama()
    with pytest.raises(ValueError, match="--lora_module_name"):
        convert_linear_to_lora(model, "no_such_module", rank=4)


def test_rank_must_be_positive():
    with pytest.raises(ValueError):
        convert_linear_to_lora(tiny_llama(), "layers.", rank=0)


def test_only_optimize_lora(lora_model):
    model, _ = lora_model
    only_optimize_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert len(trainable) == 2 * 14


def test_only_optimize_lora_keeps_named_heads(lora_model):
    model, _ = lora_model
    model.trainable_heads = ("lm_head",)
    only_optimize_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "lm_head.weight" in trainable
    assert "model.embed_tokens.weight" not in trainable
    assert "model.layers.0.self_attn.q_proj.weight" not in trainable
    assert all(n.endswith(("lora_a", "lora_b")) or n.startswith("lm_head") for n in trainable)


def test_base_weights_frozen_after_conversion(lora_model):
    model, _ = lora_model
    q = model.model.layers[0].self_attn.q_proj
    assert not q.weight.requires_grad
    assert q.lora_a.requires_grad and q.lora_b.requires_grad
    assert model.lm_head.weight.requires_grad  # not converted, untouched
