"""Read one patient's quantitative SPECT/PET + CT (+ SEG) DICOM into a :class:`~theratwin.study.Study`.

See :mod:`theratwin.dicom.inventory` for how series are grouped into time points and cycles and
:mod:`theratwin.dicom._read_images` for units, geometry and decay-correction conventions. Images of time points
end up in Bq/mL decay-corrected to their acquisition start; CTs in HU; times in hours since the start of the
administration of the cycle; datetimes timezone-aware (:mod:`theratwin._time`).

Decay correction of PET (PS3.3 PET Series Module: Decay Correction, Series Date/Time; PET Image Module C.8.9.4),
slice by slice:

- START: all images of the series are corrected to one time, the acquisition start; it is taken from
  DecayCorrectionDateTime (0018,9701), else the Series Date/Time (Type 1 in PET, the series reference time);
  ADMIN: DecayCorrectionDateTime, else the injection. ``c(t0) = c(ref) exp(-lambda (t0 - ref))`` with t0 the
  acquisition start of the time point.
- NONE: each slice is the average over its own frame [AcquisitionDateTime, + ActualFrameDuration] (C.8.9.4.1.6;
  multi-bed series have a time per bed), ``c(t_i) = c_avg lambda T / (1 - exp(-lambda T))``, then
  ``c(t0) = c(t_i) exp(lambda (t_i - t0))``. Frame Reference Time (0054,1300), "the time that the pixel values
  occurred" as an offset from the Series reference time (C.8.9.4.1.5, e.g. T_ave = ln(lambda T / (1 - exp(-lambda
  T))) / lambda into the frame), is checked against this and a disagreement reported.
- Rescale Intercept "is always zero for PET images" (C.8.9.4): another value is reported (refused when strict).

Counts (Units CNTS, or NM without a Bq/ml mapping) become Bq/mL only through a calibration the user gives
(:mod:`theratwin.dicom.options`); the conversion is recorded in the study's methods.

Every refusal is a :class:`~theratwin.errors.DicomReadError` naming the file and tag. A Python error raised while
pydicom decodes a corrupt value is the file's fault and becomes one too; any other is a TheraTwin bug and is
raised as it is (the CLI reports it as an internal error).
"""

from __future__ import annotations

import contextvars
import math
import os
import struct
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from .. import nuclides
from .._time import zone_assumed
from ..errors import DicomReadError, InvalidInputError, TheraTwinError
from ..plausibility import check_study
from ..progress import ProgressCallback, report, scaled
from ..study.image import ImageVolume
from ..study.model import Administration, Cycle, Patient, Segmentation, SourceRef, Study, TimePoint
from ._read_images import decay_factor_to_start, read_volume
from ._read_seg import read_seg
from ._read_values import (
    DicomClock,
    checked_float,
    clip,
    get_float,
    get_text,
    get_value,
    parse_da,
    philips_scale,
    raised_by_pydicom,
)
from .inventory import Inventory, PlannedTimePoint, SeriesInfo, scan
from .options import ReadOptions

__all__ = ["read_study", "philips_scale"]

# Exceptions pydicom and numpy raise when a corrupt value is decoded lazily (see read_study).
_CORRUPT_VALUE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, EOFError,
                         struct.error, UnicodeError, NotImplementedError, RecursionError)
_CURRENT_FILE: contextvars.ContextVar[object] = contextvars.ContextVar("theratwin_dicom_file", default=None)
_REFERENCES_COUNTS = [
    "Ljungberg M, et al. MIRD Pamphlet No. 26: Joint EANM/MIRD guidelines for quantitative 177Lu SPECT applied "
    "for dosimetry of radiopharmaceutical therapy. J Nucl Med 2016;57:151-62.",
    "Dickson JC, et al. EANM practice guideline for quantitative SPECT-CT. Eur J Nucl Med Mol Imaging "
    "2023;50:980-95.",
]


