"""The study data model: patient, administrations, time points, cycles, segmentation.

Times are timezone-aware ``datetime`` objects with a fixed UTC offset (the rule is in :mod:`theratwin._time`:
the offset the DICOM gives, else the site's zone, else this computer's zone, marked as assumed); naive datetimes
given to the constructors are read in this computer's zone. ``time_h`` is always hours since the *start of
administration* of the cycle a time point belongs to, a true elapsed time also across a daylight-saving change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, cast

import numpy as np

from .._time import aware
from ..errors import InvalidInputError
from .codes import STRUCTURE_KINDS, CodedConcept, StructureKind, StructureRole, structure_kind
from .image import Geometry, ImageVolume

__all__ = ["Patient", "Administration", "TimePoint", "Cycle", "Structure", "Segmentation", "Study", "SourceRef"]


@dataclass(frozen=True)
class Patient:
    """Patient identity as DICOM carries it (PatientID is the key used for PACS and FHIR matching)."""

    patient_id: str
    name: str = ""
    birth_date: date | None = None
    sex: str = ""  # DICOM PatientSex: M, F, O or ""
    issuer: str = ""  # IssuerOfPatientID, used as the FHIR identifier system when set
    weight_kg: float | None = None
    height_m: float | None = None

    def __post_init__(self) -> None:
        if not self.patient_id or not str(self.patient_id).strip():
            raise InvalidInputError("Patient needs a non-empty PatientID (0010,0020).")
        if self.sex not in ("M", "F", "O", ""):
            raise InvalidInputError(f"PatientSex must be M, F, O or empty; got {self.sex!r}.")


@dataclass(frozen=True)
class Administration:
    """One administration of a radiopharmaceutical.

    Parameters
    ----------
    radiopharmaceutical
        Name, e.g. ``"PSMA-617"`` or ``"DOTATATE"``.
    nuclide
        Nuclide name understood by :func:`theratwin.nuclides.get` (e.g. ``"Lu-177"``).
    activity_MBq
        Administered activity at ``start`` (MBq), net of residual activity.
    start
        Start datetime of the administration.
    ligand_amount_ug
        Amount of ligand (peptide mass) administered, in µg, when known.
    """

    radiopharmaceutical: str
    nuclide: str
    activity_MBq: float
    start: datetime
    ligand_amount_ug: float | None = None
    route: str = "intravenous"

    def __post_init__(self) -> None:
        if not np.isfinite(self.activity_MBq) or self.activity_MBq <= 0:
            raise InvalidInputError(
                f"Administered activity must be positive (MBq); got {self.activity_MBq}. Check "
                "RadionuclideTotalDose (0018,1074) (MBq in NM objects, Bq in PET objects)."
            )
        if not isinstance(self.start, datetime):
            raise InvalidInputError("Administration start must be a datetime (RadiopharmaceuticalStartDateTime).")
        object.__setattr__(self, "start", aware(self.start))
        # validate the nuclide name early so errors name it
        from .. import nuclides

        nuclides.get(self.nuclide)


@dataclass(frozen=True)
class SourceRef:
    """Where an image came from in DICOM: UIDs and files (empty for images made in memory)."""

    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    modality: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    sop_class_uid: str = ""
    series_description: str = ""
    files: tuple[str, ...] = ()


@dataclass
class TimePoint:
    """One quantitative acquisition after an administration.

    Parameters
    ----------
    image
        Activity concentration in Bq/mL, decay-corrected to ``acquisition_start`` (what quantitative SPECT and
        PET with DecayCorrection START give).
    acquisition_start
        Start datetime of the acquisition.
    acquisition_duration_s
        Acquisition duration in s (for decay during acquisition and counting statistics).
    ct
        The CT of this time point, in HU, if any.
    """

    image: ImageVolume
    acquisition_start: datetime
    acquisition_duration_s: float = 0.0
    ct: ImageVolume | None = None
    source: SourceRef = field(default_factory=SourceRef)
    ct_source: SourceRef = field(default_factory=SourceRef)
    counts_per_MBq_s: float | None = None  # system sensitivity, when known, for counting-noise estimates
    calibration_note: str = ""  # how the stored values became Bq/mL (which attribute or calibration)

    def __post_init__(self) -> None:
        if not isinstance(self.acquisition_start, datetime):
            raise InvalidInputError("Acquisition start must be a datetime (AcquisitionDateTime).")
        self.acquisition_start = aware(self.acquisition_start)
        if self.image.unit not in ("Bq/mL", "BQML"):
            raise InvalidInputError(
                f"Time-point image must be in Bq/mL (quantitative SPECT/PET); got unit {self.image.unit!r} "
                f"(series {self.source.series_uid or 'in memory'}). Reconstruct with quantitative calibration."
            )
        if self.acquisition_duration_s < 0 or not np.isfinite(self.acquisition_duration_s):
            raise InvalidInputError(f"Acquisition duration must be >= 0 s; got {self.acquisition_duration_s}.")

    def time_h(self, administration: Administration) -> float:
        """Hours from the start of ``administration`` to the start of this acquisition."""
        return (self.acquisition_start - administration.start).total_seconds() / 3600.0


@dataclass
class Cycle:
    """One therapy cycle: the administration and the time points imaged after it."""

    number: int
    administration: Administration
    time_points: list[TimePoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.number < 1:
            raise InvalidInputError(f"Cycle numbers start at 1; got {self.number}.")
        self.time_points.sort(key=lambda tp: tp.acquisition_start)
        for tp in self.time_points:
            if tp.acquisition_start < self.administration.start:
                raise InvalidInputError(
                    f"Cycle {self.number}: acquisition at {tp.acquisition_start.isoformat()} (series "
                    f"{tp.source.series_uid or 'in memory'}) starts before the administration at "
                    f"{self.administration.start.isoformat()}. Check AcquisitionDateTime (0008,002A) and "
                    "RadiopharmaceuticalStartDateTime (0018,1078)."
                )

    @property
    def times_h(self) -> np.ndarray:
        """Hours since administration of each time point, sorted."""
        return np.array([tp.time_h(self.administration) for tp in self.time_points])


@dataclass(frozen=True)
class Structure:
    """A segmented structure: name, label value in the SEG, coded concept and role.

    ``kind`` supplies the SNOMED codes and the tissue key; by default it is guessed from the name.
    ``color_rgb`` is the display colour (sRGB, 0-255; DICOM SEG RecommendedDisplayCIELabValue); by default the
    kind's recommended colour.
    """

    name: str
    label: int
    kind: StructureKind = None  # type: ignore[assignment]
    color_rgb: tuple[int, int, int] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidInputError("Structure names must be non-empty.")
        if self.label < 1:
            raise InvalidInputError(f"Structure '{self.name}': label must be >= 1; got {self.label}.")
        # None is the dataclass default, filled here (the field's type is what a constructed Structure holds)
        kind = cast("StructureKind | None", self.kind)
        if kind is None:
            kind = structure_kind(self.name)
            object.__setattr__(self, "kind", kind)
        if cast("tuple[int, int, int] | None", self.color_rgb) is None:
            object.__setattr__(self, "color_rgb", kind.color_rgb)
        color = tuple(int(c) for c in self.color_rgb)
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise InvalidInputError(f"Structure '{self.name}': color_rgb must be three integers 0-255; got "
                                    f"{self.color_rgb!r}.")
        object.__setattr__(self, "color_rgb", color)

    @property
    def role(self) -> StructureRole:
        """What the structure is for the dosimetry (body, organ at risk, organ, lesion), from its kind."""
        return self.kind.role

    @property
    def is_lesion(self) -> bool:
        """True for a tumour lesion (response is forecast for lesions, toxicity for organs at risk)."""
        return self.kind.role is StructureRole.LESION

    @property
    def property_type(self) -> CodedConcept:
        """Its DICOM SEG Segmented Property Type code (CID 7151), e.g. SCT 64033007 Kidney."""
        return self.kind.type

    @property
    def tissue(self) -> str:
        """The key of its tissue parameters (α/β, repair half-time, dose limit) in
        :mod:`theratwin.radiobiology.tissues`."""
        return self.kind.tissue

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: name, label value, kind key, display colour (sRGB 0-255), role, tissue and its category,
        type and anatomic-region codes."""
        return {
            "name": self.name,
            "label": self.label,
            "kind": self.kind.key,
            "color_rgb": list(self.color_rgb),
            "role": self.kind.role.value,
            "tissue": self.kind.tissue,
            "category": self.kind.category.to_dict(),
            "type": self.kind.type.to_dict(),
            "anatomic_region": self.kind.anatomic_region.to_dict() if self.kind.anatomic_region else None,
        }


