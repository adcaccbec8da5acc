"""Import a module file of Modules/ the way the headless tests need it: with slicer-core and without Qt."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("TheraTwinKinetics", "TheraTwinDosimetry", "TheraTwinTwin", "TheraTwinExport")


def loadModuleFile(name: str, path: Path | None = None) -> ModuleType:
    """Execute ``Modules/<name>/<name>.py`` (or ``path``) as module ``name`` and return it."""
    for qtModule in ("qt", "ctk"):
        if importlib.util.find_spec(qtModule) is not None:  # pragma: no cover - environment check
            raise RuntimeError(f"'{qtModule}' is importable here; these tests must run without Qt (.venv-slicer)")
    if name in sys.modules:
        return sys.modules[name]
    path = path or ROOT / "Modules" / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
