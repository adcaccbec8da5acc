"""Decode image series into :class:`~theratwin.study.ImageVolume` with LPS geometry.

- NM reconstructed tomography: one multi-frame object (frames along the slice normal from the Image Position of
  the Detector Information Sequence, PS3.3 C.8.4.11 / C.8.4.8) or single-frame objects stacked by position.
  Stored values x Real World Value Mapping slope + intercept = Bq/mL (or the non-standard Units BQML with
  Rescale Slope/Intercept that some exports carry); NM in counts keeps its counts (calibrated by the reader).
- PET: single-frame objects with per-slice Rescale Slope/Intercept (Type 1), or one Enhanced / Legacy Converted
  Enhanced PET object with a Pixel Value Transformation per frame. Units and decay correction are applied by
  :mod:`theratwin.dicom.read`.
- CT: single-frame objects, stored x Rescale Slope + Intercept = HU; or one Enhanced / Legacy Converted
  Enhanced CT object (frames placed by their Plane Position, rescaled by their Pixel Value Transformation).

Header and pixel data must agree: Pixel Data length vs Rows x Columns x frames x bits, one orientation and pixel
spacing per series, regular slice positions (a gap names the file next to it), values no scanner of that kind
produces (CT outside [-10000, 100000] HU, NaN after rescaling) refused; oddities (a CT without air, a slice whose
rescale differs, NM spacing that disagrees with its slice thickness) returned as warnings.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import DicomReadError
from ..study.image import ImageVolume
from ._read_files import load_pixel_data
from ._read_values import (
    checked_float,
    clip,
    get_float,
    get_floats,
    get_int,
    get_item,
    get_text,
    get_value,
    parse_dt,
    present,
)

__all__ = ["read_volume", "series_geometry_from_frames", "pixel_array", "decay_factor_to_start"]

_MAX_VOXELS = 1024 * 1024 * 1024  # refuse absurd sizes before allocating (1 G voxels)
_MIN_SPACING_MM = 1e-3  # below a micrometre a "spacing" is a corrupt value, not a clinical scanner's
_MAX_COORDINATE_MM = 1e5  # a patient position beyond 100 m is a corrupt value


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")


def pixel_array(ds: Dataset, path: Path | None) -> np.ndarray:
    """Stored pixel values (no rescale) as an array; clear error for unreadable, compressed or inconsistent data.

    For uncompressed transfer syntaxes the Pixel Data length must be what Rows x Columns x NumberOfFrames x
    SamplesPerPixel x BitsAllocated declare (PS3.5 8.1.1, one padding byte allowed): a header that disagrees with
    its pixel data (a wrong Rows skews the image) is refused instead of decoded.
    """
    rows, cols = get_int(ds, "Rows"), get_int(ds, "Columns")
    frames = get_int(ds, "NumberOfFrames") if present(ds, "NumberOfFrames") else 1
    if rows is None or cols is None or frames is None or rows < 1 or cols < 1 or frames < 1:
        raise DicomReadError(f"Rows/Columns/NumberOfFrames invalid ({rows}, {cols}, {frames}).", path=path, tag="Rows")
    if rows * cols * frames > _MAX_VOXELS:
        raise DicomReadError(f"image of {frames}x{rows}x{cols} values is implausibly large.", path=path, tag="Rows")
    load_pixel_data(ds, path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError("no pixel data.", path=path, tag="PixelData")
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if "PixelData" in ds and (ts in _NATIVE_SYNTAXES or not ts):
        bits = get_int(ds, "BitsAllocated")
        samples = get_int(ds, "SamplesPerPixel") if present(ds, "SamplesPerPixel") else 1
        if bits is None or bits not in (1, 8, 16, 32, 64) or samples is None or samples < 1:
            raise DicomReadError(f"BitsAllocated {clip(get_text(ds, 'BitsAllocated'))!r} / SamplesPerPixel "
                                 f"{clip(get_text(ds, 'SamplesPerPixel'))!r} invalid.", path=path, tag="BitsAllocated")
        expected = (rows * cols * frames * samples * bits + 7) // 8
        try:
            actual = len(ds["PixelData"].value)
        except Exception as e:  # noqa: BLE001 - an undecodable element is corrupt pixel data
            raise DicomReadError(f"Pixel Data cannot be read ({type(e).__name__}).", path=path, tag="PixelData") from e
        if actual not in (expected, expected + 1):
            raise DicomReadError(f"Pixel Data holds {actual} bytes but Rows x Columns x NumberOfFrames x "
                                 f"SamplesPerPixel x BitsAllocated = {rows} x {cols} x {frames} x {samples} x {bits} "
                                 f"bits declares {expected}: the header disagrees with the pixel data.", path=path,
                                 tag="Rows")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pixel handlers raise many types for corrupt/compressed data
        raise DicomReadError(f"pixel data cannot be decoded (transfer syntax {clip(ts or 'unknown', 64)}): "
                             f"{type(e).__name__}: {clip(str(e), 160)}", path=path, tag="PixelData") from e
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (rows, cols) or arr.shape[0] != frames:
        raise DicomReadError(f"pixel data shape {arr.shape} does not match NumberOfFrames x Rows x Columns "
                             f"{frames}x{rows}x{cols} (colour or multi-sample images are not supported).", path=path,
                             tag="PixelData")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DicomReadError("floating-point pixel data hold NaN or infinite values.", path=path, tag="PixelData")
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


def _position(ds: Dataset, path: Path | None = None) -> list[float] | None:
    """Image Position (Patient), top level or (NM) in the Detector Information Sequence; corrupt values refused."""
    holder: Dataset | None = ds
    if not present(ds, "ImagePositionPatient"):
        holder = get_item(ds, "DetectorInformationSequence")
        if not present(holder, "ImagePositionPatient"):
            return None
    ipp = get_floats(holder, "ImagePositionPatient", 3)
    if ipp is None or max(abs(v) for v in ipp) > _MAX_COORDINATE_MM:
        raise DicomReadError(f"ImagePositionPatient {clip(get_text(holder, 'ImagePositionPatient'))!r} is not three "
                             "coordinates in mm.", path=path, tag="ImagePositionPatient")
    return ipp


def _pixel_spacing(ds: Dataset, path: Path | None) -> tuple[float, float]:
    ps = get_floats(ds, "PixelSpacing", 2)
    if ps is None or min(ps) < _MIN_SPACING_MM or max(ps) > 1000:
        raise DicomReadError(f"PixelSpacing (0028,0030) missing or invalid ({clip(get_text(ds, 'PixelSpacing'))}).",
                             path=path, tag="PixelSpacing")
    return ps[0], ps[1]  # row spacing (between rows, along the column direction), column spacing


def series_geometry_from_frames(
    positions: np.ndarray, row: np.ndarray, col: np.ndarray, spacing_rc: tuple[float, float], path: Path | None,
    strict: bool, names: list[Path] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sort frames by position along the normal; return (order, origin, slice spacing).

    ``names`` (one per frame: the file, or None for frames of one object) let a refusal name the file at the
    duplicate position or the gap.
    """
    normal = np.cross(row, col)
    d = positions @ normal
    order = np.argsort(d, kind="stable")
    ds_sorted = d[order]
    if len(d) == 1:
        return order, positions[0], float("nan")

    def at(k: int) -> Path | None:
        return names[int(order[k])] if names else path

    gaps = np.diff(ds_sorted)
    if np.any(gaps < 1e-3):
        k = int(np.argmax(gaps < 1e-3))
        raise DicomReadError(f"two slices share the position {ds_sorted[k]:.2f} mm along the slice normal (this "
                             f"file and {at(k)}): the series holds duplicates or several volumes.", path=at(k + 1),
                             tag="ImagePositionPatient")
    spacing = float(np.median(gaps))
    tol = 0.01 if strict else 0.05
    bad = np.abs(gaps - spacing) > tol * spacing + 1e-3
    if np.any(bad):
        k = int(np.argmax(bad))
        raise DicomReadError(f"slice spacing is not uniform (from {gaps.min():.3f} to {gaps.max():.3f} mm; "
                             f"{gaps[k]:.3f} mm between this slice and the next, {at(k + 1)}): a slice is missing or "
                             "the series mixes volumes.", path=at(k), tag="ImagePositionPatient")
    # in-plane offsets must agree (no gantry tilt / shear)
    inplane = positions[order] - np.outer(ds_sorted - ds_sorted[0], normal) - positions[order][0]
    if np.max(np.abs(inplane)) > max(0.5 * min(spacing_rc), 0.5):
        k = int(np.argmax(np.max(np.abs(inplane), axis=1)))
        raise DicomReadError("slices are sheared (gantry tilt or inconsistent positions); resample before import.",
                             path=at(k), tag="ImagePositionPatient")
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
    warnings: list[str] | None = None,
) -> tuple[ImageVolume, list[Dataset]]:
    """Stack a series into a volume of stored values x per-slice slope/intercept.

    ``kind`` is ``"nm"`` (Bq/mL through the Real World Value Mapping or Units BQML), ``"nm_counts"`` (counts: stored
    values x Rescale Slope, calibrated by the caller), ``"pt"`` (rescaled values; units converted by the caller) or
    ``"ct"`` (HU). Returns the volume and the datasets in slice order. Tolerated oddities are appended to
    ``warnings``.
    """
    path = files[0] if files else None
    ds0 = datasets[0]
    notes = warnings if warnings is not None else []
    if len(datasets) == 1 and get_value(ds0, "PerFrameFunctionalGroupsSequence") is not None:
        vol = _read_enhanced(ds0, path, kind=kind, strict=strict, unit=unit)
        _sanity(vol.array, kind, path, notes)
        return vol, [ds0]
    row, col = _orientation(ds0, path, strict)
    dr, dc = _pixel_spacing(ds0, path)
    normal = np.cross(row, col)
    if len(datasets) == 1 and (get_int(ds0, "NumberOfFrames") or 1) > 1:
        n_slices = get_int(ds0, "NumberOfSlices")
        n_frames = get_int(ds0, "NumberOfFrames")
        if kind.startswith("nm") and n_slices is not None and n_frames is not None and n_slices != n_frames:
            raise DicomReadError(f"NumberOfFrames {n_frames} differs from NumberOfSlices {n_slices}: gated or "
                                 "multi-window reconstructions are not supported; export one volume per series.",
                                 path=path, tag="NumberOfSlices")
        frames = pixel_array(ds0, path).astype(np.float64)
        _release_pixels(ds0)
        ipp = _position(ds0, path)
        if ipp is None:
            raise DicomReadError("ImagePositionPatient missing (top level and Detector Information Sequence).",
                                 path=path, tag="ImagePositionPatient")
        step = _slice_step(ds0, path, notes, kind)
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
        iop0 = get_floats(ds0, "ImageOrientationPatient", 6)
        for ds, f in zip(datasets, files, strict=True):
            p = _position(ds, f)
            if p is None:
                raise DicomReadError("ImagePositionPatient (0020,0032) missing or invalid.", path=f,
                                     tag="ImagePositionPatient")
            if present(ds, "NumberOfFrames") and get_int(ds, "NumberOfFrames") != 1:
                raise DicomReadError("series mixes multi-frame and single-frame objects.", path=f, tag="NumberOfFrames")
            if get_floats(ds, "ImageOrientationPatient", 6) != iop0:  # rarely: then compare the directions
                o_row, o_col = _orientation(ds, f, strict)
                if not (np.allclose(o_row, row, atol=1e-3) and np.allclose(o_col, col, atol=1e-3)):
                    raise DicomReadError("ImageOrientationPatient differs between slices of one series.", path=f,
                                         tag="ImageOrientationPatient")
            positions.append(p)
        order, origin, spacing = series_geometry_from_frames(np.array(positions), row, col, (dr, dc), path, strict,
                                                             names=list(files))
        if not math.isfinite(spacing):
            spacing = abs(checked_float(ds0, "SliceThickness", path=path, low=1e-3, high=1000.0)
                          or checked_float(ds0, "SpacingBetweenSlices", path=path, low=-1000.0, high=1000.0) or 1.0)
        ordered = [datasets[i] for i in order]
        ordered_files = [files[i] for i in order]
        values = np.empty(0, np.float32)
        intercepts: list[float] = []
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
            intercepts.append(intercept)
            values[k] = arr.astype(np.float64) * slope + intercept
            _release_pixels(ds)
        if kind == "ct":
            _thickness_check(ordered[0], spacing, path, notes)
            _ct_slices_check(values, intercepts, ordered_files, notes)
    _sanity(values, kind, path, notes)
    direction = np.column_stack([row, col, normal])
    vol = ImageVolume(values.astype(np.float32), spacing_mm=(dc, dr, spacing), origin_mm=tuple(origin),
                      direction=direction, unit=unit)
    return vol, ordered


