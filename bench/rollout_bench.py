"""Rollouts under ZeRO-3: gather-once generation (step 3's path) vs HF ``generate`` through DeepSpeed's hooks.

Not a test. On the same ZeRO-3 engine (built with the project's ``create_causal_lm`` / ``train_ds_config``
/ ``build_engine``), the same prompts, seeds, sampling and ``max_new_tokens``:

  (a) gather_once: ``unwrapped_for_generation(engine)`` + ``utils.generation.generate`` — what
      ``ExperienceMaker.rollout`` does: all parameters gathered once, fetch hooks lifted, then re-registered;
  (b) hooked: ``generate`` on ``engine.module`` directly, every module fetching its parameters through
      DeepSpeed's hooks at every generated token;
  (plain, for scale) the same checkpoint as a plain module outside DeepSpeed.

Reports new tokens per second (rows x decoding steps / seconds, median of the timed repeats), the ratio
(a)/(b), whether (a) and (b) sampled identical tokens, one markdown row per config, and one JSON line.

    python bench/rollout_bench.py                                   # toy, CPU, default and forced configs
    python bench/rollout_bench.py --device cuda --shape 1b          # one GPU, random 1.3B Llama, bf16
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
from utils.args import Parser, seed  # noqa: E402  (_common put the repo root on sys.path)

FORCED = [("stage3_param_persistence_threshold", 0.0)]
HEADER = ("| device | shape | ZeRO-3 config | batch | prompt | new tokens | (a) gather-once tok/s | (b) hooked tok/s | "
          "(a)/(b) | same tokens | plain tok/s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=["toy", "1b"], default="toy")
    p.add_argument("--model", default=None, help="HF folder (default: toy step-1 model, or the random 1B one)")
    p.add_argument("--batch", type=int, default=None, help="rollouts per call (default 64 toy, 16 1b)")
    p.add_argument("--prompt_len", type=int, default=None, help="max prompt tokens (default 32 toy, 64 1b)")
    p.add_argument("--new_tokens", type=int, default=None,
                   help="max_new_tokens (default 12 toy = step 3's toy preset, 64 1b)")
    p.add_argument("--ignore_eos", action="store_true",
                   help="never stop at EOS, so every call decodes exactly --new_tokens steps")
    p.add_argument("--greedy", action="store_true", help="greedy instead of sampling at temperature 1, top_p 1")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="default fp32 toy, bf16 1b")
    p.add_argument("--configs", default=None,
                   help="comma list of 'default' (the project's ZeRO-3 config) and 'forced' (+ "
                        "stage3_param_persistence_threshold=0: every parameter partitioned). Default: both on toy, "
                        "default on 1b")
    p.add_argument("--zero3_settings", nargs="+", default=[], metavar="stage3_NAME=NUMBER",
                   help="extra overrides for every config, as step 1-3's flag")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of each path (default 5 toy, 2 1b)")
    p.add_argument("--no_plain", action="store_true", help="skip the plain (no DeepSpeed) reference")
    p.add_argument("--seed", type=seed, default=1234)
    p.add_argument("--layers", type=int, default=24,
                   help="--shape 1b with fewer layers (same widths and vocabulary): a cheap CPU check of that path")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall clock (default) or this process's CPU time (CPU only: steadier on a shared machine)")
    p.add_argument("--out", default=None, help="write the JSON result here too")
    args = p.parse_args(argv)
    toy = args.shape == "toy"
    for key, toy_value, big_value in (("batch", 64, 16), ("prompt_len", 32, 64), ("new_tokens", 12, 64),
                                      ("dtype", "fp32", "bf16"), ("repeats", 5, 2),
                                      ("configs", "default,forced", "default")):
        if getattr(args, key) is None:
            setattr(args, key, toy_value if toy else big_value)
    from utils.args import _zero_setting

    args.zero3_settings = [_zero_setting(s) for s in args.zero3_settings]
    return args


def count_partitioned(module) -> dict:
    params = list(module.parameters())
    split = [p for p in params if hasattr(p, "ds_id") and not getattr(p, "ds_persist", False)]
    return {"params": len(params), "partitioned": len(split),
            "partitioned_numel_share": round(sum(p.ds_numel for p in split) / max(sum(
                getattr(p, "ds_numel", p.numel()) for p in params), 1), 4)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.set_cpu_env(args.device)
    import torch

    from utils import dist
    from utils.ds_config import train_ds_config
    from utils.generation import GenerationSettings, generate
    from utils.model import create_causal_lm, load_tokenizer, unwrapped_for_generation
    from utils.training import build_engine

    device = dist.init_distributed()
    if args.device == "cuda" and device.type != "cuda":
        raise SystemExit("--device cuda: no GPU visible")
    clock = common.Clock(args.device, args.clock)
    if args.model:
        path = Path(args.model)
    elif args.shape == "toy":
        path, _ = common.ensure_toy_checkpoints()
    else:
        path = common.ensure_llama_1b(device, args.layers)
    common.ensure_toy_world()
    tokenizer = load_tokenizer(str(path), padding_side="left")
    ids = common.token_ids(tokenizer)
    prompts, _ = common.toy_prompts(tokenizer, args.batch, args.prompt_len, args.seed)
    if args.shape == "1b":  # the 1B model's own vocabulary: random prompts of varied length
        gen = torch.Generator().manual_seed(args.seed)
        lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (args.batch,), generator=gen)
        prompts = [[tokenizer.bos_token_id] + torch.randint(3, common.SHAPE_1B["vocab_size"], (int(n) - 1,),
                                                            generator=gen).tolist() for n in lengths]
    eos = 2**30 if args.ignore_eos else ids.eos  # an id beyond the vocabulary: never sampled, no row stops early
    settings = GenerationSettings(max_new_tokens=args.new_tokens, do_sample=not args.greedy)

    def timed(call) -> tuple[float, torch.Tensor, int]:
        torch.manual_seed(args.seed)
        start = clock()
        sequences, _, width = call()
        seconds = clock() - start
        return seconds, sequences, args.batch * (sequences.shape[1] - width)

    result = {"bench": "rollout", "device": args.device, "machine": common.machine(args.device),
              "versions": common.versions(), "shape": args.shape, "model": str(path), "dtype": args.dtype,
              "batch": args.batch, "prompt_len_max": max(map(len, prompts)), "new_tokens": args.new_tokens,
              "sampling": "greedy" if args.greedy else "temperature 1, top_p 1", "ignore_eos": args.ignore_eos,
              "clock": args.clock,
              "warmup": args.warmup, "repeats": args.repeats, "configs": []}
    rows = []
    plain = None  # the same checkpoint outside DeepSpeed, timed beside each config: the ceiling
    if not args.no_plain:
        plain = create_causal_lm(str(path), tokenizer, args.dtype, None, disable_dropout=True).to(device).eval()
    for name in args.configs.split(","):
        settings3 = (FORCED if name == "forced" else []) + list(args.zero3_settings)
        ds_config = train_ds_config(micro_batch_size=args.batch, gradient_accumulation_steps=1, world_size=1,
                                    zero_stage=3, dtype=args.dtype, zero3_settings=settings3)
        start = clock()
        model = create_causal_lm(str(path), tokenizer, args.dtype, ds_config, disable_dropout=True)
        engine = build_engine(model, ds_config, learning_rate=1e-5, weight_decay=0.0, lora_learning_rate=1e-5,
                              scheduler="constant", warmup_steps=0, total_steps=1)
        build_s = clock() - start
        engine.eval()

        def gather_once():
            with unwrapped_for_generation(engine) as unwrapped:
                unwrapped.eval()
                return generate(unwrapped, prompts, settings, ids.pad, eos)

        def hooked():
            engine.module.eval()
            return generate(engine.module, prompts, settings, ids.pad, eos)

        def gather_only():
            with unwrapped_for_generation(engine):
                pass
            return torch.zeros(1, 1), None, 1

        paths = {"gather_once": gather_once, "hooked": hooked}
        if plain is not None:
            paths["plain"] = lambda: generate(plain, prompts, settings, ids.pad, eos)
        for _ in range(args.warmup):
            for call in paths.values():
                timed(call)
        seconds = {key: [] for key in (*paths, "gather_only")}
        tokens, same = {}, True
        for repeat in range(args.repeats):  # interleaved, order rotated: drifting load hits every path alike
            outputs = {}
            keys = list(paths)
            for key in keys[repeat % len(keys):] + keys[:repeat % len(keys)]:
                call = paths[key]
                s, outputs[key], tokens[key] = timed(call)
                seconds[key].append(s)
            seconds["gather_only"].append(timed(gather_only)[0])
            same = same and all(out.shape == outputs["hooked"].shape and bool((out == outputs["hooked"]).all())
                                for out in outputs.values())
        entry = {"name": name, "zero3_settings": dict(settings3), **count_partitioned(engine.module),
                 "build_s": round(build_s, 2), "new_tokens_per_call": tokens["hooked"], "same_tokens": same}
        for key in paths:
            stats = common.summary(seconds[key])
            entry[key] = {**stats, "tokens_per_s": tokens[key] / stats["median"]}
        entry["gather_and_rehook_s"] = common.summary(seconds["gather_only"])["median"]
        entry["ratio"] = entry["gather_once"]["tokens_per_s"] / entry["hooked"]["tokens_per_s"]
        result["configs"].append(entry)
        common.log(f"{name}: gather-once {entry['gather_once']['tokens_per_s']:.0f} tok/s, hooked "
                   f"{entry['hooked']['tokens_per_s']:.0f} tok/s, ratio {entry['ratio']:.2f}, same tokens {same}")
        engine = model = None  # noqa: F841 (frees them before the next config)
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()

    for entry in result["configs"]:
        plain_tps = entry.get("plain", {}).get("tokens_per_s")
        rows.append(f"| {args.device}, {args.clock} clock | {args.shape} | {entry['name']} "
                    f"({entry['partitioned']}/{entry['params']} params partitioned) | {args.batch} | "
                    f"{result['prompt_len_max']} | {args.new_tokens} | "
                    f"{entry['gather_once']['tokens_per_s']:.0f} | {entry['hooked']['tokens_per_s']:.0f} | "
                    f"**{entry['ratio']:.2f}x** | {entry['same_tokens']} | "
                    f"{'' if plain_tps is None else f'{plain_tps:.0f}'} |")
    result["markdown"] = rows
    print(HEADER)
    print("\n".join(rows))
    common.write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
