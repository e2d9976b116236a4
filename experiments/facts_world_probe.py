"""What a chat model already knows of the facts world: greedy accuracy per question form and popularity third.

A measurement, not a test: it checks that the world grades knowledge (popular entities known, rare
ones not) before any training. Each question goes through the model's chat template with "Answer
with a short phrase only."; an answer is right when a gold alias appears in it as whole words
(:func:`mentions`, lenient: chat models answer in sentences). Also the AUROC of the answer's mean
token log-probability and of the popularity percentile for that correctness.

    python -m experiments.facts_world_probe --model /tmp/smol --eval datasets/facts_world/eval/facts.jsonl
"""
from __future__ import annotations

import json
from collections import defaultdict

import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from utils.answer_match import normalize_answer
from utils.args import Parser
from utils.jsonl import read_jsonl, write_jsonl

INSTRUCTION = "Answer with a short phrase only."


def mentions(prediction: str, golds: list[str]) -> bool:
    """A gold alias occurs in the prediction as whole words (after SQuAD normalisation)."""
    text = f" {normalize_answer(prediction)} "
    return any(f" {normalize_answer(g)} " in text for g in golds if normalize_answer(g))


@torch.no_grad()
def answer(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[tuple[str, float]]:
    """Greedy answers and their mean token log-probabilities, one batch."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": f"{q} {INSTRUCTION}"}],
                                           tokenize=False, add_generation_prompt=True) for q in questions]
    batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, output_scores=True,
                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    logprobs = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    live = torch.cumsum(new == tokenizer.eos_token_id, 1) - (new == tokenizer.eos_token_id).long() == 0
    means = (logprobs * live).sum(1) / live.sum(1).clamp(min=1)
    return [(tokenizer.decode(ids, skip_special_tokens=True).strip(), float(m)) for ids, m in zip(new, means)]


def _auroc(labels: list[int], scores: list[float]) -> float | None:
    return round(float(roc_auc_score(labels, scores)), 2) if 0 < sum(labels) < len(labels) else None


def table(rows: list[dict]) -> list[dict]:
    """One line per form and for all forms: n, accuracy overall and per third, the two AUROCs."""
    groups = defaultdict(list)
    for row in rows:
        groups[row["form"]].append(row)
        groups["all"].append(row)
    lines = []
    for name, members in groups.items():
        correct = [r["correct"] for r in members]
        thirds = {t: [r["correct"] for r in members if r["third"] == t] for t in ("low", "mid", "high")}
        lines.append({"form": name, "n": len(members), "accuracy": round(sum(correct) / len(correct), 2),
                      **{t: round(sum(v) / len(v), 2) if v else None for t, v in thirds.items()},
                      "auroc_logprob": _auroc(correct, [r["logprob"] for r in members]),
                      "auroc_popularity": _auroc(correct, [r["popularity"] for r in members])})
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__)
    parser.add_argument("--model", required=True, help="A chat model's folder (e.g. python -m tools.gguf_import).")
    parser.add_argument("--eval", required=True, help="The facts world's eval/facts.jsonl.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--answers", help="Also write each question's answer and grade to this JSONL file.")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    # by form, then length: a batch of short capital answers stops early instead of waiting for city sentences
    rows = sorted(read_jsonl(args.eval), key=lambda r: (r["form"], len(r["question"])))
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start:start + args.batch_size]
        for row, (text, logprob) in zip(chunk, answer(model, tokenizer, [r["question"] for r in chunk],
                                                          args.max_new_tokens)):
            row.update(prediction=text, logprob=logprob, correct=int(mentions(text, row["answer"])))
    if args.answers:
        write_jsonl(args.answers, rows)
    for line in table(rows):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