def _slice_step(ds: Dataset, path: Path | None, notes: list[str], kind: str) -> float:
    """Signed spacing between the frames of one multi-frame object (SpacingBetweenSlices, else SliceThickness)."""
    step = checked_float(ds, "SpacingBetweenSlices", path=path, low=-1000.0, high=1000.0)
    thickness = checked_float(ds, "SliceThickness", path=path, low=0.0, high=1000.0)
    if step is None or step == 0:
        if present(ds, "SpacingBetweenSlices"):
            raise DicomReadError("SpacingBetweenSlices (0018,0088) is 0.", path=path, tag="SpacingBetweenSlices")
        step = thickness
    if step is None or step == 0:
        raise DicomReadError("SpacingBetweenSlices (0018,0088) and SliceThickness missing: slice spacing unknown.",
                             path=path, tag="SpacingBetweenSlices")
    if kind.startswith("nm") and thickness and abs(abs(step) - thickness) > 0.1 * thickness:
        # reconstructed SPECT slices are contiguous: spacing = thickness; a mismatch points at a corrupt header
        notes.append(f"SpacingBetweenSlices {abs(step):g} mm differs from SliceThickness {thickness:g} mm; the "
                     "slice spacing is taken from SpacingBetweenSlices")
    return float(step)


def _thickness_check(ds: Dataset, spacing: float, path: Path | None, notes: list[str]) -> None:
    thickness = get_float(ds, "SliceThickness")
    if thickness and thickness > 0 and (spacing > 3.0 * thickness or spacing < thickness / 3.0):
        notes.append(f"slice positions are {spacing:.3g} mm apart but SliceThickness is {thickness:g} mm")


