"""Tiny random checkpoints of the model families users fine-tune (Llama-3, Mistral, Qwen2, OPT), each with a
tokenizer that keeps its family's special-token conventions, and a runner for steps 1-3 on them.

    python tests/model_families.py WORLD OUT FAMILY:STAGE:LORA ...   (bases in OUT/base/FAMILY; one JSON line per cell)

What each tokenizer mimics (the conventions the pipeline must survive):
  llama3   BOS <|begin_of_text|>, EOS <|end_of_text|>, no pad; generation stops at [EOS, <|eot_id|>]
  mistral  BOS <s>, EOS </s>, no pad (Llama-2 style: pad := EOS)
  qwen2    no BOS, EOS <|im_end|>, pad <|endoftext|> (distinct), a chat template, tied embeddings
  opt      BOS = EOS = </s> (a sequence *starts* with EOS), pad <pad>, learned positions with offset 2, tied
"""
from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SIZE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # a transformers config class
    config: dict[str, Any]  # beyond SIZE and the special-token ids
    bos: str | None
    eos: str
    pad: str | None
    extra_tokens: tuple[str, ...] = ()
    stop_tokens: tuple[str, ...] = ()  # generation_config.eos_token_id beyond EOS (a list, as Llama-3 ships)
    chat_template: str | None = None
    vocab_multiple: int = 1  # Qwen2 pads its embedding matrix past the tokenizer's length
    tied: bool = False


FAMILIES = {f.name: f for f in (
    Family("llama3", "LlamaConfig", dict(intermediate_size=128, num_key_value_heads=2, rope_theta=500000.0,
                                         tie_word_embeddings=False),
           bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, extra_tokens=("<|eot_id|>",),
           stop_tokens=("<|eot_id|>",)),
    Family("mistral", "MistralConfig", dict(intermediate_size=128, num_key_value_heads=2, sliding_window=4096,
                                            tie_word_embeddings=False),
           bos="<s>", eos="</s>", pad=None),
    Family("qwen2", "Qwen2Config", dict(intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True),
           bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra_tokens=("<|im_start|>",),
           stop_tokens=("<|endoftext|>",), chat_template=CHATML, vocab_multiple=64, tied=True),
    Family("opt", "OPTConfig", dict(ffn_dim=128, word_embed_proj_dim=64, do_layer_norm_before=True),
           bos="</s>", eos="</s>", pad="<pad>", tied=True),
)}


