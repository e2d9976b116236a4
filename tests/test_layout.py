"""The layout rule: a step never imports another step (what they share lives in ``utils/``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("step1_supervised_finetuning_LM", "step2_reward_model", "step3_RL_finetune_LLM", "step4_evaluation")


def _imported_modules(file: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_step_imports_another_step():
    offences = []
    for step in STEPS:
        for file in (ROOT / step).rglob("*.py"):
            for module in _imported_modules(file):
                top = module.split(".")[0]
                if top in STEPS and top != step:
                    offences.append(f"{file.relative_to(ROOT)} imports {module}")
    assert offences == []


def test_the_check_sees_a_cross_step_import(tmp_path):
    file = tmp_path / "bad.py"
    file.write_text("from step4_evaluation.judges import exact_match\n")
    assert "step4_evaluation.judges" in _imported_modules(file)
