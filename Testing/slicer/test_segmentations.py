"""Segmentation nodes <-> theratwin.Segmentation on real MRML (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

import theratwin as tt
import TheraTwinLib as L
from TheraTwinLib.Volumes import LPS_TO_RAS


def test_round_trip_keeps_overlapping_masks_names_and_codes(scene, study) -> None:
    seg = study.segmentation
    assert (seg.masks["kidneys"] & seg.masks["lesion_bone_1"]).any(), "the fixture must overlap"
    node = L.segmentationNodeFromSegmentation(scene, seg, "structures")
    assert node.GetSegmentation().GetNumberOfSegments() == 2
    back = L.segmentationFromSegmentationNode(node)
    assert back.geometry.same_grid(seg.geometry, tolerance_mm=1e-6)
    assert back.names == seg.names
    for s in seg.structures:
        assert np.array_equal(back.masks[s.name], seg.masks[s.name]), s.name
        b = back.structure(s.name)
        assert (b.label, b.kind.key, b.color_rgb) == (s.label, s.kind.key, s.color_rgb)
    entry = vtk.reference("")
    node.GetSegmentation().GetSegment("kidneys").GetTag("TerminologyEntry", entry)
    # SNOMED CT code of Kidney from pydicom's code dictionary, as the core uses it
    assert f"SCT^{seg.structure('kidneys').kind.type.value}^Kidney" in str(entry)


def test_segmentation_made_by_slicer_from_a_labelmap(scene, geometry) -> None:
    """Segments that share one labelmap layer (as Slicer's import and editor make them) come out separately."""
    labels = np.zeros(geometry.shape, np.uint8)
    labels[1:4, 2:6, 3:7] = 1
    labels[5:8, 6:9, 8:12] = 2
    image = tt.ImageVolume.from_geometry(labels, geometry, "1")
    labelNode = L.volumeNodeFromImage(scene, image, "labels", className="vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "fromLabels")
    node.SetReferenceImageGeometryParameterFromVolumeNode(labelNode)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, node, "")
    back = L.segmentationFromSegmentationNode(node, referenceVolumeNode=labelNode)
    assert len(back.structures) == 2
    masks = sorted(back.masks.values(), key=lambda m: int(labels[m].max()))
    assert np.array_equal(masks[0], labels == 1)
    assert np.array_equal(masks[1], labels == 2)


def test_masks_on_another_grid(scene, study) -> None:
    """On a reference volume with half the voxel size, each structure keeps its volume (nearest neighbour)."""
    seg = study.segmentation
    node = L.segmentationNodeFromSegmentation(scene, seg, "structures")
    g = seg.geometry
    fine = tt.Geometry(tuple(2 * s for s in g.shape), tuple(s / 2 for s in g.spacing_mm),
                       tuple(g.index_to_lps(np.array([-0.25, -0.25, -0.25]))), g.direction)
    reference = L.volumeNodeFromImage(scene, tt.ImageVolume.from_geometry(np.zeros(fine.shape, np.float32), fine,
                                                                          "1"), "fine")
    back = L.segmentationFromSegmentationNode(node, referenceVolumeNode=reference)
    assert back.geometry.same_grid(fine, tolerance_mm=1e-6)
    for s in seg.structures:
        assert back.masks[s.name].sum() == 8 * seg.masks[s.name].sum()
        np.testing.assert_allclose(back.volume_mL(s.name), seg.volume_mL(s.name), rtol=1e-9)


# ---------------------------------------------------------------------------------------------- any extent


def _orientedImage(array: np.ndarray, extent: tuple[int, ...], ijkToRas: np.ndarray):
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    from vtk.util import numpy_support

    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.astype(np.uint8).ravel()
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijkToRas[r, c]))
    image.SetImageToWorldMatrix(matrix)
    return image


def _extentShape(extent) -> tuple[int, int, int]:
    return (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)


def _expectedMask(array, extent, ijkToRas, referenceExtent, referenceIjkToRas) -> np.ndarray:
    """Nearest-neighbour lookup done here with numpy: every reference voxel centre is mapped to the labelmap's index
    space and rounded (floor(x + 0.5), as vtkImageReslice's nearest-neighbour mode does); outside its extent is 0."""
    k, j, i = np.meshgrid(*(np.arange(referenceExtent[2 * a], referenceExtent[2 * a + 1] + 1) for a in (2, 1, 0)),
                          indexing="ij")
    world = referenceIjkToRas @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    continuous = (np.linalg.inv(ijkToRas) @ world)[:3]
    fraction = continuous - np.floor(continuous)
    assert np.min(np.abs(fraction - 0.5)) > 1e-6, "a voxel centre lies halfway between two: choose another grid"
    index = np.floor(continuous + 0.5).astype(int)
    low = np.array(extent[0::2])[:, None]
    high = np.array(extent[1::2])[:, None]
    inside = np.all((index >= low) & (index <= high), axis=0)
    values = np.zeros(i.size, bool)
    local = index[:, inside] - low
    values[inside] = array[local[2], local[1], local[0]] != 0
    return values.reshape(i.shape)


