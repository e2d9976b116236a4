"""Shared by the bench scripts: setup (toy world, toy checkpoints, the random 1B Llama), timing, output.

Nothing here is a test. The scripts run from the repository root (``python bench/NAME.py``) and keep
what they generate under ``bench/tmp/`` (git-ignored).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TMP = ROOT / "bench" / "tmp"
TOY_WORLD = TMP / "toy_world"
TOY_BASE = TMP / "toy-llama-base"
TOY_CKPT = TMP / "toy"  # step1/ and step2/ from the toy presets, short runs
LLAMA_1B = TMP / "llama-1b-random"
SHAPE_1B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                intermediate_size=5504, vocab_size=32000)


def set_cpu_env(device: str) -> None:
    """On CPU: one thread (the project's rule on 2 shared cores) and DeepSpeed's CPU accelerator."""
    if device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ensure_toy_world() -> None:
    """datasets/generate_toy_world.py into bench/tmp (about 9 s on 2 cores), once."""
    if (TOY_WORLD / "step3_ppo" / "train.jsonl").is_file() and (TOY_BASE / "config.json").is_file():
        return
    log("generating the toy world and base model under bench/tmp")
    subprocess.run([sys.executable, str(ROOT / "datasets" / "generate_toy_world.py"), "--out_dir", str(TOY_WORLD),
                    "--model_dir", str(TOY_BASE)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def toy_preset_env() -> dict[str, str]:
    """The environment that points the run scripts' toy preset at this bench's world and checkpoints."""
    return {**os.environ, "CONQORD_PRESET": "toy", "CONQORD_TOY_DATA": str(TOY_WORLD),
            "CONQORD_TOY_BASE": str(TOY_BASE), "CONQORD_TOY_OUT": str(TOY_CKPT)}


def ensure_toy_checkpoints(step1_steps: int = 150, step2_steps: int = 20) -> tuple[Path, Path]:
    """Short toy step-1 and step-2 runs (the real run_step{1,2}.sh toy presets, fewer steps): a step-1
    model that answers in the trained format and stops at EOS, as step 3 meets it (~45 s on 2 cores)."""
    ensure_toy_world()
    env = toy_preset_env()
    for step, script, steps in (("step1", "step1_supervised_finetuning_LM/run_step1.sh", step1_steps),
                                ("step2", "step2_reward_model/run_step2.sh", step2_steps)):
        if not (TOY_CKPT / step / "config.json").is_file():
            log(f"training the toy {step} for {steps} steps into {TOY_CKPT / step}")
            subprocess.run(["bash", str(ROOT / script), "--max_steps", str(steps)], check=True, cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL)
    return TOY_CKPT / "step1", TOY_CKPT / "step2"


def toy_step3_flags() -> list[str]:
    """The step-3 flags of ``run_step3.sh``'s toy preset, exactly as the script builds them (its paths pointed
    at this bench's world and checkpoints): the script runs with a stub ``python`` first on its PATH that
    prints the arguments it is launched with, so a bench cannot drift from the preset."""
    script = ROOT / "step3_RL_finetune_LLM" / "run_step3.sh"
    with tempfile.TemporaryDirectory() as stub_dir:
        stub = Path(stub_dir) / "python"
        stub.write_text('#!/bin/sh\nprintf \'%s\\0\' "$@"\n')
        stub.chmod(0o755)
        env = {**toy_preset_env(), "CONQORD_NPROC": "1", "PATH": f"{stub_dir}{os.pathsep}{os.environ['PATH']}"}
        env.pop("CONQORD_HOSTFILE", None)  # one plain process: the script launches `python -m MODULE FLAGS…`
        launched = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                                  check=True).stdout.split("\0")[:-1]
    if launched[:2] != ["-m", "step3_RL_finetune_LLM.main"]:
        raise SystemExit(f"{script} (toy preset) did not launch `python -m step3_RL_finetune_LLM.main`: {launched[:3]}")
    return launched[2:]


def ensure_llama_1b(device, layers: int = SHAPE_1B["num_hidden_layers"]) -> Path:
    """A randomly initialised Llama of ~1.3B parameters (bf16), saved once with the toy tokenizer
    (vocabulary 512 < the model's 32000: sampled ids beyond it decode to nothing, which is fine here).
    ``layers`` below 24 gives the same shape with fewer layers (a cheap CPU check of the 1B code path)."""
    folder = LLAMA_1B if layers == SHAPE_1B["num_hidden_layers"] else LLAMA_1B.with_name(f"{LLAMA_1B.name}-L{layers}")
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    ensure_toy_world()
    tokenizer = AutoTokenizer.from_pretrained(TOY_BASE)
    config = LlamaConfig(**{**SHAPE_1B, "num_hidden_layers": layers}, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    log(f"building the random 1B-shaped Llama ({layers} layers) on {device} into {folder}")
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    del model
    log(f"saved in {time.perf_counter() - start:.1f} s")
    return folder


def toy_ppo_rows(seed: int) -> list[dict]:
    """The toy world's PPO rows (prompt, answers) after a seeded shuffle."""
    import random

    from utils.jsonl import read_jsonl

    rows = read_jsonl(TOY_WORLD / "step3_ppo" / "train.jsonl")
    random.Random(seed).shuffle(rows)
    return rows


def toy_prompts(tokenizer, count: int, max_len: int, seed: int) -> tuple[list[list[int]], list[dict]]:
    """The first ``count`` PPO prompts of the toy world after a seeded shuffle, encoded as step 3 does."""
    from utils.collate import encode_prompt

    rows = toy_ppo_rows(seed)
    rows = (rows * (count // len(rows) + 1))[:count]
    return [encode_prompt(tokenizer, row["prompt"], max_len) for row in rows], rows


class Clock:
    """``wall``: perf_counter with a device synchronise on both sides (CUDA kernels run asynchronously).
    ``cpu``: this process's CPU time (``time.process_time``), CPU device only: on a machine shared with
    other jobs it leaves out the time the process waited for a core, so it is far steadier than wall
    time for a single-threaded run (OMP_NUM_THREADS=1); it still counts gc, Python and kernels."""

    def __init__(self, device: str, kind: str = "wall"):
        import torch

        if kind == "cpu" and device != "cpu":
            raise SystemExit("--clock cpu measures CPU time: only with --device cpu")
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.read = time.process_time if kind == "cpu" else time.perf_counter

    def __call__(self) -> float:
        self.sync()
        return self.read()


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "runs": [round(v, 5) for v in values]}


def machine(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS')}, torch {torch.__version__}")


def versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__}


SOURCES = ("utils/model.py", "utils/generation.py", "utils/training.py", "utils/ds_config.py", "utils/dist.py",
           "step3_RL_finetune_LLM/experience.py", "step3_RL_finetune_LLM/trainer.py",
           "step3_RL_finetune_LLM/rlhf_engine.py", "step3_RL_finetune_LLM/ppo.py")


def source_digest() -> dict:
    """Short content hashes of the files whose code is timed: the tree changes under a bench while
    others edit it, and a number belongs to the code that produced it."""
    import hashlib

    return {name: hashlib.sha1((ROOT / name).read_bytes()).hexdigest()[:10]
            for name in SOURCES if (ROOT / name).is_file()}


def write_json(result: dict, out: str | None) -> None:
    result.setdefault("source_sha1", source_digest())
    line = json.dumps(result, sort_keys=False, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(line, flush=True)


def token_ids(tokenizer) -> SimpleNamespace:
    return SimpleNamespace(pad=tokenizer.pad_token_id, eos=tokenizer.eos_token_id)
