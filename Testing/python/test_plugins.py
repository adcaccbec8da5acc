"""Plug-ins installed from outside the package (Testing/plugins/, the worked example of docs/extending.md).

A package whose entry points are broken (one fails to import, one lacks a protocol method) is installed *before*
a valid one on the path: TheraTwin warns about each broken entry, names it when asked for, and still offers the
built-ins and the later, valid plug-ins, which compute what their closed forms say.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "plugins"))

from install import BROKEN, EXAMPLE, install  # noqa: E402

from theratwin.errors import ConfigurationError  # noqa: E402
from theratwin.registry import PluginWarning, Registry  # noqa: E402


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    broken, example = tmp_path_factory.mktemp("broken"), tmp_path_factory.mktemp("example")
    install(BROKEN, broken)
    install(EXAMPLE, example)
    # the broken package first, so its entries are met before the valid ones
    return os.pathsep.join([str(broken), str(example), str(ROOT / "Logic")])


def _run(code: str, pythonpath: str) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_broken_plugins_are_skipped_with_a_warning_and_the_rest_load(plugin_path: str) -> None:
    out = _run("""
        import json, warnings
        import theratwin as tt
        from theratwin.kinetics.models import KINETIC_MODELS
        from theratwin.dosimetry.dose import DOSE_ENGINES
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            models, engines = KINETIC_MODELS.names(), DOSE_ENGINES.names()
        errors = {}
        for registry, name in ((KINETIC_MODELS, "aaa_needs_missing_library"), (DOSE_ENGINES, "aaa_without_compute")):
            try:
                registry.get(name)
            except tt.ConfigurationError as error:
                errors[name] = str(error)
        print(json.dumps({"models": models, "engines": engines, "errors": errors,
                          "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
    """, plugin_path)
    assert {"mono_exp", "biexp", "biexp_uptake", "triexp", "trapezoid", "example_monoexp"} <= set(out["models"])
    assert {"dvk", "led", "example_electrons"} <= set(out["engines"])
    assert "aaa_needs_missing_library" not in out["models"] and "aaa_without_compute" not in out["engines"]
    assert len(out["warnings"]) == 2
    incomplete, missing = sorted(out["warnings"])
    assert missing.startswith("PluginWarning: The kinetic model plug-in 'aaa_needs_missing_library'")
    assert "ModuleNotFoundError" in missing and "theratwin_library_that_is_not_installed" in missing
    assert "'aaa_without_compute'" in incomplete and "lacks compute()" in incomplete
    assert "installed but could not be used" in out["errors"]["aaa_without_compute"]
    assert "ModuleNotFoundError" in out["errors"]["aaa_needs_missing_library"]


def test_example_plugins_compute_their_closed_forms(plugin_path: str) -> None:
    out = _run("""
        import json, warnings
        import numpy as np
        import theratwin as tt
        warnings.simplefilter("ignore", tt.registry.PluginWarning)
        lam = tt.nuclides.get("Lu-177").decay_constant_per_h + 0.02
        t = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
        fit = tt.kinetics.fit_tac(t, 500.0 * np.exp(-lam * t), nuclide="Lu-177", model="example_monoexp")
        tia = np.full((4, 5, 6), 1000.0)
        rho = np.full((4, 5, 6), 1.05)
        dose = tt.dosimetry.dose_map(tia, (4.8, 4.8, 4.8), "Lu-177", method="example_electrons",
                                     density_g_per_mL=rho)
        print(json.dumps({"model": fit.model, "tia": fit.tia_MBq_h, "lam": lam,
                          "dose": [float(dose.min()), float(dose.max())],
                          "e_MeV": tt.nuclides.get("Lu-177").electron_energy_MeV}))
    """, plugin_path)
    assert out["model"] == "example_monoexp"
    assert out["tia"] == pytest.approx(500.0 / out["lam"], rel=1e-6)  # A0 / lambda_eff (MIRD Pamphlet 21)
    # 1000 Bq h/mL x 3600 s/h x E [MeV] x 1.602e-13 J/MeV / (1.05 g/mL x 1e-3 kg/g)
    expected_Gy = 1000.0 * 3600.0 * out["e_MeV"] * 1.602176634e-13 / 1.05e-3
    assert out["dose"] == pytest.approx([expected_Gy, expected_Gy], rel=1e-9)
    assert 0.14 < out["e_MeV"] < 0.15  # Lu-177 mean electron energy per decay, ~0.148 MeV (ICRP-107)




def test_registration_checks_the_protocol() -> None:
    from theratwin.dosimetry.dose import DOSE_ENGINES, DoseEngine
    from theratwin.kinetics.models import KINETIC_MODELS

    class NoCompute:
        name = "no_compute"
        description = "forgot compute"

    with pytest.raises(ConfigurationError, match=r"dose engine 'no_compute' \(test_plugins.NoCompute\).*lacks compute\(\)"):
        DOSE_ENGINES.register("no_compute", NoCompute)
    assert "no_compute" not in DOSE_ENGINES

    class NotAModel:
        name = "not_a_model"
        param_names = ("a",)
        selectable = False

        def evaluate(self, theta, time_h, lambda_phys_per_h):
            return time_h

    with pytest.raises(ConfigurationError, match=r"lacks initial_guesses\(\), tia\(\).* or fit_direct\(\)"):
        KINETIC_MODELS.register("not_a_model", NotAModel())
    # a data member may be set by __init__: an annotation on the class counts
    reg: Registry[object] = Registry("theratwin.test_nothing", "engine", protocol=DoseEngine)

    class Annotated:
        name: str
        description: str

        def compute(self, *args, **kwargs):
            return None

    reg.register("annotated", Annotated)
    assert reg.get("annotated") is Annotated
    assert issubclass(PluginWarning, UserWarning)
