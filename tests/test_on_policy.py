"""Step 3 stays on-policy and scores what the rollouts are: top-p refused, one answer end for the reward model
and the answer match, the missing-EOS penalty, an exact LoRA fold/unfold in bf16, every dropout key off."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM, OPTConfig

from step3_RL_finetune_LLM import experience as experience_module
from step3_RL_finetune_LLM.experience import ExperienceMaker
from step3_RL_finetune_LLM.ppo import PPOSettings
from step3_RL_finetune_LLM.trainer import build_parser
from utils.collate import pad_batch
from utils.confidence import confidence_cut_index, extract_answer
from utils.generation import GenerationSettings
from utils.lora import convert_linear_to_lora, lora_fused, lora_layers
from utils.model import _no_dropout
from utils.reward import RewardSettings

REQUIRED = ["--data_path", "data/step3", "--actor_model_name_or_path", "actor",
            "--critic_model_name_or_path", "critic", "--output_dir", "out"]


def test_nucleus_rollouts_are_refused_naming_the_flag(capsys):
    """The log-probs are of the full tempered distribution; top-p rollouts would be another policy's."""
    assert build_parser().parse_args(REQUIRED + ["--top_p", "1.0", "--temperature", "0.7"]).temperature == 0.7
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(REQUIRED + ["--top_p", "0.9"])
    assert info.value.code == 2
    assert "--top_p: must be 1.0 in PPO" in capsys.readouterr().err


@pytest.mark.parametrize("text, answer", [(" Zinmol\n### Confid", " Zinmol"), (" Zinmol\n## Answer", " Zinmol"),
                                          (" Zinmol #Confidence: 0.3", " Zinmol")])
def test_the_reward_model_and_the_answer_match_cut_the_answer_at_the_same_place(toy_tokenizer, text, answer):
    """A tag cut by the length limit (" ### Confid") reached the reward model whole, while the answer match cut
    it off; a one-'#' tag, which the parser reads, was cut for the reward model only."""
    ids = toy_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert toy_tokenizer.decode(ids[:confidence_cut_index(ids, toy_tokenizer)]) == answer
    assert extract_answer(text) == answer.strip()


def _maker_on(rollouts: list[str], tokenizer, monkeypatch, penalty: float) -> dict:
    """``ExperienceMaker._experience`` on fixed rollouts (oracle quality, alpha 0, no KL), stand-in forwards."""
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rollouts]
    prompt = tokenizer(" capital of Firi?", add_special_tokens=False)["input_ids"]
    width = len(prompt)
    sequences = pad_batch([prompt + r for r in responses], tokenizer.pad_token_id, side="right")
    attention_mask = pad_batch([[1] * (width + len(r)) for r in responses], 0, side="right")
    zeros = torch.zeros(len(rollouts), sequences.shape[1] - width)
    monkeypatch.setattr(experience_module, "response_log_probs", lambda *args, **kwargs: zeros)
    monkeypatch.setattr(experience_module, "response_values", lambda *args: zeros)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=tokenizer.eos_token_id))
    engine = SimpleNamespace(device=torch.device("cpu"), module=model, eval=lambda: None)
    engines = SimpleNamespace(actor=engine, critic=engine, ref=engine)
    rewarding = RewardSettings(alpha=0.0, align_reward_scope="device", align_reward_reduction="mean",
                               clip_reward_value=5.0, quality_reward="oracle", score_with_confidence=False,
                               missing_confidence=0.0, missing_eos_penalty=penalty)
    ppo = PPOSettings(kl_ctl=0.0, gamma=1.0, lam=1.0, cliprange=0.2, cliprange_value=0.2, whiten_advantages=False,
                      ppo_epochs=1, per_device_training_batch_size=len(rollouts), unsup_coef=0.0)
    maker = ExperienceMaker(engines, tokenizer, GenerationSettings(max_new_tokens=8), rewarding, ppo)
    made = maker._experience([prompt] * len(rollouts), [["Paris"]] * len(rollouts), sequences, attention_mask,
                             width, zeros, step=0)
    rows = torch.arange(len(rollouts))
    last = attention_mask[:, width:].sum(1) - 1
    return {"reward": (made.returns[rows, last]).tolist(), "stats": made.stats}


