"""Find and group the DICOM of one patient's treatment: series, administrations, time points and cycles.

:func:`scan` reads headers only (no pixel data) and never refuses data: it records what it found and what is
missing in an :class:`Inventory`, whose :meth:`Inventory.describe` is the report the CLI prints before
computing. :func:`theratwin.dicom.read_study` uses the same grouping and turns the recorded problems into
:class:`~theratwin.errors.DicomReadError`.

Grouping rules
--------------
- A *time point* is one quantitative emission series (NM reconstructed tomo, or PT). Its CT is the CT series
  with the same FrameOfReferenceUID (the closest in time if several).
- A *cycle* is the set of time points whose RadiopharmaceuticalStartDateTime agree within
  ``CYCLE_TOLERANCE_H``; cycles are numbered 1, 2, ... by administration start.
- The SEG must share the FrameOfReferenceUID of the reference time point (cycle 1, first time point).

Units and conventions
---------------------
- RadionuclideTotalDose (0018,1074) is in MBq in the NM Isotope module (PS3.3 C.8.4.10.1.7) and in Bq in the PET
  Isotope module (PS3.3 C.8.9.2); a value off by about 10^6 from a plausible activity is taken as the other unit
  and a warning recorded.
- Acquisition start: AcquisitionDateTime, else AcquisitionDate + AcquisitionTime (earliest over the instances),
  else SeriesDate + SeriesTime (with a warning). Durations: AcquisitionDuration (0018,9073, s), else the NM
  Rotation Information (view duration x views), else ActualFrameDuration (0018,1242, ms) for PT.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from ..errors import DicomReadError
from ..progress import ProgressCallback, report
from ._read_values import (
    combine,
    get_float,
    get_int,
    get_item,
    get_text,
    get_value,
    parse_da,
    parse_dt,
    parse_tm,
)

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

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PT_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PT_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")  # Enhanced, Legacy Converted
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

_ELEMENTS = {
    "lutetium": "Lu", "yttrium": "Y", "iodine": "I", "terbium": "Tb", "actinium": "Ac", "radium": "Ra",
    "lead": "Pb", "bismuth": "Bi", "holmium": "Ho", "samarium": "Sm", "rhenium": "Re", "copper": "Cu",
    "gallium": "Ga", "fluorine": "F", "technetium": "Tc", "indium": "In", "thorium": "Th", "astatine": "At",
    "scandium": "Sc", "strontium": "Sr", "erbium": "Er", "zirconium": "Zr", "thallium": "Tl",
}


def nuclide_from_text(text: str) -> str | None:
    """Canonical nuclide name (``"Lu-177"``) from texts such as ``"^177^Lutetium"``, ``"Lu-177"``,
    ``"177Lu"``, ``"Lutetium-177"`` or ``"Lu-177-PSMA-617"``; None if no nuclide can be recognised."""
    if not text:
        return None
    s = text.replace("^", " ").replace("_", " ")
    m = re.search(r"(\d{1,3})\s*m?\s*-?\s*([A-Za-z]{3,})", s)  # 177 Lutetium
    if m and m[2].lower() in _ELEMENTS:
        return f"{_ELEMENTS[m[2].lower()]}-{int(m[1])}"
    m = re.search(r"([A-Za-z]{3,})\s*-?\s*(\d{1,3})", s)  # Lutetium-177
    if m and m[1].lower() in _ELEMENTS:
        return f"{_ELEMENTS[m[1].lower()]}-{int(m[2])}"
    symbols = {v.lower(): v for v in _ELEMENTS.values()}
    m = re.search(r"(?<![A-Za-z])([A-Za-z]{1,2})\s*-?\s*(\d{1,3})(?!\d)", s)  # Lu-177, Lu177
    if m and m[1].lower() in symbols:
        return f"{symbols[m[1].lower()]}-{int(m[2])}"
    m = re.search(r"(?<!\d)(\d{1,3})\s*-?\s*([A-Za-z]{1,2})(?![A-Za-z])", s)  # 177Lu
    if m and m[2].lower() in symbols:
        return f"{symbols[m[2].lower()]}-{int(m[1])}"
    return None


def _nuclide_from_code(value: str, scheme: str) -> str | None:
    """Look a radionuclide code up in DICOM CID 18 (pydicom's copy of PS3.16) and read its meaning."""
    try:
        from pydicom.sr._concepts_dict import concepts
    except ImportError:  # pragma: no cover - pydicom always ships it
        return None
    table: dict[str, dict[str, tuple[str, list[int]]]] = concepts.get(  # type: ignore[assignment]
        "SCT" if scheme in ("SCT", "SNM3", "SRT") else scheme, {})
    for entry in table.values():
        if value in entry:
            meaning, cids = entry[value]
            if 18 in cids or "^" in meaning:
                return nuclide_from_text(meaning)
    return None


@dataclass
class AdministrationInfo:
    """What the RadiopharmaceuticalInformationSequence of a series says (None when absent)."""

    radiopharmaceutical: str = ""
    nuclide: str | None = None
    nuclide_source: str = ""
    start: datetime | None = None
    start_source: str = ""
    start_time_of_day: timedelta | None = None  # RadiopharmaceuticalStartTime when no DateTime is given
    activity_MBq: float | None = None
    activity_note: str = ""


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
    warnings: list[str] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list, repr=False)

    @property
    def first_file(self) -> Path | None:
        return self.files[0] if self.files else None


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
    ``warnings`` are tolerated oddities; ``skipped`` are files that are not usable DICOM, with the reason.
    """

    root: Path
    series: list[SeriesInfo] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    cycles: list[PlannedCycle] = field(default_factory=list)
    segmentation: SeriesInfo | None = None
    problems: list[DicomReadError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def patients(self) -> dict[str, str]:
        """PatientID -> PatientName of every series found."""
        return {s.patient_id: s.patient_name for s in self.series}

    def by_role(self, role: str) -> list[SeriesInfo]:
        return [s for s in self.series if s.role == role]

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
        )
        for s in sorted(self.series, key=lambda s: (s.acquisition_start or datetime.min, s.modality)):
            when = s.acquisition_start.strftime("%Y-%m-%d %H:%M:%S") if s.acquisition_start else "no time"
            extra = f", {s.units}" if s.units else ""
            note = f" [{s.note}]" if s.note else ""
            lines.append(f"    {s.modality:<3} {when}  {len(s.files):4d} file(s){extra}  "
                         f"'{s.description}'{note}")
        for c in self.cycles:
            a = c.administration
            start = a.start.strftime("%Y-%m-%d %H:%M:%S") if a.start else "unknown start"
            act = f"{a.activity_MBq:.0f} MBq" if a.activity_MBq else "unknown activity"
            lines.append(f"  cycle {c.number}: {a.radiopharmaceutical or '?'} ({a.nuclide or '?'}) {act}, "
                         f"administered {start}")
            for i, tp in enumerate(c.time_points, start=1):
                t = f"{tp.time_h:7.2f} h" if tp.time_h is not None else "    ? h"
                ct = "CT ok" if tp.ct else "NO CT"
                dur = tp.emission.acquisition_duration_s
                dur_text = f", {dur / 60:.1f} min" if dur else ""
                lines.append(f"    time point {i}: {t} p.i. {tp.emission.modality}{dur_text}, {ct}")
            if len(c.time_points) == 1:
                lines.append("    (one time point: its TIA needs a single-time-point method or the twin's prior)")
        if self.segmentation is not None:
            lines.append(f"  segmentation: '{self.segmentation.description}' on the reference CT")
        elif self.by_role("seg"):
            lines.append("  segmentation: found, but not on the reference CT")
        else:
            lines.append("  segmentation: none (structures must be drawn or imported)")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        for s in self.series:
            for w in s.warnings:
                lines.append(f"  warning ({s.modality} '{s.description}'): {w}")
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


# ---------------------------------------------------------------------------------------------------------------
# header reading

def _list_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            out.append(Path(dirpath) / f)
    return sorted(out)


def _read_header(path: Path, strict: bool) -> Dataset:
    """Read one file's header (pixel data deferred). Raises DicomReadError for anything unusable."""
    try:
        ds = pydicom.dcmread(path, defer_size="64 KB", force=not strict)
    except pydicom.errors.InvalidDicomError as e:
        raise DicomReadError(f"not a DICOM file ({e}).", path=path) from e
    except (OSError, MemoryError) as e:
        raise DicomReadError(f"cannot be read ({e}).", path=path) from e
    except Exception as e:  # noqa: BLE001 - pydicom's parser raises many types on corrupt input
        raise DicomReadError(f"corrupt DICOM ({type(e).__name__}: {e}).", path=path) from e
    if get_text(ds, "SOPClassUID") == "" or get_text(ds, "SeriesInstanceUID") == "":
        raise DicomReadError("not a DICOM image object (no SOPClassUID or SeriesInstanceUID).", path=path,
                             tag="SOPClassUID")
    return ds


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
        return "other", f"NM {kind.lower()} data (not reconstructed tomography): not used"
    if sop in (PT_STORAGE, ENHANCED_PT_STORAGE) or modality == "PT":
        if sop == ENHANCED_PT_STORAGE:
            return "other", "Enhanced PET is not supported; export as PET Image Storage"
        return "pet", ""
    if modality == "CT":
        if sop != CT_STORAGE and sop not in ENHANCED_CT_STORAGE:
            return "other", f"CT storage class {sop} is not supported; export as (Enhanced) CT Image Storage"
        if "LOCALIZER" in image_type:
            return "other", "CT localizer (topogram): not used"
        return "ct", ""
    return "other", f"{modality or 'unknown modality'}: not used"


