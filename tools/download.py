"""``python -m tools.download``: fetch a model or a dataset from the Hugging Face hub into the repo's folders.

    python -m tools.download model meta-llama/Llama-2-7b-hf            # → model_pth/Llama-2-7b-hf
    python -m tools.download dataset Anthropic/hh-rlhf --subset harmless-base   # → datasets/hh-rlhf/harmless-base/

Files land in a temporary sibling folder that is renamed into place once complete, so an interrupted or
failed download never leaves a half folder where the pipeline would read it. Offline (``HF_HUB_OFFLINE=1``)
or with the hub unreachable, the command stops at once and says which folder to place by hand.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

from utils.args import Parser, add_force_arg
from utils.errors import UserError, exits_cleanly_on_user_error
from utils.files import staged_folder

DEFAULT_ROOT = {"model": "model_pth", "dataset": "datasets"}
HUB_URL = {"model": "https://huggingface.co/{}", "dataset": "https://huggingface.co/datasets/{}"}


def is_filled(path: Path) -> bool:
    """A file, or a folder with anything in it: something a download must not silently replace."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def default_target(kind: str, name: str) -> Path:
    return Path(DEFAULT_ROOT[kind]) / name.rstrip("/").split("/")[-1]


def place_by_hand(kind: str, target: Path, subset: str | None) -> str:
    """What to put where when the hub cannot be used."""
    if kind == "model":
        what, where = "the model's Hugging Face folder (config.json, weights, tokenizer)", target
    elif subset:
        what, where = f"the dataset's {subset}/ folder", target / subset
    else:
        what, where = "the dataset's files", target
    return f"place {what} at {where}, or run this command where the hub is reachable"


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def fetch(kind: str, name: str, target: Path, revision: str | None, subset: str | None) -> None:
    """``snapshot_download`` into a staged folder; every hub failure becomes one :class:`UserError` line."""
    patterns = [f"{subset}/*"] if subset else None
    url = HUB_URL[kind].format(name)
    with staged_folder(target, ours=False) as tmp:  # --force asked to replace what is there
        try:
            huggingface_hub.snapshot_download(name, repo_type=kind, revision=revision, local_dir=tmp,
                                              allow_patterns=patterns)
        except GatedRepoError:
            raise UserError(f"{name} is gated: accept its terms at {url}, then log in with `hf auth login`") from None
        except RepositoryNotFoundError:
            raise UserError(f"no {kind} {name} on the Hugging Face hub (check the name at {url}; "
                            "private repos need `hf auth login`)") from None
        except RevisionNotFoundError:
            raise UserError(f"{kind} {name} has no revision {revision!r}") from None
        except HFValidationError as err:
            raise UserError(f"{name!r} is not a hub repo name ({first_line(err)})") from None
        except Exception as err:  # unreachable, hub down, local cache only: all leave the same choice
            raise UserError(f"could not download {name} ({type(err).__name__}: {first_line(err)}); "
                            f"{place_by_hand(kind, target, subset)}") from None
        # snapshot_download matches nothing silently (a misspelt --subset): an empty download is an error
        if subset and not (tmp / subset).is_dir():
            raise UserError(f"{kind} {name} has no folder {subset}/ (see {url}/tree/main)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m tools.download", description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind, help_text in (("model", "a model repo, e.g. meta-llama/Llama-2-7b-hf"),
                            ("dataset", "a dataset repo, e.g. Anthropic/hh-rlhf or hooope/CONQORD_dataset")):
        sub = kinds.add_parser(kind, help=help_text)
        sub.add_argument("name", help="hub repo id (owner/name)")
        sub.add_argument("--local_dir", help=f"where it goes (default: {DEFAULT_ROOT[kind]}/<last part of NAME>)")
        sub.add_argument("--revision", help="branch, tag or commit (default: the repo's main branch)")
        add_force_arg(sub, help_text="replace an existing non-empty --local_dir")
        if kind == "dataset":
            sub.add_argument("--subset", help="fetch only this top-level folder, e.g. harmless-base")
    return parser


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    subset = getattr(args, "subset", None)
    subset = subset.strip("/") if subset else None
    target = Path(args.local_dir) if args.local_dir else default_target(args.kind, args.name)
    if is_filled(target) and not args.force:
        raise UserError(f"{target} already exists and is not empty; pass --force to replace it")
    # the hub would only fail after its own look-ups: say what to do before touching the network
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"offline: {place_by_hand(args.kind, target, subset)}")
    fetch(args.kind, args.name, target, args.revision, subset)
    print(f"{args.kind} {args.name} → {target}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