def _segmentationWith(scene, labelmap, referenceVolumeNode=None, referenceImage=None):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "extent test")
    if referenceVolumeNode is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    else:
        node.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(referenceImage))
    segment = slicer.vtkSegment()
    segment.SetName("structure")
    segment.AddRepresentation("Binary labelmap", labelmap)
    node.GetSegmentation().AddSegment(segment, "structure")
    return node


def _referenceVolume(scene, geometry):
    return L.volumeNodeFromImage(scene, tt.ImageVolume.from_geometry(np.zeros(geometry.shape, np.float32), geometry,
                                                                     "1"), "reference")


@pytest.mark.parametrize("extent", [
    (3, 7, 2, 6, 1, 4),        # inside the reference, not starting at 0
    (9, 17, -3, 4, 2, 11),     # reaching past both ends (the former shifted / wrongly shaped mask)
    (20, 25, 0, 3, 0, 3),      # entirely outside
])
def test_mask_of_a_segment_on_the_reference_geometry_with_any_extent(scene, extent) -> None:
    geometry = tt.Geometry(shape=(10, 12, 14), spacing_mm=(2.0, 2.5, 3.0), origin_mm=(-5.0, 7.0, 11.0))
    reference = _referenceVolume(scene, geometry)
    ijkToRas = L.ijkToRasFromGeometry(geometry)
    pattern = np.random.default_rng(3).random(_extentShape(extent)) > 0.4
    node = _segmentationWith(scene, _orientedImage(pattern, extent, ijkToRas), referenceVolumeNode=reference)
    mask = L.segmentationFromSegmentationNode(node, referenceVolumeNode=reference).masks["structure"]
    expected = _expectedMask(pattern, extent, ijkToRas, (0, 13, 0, 11, 0, 9), ijkToRas)
    assert mask.shape == geometry.shape
    assert np.array_equal(mask, expected)


def test_mask_of_a_segment_from_another_oblique_grid_partly_outside(scene, geometry) -> None:
    """Labelmap on its own rotated, anisotropic grid, half outside the (oblique) reference grid."""
    reference = _referenceVolume(scene, geometry)
    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = rotation @ np.diag([1.7, 2.3, 1.9])
    ijkToRas[:3, 3] = L.ijkToRasFromGeometry(geometry)[:3, 3] + np.array([13.37, -4.21, 9.03])
    extent = (-6, 14, -2, 17, -3, 9)
    pattern = np.random.default_rng(5).random(_extentShape(extent)) > 0.5
    node = _segmentationWith(scene, _orientedImage(pattern, extent, ijkToRas), referenceVolumeNode=reference)
    mask = L.segmentationFromSegmentationNode(node, referenceVolumeNode=reference).masks["structure"]
    z, y, x = geometry.shape
    expected = _expectedMask(pattern, extent, ijkToRas, (0, x - 1, 0, y - 1, 0, z - 1),
                             L.ijkToRasFromGeometry(geometry))
    assert mask.shape == geometry.shape and 0 < expected.sum() < expected.size
    assert np.array_equal(mask, expected)


def test_reference_geometry_whose_extent_does_not_start_at_zero(scene) -> None:
    """A segmentation's own reference geometry may have an extent starting anywhere: index 0 of the masks is its
    first voxel, and the geometry's origin is that voxel's centre."""
    ijkToRas = np.diag([-2.0, -2.0, 3.0, 1.0])
    ijkToRas[:3, 3] = (4.0, 6.0, -9.0)
    referenceExtent = (3, 12, 2, 9, 1, 6)
    referenceImage = _orientedImage(np.zeros(_extentShape(referenceExtent)), referenceExtent, ijkToRas)
    extent = (0, 7, 4, 11, 2, 3)
    pattern = np.random.default_rng(11).random(_extentShape(extent)) > 0.3
    node = _segmentationWith(scene, _orientedImage(pattern, extent, ijkToRas), referenceImage=referenceImage)
    seg = L.segmentationFromSegmentationNode(node)
    assert seg.geometry.shape == _extentShape(referenceExtent)
    firstVoxel = LPS_TO_RAS @ ijkToRas @ np.array([3, 2, 1, 1.0])  # RAS -> LPS of the extent's first voxel
    np.testing.assert_allclose(seg.geometry.origin_mm, firstVoxel[:3], atol=1e-9)
    expected = _expectedMask(pattern, extent, ijkToRas, referenceExtent, ijkToRas)
    assert np.array_equal(seg.masks["structure"], expected)
