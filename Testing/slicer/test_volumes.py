"""Volume nodes <-> ImageVolume on real MRML (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

import theratwin as tt
import TheraTwinLib as L


def _ras_of_index(node, ijk):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array(m.MultiplyPoint((*ijk, 1.0))[:3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_round_trip_is_exact(scene, geometry, dtype) -> None:
    rng = np.random.default_rng(1)
    array = (rng.random(geometry.shape) * 200).astype(dtype)
    image = tt.ImageVolume.from_geometry(array, geometry, "Bq/mL")
    node = L.volumeNodeFromImage(scene, image, "spect")
    back = L.imageFromVolumeNode(node)
    assert back.array.dtype == array.dtype
    assert np.array_equal(back.array, array)
    assert back.geometry.shape == geometry.shape
    np.testing.assert_allclose(back.spacing_mm, geometry.spacing_mm, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.origin_mm, geometry.origin_mm, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.direction, geometry.direction_matrix, rtol=0, atol=1e-12)
    assert back.unit == "Bq/mL"
    # the copy is independent of the node's memory
    slicer.util.arrayFromVolume(node)[0, 0, 0] += 1
    assert np.array_equal(back.array, array)


def test_lps_ras_convention(scene, geometry) -> None:
    """A voxel's RAS position in Slicer is its LPS position with x and y negated (DICOM PS3.3 C.7.6.2.1.1)."""
    image = tt.ImageVolume.from_geometry(np.zeros(geometry.shape, np.float32), geometry, "Bq/mL")
    node = L.volumeNodeFromImage(scene, image, "spect")
    for ijk in [(0, 0, 0), (12, 0, 0), (0, 10, 0), (0, 0, 8), (5, 7, 3)]:
        lps = geometry.index_to_lps(np.array(ijk, float))
        np.testing.assert_allclose(_ras_of_index(node, ijk), [-lps[0], -lps[1], lps[2]], atol=1e-9)
    # Slicer's own accessors agree: spacing is per index axis; the array is (k, j, i) = (z, y, x)
    np.testing.assert_allclose(node.GetSpacing(), geometry.spacing_mm, atol=1e-12)
    assert slicer.util.arrayFromVolume(node).shape == geometry.shape


def test_volume_from_slicer_ijk_to_ras(scene) -> None:
    """A volume made the Slicer way (RAS matrix, no TheraTwin attributes) gets the right LPS geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fromSlicer")
    slicer.util.updateVolumeFromArray(node, np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    node.SetSpacing(0.5, 0.7, 2.0)
    node.SetOrigin(10.0, 20.0, -30.0)  # RAS
    node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)  # Slicer's default for DICOM axial: LPS axes
    image = L.imageFromVolumeNode(node, unit="HU")
    np.testing.assert_allclose(image.origin_mm, (-10.0, -20.0, -30.0))
    np.testing.assert_allclose(image.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(image.spacing_mm, (0.5, 0.7, 2.0))
    assert image.unit == "HU"
    assert np.array_equal(image.array, np.arange(24).reshape(2, 3, 4))


def test_linear_parent_transform_is_applied(scene, geometry) -> None:
    image = tt.ImageVolume.from_geometry(np.ones(geometry.shape, np.float32), geometry, "Bq/mL")
    node = L.volumeNodeFromImage(scene, image, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 5.0)   # +5 mm towards R = -5 mm in L
    m.SetElement(2, 3, -2.0)  # -2 mm in S
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = L.imageFromVolumeNode(node)
    np.testing.assert_allclose(np.subtract(moved.origin_mm, geometry.origin_mm), (-5.0, 0.0, -2.0), atol=1e-9)
    unmoved = L.imageFromVolumeNode(node, applyParentTransform=False)
    np.testing.assert_allclose(unmoved.origin_mm, geometry.origin_mm, atol=1e-9)


def test_empty_node_is_rejected(scene) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(tt.InvalidInputError, match="empty"):
        L.imageFromVolumeNode(node)


def test_dose_volume_is_marked_for_slicerrt(scene, results) -> None:
    node = L.showMap(scene, results, "cycle1/dose")
    assert node.GetAttribute("DicomRtImport.DoseVolume") == "1"
    assert L.doseUnitName(node) == "Gy"  # on the study item, where SlicerRT reads it (test_slicerrt_dose.py)
    assert node.GetAttribute("TheraTwin.Unit") == "Gy"
    assert L.isDoseVolume(node)
    display = node.GetDisplayNode()
    color = display.GetColorNode()
    assert color.GetName() == L.DOSE_COLOR_TABLE_NAME
    assert color.GetNumberOfColors() == 256
    # window covers 0..max dose
    assert display.GetWindowLevelMin() == pytest.approx(0.0)
    assert display.GetWindowLevelMax() == pytest.approx(float(results.maps["cycle1/dose"].array.max()), rel=1e-6)
    # the BED map is a dose volume too, the TIA map is not; the colour table is shared
    bed = L.showMap(scene, results, "cycle1/bed")
    tia = L.showMap(scene, results, "cycle1/tia")
    assert L.isDoseVolume(bed) and not L.isDoseVolume(tia)
    assert bed.GetDisplayNode().GetColorNodeID() == display.GetColorNodeID()
    assert tia.GetAttribute("TheraTwin.Unit") == "Bq.h/mL"
    assert np.array_equal(L.imageFromVolumeNode(node).array, results.maps["cycle1/dose"].array)
    # showing again updates the same node instead of adding one
    n_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    assert L.showMap(scene, results, "cycle1/dose") is node
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_before
