"""Generate the toy world: data files under datasets/toy_world/, tokenizer + tiny Llama in model_pth/.

    python datasets/generate_toy_world.py [--seed 0] [--out_dir datasets/toy_world]
                                          [--model_dir model_pth/toy-llama-base]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script in a data folder, run by path

from utils.args import Parser, finite_float, seed  # noqa: E402
from utils.model import save_hf_checkpoint  # noqa: E402
from worlds.toy_world import (ToyWorldConfig, corpus_texts, country_names, create_tiny_llama, generate,  # noqa: E402
                               train_tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--out_dir", default="datasets/toy_world")
    parser.add_argument("--model_dir", default="model_pth/toy-llama-base")
    parser.add_argument("--n_countries", type=int, default=ToyWorldConfig.n_countries)
    parser.add_argument("--sft_examples", type=int, default=ToyWorldConfig.sft_examples)
    parser.add_argument("--reward_pairs", type=int, default=ToyWorldConfig.reward_pairs)
    parser.add_argument("--verification_examples", type=int, default=ToyWorldConfig.verification_examples)
    parser.add_argument("--answer_zipf_exponent", type=finite_float, default=ToyWorldConfig.answer_zipf_exponent)
    parser.add_argument("--zipf_exponent", type=finite_float, default=ToyWorldConfig.zipf_exponent)
    parser.add_argument("--name_length_cue", action=argparse.BooleanOptionalAction,
                        default=ToyWorldConfig.name_length_cue,
                        help="Frequent countries get short names, so the model can see how familiar a country is "
                             "(--no-name_length_cue: name length says nothing).")
    parser.add_argument("--fact_frequency", choices=["country", "fact"], default=ToyWorldConfig.fact_frequency,
                        help="country: a country's facts share its SFT frequency (familiarity decides what is known); "
                             "fact: each fact has its own frequency rank, so a frequent country can have rare facts.")
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--country_tokens", action="store_true",
                        help="One token per country name (rarely seen countries keep rarely trained embeddings).")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    args = parser.parse_args(argv)

    config = ToyWorldConfig(seed=args.seed, n_countries=args.n_countries, sft_examples=args.sft_examples,
                            reward_pairs=args.reward_pairs,
                            verification_examples=args.verification_examples,
                            answer_zipf_exponent=args.answer_zipf_exponent, zipf_exponent=args.zipf_exponent,
                            name_length_cue=args.name_length_cue, fact_frequency=args.fact_frequency)
    sizes = generate(args.out_dir, config)
    tokenizer = train_tokenizer(corpus_texts(args.out_dir), vocab_size=args.vocab_size,
                                whole_words=country_names(args.out_dir) if args.country_tokens else ())
    model = create_tiny_llama(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers, seed=args.seed)
    save_hf_checkpoint(model, tokenizer, args.model_dir, {"toy_world": vars(args)})
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"rows": sizes, "model_dir": args.model_dir, "parameters": params, "vocab": len(tokenizer)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
