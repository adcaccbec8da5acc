"""The Kinetics and Dosimetry modules' model and engine lists come from the core's registries: a plug-in package
installed next to TheraTwin appears in them, a broken one is left out and does not hide the built-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "plugins"))

from install import BROKEN, EXAMPLE, install  # noqa: E402


def test_installed_plugins_appear_in_the_module_choice_lists(tmp_path: Path) -> None:
    install(BROKEN, tmp_path / "broken")
    install(EXAMPLE, tmp_path / "example")
    path = [tmp_path / "broken", tmp_path / "example", ROOT / "Logic", ROOT / "Modules", ROOT / "Testing" / "slicer"]
    code = textwrap.dedent("""
        import json, typing, warnings
        warnings.simplefilter("ignore")
        import TheraTwinLib
        from modules import loadModuleFile
        kinetics, dosimetry = loadModuleFile("TheraTwinKinetics"), loadModuleFile("TheraTwinDosimetry")

        def annotatedChoices(cls, field):
            choice = typing.get_args(typing.get_type_hints(cls, include_extras=True)[field])[1]
            return choice.choices

        print(json.dumps({
            "models": TheraTwinLib.kineticModelChoices(),
            "engines": TheraTwinLib.doseEngineChoices(),
            "kineticsField": annotatedChoices(kinetics.TheraTwinKineticsParameterNode, "kineticModel"),
            "dosimetryField": annotatedChoices(dosimetry.TheraTwinDosimetryParameterNode, "doseMethod"),
            "defaults": [kinetics.TheraTwinKineticsParameterNode().kineticModel,
                         dosimetry.TheraTwinDosimetryParameterNode().doseMethod],
        }))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["models"][0] == "auto" and "example_monoexp" in out["models"]
    assert {"mono_exp", "biexp_uptake", "biexp", "triexp", "trapezoid"} <= set(out["models"])
    assert out["engines"][:2] == ["dvk", "example_electrons"] and "led" in out["engines"]
    assert not any(name.startswith("aaa_") for name in out["models"] + out["engines"])
    assert out["kineticsField"] == out["models"] and out["dosimetryField"] == out["engines"]
    assert out["defaults"] == ["auto", "dvk"]


def test_without_the_core_the_builtin_names_stand_in() -> None:
    import TheraTwinLib

    def coreMissing() -> list[str]:
        raise ModuleNotFoundError("No module named 'theratwin'")

    choice = TheraTwinLib.registryChoice(coreMissing, TheraTwinLib.BUILTIN_DOSE_ENGINES)
    assert choice.choices == ["dvk", "led"]
    assert TheraTwinLib.registryChoice(TheraTwinLib.doseEngineChoices, ()).choices[:2] == ["dvk", "led"]