def _acquisition_start(s: SeriesInfo) -> None:
    starts = []
    for ds in s.datasets:
        t = parse_dt(get_value(ds, "AcquisitionDateTime"))
        if t is None:
            t = combine(parse_da(get_value(ds, "AcquisitionDate")), parse_tm(get_value(ds, "AcquisitionTime")))
        if t is not None:
            starts.append(t)
    if starts:
        s.acquisition_start = min(starts)
        s.acquisition_start_source = "AcquisitionDateTime"
        return
    ds0 = s.datasets[0]
    t = combine(parse_da(get_value(ds0, "SeriesDate")), parse_tm(get_value(ds0, "SeriesTime")))
    if t is not None:
        s.acquisition_start = t
        s.acquisition_start_source = "SeriesDateTime"
        if s.role in ("spect", "pet"):
            s.warnings.append("no AcquisitionDateTime (0008,002A); using SeriesDate/SeriesTime as acquisition start")


def _duration(s: SeriesInfo) -> None:
    ds = s.datasets[0]
    d = get_float(ds, "AcquisitionDuration")
    if d is not None and d >= 0:
        s.acquisition_duration_s = d
        return
    rot = get_value(ds, "RotationInformationSequence")
    if rot:
        total_ms = 0.0
        try:
            for item in rot:
                ms = get_float(item, "ActualFrameDuration")
                n = get_int(item, "NumberOfFramesInRotation")
                if ms is not None and n is not None:
                    total_ms += ms * n
        except TypeError:
            total_ms = 0.0
        if total_ms > 0:
            s.acquisition_duration_s = total_ms / 1000.0
            return
    if s.role == "pet":
        ms = get_float(ds, "ActualFrameDuration")
        if ms is not None and ms >= 0:
            s.acquisition_duration_s = ms / 1000.0


