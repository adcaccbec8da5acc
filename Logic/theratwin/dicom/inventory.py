"""Find and group the DICOM of one patient's treatment: series, administrations, time points and cycles.

:func:`scan` reads headers only (no pixel data) and never refuses data: it records what it found and what is
missing in an :class:`Inventory`, whose :meth:`Inventory.describe` is the report the CLI prints before
computing. :func:`theratwin.dicom.read_study` uses the same grouping and turns the recorded problems into
:class:`~theratwin.errors.DicomReadError`.

Grouping rules
--------------
- A *time point* is one quantitative emission series (NM reconstructed tomo, or PT). Its CT is the CT series
  with the same FrameOfReferenceUID (the one with most slices, then the closest in time, if several).
- A *cycle* is the set of time points whose RadiopharmaceuticalStartDateTime agree within
  ``CYCLE_TOLERANCE_H``; cycles are numbered 1, 2, ... by administration start.
- The SEG must share the FrameOfReferenceUID of the reference time point (cycle 1, first time point).

Series integrity (refused unless ``ReadOptions.accept_incomplete_series``)
-------------------------------------------------------------------------
- every file meant to be DICOM must be readable (a truncated or damaged slice is named, not skipped);
- two files with one SOPInstanceUID must hold the same content (else both are named);
- all instances of a series share PatientID, StudyInstanceUID, FrameOfReferenceUID, SOPClassUID and Modality
  (a foreign slice is named);
- a PET series holds NumberOfSlices (0054,0081) instances with distinct ImageIndex (0054,1330) values (PS3.3
  C.8.9.1, C.8.9.4); an NM stack the NumberOfSlices its instances declare.
Gaps in slice positions and header geometry that disagrees with the pixel data are refused when the volume is
stacked (:mod:`theratwin.dicom._read_images`).

Units and conventions
---------------------
- RadionuclideTotalDose (0018,1074) is in MBq in the NM Isotope module (PS3.3 C.8.4.10.1.7) and in Bq in the PET
  Isotope module (PS3.3 C.8.9.2); a value off by about 10^6 from a plausible activity is taken as the other unit
  and a warning recorded.
- Acquisition start: AcquisitionDateTime, else AcquisitionDate + AcquisitionTime (earliest over the instances),
  else SeriesDate + SeriesTime (with a warning). Durations: AcquisitionDuration (0018,9073, s), else the NM
  Rotation Information (view duration x views), else ActualFrameDuration (0018,1242, ms) for PT.
- Datetimes are timezone-aware (:mod:`theratwin._time`): the DT value's own offset, else Timezone Offset From
  UTC (0008,0201) of the instance, else the configured site zone, else this computer's zone (reported).
- The radionuclide: :mod:`theratwin.dicom._read_nuclide` (code sequence, else half-life, else ``--nuclide``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydicom.dataset import Dataset

from .._time import zone_assumed
from ..errors import DicomReadError
from ..progress import ProgressCallback, report
from ._read_files import NotDicom, content_fingerprint, list_files, read_header, same_bytes
from ._read_nuclide import identify_nuclide, nuclide_from_text
from ._read_values import (
    DicomClock,
    clip,
    combine,
    get_float,
    get_int,
    get_item,
    get_text,
    get_value,
    parse_tm,
    philips_scale,
)
from .options import CameraCalibration, ReadOptions

__all__ = [
    "AdministrationInfo",
    "SeriesInfo",
    "PlannedTimePoint",
    "PlannedCycle",
    "Inventory",
    "scan",
    "nuclide_from_text",
    "CYCLE_TOLERANCE_H",
]

#: Administrations whose start times differ by less than this are the same cycle (h).
CYCLE_TOLERANCE_H = 12.0
#: A CT acquired within this time of a SPECT in another frame of reference signals an inconsistent frame (h).
_SAME_SESSION_H = 3.0
#: Longest plausible acquisition of one emission series (s); longer values are corrupt.
_MAX_DURATION_S = 6 * 3600.0
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PT_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PT_STORAGE = ("1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1")  # Enhanced, Legacy Conv.
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")  # Enhanced, Legacy Converted
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"

#: Attributes every instance of one series must share (a differing instance is a foreign slice).
_SERIES_IDENTITY = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPClassUID", "Modality")


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
        for s in sorted(self.series, key=lambda s: (s.acquisition_start or _EARLIEST, s.modality)):
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


# ---------------------------------------------------------------------------------------------------------------
# header reading

def _series_role(ds: Dataset) -> tuple[str, str]:
    sop = get_text(ds, "SOPClassUID")
    modality = get_text(ds, "Modality").upper()
    image_type = [t.strip().upper() for t in get_text(ds, "ImageType").split("\\")]
    if sop == SEG_STORAGE or modality == "SEG":
        return "seg", ""
    if sop == NM_STORAGE or modality == "NM":
        if any(t in ("RECON TOMO", "RECON GATED TOMO") for t in image_type):
            return "spect", ""
        kind = image_type[2] if len(image_type) > 2 else "unknown"
        return "other", f"NM {clip(kind, 24).lower()} data (not reconstructed tomography): not used"
    if sop == PT_STORAGE or sop in ENHANCED_PT_STORAGE or modality == "PT":
        return "pet", ""
    if modality == "CT":
        if sop != CT_STORAGE and sop not in ENHANCED_CT_STORAGE:
            return "other", f"CT storage class {clip(sop, 64)} is not supported; export as (Enhanced) CT Image Storage"
        if "LOCALIZER" in image_type:
            return "other", "CT localizer (topogram): not used"
        return "ct", ""
    return "other", f"{clip(modality, 16) or 'unknown modality'}: not used"


def _acquisition_start(s: SeriesInfo, clock: DicomClock) -> None:
    starts = []
    emission = s.role in ("spect", "pet")
    for ds in s.datasets:
        t_dt = clock.dt(ds, "AcquisitionDateTime", ds)
        # both forms are compared for emission series (their times are the results' times)
        t_da = clock.da_tm(ds, "AcquisitionDate", "AcquisitionTime") if emission or t_dt is None else None
        if t_dt is not None and t_da is not None and abs((t_dt - t_da).total_seconds()) > 1.0:
            msg = (f"AcquisitionDateTime {t_dt.isoformat()} and AcquisitionDate/Time {t_da.isoformat()} disagree; "
                   "using AcquisitionDateTime")
            if msg not in s.warnings:
                s.warnings.append(msg)
        t = t_dt if t_dt is not None else t_da
        if t is not None:
            starts.append(t)
    if starts:
        s.acquisition_start = min(starts)
        s.acquisition_start_source = "AcquisitionDateTime"
        return
    ds0 = s.datasets[0]
    t = clock.da_tm(ds0, "SeriesDate", "SeriesTime")
    if t is not None:
        s.acquisition_start = t
        s.acquisition_start_source = "SeriesDateTime"
        if s.role in ("spect", "pet"):
            s.warnings.append("no AcquisitionDateTime (0008,002A); using SeriesDate/SeriesTime as acquisition start")


def _duration(s: SeriesInfo) -> str:
    """Set the acquisition duration; return a problem text for a corrupt value ("" when fine)."""
    ds = s.datasets[0]
    if "AcquisitionDuration" in ds:
        d = get_float(ds, "AcquisitionDuration")
        if d is None or not 0 < d <= _MAX_DURATION_S:
            return (f"AcquisitionDuration (0018,9073) {clip(get_text(ds, 'AcquisitionDuration'))!r} s is not a "
                    f"duration between 0 and {_MAX_DURATION_S:g} s.")
        s.acquisition_duration_s = d
        return ""
    rot = get_value(ds, "RotationInformationSequence")
    if rot:
        total_ms = 0.0
        try:
            for item in rot:
                ms = get_float(item, "ActualFrameDuration")
                n = get_int(item, "NumberOfFramesInRotation")
                if ms is not None and n is not None and ms > 0 and n > 0:
                    total_ms += ms * n
        except TypeError:
            total_ms = 0.0
        if 0 < total_ms <= _MAX_DURATION_S * 1000:
            s.acquisition_duration_s = total_ms / 1000.0
            return ""
    if s.role == "pet":
        durations = {get_float(d, "ActualFrameDuration") for d in s.datasets}
        if None in durations or any(ms is not None and not 0 < ms <= _MAX_DURATION_S * 1000 for ms in durations):
            if any("ActualFrameDuration" in d for d in s.datasets):
                return "ActualFrameDuration (0018,1242) is missing or not a duration in ms in some instances."
            return ""
        s.acquisition_duration_s = max(ms for ms in durations if ms is not None) / 1000.0
    return ""


def _administration(s: SeriesInfo, clock: DicomClock, given_nuclide: str | None) -> AdministrationInfo | None:
    ds = s.datasets[0]
    item = get_item(ds, "RadiopharmaceuticalInformationSequence")
    if item is None:
        return None
    a = AdministrationInfo()
    a.radiopharmaceutical = get_text(item, "Radiopharmaceutical")
    if not a.radiopharmaceutical:
        a.radiopharmaceutical = get_text(get_item(item, "RadiopharmaceuticalCodeSequence"), "CodeMeaning")
    a.radiopharmaceutical = clip(a.radiopharmaceutical, 64)
    a.nuclide, a.nuclide_source, a.nuclide_problem = identify_nuclide(item, given_nuclide)
    start = clock.dt(item, "RadiopharmaceuticalStartDateTime", ds)
    if start is not None:
        a.start, a.start_source = start, "RadiopharmaceuticalStartDateTime"
    else:
        # Time of day only: dated later from a sibling series or, failing that, the acquisition day (_plan).
        a.start_time_of_day = parse_tm(get_value(item, "RadiopharmaceuticalStartTime"))
    dose = get_float(item, "RadionuclideTotalDose")
    if dose is None and "RadionuclideTotalDose" in item and get_value(item, "RadionuclideTotalDose") is not None:
        a.activity_problem = (f"RadionuclideTotalDose (0018,1074) {clip(get_text(item, 'RadionuclideTotalDose'))!r} "
                              "is not a number.")
    elif dose is not None and dose > 0:
        if s.role == "spect":  # NM: MBq (PS3.3 C.8.4.10.1.7)
            a.activity_MBq = dose
            if dose > 1e6:
                a.activity_MBq = dose / 1e6
                a.activity_note = "RadionuclideTotalDose looks like Bq in an NM object (standard: MBq); converted"
        else:  # PET: Bq
            a.activity_MBq = dose / 1e6
            if dose < 1e5:
                a.activity_MBq = dose
                a.activity_note = "RadionuclideTotalDose looks like MBq in a PET object (standard: Bq); converted"
        if a.activity_note:
            s.warnings.append(a.activity_note)
    return a


def _rwvm_bqml(ds: Dataset) -> bool:
    """True if ``ds`` (or its shared functional groups) carries a Bq/ml Real World Value Mapping item."""
    holders = [ds]
    shared = get_item(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        holders.append(shared)
    for holder in holders:
        rw = get_value(holder, "RealWorldValueMappingSequence")
        if not rw:
            continue
        try:
            for item in rw:
                code = get_text(get_item(item, "MeasurementUnitsCodeSequence"), "CodeValue").lower().replace(" ", "")
                if code in ("bq/ml", "bq/cm3") or get_text(item, "LUTLabel").upper() == "BQML":
                    return True
        except TypeError:
            continue
    return False


def _camera(ds: Dataset) -> dict[str, str]:
    """The camera a series comes from, as camera calibrations are matched (General Equipment module)."""
    keywords = {"manufacturer": "Manufacturer", "model": "ManufacturerModelName",
                "serial_number": "DeviceSerialNumber", "station": "StationName"}
    return {key: clip(get_text(ds, kw), 64) for key, kw in keywords.items()}


def _units(s: SeriesInfo, options: ReadOptions) -> None:
    ds = s.datasets[0]
    if s.role == "ct":
        s.units = "HU"
        return
    units = get_text(ds, "Units").upper()
    if s.role == "spect":
        if _rwvm_bqml(ds):
            s.units = "Bq/mL (real-world value mapping)"
            return
        if units == "BQML":
            s.units = "Bq/mL (Units BQML)"
            return
        s.counts = True
        s.units = ""
        _match_calibration(s, options)
        return
    if s.role == "pet":
        if units:
            s.units = units
        elif len(s.datasets) == 1 and _rwvm_bqml(ds):
            s.units = "BQML"
        if s.units == "CNTS":
            s.counts = True
            _match_calibration(s, options)


def _match_calibration(s: SeriesInfo, options: ReadOptions) -> None:
    """Pick the camera calibration for a counts series (most specific match); record ambiguity as a warning."""
    nuclide = s.administration.nuclide if s.administration else None
    if nuclide is None:
        return
    cam = s.camera
    matches = [c for c in options.camera_calibrations
               if c.matches(nuclide=nuclide, manufacturer=cam.get("manufacturer", ""), model=cam.get("model", ""),
                            serial_number=cam.get("serial_number", ""), station=cam.get("station", ""))]
    if not matches:
        return
    matches.sort(key=lambda c: -c.specificity())
    best = [c for c in matches if c.specificity() == matches[0].specificity()]
    if len({c.sensitivity_cps_per_MBq for c in best}) > 1:
        s.warnings.append(f"{len(best)} camera calibrations match {s.camera_text()} for {nuclide} equally well; "
                          f"using the first ({best[0].describe()})")
    s.calibration = best[0]
    if s.role == "spect":
        s.units = f"counts, calibrated ({best[0].sensitivity_cps_per_MBq:g} cps/MBq)"


def scan(path: str | os.PathLike[str], *, strict: bool = False, progress: ProgressCallback | None = None,
         options: ReadOptions | None = None) -> Inventory:
    """Find the DICOM series under ``path`` (a folder, searched recursively, or one file) and group them.

    Reads headers only. Never refuses data: problems are recorded in the returned :class:`Inventory`.

    Parameters
    ----------
    path
        Folder or file.
    strict
        Also record files that pydicom can only read with ``force=True`` (no DICM preamble) as skipped.
    progress
        Optional callback ``(fraction, message)``.
    options
        Reader settings (site zone, nuclide, calibrations, what to accept); ``strict`` is or-ed into them.

    Raises
    ------
    DicomReadError
        If ``path`` does not exist.
    """
    opts = options or ReadOptions()
    if strict and not opts.strict:
        from dataclasses import replace

        opts = replace(opts, strict=True)
    root = Path(path)
    if not root.exists():
        raise DicomReadError("no such file or folder; give the folder that holds the DICOM files.", path=root)
    inv = Inventory(root=root, options=opts, clock=DicomClock(opts.zone()))
    files, special = list_files(root)
    inv.skipped.extend(special)
    by_series: dict[str, SeriesInfo] = {}
    seen_instances: dict[str, tuple[Path, Dataset]] = {}
    for i, f in enumerate(files):
        if i % 50 == 0:
            report(progress, 0.9 * i / max(len(files), 1), f"reading DICOM headers ({i}/{len(files)})")
        try:
            ds, damage = read_header(f, strict=opts.strict)
        except NotDicom as e:
            inv.skipped.append((f, str(e)))
            continue
        except DicomReadError as e:
            inv.unreadable.append((f, _reason(e)))
            continue
        _promote_converted(ds)
        uid = get_text(ds, "SeriesInstanceUID")
        if get_text(ds, "SOPClassUID") == "" or uid == "":
            if get_text(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID") == _DIRECTORY_STORAGE:
                inv.skipped.append((f, "a DICOMDIR (media directory), not an image"))
                continue
            missing = "SOPClassUID (0008,0016)" if get_text(ds, "SOPClassUID") == "" else "SeriesInstanceUID (0020,000E)"
            inv.unreadable.append((f, f"{missing} is missing or unreadable: not a usable DICOM object."))
            continue
        sop_uid = get_text(ds, "SOPInstanceUID")
        if sop_uid and sop_uid in seen_instances:
            first_path, first_ds = seen_instances[sop_uid]
            differs = _duplicate_difference(first_path, first_ds, f, ds)
            if differs is None:
                # the same instance twice (an export copied twice, a DICOMDIR tree next to the files ...)
                inv.skipped.append((f, f"duplicate of {first_path} (same SOPInstanceUID, same content)"))
                continue
            inv.problems.append(DicomReadError(
                f"two files carry SOPInstanceUID {clip(sop_uid, 64)} with different content ({differs} differs): "
                f"{first_path} and {f}. Remove the wrong copy.", path=f, tag="SOPInstanceUID"))
            continue
        if sop_uid:
            seen_instances[sop_uid] = (f, ds)
        s = by_series.get(uid)
        if s is None:
            role, note = _series_role(ds)
            s = SeriesInfo(
                series_uid=uid,
                study_uid=get_text(ds, "StudyInstanceUID"),
                frame_of_reference_uid=get_text(ds, "FrameOfReferenceUID"),
                modality=clip(get_text(ds, "Modality").upper(), 16) or "?",
                sop_class_uid=get_text(ds, "SOPClassUID"),
                description=clip(get_text(ds, "SeriesDescription"), 64),
                patient_id=clip(get_text(ds, "PatientID"), 64),
                patient_name=clip(get_text(ds, "PatientName"), 64),
                role=role,
                note=note,
                image_type=tuple(t.strip().upper() for t in get_text(ds, "ImageType").split("\\") if t.strip()),
                camera=_camera(ds),
            )
            by_series[uid] = s
        s.files.append(f)
        s.datasets.append(ds)
        if damage:
            s.damaged[f] = damage
    inv.series = list(by_series.values())
    for s in inv.series:
        _check_series(inv, s)
    for s in inv.series:
        try:
            _acquisition_start(s, inv.clock)
            if s.role in ("spect", "pet"):
                problem = _duration(s)
                if problem:
                    inv.problems.append(DicomReadError(problem, path=s.first_file, tag="AcquisitionDuration"))
                s.administration = _administration(s, inv.clock, opts.nuclide)
                _units(s, opts)
            elif s.role == "ct":
                s.units = "HU"
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
            # corrupt values decoded lazily by pydicom: keep the series out of the grouping, say why
            s.role, s.note = "other", f"corrupt header ({type(e).__name__}: {clip(str(e), 80)}); not used"
            inv.problems.append(DicomReadError(f"corrupt header ({type(e).__name__}: {clip(str(e), 80)}).",
                                               path=s.first_file))
    _unreadable_files(inv)
    _clock_notes(inv)
    _plan(inv, opts.strict)
    report(progress, 1.0, f"found {len(inv.series)} series")
    return inv


def _promote_converted(ds: Dataset) -> None:
    """Legacy Converted Enhanced objects keep the single-frame attributes they have no place for (Units,
    DecayCorrection, the Radiopharmaceutical Information ...) in the Unassigned Shared Converted Attributes
    Sequence (0020,9170) of the shared functional groups (PS3.3 C.7.6.16.2.25); read them as top-level ones."""
    shared = get_item(ds, "SharedFunctionalGroupsSequence")
    unassigned = get_item(shared, "UnassignedSharedConvertedAttributesSequence")
    if unassigned is None:
        return
    for elem in unassigned:
        if elem.tag not in ds:
            ds.add(elem)


def _reason(e: DicomReadError) -> str:
    text = str(e)
    prefix = f"{e.path}: " if e.path is not None else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _duplicate_difference(a: Path, ds_a: Dataset, b: Path, ds_b: Dataset) -> str | None:
    """None when two files are copies of one instance; else the first attribute whose content differs."""
    if same_bytes(a, b):
        return None
    fa, fb = content_fingerprint(ds_a, a), content_fingerprint(ds_b, b)
    for key in fa:
        if fa[key] != fb.get(key):
            return key
    return None


def _check_series(inv: Inventory, s: SeriesInfo) -> None:
    """Damaged, foreign and missing instances of one series: problems (or warnings when accepted)."""
    accept = inv.options.accept_incomplete_series
    # damaged (truncated / oversize) files whose header named this series
    for f, why in list(s.damaged.items()):
        if accept:
            _drop(s, f)
            s.warnings.append(f"{f.name}: {why}; left out (accept_incomplete_series)")
        else:
            inv.problems.append(DicomReadError(f"{why}. A slice of series '{s.description}' "
                                               f"({s.modality}) is damaged; re-export it.", path=f, tag="PixelData"))
    # foreign instances
    if len(s.datasets) > 1:
        for kw in _SERIES_IDENTITY:
            values = [get_text(d, kw) for d in s.datasets]
            common, n = Counter(values).most_common(1)[0]
            if n == len(values):
                continue
            if n * 2 == len(values):
                common = values[0]  # a tie: name the ones that differ from the first file
            odd = [f for f, v in zip(s.files, values, strict=True) if v != common]
            if accept and n * 2 > len(values):
                for f in odd:
                    _drop(s, f)
                s.warnings.append(f"{len(odd)} instance(s) with another {kw} ({', '.join(f.name for f in odd[:3])}) "
                                  "left out of the series (accept_incomplete_series)")
                continue
            other = clip(get_text(s.datasets[s.files.index(odd[0])], kw) or "(none)", 64)
            inv.problems.append(DicomReadError(
                f"foreign instance in series '{s.description}' ({s.modality}): this file has {kw} {other!r} but "
                f"{n} of the {len(values)} files of the series have {clip(common or '(none)', 64)!r} (another "
                "patient, frame of reference or SOP class stacked into the series). Remove it or re-export the "
                "series.", path=odd[0], tag=kw))
            return
    if s.role == "pet" and s.sop_class_uid == PT_STORAGE:
        _check_pet_count(inv, s, accept)
    elif s.role == "spect" and len(s.datasets) > 1:
        declared_nm = {get_int(d, "NumberOfSlices") for d in s.datasets}
        n_nm = declared_nm.pop() if len(declared_nm) == 1 else None
        if n_nm is not None and n_nm > 1 and n_nm != len(s.datasets):
            _incomplete(inv, s, f"the series has {len(s.datasets)} NM instances but NumberOfSlices (0054,0081) "
                        f"says {n_nm}", "NumberOfSlices", accept)


def _check_pet_count(inv: Inventory, s: SeriesInfo, accept: bool) -> None:
    """PET Series: NumberOfSlices instances per volume (PS3.3 C.8.9.1), ImageIndex 1..N (C.8.9.4)."""
    declared = {get_int(d, "NumberOfSlices") for d in s.datasets}
    if len(declared) != 1:
        inv.problems.append(DicomReadError(f"NumberOfSlices (0054,0081) differs between the instances of series "
                                           f"'{s.description}'.", path=s.first_file, tag="NumberOfSlices"))
        return
    n = declared.pop()
    time_slices = get_int(s.datasets[0], "NumberOfTimeSlices") or 1
    if n is None or n < 1:
        if "NumberOfSlices" in s.datasets[0]:
            inv.problems.append(DicomReadError("NumberOfSlices (0054,0081) is not a positive number.",
                                               path=s.first_file, tag="NumberOfSlices"))
        return
    expected = n * time_slices
    have = len(s.datasets)
    indices = [get_int(d, "ImageIndex") for d in s.datasets]
    if None not in indices:
        dup = [i for i, c in Counter(indices).items() if c > 1]
        if dup:
            f = s.files[indices.index(dup[0])]
            inv.problems.append(DicomReadError(f"two instances of series '{s.description}' have ImageIndex {dup[0]}.",
                                               path=f, tag="ImageIndex"))
            return
    if have < expected:
        missing = ""
        if None not in indices:
            gone = sorted(set(range(1, expected + 1)) - set(indices))  # type: ignore[arg-type]
            missing = f"; missing ImageIndex {', '.join(map(str, gone[:8]))}" + (" ..." if len(gone) > 8 else "")
        _incomplete(inv, s, f"the series holds {have} of the {expected} slices NumberOfSlices (0054,0081) declares"
                    f"{missing}", "NumberOfSlices", accept)
    elif have > expected:
        inv.problems.append(DicomReadError(f"the series '{s.description}' holds {have} instances but "
                                           f"NumberOfSlices (0054,0081) declares {expected}: a duplicated or foreign "
                                           "slice.", path=s.first_file, tag="NumberOfSlices"))


def _incomplete(inv: Inventory, s: SeriesInfo, what: str, tag: str, accept: bool) -> None:
    if accept:
        s.warnings.append(f"{what}; read as it is (accept_incomplete_series)")
    else:
        inv.problems.append(DicomReadError(f"{what}: a slice is missing. Re-export the series, or accept it "
                                           "knowingly with accept_incomplete_series.", path=s.first_file, tag=tag))


def _drop(s: SeriesInfo, f: Path) -> None:
    i = s.files.index(f)
    del s.files[i]
    del s.datasets[i]
    s.damaged.pop(f, None)


def _unreadable_files(inv: Inventory) -> None:
    for f, why in inv.unreadable:
        if inv.options.accept_incomplete_series and not inv.options.strict:
            inv.warnings.append(f"{f}: unreadable ({why}); left out (accept_incomplete_series)")
        else:
            inv.problems.append(DicomReadError(f"unreadable DICOM file: {why} It may be a slice or a time point: "
                                               "re-export it, or remove it if it does not belong here.", path=f))


def _clock_notes(inv: Inventory) -> None:
    clock = inv.clock
    for text in clock.bad_offsets:
        inv.warnings.append(f"TimezoneOffsetFromUTC (0008,0201) {clip(text)!r} is not an offset (+HHMM); ignored")
    assumed = clock.sources.get("local zone (assumed)", 0)
    given = sum(n for k, n in clock.sources.items() if k != "local zone (assumed)")
    if assumed and given:
        inv.warnings.append("some files give a timezone (DT offsets or TimezoneOffsetFromUTC) and others do not; "
                            "the latter were read in this computer's zone: set the site's zone (--timezone) if "
                            "they come from elsewhere")


# ---------------------------------------------------------------------------------------------------------------
# grouping

def _problem(inv: Inventory, message: str, series: SeriesInfo | None, tag: str | None) -> None:
    inv.problems.append(DicomReadError(message, path=series.first_file if series else inv.root, tag=tag))


def _quantitative(s: SeriesInfo) -> bool:
    if s.counts:
        return s.calibration is not None or (s.role == "pet" and s.units == "CNTS")
    return bool(s.units) if s.role == "spect" else s.units in ("BQML", "CNTS", "GML")


def _drop_companions(inv: Inventory, emission: list[SeriesInfo], strict: bool) -> list[SeriesInfo]:
    """Tolerant mode: set aside extra reconstructions of one session (same frame of reference).

    Clinical exports often hold a non-quantitative reconstruction (e.g. without attenuation correction) next to
    the quantitative one, or two quantitative ones. A non-quantitative series with a quantitative companion is
    ignored; of several quantitative ones the lowest series number is kept. Both with a warning. Strict mode
    keeps everything (and so refuses non-quantitative series).
    """
    if strict:
        return emission
    sessions: dict[str, list[SeriesInfo]] = {}
    for s in emission:
        sessions.setdefault(s.frame_of_reference_uid or s.series_uid, []).append(s)
    kept: list[SeriesInfo] = []
    for members in sessions.values():
        quantitative = [s for s in members if _quantitative(s)]
        if not quantitative or len(members) == 1:
            kept.extend(members)
            continue
        quantitative.sort(key=lambda s: (get_int(s.datasets[0], "SeriesNumber") or 0, s.series_uid))
        chosen = quantitative[0]
        kept.append(chosen)
        for s in members:
            if s is not chosen:
                s.role = "other"
                s.note = (f"another reconstruction of the same session; using '{chosen.description}'"
                          if _quantitative(s) else "not quantitative; the session has a quantitative reconstruction")
                inv.warnings.append(f"{s.modality} series '{s.description}' set aside: {s.note}")
    return kept


def _date_time_only_starts(emission: list[SeriesInfo], clock: DicomClock) -> None:
    """Give a date to injection times recorded without one (RadiopharmaceuticalStartTime only).

    Preferred: a series with a full RadiopharmaceuticalStartDateTime at the same time of day (+-1 min) within the
    14 days before the acquisition (another time point of the same cycle). Otherwise the day of the acquisition,
    which is only right for same-day imaging; both are reported as warnings.
    """
    dated = [s.administration.start for s in emission
             if s.administration is not None and s.administration.start is not None]
    for s in emission:
        a = s.administration
        if a is None or a.start is not None or a.start_time_of_day is None or s.acquisition_start is None:
            continue
        acq = s.acquisition_start
        matches = [d for d in dated if d <= acq and (acq - d).days <= 14 and abs(
            (datetime(d.year, d.month, d.day) + a.start_time_of_day - d.replace(tzinfo=None)).total_seconds()) <= 60]
        if matches:
            a.start = max(matches)
            a.start_source = "RadiopharmaceuticalStartTime dated from another series"
            s.warnings.append("no RadiopharmaceuticalStartDateTime (0018,1078); dated the injection "
                              f"{a.start.isoformat()} from another series with the same RadiopharmaceuticalStartTime")
            continue
        guess = clock.localize(combine(acq.replace(tzinfo=None).date(), a.start_time_of_day), s.datasets[0])
        if guess is not None and guess <= acq:
            a.start, a.start_source = guess, "RadiopharmaceuticalStartTime+acquisition date"
            s.warnings.append("no RadiopharmaceuticalStartDateTime (0018,1078); assumed the injection was on the "
                              "day of the acquisition (RadiopharmaceuticalStartTime) - check if imaged on a later day")


def _plan(inv: Inventory, strict: bool = False) -> None:
    """Group emission series into cycles and time points, match CTs and the SEG; record problems."""
    opts = inv.options
    pids = {s.patient_id for s in inv.series if s.role != "other"}
    if len(pids) > 1:
        _problem(inv, f"the folder mixes patients {sorted(pids)}; give one patient's DICOM at a time.",
                 None, "PatientID")
    emission = [s for s in inv.series if s.role in ("spect", "pet")]
    if not emission:
        _problem(inv, "no quantitative SPECT (NM reconstructed tomography) or PET series found.", None, "Modality")
        return
    emission = _drop_companions(inv, emission, strict)
    if not strict:
        _date_time_only_starts(emission, inv.clock)
    usable = []
    for s in emission:
        a = s.administration
        if s.counts and s.calibration is None and not (s.role == "pet" and opts.counts_calibration_Bq_per_mL):
            if s.role == "pet" and _philips_factor(s.datasets[0]):
                pass  # Philips' documented Activity Concentration Scale Factor calibrates CNTS (read.py)
            else:
                nuclide = a.nuclide if a and a.nuclide else "its nuclide"
                what = ("SPECT series without quantitative units: no RealWorldValueMappingSequence (0040,9096) item "
                        "in Bq/ml and no Units BQML, so its values are counts"
                        if s.role == "spect" else "PET series in counts (Units CNTS)")
                _problem(inv, f"{what} (series '{s.description}'). Export the reconstruction in activity "
                         "concentration, or give the camera's volume sensitivity (cps/MBq, from a phantom) for "
                         f"{s.camera_text()} and {nuclide} in the pipeline config read.camera_calibrations"
                         + (" (or read.counts_calibration_Bq_per_mL)" if s.role == "pet" else "")
                         + "; DoseCalibrationFactor (0054,1322) is never used as one.", s,
                         "RealWorldValueMappingSequence" if s.role == "spect" else "Units")
        elif s.role == "pet" and s.units not in ("BQML", "CNTS", "GML"):
            _problem(inv, f"PET series in unsupported Units '{clip(s.units) or 'none'}' (0054,1001); need BQML, CNTS "
                     "with a calibration, or GML (SUVbw).", s, "Units")
        if a is None:
            _problem(inv, "no RadiopharmaceuticalInformationSequence (0054,0016): injection time, activity and "
                     "nuclide unknown.", s, "RadiopharmaceuticalInformationSequence")
            continue
        if a.start is None:
            _problem(inv, "no injection datetime: RadiopharmaceuticalStartDateTime (0018,1078) is missing "
                     "(and RadiopharmaceuticalStartTime cannot be dated). Add the administration start.",
                     s, "RadiopharmaceuticalStartDateTime")
            continue
        if a.nuclide is None:
            _problem(inv, a.nuclide_problem or "radionuclide not recognised.", s, "RadionuclideCodeSequence")
            continue
        if a.activity_problem:
            _problem(inv, a.activity_problem, s, "RadionuclideTotalDose")
            continue
        if strict and a.activity_note:
            _problem(inv, f"{a.activity_note} (strict mode does not guess units).", s, "RadionuclideTotalDose")
            continue
        if a.activity_MBq is None:
            _problem(inv, "RadionuclideTotalDose (0018,1074) is missing or not positive: administered activity "
                     "unknown.", s, "RadionuclideTotalDose")
            continue
        if s.acquisition_start is None:
            _problem(inv, "acquisition start unknown: AcquisitionDateTime (0008,002A), AcquisitionDate/Time and "
                     "SeriesDate/Time are all missing.", s, "AcquisitionDateTime")
            continue
        if s.acquisition_start < a.start:
            _problem(inv, f"acquisition before injection: acquisition starts {s.acquisition_start.isoformat()} "
                     f"but RadiopharmaceuticalStartDateTime is {a.start.isoformat()}. Check both datetimes.",
                     s, "AcquisitionDateTime")
            continue
        if a.nuclide_source != "RadionuclideCodeSequence (0054,0300)":
            s.warnings.append(f"nuclide {a.nuclide} from {a.nuclide_source}")
        usable.append(s)

    # cycles by administration start
    usable.sort(key=lambda s: s.administration.start if s.administration and s.administration.start
                else _EARLIEST)
    groups: list[list[SeriesInfo]] = []
    for s in usable:
        start = s.administration.start  # type: ignore[union-attr]
        if groups and abs((start - groups[-1][0].administration.start).total_seconds()) <= CYCLE_TOLERANCE_H * 3600:  # type: ignore[union-attr,operator]
            groups[-1].append(s)
        else:
            groups.append([s])
    cts = inv.by_role("ct")
    for number, group in enumerate(groups, start=1):
        nuclides = {s.administration.nuclide for s in group}  # type: ignore[union-attr]
        if len(nuclides) > 1:
            _problem(inv, f"mixed radionuclides within cycle {number} (administration "
                     f"{group[0].administration.start.isoformat()}): {sorted(str(n) for n in nuclides)}. "  # type: ignore[union-attr]
                     "Each cycle must use one radionuclide.", group[-1], "RadionuclideCodeSequence")
        activities = {round(s.administration.activity_MBq, 1) for s in group}  # type: ignore[union-attr,arg-type]
        if len(activities) > 1:
            inv.warnings.append(f"cycle {number}: series disagree on the administered activity {sorted(activities)} "
                                "MBq; using the first time point's value")
        group.sort(key=lambda s: s.acquisition_start)  # type: ignore[arg-type,return-value]
        adm = group[0].administration
        tps = []
        for s in group:
            ct = _match_ct(inv, s, cts)
            t_h = (s.acquisition_start - adm.start).total_seconds() / 3600.0  # type: ignore[operator,union-attr]
            tps.append(PlannedTimePoint(s, ct, t_h))
        inv.cycles.append(PlannedCycle(number, adm, tps))  # type: ignore[arg-type]

    segs = inv.by_role("seg")
    if segs and inv.cycles:
        ref_for = inv.cycles[0].time_points[0].emission.frame_of_reference_uid
        on_ref = [s for s in segs if s.frame_of_reference_uid == ref_for]
        if on_ref:
            on_ref.sort(key=lambda s: s.acquisition_start or _EARLIEST)
            inv.segmentation = on_ref[-1]
            if len(on_ref) > 1:
                inv.warnings.append(f"{len(on_ref)} SEG series on the reference CT; using the most recent "
                                    f"('{inv.segmentation.description}')")
        else:
            _problem(inv, "inconsistent frame of reference: the SEG's FrameOfReferenceUID (0020,0052) is not that "
                     "of the reference time point (cycle 1, first SPECT/CT); segment on that CT.", segs[0],
                     "FrameOfReferenceUID")


def _philips_factor(ds: Dataset) -> bool:
    return philips_scale(ds) is not None


def _match_ct(inv: Inventory, s: SeriesInfo, cts: list[SeriesInfo]) -> SeriesInfo | None:
    same = [c for c in cts if c.frame_of_reference_uid and c.frame_of_reference_uid == s.frame_of_reference_uid]

    def gap(c: SeriesInfo) -> float:
        if c.acquisition_start is None or s.acquisition_start is None:
            return float("inf")
        return abs((c.acquisition_start - s.acquisition_start).total_seconds())

    if same:
        chosen = min(same, key=lambda c: (-_n_slices(c), gap(c)))
        if len(same) > 1:
            s.warnings.append(f"{len(same)} CT series share its frame of reference; using '{chosen.description}' "
                              f"({_n_slices(chosen)} slices, {chosen.first_file})")
        return chosen
    session = [c for c in cts if c.study_uid == s.study_uid or gap(c) <= _SAME_SESSION_H * 3600]
    if session:
        c = min(session, key=gap)
        _problem(inv, f"inconsistent frame of reference: {s.modality} series '{s.description}' has "
                 f"FrameOfReferenceUID {clip(s.frame_of_reference_uid, 64) or '(none)'} but the CT of the same session "
                 f"('{c.description}', {c.first_file}) has {clip(c.frame_of_reference_uid, 64) or '(none)'}. SPECT and "
                 "CT of one time point must share the frame of reference.", s, "FrameOfReferenceUID")
        return None
    when = s.acquisition_start.isoformat() if s.acquisition_start else "unknown time"
    if inv.options.without_ct == "water":
        s.warnings.append(f"no CT for this {s.modality} time point ({when}): water density (1 g/mL) and no CT "
                          "registration (read.without_ct = 'water')")
        return None
    _problem(inv, f"missing CT: no CT series shares the frame of reference of {s.modality} series "
             f"'{s.description}' ({when}); add the SPECT/CT's CT, or run with water density (--without-ct water).",
             s, "FrameOfReferenceUID")
    return None


def _n_slices(c: SeriesInfo) -> int:
    if len(c.datasets) == 1:
        return get_int(c.datasets[0], "NumberOfFrames") or 1
    return len(c.datasets)

