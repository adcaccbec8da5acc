"""RT Dose objects (PS3.3 A.18) for absorbed-dose and BED maps.

Conventions (one per export, documented here so that readers can rely on them):

- Pixel data are 16-bit unsigned (BitsAllocated 16, PixelRepresentation 0); the 2022 ``dciodvfy`` crashes on
  32-bit RT Dose and 16-bit is what every RT viewer reads.
- **DoseGridScaling** (3004,000E) is chosen per object as the smallest value with at most 8 significant digits
  that is >= max(dose) / 65535, and pixel values are ``round(dose / DoseGridScaling)``; the stored dose is
  therefore within DoseGridScaling / 2 of the computed one (PS3.3 C.8.8.3.4.3: dose = pixel x scaling).
- Absorbed dose maps: DoseType ``PHYSICAL``; BED maps: DoseType ``EFFECTIVE`` (PS3.3 C.8.8.3: "physical dose
  after correction for biological effect"); DoseUnits ``GY``.
- DoseSummationType (3004,000A) has Defined Terms for external-beam and brachytherapy plans only, and every
  standard term except RECORD requires a Referenced RT Plan Sequence, RECORD a treatment record; a
  radiopharmaceutical therapy has neither. PS3.3 allows Defined Terms to be extended, so TheraTwin writes
  ``CYCLE`` (dose of one administration, the analogue of ``FRACTION``) and ``MULTI_CYCLE`` (sum over
  administrations, the analogue of ``MULTI_PLAN``). Validators report these as unrecognised terms (a
  warning, not an error); SlicerRT and plastimatch do not read the attribute.
- The dose grid is the reference SPECT grid, in the reference CT's frame of reference; frames are stored in
  the order of increasing GridFrameOffsetVector (relative offsets, first 0) along the normal of
  ImageOrientationPatient, so readers that stack frames in file order (plastimatch) get the right geometry.
- SeriesDescription says what the map is and that it is for research use; DoseComment carries the full
  research-use notice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, RTDoseStorage

from ..errors import InvalidInputError
from ..results import RESEARCH_USE_NOTICE
from ..study import ImageVolume
from .exportcontext import ExportContext
from .uids import new_uid

__all__ = ["DoseKind", "DoseMapSpec", "dose_grid_scaling", "build_rtdose", "rtdose_to_image"]

#: Largest stored pixel value (16-bit unsigned).
MAX_PIXEL = 65535


class DoseKind(str, Enum):
    """What an RT Dose object holds."""

    CYCLE_DOSE = "cycle_dose"
    CYCLE_BED = "cycle_bed"
    CUMULATIVE_DOSE = "cumulative_dose"
    CUMULATIVE_BED = "cumulative_bed"

    @property
    def dose_type(self) -> str:
        """DoseType (3004,0004): PHYSICAL for absorbed dose, EFFECTIVE for BED."""
        return "EFFECTIVE" if self in (DoseKind.CYCLE_BED, DoseKind.CUMULATIVE_BED) else "PHYSICAL"

    @property
    def summation_type(self) -> str:
        """DoseSummationType (3004,000A), extended Defined Terms (see the module docstring)."""
        return "MULTI_CYCLE" if self in (DoseKind.CUMULATIVE_DOSE, DoseKind.CUMULATIVE_BED) else "CYCLE"


@dataclass(frozen=True)
class DoseMapSpec:
    """A dose map to export: the map, its kind, the cycle (None for cumulative) and its results key."""

    key: str
    image: ImageVolume
    kind: DoseKind
    cycle: int | None = None

    def description(self) -> str:
        """SeriesDescription (LO, at most 64 characters)."""
        what = {
            DoseKind.CYCLE_DOSE: f"Cycle {self.cycle} absorbed dose",
            DoseKind.CYCLE_BED: f"Cycle {self.cycle} BED",
            DoseKind.CUMULATIVE_DOSE: f"Cumulative absorbed dose (cycles 1-{self.cycle})" if self.cycle
            else "Cumulative absorbed dose",
            DoseKind.CUMULATIVE_BED: f"Cumulative BED (cycles 1-{self.cycle})" if self.cycle else "Cumulative BED",
        }[self.kind]
        return f"TheraTwin {what} [research use]"[:64]


def dose_grid_scaling(max_dose_Gy: float) -> float:
    """DoseGridScaling for a map whose largest value is ``max_dose_Gy`` (the module's convention).

    Returns the smallest number with at most 8 significant digits (so that it is exact as a DS string) that
    is >= ``max_dose_Gy / 65535``; 1e-6 Gy for an all-zero map.
    """
    if not np.isfinite(max_dose_Gy) or max_dose_Gy < 0:
        raise InvalidInputError(f"Maximum dose must be finite and >= 0 Gy; got {max_dose_Gy}.")
    if max_dose_Gy == 0:
        return 1e-6
    s = max_dose_Gy / MAX_PIXEL
    quantum = 10.0 ** (math.floor(math.log10(s)) - 7)  # one unit in the 8th significant digit
    steps = math.ceil(s / quantum)
    value = float(f"{steps * quantum:.8g}")
    if max_dose_Gy / value > MAX_PIXEL:  # binary round-off of the product
        value = float(f"{(steps + 1) * quantum:.8g}")
    return value


def _ds(x: float) -> str:
    """A decimal string of at most 16 characters (DS VR) for ``x``."""
    for digits in range(12, 3, -1):
        s = f"{x:.{digits}g}"
        if len(s) <= 16:
            return s
    raise InvalidInputError(f"Cannot encode {x} as a DICOM decimal string.")  # pragma: no cover


def _frames_in_offset_order(image: ImageVolume) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Array (frames, rows, cols), ImagePositionPatient of frame 0, IOP (6) and offsets (mm) ascending."""
    d = image.geometry.direction_matrix
    row_dir, col_dir, slice_dir = d[:, 0], d[:, 1], d[:, 2]
    normal = np.cross(row_dir, col_dir)
    sz = image.spacing_mm[2]
    step = float(np.dot(slice_dir, normal)) * sz
    if abs(abs(step) - sz) > 1e-3 * sz:
        raise InvalidInputError(
            f"Dose grid slices are not perpendicular to the image plane (direction {d.tolist()}); RT Dose needs "
            "parallel frames along the plane normal. Resample the map to an orthogonal grid first."
        )
    arr = np.asarray(image.array)
    origin = np.asarray(image.origin_mm, dtype=float)
    n = arr.shape[0]
    if step < 0:  # left-handed index axes: store the last slice first so offsets increase
        origin = origin + (n - 1) * sz * slice_dir
        arr = arr[::-1]
        step = -step
    offsets = np.arange(n) * step
    iop = np.concatenate([row_dir, col_dir])
    return arr, origin, iop, offsets


def build_rtdose(spec: DoseMapSpec, ctx: ExportContext, *, series_number: int,
                 source_images: Sequence[Dataset] = (), derivation: str = "") -> Dataset:
    """Make an RT Dose dataset (with file meta) from a dose or BED map.

    Parameters
    ----------
    spec
        The map (values in Gy on its grid, LPS geometry) and what it is.
    ctx
        Patient/study identity, frame of reference and timing of the export.
    series_number
        SeriesNumber of the new series (one RT Dose per series, InstanceNumber 1).
    source_images
        Headers of the images the dose was derived from (SourceImageSequence of the General Image module).
    derivation
        DerivationDescription text (methods), at most 1024 bytes (UTF-8) kept.

    Raises
    ------
    InvalidInputError
        If the map has non-finite or clearly negative values, or a grid RT Dose cannot represent.
    """
    img = spec.image
    if img.unit not in ("Gy", "GY"):
        raise InvalidInputError(f"Map '{spec.key}' is in {img.unit!r}; RT Dose needs Gy.")
    values = np.asarray(img.array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"Map '{spec.key}' has NaN or infinite values; fix the dose calculation first.")
    vmax = float(values.max(initial=0.0))
    vmin = float(values.min(initial=0.0))
    # FFT convolution leaves round-off of order 1e-7 of the maximum below zero; anything larger is an error
    if vmin < -1e-6 * max(vmax, 1e-12):
        raise InvalidInputError(f"Map '{spec.key}' has negative doses down to {vmin:.4g} Gy; RT Dose cannot "
                                "store them and they are unphysical.")
    values = np.clip(values, 0.0, None)
    scaling = dose_grid_scaling(vmax)
    pixels = np.rint(values / scaling).astype(np.uint16)
    vol = img.with_array(pixels, unit="1")
    frames, ipp, iop, offsets = _frames_in_offset_order(vol)

    sop_uid = UID(new_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTDoseStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTDoseStorage
    ds.SOPInstanceUID = sop_uid
    ctx.copy_patient_study(ds)
    ctx.equipment(ds)
    # RT Series module
    ds.Modality = "RTDOSE"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = spec.description()
    ds.OperatorsName = ""
    # Frame of Reference module
    ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Image module
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ImageComments = RESEARCH_USE_NOTICE[:10240]
    if derivation:
        # ST holds 1024 bytes in the declared character set (UTF-8: "Hänscheid" counts 10): cut on a character
        ds.DerivationDescription = derivation.encode("utf-8")[:1024].decode("utf-8", errors="ignore")
    if source_images:
        items = []
        for src in source_images:
            item = Dataset()
            item.ReferencedSOPClassUID = src.SOPClassUID
            item.ReferencedSOPInstanceUID = src.SOPInstanceUID
            items.append(item)
        ds.SourceImageSequence = DicomSequence(items)
    # Image Plane module
    ds.ImagePositionPatient = [_ds(v) for v in ipp]
    ds.ImageOrientationPatient = [_ds(round(v, 10)) for v in iop]
    ds.PixelSpacing = [_ds(img.spacing_mm[1]), _ds(img.spacing_mm[0])]  # row spacing (y), column spacing (x)
    ds.SliceThickness = _ds(img.spacing_mm[2])
    # Image Pixel, Multi-frame and RT Dose modules
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = int(frames.shape[1])
    ds.Columns = int(frames.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = int(frames.shape[0])
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)  # GridFrameOffsetVector
    ds.DoseUnits = "GY"
    ds.DoseType = spec.kind.dose_type
    ds.DoseSummationType = spec.kind.summation_type
    ds.DoseComment = ("BED, " if spec.kind.dose_type == "EFFECTIVE" else "") + "research use only, not for clinical decisions"
    ds.GridFrameOffsetVector = [_ds(v) for v in offsets]
    ds.DoseGridScaling = _ds(scaling)
    ds.PixelData = np.ascontiguousarray(frames, dtype="<u2").tobytes()
    return ds


def rtdose_to_image(ds: Dataset) -> ImageVolume:
    """Read an RT Dose dataset back into a dose map in Gy (LPS geometry, array (z, y, x)).

    Only what RT viewers use is read: pixel data x DoseGridScaling, ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing and GridFrameOffsetVector (relative or absolute form).
    """
    try:
        arr = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        dy, dx = (float(v) for v in ds.PixelSpacing)
        offsets = np.asarray([float(v) for v in ds.GridFrameOffsetVector])
    except (AttributeError, KeyError, ValueError) as exc:
        raise InvalidInputError(f"RT Dose {ds.get('SOPInstanceUID', '?')}: missing or bad geometry ({exc}).") from None
    if arr.ndim == 2:
        arr = arr[None]
    if len(offsets) != arr.shape[0]:
        raise InvalidInputError(f"RT Dose {ds.SOPInstanceUID}: {len(offsets)} GridFrameOffsetVector values for "
                                f"{arr.shape[0]} frames.")
    normal = np.cross(iop[:3], iop[3:])
    if offsets[0] != 0:  # absolute form: offsets are positions along the normal (PS3.3 C.8.8.3.2)
        offsets = offsets - float(np.dot(ipp, normal))
    dz = float(offsets[1] - offsets[0]) if len(offsets) > 1 else float(ds.get("SliceThickness", 1.0) or 1.0)
    if len(offsets) > 2 and not np.allclose(np.diff(offsets), dz, atol=1e-3 * abs(dz)):
        raise InvalidInputError(f"RT Dose {ds.SOPInstanceUID}: GridFrameOffsetVector is not evenly spaced.")
    direction = np.column_stack([iop[:3], iop[3:], normal * np.sign(dz)])
    origin = ipp + offsets[0] * normal
    return ImageVolume(arr, spacing_mm=(dx, dy, abs(dz)), origin_mm=tuple(origin), direction=direction, unit="Gy")
