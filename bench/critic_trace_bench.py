"""The critic's train step under ZeRO-3, called the old way (backbone and head one by one, skipping the
root module's forward) vs through the root module (``engine(...)``, what the project does now).

DeepSpeed records the order in which a forward fetches parameters, from the root module's forward
pre-hook to the end of the step, and prefetches along that trace afterwards. Bypassing the root forward
leaves the trace unfinished, so every layer is fetched on demand.

    python bench/critic_trace_bench.py [--device cuda --shape 1b] [--out FILE]
"""
from __future__ import annotations

from _common import LLAMA_1B, Clock, ensure_llama_1b, ensure_toy_checkpoints, log, machine, set_cpu_env, summary, \
    versions, write_json
from utils.args import Parser  # _common put the repo root on sys.path


def old_token_values(engine, input_ids, attention_mask):
    """The critic's values as computed before: backbone, then head, never the root module's forward."""
    from utils.model import position_ids

    module = engine.module
    hidden = getattr(module, module.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                       position_ids=position_ids(attention_mask),
                                                       use_cache=False).last_hidden_state
    return module.score(hidden).squeeze(-1)


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["toy", "1b"], default="toy")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--reverse", action="store_true", help="time the old path first (rules out order effects)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    set_cpu_env(args.device)
    import torch

    from utils import dist
    from utils.ds_config import train_ds_config
    from utils.model import create_scalar_model, load_tokenizer, token_values
    from utils.training import build_engine

    dist.init_distributed()
    toy = args.shape == "toy"
    path = ensure_toy_checkpoints()[1] if toy else ensure_llama_1b(args.device)
    batch, seq, steps = args.batch or (32 if toy else 8), args.seq or (64 if toy else 256), args.steps or (10 if toy else 4)
    dtype = "fp32" if args.device == "cpu" else "bf16"
    tokenizer = load_tokenizer(str(path))
    # every parameter partitioned (the toy model is otherwise mostly below the persistence threshold)
    config = train_ds_config(micro_batch_size=batch, gradient_accumulation_steps=1, world_size=1, zero_stage=3,
                             dtype=dtype, zero3_settings=[("stage3_param_persistence_threshold", 0.0)])
    clock, results = Clock(args.device), {}
    device = dist.comm_device() if args.device == "cuda" else torch.device("cpu")
    modes = [("root_forward", token_values), ("backbone_then_head", old_token_values)]
    for mode, values_of in (modes[::-1] if args.reverse else modes):
        engine = build_engine(create_scalar_model(str(path), tokenizer, dtype, config), config, learning_rate=1e-5,
                              weight_decay=0.0, lora_learning_rate=1e-5, scheduler="constant", warmup_steps=0,
                              total_steps=100)
        torch.manual_seed(0)
        ids = torch.randint(3, len(tokenizer), (batch, seq), device=device)
        mask = torch.ones_like(ids)
        times = []
        for index in range(steps + 2):  # two warm-up steps: DeepSpeed records its trace on the first
            start = clock()
            engine.backward(values_of(engine, ids, mask).float().pow(2).mean())
            engine.step()
            if index >= 2:
                times.append(clock() - start)
        coordinator = engine.optimizer.parameter_offload.get_param_coordinator()
        results[mode] = {"seconds_per_step": summary(times), "trace_complete": coordinator.is_complete_trace()}
        log(f"{mode}: {summary(times)['median']:.4f} s/step, trace complete: {coordinator.is_complete_trace()}")
        del engine
        if args.device == "cuda":
            torch.cuda.empty_cache()
    speedup = results["backbone_then_head"]["seconds_per_step"]["median"] / results["root_forward"]["seconds_per_step"]["median"]
    print(f"| {args.shape} | {args.device} | {batch}×{seq} | "
          f"{results['backbone_then_head']['seconds_per_step']['median']:.4f} | "
          f"{results['root_forward']['seconds_per_step']['median']:.4f} | {speedup:.2f}× |")
    write_json({"bench": "critic_trace", "machine": machine(args.device), "versions": versions(), "shape": args.shape,
                "model": str(path if toy else LLAMA_1B), "batch": batch, "seq": seq, "order": [m for m in results], "results": results,
                "speedup": round(speedup, 3)}, args.out)


if __name__ == "__main__":
    main()