def _administration(s: SeriesInfo) -> AdministrationInfo | None:
    ds = s.datasets[0]
    item = get_item(ds, "RadiopharmaceuticalInformationSequence")
    if item is None:
        return None
    a = AdministrationInfo()
    a.radiopharmaceutical = get_text(item, "Radiopharmaceutical")
    if not a.radiopharmaceutical:
        code = get_item(item, "RadiopharmaceuticalCodeSequence")
        a.radiopharmaceutical = get_text(code, "CodeMeaning")
    code = get_item(item, "RadionuclideCodeSequence")
    if code is not None:
        a.nuclide = _nuclide_from_code(get_text(code, "CodeValue"), get_text(code, "CodingSchemeDesignator"))
        if a.nuclide is None:
            a.nuclide = nuclide_from_text(get_text(code, "CodeMeaning"))
        a.nuclide_source = "RadionuclideCodeSequence"
    if a.nuclide is None:
        a.nuclide = nuclide_from_text(a.radiopharmaceutical)
        a.nuclide_source = "Radiopharmaceutical" if a.nuclide else ""
    start = parse_dt(get_value(item, "RadiopharmaceuticalStartDateTime"))
    if start is not None:
        a.start, a.start_source = start, "RadiopharmaceuticalStartDateTime"
    else:
        # Time of day only: dated later from a sibling series or, failing that, the acquisition day (_plan).
        a.start_time_of_day = parse_tm(get_value(item, "RadiopharmaceuticalStartTime"))
    dose = get_float(item, "RadionuclideTotalDose")
    if dose is not None and dose > 0:
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


