"""Read one patient's quantitative SPECT/PET + CT (+ SEG) DICOM into a :class:`~theratwin.study.Study`.

See :mod:`theratwin.dicom.inventory` for how series are grouped into time points and cycles and
:mod:`theratwin.dicom._read_images` for units, geometry and decay-correction conventions. Images of time points
end up in Bq/mL decay-corrected to their acquisition start; CTs in HU; times in hours since the start of the
administration of the cycle.
"""

from __future__ import annotations

import contextvars
import math
import os
import struct
from datetime import datetime

import numpy as np

from .. import nuclides
from ..errors import DicomReadError, InvalidInputError, TheraTwinError
from ..progress import ProgressCallback, report, scaled
from ..study.image import ImageVolume
from ..study.model import Administration, Cycle, Patient, Segmentation, SourceRef, Study, TimePoint
from ._read_images import decay_factor_to_start, read_volume
from ._read_seg import read_seg
from ._read_values import combine, get_float, get_text, get_value, parse_da, parse_dt, parse_tm
from .inventory import PlannedTimePoint, SeriesInfo, scan

__all__ = ["read_study"]

# Exceptions pydicom and numpy raise when a corrupt value is decoded lazily (see read_study).
_CORRUPT_VALUE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, EOFError,
                         struct.error, UnicodeError, NotImplementedError, RecursionError)
_CURRENT_FILE: contextvars.ContextVar[object] = contextvars.ContextVar("theratwin_dicom_file", default=None)

# Philips PET stores the factor from CNTS to Bq/mL in a private element (7053,1009) of "Philips PET Private Group".
_PHILIPS_CREATOR = "Philips PET Private Group"


