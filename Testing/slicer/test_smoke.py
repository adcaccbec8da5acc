"""The part of the Slicer smoke test (Testing/slicer/SlicerSmokeTest.py) that runs without the application.

What only the application can do -- open the panels, bind the .ui widgets, click Apply, Slicer's own Sample Data
download and pip -- is in SlicerSmokeTest.py for a maintainer to run in a real Slicer; everything else runs here,
through the same functions (``smoke.py``).
"""

from __future__ import annotations

import tempfile
import time

import pytest
import slicer
import smoke
from modules import ROOT, loadModuleFile

import TheraTwinLib as L


@pytest.mark.slow
def test_smoke_workflow_on_slicer_core(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    workingDirectory = tmp_path / "cwd"
    workingDirectory.mkdir()
    monkeypatch.chdir(workingDirectory)
    modules = {name: loadModuleFile(name) for name in smoke.MODULES}
    parameterNodes = {name: getattr(modules[name], f"{name}ParameterNode")() for name in smoke.MODULES}
    assert smoke.pathFieldsSet(parameterNodes) == []  # the panels' folder and file fields start empty
    sampleData = loadModuleFile("TheraTwinSampleData", ROOT / "TheraTwinExtension" / "TheraTwinSampleData.py")
    selfTest = loadModuleFile("TheraTwinSelfTest", ROOT / "TheraTwinExtension" / "TheraTwinSelfTest.py")
    scene = slicer.vtkMRMLScene()
    cache = tmp_path / "cache"
    cache.mkdir()
    t0 = time.perf_counter()
    nodes, demo = smoke.loadDemoThroughSampleData(sampleData, scene, cache, fast=True)
    out = smoke.runModules(modules, parameterNodes, nodes.timePoints[1][0], nodes.segmentation)  # Export's folder unset
    print(f"smoke workflow (fast demo, load + four modules): {time.perf_counter() - t0:.1f} s")
    check = selfTest.TheraTwinSelfTestTest("test_WholeWorkflow")
    check.scene = scene
    folder = smoke.checkOutputs(check, out, parameterNodes, L)
    check.checkWorkflow({**out, "nodes": nodes, "demo": demo}, folder)
    # the unset folder became a new folder under the temporary folder, never the working directory
    assert folder.parent == tmp_path / "tmp" / "TheraTwin" and folder.name.startswith("export-")
    assert list(workingDirectory.iterdir()) == []
    # each module continued the run of the one before (registration once)
    assert out["kinetics"]["run"] is out["dosimetry"]["run"]
    scene.Clear(True)


def test_the_smoke_checks_catch_a_missing_output(tmp_path) -> None:
    """checkOutputs fails when Export wrote nothing (as when it wrote into another folder)."""
    import unittest

    class Parameters:
        outputDirectory = tmp_path

    with pytest.raises(unittest.TestCase.failureException, match="did not write rtdose"):
        smoke.checkOutputs(unittest.TestCase(), {"export": {"outputDirectory": tmp_path, "files": {}}},
                           {"TheraTwinExport": Parameters()}, L)


def test_a_set_path_field_is_reported() -> None:
    parameters = loadModuleFile("TheraTwinTwin").TheraTwinTwinParameterNode(twinFile=None)
    assert smoke.pathFieldsSet({"TheraTwinTwin": parameters}) == []
    parameters.twinFile = ROOT / "twin.json"
    assert smoke.pathFieldsSet({"TheraTwinTwin": parameters}) == [f"TheraTwinTwin.twinFile = {ROOT / 'twin.json'!r}"]