def _units(s: SeriesInfo) -> None:
    ds = s.datasets[0]
    if s.role == "ct":
        s.units = "HU"
        return
    if s.role == "spect":
        rw = get_value(ds, "RealWorldValueMappingSequence")
        if rw:
            try:
                for item in rw:
                    unit = get_item(item, "MeasurementUnitsCodeSequence")
                    code = get_text(unit, "CodeValue").lower().replace(" ", "")
                    if code in ("bq/ml", "bq/cm3") or get_text(item, "LUTLabel").upper() == "BQML":
                        s.units = "Bq/mL (real-world value mapping)"
                        return
            except TypeError:
                pass
        if get_text(ds, "Units").upper() == "BQML":
            s.units = "Bq/mL (Units BQML)"
            return
        s.units = ""
        return
    if s.role == "pet":
        s.units = get_text(ds, "Units").upper()


def scan(path: str | os.PathLike[str], *, strict: bool = False, progress: ProgressCallback | None = None) -> Inventory:
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

    Raises
    ------
    DicomReadError
        If ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise DicomReadError("no such file or folder; give the folder that holds the DICOM files.", path=root)
    inv = Inventory(root=root)
    files = _list_files(root)
    by_series: dict[str, SeriesInfo] = {}
    seen_instances: dict[str, Path] = {}
    for i, f in enumerate(files):
        if i % 50 == 0:
            report(progress, 0.9 * i / max(len(files), 1), f"reading DICOM headers ({i}/{len(files)})")
        try:
            ds = _read_header(f, strict)
        except DicomReadError as e:
            inv.skipped.append((f, str(e).split(": ", 1)[-1]))
            continue
        sop_uid = get_text(ds, "SOPInstanceUID")
        if sop_uid and sop_uid in seen_instances:
            # the same instance twice (an export copied twice, a DICOMDIR tree next to the files ...)
            inv.skipped.append((f, f"duplicate of {seen_instances[sop_uid]} (same SOPInstanceUID)"))
            continue
        if sop_uid:
            seen_instances[sop_uid] = f
        uid = get_text(ds, "SeriesInstanceUID")
        s = by_series.get(uid)
        if s is None:
            role, note = _series_role(ds)
            s = SeriesInfo(
                series_uid=uid,
                study_uid=get_text(ds, "StudyInstanceUID"),
                frame_of_reference_uid=get_text(ds, "FrameOfReferenceUID"),
                modality=get_text(ds, "Modality").upper() or "?",
                sop_class_uid=get_text(ds, "SOPClassUID"),
                description=get_text(ds, "SeriesDescription"),
                patient_id=get_text(ds, "PatientID"),
                patient_name=get_text(ds, "PatientName"),
                role=role,
                note=note,
                image_type=tuple(t.strip().upper() for t in get_text(ds, "ImageType").split("\\") if t.strip()),
            )
            by_series[uid] = s
        s.files.append(f)
        s.datasets.append(ds)
    inv.series = list(by_series.values())
    for s in inv.series:
        try:
            _acquisition_start(s)
            if s.role in ("spect", "pet"):
                _duration(s)
                s.administration = _administration(s)
                _units(s)
            elif s.role == "ct":
                s.units = "HU"
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
            # corrupt values decoded lazily by pydicom: keep the series out of the grouping, say why
            s.role, s.note = "other", f"corrupt header ({type(e).__name__}: {e}); not used"
    _plan(inv, strict)
    report(progress, 1.0, f"found {len(inv.series)} series")
    return inv


# ---------------------------------------------------------------------------------------------------------------
# grouping

def _problem(inv: Inventory, message: str, series: SeriesInfo | None, tag: str | None) -> None:
    inv.problems.append(DicomReadError(message, path=series.first_file if series else inv.root, tag=tag))


