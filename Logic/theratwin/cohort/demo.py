"""``theratwin demo-cohort``: synthetic patients drawn from a known population, written as DICOM with their truth.

Every patient is the demo phantom (:mod:`theratwin.demo`) with its own

* body habitus: anatomy scaled by 0.88-1.12 laterally (x, y independently within 4 % of each other) and 0.92-1.00
  along z (organ masses vary by about ±30 %);
* kinetics: per structure and cycle, η drawn from :data:`~theratwin.cohort.population.DEMO_COHORT_POPULATION`
  (between-patient and between-cycle variability in the twin's parametrisation); the remainder of the body keeps
  the demo's blood and tissue kinetics;
* treatment: 1-3 cycles of 7.4 GBq (dispensed within ±3 %; 1 in 6 cycles reduced to 6.0 GBq), 6 weeks apart
  (±1 week), cycle 1 imaged on one of the clinical schedules (4/24/48/168 h, 4/24/72/168 h or 24/48/96/168 h),
  later cycles once at 24, 48 or 96 h (single-time-point follow-up) or, one in four, at 24/48/168 h.

Images use the demo's fast grid (9.6 mm SPECT, 4.8 mm CT) with noise, blur and patient motion, so one patient is
about 15 MB and a few seconds to simulate. Layout under ``ROOT``::

    ROOT/<patient id>/...          DICOM of one patient (one folder per time point, SEG on the first)
    ROOT/_truth/<patient id>.json  its truth (the demo generator's truth + the drawn θ and η)
    ROOT/cohort-truth.json         the population, the seed and the patient list
    ROOT/theratwin-config.json     the demo scanner's pipeline settings (``theratwin cohort`` reads it)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import InvalidInputError
from ..progress import ProgressCallback, report
from .population import DEMO_COHORT_POPULATION, Population, kinetics_from_theta

__all__ = ["DemoCohort", "build_demo_cohort", "demo_patient_spec", "TRUTH_DIR", "COHORT_TRUTH", "CONFIG_FILE"]

TRUTH_DIR = "_truth"
COHORT_TRUTH = "cohort-truth.json"
#: Pipeline settings kept with an archive: ``theratwin cohort`` uses ``INPUT/theratwin-config.json`` when no
#: ``--config`` is given.
CONFIG_FILE = "theratwin-config.json"

# (nominal h, jitter SD h, projections over both heads, s per projection), as in theratwin.demo.build
_CYCLE1_SCHEDULES = (
    ((4.0, 0.25, 120, 15.0), (24.0, 0.8, 120, 20.0), (48.0, 1.2, 120, 20.0), (168.0, 2.5, 120, 30.0)),
    ((4.0, 0.25, 120, 15.0), (24.0, 0.8, 120, 20.0), (72.0, 1.5, 120, 25.0), (168.0, 2.5, 120, 30.0)),
    ((24.0, 0.8, 120, 20.0), (48.0, 1.2, 120, 20.0), (96.0, 2.0, 120, 25.0), (168.0, 2.5, 120, 30.0)),
)
_LATER_SINGLE = ((24.0, 0.8, 120, 20.0), (48.0, 1.2, 120, 20.0), (96.0, 2.0, 120, 25.0))
_LATER_FULL = ((24.0, 0.8, 120, 20.0), (48.0, 1.2, 120, 20.0), (168.0, 2.5, 120, 30.0))


@dataclass(frozen=True)
class DemoCohort:
    """A synthetic cohort on disk: its root, the patient ids and the cohort truth."""

    root: Path
    patient_ids: list[str]
    truth: dict[str, Any]


def demo_patient_spec(index: int, rng: np.random.Generator, population: Population = DEMO_COHORT_POPULATION,
                      ) -> tuple[Any, dict[str, Any]]:
    """Draw one patient: the demo generator's :class:`~theratwin.demo.PatientSpec` and the drawn θ/η (truth)."""
    from ..demo import CYCLE1_KINETICS, CycleSpec, PatientSpec

    n_cycles = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    s = float(rng.uniform(0.88, 1.12))
    scale = (s, float(np.clip(s * rng.uniform(0.96, 1.04), 0.85, 1.15)), float(rng.uniform(0.92, 1.0)))
    drawn = population.draw(rng, n_cycles, mass_scale=scale[0] * scale[1] * scale[2])
    cycles = []
    schedule: tuple[tuple[float, float, int, float], ...]
    schedule_1 = _CYCLE1_SCHEDULES[int(rng.integers(len(_CYCLE1_SCHEDULES)))]
    for k in range(n_cycles):
        kin = dict(CYCLE1_KINETICS)
        for name, d in drawn.items():
            kin[name] = kinetics_from_theta(d["eta"][k], population.nuclide, f"demo-cohort population, cycle {k + 1}")
        if k == 0:
            schedule = schedule_1
        elif rng.uniform() < 0.25:
            schedule = _LATER_FULL
        else:
            schedule = (_LATER_SINGLE[int(rng.integers(len(_LATER_SINGLE)))],)
        activity = 6000.0 if rng.uniform() < 1 / 6 else 7400.0 * float(np.clip(rng.normal(1.0, 0.015), 0.97, 1.03))
        cycles.append(CycleSpec(round(activity, 1), schedule, float(42.0 + rng.integers(-7, 8)), kin))
    volume = scale[0] * scale[1] * scale[2]
    pid = f"TTC{index + 1:05d}"
    patient = {
        "id": pid, "name": f"Cohort^Patient{index + 1:05d}", "issuer": "THERATWIN-DEMO-COHORT",
        "birth_date": f"{int(rng.integers(1940, 1966))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "sex": "M", "age": f"{int(rng.integers(55, 86)):03d}Y",
        "weight_kg": round(82.0 * volume, 1), "height_m": round(1.76 * scale[2], 2),
    }
    spec = PatientSpec(patient, population.radiopharmaceutical, tuple(cycles), scale)
    truth = {name: {"theta": d["theta"].tolist(), "mass_g_assumed": d["mass_g"],
                    "eta_by_cycle": [e.tolist() for e in d["eta"]]} for name, d in drawn.items()}
    return spec, truth


