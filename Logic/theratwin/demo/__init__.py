"""The built-in demo patient: a synthetic 177Lu-PSMA-617 patient written as real DICOM.

``build_demo()`` simulates (or reuses from the cache) a patient with two cycles of 7.4 GBq six weeks apart,
cycle 1 imaged at about 4, 24, 48 and 168 h and cycle 2 once at about 48 h, as quantitative SPECT (NM,
Bq/mL via Real World Value Mapping) + CT per time point and a DICOM SEG of the structures, plus the ground
truth (kinetics, time-integrated activities, volumes, masses and mean absorbed doses) in ``demo-truth.json``.

- Anatomy: :mod:`theratwin.demo.phantom` (analytic shapes, HU and densities with their sources).
- Kinetics: :mod:`theratwin.demo.kinetics` (uptake-washout per structure, literature table).
- Imaging and DICOM: :mod:`theratwin.demo.build` and ``_dicom`` (blur, Poisson noise, misalignment, NM/CT/SEG).
- Who is simulated: :mod:`theratwin.demo.spec` (identity, cycles, schedules, kinetics, body size; the cohort
  generator :mod:`theratwin.cohort.demo` draws other patients).

Example (builds the patient into the cache on first use, a minute or so)::

    from theratwin.demo import build_demo
    demo = build_demo()
    demo.dicom_dir, demo.truth["cycles"][0]["structures"]["kidneys"]["tia_MBq_h"]
"""

from .build import (
    DEFAULT_SEED,
    DEMO_PATIENT_ID,
    DEMO_PATIENT_ISSUER,
    DEMO_SCHEMA_VERSION,
    RESOLUTION_FWHM_MM,
    SENSITIVITY_CPS_PER_MBQ,
    DemoOptions,
    DemoPatient,
    DemoSimulation,
    SimulatedCycle,
    SimulatedTimePoint,
    build_demo,
    simulate,
    write_demo_dicom,
)
from .kinetics import CYCLE1_KINETICS, Component, Kinetics
from .phantom import SEG_STRUCTURES
from .spec import DEMO_PATIENT_SPEC, CycleSpec, PatientSpec

__all__ = [
    "DEMO_PATIENT_ID",
    "DEMO_PATIENT_ISSUER",
    "build_demo",
    "simulate",
    "write_demo_dicom",
    "DemoPatient",
    "DemoOptions",
    "DemoSimulation",
    "PatientSpec",
    "CycleSpec",
    "DEMO_PATIENT_SPEC",
    "SimulatedCycle",
    "SimulatedTimePoint",
    "DEMO_SCHEMA_VERSION",
    "DEFAULT_SEED",
    "SENSITIVITY_CPS_PER_MBQ",
    "RESOLUTION_FWHM_MM",
    "CYCLE1_KINETICS",
    "Kinetics",
    "Component",
    "SEG_STRUCTURES",
]
