"""Segmentation nodes <-> :class:`theratwin.Segmentation`.

Each structure becomes one segment with its own binary labelmap layer, so overlapping structures (allowed in
DICOM SEG and in the core) survive the round trip. Segment names are the structure names; the SNOMED codes of
the structure kind go into the segment's terminology tag so Slicer shows the right anatomy and DICOM SEG export
from Slicer writes the same codes as the core.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer
import vtk

from .Volumes import _vtkMatrix, geometryFromIjkToRas, ijkToRasFromGeometry

__all__ = ["segmentationNodeFromSegmentation", "segmentationFromSegmentationNode", "terminologyEntry"]

_BINARY_LABELMAP = "Binary labelmap"


def terminologyEntry(structure: Any) -> str:
    """Slicer terminology string of a :class:`theratwin.Structure` (category and type from its SNOMED codes).

    The format is Slicer's ``vtkSlicerTerminologyEntry`` serialisation:
    ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier`` with each
    code as ``scheme^value^meaning``.
    """
    kind = structure.kind
    region = kind.anatomic_region
    region_text = f"{region.scheme}^{region.value}^{region.meaning}" if region is not None else "^^"
    return (
        "Segmentation category and type - DICOM master list"
        f"~{kind.category.scheme}^{kind.category.value}^{kind.category.meaning}"
        f"~{kind.type.scheme}^{kind.type.value}^{kind.type.meaning}"
        "~^^"
        f"~Anatomic codes - DICOM master list~{region_text}~^^"
    )


def _orientedImage(mask: np.ndarray, geometry: Any) -> Any:
    image = slicer.vtkOrientedImageData()
    z, y, x = mask.shape
    image.SetDimensions(x, y, z)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    from vtk.util import numpy_support

    target = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(mask.shape)
    target[:] = mask.astype(np.uint8)
    image.SetImageToWorldMatrix(_vtkMatrix(ijkToRasFromGeometry(geometry)))
    return image


def segmentationNodeFromSegmentation(scene: Any, segmentation: Any, name: str, *,
                                     referenceVolumeNode: Any = None) -> Any:
    """Add a segmentation node holding every structure of a :class:`theratwin.Segmentation`.

    Parameters
    ----------
    scene
        The ``vtkMRMLScene``.
    segmentation
        The core segmentation (boolean masks on one grid).
    name
        Node name.
    referenceVolumeNode
        Volume whose grid becomes the segmentation's reference geometry (default: the masks' own grid).
    """
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if referenceVolumeNode is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    else:
        # the geometry alone (no voxels): dimensions and image-to-world matrix of the masks' grid
        reference = slicer.vtkOrientedImageData()
        z, y, x = segmentation.geometry.shape
        reference.SetDimensions(x, y, z)
        reference.SetImageToWorldMatrix(_vtkMatrix(ijkToRasFromGeometry(segmentation.geometry)))
        geometryText = slicer.vtkSegmentationConverter.SerializeImageGeometry(reference)
        node.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometryText)
    for structure in segmentation.structures:
        segment = slicer.vtkSegment()
        segment.SetName(structure.name)
        # each structure has its own labelmap layer (overlaps allowed), holding 1 inside; the SEG label is a tag
        segment.SetLabelValue(1)
        segment.SetTag("TheraTwin.Label", str(int(structure.label)))
        segment.SetColor(*(c / 255.0 for c in structure.color_rgb))
        segment.SetTag("TerminologyEntry", terminologyEntry(structure))
        segment.SetTag("TheraTwin.StructureKind", structure.kind.key)
        segment.AddRepresentation(_BINARY_LABELMAP, _orientedImage(segmentation.masks[structure.name],
                                                                   segmentation.geometry))
        node.GetSegmentation().AddSegment(segment, structure.name)
    node.GetSegmentation().SetSourceRepresentationName(_BINARY_LABELMAP)
    node.CreateDefaultDisplayNodes()
    return node


def _tag(segment: Any, name: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def _referenceGeometry(segmentationNode: Any) -> Any:
    text = segmentationNode.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    reference = slicer.vtkOrientedImageData()
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, reference, False):
        return None
    return reference


def _geometryOfOrientedImage(image: Any) -> Any:
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijkToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    extent = image.GetExtent()
    # shift the origin to the first voxel of the extent, so that index 0 is extent[0] etc.
    ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array([extent[0], extent[2], extent[4]], float) + ijkToRas[:3, 3]
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return geometryFromIjkToRas(ijkToRas, shape)


def _extentShape(extent: Any) -> tuple[int, int, int]:
    """``(z, y, x)`` array shape of a VTK extent (0 along an empty axis)."""
    return tuple(max(0, extent[2 * a + 1] - extent[2 * a] + 1) for a in (2, 1, 0))


def _maskOnReference(labelmap: Any, reference: Any, labelValue: int, name: str) -> np.ndarray:
    """The voxels of ``labelmap`` holding the segment (``labelValue``; any non-zero value if 0) on the grid of
    ``reference``, as a boolean ``(z, y, x)`` array of the reference's extent.

    Segment labelmaps usually have an extent of their own (the segment's bounding box, which need not start at 0
    and may reach outside the reference grid). The labelmap is resampled (nearest neighbour) onto the reference
    geometry without padding, so the result is the reference extent (Slicer v5.12.0
    ``vtkOrientedImageDataResample::ResampleOrientedImageToReferenceOrientedImage``: output extent = reference
    extent when ``padImage`` is off); it is nevertheless placed by its own extent, clipped to the reference's, so
    the mask is exact whatever extents the two images have.
    """
    from vtk.util import numpy_support

    referenceExtent = reference.GetExtent()
    mask = np.zeros(_extentShape(referenceExtent), bool)
    scalars = labelmap.GetPointData().GetScalars()
    if scalars is None or 0 in _extentShape(labelmap.GetExtent()):
        return mask  # an empty segment
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, False):
        raise ValueError(f"Segment '{name}' could not be resampled onto the reference grid (empty reference extent).")
    extent = resampled.GetExtent()
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(_extentShape(extent))
    low = [max(extent[2 * a], referenceExtent[2 * a]) for a in range(3)]
    high = [min(extent[2 * a + 1], referenceExtent[2 * a + 1]) for a in range(3)]
    if any(lo > hi for lo, hi in zip(low, high, strict=True)):
        return mask  # the segment lies outside the reference grid
    # array axes are (z, y, x) = VTK axes (2, 1, 0)
    target = tuple(slice(low[a] - referenceExtent[2 * a], high[a] - referenceExtent[2 * a] + 1) for a in (2, 1, 0))
    source = tuple(slice(low[a] - extent[2 * a], high[a] - extent[2 * a] + 1) for a in (2, 1, 0))
    block = values[source]
    # a shared labelmap layer holds several segments under their label values
    mask[target] = block == labelValue if labelValue > 0 else block != 0
    return mask


def segmentationFromSegmentationNode(segmentationNode: Any, *, referenceVolumeNode: Any = None) -> Any:
    """Make a :class:`theratwin.Segmentation` from a segmentation node.

    The masks are put on the grid of ``referenceVolumeNode`` if given, else on the segmentation's reference
    image geometry (nearest-neighbour, as Slicer's own export does).

    Raises
    ------
    theratwin.InvalidInputError
        If the node has no segments or no binary labelmap can be made.
    """
    import theratwin as tt

    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise tt.InvalidInputError(f"Segmentation '{segmentationNode.GetName()}' has no segments; add structures.")
    if referenceVolumeNode is not None:
        reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(referenceVolumeNode)
    else:
        reference = _referenceGeometry(segmentationNode)
        if reference is None:
            raise tt.InvalidInputError(
                f"Segmentation '{segmentationNode.GetName()}' has no reference geometry; pass referenceVolumeNode."
            )
    geometry = _geometryOfOrientedImage(reference)
    structures, masks = [], {}
    if not segmentationNode.GetSegmentation().ContainsRepresentation(_BINARY_LABELMAP):
        segmentationNode.GetSegmentation().CreateRepresentation(_BINARY_LABELMAP)
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        labelmap = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentationNode, segmentId, labelmap)
        mask = _maskOnReference(labelmap, reference, segment.GetLabelValue(), segment.GetName())
        name = segment.GetName()
        kindKey = _tag(segment, "TheraTwin.StructureKind")
        kind = tt.study.STRUCTURE_KINDS.get(kindKey) if kindKey else None
        red, green, blue = (int(round(255 * c)) for c in segment.GetColor())
        label = int(_tag(segment, "TheraTwin.Label") or index + 1)
        structures.append(tt.Structure(name, label, color_rgb=(red, green, blue)) if kind is None
                          else tt.Structure(name, label, kind, (red, green, blue)))
        masks[name] = mask
    return tt.Segmentation(geometry, structures, masks)
