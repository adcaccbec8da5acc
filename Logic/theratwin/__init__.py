"""TheraTwin: theranostic digital twins for radioligand therapy (research use).

Kinetic fitting, absorbed-dose calculation, radiobiology and a Bayesian patient twin for 177Lu-PSMA,
177Lu-DOTATATE and similar therapies, with DICOM (RT Dose, SR TID 1500, SEG) and FHIR R4 outputs.

Subpackages are imported on first use (``tt.kinetics``, ``tt.dosimetry`` ...), so ``import theratwin`` is
cheap and works inside Slicer's Python.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (
    ConfigurationError,
    DicomReadError,
    FitError,
    InvalidInputError,
    OutputError,
    PushError,
    TheraTwinError,
)
from .results import RESEARCH_USE_NOTICE, CycleResult, Results, StructureResult
from .study import (
    Administration,
    Cycle,
    Geometry,
    ImageVolume,
    Patient,
    Segmentation,
    Structure,
    Study,
    TimePoint,
)

_SUBPACKAGES = (
    "nuclides",
    "kinetics",
    "registration",
    "dosimetry",
    "radiobiology",
    "twin",
    "dicom",
    "fhir",
    "report",
    "demo",
    "pipeline",
    "study",
    "results",
    "errors",
    "registry",
    "progress",
)

__all__ = [
    "__version__",
    "ImageVolume",
    "Geometry",
    "Patient",
    "Administration",
    "TimePoint",
    "Cycle",
    "Structure",
    "Segmentation",
    "Study",
    "Results",
    "CycleResult",
    "StructureResult",
    "RESEARCH_USE_NOTICE",
    "TheraTwinError",
    "InvalidInputError",
    "DicomReadError",
    "FitError",
    "ConfigurationError",
    "PushError",
    "OutputError",
    *_SUBPACKAGES,
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'theratwin' has no attribute {name!r}")
