"""geometry stays pure: standard library, numpy, scipy, numba (with its llvmlite), SimpleITK."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ALLOWED_THIRD_PARTY = {"numpy", "scipy", "numba", "llvmlite", "SimpleITK"}


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_geometry_imports_only_numerical_libraries() -> None:
    allowed = ALLOWED_THIRD_PARTY | set(sys.stdlib_module_names) | {"geometry"}
    bad = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in sorted((REPO_ROOT / "geometry").rglob("*.py"))
        for name in _top_level_imports(path)
        if name not in allowed
    }
    assert not bad, "geometry imports outside its layer:\n" + "\n".join(sorted(bad))