@dataclass
class Segmentation:
    """Binary masks of named structures on one grid (structures may overlap, as in DICOM SEG).

    Parameters
    ----------
    geometry
        The grid of the masks (usually the reference CT).
    structures
        The structures, in segment-number order.
    masks
        ``{name: bool array (z, y, x)}`` on ``geometry``.
    """

    geometry: Geometry
    structures: list[Structure]
    masks: dict[str, np.ndarray]
    source: SourceRef = field(default_factory=SourceRef)

    def __post_init__(self) -> None:
        names = [s.name for s in self.structures]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"Structure names must be unique; got {names}.")
        for s in self.structures:
            if s.name not in self.masks:
                raise InvalidInputError(f"Segmentation has no mask for structure '{s.name}'.")
            m = np.asarray(self.masks[s.name])
            if m.shape != self.geometry.shape:
                raise InvalidInputError(
                    f"Mask of '{s.name}' has shape {m.shape}; the segmentation grid is {self.geometry.shape}."
                )
            self.masks[s.name] = m.astype(bool, copy=False)

    def structure(self, name: str) -> Structure:
        """The structure called ``name``.

        Raises
        ------
        InvalidInputError
            No structure has that name (the message lists the names there are).
        """
        for s in self.structures:
            if s.name == name:
                return s
        raise InvalidInputError(f"No structure named '{name}'; available: {', '.join(self.names)}.")

    @property
    def names(self) -> list[str]:
        """Names of the structures, in the order of :attr:`structures`."""
        return [s.name for s in self.structures]

    def volume_mL(self, name: str) -> float:
        """Volume of a structure in mL."""
        return float(self.masks[name].sum()) * self.geometry.voxel_volume_mL

    def fractional_mask(self, name: str, geometry: Geometry) -> np.ndarray:
        """Fraction (0..1) of each voxel of ``geometry`` covered by the structure (linear resampling of the
        mask; exact volume is kept to within the partial-voxel error at the border)."""
        if geometry.same_grid(self.geometry):
            return self.masks[name].astype(np.float32)
        vol = ImageVolume.from_geometry(self.masks[name].astype(np.float32), self.geometry, "1")
        return np.clip(vol.resample_to(geometry, order=1).array.astype(np.float32), 0.0, 1.0)

    def resampled_masks(self, geometry: Geometry, threshold: float = 0.5) -> dict[str, np.ndarray]:
        """Binary masks on another grid (voxels at least ``threshold`` covered)."""
        return {s.name: self.fractional_mask(s.name, geometry) >= threshold for s in self.structures}


