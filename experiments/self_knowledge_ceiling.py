"""How well can a toy model learn to state whether its own answer is right, when told outright?

An upper bound for what the order-preserving reward can teach: the SFT model's sampled answers to the
PPO questions are labelled by exact match, and the model is trained by plain supervision to put
" 1" (right) or " 0" (wrong) after ``### Confidence:``. The measure is the AUROC of its logit gap
" 1" − " 0" for the correctness of its own greedy answers on the held-out countries, overall and
inside each difficulty level, before and after each epoch. Answers are fixed before training, so the
number isolates self-knowledge from answer drift.

    python -m experiments.self_knowledge_ceiling --model model_pth/toy/step1 --data datasets/toy_world
"""
from __future__ import annotations

import argparse
import json
import random

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from step4_evaluation.judges import exact_match
from utils.args import Parser, positive_float, seed
from utils.confidence import extract_answer
from utils.jsonl import read_jsonl
from utils.generation import GenerationSettings, generate, response_ids
from utils.model import create_causal_lm, load_tokenizer
from utils.prompts import CONFIDENCE_TAG
from utils.training import batched, set_seed


def own_answers(model, tokenizer, rows: list[dict], samples: int, greedy: bool) -> list[tuple[str, int, str]]:
    """``(text up to the confidence tag, correct, difficulty)`` for the model's own answers."""
    settings = GenerationSettings(max_new_tokens=8, do_sample=not greedy)
    out = []
    for _ in range(samples):
        for chunk in batched(rows, 128):
            ids = [tokenizer(r["prompt"])["input_ids"] for r in chunk]
            sequences, mask, width = generate(model, ids, settings, tokenizer.pad_token_id, tokenizer.eos_token_id)
            for row, resp in zip(chunk, response_ids(sequences, mask, width)):
                answer = extract_answer(tokenizer.decode(resp, skip_special_tokens=True))
                out.append((f"{row['prompt']} {answer}\n{CONFIDENCE_TAG}", int(exact_match(answer, row["answers"])),
                            row["difficulty"]))
    return out


def logit_gap(model, tokenizer, texts: list[str], yes: int, no: int) -> np.ndarray:
    tokenizer.padding_side = "left"
    gaps = []
    with torch.no_grad():
        for chunk in batched(texts, 128):
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            logits = model(**enc).logits[:, -1]
            gaps += (logits[:, yes] - logits[:, no]).tolist()
    return np.array(gaps)


def auroc_report(model, tokenizer, test, yes, no) -> dict[str, float]:
    gap = logit_gap(model, tokenizer, [t for t, _, _ in test], yes, no)
    correct, level = np.array([c for _, c, _ in test]), np.array([d for _, _, d in test])
    report = {"all": roc_auc_score(correct, gap)}
    for name in sorted(set(level)):
        if len(set(correct[level == name])) > 1:
            report[name] = roc_auc_score(correct[level == name], gap[level == name])
    return {k: round(float(v), 3) for k, v in report.items()}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model_pth/toy/step1")
    parser.add_argument("--data", default="datasets/toy_world")
    parser.add_argument("--learning_rate", type=positive_float, default=3e-4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4, help="Sampled answers per PPO question.")
    parser.add_argument("--seed", type=seed, default=0)
    args = parser.parse_args(argv)
    set_seed(args.seed)
    tokenizer = load_tokenizer(args.model, padding_side="left")
    model = create_causal_lm(args.model, tokenizer).eval()
    train_rows = read_jsonl(f"{args.data}/step3_ppo/train.jsonl")
    test_rows = read_jsonl(f"{args.data}/eval/test.jsonl")
    train = own_answers(model, tokenizer, train_rows, args.samples, greedy=False)
    test = own_answers(model, tokenizer, test_rows, 1, greedy=True)
    yes, no = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" 1", " 0"))
    print(json.dumps({"epoch": 0, "train_examples": len(train), "heldout_auroc": auroc_report(model, tokenizer, test, yes, no)}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    rng = random.Random(args.seed)
    for epoch in range(1, args.epochs + 1):
        rng.shuffle(train)
        model.train()
        tokenizer.padding_side = "right"
        for chunk in batched(train, 32):
            enc = tokenizer([t for t, _, _ in chunk], return_tensors="pt", padding=True)
            last = enc["attention_mask"].sum(dim=1) - 1
            logits = model(**enc).logits[torch.arange(len(chunk)), last][:, [no, yes]]
            loss = F.cross_entropy(logits, torch.tensor([c for _, c, _ in chunk]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        print(json.dumps({"epoch": epoch, "heldout_auroc": auroc_report(model, tokenizer, test, yes, no)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
