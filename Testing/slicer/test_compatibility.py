"""The minimum 3D Slicer version is checked when TheraTwinLib loads, with a message instead of a traceback.

There is no old Slicer here; the application's version properties (``slicer.app.majorVersion`` and
``minorVersion``, Q_PROPERTYs of qSlicerCoreApplication at v5.8.0 and v5.12.0) are given by a stand-in object,
and the module file is imported in a fresh interpreter exactly as Slicer's module factory would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from modules import ROOT

import TheraTwinLib as L
from TheraTwinLib import Compatibility


class Application:
    def __init__(self, major: int, minor: int) -> None:
        self.majorVersion, self.minorVersion = major, minor


def test_minimum_is_5_12() -> None:
    assert L.MINIMUM_SLICER_VERSION == (5, 12)


@pytest.mark.parametrize(("major", "minor"), [(5, 8), (5, 10), (4, 11)])
def test_older_slicer_is_refused_with_a_clear_message(major: int, minor: int) -> None:
    with pytest.raises(L.UnsupportedSlicerError) as info:
        L.checkSlicerVersion(Application(major, minor))
    message = str(info.value)
    assert "3D Slicer 5.12 or later" in message and f"this is 3D Slicer {major}.{minor}" in message
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in message
    assert "download.slicer.org" in message and "\n" not in message
    assert isinstance(info.value, ImportError)  # Slicer reports a module that cannot be imported


@pytest.mark.parametrize(("major", "minor"), [(5, 12), (5, 13), (6, 0)])
def test_current_slicer_is_accepted(major: int, minor: int) -> None:
    assert L.checkSlicerVersion(Application(major, minor)) == (major, minor)


def test_slicer_core_has_no_application_to_check() -> None:
    assert Compatibility.slicerVersion() is None and L.checkSlicerVersion() is None


def test_module_file_on_slicer_5_8_stops_at_the_version_message() -> None:
    """Importing a module file (as Slicer's factory does) in a Slicer 5.8 session raises the version message, every
    module raises it, and the user is told once (one message box after startup), not once per module."""
    code = textwrap.dedent(f"""
        import importlib.util, json, sys
        sys.path[:0] = [{str(ROOT / "Modules")!r}, {str(ROOT / "Logic")!r}]
        import slicer

        class App:
            majorVersion, minorVersion = 5, 8
            connections = []
            def testingEnabled(self):
                return False
            def connect(self, signal, slot):
                self.connections.append(signal)

        slicer.app = App()
        errors = []
        for name in ("TheraTwinKinetics", "TheraTwinDosimetry", "TheraTwinTwin", "TheraTwinExport"):
            spec = importlib.util.spec_from_file_location(name, {str(ROOT / "Modules")!r} + f"/{{name}}/{{name}}.py")
            try:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            except Exception as error:
                errors.append([type(error).__name__, str(error)])
        print(json.dumps({{"errors": errors, "connections": slicer.app.connections}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["errors"]) == 4
    assert all(kind == "UnsupportedSlicerError" and "this is 3D Slicer 5.8" in text for kind, text in out["errors"])
    assert out["connections"] == ["startupCompleted()"]


def test_an_app_object_that_is_not_slicers_is_ignored(monkeypatch) -> None:
    """A web shell (trame-slicer on slicer-core) may put its own ``slicer.app``: no version check, no pip there."""
    import slicer

    monkeypatch.setattr(slicer, "app", object(), raising=False)
    assert Compatibility.slicerApplication() is None and L.checkSlicerVersion() is None
    monkeypatch.setattr(slicer, "app", type("SlicerApp", (), {"majorVersion": 5, "minorVersion": 8,
                                                              "testingEnabled": lambda self: False})(),
                        raising=False)
    with pytest.raises(L.UnsupportedSlicerError):
        L.checkSlicerVersion(Compatibility.slicerApplication())
