"""Command-line flags, grouped by concern and defined once for all steps (the authors' names kept).

Each step's ``main.py`` builds its parser from these groups; :func:`check_args` refuses bad values
at start with a message that names the flag. Every parser of the project is a :class:`Parser` (no
abbreviated flags; unknown arguments named, their values never echoed). Float flags refuse NaN and
infinities (:func:`finite_float`), seeds lie in numpy's range (:func:`seed`).
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Sequence

from utils.confidence import MISSING_CONFIDENCE
from utils.ds_config import DTYPES
from utils.reward import MISSING_POLICIES, REDUCTIONS, SCORING_RULES

SEED_RANGE = (0, 2**32 - 1)  # numpy's seeds (np.random.seed refuses others)
FLOAT32_MAX = 3.4028234663852886e38  # the optimizers compute in float32: a larger learning rate crashes them


class Parser(argparse.ArgumentParser):
    """Every command-line parser of the project. Flags are never abbreviated (``--judge_api_key sk-…`` must not
    be taken as ``--judge_api_key_env``), and an error about unknown arguments names the unknown flags only:
    the values beside them may be secrets, and argparse would echo them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def parse_args(self, args=None, namespace=None):
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {redacted(unknown)}")
        return known


def redacted(arguments: Sequence[str]) -> str:
    """``--flag`` of each unknown flag, values counted but never shown."""
    shown = [text.split("=", 1)[0] for text in arguments if text.startswith("-")]
    hidden = sum(1 for text in arguments if not text.startswith("-") or "=" in text)
    if hidden:
        shown.append(f"({hidden} value{'s' if hidden > 1 else ''} not shown)")
    return " ".join(shown)


def finite_float(text: str) -> float:
    """A float that is neither NaN nor infinite, in float32 too: it would reach the losses and the weights."""
    value = float(text)
    if not abs(value) <= FLOAT32_MAX:  # also false for NaN
        raise argparse.ArgumentTypeError(f"must be a finite number (at most {FLOAT32_MAX:.3g} in size), got {text}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must lie in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {text}")
    return value


