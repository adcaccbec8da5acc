"""Every module's Logic runs headless (no Widget, no Qt) on slicer-core; the module files import without Qt."""

from __future__ import annotations

import typing
import unittest

import numpy as np
import pytest
from modules import MODULES, loadModuleFile

import theratwin as tt
import TheraTwinLib as L
from theratwin.pipeline.core import STAGES, load_builtin_stages

load_builtin_stages()


def needStages(*names: str) -> None:
    missing = [n for n in names if n not in STAGES]
    if missing:
        pytest.skip(f"pipeline stages not installed yet: {missing}")


@pytest.mark.parametrize("name", MODULES)
def test_module_file_imports_without_qt(name) -> None:
    module = loadModuleFile(name)
    assert not getattr(module, "qt", None), "qt must be absent in this environment"
    info = getattr(module, name)(None).parent
    assert info.categories == ["Nuclear Medicine"]
    assert "href=" in info.helpText and info.acknowledgementText and info.contributors
    with pytest.raises(RuntimeError, match="application"):
        getattr(module, f"{name}Widget")()
    # the parameter node class gives a settings object with the declared defaults
    parameters = getattr(module, f"{name}ParameterNode")()
    hints = typing.get_type_hints(getattr(module, f"{name}ParameterNode"), include_extras=True)
    assert set(parameters.allParameters) == set(hints)
    # the module's own self-test class is a unittest.TestCase
    assert issubclass(getattr(module, f"{name}Test"), unittest.TestCase)


def _runSelfTest(name: str) -> None:
    module = loadModuleFile(name)
    result = unittest.TextTestRunner(verbosity=0).run(unittest.defaultTestLoader.loadTestsFromTestCase(
        getattr(module, f"{name}Test")))
    assert result.wasSuccessful(), [str(e[1]) for e in result.errors + result.failures]


def test_kinetics_self_test_headless() -> None:
    """Mono-exponential phantom: the fitted TIA matches A0 T_eff / ln 2 within 5 %."""
    needStages("kinetics")
    _runSelfTest("TheraTwinKinetics")


def test_dosimetry_self_test_headless() -> None:
    """Uniform cube: dose at the centre matches local electron-energy deposition within 10 %."""
    needStages("kinetics", "dosimetry")
    _runSelfTest("TheraTwinDosimetry")


def test_twin_self_test_headless() -> None:
    _runSelfTest("TheraTwinTwin")


def test_export_self_test_headless() -> None:
    _runSelfTest("TheraTwinExport")


def test_parameter_node_drives_the_logic(scene, study) -> None:
    """The script entry point takes the same parameter object the Widget edits."""
    needStages("kinetics")
    module = loadModuleFile("TheraTwinKinetics")
    nodes = L.addStudyToScene(scene, study)
    for node in nodes.allTimePoints():  # without CT and SPECT-to-SPECT registration the time points stay as they are
        node.RemoveNodeReferenceIDs("TheraTwin.CT")
    parameters = module.TheraTwinKineticsParameterNode(timePointVolume=nodes.timePoints[1][0],
                                                       segmentation=nodes.segmentation, registerTimePoints=False)
    outputs = module.TheraTwinKineticsLogic().processUsingParameterNode(parameters)
    assert parameters.tacChart is outputs["chart"] and parameters.resultsTable is outputs["table"]
    assert parameters.tiaVolume.GetAttribute("TheraTwin.Unit") == "Bq.h/mL"
    # every time point of the patient was used, although one was selected
    assert outputs["run"].results.cycles[1].time_points_h == pytest.approx([4.0, 24.0, 96.0])
    assert np.isfinite(L.tableColumn(parameters.resultsTable, "TIA_MBq_h")).all()
    assert isinstance(outputs["run"].study, tt.Study)
    # running again replaces the outputs instead of piling up charts and tables
    counts = {c: scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode",
                                                            "vtkMRMLTableNode", "vtkMRMLScalarVolumeNode")}
    module.TheraTwinKineticsLogic().processUsingParameterNode(parameters)
    assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts
    assert parameters.tacChart.GetScene() is scene