def read_study(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    progress: ProgressCallback | None = None,
    counts_calibration_Bq_per_mL: float | None = None,
    options: ReadOptions | None = None,
) -> Study:
    """Read a folder of DICOM (one patient) into a :class:`~theratwin.study.Study`.

    Parameters
    ----------
    path
        Folder (searched recursively) or file.
    strict
        Refuse rather than tolerate oddities: files that are not DICOM with a preamble, slightly non-orthogonal
        orientations, 1-5 % slice-spacing irregularities, injection times without a date, a
        RadionuclideTotalDose that looks like the other unit (Bq vs MBq), extra reconstructions of a session.
    progress
        Optional callback ``(fraction, message)``.
    counts_calibration_Bq_per_mL
        For PET/SPECT stored in counts (Units CNTS): Bq/mL per count value (same as
        ``options.counts_calibration_Bq_per_mL``).
    options
        Every reader setting (site zone, nuclide, camera calibrations, incomplete series, missing CT,
        plausibility); ``strict`` and ``counts_calibration_Bq_per_mL`` override theirs when given.

    Returns
    -------
    Study
        Cycles (by administration start) with time points (emission image in Bq/mL at acquisition start, CT in
        HU), the segmentation on the reference CT if a SEG was found, the patient, and what the reader tolerated
        (``warnings``) or assumed (``methods``).

    Raises
    ------
    DicomReadError
        With the file and DICOM keyword, for: no injection datetime, acquisition before injection, SPECT without
        quantitative units or calibration, mixed radionuclides within one cycle, missing CT, inconsistent frame of
        reference, damaged, foreign, duplicated or missing slices, unreadable or inconsistent image data, and
        failed plausibility checks (``plausibility.action = "stop"``).
    """
    opts = options or ReadOptions()
    if strict and not opts.strict:
        opts = replace(opts, strict=True)
    if counts_calibration_Bq_per_mL is not None:
        opts = replace(opts, counts_calibration_Bq_per_mL=counts_calibration_Bq_per_mL)
    try:
        return _read_study(path, opts, progress)
    except DicomReadError:
        raise
    except InvalidInputError as e:
        # a model constructor refusing what a file gave (a grid, a label ...): name the file being read
        if _CURRENT_FILE.get() is None:
            raise
        raise DicomReadError(str(e), path=_CURRENT_FILE.get()) from e
    except TheraTwinError:
        raise
    except _CORRUPT_VALUE_ERRORS as e:
        if not raised_by_pydicom(e.__traceback__):
            raise  # a TheraTwin bug, not the file's fault: report it as one
        # Safety net for corrupt values that pydicom only decodes on access (documented: every refusal is a
        # DicomReadError); the file is the one being decoded when known.
        raise DicomReadError(f"corrupt or unreadable DICOM value ({type(e).__name__}: {clip(str(e), 160)}); check "
                             "the file with dciodvfy.", path=_CURRENT_FILE.get(), tag=None) from e


