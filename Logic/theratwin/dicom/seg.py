"""DICOM Segmentation (PS3.3 A.51) of the structures used for the dosimetry, written with highdicom.

The SEG is binary, on the reference CT's grid and referencing its slices as source images, one segment per
structure in the order given, with the structure's coded category/type (SNOMED CT, from
:attr:`theratwin.study.Structure.kind`) and anatomic region. The SR refers to these segments by number.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from .._version import __version__
from ..errors import InvalidInputError
from ..study import Geometry, Segmentation, Structure
from ..study.codes import CodedConcept
from .exportcontext import MANUFACTURER, MODEL_NAME, ExportContext
from .uids import new_uid

__all__ = ["build_seg", "coded", "display_color", "rgb_from_display_color", "SEG_SERIES_DESCRIPTION"]

SEG_SERIES_DESCRIPTION = "TheraTwin structures used for dosimetry [research use]"


def coded(c: CodedConcept) -> hd.sr.CodedConcept:
    """The highdicom form of a :class:`~theratwin.study.codes.CodedConcept`."""
    return hd.sr.CodedConcept(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def display_color(rgb: Sequence[int]) -> hd.color.CIELabColor:
    """RecommendedDisplayCIELabValue of an sRGB colour (0-255): CIE L*a*b* (D65), each component scaled to
    0..0xFFFF as PS3.3 C.10.7.1.1 prescribes (highdicom does the colour-space conversion)."""
    r, g, b = (int(c) for c in rgb)
    return hd.color.CIELabColor.from_rgb(r, g, b)


def rgb_from_display_color(value: Sequence[int]) -> tuple[int, int, int]:
    """sRGB (0-255) of a RecommendedDisplayCIELabValue (three unsigned 16-bit values); raises ValueError for
    a value that is not three integers in 0..0xFFFF."""
    r, g, b = hd.color.CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb()
    return int(r), int(g), int(b)


def _order_ct_headers(headers: Sequence[Dataset], geometry: Geometry) -> list[Dataset]:
    """Headers of the reference CT sorted by slice index of ``geometry`` (every slice exactly once)."""
    by_index: dict[int, Dataset] = {}
    for h in headers:
        ijk = geometry.lps_to_index(np.asarray([float(v) for v in h.ImagePositionPatient]))
        k = int(round(float(ijk[2])))
        if abs(ijk[2] - k) > 0.05 or not 0 <= k < geometry.shape[0] or k in by_index:
            raise InvalidInputError(
                f"Reference CT slice {h.SOPInstanceUID} at ImagePositionPatient {list(h.ImagePositionPatient)} "
                "does not fall on one slice of the reference CT grid; the CT files and the in-memory reference "
                "CT disagree. Re-read the study."
            )
        by_index[k] = h
    if len(by_index) != geometry.shape[0]:
        raise InvalidInputError(
            f"The reference CT has {geometry.shape[0]} slices but {len(by_index)} DICOM files were found; a SEG "
            "must reference every slice it covers. Re-read the study with all CT files."
        )
    return [by_index[k] for k in range(geometry.shape[0])]


def build_seg(segmentation: Segmentation, structures: Sequence[Structure], ctx: ExportContext, *,
              ct_geometry: Geometry, series_number: int, algorithm_type: str = "MANUAL") -> hd.seg.Segmentation:
    """Make a binary DICOM SEG of ``structures`` on the reference CT.

    Parameters
    ----------
    segmentation
        The study's segmentation (masks on its own grid).
    structures
        The structures to include, in segment-number order (segment k+1 is ``structures[k]``).
    ctx
        The export context; its ``reference_ct`` headers are the SEG's source images.
    ct_geometry
        Grid of the reference CT (``Study.reference_ct.geometry``); masks on another grid are resampled to
        it (nearest voxel centre, at least half covered).
    series_number
        SeriesNumber of the new SEG series.
    algorithm_type
        SegmentAlgorithmType (0062,0008) of the input masks: ``MANUAL``, ``SEMIAUTOMATIC`` or ``AUTOMATIC``.

    Raises
    ------
    InvalidInputError
        Without reference CT files, or when a structure is empty on the CT grid.
    """
    if not ctx.reference_ct:
        raise InvalidInputError("A DICOM SEG needs the reference CT's DICOM files as source images; the study has "
                                "none (Study.reference_ct_source.files). Read the study from DICOM.")
    if not structures:
        raise InvalidInputError("No structure to put into the SEG.")
    sources = _order_ct_headers(ctx.reference_ct, ct_geometry)
    if segmentation.geometry.same_grid(ct_geometry):
        masks = {s.name: segmentation.masks[s.name] for s in structures}
    else:
        masks = {s.name: segmentation.fractional_mask(s.name, ct_geometry) >= 0.5 for s in structures}
    for name, m in masks.items():
        if not m.any():
            raise InvalidInputError(f"Structure '{name}' has no voxel on the reference CT grid; it cannot be a "
                                    "SEG segment.")
    pixel_array = np.stack([masks[s.name] for s in structures], axis=-1).astype(np.uint8)  # (z, y, x, segments)
    algo = None
    if algorithm_type.upper() != "MANUAL":
        algo = hd.AlgorithmIdentificationSequence(
            name="TheraTwin input segmentation", family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing"),
            version=__version__)
    descriptions = []
    for i, s in enumerate(structures):
        k = s.kind
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=s.name[:64],
            segmented_property_category=coded(k.category),
            segmented_property_type=coded(k.type),
            algorithm_type=algorithm_type.upper(),
            algorithm_identification=algo,
            tracking_uid=new_uid(),
            tracking_id=s.name[:64],
            anatomic_regions=[coded(k.anatomic_region)] if k.anatomic_region else None,
            display_color=display_color(s.color_rgb),
        ))
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=new_uid(),
        series_number=series_number,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number="1",
        content_description="Structures used for dosimetry (research use)",
        content_label="THERATWIN",
        series_description=SEG_SERIES_DESCRIPTION,
    )
    seg.ContentDate = DA(ctx.created.strftime("%Y%m%d"))
    seg.ContentTime = TM(ctx.created.strftime("%H%M%S"))
    ctx.stamp_timezone(seg)
    return seg
