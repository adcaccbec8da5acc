"""Cohort pieces that need no cluster: optional dependencies, patient discovery, table rows, demo-cohort draws."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from theratwin.cohort import discover_patients
from theratwin.cohort.demo import demo_patient_spec
from theratwin.cohort.population import DEMO_COHORT_POPULATION, kinetics_from_theta
from theratwin.cohort.table import patient_rows
from theratwin.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]


def test_core_and_cli_import_without_dask_and_pyarrow() -> None:
    code = (
        "import sys\n"
        "for m in ('dask', 'distributed', 'pyarrow'): sys.modules[m] = None\n"
        "import theratwin, theratwin.cohort, theratwin.twin, theratwin.pipeline\n"
        "from theratwin.cli import main\n"
        "assert main(['info']) == 0\n"
        "sys.exit(main(['cohort', '--input', '.', '--out', 'x', '-q']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "Logic"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("theratwin: error: Cohorts need Dask")
    assert "theratwin[cohort]" in proc.stderr


def test_discovery_one_folder_per_patient(tmp_path: Path) -> None:
    for name in ("P 2", "P1", "_truth", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("not a patient")
    assert [p.key for p in discover_patients(tmp_path)] == ["P_2", "P1"]  # folder-name order
    with pytest.raises(InvalidInputError, match="no patient folders"):
        discover_patients(tmp_path / "_truth")


def test_rows_carry_units_and_the_single_time_point_error() -> None:
    t, lam = [4.0, 24.0, 48.0, 168.0], math.log(2) / 40.0
    a = [1000.0 * math.exp(-lam * x) for x in t]
    full = 1000.0 / lam
    results = {"study": {"patient_id": "X"}, "software": {"version": "v"}, "warnings": [
        {"stage": "kinetics", "message": "poor fit", "structure": "kidneys", "cycle": 1, "severity": "warning"}],
        "cycles": {"1": {"administered_MBq": 7400.0, "nuclide": "Lu-177", "radiopharmaceutical": "PSMA-617",
                         "structures": {"kidneys": {"time_h": t, "activity_MBq": a, "tia_MBq_h": full,
                                                    "tia_method": "fit:mono_exp", "mean_dose_Gy": 4.0}}}}}
    (row,) = patient_rows("P1", results)
    # Hänscheid from the scan nearest 96 h (48 h): A(t) 2t / ln 2, against the exact mono-exponential TIA
    assert row["stp_time_h"] == 48.0
    assert row["stp_tia_MBq_h"] == pytest.approx(a[2] * 2 * 48.0 / math.log(2), rel=1e-12)
    assert row["stp_relative_error"] == pytest.approx(2 * lam * 48.0 * math.exp(-lam * 48.0) / math.log(2) - 1)
    assert row["flags"] == "warning" and "poor fit" in row["warnings"]
    assert row["structure_kind"] == "kidneys" and row["n_time_points"] == 4


def test_demo_cohort_draws_follow_the_population() -> None:
    """Drawn uptake per gram: mean and SD of many draws match the population (the generator's own check)."""
    rng = np.random.default_rng(5)
    thetas = np.array([demo_patient_spec(i, rng)[1]["kidneys"]["theta"] for i in range(400)])
    pop = DEMO_COHORT_POPULATION.structures["kidneys"]
    assert thetas.mean(axis=0) == pytest.approx(pop.mean, abs=4 * 0.3 / math.sqrt(400))
    assert thetas.std(axis=0) == pytest.approx(pop.iiv_sd, rel=0.15)


def test_kinetics_from_theta_is_the_twin_model() -> None:
    """The demo generator's curve from η equals the twin's closed form A U (e^{-λw t} - e^{-λu t})."""
    from theratwin.nuclides import get

    eta = np.array([math.log(0.04), math.log(0.01), math.log(0.5)])
    kin = kinetics_from_theta(eta)
    lw = get("Lu-177").decay_constant_per_h + 0.01
    t = np.array([1.0, 10.0, 100.0])
    expect = 7400 * 0.04 * (np.exp(-lw * t) - np.exp(-(lw + 0.5) * t))
    assert kin.activity_MBq(t, 7400.0) == pytest.approx(expect, rel=1e-12)
