"""Decode image series into :class:`~theratwin.study.ImageVolume` with LPS geometry.

- NM reconstructed tomography: one multi-frame object (frames along the slice normal from the Image Position of
  the Detector Information Sequence, PS3.3 C.8.4.11 / C.8.4.8) or single-frame objects stacked by position.
  Stored values x Real World Value Mapping slope + intercept = Bq/mL (or the non-standard Units BQML with
  Rescale Slope/Intercept that some exports carry). NM has no Decay Correction attribute: quantitative SPECT is
  taken as decay-corrected to the acquisition start (the convention of vendor quantitative SPECT); a
  DecayCorrection attribute, if present, is honoured as for PET.
- PET: single-frame objects with per-slice Rescale Slope/Intercept. Units BQML as is; CNTS times a calibration
  factor (argument, Philips private Activity Concentration Scale Factor (7053,1009), or Dose Calibration Factor
  (0054,1322)); GML (SUVbw) back to Bq/mL with the decay-corrected injected activity and PatientWeight.
  DecayCorrection (0054,1102): START (reference = DecayCorrectionDateTime, else SeriesDate/Time, else acquisition
  start), ADMIN (reference = RadiopharmaceuticalStartDateTime) or NONE (frame average), all converted to
  activity concentration at the acquisition start:
  ``c(start) = c(ref) exp(-lambda (t_start - t_ref))`` and, for NONE,
  ``c(start) = c_avg lambda T / (1 - exp(-lambda T))`` (decay during a frame of duration T).
- CT: single-frame objects, stored x Rescale Slope + Intercept = HU; or one Enhanced / Legacy Converted
  Enhanced CT object (frames placed by their Plane Position, rescaled by their Pixel Value Transformation).
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import DicomReadError
from ..study.image import ImageVolume
from ._read_values import get_float, get_floats, get_int, get_item, get_text, get_value, parse_dt

__all__ = ["read_volume", "series_geometry_from_frames", "pixel_array", "decay_factor_to_start"]

_MAX_VOXELS = 1024 * 1024 * 1024  # refuse absurd sizes before allocating (1 G voxels)


def pixel_array(ds: Dataset, path: Path | None) -> np.ndarray:
    """Stored pixel values (no rescale) as an array; clear error for unreadable or compressed data."""
    rows, cols = get_int(ds, "Rows"), get_int(ds, "Columns")
    frames = get_int(ds, "NumberOfFrames") or 1
    if rows is None or cols is None or rows < 1 or cols < 1 or frames < 1:
        raise DicomReadError(f"Rows/Columns/NumberOfFrames invalid ({rows}, {cols}, {frames}).", path=path, tag="Rows")
    if rows * cols * frames > _MAX_VOXELS:
        raise DicomReadError(f"image of {frames}x{rows}x{cols} values is implausibly large.", path=path, tag="Rows")
    if "PixelData" not in ds:
        raise DicomReadError("no pixel data.", path=path, tag="PixelData")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pixel handlers raise many types for corrupt/compressed data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DicomReadError(f"pixel data cannot be decoded (transfer syntax {ts}): {type(e).__name__}: {e}",
                             path=path, tag="PixelData") from e
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (rows, cols):
        raise DicomReadError(f"pixel data shape {arr.shape} does not match Rows x Columns {rows}x{cols} "
                             "(colour or multi-sample images are not supported).", path=path, tag="PixelData")
    return arr


def _release_pixels(ds: Dataset) -> None:
    """Drop a slice's pixel bytes and pydicom's decoded copy once stacked (keeps peak memory near one volume)."""
    try:
        del ds.PixelData
    except (AttributeError, KeyError):
        pass


def _orientation(ds: Dataset, path: Path | None, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    iop = get_floats(ds, "ImageOrientationPatient", 6)
    if iop is None:
        det = get_item(ds, "DetectorInformationSequence")
        iop = get_floats(det, "ImageOrientationPatient", 6)
    if iop is None:
        shared = get_item(ds, "SharedFunctionalGroupsSequence")
        iop = get_floats(get_item(shared, "PlaneOrientationSequence"), "ImageOrientationPatient", 6)
    if iop is None:
        raise DicomReadError("ImageOrientationPatient (0020,0037) missing or invalid.", path=path,
                             tag="ImageOrientationPatient")
    row, col = np.array(iop[:3]), np.array(iop[3:])
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    tol = 1e-3 if strict else 0.05
    if abs(nr - 1) > tol or abs(nc - 1) > tol or abs(float(row @ col)) > tol:
        raise DicomReadError(f"ImageOrientationPatient {iop} is not two orthogonal unit vectors.", path=path,
                             tag="ImageOrientationPatient")
    row = row / nr
    col = col - (col @ row) * row  # Gram-Schmidt for rounding in the stored text
    col = col / np.linalg.norm(col)
    return row, col


def _position(ds: Dataset) -> list[float] | None:
    ipp = get_floats(ds, "ImagePositionPatient", 3)
    if ipp is None:
        ipp = get_floats(get_item(ds, "DetectorInformationSequence"), "ImagePositionPatient", 3)
    return ipp


def _pixel_spacing(ds: Dataset, path: Path | None) -> tuple[float, float]:
    ps = get_floats(ds, "PixelSpacing", 2)
    if ps is None or min(ps) <= 0 or max(ps) > 1000:
        raise DicomReadError(f"PixelSpacing (0028,0030) missing or invalid ({get_text(ds, 'PixelSpacing')}).",
                             path=path, tag="PixelSpacing")
    return ps[0], ps[1]  # row spacing (between rows, along the column direction), column spacing


def series_geometry_from_frames(
    positions: np.ndarray, row: np.ndarray, col: np.ndarray, spacing_rc: tuple[float, float], path: Path | None,
    strict: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sort frames by position along the normal; return (order, origin, slice spacing)."""
    normal = np.cross(row, col)
    d = positions @ normal
    order = np.argsort(d, kind="stable")
    ds_sorted = d[order]
    if len(d) == 1:
        return order, positions[0], float("nan")
    gaps = np.diff(ds_sorted)
    if np.any(gaps < 1e-3):
        raise DicomReadError("two slices share the same position; the series holds duplicates or several volumes.",
                             path=path, tag="ImagePositionPatient")
    spacing = float(np.median(gaps))
    tol = 0.01 if strict else 0.05
    if np.max(np.abs(gaps - spacing)) > tol * spacing + 1e-3:
        raise DicomReadError(f"slice spacing is not uniform (from {gaps.min():.3f} to {gaps.max():.3f} mm): a slice "
                             "is missing or the series mixes volumes.", path=path, tag="ImagePositionPatient")
    # in-plane offsets must agree (no gantry tilt / shear)
    inplane = positions[order] - np.outer(ds_sorted - ds_sorted[0], normal) - positions[order][0]
    if np.max(np.abs(inplane)) > max(0.5 * min(spacing_rc), 0.5):
        raise DicomReadError("slices are sheared (gantry tilt or inconsistent positions); resample before import.",
                             path=path, tag="ImagePositionPatient")
    return order, positions[order][0], spacing