def test_a_progress_callback_can_cancel_the_logic(scene, study) -> None:
    """Long work reports progress and stops when the callback raises Cancelled (the Widget's Cancel button)."""
    needStages("kinetics")
    from theratwin.progress import Cancelled

    module = loadModuleFile("TheraTwinKinetics")
    nodes = L.addStudyToScene(scene, study)
    for node in nodes.allTimePoints():
        node.RemoveNodeReferenceIDs("TheraTwin.CT")
    messages: list[tuple[float, str]] = []

    def progress(fraction: float, message: str) -> None:
        messages.append((fraction, message))
        if message.startswith("kinetics"):
            raise Cancelled("cancelled by the test")

    volumesBefore = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(Cancelled):
        module.TheraTwinKineticsLogic().process(nodes.allTimePoints(), nodes.segmentation, registerTimePoints=False,
                                                progress=progress)
    assert messages and all(0.0 <= f <= 1.0 for f, _ in messages)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumesBefore  # no half-made outputs


def test_headless_parameter_objects() -> None:
    """The stand-in parameterNodeWrapper gives the declared defaults and refuses unknown names."""
    module = loadModuleFile("TheraTwinDosimetry")
    parameters = module.TheraTwinDosimetryParameterNode()
    assert parameters.doseMethod == "dvk"
    assert parameters.computeBed is True and parameters.cycle == 1 and parameters.doseVolume is None
    assert module.TheraTwinDosimetryParameterNode(cycle=2).cycle == 2
    with pytest.raises(TypeError, match="dose_Gy"):
        module.TheraTwinDosimetryParameterNode(dose_Gy=1.0)
    with pytest.raises(RuntimeError, match="TheraTwinDosimetryParameterNode"):
        module.TheraTwinDosimetryLogic().getParameterNode()


def test_twin_adds_a_cycle_measured_elsewhere(scene) -> None:
    """A second cycle observed for the stored twin is kept in its state and informs the next prediction."""
    from theratwin.twin import PatientTwin

    module = loadModuleFile("TheraTwinTwin")
    logic = module.TheraTwinTwinLogic()
    twin = PatientTwin("Lu-177", "PSMA-617")
    time_h = np.array([4.0, 24.0, 48.0, 168.0])
    twin.observe(1, "kidneys", time_h, 222.0 * 2 ** (-time_h / 40.0), 7400.0)
    state = logic._storeTwin(scene, twin.to_json())
    before = logic.predictFromTwinState(state, nextCycle=3, plannedActivity_MBq=7400.0)
    # cycle 2: the kidneys keep twice the activity for longer than in cycle 1
    after = logic.predictFromTwinState(state, nextCycle=3, plannedActivity_MBq=7400.0,
                                       observations={(2, "kidneys"): ([48.0], [2 * 222.0 * 2 ** (-48.0 / 40.0)], 7400.0)})
    assert 2 in PatientTwin.from_json(state.GetText()).observed_cycles
    cumulative = [o["prediction"]["structures"]["kidneys"]["cumulative_dose_Gy"]["mean"] for o in (before, after)]
    assert cumulative[1] > cumulative[0]


def test_requirements_are_checked_not_installed_headless(tmp_path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.0\nscipy\ntheratwin-no-such-package>=1.0\n")
    assert L.readRequirements(requirements) == [("numpy", "1.0"), ("scipy", None),
                                                ("theratwin-no-such-package", "1.0")]
    assert L.missingRequirements(requirements) == ["theratwin-no-such-package>=1.0"]
    with pytest.raises(RuntimeError, match="theratwin-no-such-package>=1.0"):
        L.ensureRequirements(requirements)  # no application: nothing is installed, the message says what to do
    requirements.write_text("numpy==1.0\n")
    with pytest.raises(ValueError, match="numpy==1.0"):
        L.readRequirements(requirements)
    for module in MODULES:  # one list for every module
        assert loadModuleFile(module).REQUIREMENTS == L.REQUIREMENTS
