"""The import rules between the product's parts: the engine (qa_models) stands alone, the node (daemon)
never needs the training code, and reporting serves both without depending on either."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("qa_models", "daemon", "training", "reporting", "templates")
FORBIDDEN = {
    "qa_models": {"daemon", "training", "reporting"},
    "daemon": {"training"},
    "reporting": {"daemon", "training"},
}


def imported_parts(path: Path, part: str) -> set[str]:
    """The parts a module imports, absolute (contourqa.X) or relative (.. from inside a part)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [f"contourqa.{part}"]
            elif node.level >= 2:
                names = [f"contourqa.{node.module or ''}"]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "contourqa" and len(pieces) > 1 and pieces[1] in PARTS:
                found.add(pieces[1])
    return found


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_part_imports_only_what_it_may(part):
    modules = sorted((ROOT / part).glob("*.py"))
    assert modules, f"no modules in {part}/"
    broken = {str(m.relative_to(ROOT)): sorted(imported_parts(m, part) & FORBIDDEN[part]) for m in modules}
    assert {m: p for m, p in broken.items() if p} == {}


def test_the_rule_checker_sees_absolute_and_relative_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from contourqa.training.train import train\nimport contourqa.daemon.db\nfrom .x import y\n"
                      "def f():\n    from contourqa.reporting import charts\n")
    assert imported_parts(module, "qa_models") == {"training", "daemon", "qa_models", "reporting"}