def decay_factor_to_start(half_life_h: float, t_ref: datetime, t_start: datetime) -> float:
    """Factor converting a concentration referenced to ``t_ref`` into one at ``t_start`` (physical decay)."""
    lam_per_s = math.log(2.0) / (half_life_h * 3600.0)
    return math.exp(-lam_per_s * (t_start - t_ref).total_seconds())


def read_volume(
    datasets: list[Dataset],
    files: list[Path],
    *,
    kind: str,
    strict: bool,
    unit: str,
) -> tuple[ImageVolume, list[Dataset]]:
    """Stack a series into a volume of stored values x per-slice slope/intercept (``kind`` 'nm', 'pt' or 'ct').

    Returns the volume (values after Rescale/RWVM) and the datasets in slice order. NM mapping is applied here;
    PET unit conversion is done by the caller.
    """
    path = files[0] if files else None
    ds0 = datasets[0]
    if len(datasets) == 1 and get_value(ds0, "PerFrameFunctionalGroupsSequence") is not None:
        return _read_enhanced(ds0, path, strict=strict, unit=unit), [ds0]
    row, col = _orientation(ds0, path, strict)
    dr, dc = _pixel_spacing(ds0, path)
    normal = np.cross(row, col)
    if len(datasets) == 1 and (get_int(ds0, "NumberOfFrames") or 1) > 1:
        n_slices = get_int(ds0, "NumberOfSlices")
        n_frames = get_int(ds0, "NumberOfFrames")
        if kind == "nm" and n_slices is not None and n_frames is not None and n_slices != n_frames:
            raise DicomReadError(f"NumberOfFrames {n_frames} differs from NumberOfSlices {n_slices}: gated or "
                                 "multi-window reconstructions are not supported; export one volume per series.",
                                 path=path, tag="NumberOfSlices")
        frames = pixel_array(ds0, path).astype(np.float64)
        _release_pixels(ds0)
        ipp = _position(ds0)
        if ipp is None:
            raise DicomReadError("ImagePositionPatient missing (top level and Detector Information Sequence).",
                                 path=path, tag="ImagePositionPatient")
        step = get_float(ds0, "SpacingBetweenSlices")
        if step is None or step == 0:
            step = get_float(ds0, "SliceThickness")
        if step is None or step == 0 or abs(step) > 1000:
            raise DicomReadError("SpacingBetweenSlices (0018,0088) and SliceThickness missing: slice spacing unknown.",
                                 path=path, tag="SpacingBetweenSlices")
        slope, intercept = _mapping(ds0, path, kind)
        values = frames * slope + intercept
        origin = np.array(ipp)
        spacing = abs(step)
        if step < 0:  # frames run against the normal: reverse to keep a right-handed (row, col, normal) grid
            values = values[::-1]
            origin = origin + (values.shape[0] - 1) * step * normal
        ordered = [ds0]
    else:
        positions = []
        for ds, f in zip(datasets, files, strict=True):
            p = _position(ds)
            if p is None:
                raise DicomReadError("ImagePositionPatient (0020,0032) missing or invalid.", path=f,
                                     tag="ImagePositionPatient")
            if (get_int(ds, "NumberOfFrames") or 1) != 1:
                raise DicomReadError("series mixes multi-frame and single-frame objects.", path=f, tag="NumberOfFrames")
            positions.append(p)
        order, origin, spacing = series_geometry_from_frames(np.array(positions), row, col, (dr, dc), path, strict)
        if not math.isfinite(spacing):
            spacing = get_float(ds0, "SliceThickness") or get_float(ds0, "SpacingBetweenSlices") or 1.0
            spacing = abs(spacing)
        ordered = [datasets[i] for i in order]
        ordered_files = [files[i] for i in order]
        values = np.empty(0, np.float32)
        for k, (ds, f) in enumerate(zip(ordered, ordered_files, strict=True)):
            if _pixel_spacing(ds, f) != (dr, dc):
                raise DicomReadError("PixelSpacing differs between slices of one series.", path=f, tag="PixelSpacing")
            arr = pixel_array(ds, f)[0]
            if k == 0:
                values = np.empty((len(ordered), *arr.shape), np.float32)
            elif arr.shape != values.shape[1:]:
                raise DicomReadError(f"slice size {arr.shape} differs from {values.shape[1:]} in the same series.",
                                     path=f, tag="Rows")
            slope, intercept = _mapping(ds, f, kind)
            values[k] = arr.astype(np.float64) * slope + intercept
            _release_pixels(ds)
    direction = np.column_stack([row, col, normal])
    vol = ImageVolume(values.astype(np.float32), spacing_mm=(dc, dr, spacing), origin_mm=tuple(origin),
                      direction=direction, unit=unit)
    return vol, ordered