def _ct_slices_check(values: np.ndarray, intercepts: list[float], files: list[Path], notes: list[str]) -> None:
    """Note CT slices whose rescale or air level differs from the rest of the series (a damaged slice)."""
    common = max(set(intercepts), key=intercepts.count)
    odd = [f.name for f, i in zip(files, intercepts, strict=True) if i != common]
    if odd and len(odd) < len(intercepts) / 2:
        notes.append(f"RescaleIntercept differs in {len(odd)} slice(s) ({', '.join(odd[:3])}) from the series' "
                     f"{common:g}")
    lows = values.reshape(values.shape[0], -1).min(axis=1)
    airless = [f.name for f, lo in zip(files, lows, strict=True) if lo > -500.0]
    if airless and len(airless) < values.shape[0] / 2:
        notes.append(f"{len(airless)} CT slice(s) hold no air while the others do ({', '.join(airless[:3])}): "
                     "check their RescaleIntercept (0028,1052)")


#: CT values outside this range (HU) are not a CT's; a rescale that produces them is corrupt.
_HU_RANGE = (-10000.0, 100000.0)


def _sanity(values: np.ndarray, kind: str, path: Path | None, notes: list[str]) -> None:
    """Refuse values no scanner of this kind produces; note suspicious ones."""
    if values.size == 0:
        raise DicomReadError("the series has no voxels.", path=path, tag="PixelData")
    if not np.isfinite(values).all():
        raise DicomReadError("the rescaled values overflow (NaN or infinite): RescaleSlope / RealWorldValueSlope is "
                             "corrupt.", path=path, tag="RescaleSlope")
    lo, hi = float(values.min()), float(values.max())
    if kind == "ct":
        if lo < _HU_RANGE[0] or hi > _HU_RANGE[1]:
            raise DicomReadError(f"CT values run from {lo:.6g} to {hi:.6g} HU, outside any CT's range "
                                 f"[{_HU_RANGE[0]:g}, {_HU_RANGE[1]:g}]: RescaleSlope / RescaleIntercept is corrupt.",
                                 path=path, tag="RescaleIntercept")
        if lo > -500.0:
            notes.append(f"the CT holds no air (lowest value {lo:.0f} HU): check RescaleIntercept (0028,1052)")


