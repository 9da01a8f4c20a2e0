"""The domain packages must stay headless: no PySide6, no VTK rendering, no app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOMAIN_PACKAGES = ("geometry", "imaging", "planning")
FORBIDDEN_PREFIXES = ("PySide6", "PyQt", "vtk", "vtkmodules.vtkRendering", "vtkmodules.qt", "app")
# Non-rendering VTK modules are allowed; "vtk" alone pulls in rendering.
ALLOWED = ("vtkmodules.vtkCommon", "vtkmodules.vtkIO", "vtkmodules.vtkFilters", "vtkmodules.util")


def _forbidden(name: str) -> bool:
    if name.startswith(ALLOWED):
        return False
    return any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PREFIXES) or (
        name.startswith("vtkmodules.vtkRendering")
    )


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", DOMAIN_PACKAGES)
def test_domain_sources_import_no_screen(package: str) -> None:
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {name}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for line, name in _imports(path)
        if _forbidden(name)
    ]
    assert not bad, "domain code imports the screen layer:\n" + "\n".join(bad)


def test_forbidden_rule_catches_screen_imports() -> None:
    assert _forbidden("PySide6.QtWidgets")
    assert _forbidden("vtkmodules.vtkRenderingCore")
    assert _forbidden("vtk")
    assert _forbidden("app.cli")
    assert not _forbidden("vtkmodules.vtkCommonCore")
    assert not _forbidden("numpy")
    assert not _forbidden("application")


def test_importing_every_domain_module_loads_no_screen_module() -> None:
    modules = [
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for pkg in DOMAIN_PACKAGES
        for p in sorted((REPO_ROOT / pkg).rglob("*.py"))
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'vtkmodules.vtkRendering',"
        " 'vtkmodules.qt')) or m == 'app' or m.startswith('app.')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"screen modules loaded: {out.stdout.strip()}"
