"""Results of a pipeline run: per cycle and structure, maps, the twin, warnings and provenance.

Stages fill these objects; exporters (DICOM, FHIR, report) read them. ``Results.to_dict()`` is what
``results.json`` contains. Every quantity carries its unit in its name. Fields a stage has not filled are
``None`` (and omitted from JSON), so an exporter can tell "not computed" from zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import numpy as np

from ._files import atomic_write
from ._version import __version__
from .study import ImageVolume, Study

__all__ = [
    "RESEARCH_USE_NOTICE",
    "CUMULATIVE",
    "MapName",
    "map_name",
    "parse_map_name",
    "RunWarning",
    "MethodRecord",
    "StructureResult",
    "CycleResult",
    "Results",
    "to_jsonable",
]

RESEARCH_USE_NOTICE = (
    "RESEARCH USE ONLY. Not validated for clinical decisions. Computed by TheraTwin "
    f"{__version__}; verify against an independent dosimetry before use."
)

#: The "cycle" part of the names of maps summed over every cycle (``cumulative/dose``, ``cumulative/bed``).
CUMULATIVE: Final = "cumulative"


class MapName(NamedTuple):
    """The parts of a map name (:func:`parse_map_name`): the cycle number (None for a cumulative map) and the kind
    (``tia``, ``tia_sd``, ``effective_half_life``, ``dose``, ``dose_as_imaged``, ``bed`` ...)."""

    cycle: int | None
    kind: str

    @property
    def cumulative(self) -> bool:
        """True for a map summed over every cycle (``cumulative/...``), which has no cycle number."""
        return self.cycle is None


def map_name(cycle: int | Literal["cumulative"], kind: str) -> str:
    """The key of a map in :attr:`Results.maps`: ``map_name(1, "dose")`` is ``"cycle1/dose"``,
    ``map_name(CUMULATIVE, "bed")`` is ``"cumulative/bed"``.

    The same names are the maps' names in ``results.json``, their RT Dose file names and their Slicer node names,
    so they are built here only.
    """
    if cycle == CUMULATIVE:
        return f"{CUMULATIVE}/{kind}"
    if isinstance(cycle, bool) or not isinstance(cycle, (int, np.integer)):
        raise TypeError(f"map_name: cycle must be a cycle number or {CUMULATIVE!r}, not {cycle!r}")
    return f"cycle{int(cycle)}/{kind}"


def parse_map_name(name: str) -> MapName | None:
    """The cycle and kind of a map name made by :func:`map_name` (None for any other name).

    >>> parse_map_name("cycle2/dose")
    MapName(cycle=2, kind='dose')
    >>> parse_map_name("cumulative/bed").cumulative
    True
    """
    head, sep, kind = name.partition("/")
    if not sep or not kind or "/" in kind:
        return None
    if head == CUMULATIVE:
        return MapName(None, kind)
    number = head[len("cycle"):]
    if head.startswith("cycle") and number.isascii() and number.isdigit():
        return MapName(int(number), kind)
    return None


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values, datetimes and Enums to plain JSON types (None fields dropped)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)
                if getattr(obj, f.name) is not None and not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class RunWarning:
    """Something the user must know about a result (fallback model, poor fit, misregistration ...)."""

    stage: str
    message: str
    structure: str | None = None
    cycle: int | None = None
    severity: str = "warning"  # "info" | "warning" | "error"


@dataclass
class MethodRecord:
    """How a result was computed (goes into the SR, FHIR Provenance and the report)."""

    stage: str
    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    software: str = "TheraTwin"
    version: str = __version__


@dataclass
class StructureResult:
    """All results for one structure in one cycle (fields in the unit their name says).

    The kinetics stage fills the TAC and TIA fields, dosimetry the dose fields, radiobiology BED/EQD2 and the
    cumulative fields, the twin the ``predicted_*`` and ``estimated_by_twin`` fields.
    """

    structure: str
    cycle: int
    volume_mL: float | None = None
    mass_g: float | None = None
    # time-activity curve (kinetics)
    time_h: list[float] | None = None
    activity_MBq: list[float] | None = None
    activity_sd_MBq: list[float] | None = None
    # time-integrated activity (kinetics)
    tia_MBq_h: float | None = None
    tia_sd_MBq_h: float | None = None
    tia_method: str | None = None  # e.g. "fit:biexp_uptake", "model_average", "hanscheid", "twin"
    kinetic_model: str | None = None
    kinetic_params: dict[str, float] | None = None
    model_weights: dict[str, float] | None = None
    effective_half_life_h: float | None = None
    residence_time_h: float | None = None  # TIA / administered activity
    fit_quality: dict[str, float] | None = None
    # absorbed dose (dosimetry)
    mean_dose_Gy: float | None = None
    mean_dose_sd_Gy: float | None = None
    dose_per_activity_Gy_per_GBq: float | None = None
    dose_method: str | None = None
    dvh: dict[str, Any] | None = None  # {"dose_Gy": [...], "volume_fraction": [...]} cumulative
    dvh_metrics: dict[str, float] | None = None  # Dmin_Gy, Dmax_Gy, D2_Gy, D50_Gy, D98_Gy, V20Gy_fraction ...
    organ_s_value_dose_Gy: float | None = None  # MIRD organ/sphere S-value dose, for comparison
    mean_dose_as_imaged_Gy: float | None = None  # mean of the voxel dose map before partial-volume correction
    # partial-volume record: {"too_small", "threshold_mL", "largest_part_mL", "system_fwhm_mm",
    # "recovery_coefficient", "correction", ...} (dosimetry)
    partial_volume: dict[str, Any] | None = None
    # radiobiology
    bed_Gy: float | None = None
    eqd2_Gy: float | None = None
    geud_Gy: float | None = None
    alpha_beta_Gy: float | None = None
    repair_half_time_h: float | None = None
    cumulative_dose_Gy: float | None = None
    cumulative_bed_Gy: float | None = None
    cumulative_eqd2_Gy: float | None = None
    limit: dict[str, Any] | None = None  # {"quantity": "BED", "value_Gy": 40, "reference": "..."}
    # twin
    estimated_by_twin: dict[str, float] | None = None  # {"tia_MBq_h", "sd", "low", "high"} for sparse cycles

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``results.json``): the fields that are set, numpy values and non-finite floats
        made JSON-safe (NaN -> null)."""
        return {k: to_jsonable(v) for k, v in asdict(self).items() if v is not None}


