"""The reader's data model: what a scan of a folder found (series, planned cycles and time points, the inventory).

Kept apart from the code that fills it (:mod:`~theratwin.dicom.inventory`, ``_read_series``, ``_read_integrity``)
so that those modules share these classes without importing one another.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydicom.dataset import Dataset

from .._time import zone_assumed
from ..errors import DicomReadError
from ._read_values import DicomClock, clip
from .options import CameraCalibration, ReadOptions

__all__ = ["AdministrationInfo", "SeriesInfo", "PlannedTimePoint", "PlannedCycle", "Inventory", "EARLIEST"]

#: Sorts series without a time first.
EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


@dataclass
class AdministrationInfo:
    """What the RadiopharmaceuticalInformationSequence of a series says (None when absent)."""

    radiopharmaceutical: str = ""
    nuclide: str | None = None
    nuclide_source: str = ""
    nuclide_problem: str = ""
    start: datetime | None = None
    start_source: str = ""
    start_time_of_day: timedelta | None = None  # RadiopharmaceuticalStartTime when no DateTime is given
    activity_MBq: float | None = None
    activity_note: str = ""
    activity_problem: str = ""


@dataclass
class SeriesInfo:
    """One DICOM series as found on disk (headers only)."""

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    description: str
    patient_id: str
    patient_name: str
    files: list[Path] = field(default_factory=list)
    role: str = "other"  # "spect", "pet", "ct", "seg", "other"
    note: str = ""
    image_type: tuple[str, ...] = ()
    acquisition_start: datetime | None = None
    acquisition_start_source: str = ""
    acquisition_duration_s: float | None = None
    administration: AdministrationInfo | None = None
    units: str = ""
    counts: bool = False  # stored values are counts, calibrated by ``calibration``
    calibration: CameraCalibration | None = None
    camera: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    damaged: dict[Path, str] = field(default_factory=dict, repr=False)
    datasets: list[Dataset] = field(default_factory=list, repr=False)

    @property
    def first_file(self) -> Path | None:
        return self.files[0] if self.files else None

    def camera_text(self) -> str:
        c = self.camera
        text = " ".join(v for v in (c.get("manufacturer", ""), c.get("model", "")) if v) or "unknown camera"
        if c.get("serial_number"):
            text += f" SN {c['serial_number']}"
        if c.get("station"):
            text += f" (station {c['station']})"
        return text


@dataclass
class PlannedTimePoint:
    emission: SeriesInfo
    ct: SeriesInfo | None
    time_h: float | None


@dataclass
class PlannedCycle:
    number: int
    administration: AdministrationInfo
    time_points: list[PlannedTimePoint]


@dataclass
class Inventory:
    """What :func:`scan` found under a path and how it groups into cycles and time points.

    ``problems`` are the refusals :func:`~theratwin.dicom.read_study` would raise (first one first);
    ``warnings`` are tolerated oddities; ``skipped`` are files that are not DICOM (or special files), with the
    reason; ``unreadable`` are files meant to be DICOM that cannot be read (a refusal unless accepted).
    """

    root: Path
    series: list[SeriesInfo] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    cycles: list[PlannedCycle] = field(default_factory=list)
    segmentation: SeriesInfo | None = None
    problems: list[DicomReadError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    options: ReadOptions = field(default_factory=ReadOptions, repr=False)
    clock: DicomClock = field(default_factory=DicomClock, repr=False)

    @property
    def patients(self) -> dict[str, str]:
        """PatientID -> PatientName of every series found."""
        return {s.patient_id: s.patient_name for s in self.series}

    def by_role(self, role: str) -> list[SeriesInfo]:
        return [s for s in self.series if s.role == role]

    def all_warnings(self) -> list[str]:
        """Every tolerated oddity, one line each (inventory-level, then per series)."""
        out = list(self.warnings)
        for s in self.series:
            out.extend(f"{s.modality} series '{s.description}' ({s.first_file}): {w}" for w in s.warnings)
        return out

    def describe(self) -> str:
        """Human-readable report: patient, series by modality and time, cycles, problems and missing pieces."""
        lines = [f"DICOM found under {self.root}:"]
        pats = self.patients
        if pats:
            lines.append("  patient: " + "; ".join(f"{pid} ({name or 'no name'})" for pid, name in pats.items()))
        counts = Counter(s.role for s in self.series)
        lines.append(
            f"  {len(self.series)} series: {counts.get('spect', 0)} quantitative SPECT, {counts.get('pet', 0)} PET, "
            f"{counts.get('ct', 0)} CT, {counts.get('seg', 0)} SEG, {counts.get('other', 0)} other"
            + (f"; {len(self.skipped)} file(s) skipped" if self.skipped else "")
            + (f"; {len(self.unreadable)} unreadable" if self.unreadable else "")
        )
        for s in sorted(self.series, key=lambda s: (s.acquisition_start or EARLIEST, s.modality)):
            when = _when(s.acquisition_start) if s.acquisition_start else "no time"
            extra = f", {s.units}" if s.units else ""
            note = f" [{s.note}]" if s.note else ""
            lines.append(f"    {s.modality:<3} {when}  {len(s.files):4d} file(s){extra}  "
                         f"'{clip(s.description, 64)}'{note}")
        for c in self.cycles:
            a = c.administration
            start = _when(a.start) if a.start else "unknown start"
            act = f"{a.activity_MBq:.0f} MBq" if a.activity_MBq else "unknown activity"
            lines.append(f"  cycle {c.number}: {clip(a.radiopharmaceutical, 64) or '?'} ({a.nuclide or '?'}) {act}, "
                         f"administered {start}")
            if a.nuclide_source and a.nuclide_source != "RadionuclideCodeSequence (0054,0300)":
                lines.append(f"    nuclide from {a.nuclide_source}")
            for i, tp in enumerate(c.time_points, start=1):
                t = f"{tp.time_h:7.2f} h" if tp.time_h is not None else "    ? h"
                ct = "CT ok" if tp.ct else "NO CT"
                dur = tp.emission.acquisition_duration_s
                dur_text = f", {dur / 60:.1f} min" if dur else ""
                lines.append(f"    time point {i}: {t} p.i. {tp.emission.modality}{dur_text}, {ct}")
            if len(c.time_points) == 1:
                lines.append("    (one time point: its TIA needs a single-time-point method or the twin's prior)")
        if self.segmentation is not None:
            lines.append(f"  segmentation: '{clip(self.segmentation.description, 64)}' on the reference CT")
        elif self.by_role("seg"):
            lines.append("  segmentation: found, but not on the reference CT")
        else:
            lines.append("  segmentation: none (structures must be drawn or imported)")
        clock = self.clock.describe()
        if clock:
            lines.append(f"  {clock}")
        for w in self.all_warnings():
            lines.append(f"  warning: {w}")
        for p, reason in self.skipped[:10]:
            lines.append(f"  skipped {p}: {reason}")
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more skipped file(s)")
        if self.problems:
            lines.append("  PROBLEMS (the study cannot be read until fixed):")
            lines.extend(f"    - {p}" for p in self.problems)
        else:
            lines.append("  ready: every time point has its CT, administration and quantitative units")
        return "\n".join(lines)


def _when(dt: datetime) -> str:
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    off = dt.strftime("%z")
    if off:
        text += f" {off[:3]}:{off[3:]}" + ("?" if zone_assumed(dt) else "")
    return text


