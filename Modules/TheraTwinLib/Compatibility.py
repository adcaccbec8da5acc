"""Which 3D Slicer TheraTwin runs in: checked first, before anything else of TheraTwinLib is imported.

TheraTwin needs **3D Slicer 5.12 or later**. The core needs Python >= 3.10, pydicom 3 and highdicom >= 0.27;
Slicer 5.12 is the first release that bundles them (Python 3.12.10, pydicom 3.0.2, highdicom 0.27.0 in Slicer's
``SuperBuild/External_python*.cmake`` at tag v5.12.0), while Slicer 5.10 has Python 3.12 with pydicom 2.4.4 and
no highdicom, and Slicer 5.8 Python 3.9 with pydicom 2.4.4 (same files at v5.10.0 and v5.8.0). Installing
pydicom 3 over the pydicom 2 that Slicer's own DICOM plugins have already imported cannot work in that session,
so older Slicer versions are refused with a message instead of half working.

This file and ``TheraTwinLib/__init__.py`` up to the check, and the module files up to ``import TheraTwinLib``,
stay valid Python 3.9, so that on an older Slicer the user reads this message and not a syntax error
(``Testing/python/test_slicer_modules_static.py`` checks it). The same minimum is declared in the top-level
``CMakeLists.txt`` (the extension does not configure against an older Slicer) and in the README.

With ``slicer-core`` (PyPI: MRML without the application, used by the tests, the web app and scripts) there is no
application version to check: pip and ``pyproject.toml`` decide the Python and package versions there.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = [
    "MINIMUM_SLICER_VERSION",
    "slicerApplication",
    "UnsupportedSlicerError",
    "slicerVersion",
    "unsupportedSlicerMessage",
    "checkSlicerVersion",
]

#: The oldest 3D Slicer (major, minor) TheraTwin runs in.
MINIMUM_SLICER_VERSION = (5, 12)

_shown = False  # the message box is shown once per session (this module survives a failed package import)


class UnsupportedSlicerError(ImportError):
    """TheraTwin was loaded into a 3D Slicer older than :data:`MINIMUM_SLICER_VERSION`."""


def slicerApplication() -> Any:
    """The running 3D Slicer application (``slicer.app``), or None: slicer-core has none, and an ``app`` that other
    software (a web shell, say) puts there without Slicer's version and testing properties is not Slicer's."""
    import slicer

    application = getattr(slicer, "app", None)
    if application is None or not all(hasattr(application, a) for a in ("majorVersion", "minorVersion",
                                                                          "testingEnabled")):
        return None
    return application


def slicerVersion(application: Any = None) -> tuple[int, int] | None:
    """``(major, minor)`` of the running 3D Slicer application, or None without one (slicer-core)."""
    if application is None:
        application = slicerApplication()
    if application is None:
        return None
    return (int(application.majorVersion), int(application.minorVersion))


def _installedVersion(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def unsupportedSlicerMessage(version: tuple[int, int], pythonVersion: str | None = None,
                             pydicomVersion: str | None = None) -> str:
    """The one-line explanation shown when TheraTwin is loaded into Slicer ``version`` (major, minor)."""
    import sys

    python = pythonVersion or ".".join(str(v) for v in sys.version_info[:3])
    pydicom = pydicomVersion or _installedVersion("pydicom")
    minimum = ".".join(str(v) for v in MINIMUM_SLICER_VERSION)
    return (f"TheraTwin needs 3D Slicer {minimum} or later (Python 3.12 with pydicom 3 and highdicom); this is "
            f"3D Slicer {version[0]}.{version[1]} with Python {python} and pydicom {pydicom}. Install the current "
            "3D Slicer from https://download.slicer.org and TheraTwin from its Extensions Manager.")


def checkSlicerVersion(application: Any = None) -> tuple[int, int] | None:
    """Raise :class:`UnsupportedSlicerError` (and tell the user once) when the Slicer application is too old.

    Returns the application version, or None without an application (slicer-core: nothing to check).
    """
    global _shown
    version = slicerVersion(application)
    if version is None or version >= MINIMUM_SLICER_VERSION:
        return version
    message = unsupportedSlicerMessage(version)
    logging.error(message)
    if not _shown and application is None:
        _shown = True
        import slicer

        # the module files are imported during startup, before the main window exists: show it afterwards
        slicer.app.connect("startupCompleted()", lambda: slicer.util.errorDisplay(message, windowTitle="TheraTwin"))
    raise UnsupportedSlicerError(message)
