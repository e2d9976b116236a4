"""TensorBoard run folders: one per output folder, so runs sharing a --tensorboard_path are separate curves."""
from __future__ import annotations

from pathlib import Path

from utils.training import Logger


def _runs(root: Path) -> dict[str, int]:
    return {run.name: len(list(run.glob("events.out.tfevents.*"))) for run in root.iterdir()}


def test_each_output_folder_gets_its_own_run_folder(tmp_path: Path):
    board = tmp_path / "tensorboard"
    for output_dir, reward in ((tmp_path / "toy/step3_alpha0", 0.1), (tmp_path / "toy/step3", 0.2)):
        logger = Logger(True, str(board), output_dir)
        logger.scalars({"total_reward": reward}, 1, "train/")
        logger.close()
    assert _runs(board) == {"step3_alpha0": 1, "step3": 1}


def test_disabled_logger_writes_nothing(tmp_path: Path):
    logger = Logger(False, str(tmp_path / "tensorboard"), tmp_path / "step1")
    logger.scalars({"loss": 1.0}, 1)
    logger.close()
    assert not (tmp_path / "tensorboard").exists()