def _read_enhanced(ds: Dataset, path: Path | None, *, kind: str, strict: bool, unit: str) -> ImageVolume:
    """Enhanced / Legacy Converted Enhanced multi-frame image (functional groups, PS3.3 C.7.6.16).

    Frames are placed by their Plane Position and rescaled by their own Pixel Value Transformation (CT, PET) or,
    for emission images without one, their Real World Value Mapping in Bq/ml (per-frame rescale).
    """
    shared = get_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = get_value(ds, "PerFrameFunctionalGroupsSequence")
    frames = pixel_array(ds, path)
    n = frames.shape[0]
    try:
        items = [per_frame[i] for i in range(n)]
    except (IndexError, TypeError) as e:
        raise DicomReadError(f"PerFrameFunctionalGroupsSequence has fewer than {n} items.", path=path,
                             tag="PerFrameFunctionalGroupsSequence") from e
    if len(per_frame) != n:
        raise DicomReadError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n} frames.",
                             path=path, tag="PerFrameFunctionalGroupsSequence")

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
    if ps is None or min(ps) < _MIN_SPACING_MM or max(ps) > 1000:
        raise DicomReadError("PixelMeasuresSequence > PixelSpacing missing or invalid.", path=path, tag="PixelSpacing")
    positions = []
    slopes = np.ones(n)
    intercepts = np.zeros(n)
    for i, item in enumerate(items):
        if get_floats(group(item, "PlaneOrientationSequence"), "ImageOrientationPatient", 6) != iop:
            raise DicomReadError(f"frame {i + 1}: ImageOrientationPatient differs from frame 1.", path=path,
                                 tag="ImageOrientationPatient")
        if get_floats(group(item, "PixelMeasuresSequence"), "PixelSpacing", 2) != ps:
            raise DicomReadError(f"frame {i + 1}: PixelSpacing differs from frame 1.", path=path, tag="PixelSpacing")
        pos = get_floats(group(item, "PlanePositionSequence"), "ImagePositionPatient", 3)
        if pos is None:
            raise DicomReadError(f"frame {i + 1}: PlanePositionSequence > ImagePositionPatient missing.", path=path,
                                 tag="ImagePositionPatient")
        positions.append(pos)
        transform = group(item, "PixelValueTransformationSequence")
        if transform is not None:
            slopes[i], intercepts[i] = _rescale(transform, path, kind)
        elif kind in ("nm", "pt"):
            mapping = group(item, "RealWorldValueMappingSequence")
            if mapping is not None:
                holder = Dataset()
                holder.RealWorldValueMappingSequence = [mapping]
                mapped = _rwvm(holder, path)
                if mapped is None:
                    raise DicomReadError(f"frame {i + 1}: the Real World Value Mapping is not in Bq/ml.", path=path,
                                         tag="RealWorldValueMappingSequence")
                slopes[i], intercepts[i] = mapped
            elif kind == "nm":
                raise DicomReadError(f"frame {i + 1}: no Pixel Value Transformation and no Real World Value Mapping "
                                     "in Bq/ml.", path=path, tag="RealWorldValueMappingSequence")
    order, origin, spacing = series_geometry_from_frames(np.array(positions), row, col, (ps[0], ps[1]), path, strict)
    if not math.isfinite(spacing):
        spacing = abs(checked_float(group(items[0], "PixelMeasuresSequence"), "SliceThickness", path=path,
                                    low=1e-3, high=1000.0) or 1.0)
    values = frames[order].astype(np.float64) * slopes[order, None, None] + intercepts[order, None, None]
    _release_pixels(ds)
    normal = np.cross(row, col)
    return ImageVolume(values.astype(np.float32), spacing_mm=(ps[1], ps[0], spacing), origin_mm=tuple(origin),
                       direction=np.column_stack([row, col, normal]), unit=unit)