def test_a_rollout_cut_by_the_length_limit_pays_the_missing_eos_penalty(toy_tokenizer, monkeypatch):
    """Both answers are right; the one cut before its EOS (and its confidence) loses the penalty."""
    rollouts = [" Paris\n### Confidence: 0.9</s>", " Paris\n### Confidence: 0."]
    assert _maker_on(rollouts, toy_tokenizer, monkeypatch, penalty=0.0)["reward"] == pytest.approx([1.0, 1.0])
    made = _maker_on(rollouts, toy_tokenizer, monkeypatch, penalty=0.75)
    assert made["reward"] == pytest.approx([1.0, 0.25])
    assert made["stats"]["truncated_rate"] == 0.5 and made["stats"]["accuracy"] == 1.0


def test_lora_fold_and_unfold_give_the_bf16_weights_back_bit_for_bit():
    """The round trip W + BA - BA rounded in bf16 changed ~1 % of the elements, and the old log-probs with them."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4)).to(torch.bfloat16)
    convert_linear_to_lora(model, "layers.", rank=8)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_b.normal_(0.0, 0.02)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with lora_fused(model):
        assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("config", [OPTConfig(activation_dropout=0.1, layerdrop=0.1), GPT2Config(),
                                    LlamaConfig(attention_dropout=0.1, mlp_dropout=0.2)])
def test_dropout_off_means_every_dropout_key_the_config_has(config):
    _no_dropout(config)
    keys = [k for k in config.to_dict() if "drop" in k]
    assert keys and all(getattr(config, k) == 0.0 for k in keys), {k: getattr(config, k) for k in keys}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, toy_tokenizer):
    """A one-layer Llama: step 1's output and (its head fresh) the critic's start."""
    from utils.model import save_hf_checkpoint
    from worlds.toy_world import create_tiny_llama

    return save_hf_checkpoint(create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, num_heads=2),
                              toy_tokenizer, tmp_path_factory.mktemp("on_policy") / "tiny")


def _ppo_log(world, model, out, *extra: str) -> list[str]:
    """The run's log lines without their seconds, as JSON text (NaN == NaN there)."""
    import json

    from step3_RL_finetune_LLM import trainer

    trainer.run(build_parser().parse_args(
        ["--data_path", str(world / "step3_ppo"), "--data_split", "0,0,10", "--actor_model_name_or_path", str(model),
         "--critic_model_name_or_path", str(model), "--output_dir", str(out), "--quality_reward", "oracle",
         "--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "2", "--max_prompt_seq_len",
         "32", "--max_answer_seq_len", "4", "--max_train_examples", "8", "--dtype", "fp32", "--ppo_epochs", "2",
         "--temperature", "0.7", "--whiten_advantages", "--alignment_on_confidence_tokens", "--missing_eos_penalty",
         "0.5", "--actor_learning_rate", "1e-2", "--critic_learning_rate", "1e-2", "--save_interval", "2", *extra]))
    return [json.dumps({k: v for k, v in json.loads(line).items() if k != "seconds"})
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_resumed_run_repeats_the_reshuffled_epochs_exactly(toy_world_dir, tiny_model, tmp_path):
    """Every flag of this issue on (T = 0.7, 2 reshuffled PPO epochs, whitening with routed terms, the penalty):
    steps 3-4 after a resume from step 2 log what an unbroken run logs."""
    straight = _ppo_log(toy_world_dir, tiny_model, tmp_path / "straight", "--max_steps", "4")
    _ppo_log(toy_world_dir, tiny_model, tmp_path / "resumed", "--max_steps", "2")
    resumed = _ppo_log(toy_world_dir, tiny_model, tmp_path / "resumed", "--max_steps", "4", "--resume")
    assert resumed == straight and '"truncated_rate": 0.0' not in straight[-1]
