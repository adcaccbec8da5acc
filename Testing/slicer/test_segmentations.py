"""Segmentation nodes <-> theratwin.Segmentation on real MRML (slicer-core)."""

from __future__ import annotations

import numpy as np
import slicer
import vtk

import theratwin as tt
import TheraTwinLib as L


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
