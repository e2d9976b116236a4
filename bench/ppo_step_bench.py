"""One PPO step of step 3, by phase, ZeRO-3 vs ZeRO-0 — with the real step-3 code.

Not a test. Engines come from ``rlhf_engine.build_engines`` on a namespace parsed by ``trainer.build_parser()``
from the toy preset's flags as ``step3_RL_finetune_LLM/run_step3.sh`` builds them (``_common.toy_step3_flags``:
64 rollouts x 12 new tokens, training minibatch 32, ZeRO-3, fp32), this bench's paths, stage and steps appended;
``ExperienceMaker.make`` and ``trainer.ppo_update`` run unchanged.
Phases are timed by wrapping the names those functions call (``time.perf_counter``, a CUDA synchronise on
each side on GPU):

  generation       ExperienceMaker.rollout (gather once, generate, re-hook), less the old log-probs in it
  actor_log_probs  response_log_probs(actor)      (old log-probs, on the gathered actor inside the rollout)
  ref_log_probs    response_log_probs(reference)
  critic_values    response_values(critic)
  reward           oracle_quality / reward model, dual_reward
  gae              token_rewards + gae
  make_other       the rest of make(): decoding, confidence parsing, stats
  update_*         ppo_update: actor / critic forward, backward, step; update_other = the rest

Each ZeRO stage runs in its own child process (fresh DeepSpeed state).

    python bench/ppo_step_bench.py                                 # toy, CPU, ZeRO-3 and ZeRO-0
    python bench/ppo_step_bench.py --device cuda --shape 1b --steps 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
from utils.args import Parser  # noqa: E402  (_common put the repo root on sys.path)

# the 1B shape on one GPU: bf16, smaller batches, modest lengths (keeps a run near a minute)
BIG = {"--per_device_generation_batch_size": "16", "--per_device_training_batch_size": "8",
       "--max_prompt_seq_len": "64", "--max_answer_seq_len": "64", "--dtype": "bf16"}
MAKE_PHASES = ("generation", "actor_log_probs", "ref_log_probs", "critic_values", "reward", "gae")
UPDATE_PHASES = ("update_actor_forward", "update_actor_backward", "update_actor_step",
                 "update_critic_forward", "update_critic_backward", "update_critic_step")


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=["toy", "1b"], default="toy")
    p.add_argument("--stages", default=None,
                   help="ZeRO stages to compare, each in its own process (default 3,0 toy; 3 on 1b, to stay near a "
                        "minute)")
    p.add_argument("--steps", type=int, default=None, help="timed PPO steps per stage (default 5 toy, 2 1b)")
    p.add_argument("--warmup", type=int, default=1, help="untimed PPO steps first")
    p.add_argument("--actor", default=None, help="step-1 folder (default: short toy step-1 run under bench/tmp)")
    p.add_argument("--critic", default=None, help="step-2 folder (default: short toy step-2 run under bench/tmp)")
    p.add_argument("--freeze_actor", action="store_true",
                   help="critic-only updates (the toy preset's first 50 steps); default: actor and critic update")
    p.add_argument("--step3_flags", nargs=argparse.REMAINDER, default=[],
                   help="more step-3 flags, appended last (e.g. --zero3_settings stage3_param_persistence_threshold=0)")
    p.add_argument("--profile", default=None,
                   help="write a cProfile table (top 60 by cumulative time) of the timed steps to PATH.stageN.txt")
    p.add_argument("--layers", type=int, default=24,
                   help="--shape 1b with fewer layers (same widths and vocabulary): a cheap CPU check of that path")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall clock (default) or this process's CPU time (CPU only: steadier on a shared machine)")
    p.add_argument("--out", default=None)
    p.add_argument("--child_stage", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if args.shape == "toy" else 2
    if args.stages is None:
        args.stages = "3,0" if args.shape == "toy" else "3"
    return args


# ---- phase timing ---------------------------------------------------------------------------------------

class Phases:
    """Wraps the names ``make`` and ``ppo_update`` call, adding their seconds to the current record; removed
    after the timed steps."""

    def __init__(self, clock, engines):
        self.clock, self.engines, self.record, self.undo = clock, engines, defaultdict(float), []

    def wrap(self, owner, attr: str, name_of) -> None:
        """``name_of(*args)`` names the phase of a call."""
        original = getattr(owner, attr)
        own = attr in vars(owner)
        phases = self

        def timed(*args, **kwargs):
            name = name_of(*args)
            start = phases.clock()
            try:
                return original(*args, **kwargs)
            finally:
                phases.record[name] += phases.clock() - start

        self.undo.append((owner, attr, vars(owner).get(attr) if own else None, own))
        setattr(owner, attr, timed)

    def install(self) -> "Phases":
        from step3_RL_finetune_LLM import experience, trainer

        engines = self.engines
        # the old log-probs: the rollout scores its samples on the gathered actor module, not through the engine
        role = {id(engines.actor.module): "actor", id(engines.ref): "ref"}
        self.wrap(experience.ExperienceMaker, "make", lambda *a: "make")
        self.wrap(trainer, "ppo_update", lambda *a: "ppo_update")
        self.wrap(experience.ExperienceMaker, "rollout", lambda *a: "generation")
        self.wrap(experience, "response_log_probs", lambda model, *a: f"{role.get(id(model), 'other')}_log_probs")
        self.wrap(experience, "response_values", lambda *a: "critic_values")
        for attr in ("oracle_quality", "dual_reward"):
            self.wrap(experience, attr, lambda *a: "reward")
        self.wrap(experience.ExperienceMaker, "_model_quality", lambda *a: "reward")
        for attr in ("token_rewards", "gae"):
            self.wrap(experience, attr, lambda *a: "gae")
        self.wrap(trainer, "response_log_probs", lambda *a: "update_actor_forward")
        self.wrap(trainer, "response_values", lambda *a: "update_critic_forward")
        for name in ("actor", "critic"):
            engine = getattr(engines, name)
            for method in ("backward", "step"):
                self.wrap(engine, method, lambda *a, n=name, m=method: f"update_{n}_{m}")
        return self

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc) -> None:
        for owner, attr, value, own in reversed(self.undo):
            if own:
                setattr(owner, attr, value)
            else:
                delattr(owner, attr)
        self.undo = []

    def take(self) -> dict[str, float]:
        record, self.record = dict(self.record), defaultdict(float)
        record["generation"] -= record.get("actor_log_probs", 0.0)  # timed inside the rollout: counted once
        record["make_other"] = record.pop("make") - sum(record.get(k, 0.0) for k in MAKE_PHASES)
        record["update_other"] = record.pop("ppo_update") - sum(record.get(k, 0.0) for k in UPDATE_PHASES)
        record["step"] = record["make_other"] + record["update_other"] + sum(
            record.get(k, 0.0) for k in (*MAKE_PHASES, *UPDATE_PHASES))
        return record


def count_trace_invalidations() -> dict:
    """Counts ZeRO-3 prefetch-trace invalidations (DeepSpeed only logs them with a debug switch): a trace
    invalidated every step means no prefetching, every parameter fetched on demand."""
    counter: dict = {}
    try:
        from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator as ppc
    except ImportError:
        return counter
    original = ppc._invalidate_trace

    def invalidate(self):
        counter["n"] = counter.get("n", 0) + 1
        return original(self)

    ppc._invalidate_trace = invalidate
    return counter


def step3_namespace(args, stage: int, actor: Path, critic: Path):
    from step3_RL_finetune_LLM.trainer import build_parser

    flags = common.toy_step3_flags()  # later flags win: the bench's own come after the preset's
    if args.shape == "1b":
        flags += [item for pair in BIG.items() for item in pair]
    flags += ["--actor_model_name_or_path", str(actor), "--critic_model_name_or_path", str(critic),
              "--actor_zero_stage", str(stage), "--critic_zero_stage", str(stage),
              "--max_steps", str(args.warmup + args.steps), "--output_dir", str(common.TMP / "ppo_bench_out"),
              *args.step3_flags]
    return build_parser().parse_args(flags), flags


def child(args) -> dict:
    """One ZeRO stage: build the engines, warm up, time ``--steps`` PPO steps by phase."""
    common.set_cpu_env(args.device)
    import torch

    from step3_RL_finetune_LLM import experience, trainer
    from step3_RL_finetune_LLM.ppo import ppo_settings
    from step3_RL_finetune_LLM.rlhf_engine import build_engines
    from utils import dist
    from utils.collate import encode_prompt
    from utils.model import load_tokenizer
    from utils.reward import reward_settings
    from utils.training import set_seed

    stage = args.child_stage
    if args.actor:
        actor, critic = Path(args.actor), Path(args.critic or args.actor)
    elif args.shape == "toy":
        actor, critic = common.ensure_toy_checkpoints()
    else:
        actor = critic = common.ensure_llama_1b("cuda" if args.device == "cuda" else "cpu", args.layers)
    common.ensure_toy_world()
    ns, flags = step3_namespace(args, stage, actor, critic)
    dist.init_distributed(ns.local_rank)
    set_seed(ns.seed)
    clock = common.Clock(args.device, args.clock)
    tokenizer = load_tokenizer(ns.tokenizer_model_name_or_path or ns.actor_model_name_or_path, padding_side="left")
    rows = common.toy_ppo_rows(ns.seed)
    start = clock()
    engines = build_engines(ns, tokenizer, ns.max_steps)
    build_s = clock() - start
    ppo = ppo_settings(ns)
    maker = experience.ExperienceMaker(engines, tokenizer, trainer.generation_settings(ns), reward_settings(ns), ppo)
    phases = Phases(clock, engines)
    invalidations = count_trace_invalidations()
    batch = ns.per_device_generation_batch_size
    records: list[dict] = []
    response_tokens: list[float] = []
    profiler = None
    with phases:
        for step in range(args.warmup + args.steps):
            if args.profile and step == args.warmup:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            chunk = [rows[(step * batch + i) % len(rows)] for i in range(batch)]
            prompts = [encode_prompt(tokenizer, row["prompt"], ns.max_prompt_seq_len) for row in chunk]
            golds = [row["answers"] for row in chunk]
            torch.manual_seed(ns.seed + step * 1000)  # as trainer.run seeds each step
            exp = maker.make(prompts, golds, step)
            trainer.ppo_update(engines, exp, ppo, update_actor=not args.freeze_actor)
            record = phases.take()
            record["zero3_trace_invalidations"] = invalidations.pop("n", 0)
            if step >= args.warmup:
                records.append(record)
                response_tokens.append(exp.stats["response_length"])
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
        Path(f"{args.profile}.stage{stage}.txt").write_text(text.getvalue())
    keys = sorted({k for r in records for k in r})
    result = {"stage": stage, "build_s": round(build_s, 2), "step3_flags": flags,
              "median_s": {k: statistics.median(r.get(k, 0.0) for r in records) for k in keys},
              "runs_step_s": [round(r["step"], 4) for r in records],
              "response_length": statistics.mean(response_tokens), "source_sha1": common.source_digest()}
    print("CHILD_RESULT " + json.dumps(result), flush=True)
    return result


def table(result: dict) -> list[str]:
    stages = result["stages"]
    head = f"| phase (median {result['clock']} s per step) | " + " | ".join(
        f"ZeRO-{s['stage']}" for s in stages) + " |"
    lines = [head, "|---" * (len(stages) + 1) + "|"]
    order = [*MAKE_PHASES, "make_other", *UPDATE_PHASES, "update_other", "step", "zero3_trace_invalidations"]
    for phase in order:
        cells = [f"{s['median_s'].get(phase, 0.0):.3f}" for s in stages]
        if phase == "zero3_trace_invalidations":
            cells = [c[:-4] for c in cells]  # a count
        label = f"**{phase}**" if phase == "step" else phase
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child_stage is not None:
        return child(args)
    common.set_cpu_env(args.device)
    if args.shape == "toy" and not args.actor:
        common.ensure_toy_checkpoints()
    result = {"bench": "ppo_step", "device": args.device, "shape": args.shape, "steps": args.steps,
              "warmup": args.warmup, "update_actor": not args.freeze_actor, "clock": args.clock, "stages": []}
    argv = list(sys.argv[1:] if argv is None else argv)
    for stage in (int(s) for s in args.stages.split(",")):
        common.log(f"ZeRO-{stage}: building engines and timing {args.warmup}+{args.steps} steps")
        start = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child_stage", str(stage), *strip_out(argv)]
        proc = subprocess.run(cmd, cwd=common.ROOT, stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("CHILD_RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"ZeRO-{stage} child failed (exit {proc.returncode})")
        stage_result = json.loads(lines[-1][len("CHILD_RESULT "):])
        stage_result["wall_s"] = round(time.perf_counter() - start, 1)
        result["stages"].append(stage_result)
    import torch

    result["machine"] = common.machine(args.device)
    result["versions"] = {"torch": torch.__version__}
    result["markdown"] = table(result)
    print("\n".join(result["markdown"]))
    common.write_json(result, args.out)
    return result


def strip_out(argv: list[str]) -> list[str]:
    """The parent's argv minus --out and --stages (the child prints, the parent writes)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--out", "--stages", "--child_stage"):
            skip = True
            continue
        if item.startswith(("--out=", "--stages=")):
            continue
        out.append(item)
    return out


if __name__ == "__main__":
    main()
