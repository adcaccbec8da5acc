"""Fixtures of the TheraTwinLib tests: a fresh MRML scene and small synthetic studies and results.

These tests run in ``.venv-slicer`` (``slicer-core`` from PyPI: Slicer's MRML and module logics, no Qt):
``.venv-slicer/bin/python -m pytest Testing/slicer``.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Modules"))

slicer = pytest.importorskip("slicer", reason="run in .venv-slicer (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover - a different 'slicer' package
    pytest.exit("the 'slicer' package here is not slicer-core; run with .venv-slicer/bin/python", returncode=2)

import theratwin as tt  # noqa: E402

#: An oblique LPS direction (rotation of 30 degrees about z, then 10 about x), to catch axis mix-ups.
_C, _S = np.cos(np.radians(30)), np.sin(np.radians(30))
_Cx, _Sx = np.cos(np.radians(10)), np.sin(np.radians(10))
OBLIQUE = np.array([[_C, -_S, 0], [_S, _C, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, _Cx, -_Sx], [0, _Sx, _Cx]])


@pytest.fixture(scope="session", autouse=True)
def fresh_demo_cache(tmp_path_factory):
    """Build the demo patient into a cache of this test session, so that a cache left by an older demo generator
    cannot hide a change (the sample-data checksums are checked against what the current generator makes)."""
    import os

    previous = os.environ.get("THERATWIN_CACHE")
    os.environ["THERATWIN_CACHE"] = str(tmp_path_factory.mktemp("theratwin-cache"))
    yield
    if previous is None:
        os.environ.pop("THERATWIN_CACHE", None)
    else:
        os.environ["THERATWIN_CACHE"] = previous


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    yield s
    s.Clear(True)


@pytest.fixture
def geometry() -> tt.Geometry:
    return tt.Geometry(shape=(9, 11, 13), spacing_mm=(4.8, 4.2, 3.6), origin_mm=(-28.8, -24.0, 19.2),
                       direction=tuple(map(tuple, OBLIQUE)))


def _study(geometry: tt.Geometry) -> tt.Study:
    """Two cycles: cycle 1 at 4, 24, 96 h with a CT; cycle 2 at 48 h. Kidneys and an overlapping lesion."""
    rng = np.random.default_rng(7)
    structures = [tt.Structure("kidneys", 1, color_rgb=(185, 102, 83)), tt.Structure("lesion_bone_1", 2)]
    kidneys = np.zeros(geometry.shape, bool)
    kidneys[2:6, 3:8, 4:9] = True
    lesion = np.zeros(geometry.shape, bool)
    lesion[4:8, 6:10, 7:12] = True  # overlaps the kidneys (allowed in DICOM SEG)
    seg = tt.Segmentation(geometry, structures, {"kidneys": kidneys, "lesion_bone_1": lesion})
    ct = tt.ImageVolume.from_geometry(rng.integers(-1000, 1500, geometry.shape).astype(np.int16), geometry, "HU")
    cycles = []
    for number, (start, hours) in enumerate([(datetime(2026, 3, 2, 9, 30), (4.0, 24.0, 96.0)),
                                             (datetime(2026, 4, 27, 10, 0), (48.0,))], start=1):
        adm = tt.Administration("PSMA-617", "Lu-177", 7400.0 - 100 * number, start)
        tps = []
        for h in hours:
            arr = (rng.random(geometry.shape) * 1000.0 * np.exp(-0.01 * h)).astype(np.float32)
            img = tt.ImageVolume.from_geometry(arr, geometry, "Bq/mL")
            tps.append(tt.TimePoint(img, start + timedelta(hours=h), 1200.0 + h, ct=ct if number == 1 else None))
        cycles.append(tt.Cycle(number, adm, tps))
    return tt.Study(tt.Patient("TT-SLICER-1", "Test^Slicer", sex="M"), cycles, seg)


@pytest.fixture
def study(geometry: tt.Geometry) -> tt.Study:
    return _study(geometry)


@pytest.fixture
def results(study: tt.Study) -> tt.Results:
    """Results with every field the adapter shows, filled with distinct made-up numbers (the adapter only
    moves them into nodes; the tests check they arrive unchanged)."""
    res = tt.Results.for_study(study)
    for c, cycle in res.cycles.items():
        for i, name in enumerate(("kidneys", "lesion_bone_1")):
            s = cycle.structure(name)
            s.volume_mL = 150.0 + i
            s.mass_g = 157.5 + i
            s.time_h = list(cycle.time_points_h)
            s.activity_MBq = [100.0 * (i + 1) * np.exp(-0.012 * t) for t in s.time_h]
            s.tia_MBq_h = 8000.0 * (i + 1) + c
            s.tia_sd_MBq_h = 400.0 + i
            s.effective_half_life_h = 40.0 + i
            s.mean_dose_Gy = 3.1 * (i + 1) + 0.01 * c
            s.dose_per_activity_Gy_per_GBq = s.mean_dose_Gy / cycle.administered_MBq * 1000.0
            s.bed_Gy = 3.4 * (i + 1)
            s.dvh = {"dose_Gy": [0.0, 1.0, 2.0, 3.0, 4.0], "volume_fraction": [1.0, 0.9, 0.5, 0.1, 0.0]}
            s.dvh_metrics = {"D50_Gy": 2.0 + i, "D98_Gy": 0.5, "V20Gy_fraction": 0.0}
            # eqd2 and the cumulative fields are left unset: the tables must show them as not computed
    grid = study.cycles[0].time_points[0].image.geometry
    ramp = np.arange(np.prod(grid.shape), dtype=np.float32).reshape(grid.shape) / 1000.0
    res.maps["cycle1/tia"] = tt.ImageVolume.from_geometry(ramp * 50.0, grid, "Bq.h/mL")
    res.maps["cycle1/dose"] = tt.ImageVolume.from_geometry(ramp, grid, "Gy")
    res.maps["cycle1/bed"] = tt.ImageVolume.from_geometry(ramp * 1.1, grid, "Gy")
    return res


@pytest.fixture(scope="session")
def demo_scene(fresh_demo_cache):
    """The fast demo patient (built by the current generator) loaded into a scene once per session:
    ``{"scene", "nodes", "demo"}``. Its SHA256 list is checked by its own test (test_workflow.py), so that a
    changed demo generator fails that one test with instructions rather than every test using the demo."""
    from modules import ROOT, loadModuleFile

    sampleData = loadModuleFile("TheraTwinSampleData", ROOT / "TheraTwinExtension" / "TheraTwinSampleData.py")
    scene = slicer.vtkMRMLScene()
    nodes, demo = sampleData.TheraTwinSampleDataLogic().loadDemo(scene, fast=True, verify=False)
    yield {"scene": scene, "nodes": nodes, "demo": demo}
    scene.Clear(True)


@pytest.fixture(scope="session")
def demo_run(demo_scene):
    """The pipeline through the twin on the demo patient's nodes (kept by TheraTwinLib: the module Logic
    tests on the same nodes continue this run instead of registering again)."""
    import TheraTwinLib as L
    from theratwin.pipeline.core import STAGES, load_builtin_stages

    load_builtin_stages()
    stages = ("registration", "kinetics", "dosimetry", "radiobiology", "twin")
    missing = [s for s in stages if s not in STAGES]
    if missing:
        pytest.skip(f"pipeline stages not installed yet: {missing}")
    nodes = demo_scene["nodes"]
    return L.runPipelineOnNodes(nodes.allTimePoints(), segmentationNode=nodes.segmentation, stages=stages)
