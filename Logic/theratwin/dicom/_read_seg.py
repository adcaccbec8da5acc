"""Read a DICOM Segmentation (binary or fractional) into a :class:`~theratwin.study.Segmentation`.

Frames are placed on the reference CT grid when the SEG's plane orientation and pixel spacing match it and its
frame positions fall on CT slices (the usual case: a SEG drawn on that CT); otherwise the SEG's own regular grid
is used (``Segmentation.fractional_mask`` resamples as needed). Structure names come from SegmentLabel; the kind
(SNOMED codes, role, tissue) from the Segmented Property Type code, disambiguated by the Anatomic Region for
lesions, and from the name when the codes are not among TheraTwin's built-in kinds; the display colour from
RecommendedDisplayCIELabValue (else the kind's recommended colour).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import DicomReadError
from ..study.codes import STRUCTURE_KINDS, StructureKind, structure_kind
from ..study.image import Geometry
from ..study.model import Segmentation, SourceRef, Structure
from ._read_images import _orientation, pixel_array
from ._read_values import get_float, get_floats, get_int, get_item, get_text, get_value
from .seg import rgb_from_display_color

__all__ = ["read_seg", "kind_from_codes"]


def kind_from_codes(name: str, type_value: str, type_scheme: str, region_values: set[str]) -> StructureKind:
    """Structure kind from the coded property type (and anatomic region), falling back to the name."""
    matches = [k for k in STRUCTURE_KINDS.values()
               if k.type.value == type_value and k.type.scheme == type_scheme and k.key != "other"]
    if len(matches) > 1 and region_values:
        regional = [k for k in matches if k.anatomic_region and k.anatomic_region.value in region_values]
        matches = regional or matches
    if len(matches) > 1:
        by_name = structure_kind(name)
        if by_name in matches:
            return by_name
    if matches:
        return matches[0]
    return structure_kind(name)


def _display_rgb(item: Dataset, path: Path, strict: bool) -> tuple[int, int, int] | None:
    """sRGB of a segment's RecommendedDisplayCIELabValue (0062,000D); None (the kind's colour) when absent, or
    when malformed and not strict."""
    value = get_value(item, "RecommendedDisplayCIELabValue")
    if value is None:
        return None
    try:
        return rgb_from_display_color(list(value))
    except (TypeError, ValueError):
        if strict:
            raise DicomReadError(f"RecommendedDisplayCIELabValue {value!r} is not three values 0-65535.", path=path,
                                 tag="RecommendedDisplayCIELabValue") from None
        return None


def _frame_info(ds: Dataset, i: int, shared: Dataset | None, path: Path) -> tuple[int, list[float]]:
    pf = get_value(ds, "PerFrameFunctionalGroupsSequence")
    try:
        item = pf[i] if pf is not None else None
    except (IndexError, TypeError):
        item = None
    if item is None:
        raise DicomReadError(f"PerFrameFunctionalGroupsSequence has no item for frame {i + 1}.", path=path,
                             tag="PerFrameFunctionalGroupsSequence")
    seg_id = get_item(item, "SegmentIdentificationSequence") or get_item(shared, "SegmentIdentificationSequence")
    number = get_int(seg_id, "ReferencedSegmentNumber")
    pos = get_floats(get_item(item, "PlanePositionSequence"), "ImagePositionPatient", 3)
    if pos is None:
        pos = get_floats(get_item(shared, "PlanePositionSequence"), "ImagePositionPatient", 3)
    if number is None or pos is None:
        raise DicomReadError(f"frame {i + 1}: ReferencedSegmentNumber or ImagePositionPatient missing.", path=path,
                             tag="PerFrameFunctionalGroupsSequence")
    return number, pos


def read_seg(ds: Dataset, path: Path, reference: Geometry | None, *, strict: bool,
             reference_sops: set[str] | None = None) -> Segmentation:
    """Read a SEG dataset. ``reference`` is the grid to place the masks on when compatible (the reference CT).

    ``reference_sops`` are the SOPInstanceUIDs of the reference CT: a SEG whose frames were derived from those
    slices, with the same Rows x Columns, must have their orientation and pixel spacing (a SEG whose spacing
    disagrees with its source would scale every mask).
    """
    seg_type = get_text(ds, "SegmentationType").upper()
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise DicomReadError(f"SegmentationType '{seg_type}' is not supported (need BINARY or FRACTIONAL).",
                             path=path, tag="SegmentationType")
    segments = get_value(ds, "SegmentSequence")
    if not segments:
        raise DicomReadError("SegmentSequence (0062,0002) is empty.", path=path, tag="SegmentSequence")
    shared = get_item(ds, "SharedFunctionalGroupsSequence")
    probe = Dataset()
    iop = get_floats(get_item(shared, "PlaneOrientationSequence"), "ImageOrientationPatient", 6)
    if iop is None:
        pf0 = get_item(ds, "PerFrameFunctionalGroupsSequence")
        iop = get_floats(get_item(pf0, "PlaneOrientationSequence"), "ImageOrientationPatient", 6)
    if iop is None:
        raise DicomReadError("PlaneOrientationSequence > ImageOrientationPatient missing or invalid.", path=path,
                             tag="ImageOrientationPatient")
    probe.ImageOrientationPatient = iop
    row, col = _orientation(probe, path, strict)
    normal = np.cross(row, col)
    measures = get_item(shared, "PixelMeasuresSequence") or get_item(
        get_item(ds, "PerFrameFunctionalGroupsSequence"), "PixelMeasuresSequence")
    ps = get_floats(measures, "PixelSpacing", 2)
    if ps is None or min(ps) <= 0:
        raise DicomReadError("PixelSpacing of the segmentation missing.", path=path, tag="PixelSpacing")
    if reference is not None and reference_sops:
        _check_against_source(ds, path, reference, reference_sops, row, col, ps)
    frames = pixel_array(ds, path)
    n_frames = frames.shape[0]
    if seg_type == "FRACTIONAL":
        maxval = get_float(ds, "MaximumFractionalValue") or 255.0
        binary = frames.astype(np.float32) >= 0.5 * maxval
    else:
        binary = frames.astype(bool)
    numbers, positions = [], []
    for i in range(n_frames):
        n, p = _frame_info(ds, i, shared, path)
        numbers.append(n)
        positions.append(p)
    pos = np.array(positions)
    rows, cols = binary.shape[1:]

    geometry = None
    ks = ii = jj = None
    if reference is not None:
        ref_dir = reference.direction_matrix
        same_orient = np.allclose(ref_dir[:, 0], row, atol=1e-4) and np.allclose(ref_dir[:, 1], col, atol=1e-4)
        sx, sy, sz = reference.spacing_mm
        if same_orient and abs(ps[1] - sx) < 1e-3 and abs(ps[0] - sy) < 1e-3:
            rel = (pos - np.asarray(reference.origin_mm)) @ ref_dir
            idx = rel / np.array([sx, sy, sz])
            rounded = np.rint(idx)
            nz, ny, nx = reference.shape
            if (np.max(np.abs(idx - rounded)) < 0.05 and rounded[:, 2].min() >= 0 and rounded[:, 2].max() < nz
                    and rounded[:, 0].min() >= 0 and rounded[:, 0].max() + cols <= nx
                    and rounded[:, 1].min() >= 0 and rounded[:, 1].max() + rows <= ny):
                geometry = reference
                ii, jj, ks = rounded[:, 0].astype(int), rounded[:, 1].astype(int), rounded[:, 2].astype(int)
    if geometry is None:
        d = pos @ normal
        uniq = np.unique(np.round(d, 3))
        spacing = get_float(measures, "SpacingBetweenSlices") or (float(np.min(np.diff(uniq))) if len(uniq) > 1
                                                                   else get_float(measures, "SliceThickness") or 1.0)
        spacing = abs(spacing)
        k = np.rint((d - uniq[0]) / spacing).astype(int)
        if np.max(np.abs((d - uniq[0]) / spacing - k)) > 0.05 or k.max() > 4096:
            raise DicomReadError("segmentation frames are not on a regular slice grid.", path=path,
                                 tag="ImagePositionPatient")
        origin = pos[np.argmin(d)] - 0.0
        inplane = (pos - origin) @ np.column_stack([row, col])
        if np.max(np.abs(inplane)) > 0.5 * min(ps):
            raise DicomReadError("segmentation frames are shifted in-plane; not supported without a matching CT.",
                                 path=path, tag="ImagePositionPatient")
        geometry = Geometry((int(k.max()) + 1, rows, cols), (ps[1], ps[0], spacing), tuple(origin),
                            tuple(map(tuple, np.column_stack([row, col, normal]))))
        ks, ii, jj = k, np.zeros_like(k), np.zeros_like(k)

    structures: list[Structure] = []
    masks: dict[str, np.ndarray] = {}
    number_to_name: dict[int, str] = {}
    for item in segments:
        number = get_int(item, "SegmentNumber")
        if number is None or number < 1:
            raise DicomReadError("a segment has no valid SegmentNumber.", path=path, tag="SegmentNumber")
        name = get_text(item, "SegmentLabel") or f"segment_{number}"
        if name in masks:
            name = f"{name}_{number}"
        t = get_item(item, "SegmentedPropertyTypeCodeSequence")
        regions = set()
        for key in ("AnatomicRegionSequence",):
            seq = get_value(item, key)
            if seq:
                try:
                    regions |= {get_text(r, "CodeValue") for r in seq}
                except TypeError:
                    pass
        kind = kind_from_codes(name, get_text(t, "CodeValue"), get_text(t, "CodingSchemeDesignator"), regions)
        structures.append(Structure(name, number, kind, _display_rgb(item, path, strict) or kind.color_rgb))
        masks[name] = np.zeros(geometry.shape, dtype=bool)
        number_to_name[number] = name
    assert ks is not None and ii is not None and jj is not None
    for f in range(n_frames):
        frame_name = number_to_name.get(numbers[f])
        if frame_name is None:
            raise DicomReadError(f"frame {f + 1} refers to segment {numbers[f]}, which is not in SegmentSequence.",
                                 path=path, tag="ReferencedSegmentNumber")
        k, i0, j0 = ks[f], ii[f], jj[f]
        masks[frame_name][k, j0:j0 + rows, i0:i0 + cols] |= binary[f]
    source = SourceRef(
        study_uid=get_text(ds, "StudyInstanceUID"),
        series_uid=get_text(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=get_text(ds, "FrameOfReferenceUID"),
        modality="SEG",
        sop_instance_uids=(get_text(ds, "SOPInstanceUID"),),
        sop_class_uid=get_text(ds, "SOPClassUID"),
        series_description=get_text(ds, "SeriesDescription"),
        files=(str(path),),
    )
    return Segmentation(geometry, structures, masks, source)


def _referenced_sops(ds: Dataset) -> set[str]:
    """SOPInstanceUIDs the SEG says it was derived from (per-frame Derivation Image, Referenced Series)."""
    out: set[str] = set()
    try:
        for item in get_value(ds, "PerFrameFunctionalGroupsSequence") or []:
            for der in get_value(item, "DerivationImageSequence") or []:
                for src in get_value(der, "SourceImageSequence") or []:
                    out.add(get_text(src, "ReferencedSOPInstanceUID"))
        for ser in get_value(ds, "ReferencedSeriesSequence") or []:
            for inst in get_value(ser, "ReferencedInstanceSequence") or []:
                out.add(get_text(inst, "ReferencedSOPInstanceUID"))
    except TypeError:
        pass
    out.discard("")
    return out


def _check_against_source(ds: Dataset, path: Path, reference: Geometry, reference_sops: set[str], row: np.ndarray,
                          col: np.ndarray, ps: list[float]) -> None:
    if not (_referenced_sops(ds) & reference_sops):
        return
    nz, ny, nx = reference.shape
    if (get_int(ds, "Rows"), get_int(ds, "Columns")) != (ny, nx):
        return  # drawn on a crop or another grid: its own geometry is used
    ref_dir = reference.direction_matrix
    sx, sy, _ = reference.spacing_mm
    if not (np.allclose(ref_dir[:, 0], row, atol=1e-3) and np.allclose(ref_dir[:, 1], col, atol=1e-3)):
        raise DicomReadError("the SEG's ImageOrientationPatient disagrees with the CT it was derived from (same "
                             "Rows x Columns, frames referencing its slices).", path=path, tag="ImageOrientationPatient")
    if abs(ps[1] - sx) > 1e-3 * sx or abs(ps[0] - sy) > 1e-3 * sy:
        raise DicomReadError(f"the SEG's PixelSpacing {ps[0]:g}\\{ps[1]:g} mm disagrees with the CT it was derived "
                             f"from ({sy:g}\\{sx:g} mm, same Rows x Columns): every mask would be scaled. Re-export "
                             "the segmentation.", path=path, tag="PixelSpacing")