@dataclass
class CycleResult:
    """Results of one cycle: its administration and one :class:`StructureResult` per structure."""

    cycle: int
    administered_MBq: float
    administration_start: datetime
    radiopharmaceutical: str
    nuclide: str
    time_points_h: list[float]
    structures: dict[str, StructureResult] = field(default_factory=dict)

    def structure(self, name: str) -> StructureResult:
        """The :class:`StructureResult` of structure ``name`` in this cycle, created empty the first time
        it is asked for."""
        if name not in self.structures:
            self.structures[name] = StructureResult(structure=name, cycle=self.cycle)
        return self.structures[name]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: administration (MBq, ISO 8601 start, radiopharmaceutical, nuclide), imaging times
        (h) and structures."""
        return {
            "cycle": self.cycle,
            "administered_MBq": self.administered_MBq,
            "administration_start": self.administration_start.isoformat(),
            "radiopharmaceutical": self.radiopharmaceutical,
            "nuclide": self.nuclide,
            "time_points_h": to_jsonable(self.time_points_h),
            "structures": {k: v.to_dict() for k, v in self.structures.items()},
        }


@dataclass
class Results:
    """Everything a pipeline run produced.

    Attributes
    ----------
    study
        The study the results belong to (not serialised; ``study_summary`` is).
    cycles
        ``{cycle number: CycleResult}``.
    maps
        Named image volumes, e.g. ``"cycle1/tia"`` (Bq·h/mL), ``"cycle1/dose"`` (Gy), ``"cycle1/bed"`` (Gy),
        ``"cumulative/dose"`` (Gy), ``"cumulative/bed"`` (Gy).
    twin
        The twin stage's :class:`~theratwin.twin.output.TwinResults` (estimates, prediction, plan,
        recommendation, conflicts, forecasts), turned into a dict only in :meth:`to_dict`. Read it with
        ``theratwin.twin.TwinResults.from_results(results)`` (which also accepts the JSON form, a dict, that
        this field held before it was typed); ``results.twin["plan"]`` still gives the JSON form of one part.
        Typed ``Any`` here because the record lives in ``theratwin.twin`` (a layer above this module).
    outputs
        Files written, by kind (``"results_json"``, ``"rtdose"``, ``"sr"``, ``"seg"``, ``"fhir_bundle"``,
        ``"report_html"`` ...).
    """

    study: Study | None
    cycles: dict[int, CycleResult] = field(default_factory=dict)
    maps: dict[str, ImageVolume] = field(default_factory=dict)
    twin: Any = None
    warnings: list[RunWarning] = field(default_factory=list)
    methods: list[MethodRecord] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    software_version: str = __version__
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))

    @classmethod
    def for_study(cls, study: Study) -> Results:
        """Empty results with one :class:`CycleResult` per cycle of ``study``."""
        res = cls(study=study)
        for c in study.cycles:
            res.cycles[c.number] = CycleResult(
                cycle=c.number,
                administered_MBq=c.administration.activity_MBq,
                administration_start=c.administration.start,
                radiopharmaceutical=c.administration.radiopharmaceutical,
                nuclide=c.administration.nuclide,
                time_points_h=[float(t) for t in c.times_h],
            )
        # what the reader tolerated or assumed travels with the results (CLI, report, SR, FHIR)
        for w in getattr(study, "warnings", []):
            res.warn("read", w)
        for w in getattr(study, "plausibility_warnings", []):
            res.warn("plausibility", w, severity="error")
        for m in getattr(study, "methods", []):
            res.record_method("read", m.get("method", ""), m.get("parameters"), m.get("references"))
        return res

    def warn(self, stage: str, message: str, *, structure: str | None = None, cycle: int | None = None,
             severity: str = "warning") -> None:
        """Record something the user must know about a result (shown by the CLI, the report, the SR and FHIR).

        Parameters
        ----------
        stage
            The stage that warns (``"kinetics"``, ``"dosimetry"`` ...).
        message
            One line naming the structure, cycle or value and what it means for the result.
        structure, cycle
            What the warning is about, when it concerns one structure or one cycle.
        severity
            ``"info"``, ``"warning"`` or ``"error"`` (an implausible result).
        """
        self.warnings.append(RunWarning(stage, message, structure, cycle, severity))

    def record_method(self, stage: str, method: str, parameters: dict[str, Any] | None = None,
                      references: list[str] | None = None) -> None:
        """Record how a stage computed its results, for the SR, the FHIR Provenance and the report.

        Parameters
        ----------
        stage
            The stage (``"kinetics"``, ``"dosimetry"`` ...).
        method
            The method as a reader should see it, e.g. ``"voxel S-value convolution (DVK)"``.
        parameters
            The settings that determine the numbers (copied).
        references
            Literature of the method (copied).
        """
        self.methods.append(MethodRecord(stage, method, dict(parameters or {}), list(references or [])))

    def structure_names(self) -> list[str]:
        """Names of every structure with a result in any cycle, in the order they first appear (cycle by
        cycle)."""
        names: list[str] = []
        for c in self.cycles.values():
            for n in c.structures:
                if n not in names:
                    names.append(n)
        return names

    def to_dict(self) -> dict[str, Any]:
        """The ``theratwin-results/1`` JSON form written as ``results.json``: notice, software version,
        study summary, cycles, map geometries (not their voxels), twin results, warnings, methods and
        outputs."""
        return {
            "schema": "theratwin-results/1",
            "notice": RESEARCH_USE_NOTICE,
            "software": {"name": "TheraTwin", "version": self.software_version},
            "created": self.created.isoformat(),
            "study": self.study.summary() if self.study is not None else None,
            "cycles": {str(k): v.to_dict() for k, v in sorted(self.cycles.items())},
            "maps": {k: {"unit": v.unit, **v.geometry.to_dict()} for k, v in self.maps.items()},
            "twin": to_jsonable(self.twin),
            "warnings": [to_jsonable(w) for w in self.warnings],
            "methods": [to_jsonable(m) for m in self.methods],
            "outputs": to_jsonable(self.outputs),
            "extras": to_jsonable(self.extras),
        }

    def to_json(self, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON text (non-finite numbers are written as null).

        Raises
        ------
        ValueError
            A value is still not JSON-compliant (a bug in a ``to_dict``).
        """
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (a crash or a full disk keeps the previous file)."""
        return atomic_write(path, self.to_json())
