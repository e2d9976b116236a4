"""Step 4's settings by concern, each built once from the parsed flags (evaluate.run_settings) and passed down.

Each field is named after its flag (``--n_bins`` → ``n_bins``); the flags' help texts in evaluate.py say what
they mean. Modules other than evaluate.py take these, never the flags' namespace.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MetricSettings:
    """How a row's answers are scored (summary.json, reliability diagrams, τ's interval)."""

    missing_confidence: float  # the confidence given to an answer that states none
    n_bins: int  # equal-width ECE bins
    bootstrap: int  # resamples for 95 % intervals (0: none)
    seed: int  # of the bootstrap resamples
    confidence_readout: str  # stated or expected (see confidence_readout.py)


@dataclass(frozen=True)
class SplitSettings:
    """The dev/test split of each benchmark and the recalibration fitted on dev (see recalibration.py)."""

    dev_fraction: float  # share of each benchmark's questions held out as dev (0: none)
    recalibrate: str  # one of recalibration.RECALIBRATORS; "none" fits nothing
    seed: int  # of the split


@dataclass(frozen=True)
class JudgeSettings:
    """Which judge each benchmark gets and, for ``--judge llm``, how to reach it (see judging.py)."""

    judge: str  # one of judging.JUDGES
    truthfulqa_metric: str  # rouge or bleu, for truthfulqa_reference
    judge_base_url: str | None
    judge_model: str
    judge_api_key_env: str  # the environment variable holding the key (never the key)
    judge_concurrency: int
    judge_max_retries: int
    judge_timeout: float
    judge_cache: str | Path  # --judge_cache, or <output_dir>/judge_cache.jsonl without it


@dataclass(frozen=True)
class DecodingSettings:
    """Greedy generation of the evaluated checkpoints (a cached response depends on all but batch_size)."""

    batch_size: int
    max_new_tokens: int
    max_prompt_len: int
    dtype: str