def family_tokenizer(base, family: Family):
    """The toy BPE vocabulary under ``family``'s special tokens (added where the vocabulary lacks them)."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(base.backend_tokenizer.to_str())
    specials = [t for t in (family.bos, family.eos, family.pad, *family.extra_tokens) if t]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials if tok.token_to_id(t) is None])
    tok.post_processor = (processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
                                                        special_tokens=[(family.bos, tok.token_to_id(family.bos))])
                          if family.bos else None)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                        pad_token=family.pad, unk_token="<unk>")
    if family.chat_template:
        tokenizer.chat_template = family.chat_template
    return tokenizer


def family_model(family: Family, tokenizer, seed: int = 0):
    """A random causal LM of ``family`` sized to the tokenizer, its generation config as the family ships it."""
    import torch
    import transformers

    ids = {key: tokenizer.convert_tokens_to_ids(token) if token else None
           for key, token in (("bos_token_id", family.bos), ("eos_token_id", family.eos), ("pad_token_id", family.pad))}
    vocab = -(-len(tokenizer) // family.vocab_multiple) * family.vocab_multiple
    config = getattr(transformers, family.config_class)(vocab_size=vocab, **SIZE, **family.config, **ids)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    stops = [tokenizer.convert_tokens_to_ids(t) for t in family.stop_tokens]
    model.generation_config.eos_token_id = [ids["eos_token_id"], *stops] if stops else ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    return model


def save_family_checkpoint(name: str, base_tokenizer, out: Path) -> Path:
    """A plain HF folder as the hub ships it (``save_pretrained``, not the pipeline's writer)."""
    family = FAMILIES[name]
    tokenizer = family_tokenizer(base_tokenizer, family)
    family_model(family, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def step_flags(stage: int, lora: int) -> tuple[list[str], list[str]]:
    """One optimizer step of steps 1/2 and one rollout + PPO update of step 3, small lengths, ZeRO-3 forced to
    partition every parameter."""
    from tests.zero_matrix_cells import ZERO3_SETTINGS

    common = ["--dtype", "fp32", "--seed", "1", "--zero3_settings", *ZERO3_SETTINGS]
    supervised = ["--zero_stage", str(stage), "--lora_dim", str(lora), "--max_steps", "1", "--learning_rate", "1e-2",
                  "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "8", "--max_seq_len", "64",
                  "--max_train_examples", "2", "--lr_scheduler_type", "constant", *common]
    ppo = ["--actor_zero_stage", str(stage), "--critic_zero_stage", str(stage), "--actor_lora_dim", str(lora),
           "--critic_lora_dim", str(lora), "--quality_reward", "model", "--per_device_generation_batch_size", "2",
           "--per_device_training_batch_size", "2", "--max_prompt_seq_len", "32", "--max_answer_seq_len", "6",
           "--max_steps", "1", "--actor_learning_rate", "1e-2", "--critic_learning_rate", "1e-2", *common]
    return supervised, ppo


def run_cell(world: Path, base: Path, out: Path, stage: int, lora: int) -> dict:
    """Steps 1 → 2 → 3 through their real entry points; outputs under ``out/step1``, ``step2``, ``step3``."""
    from step1_supervised_finetuning_LM import sft
    from step2_reward_model import reward_model
    from step3_RL_finetune_LLM import trainer

    supervised, ppo = step_flags(stage, lora)
    step1 = sft.run(sft.build_parser().parse_args(
        ["--data_path", str(world / "step1_sft"), "--data_split", "10,0,0", "--model_name_or_path", str(base),
         "--output_dir", str(out / "step1"), *supervised]))
    step2 = reward_model.run(reward_model.build_parser().parse_args(
        ["--data_path", str(world / "step2_reward"), "--data_split", "0,10,0", "--model_name_or_path", str(out / "step1"),
         "--output_dir", str(out / "step2"), *supervised]))
    summary = trainer.run(trainer.build_parser().parse_args(
        ["--data_path", str(world / "step3_ppo"), "--data_split", "0,0,10", "--actor_model_name_or_path", str(out / "step1"),
         "--critic_model_name_or_path", str(out / "step2"), "--output_dir", str(out / "step3"), *ppo]))
    return {"steps": summary["steps"], "step1": step1["final"], "step2": step2["final"]}


def save_after_step(base: Path, out: Path, stage: int, lora: int) -> None:
    """One training step on ``base`` under the engine, an eval forward, then the pipeline's save; the engine's
    logits go to ``out/engine_logits.pt`` beside their input ids, for the test to compare with the reloaded
    folder (tied embeddings and fused LoRA must survive ZeRO-3's consolidated state dict)."""
    import torch

    from tests.zero_matrix_cells import ZERO3_SETTINGS
    from utils.ds_config import train_ds_config
    from utils.model import apply_lora, create_causal_lm, load_tokenizer, save_hf_checkpoint
    from utils.training import build_engine

    tokenizer = load_tokenizer(str(base))
    settings = [(key, float(value)) for key, value in (kv.split("=") for kv in ZERO3_SETTINGS)]
    config = train_ds_config(micro_batch_size=2, gradient_accumulation_steps=1, world_size=1, zero_stage=stage,
                             dtype="fp32", zero3_settings=settings)
    model = apply_lora(create_causal_lm(str(base), tokenizer, "fp32", config), lora, "layers.")
    engine = build_engine(model, config, learning_rate=1e-2, weight_decay=0.0, lora_learning_rate=1e-2,
                          scheduler="constant", warmup_steps=0, total_steps=1)
    ids = torch.randint(3, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    engine.eval()
    with torch.no_grad():
        logits = engine(input_ids=ids).logits
    save_hf_checkpoint(engine, tokenizer, out)
    torch.save({"input_ids": ids, "logits": logits}, out / "engine_logits.pt")


def main(argv: list[str]) -> None:
    world, out, *cells = argv
    for cell in cells:
        name, stage, lora = cell.split(":")
        cell_dir, base = Path(out) / cell.replace(":", "-"), Path(out) / "base" / name
        result: dict[str, Any] = {"cell": cell}
        try:
            result.update(run_cell(Path(world), base, cell_dir, int(stage), int(lora)))
            save_after_step(base, cell_dir / "engine", int(stage), int(lora))
            result["ok"] = True
        except Exception as err:  # report the cell and go on: the test names every failing cell
            traceback.print_exc()
            result.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[-1][-300:] if str(err) else ''}")
        print("CELL " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
