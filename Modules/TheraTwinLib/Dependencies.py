"""Python packages Slicer does not bundle: check them, and install them only with the user's consent.

Each module lists what it needs in ``Resources/requirements.txt`` (``>=`` floors only). Nothing is installed
at import time or in ``setup()``: a Logic calls :func:`ensureRequirements` right before the first use.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from pathlib import Path

import slicer

__all__ = ["readRequirements", "missingRequirements", "ensureRequirements"]

_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(>=\s*([0-9][0-9A-Za-z.]*))?\s*$")


def readRequirements(path: str | Path) -> list[tuple[str, str | None]]:
    """``[(distribution, minimum version or None)]`` of a requirements file (comments and blanks ignored).

    Raises
    ------
    ValueError
        For a line that is not ``name`` or ``name>=version`` (pins and other specifiers are not allowed).
    """
    requirements = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: '{line}' is not 'name' or 'name>=version'.")
        requirements.append((match.group(1), match.group(3)))
    return requirements


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


def missingRequirements(path: str | Path) -> list[str]:
    """Requirement lines of ``path`` that are not installed at the required version."""
    missing = []
    for name, minimum in readRequirements(path):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name}>={minimum}" if minimum else name)
            continue
        if minimum and _version(installed) < _version(minimum):
            missing.append(f"{name}>={minimum}")
    return missing


def ensureRequirements(path: str | Path, *, askConsent: Callable[[str], bool] | None = None) -> None:
    """Make sure the packages of ``path`` are installed.

    In the application, asks the user (``slicer.util.confirmOkCancelDisplay`` unless ``askConsent`` is given)
    and installs with ``slicer.packaging.pip_ensure`` (Slicer >= 5.10) or ``slicer.util.pip_install``.
    Without the application (slicer-core), nothing is installed: it raises and says what to install.

    Raises
    ------
    RuntimeError
        If packages are missing and the user declined or there is no application to install them.
    """
    missing = missingRequirements(path)
    if not missing:
        return
    text = ", ".join(missing)
    if not hasattr(slicer, "app"):
        raise RuntimeError(f"TheraTwin needs the Python packages {text}; install them with pip in this environment.")
    ask = askConsent or (lambda message: slicer.util.confirmOkCancelDisplay(message, windowTitle="TheraTwin"))
    if not ask(f"TheraTwin needs these Python packages, which will be downloaded and installed now: {text}"):
        raise RuntimeError(f"TheraTwin cannot run without {text}; installation was declined.")
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(missing)
    else:
        slicer.util.pip_install(" ".join(f'"{m}"' for m in missing))