def env_var_name(text: str) -> str:
    """The name of an environment variable, not its value: a key given here by mistake is not echoed."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise argparse.ArgumentTypeError("expects the NAME of an environment variable (letters, digits, _), "
                                         "not a key; the value given is not shown")
    return text


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def share_below_one(text: str) -> float:
    """A share of questions in [0, 1) (step 4's ``--dev_fraction``): 1 would leave none for the rest."""
    value = float(text)
    if not 0.0 <= value < 1.0:  # also false for NaN
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


# the checks above, for other modules' parsers (step 4)
positive_int = _positive(int)
positive_float = _positive(finite_float)


def _data_split(text: str) -> list[float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expects three non-negative weights such as 10,0,0 (step 1, 2, 3), got {text!r}")
    return parts


# Flags that several parsers take, each defined here once; a parser passes what differs for it (a default, the
# help that names its own context) and picks the group the flag is shown in.

def add_seed_arg(group: argparse._ActionsContainer, default: int = 1234, help_text: str | None = None) -> None:
    group.add_argument("--seed", type=seed, default=default, help=help_text)


def add_run_length_args(group: argparse._ActionsContainer, max_steps_help: str) -> None:
    """``max_steps_help`` says what a step is (an optimizer step in steps 1-2, a rollout batch in step 3)."""
    group.add_argument("--num_train_epochs", type=_positive(int), default=1)
    group.add_argument("--max_steps", type=_positive(int), default=None, help=max_steps_help)
    group.add_argument("--gradient_accumulation_steps", type=_positive(int), default=1)


def add_lr_schedule_args(group: argparse._ActionsContainer, choices: Sequence[str], default: str) -> None:
    """``choices``: the schedulers the step's own optimizer set-up builds."""
    group.add_argument("--lr_scheduler_type", default=default, choices=list(choices))
    group.add_argument("--num_warmup_steps", type=non_negative_int, default=0)


def add_num_padding_arg(group: argparse._ActionsContainer) -> None:
    group.add_argument("--num_padding_at_beginning", type=int, default=0,
                       help="Accepted for compatibility; scores are read at the last non-pad token.")


def add_dtype_arg(group: argparse._ActionsContainer, default: str) -> None:
    group.add_argument("--dtype", choices=DTYPES, default=default)


def add_missing_confidence_arg(group: argparse._ActionsContainer, help_text: str) -> None:
    group.add_argument("--missing_confidence", type=_unit_float, default=MISSING_CONFIDENCE, help=help_text)


def add_n_bins_arg(group: argparse._ActionsContainer, help_text: str) -> None:
    group.add_argument("--n_bins", type=positive_int, default=10, help=help_text)


def add_bootstrap_arg(group: argparse._ActionsContainer, default: int, help_text: str) -> None:
    group.add_argument("--bootstrap", type=non_negative_int, default=default, help=help_text)


def add_output_dir_arg(group: argparse._ActionsContainer, default: str | None = None,
                       help_text: str | None = None) -> None:
    """Required where the command has no default folder (steps 1-3)."""
    group.add_argument("--output_dir", required=default is None, default=default, help=help_text)


def add_force_arg(group: argparse._ActionsContainer, help_text: str) -> None:
    """``--force`` of the fetching commands (tools.download, tools.gguf_import): replace what is there."""
    group.add_argument("--force", action="store_true", help=help_text)


def add_data_args(parser: argparse.ArgumentParser, with_max_seq_len: bool = True) -> None:
    """``with_max_seq_len=False`` for step 3, whose lengths are ``--max_prompt/answer_seq_len``."""
    g = parser.add_argument_group("data")
    g.add_argument("--data_path", nargs="+", required=True,
                   help="Local folders/files (jsonl, json, csv, parquet, .gz) or hub dataset names, in our columns or "
                        "a known format (rm-static, hh-rlhf; docs/data.md); several are blended.")
    g.add_argument("--data_split", type=_data_split, default=[2.0, 4.0, 4.0],
                   help="Share of each dataset's train split given to steps 1,2,3 (DeepSpeed-Chat's flag).")
    g.add_argument("--data_output_path", default=None,
                   help="Cache folder (DeepSpeed-Chat's flag): the datasets library's files and the tokenised "
                        "data, reused by later runs with the same data, split, seed, tokenizer and lengths.")
    if with_max_seq_len:
        g.add_argument("--max_seq_len", type=_positive(int), default=512)
    g.add_argument("--max_train_examples", type=_positive(int), default=None,
                   help="Use at most this many training examples (quick runs).")
    g.add_argument("--allow_missing_confidence", action="store_true",
                   help="Train on step-1-format rows (step 1's data, step 3's PPO-ptx rows) whose response states no "
                        "confidence in [0, 1] (none, unreadable or out of range); they are counted per file. "
                        "Without it they are refused at start.")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model_name_or_path", required=True, help="HF folder or hub name of the starting model.")
    g.add_argument("--tokenizer_name_or_path", default=None, help="Defaults to the model's own tokenizer.")
    add_num_padding_arg(g)
    g.add_argument("--disable_dropout", action="store_true")


def add_training_args(parser: argparse.ArgumentParser, learning_rate: float = 1e-4) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--per_device_train_batch_size", type=_positive(int), default=16)
    g.add_argument("--per_device_eval_batch_size", type=_positive(int), default=16)
    g.add_argument("--learning_rate", type=positive_float, default=learning_rate)
    g.add_argument("--weight_decay", type=_non_negative_float, default=0.0)
    add_run_length_args(g, max_steps_help="Stop after this many optimizer steps (overrides epochs).")
    add_lr_schedule_args(g, ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                             "constant_with_warmup"], default="cosine")
    add_seed_arg(g)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--eval_interval", type=non_negative_int, default=0, help="Evaluate every N optimizer steps (0: per epoch).")


def add_lora_args(parser: argparse.ArgumentParser, prefix: str = "", default_module: str = "layers.") -> None:
    """``--lora_dim`` etc.; with ``prefix="actor_"`` → ``--actor_lora_dim`` (step 3)."""
    g = parser.add_argument_group(f"{prefix}lora")
    g.add_argument(f"--{prefix}lora_dim", type=int, default=0, help="LoRA rank; 0 trains the full model.")
    g.add_argument(f"--{prefix}lora_module_name", default=default_module,
                   help="Linear layers whose name contains this string get an adapter.")
    g.add_argument(f"--{prefix}lora_learning_rate", type=positive_float, default=5e-4,
                   help="Learning rate of the LoRA parameters.")
    g.add_argument(f"--{prefix}lora_scaling", type=positive_float, default=1.0,
                   help="Adapter output is scaled by lora_scaling / lora_dim.")
    g.add_argument(f"--{prefix}lora_dropout", type=_unit_float, default=0.0)


def add_only_optimize_lora(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only_optimize_lora", action="store_true",
                        help="Train only the LoRA parameters (and scalar heads).")


def _zero_setting(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        number = finite_float(value)
    except (ValueError, argparse.ArgumentTypeError):
        number = None
    if not sep or not key.startswith("stage3_") or number is None:
        raise argparse.ArgumentTypeError(f"expects stage3_NAME=NUMBER (e.g. stage3_param_persistence_threshold=0), "
                                         f"got {text!r}")
    return key, number


def add_deepspeed_args(parser: argparse.ArgumentParser, prefixes: Sequence[str] = ("",)) -> None:
    g = parser.add_argument_group("deepspeed")
    for prefix in prefixes:
        g.add_argument(f"--{prefix}zero_stage", type=int, choices=[0, 1, 2, 3], default=0)
    g.add_argument("--offload", action="store_true", help="ZeRO offload of parameters and optimizer to CPU.")
    add_dtype_arg(g, default="bf16")
    g.add_argument("--gradient_clipping", type=_non_negative_float, default=1.0)
    g.add_argument("--zero3_settings", nargs="+", type=_zero_setting, default=[], metavar="stage3_NAME=NUMBER",
                   help="Override ZeRO-3 tuning entries of the DeepSpeed config, e.g. "
                        "stage3_param_persistence_threshold=0 stage3_prefetch_bucket_size=5e4 (the tests force "
                        "real partitioning and prefetch on tiny models this way).")
    g.add_argument("--deepspeed", action="store_true", help="Accepted for compatibility: DeepSpeed is always used.")
    g.add_argument("--local_rank", type=int, default=-1, help="Set by the deepspeed launcher.")


def add_overwrite_output_dir_arg(group: argparse._ArgumentGroup) -> None:
    """``--overwrite_output_dir`` (the HF Trainer's flag), beside each step's ``--output_dir`` (step 4's too)."""
    group.add_argument("--overwrite_output_dir", action="store_true",
                       help="Use a non-empty --output_dir this project did not write: it is moved aside to a sibling "
                            "NAME.moved-DATE-TIME, never deleted (without the flag such a folder is refused).")


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging")
    add_output_dir_arg(g, help_text="Where the final HF checkpoint is written.")
    add_overwrite_output_dir_arg(g)
    g.add_argument("--enable_tensorboard", action="store_true")
    g.add_argument("--tensorboard_path", default="runs")
    g.add_argument("--print_loss", action="store_true")
    g.add_argument("--log_interval", type=_positive(int), default=10)


def _ppo_top_p(text: str) -> float:
    """Only 1.0: PPO's log-probs are of the whole tempered distribution (TRL fixes top-p = 1 too); nucleus
    sampling would draw the rollouts from another policy, and the reference would give its cut tokens −inf."""
    value = float(text)
    if value != 1.0:
        raise argparse.ArgumentTypeError(f"must be 1.0 in PPO (rollouts from the nucleus would be off-policy: the "
                                         f"log-probs are of the full distribution); use --temperature, got {text}")
    return value


def add_ppo_args(parser: argparse.ArgumentParser) -> None:
    """Step 3 only: models, rollouts, PPO and the CONQORD reward."""
    m = parser.add_argument_group("ppo models")
    m.add_argument("--actor_model_name_or_path", required=True, help="Step-1 checkpoint (also the reference).")
    m.add_argument("--critic_model_name_or_path", required=True, help="Step-2 checkpoint (critic init).")
    m.add_argument("--reward_model_name_or_path", default=None,
                   help="Frozen reward model; defaults to --critic_model_name_or_path.")
    m.add_argument("--tokenizer_model_name_or_path", default=None, help="Defaults to the actor's tokenizer.")
    add_num_padding_arg(m)
    m.add_argument("--disable_actor_dropout", action="store_true")
    m.add_argument("--offload_reference_model", action="store_true")
    m.add_argument("--enable_hybrid_engine", action="store_true",
                   help="Accepted for compatibility and ignored: rollouts gather the ZeRO-3 weights once and "
                        "generate without hooks instead (the Hybrid Engine is reported broken for Llama-2 + ZeRO-3).")
    m.add_argument("--actor_gradient_checkpointing", action="store_true")
    m.add_argument("--critic_gradient_checkpointing", action="store_true")

    t = parser.add_argument_group("ppo training")
    t.add_argument("--per_device_generation_batch_size", type=_positive(int), default=16)
    t.add_argument("--per_device_training_batch_size", type=_positive(int), default=16)
    t.add_argument("--generation_batches", type=_positive(int), default=1)
    t.add_argument("--ppo_epochs", type=_positive(int), default=1)
    add_run_length_args(t, max_steps_help="Stop after this many rollout batches.")
    t.add_argument("--actor_learning_rate", type=positive_float, default=1e-6)
    t.add_argument("--critic_learning_rate", type=positive_float, default=1e-6)
    t.add_argument("--actor_weight_decay", type=_non_negative_float, default=0.0)
    t.add_argument("--critic_weight_decay", type=_non_negative_float, default=0.0)
    add_lr_schedule_args(t, ["constant", "linear", "cosine"], default="constant")
    add_seed_arg(t)
    t.add_argument("--freezing_actor_steps", type=non_negative_int, default=0,
                   help="Train only the critic for the first N steps (OpenRLHF's flag): a critic initialised "
                        "from the reward model starts far from the returns, and its errors swamp the advantages.")
    t.add_argument("--kl_ctl", type=_non_negative_float, default=0.1, help="Per-token KL penalty to the reference.")
    t.add_argument("--unsupervised_dataset_name", nargs="+", default=None,
                   help="PPO-ptx (InstructGPT; DeepSpeed-Chat's flag): data in step 1's columns (prompt, response; the "
                        "forms --data_path takes), whose language-modelling loss, times --unsup_coef, is added to each "
                        "PPO minibatch loss of the actor, to keep what SFT taught on prompts PPO does not train on.")
    t.add_argument("--unsup_coef", type=_non_negative_float, default=27.8,
                   help="Weight of the PPO-ptx loss (DeepSpeed-Chat's default, set for pretraining text).")
    t.add_argument("--unsup_mask_confidence", action="store_true",
                   help="Beyond the paper: PPO-ptx ignores the labels of the rows' stated confidence numbers, so it "
                        "holds the answers and the format but does not pull confidence levels back to step 1's.")
    t.add_argument("--clip_reward_value", type=positive_float, default=5.0)
    t.add_argument("--cliprange", type=positive_float, default=0.2)
    t.add_argument("--cliprange_value", type=positive_float, default=0.2)
    t.add_argument("--gamma", type=_unit_float, default=1.0)
    t.add_argument("--lam", type=_unit_float, default=0.95)
    t.add_argument("--whiten_advantages", action="store_true",
                   help="Normalise advantages over the rollout batch (DeepSpeed-Chat does not); with "
                        "--alignment_on_confidence_tokens only the GAE part, the routed confidence terms added after.")
    t.add_argument("--save_interval", type=non_negative_int, default=0, help="Save a resumable checkpoint every N steps (0: never).")
    t.add_argument("--save_total_limit", type=_positive(int), default=2,
                   help="Keep the last N resumable checkpoints in --output_dir/resume (the HF Trainer's flag); "
                        "older ones are deleted once a newer one is complete.")
    t.add_argument("--resume", action="store_true",
                   help="Continue from the last resumable checkpoint in --output_dir; refused when it was saved with "
                        "other flags or inputs. Without it a run starts afresh and removes an older run's checkpoints.")

    g = parser.add_argument_group("generation")
    g.add_argument("--max_prompt_seq_len", type=_positive(int), default=256)
    g.add_argument("--max_answer_seq_len", type=_positive(int), default=256)
    g.add_argument("--temperature", type=positive_float, default=1.0,
                   help="Rollout sampling temperature; the old, new and reference log-probs use the same tempered "
                        "logits (TRL's form), so PPO stays on-policy.")
    g.add_argument("--top_p", type=_ppo_top_p, default=1.0,
                   help="Accepted for compatibility; only 1.0 (nucleus rollouts would be off-policy).")
    g.add_argument("--greedy_rollouts", action="store_true", help="Greedy rollouts (the authors' setting).")

    r = parser.add_argument_group("conqord reward")
    r.add_argument("--alpha", type=_non_negative_float, default=0.5, help="Weight of the alignment reward R_A.")
    r.add_argument("--align_reward_scope", choices=["global", "device"], default="global",
                   help="R_A over the rollouts of all ranks (global) or of this rank only (the authors').")
    r.add_argument("--align_reward_reduction", choices=list(REDUCTIONS), default="mean",
                   help="mean: divide R_A by the rollouts in scope; sum: the authors' form.")
    r.add_argument("--quality_reward", choices=["model", "oracle"], default="model",
                   help="Quality r from the reward model, or exact match against the gold answers (toy world).")
    r.add_argument("--score_with_confidence", action="store_true",
                   help="Let the reward model see the confidence text (the authors' effective behaviour).")
    r.add_argument("--confidence_scoring_rule", choices=list(SCORING_RULES), default="none",
                   help="Beyond the paper: add a proper scoring rule of the stated confidence against the "
                        "quality (scaled to [0,1]) to anchor absolute levels.")
    r.add_argument("--confidence_scoring_weight", type=_non_negative_float, default=1.0)
    r.add_argument("--confidence_scoring_warmup_steps", type=non_negative_int, default=0,
                   help="Beyond the paper: the scoring rule's weight grows linearly from 0 to "
                        "--confidence_scoring_weight over the first N PPO steps (0: full weight from the start), so "
                        "R_A can teach the order before the scoring rule settles the levels.")
    r.add_argument("--alignment_on_confidence_tokens", action="store_true",
                   help="Beyond the paper: give the confidence terms (alpha*R_A, scoring rule) as advantage to the "
                        "confidence tokens only; the answer tokens see the quality reward alone.")
    add_missing_confidence_arg(r, help_text="Confidence used when a rollout states none (the authors: 1.0 in training).")
    r.add_argument("--center_confidence_terms", action="store_true",
                   help="Beyond the paper: subtract the confidence terms' mean over the rollouts in scope. Given to the "
                        "confidence tokens (--alignment_on_confidence_tokens) they bypass the critic, so nothing else "
                        "gives them a baseline: a scoring rule (always <= 0) would push down every stated confidence.")
    r.add_argument("--missing_confidence_policy", choices=list(MISSING_POLICIES), default="fixed",
                   help="Beyond the paper: 'worst' gives a rollout that states no (or a malformed) confidence, in R_A "
                        "and in the scoring rule, the worst value it could have stated, so dropping the tag never "
                        "pays; 'fixed' uses --missing_confidence everywhere.")
    r.add_argument("--missing_eos_penalty", type=_non_negative_float, default=0.0,
                   help="TRL's flag: subtracted from the sequence reward (before --clip_reward_value) of a rollout "
                        "cut by --max_answer_seq_len without a stop token; the reward model scores it closed by EOS "
                        "and cannot see the cut. 0: off.")


def supervised_parser(description: str, learning_rate: float) -> argparse.ArgumentParser:
    """The flags of steps 1 and 2 (they differ only in their default learning rate)."""
    parser = Parser(description=description)
    add_data_args(parser)
    add_model_args(parser)
    add_training_args(parser, learning_rate=learning_rate)
    add_lora_args(parser)
    add_only_optimize_lora(parser)
    add_deepspeed_args(parser)
    add_logging_args(parser)
    add_dry_run_arg(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refusals that involve more than one flag."""
    stages = {f"--{name}": getattr(args, name) for name in ("zero_stage", "actor_zero_stage", "critic_zero_stage")
              if hasattr(args, name)}
    if getattr(args, "offload", False) and any(stage == 0 for stage in stages.values()):
        zero = " ".join(f"{flag} 0" for flag, stage in stages.items() if stage == 0)
        raise SystemExit(f"error: --offload needs ZeRO stage >= 1, got {zero}")
    dims = {}
    for prefix in ("", "actor_", "critic_"):
        dim = getattr(args, f"{prefix}lora_dim", None)
        if dim is not None and dim < 0:
            raise SystemExit(f"error: --{prefix}lora_dim must be >= 0, got {dim}")
        if dim is not None:
            dims[f"--{prefix}lora_dim"] = dim
    if getattr(args, "only_optimize_lora", False) and dims and all(dim == 0 for dim in dims.values()):
        raise SystemExit(f"error: --only_optimize_lora with {' '.join(f'{k} 0' for k in dims)} would train no adapter: "
                         "set a LoRA rank > 0 or drop --only_optimize_lora")
    if getattr(args, "unsup_mask_confidence", False) and not args.unsupervised_dataset_name:
        raise SystemExit("error: --unsup_mask_confidence masks the PPO-ptx rows' confidences, but there are no rows: "
                         "give --unsupervised_dataset_name (with --unsup_coef) or drop it")


def add_dry_run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the DeepSpeed config of each engine, the launch world and DeepSpeed's ZeRO "
                             "memory estimate, then exit: no weights loaded, no process group, nothing written.")
