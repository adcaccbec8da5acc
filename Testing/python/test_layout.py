"""Repository rules that keep the extension buildable and the layers apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "Logic" / "theratwin"
FORBIDDEN_IN_CORE = {"slicer", "qt", "ctk", "vtk", "mrml"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_slicer_qt_ctk_vtk() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN_IN_CORE) for p in CORE.rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"the core must stay Slicer-free: {offenders}"


def test_core_cmake_lists_every_file() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_cmake_lists.py"), "--check"])
    assert proc.returncode == 0, "Logic/CMakeLists.txt is out of date: run python scripts/update_cmake_lists.py"


def test_cmake_declares_extension_metadata() -> None:
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer"):
        assert key in text
    assert '"Nuclear Medicine"' in text


def test_every_module_folder_is_added_to_cmake() -> None:
    text = (ROOT / "Modules" / "CMakeLists.txt").read_text()
    for d in (ROOT / "Modules").iterdir():
        if d.is_dir() and (d / "CMakeLists.txt").exists():
            assert d.name in text, f"Modules/{d.name} is not added in Modules/CMakeLists.txt"


def test_catalog_entry() -> None:
    import json

    entry = json.loads((ROOT / "TheraTwinExtension" / "TheraTwin.json").read_text())
    assert entry["category"] == "Nuclear Medicine"
    assert {"scm_url", "scm_revision", "build_subdirectory", "tier"} <= set(entry)
    assert "Modality == 'NM'" in entry["dicom_support_rule"]  # a rule-engine expression (test_extension_catalog.py)
    assert (ROOT / "TheraTwinExtension" / "TheraTwin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_public_modules_declare_all() -> None:
    missing = [str(p.relative_to(ROOT)) for p in CORE.rglob("__init__.py") if "__all__" not in p.read_text()]
    assert not missing, f"__init__.py without __all__: {missing}"
