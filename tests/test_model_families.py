"""Any ``AutoModelForCausalLM`` works: tiny random Llama-3, Mistral, Qwen2 and OPT checkpoints (each with its
family's special-token conventions, see tests/model_families.py) through model building, padding, generation,
LoRA and steps 1-3 under ZeRO-3, every output reloaded with plain transformers."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.model_families import FAMILIES
from tests.test_zero_matrix import _assert_plain_checkpoints, _env
from utils.generation import GenerationSettings, generate, response_ids
from utils.lora import lora_layers
from utils.model import (apply_lora, create_causal_lm, create_scalar_model, load_tokenizer, position_ids,
                         save_hf_checkpoint, sequence_scores, token_values)

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["### Question: What is the capital of Brazor?\n### Answer:", "### Question: What color is it?"]
LINEARS_PER_LAYER = {"llama3": 7, "mistral": 7, "qwen2": 7, "opt": 6}  # attention + MLP projections
OUTPUTS = (("step1", AutoModelForCausalLM), ("step2", AutoModelForSequenceClassification),
           ("step3/actor", AutoModelForCausalLM), ("step3/critic", AutoModelForSequenceClassification))


@pytest.fixture(scope="module")
def family_root(tmp_path_factory, toy_tokenizer) -> Path:
    """``<root>/base/<family>``: one saved checkpoint per family."""
    from tests.model_families import save_family_checkpoint

    root = tmp_path_factory.mktemp("families")
    for name in FAMILIES:
        save_family_checkpoint(name, toy_tokenizer, root / "base" / name)
    return root


def _base(root: Path, name: str) -> str:
    return str(root / "base" / name)


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("name", list(FAMILIES))
def test_special_tokens_and_generation_config(family_root, name):
    """pad := EOS only where the tokenizer has none; the model's pad ids follow the tokenizer; the checkpoint's
    own stop ids (a list for Llama-3 and Qwen2) survive behind the tokenizer's EOS."""
    family = FAMILIES[name]
    tokenizer = load_tokenizer(_base(family_root, name))
    model = create_causal_lm(_base(family_root, name), tokenizer)
    assert tokenizer.pad_token == (family.pad or family.eos)
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    stops = [tokenizer.convert_tokens_to_ids(t) for t in (family.eos, *family.stop_tokens)]
    assert model.generation_config.eos_token_id == (stops if len(stops) > 1 else stops[0])
    if name == "opt":  # OPT starts every sequence with its EOS (as BOS): ids only, nothing reads it as an end
        assert tokenizer(PROMPTS[0])["input_ids"][0] == tokenizer.eos_token_id


@pytest.mark.parametrize("name", list(FAMILIES))
def test_left_padding_changes_no_score_and_matches_generation(family_root, name):
    """The PPO contract per family: with ``position_ids`` skipping left padding, (a) a row scores the same
    left-padded and alone, (b) the forward's log-probs equal generate's own logits (OPT's learned positions
    carry an offset of 2; Llama/Mistral/Qwen2 rotate by position)."""
    path = _base(family_root, name)
    tokenizer = load_tokenizer(path, padding_side="left")
    rows = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ids, mask = _left_padded(rows, tokenizer.pad_token_id)
    torch.manual_seed(0)
    scalar = create_scalar_model(path, tokenizer).eval()
    with torch.no_grad():
        scalar.score.weight.normal_()  # a non-trivial head
        padded = sequence_scores(scalar, ids, mask)
        alone = torch.cat([sequence_scores(scalar, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))
                           for r in rows])
    assert torch.allclose(padded, alone, atol=1e-4), (padded, alone)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)

    model = create_causal_lm(path, tokenizer).eval()
    new = 4
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
        full_mask = torch.cat([mask, torch.ones(len(rows), new, dtype=torch.long)], dim=1)
        logits = model(input_ids=out.sequences, attention_mask=full_mask, position_ids=position_ids(full_mask)).logits
    generated = torch.stack(out.logits, dim=1)  # raw logits of each generated token
    assert torch.allclose(logits[:, ids.shape[1] - 1:-1], generated, atol=1e-4)