def _read_study(path: str | os.PathLike[str], opts: ReadOptions, progress: ProgressCallback | None) -> Study:
    _CURRENT_FILE.set(None)
    inv = scan(path, options=opts, progress=scaled(progress, 0.0, 0.3))
    if opts.strict and inv.skipped:
        p, reason = inv.skipped[0]
        raise DicomReadError(f"not readable as DICOM in strict mode: {reason}", path=p)
    if inv.problems:
        raise inv.problems[0]
    _CURRENT_FILE.set(inv.cycles[0].time_points[0].emission.first_file if inv.cycles else None)
    if not inv.cycles:  # pragma: no cover - _plan records a problem whenever no cycle is found
        raise DicomReadError("no usable time point found.", path=inv.root)

    first = inv.cycles[0].time_points[0]
    patient = _patient(first.emission)
    n_tp = sum(len(c.time_points) for c in inv.cycles)
    done = 0
    cycles: list[Cycle] = []
    reference_ct: ImageVolume | None = None
    notes: list[str] = []
    methods: list[dict] = []
    for planned in inv.cycles:
        a = planned.administration
        try:
            adm = Administration(a.radiopharmaceutical or "unknown", a.nuclide or "", float(a.activity_MBq or 0.0),
                                 a.start)  # type: ignore[arg-type]
        except InvalidInputError as e:
            raise DicomReadError(str(e), path=planned.time_points[0].emission.first_file,
                                 tag="RadiopharmaceuticalInformationSequence") from e
        if a.nuclide_source and a.nuclide_source != "RadionuclideCodeSequence (0054,0300)":
            methods.append({"method": f"cycle {planned.number}: radionuclide {a.nuclide} from {a.nuclide_source}",
                            "parameters": {"cycle": planned.number, "nuclide": a.nuclide}})
        tps: list[TimePoint] = []
        for ptp in planned.time_points:
            report(progress, 0.3 + 0.6 * done / n_tp, f"reading cycle {planned.number} time point "
                   f"{len(tps) + 1} ({ptp.time_h:.1f} h)")
            tp = _time_point(ptp, adm, opts, inv.clock, notes, methods)
            tps.append(tp)
            if reference_ct is None:
                reference_ct = tp.ct
            done += 1
        try:
            cycles.append(Cycle(planned.number, adm, tps))
        except InvalidInputError as e:
            raise DicomReadError(str(e), path=planned.time_points[0].emission.first_file,
                                 tag="AcquisitionDateTime") from e

    segmentation: Segmentation | None = None
    if inv.segmentation is not None:
        report(progress, 0.92, "reading segmentation")
        seg_series = inv.segmentation
        if len(seg_series.files) != 1:
            notes.append(f"SEG series has {len(seg_series.files)} objects; reading the first")
        ds = seg_series.datasets[0]
        _CURRENT_FILE.set(seg_series.files[0])
        ref_tp = cycles[0].time_points[0]
        segmentation = read_seg(ds, seg_series.files[0], reference_ct.geometry if reference_ct else None,
                                strict=opts.strict, reference_sops=set(ref_tp.ct_source.sop_instance_uids))
    study = Study(
        patient=patient,
        cycles=cycles,
        segmentation=segmentation,
        study_uid=first.emission.study_uid,
        frame_of_reference_uid=first.emission.frame_of_reference_uid,
        description=clip(get_text(first.emission.datasets[0], "StudyDescription"), 64),
        warnings=[*inv.all_warnings(), *notes],
        methods=[_time_method(inv, cycles), *methods],
    )
    _plausibility(study, opts)
    report(progress, 1.0, f"read {n_tp} time point(s) in {len(cycles)} cycle(s)")
    return study


def _time_method(inv: Inventory, cycles: list[Cycle]) -> dict:
    """How the datetimes got their offsets (an assumed zone is said here and in the inventory report)."""
    start = cycles[0].administration.start
    rule = ("the DT values' own offsets, else TimezoneOffsetFromUTC (0008,0201), else "
            + (f"the site zone {inv.options.timezone}" if inv.options.timezone else "this computer's zone"))
    assumed = any(zone_assumed(c.administration.start) for c in cycles)
    return {"method": f"Datetimes made timezone-aware ({rule}; PS3.3 C.12.1.1.8); time since injection is elapsed "
                      "time across zones and daylight-saving changes"
                      + (f". The files carry no zone: read in this computer's zone (UTC{start.strftime('%z')})"
                         if assumed else ""),
            "parameters": {"sources": dict(inv.clock.sources), "administration_start": start.isoformat(),
                           "zone_assumed": assumed},
            "references": ["DICOM PS3.3 C.12.1.1.8 Timezone Offset From UTC"]}


def _plausibility(study: Study, opts: ReadOptions) -> None:
    cfg = opts.plausibility
    for finding in check_study(study, cfg):
        if finding.stops and cfg.action == "stop":
            raise DicomReadError(finding.message + ' To proceed knowingly, set plausibility.action = "warn" in the '
                                 "pipeline config.", path=finding.path, tag=finding.tag)
        if finding.stops:
            study.plausibility_warnings.append(finding.message)
        else:
            study.warnings.append(finding.message)