def _mapping(ds: Dataset, path: Path | None, kind: str) -> tuple[float, float]:
    """Slope and intercept from stored values to the quantity (Bq/mL for NM; counts for NM counts; rescaled
    units for PT/CT)."""
    if kind == "nm":
        if present(ds, "RealWorldValueMappingSequence"):
            mapped = _rwvm(ds, path)
            if mapped is not None:
                return mapped
        if get_text(ds, "Units").upper() == "BQML":
            return _rescale(ds, path, kind)
        raise DicomReadError("SPECT without quantitative units (no Bq/ml real-world value mapping).", path=path,
                             tag="RealWorldValueMappingSequence")
    return _rescale(ds, path, kind)


def _rwvm(ds: Dataset, path: Path | None) -> tuple[float, float] | None:
    """The Bq/ml item of the Real World Value Mapping Sequence (PS3.3 C.7.6.16.2.11), or None if there is none."""
    rw = get_value(ds, "RealWorldValueMappingSequence")
    try:
        items = list(rw) if rw is not None else []
    except TypeError:
        items = []
    for item in items:
        unit = get_text(get_item(item, "MeasurementUnitsCodeSequence"), "CodeValue").lower().replace(" ", "")
        if unit in ("bq/ml", "bq/cm3") or get_text(item, "LUTLabel").upper() == "BQML":
            if not present(item, "RealWorldValueSlope"):
                if present(item, "RealWorldValueLUTData"):
                    raise DicomReadError("real-world value LUT data are not supported; need slope/intercept.",
                                         path=path, tag="RealWorldValueLUTData")
                raise DicomReadError("RealWorldValueSlope (0040,9225) missing.", path=path, tag="RealWorldValueSlope")
            slope = checked_float(item, "RealWorldValueSlope", path=path, low=1e-30, high=1e12,
                                  what="Bq/ml per stored value")
            intercept = checked_float(item, "RealWorldValueIntercept", path=path, default=0.0, low=-1e15, high=1e15)
            assert slope is not None and intercept is not None
            return slope, intercept
    return None


def _rescale(ds: Dataset, path: Path | None, kind: str = "ct") -> tuple[float, float]:
    """Rescale Slope / Intercept (PS3.3 C.11.1.1.2): Type 1 in the CT and PET Image modules (C.8.2.1, C.8.9.4)
    and in the Pixel Value Transformation of enhanced images, so a missing one is refused there, not taken as
    1 / 0 (a CT slice without its -1024 intercept reads 1024 HU too dense); present but corrupt is refused; a
    non-positive slope makes no sense for HU or activity. NM without these attributes means 1 / 0."""
    required = kind in ("ct", "pt")
    slope = checked_float(ds, "RescaleSlope", path=path, default=1.0, low=1e-30, high=1e12,
                          what="must be positive", required=required)
    intercept = checked_float(ds, "RescaleIntercept", path=path, default=0.0, low=-1e15, high=1e15,
                              required=required)
    assert slope is not None and intercept is not None
    return slope, intercept


def dt_or_none(ds: Dataset, keyword: str) -> datetime | None:
    return parse_dt(get_value(ds, keyword))