def build_demo_cohort(n: int, out: str | os.PathLike[str], *, seed: int = 1,
                      population: Population = DEMO_COHORT_POPULATION,
                      progress: ProgressCallback | None = None) -> DemoCohort:
    """Write ``n`` synthetic patients under ``out`` (see the module docstring); deterministic for a seed.

    Patients already complete in ``out`` (DICOM folder and truth present, from the same seed) are kept, so an
    interrupted build resumes. Each patient is written to a temporary folder and moved into place.
    """
    from ..demo import DemoOptions, simulate, write_demo_dicom
    from ..pipeline import PipelineConfig
    from ..pipeline.runs import demo_config
    from .records import COHORT_STAGES

    if n < 1:
        raise InvalidInputError(f"--n must be at least 1; got {n}.")
    if seed < 0:
        raise InvalidInputError(f"--seed must be a non-negative integer; got {seed}.")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / TRUTH_DIR).mkdir(exist_ok=True)
    # one generator per patient from a SeedSequence: patient k is the same whatever n is
    children = np.random.SeedSequence(seed).spawn(n)
    ids: list[str] = []
    options = DemoOptions(fast=True)
    for k in range(n):
        rng = np.random.default_rng(children[k])
        spec, drawn = demo_patient_spec(k, rng, population)
        pid = spec.patient["id"]
        ids.append(pid)
        truth_path = root / TRUTH_DIR / f"{pid}.json"
        if (root / pid).is_dir() and truth_path.is_file():
            try:
                if json.loads(truth_path.read_text(encoding="utf-8")).get("cohort_seed") == seed:
                    continue
            except (OSError, ValueError):
                pass
        report(progress, k / n, f"patient {k + 1}/{n}")
        sim_seed = int(rng.integers(0, 2**31 - 1))
        sim = simulate(sim_seed, options, spec=spec)
        tmp = Path(tempfile.mkdtemp(prefix=f".{pid}-", dir=root))
        try:
            write_demo_dicom(sim, tmp)
            if (root / pid).exists():
                shutil.rmtree(root / pid)
            os.replace(tmp, root / pid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        truth = dict(sim.truth)
        truth.update({"cohort_seed": seed, "population_draw": drawn,
                      "population_parametrisation": "see cohort-truth.json"})
        truth_path.write_text(json.dumps(truth, indent=1), encoding="utf-8")
    truth_all = {
        "schema": "theratwin-demo-cohort/1",
        "generator": f"theratwin.cohort.demo {__version__}",
        "seed": seed,
        "n_patients": n,
        "patients": ids,
        "population": population.to_dict(),
        "imaging": "theratwin.demo fast grid (SPECT 9.6 mm, CT 4.8 mm), noise, blur, patient motion",
        "note": "Synthetic patients for tests, benchmarks and tutorials (research use).",
    }
    (root / COHORT_TRUTH).write_text(json.dumps(truth_all, indent=2), encoding="utf-8")
    (root / CONFIG_FILE).write_text(json.dumps(demo_config(PipelineConfig(stages=COHORT_STAGES)).to_dict(),
                                               indent=2), encoding="utf-8")
    report(progress, 1.0, f"{n} patients in {root}")
    return DemoCohort(root, ids, truth_all)