def _patient(s: SeriesInfo) -> Patient:
    ds = s.datasets[0]
    sex = get_text(ds, "PatientSex").upper()
    weight = get_float(ds, "PatientWeight")
    height = get_float(ds, "PatientSize")
    pid = clip(get_text(ds, "PatientID"), 64)
    if not pid:
        raise DicomReadError("PatientID (0010,0020) is empty.", path=s.first_file, tag="PatientID")
    return Patient(
        patient_id=pid,
        name=clip(get_text(ds, "PatientName"), 64),
        birth_date=parse_da(get_value(ds, "PatientBirthDate")),
        sex=sex if sex in ("M", "F", "O") else "",
        issuer=clip(get_text(ds, "IssuerOfPatientID"), 64),
        weight_kg=weight if weight and 0 < weight < 700 else None,
        height_m=height if height and 0 < height < 3 else None,
    )


def _source(s: SeriesInfo, ordered: list) -> SourceRef:
    return SourceRef(
        study_uid=s.study_uid,
        series_uid=s.series_uid,
        frame_of_reference_uid=s.frame_of_reference_uid,
        modality=s.modality,
        sop_instance_uids=tuple(get_text(d, "SOPInstanceUID") for d in ordered),
        sop_class_uid=s.sop_class_uid,
        series_description=s.description,
        files=tuple(str(f) for f in s.files),
    )


def _time_point(ptp: PlannedTimePoint, adm: Administration, opts: ReadOptions, clock: DicomClock,
                notes: list[str], methods: list[dict]) -> TimePoint:
    s = ptp.emission
    assert s.acquisition_start is not None
    if s.role == "spect":
        kind = "nm_counts" if s.counts else "nm"
    else:
        kind = "pt"
    _CURRENT_FILE.set(s.first_file)
    found: list[str] = []
    vol, ordered = read_volume(s.datasets, s.files, kind=kind, strict=opts.strict, unit="Bq/mL", warnings=found)
    values = vol.array.astype(np.float64)
    nuc = nuclides.get(adm.nuclide)
    duration_s = s.acquisition_duration_s or 0.0
    ds0 = s.datasets[0]
    if kind == "pt":
        values, note = _pet_to_Bq_per_mL(values, s, adm, opts, vol.geometry.voxel_volume_mL, methods)
        factors = _pet_decay_factors(ordered, s, adm, nuc.half_life_h, clock, found)
        values = values * factors[:, None, None]
    elif kind == "nm_counts":
        values, note = _counts_to_Bq_per_mL(values, s, nuc.half_life_h, vol.geometry.voxel_volume_mL, methods)
    else:
        note = ("Real World Value Mapping (0040,9096) in Bq/ml" if get_value(ds0, "RealWorldValueMappingSequence")
                else "Units BQML x RescaleSlope")
        values = values * _nm_decay_to_start(ds0, s, adm, nuc.half_life_h, duration_s, clock)
    if kind in ("nm", "pt"):
        intercepts = [checked_float(d, "RescaleIntercept", path=s.first_file, default=0.0) or 0.0 for d in ordered]
        if any(intercepts):
            text = (f"RescaleIntercept {max(intercepts, key=abs):g} is not 0 for an activity image (PS3.3 C.8.9.4: "
                    "always zero for PET); check the export")
            if opts.strict:
                raise DicomReadError(text + ".", path=s.first_file, tag="RescaleIntercept")
            found.append(text)
    image = vol.with_array(values.astype(np.float32), "Bq/mL")
    notes.extend(f"{s.modality} series '{s.description}' ({s.first_file}): {w}" for w in found)
    ct_vol = None
    ct_source = SourceRef()
    if ptp.ct is not None:
        _CURRENT_FILE.set(ptp.ct.first_file)
        ct_found: list[str] = []
        ct_vol, ct_ordered = read_volume(ptp.ct.datasets, ptp.ct.files, kind="ct", strict=opts.strict, unit="HU",
                                         warnings=ct_found)
        ct_source = _source(ptp.ct, ct_ordered)
        notes.extend(f"CT series '{ptp.ct.description}' ({ptp.ct.first_file}): {w}" for w in ct_found)
    elif opts.without_ct == "water":
        methods.append({"method": f"{s.modality} series '{s.description}' has no CT: water density (1 g/mL), no CT "
                                  "registration (read.without_ct = 'water')",
                        "parameters": {"series_uid": s.series_uid, "density_g_per_mL": 1.0}})
    tp = TimePoint(image, s.acquisition_start, duration_s, ct_vol, _source(s, ordered), ct_source,
                   calibration_note=note)
    if s.calibration is not None:
        tp.counts_per_MBq_s = s.calibration.sensitivity_cps_per_MBq
    return tp