@dataclass
class Study:
    """Everything the pipeline needs about one patient's treatment.

    ``cycles`` are sorted by number; ``segmentation`` is defined on the reference CT (the CT of the first time
    point of cycle 1 unless stated otherwise) and is propagated to other time points by registration.
    ``warnings`` are what the reader tolerated (they become warnings of stage ``"read"`` in the results);
    ``methods`` record how the input was interpreted (calibration, time zone, nuclide), as
    ``{"method": ..., "parameters": {...}, "references": [...]}``; ``plausibility_warnings`` are failed
    plausibility checks accepted knowingly (``plausibility.action = "warn"``).
    """

    patient: Patient
    cycles: list[Cycle]
    segmentation: Segmentation | None = None
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    description: str = ""
    reference_ct: ImageVolume | None = None
    reference_ct_source: SourceRef = field(default_factory=SourceRef)
    warnings: list[str] = field(default_factory=list)
    methods: list[dict[str, Any]] = field(default_factory=list)
    plausibility_warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.cycles:
            raise InvalidInputError(f"Study of patient {self.patient.patient_id} has no treatment cycle.")
        self.cycles.sort(key=lambda c: c.number)
        numbers = [c.number for c in self.cycles]
        if len(set(numbers)) != len(numbers):
            raise InvalidInputError(f"Cycle numbers must be unique; got {numbers}.")
        if self.reference_ct is None:
            first = self.cycles[0].time_points[0] if self.cycles[0].time_points else None
            if first is not None and first.ct is not None:
                self.reference_ct = first.ct
                self.reference_ct_source = first.ct_source

    def cycle(self, number: int) -> Cycle:
        """The cycle numbered ``number`` (1 = first administration).

        Raises
        ------
        InvalidInputError
            The study has no such cycle (the message lists the cycles it has).
        """
        for c in self.cycles:
            if c.number == number:
                return c
        raise InvalidInputError(f"No cycle {number}; the study has cycles {[c.number for c in self.cycles]}.")

    @property
    def nuclide(self) -> str:
        """The radionuclide of the first cycle's administration, e.g. ``"Lu-177"`` (a name
        :func:`theratwin.nuclides.get` knows)."""
        return self.cycles[0].administration.nuclide

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description of what the study holds (for results.json and the CLI)."""
        return {
            "patient_id": self.patient.patient_id,
            "study_uid": self.study_uid,
            "structures": [s.to_dict() for s in self.segmentation.structures] if self.segmentation else [],
            "cycles": [
                {
                    "cycle": c.number,
                    "radiopharmaceutical": c.administration.radiopharmaceutical,
                    "nuclide": c.administration.nuclide,
                    "administered_MBq": c.administration.activity_MBq,
                    "administration_start": c.administration.start.isoformat(),
                    "ligand_amount_ug": c.administration.ligand_amount_ug,
                    "time_points": [
                        {
                            "acquisition_start": tp.acquisition_start.isoformat(),
                            "time_h": tp.time_h(c.administration),
                            "acquisition_duration_s": tp.acquisition_duration_s,
                            "series_uid": tp.source.series_uid,
                            "modality": tp.source.modality,
                        }
                        for tp in c.time_points
                    ],
                }
                for c in self.cycles
            ],
        }


def default_structures() -> list[Structure]:  # pragma: no cover - convenience for interactive use
    """One structure per built-in kind, labelled 1..N."""
    return [Structure(k, i + 1, STRUCTURE_KINDS[k]) for i, k in enumerate(STRUCTURE_KINDS)]
