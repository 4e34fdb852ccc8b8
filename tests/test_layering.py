"""House rule: imports point one way (app -> sensors -> vimcan_core) and Qt lives only in app/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QT_MODULES = {"PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6", "qtpy"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package, forbidden", [
    ("vimcan_core", QT_MODULES | {"sensors", "app"}),
    ("sensors", QT_MODULES | {"app"}),
])
def test_package_does_not_import(package: str, forbidden: set[str]) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files found in {package}/"
    offenders = {str(f.relative_to(ROOT)): sorted(_imported_roots(f) & forbidden) for f in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package}/ must not import {sorted(forbidden)}: {offenders}"


def test_core_and_sensors_import_without_qt_at_runtime() -> None:
    import subprocess
    import sys

    code = (
        "import sys, importlib, pkgutil\n"
        "for pkg in ('vimcan_core', 'sensors'):\n"
        "    m = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(m.__path__, pkg + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'PyQt5', 'PyQt6')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