def _counts_to_Bq_per_mL(values: np.ndarray, s: SeriesInfo, half_life_h: float, voxel_mL: float,
                         methods: list[dict]) -> tuple[np.ndarray, str]:
    """Counts per voxel -> Bq/mL at the acquisition start with the camera's volume sensitivity (options module)."""
    cal = s.calibration
    if cal is None:  # pragma: no cover - _plan refuses counts without a calibration
        raise DicomReadError("counts without a calibration.", path=s.first_file, tag="Units")
    duration = s.acquisition_duration_s
    if not duration or duration <= 0:
        raise DicomReadError("counts-based SPECT needs the acquisition duration (AcquisitionDuration or the Rotation "
                             "Information Sequence) to turn counts into counts per second.", path=s.first_file,
                             tag="AcquisitionDuration")
    lam_per_s = math.log(2.0) / (half_life_h * 3600.0)
    decay_corrected = "DECY" in get_text(s.datasets[0], "CorrectedImage").upper()
    x = lam_per_s * duration
    # counts N = S A0 (1 - exp(-x)) / lambda without decay correction, S A0 T with it (A0 at the start)
    effective_s = duration if decay_corrected or x < 1e-12 else (1.0 - math.exp(-x)) / lam_per_s
    factor_Bq_per_mL = 1e6 / (cal.sensitivity_cps_per_MBq * effective_s * voxel_mL)
    methods.append({
        "method": f"{s.modality} series '{s.description}' in counts converted to Bq/mL with the camera volume "
                  f"sensitivity {cal.describe()}: c = N / (S x T_eff x V)",
        "parameters": {"series_uid": s.series_uid, "camera": s.camera_text(), "nuclide": cal.nuclide,
                       "sensitivity_cps_per_MBq": cal.sensitivity_cps_per_MBq, "duration_s": duration,
                       "effective_duration_s": effective_s, "counts_decay_corrected": decay_corrected,
                       "voxel_mL": voxel_mL},
        "references": list(_REFERENCES_COUNTS)})
    return values * factor_Bq_per_mL, f"counts x camera sensitivity {cal.sensitivity_cps_per_MBq:g} cps/MBq"