def _read_enhanced(ds: Dataset, path: Path | None, *, strict: bool, unit: str) -> ImageVolume:
    """Enhanced / Legacy Converted Enhanced multi-frame image (functional groups, PS3.3 C.7.6.16)."""
    shared = get_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = get_value(ds, "PerFrameFunctionalGroupsSequence")
    frames = pixel_array(ds, path)
    n = frames.shape[0]
    try:
        items = [per_frame[i] for i in range(n)]
    except (IndexError, TypeError) as e:
        raise DicomReadError(f"PerFrameFunctionalGroupsSequence has fewer than {n} items.", path=path,
                             tag="PerFrameFunctionalGroupsSequence") from e

    def group(item: Dataset, keyword: str) -> Dataset | None:
        return get_item(item, keyword) or get_item(shared, keyword)

    probe = Dataset()
    iop = get_floats(group(items[0], "PlaneOrientationSequence"), "ImageOrientationPatient", 6)
    if iop is None:
        raise DicomReadError("PlaneOrientationSequence > ImageOrientationPatient missing.", path=path,
                             tag="ImageOrientationPatient")
    probe.ImageOrientationPatient = iop
    row, col = _orientation(probe, path, strict)
    ps = get_floats(group(items[0], "PixelMeasuresSequence"), "PixelSpacing", 2)
    if ps is None or min(ps) <= 0 or max(ps) > 1000:
        raise DicomReadError("PixelMeasuresSequence > PixelSpacing missing or invalid.", path=path, tag="PixelSpacing")
    positions = []
    slopes = np.ones(n)
    intercepts = np.zeros(n)
    for i, item in enumerate(items):
        pos = get_floats(group(item, "PlanePositionSequence"), "ImagePositionPatient", 3)
        if pos is None:
            raise DicomReadError(f"frame {i + 1}: PlanePositionSequence > ImagePositionPatient missing.", path=path,
                                 tag="ImagePositionPatient")
        positions.append(pos)
        transform = group(item, "PixelValueTransformationSequence")
        if transform is not None:
            slopes[i], intercepts[i] = _rescale(transform, path)
    order, origin, spacing = series_geometry_from_frames(np.array(positions), row, col, (ps[0], ps[1]), path, strict)
    if not math.isfinite(spacing):
        spacing = abs(get_float(group(items[0], "PixelMeasuresSequence"), "SliceThickness") or 1.0)
    values = frames[order].astype(np.float32) * slopes[order, None, None].astype(np.float32) \
        + intercepts[order, None, None].astype(np.float32)
    _release_pixels(ds)
    normal = np.cross(row, col)
    return ImageVolume(values, spacing_mm=(ps[1], ps[0], spacing), origin_mm=tuple(origin),
                       direction=np.column_stack([row, col, normal]), unit=unit)


