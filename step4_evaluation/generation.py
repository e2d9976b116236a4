"""Step 4's greedy generation, resumable: each row's responses are cached in a JSONL file next to its results.

Conventions: ``generations.jsonl`` (``generations_rag.jsonl`` with retrieval) holds one line per response,
``{id, prompt, response, source}``, appended as each batch finishes, so an interrupted run resumes where it
stopped. A cached response is reused only for the same prompt and the same ``source``
(:func:`generation_source`: the checkpoint's files and the generation flags); other lines stay, unused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from step4_evaluation.settings import DecodingSettings
from utils.collate import encode_prompt
from utils.generation import GenerationSettings, generate, response_ids
from utils.jsonl import read_jsonl
from utils.training import batched


def generation_source(checkpoint: str, decoding: DecodingSettings) -> str:
    """What a cached response depends on: the checkpoint's files (name, size, modification time; a hub
    name as given) and the generation flags. A retrained checkpoint or a regenerated world under the
    same names must not be answered from an earlier run's cache."""
    path = Path(checkpoint)
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else []
    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files] or [checkpoint]
    parts += [f"max_new_tokens={decoding.max_new_tokens}", f"max_prompt_len={decoding.max_prompt_len}",
              f"dtype={decoding.dtype}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def generate_missing(model, tokenizer, prompts: dict[str, str], file: Path, batch_size: int,
                     max_new_tokens: int, max_prompt_len: int, desc: str, source: str,
                     special_tokens: bool = True) -> dict[str, str]:
    """Greedy responses for the prompts not yet in ``file`` (appended as each batch finishes); all responses.

    A cached response is reused only for the same prompt and the same ``source`` (see
    :func:`generation_source`); other lines stay in the file, unused. ``special_tokens=False`` for
    chat-templated prompts, which already hold their BOS."""
    done = {r["id"]: r["response"] for r in (read_jsonl(file) if file.is_file() else [])
            if r.get("source") == source and r.get("prompt") == prompts.get(r["id"])}
    todo = [(i, p) for i, p in prompts.items() if i not in done]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a", encoding="utf-8") as out, tqdm(total=len(todo), desc=desc, disable=None) as bar:
        for chunk in batched(todo, batch_size):
            ids = [encode_prompt(tokenizer, p, max_prompt_len, special_tokens) for _, p in chunk]
            sequences, mask, width = generate(model, ids, settings, tokenizer.pad_token_id, tokenizer.eos_token_id)
            for (qid, prompt), resp in zip(chunk, response_ids(sequences, mask, width)):
                done[qid] = tokenizer.decode(resp, skip_special_tokens=True)
                out.write(json.dumps({"id": qid, "prompt": prompt, "response": done[qid], "source": source}) + "\n")
            out.flush()
            bar.update(len(chunk))
    return done