def _pet_to_Bq_per_mL(values: np.ndarray, s: SeriesInfo, adm: Administration, opts: ReadOptions,
                      voxel_mL: float, methods: list[dict]) -> tuple[np.ndarray, str]:
    units = s.units
    ds0 = s.datasets[0]
    path = s.first_file
    if units == "BQML":
        return values, "Units BQML x RescaleSlope"
    if units == "CNTS":
        if opts.counts_calibration_Bq_per_mL is not None:
            factor = opts.counts_calibration_Bq_per_mL
            methods.append({"method": f"PET series '{s.description}' in counts x {factor:g} Bq/mL per count "
                                      "(read.counts_calibration_Bq_per_mL)",
                            "parameters": {"series_uid": s.series_uid, "Bq_per_mL_per_count": factor}})
            return values * factor, f"counts x {factor:g} Bq/mL per count (given)"
        if s.calibration is not None:
            duration = s.acquisition_duration_s
            if not duration:
                raise DicomReadError("PET in counts with a camera sensitivity needs ActualFrameDuration (0018,1242).",
                                     path=path, tag="ActualFrameDuration")
            factor = 1e6 / (s.calibration.sensitivity_cps_per_MBq * duration * voxel_mL)
            methods.append({"method": f"PET series '{s.description}' in counts converted with the camera volume "
                                      f"sensitivity {s.calibration.describe()}: c = N / (S x T x V)",
                            "parameters": {"series_uid": s.series_uid, "camera": s.camera_text(),
                                           "sensitivity_cps_per_MBq": s.calibration.sensitivity_cps_per_MBq,
                                           "duration_s": duration, "voxel_mL": voxel_mL},
                            "references": list(_REFERENCES_COUNTS)})
            return values * factor, f"counts x camera sensitivity {s.calibration.sensitivity_cps_per_MBq:g} cps/MBq"
        philips = philips_scale(ds0)
        if philips is None:  # pragma: no cover - _plan refuses CNTS without a calibration
            raise DicomReadError("PET in counts (Units CNTS) without a calibration.", path=path, tag="Units")
        factor = philips
        methods.append({"method": f"PET series '{s.description}' in counts x Philips Activity Concentration Scale "
                                  f"Factor (7053,1009) {factor:g} Bq/mL per count",
                        "parameters": {"series_uid": s.series_uid, "Bq_per_mL_per_count": factor}})
        return values * factor, f"counts x Philips Activity Concentration Scale Factor {factor:g}"
    if units == "GML":
        suv_type = get_text(ds0, "SUVType").upper() or "BW"
        if suv_type != "BW":
            raise DicomReadError(f"SUV type {clip(suv_type)} is not supported (only body-weight SUV).", path=path,
                                 tag="SUVType")
        weight = get_float(ds0, "PatientWeight")
        if weight is None or not 0 < weight < 700:
            raise DicomReadError("PatientWeight (0010,1030) needed to undo SUVbw is missing.", path=path,
                                 tag="PatientWeight")
        if get_text(ds0, "DecayCorrection").upper() == "NONE":
            raise DicomReadError("SUVbw without decay correction (DecayCorrection NONE) is ambiguous; export Bq/ml.",
                                 path=path, tag="DecayCorrection")
        # SUVbw = c / (A_inj decayed to the decay-correction reference / weight); the reference of the image is
        # handled afterwards by the decay factors, so here the injected activity is decayed to that same reference.
        t_ref = _pet_reference(ds0, s, adm, DicomClock()) or adm.start
        dose_Bq = adm.activity_MBq * 1e6 * decay_factor_to_start(nuclides.get(adm.nuclide).half_life_h, adm.start,
                                                                 t_ref)
        return values * dose_Bq / (weight * 1000.0), "SUVbw x decayed injected activity / PatientWeight"
    raise DicomReadError(f"unsupported PET Units '{clip(units)}'.", path=path, tag="Units")  # pragma: no cover


def _convention(ds: Dataset, path: Path | None) -> str:
    convention = get_text(ds, "DecayCorrection").upper()
    if convention not in ("", "START", "ADMIN", "NONE"):
        raise DicomReadError(f"DecayCorrection '{clip(convention)}' is not one of START, ADMIN, NONE.", path=path,
                             tag="DecayCorrection")
    return convention


def _pet_reference(ds: Dataset, s: SeriesInfo, adm: Administration, clock: DicomClock) -> datetime | None:
    """The decay-correction reference time of a START/ADMIN PET series (None for NONE)."""
    convention = _convention(ds, s.first_file)
    explicit = clock.dt(ds, "DecayCorrectionDateTime", ds)
    if convention == "ADMIN":
        return explicit or adm.start
    if convention == "START":
        return explicit or clock.da_tm(ds, "SeriesDate", "SeriesTime") or s.acquisition_start
    return None


