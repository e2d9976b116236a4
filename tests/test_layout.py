"""The layout rules: a step never imports another step (what they share lives in ``utils/``), ``utils/`` is
library only (commands live in ``tools/``), ``worlds/`` and ``tools/`` never import a step, and each
command-line flag is defined once (a flag several parsers take has its one definition in ``utils/args.py``)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("step1_supervised_finetuning_LM", "step2_reward_model", "step3_RL_finetune_LLM", "step4_evaluation")
NOT_STEPS = ("worlds", "tools")  # below the steps: the data generators and the one-off commands


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


def test_worlds_and_tools_never_import_a_step():
    offences = [f"{file.relative_to(ROOT)} imports {module}" for folder in NOT_STEPS
                for file in sorted((ROOT / folder).rglob("*.py")) for module in _imported_modules(file)
                if module.split(".")[0] in STEPS]
    assert offences == []


def _is_command(file: Path) -> bool:
    """The module has a top-level ``if __name__ == "__main__":`` block."""
    return any(isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
               and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
               and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
               for node in ast.parse(file.read_text()).body)


def test_utils_is_library_only():
    commands = [str(file.relative_to(ROOT)) for file in sorted((ROOT / "utils").rglob("*.py")) if _is_command(file)]
    assert commands == [], "move the command to tools/ (its library part stays in utils/)"


def test_the_check_sees_a_command(tmp_path):
    command, library = tmp_path / "command.py", tmp_path / "library.py"
    command.write_text('def main():\n    pass\n\n\nif __name__ == "__main__":\n    main()\n')
    library.write_text('def main():\n    return __name__ == "__main__"\n')
    assert _is_command(command) and not _is_command(library)


def _flag_text(node: ast.expr) -> str | None:
    """The flag string an argument spells: a literal, or an f-string's template (``--{prefix}lora_dim``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
                       for part in node.values)
    return None


def _flag_definitions(files: list[Path]) -> dict[str, list[str]]:
    """Each ``--flag`` given to an ``add_argument(...)`` call, with the places (file:line) that define it."""
    places: dict[str, list[str]] = defaultdict(list)
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                for flag in filter(None, map(_flag_text, node.args)):
                    if flag.startswith("--"):
                        places[flag].append(f"{file}:{node.lineno}")
    return places


def test_each_flag_is_defined_once():
    files = [file for folder in ("utils", *NOT_STEPS, *STEPS) for file in sorted((ROOT / folder).rglob("*.py"))]
    twice = {flag: where for flag, where in _flag_definitions(files).items() if len(where) > 1}
    assert twice == {}, "define a shared flag once in utils/args.py and call it from each parser"


def test_the_check_sees_a_flag_defined_twice(tmp_path):
    file = tmp_path / "twice.py"
    file.write_text('parser.add_argument("--seed", type=int)\n'
                    'group.add_argument("--seed", default=0)\n'
                    'group.add_argument(f"--{prefix}lora_dim")\n')
    places = _flag_definitions([file])
    assert places["--seed"] == [f"{file}:1", f"{file}:2"] and places["--{prefix}lora_dim"] == [f"{file}:3"]