def read_study(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    progress: ProgressCallback | None = None,
    counts_calibration_Bq_per_mL: float | None = None,
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
        For PET/SPECT stored in counts (Units CNTS): Bq/mL per count value, when the files do not carry it.

    Returns
    -------
    Study
        Cycles (by administration start) with time points (emission image in Bq/mL at acquisition start, CT in
        HU), the segmentation on the reference CT if a SEG was found, and the patient.

    Raises
    ------
    DicomReadError
        With the file and DICOM keyword, for: no injection datetime, acquisition before injection, SPECT without
        quantitative units, mixed radionuclides within one cycle, missing CT, inconsistent frame of reference,
        and unreadable or inconsistent image data.
    """
    try:
        return _read_study(path, strict=strict, progress=progress, counts_calibration=counts_calibration_Bq_per_mL)
    except TheraTwinError:
        raise
    except _CORRUPT_VALUE_ERRORS as e:
        # Safety net for corrupt values that pydicom only decodes on access (documented: every refusal is a
        # DicomReadError); the file is the one being decoded when known.
        raise DicomReadError(f"corrupt or unreadable DICOM value ({type(e).__name__}: {e}); check the file with "
                             "dciodvfy.", path=_CURRENT_FILE.get(), tag=None) from e


def _read_study(path: str | os.PathLike[str], *, strict: bool, progress: ProgressCallback | None,
                counts_calibration: float | None) -> Study:
    _CURRENT_FILE.set(None)
    inv = scan(path, strict=strict, progress=scaled(progress, 0.0, 0.3))
    if strict and inv.skipped:
        p, reason = inv.skipped[0]
        raise DicomReadError(f"not readable as DICOM in strict mode: {reason}", path=p)
    if inv.problems:
        raise inv.problems[0]
    if not inv.cycles:  # pragma: no cover - _plan records a problem whenever no cycle is found
        raise DicomReadError("no usable time point found.", path=inv.root)

    first = inv.cycles[0].time_points[0]
    patient = _patient(first.emission)
    n_tp = sum(len(c.time_points) for c in inv.cycles)
    done = 0
    cycles: list[Cycle] = []
    reference_ct: ImageVolume | None = None
    for planned in inv.cycles:
        a = planned.administration
        try:
            adm = Administration(a.radiopharmaceutical or "unknown", a.nuclide or "", float(a.activity_MBq or 0.0),
                                 a.start)  # type: ignore[arg-type]
        except InvalidInputError as e:
            raise DicomReadError(str(e), path=planned.time_points[0].emission.first_file,
                                 tag="RadiopharmaceuticalInformationSequence") from e
        tps: list[TimePoint] = []
        for ptp in planned.time_points:
            report(progress, 0.3 + 0.6 * done / n_tp, f"reading cycle {planned.number} time point "
                   f"{len(tps) + 1} ({ptp.time_h:.1f} h)")
            tp = _time_point(ptp, adm, strict, counts_calibration)
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
            inv.warnings.append(f"SEG series has {len(seg_series.files)} objects; reading the first")
        ds = seg_series.datasets[0]
        _CURRENT_FILE.set(seg_series.files[0])
        segmentation = read_seg(ds, seg_series.files[0], reference_ct.geometry if reference_ct else None,
                                strict=strict)
    study = Study(
        patient=patient,
        cycles=cycles,
        segmentation=segmentation,
        study_uid=first.emission.study_uid,
        frame_of_reference_uid=first.emission.frame_of_reference_uid,
        description=get_text(first.emission.datasets[0], "StudyDescription"),
    )
    report(progress, 1.0, f"read {n_tp} time point(s) in {len(cycles)} cycle(s)")
    return study


def _patient(s: SeriesInfo) -> Patient:
    ds = s.datasets[0]
    sex = get_text(ds, "PatientSex").upper()
    weight = get_float(ds, "PatientWeight")
    height = get_float(ds, "PatientSize")
    pid = get_text(ds, "PatientID")
    if not pid:
        raise DicomReadError("PatientID (0010,0020) is empty.", path=s.first_file, tag="PatientID")
    return Patient(
        patient_id=pid,
        name=get_text(ds, "PatientName"),
        birth_date=parse_da(get_value(ds, "PatientBirthDate")),
        sex=sex if sex in ("M", "F", "O") else "",
        issuer=get_text(ds, "IssuerOfPatientID"),
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


def _time_point(ptp: PlannedTimePoint, adm: Administration, strict: bool,
                counts_calibration: float | None) -> TimePoint:
    s = ptp.emission
    assert s.acquisition_start is not None
    kind = "nm" if s.role == "spect" else "pt"
    _CURRENT_FILE.set(s.first_file)
    vol, ordered = read_volume(s.datasets, s.files, kind=kind, strict=strict, unit="Bq/mL")
    values = vol.array.astype(np.float64)
    half_life_h = nuclides.get(adm.nuclide).half_life_h
    duration_s = s.acquisition_duration_s or 0.0
    ds0 = s.datasets[0]
    if kind == "pt":
        values = _pet_to_Bq_per_mL(values, s, adm, counts_calibration)
    values = values * _decay_to_start(ds0, s, adm, half_life_h, duration_s, kind)
    image = vol.with_array(values.astype(np.float32), "Bq/mL")
    ct_vol = None
    ct_source = SourceRef()
    if ptp.ct is not None:
        _CURRENT_FILE.set(ptp.ct.first_file)
        ct_vol, ct_ordered = read_volume(ptp.ct.datasets, ptp.ct.files, kind="ct", strict=strict, unit="HU")
        ct_source = _source(ptp.ct, ct_ordered)
    return TimePoint(image, s.acquisition_start, duration_s, ct_vol, _source(s, ordered), ct_source)


def _pet_to_Bq_per_mL(values: np.ndarray, s: SeriesInfo, adm: Administration,
                      counts_calibration: float | None) -> np.ndarray:
    units = s.units
    ds0 = s.datasets[0]
    path = s.first_file
    if units == "BQML":
        return values
    if units == "CNTS":
        factor = counts_calibration
        if factor is None:
            factor = _philips_scale(ds0)
        if factor is None:
            factor = get_float(ds0, "DoseCalibrationFactor")
        if factor is None or not (0 < factor < 1e12):
            raise DicomReadError("PET/SPECT in counts (Units CNTS) without a calibration factor: no Philips Activity "
                                 "Concentration Scale Factor (7053,1009) or DoseCalibrationFactor (0054,1322); pass "
                                 "counts_calibration_Bq_per_mL.", path=path, tag="Units")
        return values * factor
    if units == "GML":
        suv_type = get_text(ds0, "SUVType").upper() or "BW"
        if suv_type != "BW":
            raise DicomReadError(f"SUV type {suv_type} is not supported (only body-weight SUV).", path=path,
                                 tag="SUVType")
        weight = get_float(ds0, "PatientWeight")
        if weight is None or not 0 < weight < 700:
            raise DicomReadError("PatientWeight (0010,1030) needed to undo SUVbw is missing.", path=path,
                                 tag="PatientWeight")
        # SUVbw = c / (A_inj decayed to the decay-correction reference / weight); the reference of the image is
        # handled afterwards by _decay_to_start, so here the injected activity is decayed to that same reference.
        t_ref = _decay_reference(ds0, s, adm, "pt") or adm.start
        dose_Bq = adm.activity_MBq * 1e6 * decay_factor_to_start(nuclides.get(adm.nuclide).half_life_h, adm.start,
                                                                 t_ref)
        return values * dose_Bq / (weight * 1000.0)
    raise DicomReadError(f"unsupported PET Units '{units}'.", path=path, tag="Units")  # pragma: no cover


def _philips_scale(ds: object) -> float | None:
    try:
        block = ds.private_block(0x7053, _PHILIPS_CREATOR)  # type: ignore[attr-defined]
        elem = block[0x09]
        f = float(elem.value)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _decay_reference(ds: object, s: SeriesInfo, adm: Administration, kind: str) -> datetime | None:
    convention = get_text(ds, "DecayCorrection").upper()  # type: ignore[arg-type]
    if kind == "nm" and not convention:
        return s.acquisition_start
    if convention in ("START", ""):
        explicit = parse_dt(get_value(ds, "DecayCorrectionDateTime"))  # type: ignore[arg-type]
        if explicit is not None:
            return explicit
        series = combine(parse_da(get_value(ds, "SeriesDate")), parse_tm(get_value(ds, "SeriesTime")))  # type: ignore[arg-type]
        return series or s.acquisition_start
    if convention == "ADMIN":
        explicit = parse_dt(get_value(ds, "DecayCorrectionDateTime"))  # type: ignore[arg-type]
        return explicit or adm.start
    return None  # NONE


def _decay_to_start(ds: object, s: SeriesInfo, adm: Administration, half_life_h: float, duration_s: float,
                    kind: str) -> float:
    """Factor taking the image to activity concentration at the acquisition start (see module docstring)."""
    convention = get_text(ds, "DecayCorrection").upper()  # type: ignore[arg-type]
    if convention not in ("", "START", "ADMIN", "NONE"):
        raise DicomReadError(f"DecayCorrection '{convention}' is not one of START, ADMIN, NONE.", path=s.first_file,
                             tag="DecayCorrection")
    start = s.acquisition_start
    assert start is not None
    if convention == "NONE":
        lam_per_s = math.log(2.0) / (half_life_h * 3600.0)
        x = lam_per_s * duration_s
        # average over the frame -> value at its start (MIRD/PET frame-decay correction)
        return x / (1.0 - math.exp(-x)) if x > 1e-12 else 1.0
    t_ref = _decay_reference(ds, s, adm, kind)
    if t_ref is None:
        return 1.0
    if abs((t_ref - start).total_seconds()) > 30 * 86400:
        raise DicomReadError(f"decay-correction reference {t_ref.isoformat()} is implausibly far from the "
                             f"acquisition start {start.isoformat()}.", path=s.first_file, tag="DecayCorrectionDateTime")
    return decay_factor_to_start(half_life_h, t_ref, start)
