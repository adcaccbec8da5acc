"""Plug-ins installed from outside the package (Testing/plugins/, the worked example of docs/extending.md).

A package whose entry points are broken (one fails to import, a dose engine and a twin model each lack a protocol
method) is installed *before* a valid one on the path: TheraTwin warns about each broken entry, names it when asked
for, lists it with the reason in ``theratwin info``, and still offers the built-ins and the later, valid plug-ins,
which compute what their closed forms say.
"""

from __future__ import annotations

import json
import math
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
from theratwin.registry import PluginWarning, Registry, missing_members  # noqa: E402


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


def test_info_lists_every_plugin_point_with_its_origin_and_the_broken_plugins(plugin_path: str) -> None:
    env = {**os.environ, "PYTHONPATH": plugin_path}
    proc = subprocess.run([sys.executable, "-m", "theratwin", "info"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            sections[line] = current = []
        elif line.startswith("  ") and sections:
            current.append(line.strip())
    heads = {h.split(" (")[0]: h for h in sections}
    assert {"pipeline stages", "kinetic models", "dose engines", "twin models", "outcome models"} <= set(heads)
    rows = {h.split(" (")[0]: {r.split()[0]: r.split(None, 1)[1] for r in sections[h]} for h in sections}
    assert rows["pipeline stages"]["dosimetry"] == "built in"
    assert rows["twin models"]["pbpk_psma"] == "built in"
    assert rows["outcome models"]["lkb_kidney_burman1991"] == "built in"
    assert rows["kinetic models"]["biexp"] == "built in"
    # the valid plug-in, named by its distribution, version and object
    assert rows["kinetic models"]["example_monoexp"] == (
        "plug-in theratwin-example-plugin 0.1.0 (theratwin_example_plugin.kinetics:ExampleMonoExponential)")
    assert rows["dose engines"]["example_electrons"].startswith("plug-in theratwin-example-plugin 0.1.0 (")
    # the broken ones, with the distribution and the registry's one-line reason
    missing = rows["kinetic models"]["aaa_needs_missing_library"]
    assert missing.startswith("FAILED to load, plug-in theratwin-broken-plugin 0.1.0 "
                              "(theratwin_broken_plugin.missing:Model): ModuleNotFoundError")
    assert "theratwin_library_that_is_not_installed" in missing
    incomplete = rows["dose engines"]["aaa_without_compute"]
    assert incomplete.startswith("FAILED to load, plug-in theratwin-broken-plugin 0.1.0")
    assert incomplete.endswith("it lacks compute()")
    # a twin model without exponentials() is refused by the twin-model registry's protocol when it loads
    twin = rows["twin models"]["aaa_twin_without_exponentials"]
    assert twin.startswith("FAILED to load, plug-in theratwin-broken-plugin 0.1.0")
    assert "theratwin.twin.model.TwinModel" in twin and twin.endswith("it lacks exponentials()")
    assert rows["outcome models"]["example_poisson_tcp"] == (
        "plug-in theratwin-example-plugin 0.1.0 (theratwin_example_plugin.outcome:EXAMPLE_TCP)")
    assert "PluginWarning" not in proc.stderr and "was skipped" not in proc.stderr  # reported once, in the listing


def test_outcome_model_plugin_computes_its_closed_form_and_the_broken_twin_model_is_refused(plugin_path: str) -> None:
    out = _run("""
        import json, math, warnings
        import numpy as np
        import theratwin as tt
        from theratwin.twin import OUTCOME_MODELS, TWIN_MODELS
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            twins, outcomes = TWIN_MODELS.names(), OUTCOME_MODELS.names()
        tcp = OUTCOME_MODELS.get("example_poisson_tcp")
        try:
            TWIN_MODELS.get("aaa_twin_without_exponentials")
            error = ""
        except tt.ConfigurationError as exc:
            error = str(exc)
        print(json.dumps({"twins": twins, "outcomes": outcomes, "error": error,
                          "p": tcp.probability(np.array([0.0, 30.0, 60.0])).tolist(), "model": tcp.to_dict(),
                          "warnings": [str(w.message) for w in caught]}))
    """, plugin_path)
    assert "example_poisson_tcp" in out["outcomes"] and "lkb_kidney_burman1991" in out["outcomes"]
    assert {"biexp", "pbpk_psma"} <= set(out["twins"]) and "aaa_twin_without_exponentials" not in out["twins"]
    assert len(out["warnings"]) == 1 and "'aaa_twin_without_exponentials'" in out["warnings"][0]
    assert "installed but could not be used" in out["error"] and "lacks exponentials()" in out["error"]
    # Poisson TCP exp(-N0 exp(-alpha D)) with N0 = 1e6, alpha = 0.35 /Gy, evaluated here independently
    n0, alpha = out["model"]["clonogens"], out["model"]["alpha_per_Gy"]
    assert (n0, alpha) == (1e6, 0.35)
    expected = [math.exp(-n0 * math.exp(-alpha * d)) for d in (0.0, 30.0, 60.0)]
    assert out["p"] == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert out["p"][0] == 0.0 and 0.9 < out["p"][2] < 1.0  # no control without dose; near 1 at 60 Gy


def test_twin_and_outcome_registries_refuse_objects_without_their_protocol() -> None:
    from theratwin.twin.model import TWIN_MODELS, TwinModel
    from theratwin.twin.outcome import OUTCOME_MODELS, OutcomeModel

    class NoExponentials:
        name = "no_exponentials"
        n_params = 2

        def prior(self, structure, radiopharmaceutical, nuclide, overrides):
            return None

    with pytest.raises(ConfigurationError, match=(
            r"^The twin model 'no_exponentials' \(test_plugins.NoExponentials\) does not implement the twin model "
            r"protocol \(theratwin.twin.model.TwinModel\): it lacks exponentials\(\)\.$")):
        TWIN_MODELS.register("no_exponentials", NoExponentials)
    assert "no_exponentials" not in TWIN_MODELS

    class ProbabilityOnly:
        name = "probability_only"
        kind = "toxicity"

        def probability(self, value_Gy):
            return value_Gy * 0.0

    with pytest.raises(ConfigurationError, match=(
            r"outcome model 'probability_only' .* it lacks quantity, reference, to_dict\(\)\.$")):
        OUTCOME_MODELS.register("probability_only", ProbabilityOnly())
    assert "probability_only" not in OUTCOME_MODELS
    # every built-in conforms (they were checked when registered; checked again here against the protocol)
    for name in TWIN_MODELS.names():
        assert missing_members(TWIN_MODELS.get(name), TwinModel) == [], name
    for name in OUTCOME_MODELS.names():
        model = OUTCOME_MODELS.get(name)
        assert missing_members(model, OutcomeModel) == [], name
        assert isinstance(model, OutcomeModel)
        assert model.quantity in ("dose", "bed", "eqd2") and model.kind in ("response", "toxicity")
    assert set(TWIN_MODELS.names()) >= {"biexp", "pbpk_psma"}