def _pet_decay_factors(ordered: list[Dataset], s: SeriesInfo, adm: Administration, half_life_h: float,
                       clock: DicomClock, notes: list[str]) -> np.ndarray:
    """Per slice, the factor taking the stored concentration to the one at the time point's acquisition start."""
    t0 = s.acquisition_start
    assert t0 is not None
    path = s.first_file
    lam_per_s = math.log(2.0) / (half_life_h * 3600.0)
    ds0 = ordered[0]
    convention = _convention(ds0, path)
    if not convention:
        if len(ordered) == 1 and get_value(ds0, "PerFrameFunctionalGroupsSequence") is not None \
                and get_value(ds0, "DecayCorrectionDateTime") is not None:
            convention = "START"  # Enhanced PET: Decay Correction DateTime given without the PET Series attribute
        else:
            raise DicomReadError("DecayCorrection (0054,1102) is missing: the time the PET values refer to is "
                                 "unknown (PS3.3 C.8.9.1: START, ADMIN or NONE).", path=path, tag="DecayCorrection")
    if any(_convention(d, path) != convention for d in ordered[1:]):
        raise DicomReadError("DecayCorrection differs between the slices of one PET series.", path=path,
                             tag="DecayCorrection")
    if convention in ("START", "ADMIN"):
        t_ref = _pet_reference(ds0, s, adm, clock)
        assert t_ref is not None
        if abs((t_ref - t0).total_seconds()) > 30 * 86400:
            raise DicomReadError(f"decay-correction reference {t_ref.isoformat()} is implausibly far from the "
                                 f"acquisition start {t0.isoformat()}.", path=path, tag="DecayCorrectionDateTime")
        return np.full(len(_slices(ordered)), decay_factor_to_start(half_life_h, t_ref, t0))
    # NONE: each slice is the average over its own frame
    factors = []
    series_ref = clock.da_tm(ds0, "SeriesDate", "SeriesTime")
    mismatch = 0.0
    for d in _slices(ordered):
        t_i = clock.dt(d, "AcquisitionDateTime", d) or clock.da_tm(d, "AcquisitionDate", "AcquisitionTime") or t0
        ms = get_float(d, "ActualFrameDuration")
        if ms is None or not 0 < ms <= 6 * 3600 * 1000:
            raise DicomReadError("DecayCorrection NONE needs each slice's ActualFrameDuration (0018,1242) in ms.",
                                 path=path, tag="ActualFrameDuration")
        x = lam_per_s * ms / 1000.0
        average_to_start = x / (1.0 - math.exp(-x)) if x > 1e-12 else 1.0
        factor = average_to_start * math.exp(lam_per_s * (t_i - t0).total_seconds())
        factors.append(factor)
        frt = get_float(d, "FrameReferenceTime")
        if frt is not None and series_ref is not None:
            # the pixel values "occurred" at series reference + FrameReferenceTime: c(t0) = c exp(lambda (t_f - t0))
            alt = math.exp(lam_per_s * ((series_ref - t0).total_seconds() + frt / 1000.0))
            mismatch = max(mismatch, abs(alt / factor - 1.0))
    if mismatch > 0.01:
        notes.append(f"FrameReferenceTime (0054,1300) disagrees with the frame times (decay factors differ by up to "
                     f"{100 * mismatch:.1f} %); using AcquisitionDateTime and ActualFrameDuration")
    return np.asarray(factors)


def _slices(ordered: list[Dataset]) -> list[Dataset]:
    """One dataset per slice: the datasets of a single-frame stack, or the one multi-frame object repeated."""
    if len(ordered) == 1:
        n = max(1, int(get_float(ordered[0], "NumberOfFrames") or 1))
        return [ordered[0]] * n
    return ordered


def _nm_decay_to_start(ds: Dataset, s: SeriesInfo, adm: Administration, half_life_h: float, duration_s: float,
                       clock: DicomClock) -> float:
    """NM has no Decay Correction attribute: quantitative SPECT refers to the acquisition start (the vendors'
    convention); one given anyway is honoured as for PET."""
    convention = _convention(ds, s.first_file)
    start = s.acquisition_start
    assert start is not None
    if convention == "":
        return 1.0
    if convention == "NONE":
        lam_per_s = math.log(2.0) / (half_life_h * 3600.0)
        x = lam_per_s * duration_s
        return x / (1.0 - math.exp(-x)) if x > 1e-12 else 1.0
    t_ref = _pet_reference(ds, s, adm, clock)
    assert t_ref is not None
    if abs((t_ref - start).total_seconds()) > 30 * 86400:
        raise DicomReadError(f"decay-correction reference {t_ref.isoformat()} is implausibly far from the "
                             f"acquisition start {start.isoformat()}.", path=s.first_file, tag="DecayCorrectionDateTime")
    return decay_factor_to_start(half_life_h, t_ref, start)
