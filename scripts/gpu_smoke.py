"""Helpers of scripts/gpu_smoke.sh: a random Llama of a chosen shape, small step-4 benchmark files, the table.

    python scripts/gpu_smoke.py model --tokenizer DIR --out DIR [--hidden_size 2048 ...] [--dtype bf16]
    python scripts/gpu_smoke.py bench --world DIR --out DIR [--n 16]
    python scripts/gpu_smoke.py table --smoke_dir DIR

Nothing is downloaded: the tokenizer is the toy world's local BPE tokenizer (512 tokens); the model's
vocabulary is padded to ``--vocab_size`` (32000 by default, as Llama-2) so the shape and the cost of
the embedding and LM head are Llama-like (ids past the tokenizer are never produced by it and are
skipped when decoding).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("model", "step1", "step2", "step3", "step3_calibrated", "step4")
# table columns: (header, key in the step's JSON line or in the runner's record)
COLUMNS = (("step", None), ("status", None), ("wall_s", None), ("steps", "steps"),
           ("s/step", "seconds_per_step"), ("gen_s", "seconds_generation"),
           ("exp_s", "seconds_experience"), ("train_s", "seconds_training"),
           ("peak_gpu_gib", "peak_gpu_memory_gib"))
ERROR_PATTERN = re.compile(r"(Error|Exception|error:|FAILED|Traceback|Killed|RuntimeError|CUDA out of memory)")
# DeepSpeed launcher/logger lines (the launcher's "[ERROR] ... exits with return code" repeats the whole command)
NOISE_PATTERN = re.compile(r"^\s*(\[\d{4}-\d\d-\d\d [\d:,.]+\] \[[A-Z]+\]|warnings\.warn)")


# --------------------------------------------------------------------------------------------- model
def make_model(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    heads = args.num_heads
    if args.hidden_size % heads:
        raise SystemExit(f"error: --hidden_size {args.hidden_size} is not a multiple of --num_heads {heads}")
    config = LlamaConfig(
        vocab_size=max(args.vocab_size, len(tokenizer)), hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size, num_hidden_layers=args.num_layers,
        num_attention_heads=heads, num_key_value_heads=args.num_kv_heads or heads,
        max_position_embeddings=args.max_positions, rms_norm_eps=1e-5, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights are created in the target dtype (no fp32 copy of a 1B model)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = dtype
    built = time.time() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        if not any(tmp.glob("*.safetensors")):
            raise SystemExit(f"error: save_pretrained wrote no safetensors file in {tmp}")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(p.numel() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    summary = {"model": {"parameters": params, "device": device, "dtype": args.dtype,
                         "vocab_size": config.vocab_size, "tokenizer_size": len(tokenizer),
                         "hidden_size": args.hidden_size, "num_layers": args.num_layers, "num_heads": heads,
                         "intermediate_size": args.intermediate_size, "seconds_build": round(built, 1),
                         "seconds": round(time.time() - start, 1),
                         "peak_gpu_memory_gib": None if peak is None else round(peak, 2), "path": str(out)}}
    print(json.dumps(summary), flush=True)
    return 0


# --------------------------------------------------------------------------------------------- benchmarks
def make_bench(args: argparse.Namespace) -> int:
    """An NQ-open-format JSONL and a TruthfulQA-format CSV from the toy world's evaluation questions
    (the formats step4_evaluation/benchmarks.py reads)."""
    world = Path(args.world)
    rows = [json.loads(line) for line in (world / "eval/test.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[: args.n]
    if not rows:
        raise SystemExit(f"error: {world / 'eval/test.jsonl'} has no questions")
    values: dict[str, set[str]] = {}
    facts = world / "facts.jsonl"
    if facts.is_file():
        for line in facts.read_text().splitlines():
            fact = json.loads(line)
            values.setdefault(fact["relation"], set()).add(fact["answer"])
    rng = random.Random(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "nq_open.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"question": row["question"], "answer": row["answers"]}) + "\n")
    with (out / "TruthfulQA.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers",
                         "Source"])
        for row in rows:
            wrong = sorted(values.get(row.get("relation", ""), set()) - set(row["answers"])) or ["I do not know"]
            writer.writerow(["Toy", row.get("relation", "toy"), row["question"], row["answers"][0],
                             "; ".join(row["answers"]), "; ".join(rng.sample(wrong, min(3, len(wrong)))), "toy world"])
    print(json.dumps({"bench": {"truthfulqa": str(out / "TruthfulQA.csv"), "nq_open": str(out / "nq_open.jsonl"),
                                "n": len(rows)}}))
    return 0


# --------------------------------------------------------------------------------------------- table
def step_json(text: str, step: str) -> dict | None:
    """The last line of ``text`` that is a JSON object with key ``step`` (the step's final summary)."""
    for line in reversed(text.splitlines()):
        start = line.find("{")
        if start < 0 or f'"{step}"' not in line:
            continue
        try:
            data = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get(step), dict):
            return data[step]
    return None


