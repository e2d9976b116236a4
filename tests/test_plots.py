"""Tests for step4_evaluation.plots.reliability_diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from step4_evaluation.plots import reliability_diagram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    conf = np.concatenate([[0.0, 1.0], rng.uniform(size=198)])
    correct = (rng.uniform(size=200) < conf).astype(int)
    target = tmp_path / "plots" / "reliability.png"

    returned = reliability_diagram(conf, correct, target, n_bins=10, title="toy")

    assert returned == target
    data = target.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # two panels with bars, not an empty canvas
    assert [p.name for p in target.parent.iterdir()] == ["reliability.png"]  # no temp file left behind


def test_reliability_diagram_overwrites_and_rejects_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "r.png"
    target.write_bytes(b"old")
    reliability_diagram([0.2, 0.8, 0.8], [0, 1, 0], target, n_bins=5)
    assert target.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        reliability_diagram([], [], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
