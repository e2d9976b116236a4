"""Shared fixtures: a small toy world on disk and the byte-level BPE tokenizer trained on it."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_WORLD = dict(n_countries=30, sft_examples=300, reward_pairs=100)


@pytest.fixture(scope="session")
def toy_world_dir(tmp_path_factory):
    from utils.toy_world import ToyWorldConfig, generate

    out = tmp_path_factory.mktemp("toy_world")
    generate(out, ToyWorldConfig(**SMALL_WORLD))
    return out


@pytest.fixture(scope="session")
def toy_tokenizer(toy_world_dir):
    from utils.toy_world import corpus_texts, train_tokenizer

    return train_tokenizer(corpus_texts(toy_world_dir))
