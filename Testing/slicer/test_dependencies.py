"""Dependency installation: one list, consent, testing mode and the restart rule, on real package metadata.

A throw-away distribution ``ttfake-pkg`` (import name ``ttfakepkg``) is made in a temporary folder on
``sys.path``; its ``.dist-info`` metadata is what ``importlib.metadata`` (and pip's view of the environment)
reads, and the stand-in installer rewrites that metadata as pip would. The installer is the only stand-in:
``slicer.packaging.pip_ensure`` needs the application (and network), see the module docstring of
``TheraTwinLib.Dependencies`` for the facts of Slicer's own code it relies on.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import TheraTwinLib as L
from TheraTwinLib import Dependencies


def makeDistribution(folder: Path, version: str) -> None:
    (folder / "ttfakepkg").mkdir(exist_ok=True)
    (folder / "ttfakepkg" / "__init__.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
    for old in folder.glob("ttfake_pkg-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = folder / f"ttfake_pkg-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ttfake-pkg\nVersion: {version}\n", encoding="utf-8")
    (info / "top_level.txt").write_text("ttfakepkg\n", encoding="utf-8")
    importlib.invalidate_caches()


@pytest.fixture
def fakePackage(tmp_path, monkeypatch):
    """``ttfake-pkg`` 1.0 installed (not imported), a requirements file asking for >= 2.0, a fresh restart state."""
    site = tmp_path / "site"
    site.mkdir()
    makeDistribution(site, "1.0")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(Dependencies, "_pendingRestart", [])
    monkeypatch.delitem(sys.modules, "ttfakepkg", raising=False)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# test\nnumpy>=1.0\nttfake-pkg>=2.0\n", encoding="utf-8")
    calls: list[tuple[list[str], bool]] = []

    def install(missing: list[str], promptRestart: bool) -> None:
        calls.append((list(missing), promptRestart))
        makeDistribution(site, "2.0")

    yield {"site": site, "requirements": requirements, "install": install, "calls": calls}
    sys.modules.pop("ttfakepkg", None)


def neverAsked(message: str) -> bool:
    raise AssertionError(f"nobody should be asked: {message}")


def test_the_default_list_is_theratwinlibs_and_satisfied_here() -> None:
    assert L.REQUIREMENTS == Path(L.__file__).parent / "requirements.txt"
    names = [name for name, _ in L.readRequirements()]
    assert {"highdicom", "pydicom", "matplotlib", "icrp107-database", "fhir.resources"} <= set(names)
    assert L.missingRequirements() == []  # .venv-slicer has the core installed (bootstrap)
    assert L.ensureRequirements() == []


def test_without_the_application_nothing_is_installed(fakePackage) -> None:
    assert L.missingRequirements(fakePackage["requirements"]) == ["ttfake-pkg>=2.0"]
    with pytest.raises(RuntimeError, match=r'pip install "ttfake-pkg>=2.0"'):
        L.ensureRequirements(fakePackage["requirements"])


def test_testing_mode_installs_without_asking(fakePackage) -> None:
    """Under ``--testing`` a self-test must get its packages (pip_ensure's default would skip the install)."""
    installed = L.ensureRequirements(fakePackage["requirements"], testing=True, askConsent=neverAsked,
                                     install=fakePackage["install"])
    assert installed == ["ttfake-pkg>=2.0"]
    assert fakePackage["calls"] == [(["ttfake-pkg>=2.0"], True)]  # Slicer's own restart check stays on
    assert L.missingRequirements(fakePackage["requirements"]) == []


def test_the_user_is_asked_and_may_decline(fakePackage) -> None:
    asked: list[str] = []
    with pytest.raises(RuntimeError, match="declined"):
        L.ensureRequirements(fakePackage["requirements"], testing=False, install=fakePackage["install"],
                             askConsent=lambda m: asked.append(m) or False)
    assert fakePackage["calls"] == [] and "ttfake-pkg>=2.0" in asked[0] and "restart" not in asked[0]
    assert L.ensureRequirements(fakePackage["requirements"], testing=False, install=fakePackage["install"],
                                askConsent=lambda m: True) == ["ttfake-pkg>=2.0"]


def test_an_imported_outdated_package_needs_a_restart(fakePackage) -> None:
    """As pydicom 2, imported by Slicer's DICOM plugins, updated to pydicom 3: the session keeps the old module."""
    import ttfakepkg

    assert ttfakepkg.VERSION == "1.0"
    assert L.loadedOutdatedPackages(["ttfake-pkg>=2.0"]) == [("ttfake-pkg", "1.0")]
    consent: list[str] = []
    restart: list[str] = []
    with pytest.raises(L.RestartRequiredError, match=r"ttfake-pkg \(was 1.0\).*Restart Slicer"):
        L.ensureRequirements(fakePackage["requirements"], testing=False, install=fakePackage["install"],
                             askConsent=lambda m: consent.append(m) or True,
                             askRestart=lambda m: restart.append(m) or False)
    assert "restarted" in consent[0] and "ttfake-pkg 1.0" in consent[0]  # said before installing
    assert fakePackage["calls"] == [(["ttfake-pkg>=2.0"], False)]  # our prompt, not a second one from pip_ensure
    assert restart and "Restart now?" in restart[0]
    # the new version is installed, but this process still runs the old one: every later call refuses
    assert L.missingRequirements(fakePackage["requirements"]) == []
    with pytest.raises(L.RestartRequiredError):
        L.ensureRequirements(fakePackage["requirements"], testing=False, install=fakePackage["install"])


def test_an_outdated_package_not_yet_imported_needs_no_restart(fakePackage) -> None:
    assert "ttfakepkg" not in sys.modules
    assert L.loadedOutdatedPackages(["ttfake-pkg>=2.0"]) == []
    assert L.ensureRequirements(fakePackage["requirements"], testing=True, install=fakePackage["install"]) == [
        "ttfake-pkg>=2.0"]
    import ttfakepkg

    assert ttfakepkg.VERSION == "2.0"


def test_an_installation_that_did_not_complete_is_an_error(fakePackage) -> None:
    with pytest.raises(RuntimeError, match=r"did not complete \(ttfake-pkg>=2.0 still missing\)"):
        L.ensureRequirements(fakePackage["requirements"], testing=True, install=lambda missing, prompt: None)