@pytest.mark.parametrize("name", ["mistral", "llama3"])
def test_reward_read_at_eos_when_pad_is_eos(family_root, name):
    """pad := EOS (Llama/Mistral): the attention mask, not the token id, finds the last real token, so the reward
    is the value *at* the EOS that ends the completion, right-padded or not."""
    path = _base(family_root, name)
    tokenizer = load_tokenizer(path)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    rows = [tokenizer(p)["input_ids"] + [tokenizer.eos_token_id] for p in PROMPTS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    scalar = create_scalar_model(path, tokenizer).eval()
    with torch.no_grad():
        values = token_values(scalar, ids, mask)
        scores = sequence_scores(scalar, ids, mask)
    for row, seq in enumerate(rows):
        assert scores[row] == pytest.approx(values[row, len(seq) - 1].item(), abs=1e-6)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_token_embedding_trains(family_root, name):
    """The embedding's padding_idx gets no gradient: with pad := EOS it froze EOS, where the reward is read."""
    tokenizer = load_tokenizer(_base(family_root, name))
    for build in (create_causal_lm, create_scalar_model):
        model = build(_base(family_root, name), tokenizer)
        ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"] + [tokenizer.eos_token_id]])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        (out.logits if hasattr(out, "logits") else out).sum().backward()
        assert model.get_input_embeddings().weight.grad[tokenizer.eos_token_id].abs().sum() > 0, build.__name__


def test_generation_stops_at_every_configured_stop_id(family_root):
    """Llama-3 lists ``<|eot_id|>`` beside EOS in its generation config: a row ends at the first of either."""
    path = _base(family_root, "llama3")
    tokenizer = load_tokenizer(path, padding_side="left")
    model = create_causal_lm(path, tokenizer).eval()
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size)  # always says <|eot_id|>
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[eot] = 10.0
    model.lm_head = head
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    sequences, mask, width = generate(model, prompts, GenerationSettings(max_new_tokens=5, do_sample=False),
                                      tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert response_ids(sequences, mask, width) == [[eot], [eot]]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_default_lora_pattern_and_fused_save(family_root, name, tmp_path):
    """``--lora_module_name layers.`` reaches every attention/MLP projection (OPT's live under ``decoder.layers.``)
    and no head; the saved folder is plain, ties kept, and reproduces the adapted model."""
    path = _base(family_root, name)
    tokenizer = load_tokenizer(path)
    model = apply_lora(create_causal_lm(path, tokenizer), 4, "layers.").eval()
    layers = list(lora_layers(model))
    assert len(layers) == LINEARS_PER_LAYER[name] * model.config.num_hidden_layers
    with torch.no_grad():
        for layer in layers:
            layer.lora_b.normal_()
    save_hf_checkpoint(model, tokenizer, tmp_path / "out")
    assert not any("lora" in key for key in load_file(tmp_path / "out" / "model.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight) == FAMILIES[name].tied
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def _assert_family_outputs(cell_dir: Path, name: str) -> None:
    """Beyond the ZeRO matrix's checks: the tokenizer reloads with the pad the steps used and its chat template,
    weights are finite, tied families stay tied, and the ZeRO-3 save reproduces the engine's logits."""
    family = FAMILIES[name]
    for folder, auto in OUTPUTS:
        out = cell_dir / folder
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert (tokenizer.eos_token, tokenizer.pad_token) == (family.eos, family.pad or family.eos), folder
        assert tokenizer.chat_template == family.chat_template, folder  # travels untouched for step 4
        weights = load_file(out / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), folder
        assert ("lm_head.weight" in weights) == (auto is AutoModelForCausalLM and not family.tied), folder
        assert auto.from_pretrained(out).config.pad_token_id == tokenizer.pad_token_id, folder
    saved = torch.load(cell_dir / "engine" / "engine_logits.pt")
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(cell_dir / "engine").eval()(input_ids=saved["input_ids"]).logits
    assert torch.allclose(reloaded, saved["logits"], atol=1e-4)


@pytest.mark.slow
def test_steps_1_to_3_on_every_family(family_root, toy_world_dir):
    """One optimizer step each of SFT, reward model and PPO per family, ZeRO-3 forced to partition, LoRA rank 4
    (fused on save), in one process; then every output reloads with plain transformers."""
    import json

    cells = [f"{name}:3:4" for name in FAMILIES]
    result = subprocess.run([sys.executable, str(ROOT / "tests/model_families.py"), str(toy_world_dir), str(family_root),
                             *cells], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    reports = {r["cell"]: r for r in (json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("CELL "))}
    assert set(reports) == set(cells), f"cells did not report ({result.returncode}):\n{result.stderr[-4000:]}"
    failed = {c: r["error"] for c, r in reports.items() if not r["ok"]}
    assert not failed, f"failing cells: {failed}\n{result.stderr[-4000:]}"
    for cell, report in reports.items():
        name = cell.split(":")[0]
        assert report["steps"] == 1 and math.isfinite(report["step1"]["eval_loss"]), report
        cell_dir = family_root / cell.replace(":", "-")
        _assert_plain_checkpoints(cell_dir, family_root / "base" / name)
        _assert_family_outputs(cell_dir, name)