def _mapping(ds: Dataset, path: Path | None, kind: str) -> tuple[float, float]:
    """Slope and intercept from stored values to the quantity (Bq/mL for NM; rescaled units for PT/CT)."""
    if kind == "nm":
        rw = get_value(ds, "RealWorldValueMappingSequence")
        if rw:
            try:
                items = list(rw)
            except TypeError:
                items = []
            for item in items:
                unit = get_text(get_item(item, "MeasurementUnitsCodeSequence"), "CodeValue").lower().replace(" ", "")
                if unit in ("bq/ml", "bq/cm3") or get_text(item, "LUTLabel").upper() == "BQML":
                    slope = get_float(item, "RealWorldValueSlope")
                    intercept = get_float(item, "RealWorldValueIntercept") or 0.0
                    if slope is None:
                        if get_value(item, "RealWorldValueLUTData") is not None:
                            raise DicomReadError("real-world value LUT data are not supported; need slope/intercept.",
                                                 path=path, tag="RealWorldValueLUTData")
                        raise DicomReadError("RealWorldValueSlope (0040,9225) missing.", path=path,
                                             tag="RealWorldValueSlope")
                    if slope <= 0 or slope > 1e12 or abs(intercept) > 1e15:
                        raise DicomReadError(f"implausible real-world value mapping slope {slope} / intercept "
                                             f"{intercept}.", path=path, tag="RealWorldValueSlope")
                    return slope, intercept
        if get_text(ds, "Units").upper() == "BQML":
            return _rescale(ds, path)
        raise DicomReadError("SPECT without quantitative units (no Bq/ml real-world value mapping).", path=path,
                             tag="RealWorldValueMappingSequence")
    return _rescale(ds, path)


def _rescale(ds: Dataset, path: Path | None) -> tuple[float, float]:
    slope = get_float(ds, "RescaleSlope")
    intercept = get_float(ds, "RescaleIntercept")
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if slope == 0 or abs(slope) > 1e12 or abs(intercept) > 1e15:
        raise DicomReadError(f"implausible RescaleSlope {slope} / RescaleIntercept {intercept}.", path=path,
                             tag="RescaleSlope")
    return slope, intercept


def dt_or_none(ds: Dataset, keyword: str) -> datetime | None:
    return parse_dt(get_value(ds, keyword))
