"""Python packages the core needs: check them, and install what is missing only with the user's consent.

One list serves every TheraTwin module, the web app and the cohort runner: ``TheraTwinLib/requirements.txt``
(:data:`REQUIREMENTS`), the core dependencies of ``pyproject.toml`` with the same ``>=`` floors (a test keeps the
two equal). Those Slicer >= 5.12 bundles (numpy, scipy, pydicom, SimpleITK, highdicom, dicomweb-client) are
listed with floors no higher than the bundled versions, so they are checked but never reinstalled. Nothing is
installed at import time or in ``setup()``: a Logic calls :func:`ensureRequirements` right before the first use.

In the application, installation goes through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12, the declared
minimum; ``Base/Python/slicer/packaging.py`` at v5.12.0), always imported explicitly, so the same code path runs
whatever else was imported before. Two decisions are TheraTwin's own and are made here, testably:

- *testing mode* (``slicer.app.testingEnabled()``, e.g. ``ctest`` or ``Slicer --testing``): missing packages are
  installed without asking, because a self-test without its packages can only fail with ImportErrors
  (``pip_ensure``'s default ``skip_in_testing=True`` would skip the installation);
- *restart*: a required package that is installed at a version below its floor *and already imported* (e.g.
  pydicom 2 imported by Slicer's DICOM plugins) cannot be replaced in this session. The user is told before the
  installation, asked to restart after it, and the call raises until Slicer has restarted, rather than running
  on the old module. Updates pip makes on its own to other imported packages are reported by ``pip_ensure``'s
  restart prompt.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import slicer

from .Compatibility import slicerApplication

__all__ = [
    "REQUIREMENTS",
    "RestartRequiredError",
    "readRequirements",
    "missingRequirements",
    "loadedOutdatedPackages",
    "ensureRequirements",
]

#: The one requirements list of TheraTwin inside Slicer (``name>=floor`` lines).
REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"

#: Set once an imported package was updated: every later call raises until the process (Slicer) restarts.
_pendingRestart: list[str] = []

_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(>=\s*([0-9][0-9A-Za-z.]*))?\s*$")


class RestartRequiredError(RuntimeError):
    """Packages were updated that this Slicer session had already imported: restart Slicer to use them."""


def readRequirements(path: str | Path | None = None) -> list[tuple[str, str | None]]:
    """``[(distribution, minimum version or None)]`` of a requirements file (default :data:`REQUIREMENTS`).

    Raises
    ------
    ValueError
        For a line that is not ``name`` or ``name>=version`` (pins and other specifiers are not allowed).
    """
    path = REQUIREMENTS if path is None else path
    requirements = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
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


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missingRequirements(path: str | Path | None = None) -> list[str]:
    """Requirement lines of ``path`` (default :data:`REQUIREMENTS`) not installed at the required version."""
    missing = []
    for name, minimum in readRequirements(path):
        installed = _installed(name)
        if installed is None or (minimum and _version(installed) < _version(minimum)):
            missing.append(f"{name}>={minimum}" if minimum else name)
    return missing


def _importNames(distribution: str) -> set[str]:
    """Top-level import names of an installed distribution (``pydicom`` -> {"pydicom"})."""
    wanted = re.sub(r"[-_.]+", "-", distribution).lower()
    return {module for module, distributions in importlib.metadata.packages_distributions().items()
            if any(re.sub(r"[-_.]+", "-", d).lower() == wanted for d in distributions)}


def loadedOutdatedPackages(requirements: Sequence[str], modules: Any = None) -> list[tuple[str, str]]:
    """``[(distribution, installed version)]`` of ``requirements`` that are installed below their floor *and*
    imported in this process (``modules``: default ``sys.modules``): installing them needs a restart."""
    modules = sys.modules if modules is None else modules
    loaded = []
    for requirement in requirements:
        name = requirement.split(">=")[0].strip()
        installed = _installed(name)
        if installed is not None and any(m in modules for m in _importNames(name)):
            loaded.append((name, installed))
    return loaded


def _askUser(message: str) -> bool:
    return bool(slicer.util.confirmOkCancelDisplay(message, windowTitle="TheraTwin"))


def _askRestart(message: str) -> bool:
    return bool(slicer.util.confirmYesNoDisplay(message, windowTitle="TheraTwin"))


def _pipEnsure(requirements: list[str], promptRestart: bool) -> None:
    import slicer.packaging  # Slicer >= 5.12 (TheraTwinLib.Compatibility); imported here, never looked up

    slicer.packaging.pip_ensure(requirements, prompt_install=False, prompt_restart=promptRestart,
                                requester="TheraTwin", skip_in_testing=False)


def ensureRequirements(path: str | Path | None = None, *, askConsent: Callable[[str], bool] | None = None,
                       askRestart: Callable[[str], bool] | None = None,
                       install: Callable[[list[str], bool], None] | None = None,
                       testing: bool | None = None) -> list[str]:
    """Make sure the packages of ``path`` (default :data:`REQUIREMENTS`) are installed; return what was installed.

    Parameters
    ----------
    askConsent, askRestart
        ``f(message) -> bool``; by default Slicer's OK/Cancel and Yes/No message boxes.
    install
        ``f(requirements, promptRestart)``; by default ``slicer.packaging.pip_ensure``.
    testing
        Whether the application runs in testing mode (default: ``slicer.app.testingEnabled()``); then nothing is
        asked and the packages are installed.

    Raises
    ------
    RuntimeError
        Without the application (slicer-core: install them with pip), when the user declined, or when the
        installation left a requirement unmet.
    RestartRequiredError
        When an updated package was already imported in this session (raised until Slicer has restarted).
    """
    if _pendingRestart:
        raise RestartRequiredError(_pendingRestart[0])
    missing = missingRequirements(path)
    if not missing:
        return []
    application = slicerApplication()
    text = ", ".join(missing)
    if application is None and install is None:
        command = " ".join(f'"{m}"' for m in missing)
        raise RuntimeError(f"TheraTwin needs the Python packages {text}; install them with pip in this environment "
                           f"(pip install {command}).")
    if testing is None:
        testing = bool(application is not None and application.testingEnabled())
    outdated = loadedOutdatedPackages(missing)
    restartNote = ""
    if outdated:
        restartNote = (" Slicer must then be restarted, because this session already uses "
                       + ", ".join(f"{name} {version}" for name, version in outdated) + ".")
    if not testing:
        ask = askConsent or _askUser
        if not ask(f"TheraTwin needs these Python packages, which will be downloaded and installed now: {text}."
                   + restartNote):
            raise RuntimeError(f"TheraTwin cannot run without {text}; installation was declined.")
    (install or _pipEnsure)(missing, not outdated)
    importlib.invalidate_caches()
    unmet = missingRequirements(path)
    if unmet:
        raise RuntimeError(f"Installing {text} did not complete ({', '.join(unmet)} still missing); see the Python "
                           "console for pip's output, fix the cause and try again.")
    if outdated:
        message = ("TheraTwin installed " + ", ".join(f"{n} (was {v})" for n, v in outdated) + ", which this "
                   "session had already loaded. Restart Slicer to use the new version.")
        _pendingRestart.append(message)
        if not testing and (askRestart or _askRestart)(message + " Restart now?"):
            slicer.util.restart()
        raise RestartRequiredError(message)
    return missing