def last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if ERROR_PATTERN.search(line) and not NOISE_PATTERN.match(line):
            return line[:300]
    plain = [line for line in lines if not NOISE_PATTERN.match(line)]
    return (plain or lines or ["(empty log)"])[-1][:300]


def _fmt(value) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.replace("|", "/")
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def read_record(smoke_dir: Path, step: str) -> dict:
    """What the runner wrote for ``step`` (``logs/<step>.status``: rc, wall seconds, skip reason) plus
    the step's own JSON summary from its log."""
    status_file = smoke_dir / "logs" / f"{step}.status"
    log = smoke_dir / "logs" / f"{step}.log"
    record: dict = {"step": step, "log": str(log)}
    if not status_file.is_file():
        record.update(status="not run", ok=False)
        return record
    fields = dict(part.split("=", 1) for part in status_file.read_text().split() if "=" in part)
    text = log.read_text(errors="replace") if log.is_file() else ""
    summary = step_json(text, step.split("_", 1)[0]) or {}  # step3_calibrated logs as step3
    record["json"] = summary
    record["wall_s"] = float(fields["wall"]) if "wall" in fields else None
    if fields.get("skipped"):
        reason = status_file.read_text().split("skipped=", 1)[1].strip()
        record.update(status=f"SKIPPED ({reason})", ok=False)
    else:
        rc = int(fields.get("rc", "1"))
        record["rc"] = rc
        if rc == 0:
            record.update(status="ok", ok=True)
        elif rc in (124, 137) and fields.get("timeout") and record["wall_s"] is not None \
                and record["wall_s"] >= float(fields["timeout"]) - 1:
            record.update(status=f"FAILED (timed out after {fields['timeout']} s)", ok=False)
        else:
            record.update(status=f"FAILED (exit {rc}: {last_error_line(text)})", ok=False)
    for header, key in COLUMNS:
        if key:
            record[header] = summary.get(key)
    return record


def make_table(args: argparse.Namespace) -> int:
    smoke_dir = Path(args.smoke_dir)
    records = [read_record(smoke_dir, step) for step in args.steps]
    headers = [header for header, _ in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for record in records:
        lines.append("| " + " | ".join(_fmt(record.get(h)) if h != "step" else record["step"] for h in headers) + " |")
    table = "\n".join(lines)
    print(table)
    print()
    for record in records:
        if Path(record["log"]).is_file():
            print(f"{record['step']} log: {record['log']}")
    ok = all(record["ok"] for record in records)
    report = {"ok": ok, "steps": {r["step"]: {k: v for k, v in r.items() if k != "step"} for r in records},
              "columns": headers, "table": table}
    (smoke_dir / "summary.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"summary: {smoke_dir / 'summary.json'}")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------- cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model", allow_abbrev=False,
                       help="Create a random Llama and save it (HF format, safetensors, tokenizer).")
    m.add_argument("--tokenizer", required=True, help="Folder holding the tokenizer (the toy world's base model).")
    m.add_argument("--out", required=True)
    m.add_argument("--hidden_size", type=int, default=2048)
    m.add_argument("--num_layers", type=int, default=24)
    m.add_argument("--num_heads", type=int, default=16)
    m.add_argument("--num_kv_heads", type=int, default=0, help="0: as many as --num_heads (Llama-2-7B style).")
    m.add_argument("--intermediate_size", type=int, default=5504)
    m.add_argument("--vocab_size", type=int, default=32000)
    m.add_argument("--max_positions", type=int, default=4096)
    m.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    m.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench", allow_abbrev=False,
                       help="NQ-open JSONL and TruthfulQA CSV from the toy world's evaluation questions.")
    b.add_argument("--world", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--n", type=int, default=16)
    t = sub.add_parser("table", allow_abbrev=False,
                       help="Print the per-step table from the logs; exit 1 if a step did not pass.")
    t.add_argument("--smoke_dir", required=True)
    t.add_argument("--steps", nargs="+", default=list(STEPS))
    args = parser.parse_args(argv)
    return {"model": make_model, "bench": make_bench, "table": make_table}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