def _quantitative(s: SeriesInfo) -> bool:
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


def _date_time_only_starts(emission: list[SeriesInfo]) -> None:
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
            (datetime(d.year, d.month, d.day) + a.start_time_of_day - d).total_seconds()) <= 60]
        if matches:
            a.start = max(matches)
            a.start_source = "RadiopharmaceuticalStartTime dated from another series"
            s.warnings.append("no RadiopharmaceuticalStartDateTime (0018,1078); dated the injection "
                              f"{a.start.isoformat()} from another series with the same RadiopharmaceuticalStartTime")
            continue
        guess = combine(acq.date(), a.start_time_of_day)
        if guess is not None and guess <= acq:
            a.start, a.start_source = guess, "RadiopharmaceuticalStartTime+acquisition date"
            s.warnings.append("no RadiopharmaceuticalStartDateTime (0018,1078); assumed the injection was on the "
                              "day of the acquisition (RadiopharmaceuticalStartTime) - check if imaged on a later day")


def _plan(inv: Inventory, strict: bool = False) -> None:
    """Group emission series into cycles and time points, match CTs and the SEG; record problems."""
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
        _date_time_only_starts(emission)
    usable = []
    for s in emission:
        if s.role == "spect" and not s.units:
            _problem(inv, "SPECT series without quantitative units: no RealWorldValueMappingSequence (0040,9096) "
                     "item in Bq/ml (and no Units BQML). Export the reconstruction in activity concentration "
                     f"(series '{s.description}').", s, "RealWorldValueMappingSequence")
        elif s.role == "pet" and s.units not in ("BQML", "CNTS", "GML"):
            _problem(inv, f"PET series in unsupported Units '{s.units or 'none'}' (0054,1001); need BQML, CNTS with a "
                     "calibration factor, or GML (SUVbw).", s, "Units")
        a = s.administration
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
            _problem(inv, "radionuclide not recognised from RadionuclideCodeSequence (0054,0300) or "
                     "Radiopharmaceutical (0018,0031).", s, "RadionuclideCodeSequence")
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
        usable.append(s)

    # cycles by administration start
    usable.sort(key=lambda s: s.administration.start if s.administration and s.administration.start
                else datetime.min)
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
            on_ref.sort(key=lambda s: s.acquisition_start or datetime.min)
            inv.segmentation = on_ref[-1]
            if len(on_ref) > 1:
                inv.warnings.append(f"{len(on_ref)} SEG series on the reference CT; using the most recent "
                                    f"('{inv.segmentation.description}')")
        else:
            _problem(inv, "inconsistent frame of reference: the SEG's FrameOfReferenceUID (0020,0052) is not that "
                     "of the reference time point (cycle 1, first SPECT/CT); segment on that CT.", segs[0],
                     "FrameOfReferenceUID")


def _match_ct(inv: Inventory, s: SeriesInfo, cts: list[SeriesInfo]) -> SeriesInfo | None:
    same = [c for c in cts if c.frame_of_reference_uid and c.frame_of_reference_uid == s.frame_of_reference_uid]

    def gap(c: SeriesInfo) -> float:
        if c.acquisition_start is None or s.acquisition_start is None:
            return float("inf")
        return abs((c.acquisition_start - s.acquisition_start).total_seconds())

    if same:
        return min(same, key=gap)
    session = [c for c in cts if c.study_uid == s.study_uid or gap(c) <= _SAME_SESSION_H * 3600]
    if session:
        c = min(session, key=gap)
        _problem(inv, f"inconsistent frame of reference: {s.modality} series '{s.description}' has "
                 f"FrameOfReferenceUID {s.frame_of_reference_uid or '(none)'} but the CT of the same session "
                 f"('{c.description}', {c.first_file}) has {c.frame_of_reference_uid or '(none)'}. SPECT and CT of "
                 "one time point must share the frame of reference.", s, "FrameOfReferenceUID")
        return None
    when = s.acquisition_start.isoformat() if s.acquisition_start else "unknown time"
    _problem(inv, f"missing CT: no CT series shares the frame of reference of {s.modality} series "
             f"'{s.description}' ({when}); add the SPECT/CT's CT.", s, "FrameOfReferenceUID")
    return None
