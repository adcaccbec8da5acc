"""Shared pytest fixtures for the core tests (small synthetic data built in the tests)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

import theratwin as tt


@pytest.fixture
def small_geometry() -> tt.Geometry:
    return tt.Geometry(shape=(8, 10, 12), spacing_mm=(4.8, 4.8, 4.8), origin_mm=(-28.8, -24.0, -19.2))


@pytest.fixture
def small_study(small_geometry: tt.Geometry) -> tt.Study:
    """A two-time-point, one-structure study in memory (no DICOM)."""
    start = datetime(2026, 3, 2, 9, 0, 0)
    adm = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
    tps = []
    for h in (4.0, 24.0):
        arr = np.full(small_geometry.shape, 1000.0 * np.exp(-0.01 * h), dtype=np.float32)
        img = tt.ImageVolume.from_geometry(arr, small_geometry, "Bq/mL")
        tps.append(tt.TimePoint(img, start + timedelta(hours=h), 1800.0))
    mask = np.zeros(small_geometry.shape, bool)
    mask[2:6, 3:7, 4:8] = True
    seg = tt.Segmentation(small_geometry, [tt.Structure("kidneys", 1)], {"kidneys": mask})
    return tt.Study(tt.Patient("TT-TEST-1"), [tt.Cycle(1, adm, tps)], seg)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """The README's main job, run once per test session: the full demo patient through every stage.

    Returns :class:`theratwin.pipeline.RunOutput` (``results``, ``context``, ``out_dir``, ``truth``). Tests that
    only read outputs share it instead of running the pipeline again (the whole suite must fit CI's budget).
    """
    from theratwin.pipeline import run_demo

    return run_demo(tmp_path_factory.mktemp("demo-run"))
