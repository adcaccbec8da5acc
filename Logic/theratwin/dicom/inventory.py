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
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import DicomReadError
from ..progress import ProgressCallback, report
from ._read_files import NotDicom, list_files, read_header
from ._read_integrity import check_series, duplicate_difference, unreadable_files
from ._read_model import (
    EARLIEST,
    AdministrationInfo,
    Inventory,
    PlannedCycle,
    PlannedTimePoint,
    SeriesInfo,
)
from ._read_nuclide import nuclide_from_text
from ._read_series import (
    acquisition_duration,
    acquisition_start_of,
    administration_of,
    camera_of,
    promote_converted,
    series_role,
    units_of,
)
from ._read_values import (
    DicomClock,
    clip,
    combine,
    get_int,
    get_text,
    is_internal_error,
    philips_scale,
)
from .options import ReadOptions

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

_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"



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
        promote_converted(ds)
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
            differs = duplicate_difference(first_path, first_ds, f, ds)
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
            role, note = series_role(ds)
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
                camera=camera_of(ds),
            )
            by_series[uid] = s
        s.files.append(f)
        s.datasets.append(ds)
        if damage:
            s.damaged[f] = damage
    inv.series = list(by_series.values())
    for s in inv.series:
        check_series(inv, s)
    for s in inv.series:
        try:
            acquisition_start_of(s, inv.clock)
            if s.role in ("spect", "pet"):
                problem = acquisition_duration(s)
                if problem:
                    inv.problems.append(DicomReadError(problem, path=s.first_file, tag="AcquisitionDuration"))
                s.administration = administration_of(s, inv.clock, opts.nuclide)
                units_of(s, opts)
            elif s.role == "ct":
                s.units = "HU"
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
            if is_internal_error(e):
                raise  # a bug in this reader, not the file's fault: never blamed on the file
            # corrupt values decoded lazily by pydicom: keep the series out of the grouping, say why
            s.role, s.note = "other", f"corrupt header ({type(e).__name__}: {clip(str(e), 80)}); not used"
            inv.problems.append(DicomReadError(f"corrupt header ({type(e).__name__}: {clip(str(e), 80)}).",
                                               path=s.first_file))
    unreadable_files(inv)
    _clock_notes(inv)
    _plan(inv, opts.strict)
    report(progress, 1.0, f"found {len(inv.series)} series")
    return inv


def _reason(e: DicomReadError) -> str:
    text = str(e)
    prefix = f"{e.path}: " if e.path is not None else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


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
                else EARLIEST)
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
            on_ref.sort(key=lambda s: s.acquisition_start or EARLIEST)
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

