"""Dose maps carry their unit where SlicerRT reads it: on the subject-hierarchy study item above the volume.

SlicerRT's Dose Volume Histogram logic labels the dose axis with
``shNode->GetAttributeFromItemAncestor(doseShItemID, DICOMRTIMPORT_DOSE_UNIT_NAME_ATTRIBUTE_NAME,
vtkMRMLSubjectHierarchyConstants::GetDICOMLevelStudy())`` and lists a volume as dose when it has the attribute
``DicomRtImport.DoseVolume`` (SlicerRT DoseVolumeHistogram/Logic/vtkSlicerDoseVolumeHistogramModuleLogic.cxx and
qSlicerDoseVolumeHistogramModuleWidget.cxx; attribute names in SlicerRtCommon/vtkSlicerRtCommon.cxx). The tests
make exactly those calls on real MRML (slicer-core's vtkMRMLSubjectHierarchyNode).
"""

from __future__ import annotations

import logging

import slicer

import TheraTwinLib as L

UNIT = "DicomRtImport.DoseUnitName"


def slicerRtDoseUnit(node) -> str:
    """What SlicerRT's DVH logic reads (the call quoted in the module docstring)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    return sh.GetAttributeFromItemAncestor(sh.GetItemByDataNode(node), UNIT,
                                           slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())


def studyOf(node) -> int:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    return sh.GetItemAncestorAtLevel(sh.GetItemByDataNode(node),
                                     slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())


def test_dose_and_bed_maps_go_under_the_patients_study_with_their_unit(scene, study, results) -> None:
    nodes = L.addStudyToScene(scene, study)
    timePoint = nodes.timePoints[1][0]
    dose = L.showMap(scene, results, "cycle1/dose", referenceNode=timePoint)
    bed = L.showMap(scene, results, "cycle1/bed", referenceNode=timePoint)
    assert studyOf(dose) == studyOf(bed) == studyOf(timePoint) != 0
    assert slicerRtDoseUnit(dose) == slicerRtDoseUnit(bed) == "Gy"
    assert dose.GetAttribute("DicomRtImport.DoseVolume") == "1"
    assert dose.GetAttribute(UNIT) is None  # not on the volume, where SlicerRT never looks
    # shown again: the same node and item, still one study
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(dose)
    assert L.showMap(scene, results, "cycle1/dose", referenceNode=timePoint) is dose
    assert sh.GetItemByDataNode(dose) == item and studyOf(dose) == studyOf(timePoint)


def test_a_unit_from_an_imported_rt_dose_is_kept(scene, study, results, caplog) -> None:
    nodes = L.addStudyToScene(scene, study)
    timePoint = nodes.timePoints[1][0]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    sh.SetItemAttribute(studyOf(timePoint), UNIT, "GY")  # as SlicerRT's RT Dose import writes DoseUnits
    dose = L.showMap(scene, results, "cycle1/dose", referenceNode=timePoint)
    assert slicerRtDoseUnit(dose) == "GY"
    sh.SetItemAttribute(studyOf(timePoint), UNIT, "cGy")
    with caplog.at_level(logging.WARNING):
        L.markAsDoseVolume(dose, referenceNode=timePoint)
    assert slicerRtDoseUnit(dose) == "cGy" and "'cGy'" in caplog.text and "in Gy" in caplog.text


def test_a_dose_volume_without_any_study_gets_one(scene, results) -> None:
    dose = L.showMap(scene, results, "cycle1/dose")
    assert studyOf(dose) != 0 and slicerRtDoseUnit(dose) == "Gy" == L.doseUnitName(dose)
