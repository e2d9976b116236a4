"""Write the real-data preset's files (NQ-open pools + hh-rlhf pairs) under datasets/nq_world/.

    python datasets/prepare_nq_world.py --nq ../shared/data/NQ-open.dev.jsonl \
        --hh ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz [--out_dir datasets/nq_world] [--seed 0]

NQ-open: the dev split as JSONL (``{"question", "answer": [...]}``; `python -m tools.download dataset
google-research-datasets/nq_open` fetches it when online). hh-rlhf: any subset's JSONL(.gz) file.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script in a data folder, run by path

from utils.args import Parser, finite_float, seed  # noqa: E402
from utils.errors import UserError  # noqa: E402
from worlds.nq_world import NQWorldConfig, generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nq", required=True, help="NQ-open dev JSONL.")
    parser.add_argument("--hh", required=True, help="hh-rlhf JSONL or JSONL.gz (e.g. harmless-base test).")
    parser.add_argument("--out_dir", default="datasets/nq_world")
    for f in fields(NQWorldConfig):
        kind = seed if f.name == "seed" else finite_float if isinstance(f.default, float) else type(f.default)
        parser.add_argument(f"--{f.name}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    for flag in ("nq", "hh"):
        if not Path(getattr(args, flag)).is_file():
            parser.error(f"--{flag} {getattr(args, flag)}: no such file")
    config = NQWorldConfig(**{f.name: getattr(args, f.name) for f in fields(NQWorldConfig)})
    try:
        sizes = generate(args.out_dir, args.nq, args.hh, config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out_dir": args.out_dir, "rows": sizes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
