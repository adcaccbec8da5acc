"""Study <-> scene nodes: time points, acquisition times, administrations, patient, CT and segmentation."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import slicer

import theratwin as tt
import TheraTwinLib as L


def test_study_round_trip_through_the_scene(scene, study) -> None:
    # DICOM provenance must survive (exports reference the source images, PatientID keys PACS and FHIR)
    study.study_uid, study.frame_of_reference_uid = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    ref = tt.study.SourceRef(study.study_uid, "1.2.826.0.1.3680043.8.498.3", study.frame_of_reference_uid, "NM",
                             ("1.2.826.0.1.3680043.8.498.4",), "1.2.840.10008.5.1.4.1.1.20", "SPECT", ("/x/nm.dcm",))
    study.cycles[0].time_points[0].source = ref
    study.patient = tt.Patient("TT-SLICER-1", "Test^Slicer", birth_date=datetime(1950, 5, 17).date(), sex="M",
                               issuer="urn:oid:1.2.3", weight_kg=82.0)
    nodes = L.addStudyToScene(scene, study)
    assert nodes.timePoints[1][0].GetAttribute("DICOM.instanceUIDs") == "1.2.826.0.1.3680043.8.498.4"
    assert sorted(nodes.timePoints) == [1, 2]
    assert [len(v) for _, v in sorted(nodes.timePoints.items())] == [3, 1]
    assert len(nodes.cts) == 1  # one CT shared by the cycle-1 time points
    back = L.studyFromNodes(nodes.allTimePoints(), segmentationNode=nodes.segmentation)
    assert back.patient == study.patient
    assert (back.study_uid, back.frame_of_reference_uid) == (study.study_uid, study.frame_of_reference_uid)
    assert back.cycles[0].time_points[0].source == ref
    assert back.cycles[0].time_points[1].source == tt.study.SourceRef()
    assert [c.number for c in back.cycles] == [1, 2]
    for c0, c1 in zip(study.cycles, back.cycles, strict=True):
        assert c1.administration == c0.administration
        np.testing.assert_allclose(c1.times_h, c0.times_h, atol=1e-9)
        for t0, t1 in zip(c0.time_points, c1.time_points, strict=True):
            assert t1.acquisition_start == t0.acquisition_start
            assert t1.acquisition_duration_s == t0.acquisition_duration_s
            assert np.array_equal(t1.image.array, t0.image.array)
            assert t1.image.geometry.same_grid(t0.image.geometry, tolerance_mm=1e-9)
            assert (t1.ct is None) == (t0.ct is None)
            if t0.ct is not None:
                assert np.array_equal(t1.ct.array, t0.ct.array) and t1.ct.unit == "HU"
    for s in study.segmentation.structures:
        assert np.array_equal(back.segmentation.masks[s.name], study.segmentation.masks[s.name])


def test_time_points_found_by_subject(scene, study) -> None:
    first = L.addStudyToScene(scene, study)
    other = tt.Study(tt.Patient("OTHER"), [study.cycles[1]], None)
    second = L.addStudyToScene(scene, other, prefix="other ")
    assert len(L.timePointNodes(scene)) == 5
    near = L.timePointNodes(scene, near=first.timePoints[2][0])
    assert {n.GetID() for n in near} == {n.GetID() for n in first.allTimePoints()}
    assert L.timePointNodes(scene, near=second.timePoints[2][0]) == second.timePoints[2]


def test_cycles_inferred_from_administration_times(scene, study) -> None:
    nodes = L.addStudyToScene(scene, study)
    for node in nodes.allTimePoints():
        node.RemoveAttribute("TheraTwin.Cycle")
    back = L.studyFromNodes(list(reversed(nodes.allTimePoints())))
    assert [c.number for c in back.cycles] == [1, 2]
    assert back.cycles[0].administration.start == datetime(2026, 3, 2, 9, 30).astimezone()  # naive = local


def test_missing_administration_is_reported(scene, study) -> None:
    nodes = L.addStudyToScene(scene, study)
    node = nodes.timePoints[1][0]
    node.RemoveAttribute("TheraTwin.AdministrationStart")
    with pytest.raises(tt.InvalidInputError, match="AdministrationStart"):
        L.studyFromNodes([node])


@pytest.mark.parametrize(("modality", "total_dose"), [("NM", 7400.0), ("PT", 7.4e9)])
def test_annotate_from_dicom_header(scene, tmp_path, modality, total_dose) -> None:
    """Acquisition and administration come from a real DICOM header, as Slicer's DICOM module leaves them.
    RadionuclideTotalDose is in MBq for NM (PS3.3 C.8.4.10.1.7) and in Bq for PET (PS3.3 C.8.9.2)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.AcquisitionDate, ds.AcquisitionTime = "20260303", "093000.00"
    if modality == "NM":  # 60 views of 15 s (PS3.3 C.8.4.12), quantitative via Real World Value Mapping
        rotation = Dataset()
        rotation.ActualFrameDuration, rotation.NumberOfFramesInRotation = 15000, 60
        ds.RotationInformationSequence = [rotation]
        mapping = Dataset()
        mapping.LUTExplanation, mapping.LUTLabel = "Bq/ml", "BQML"
        mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept = 2.5, 0.0
        mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped = 0, 65535
        ds.RealWorldValueMappingSequence = [mapping]
    else:
        ds.ActualFrameDuration, ds.Units = 15000, "BQML"
    stored = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 2, 3, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = stored.tobytes()
    info = Dataset()
    info.Radiopharmaceutical = "PSMA-617"
    info.RadionuclideTotalDose = total_dose
    info.RadiopharmaceuticalStartDateTime = "20260302093000"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-145A4", "SRT", "^177^Lutetium"
    info.RadionuclideCodeSequence = [code]
    ds.RadiopharmaceuticalInformationSequence = [info]
    path = tmp_path / "nm.dcm"
    ds.save_as(path, enforce_file_format=True)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dicom spect")
    # as Slicer's generic loader leaves it: stored values (slices in another order, which does not matter)
    slicer.util.updateVolumeFromArray(node, stored[::-1].astype(np.float32))
    node.SetAttribute("DICOM.instanceUIDs", ds.SOPInstanceUID)
    assert L.annotateFromDicom(node, {ds.SOPInstanceUID: str(path)}.__getitem__)
    study = L.studyFromNodes([node])
    cycle = study.cycles[0]
    assert cycle.administration.nuclide == "Lu-177"
    assert cycle.administration.activity_MBq == pytest.approx(7400.0)
    assert cycle.times_h[0] == pytest.approx(24.0)
    # NM: 60 views x 15 s = 900 s; PET: one frame of 15 s
    assert cycle.time_points[0].acquisition_duration_s == pytest.approx(900.0 if modality == "NM" else 15.0)
    # NM voxels are mapped to Bq/mL once (RWVM slope 2.5); PET in BQML is kept
    expected = stored[::-1] * (2.5 if modality == "NM" else 1.0)
    np.testing.assert_allclose(cycle.time_points[0].image.array, expected)
    assert L.annotateFromDicom(node, {ds.SOPInstanceUID: str(path)}.__getitem__)  # again: already mapped
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), expected)


def test_annotate_refuses_voxels_it_cannot_explain(scene, tmp_path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"  # PET Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.AcquisitionDateTime = "PT", "20260303093000"
    info = Dataset()
    info.RadiopharmaceuticalStartDateTime, info.RadionuclideTotalDose = "20260302093000", 7.4e9
    code = Dataset()
    code.CodeMeaning = "^177^Lutetium"
    info.RadionuclideCodeSequence = [code]
    ds.RadiopharmaceuticalInformationSequence = [info]
    ds.Units = "CNTS"  # counts, not activity concentration
    path = tmp_path / "pt.dcm"
    ds.save_as(path, enforce_file_format=True)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "counts")
    slicer.util.updateVolumeFromArray(node, np.ones((2, 2, 2), np.float32))
    node.SetAttribute("DICOM.instanceUIDs", ds.SOPInstanceUID)
    with pytest.raises(tt.DicomReadError, match="BQML"):
        L.annotateFromDicom(node, {ds.SOPInstanceUID: str(path)}.__getitem__)
    assert node.GetAttribute("TheraTwin.Role") is None
    # scanning the whole scene skips it (with a warning) instead of failing
    assert L.annotateSceneFromDicom(scene, {ds.SOPInstanceUID: str(path)}.__getitem__) == []


def test_nuclide_code_meanings() -> None:
    assert L.nuclideFromCodeMeaning("^177^Lutetium") == "Lu-177"
    assert L.nuclideFromCodeMeaning("^225^Actinium") == "Ac-225"
    assert L.nuclideFromCodeMeaning("Y-90") == "Y-90"


def test_import_dicom_files_of_the_demo_patient(scene, demo_scene) -> None:
    """The Kinetics module's DICOM import (file list, as Slicer's DICOM database gives it) makes the same time
    points as reading the demo folder, and the SEG's structures."""
    from modules import loadModuleFile

    files = sorted(p for p in demo_scene["demo"].dicom_dir.rglob("*") if p.is_file())
    kinetics = loadModuleFile("TheraTwinKinetics").TheraTwinKineticsLogic()
    nodes = kinetics.importDicom(scene, files)
    reference = demo_scene["nodes"]
    assert {c: len(v) for c, v in nodes.timePoints.items()} == {c: len(v) for c, v in reference.timePoints.items()}
    for a, b in zip(nodes.allTimePoints(), reference.allTimePoints(), strict=True):
        assert a.GetAttribute("TheraTwin.AcquisitionStart") == b.GetAttribute("TheraTwin.AcquisitionStart")
        assert np.array_equal(slicer.util.arrayFromVolume(a), slicer.util.arrayFromVolume(b))
    assert nodes.segmentation.GetSegmentation().GetNumberOfSegments() == \
        reference.segmentation.GetSegmentation().GetNumberOfSegments()


def test_annotate_a_scene_loaded_by_slicer_dicom(scene, demo_scene) -> None:
    """Volumes as Slicer's DICOM module leaves them (only DICOM.instanceUIDs) become time points from their
    headers; the CT (no radiopharmaceutical) does not."""
    import pydicom

    files = {}
    for path in demo_scene["demo"].dicom_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        files[str(ds.SOPInstanceUID)] = str(path)
    loaded = []
    for index, original in enumerate(demo_scene["nodes"].allTimePoints()[:2] + demo_scene["nodes"].cts[:1]):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", original.GetName())
        uids = original.GetAttribute("DICOM.instanceUIDs")
        if index == 0:  # as a loader that ignores the Real World Value Mapping leaves it: stored values
            voxels = pydicom.dcmread(files[uids.split()[0]]).pixel_array.astype(np.float32)
        else:  # as a loader that applies it (or the CT in HU)
            voxels = np.array(slicer.util.arrayFromVolume(original), copy=True)
        slicer.util.updateVolumeFromArray(node, voxels)
        node.SetAttribute("DICOM.instanceUIDs", uids)
        loaded.append((node, original))
    annotated = L.annotateSceneFromDicom(scene, files.__getitem__)
    assert [n.GetName() for n in annotated] == [o.GetName() for _, o in loaded[:2]]
    for node, original in loaded[:2]:
        for attribute in ("TheraTwin.AcquisitionStart", "TheraTwin.Nuclide", "TheraTwin.AdministrationStart"):
            assert node.GetAttribute(attribute) == original.GetAttribute(attribute), attribute
        assert float(node.GetAttribute("TheraTwin.AdministeredActivity_MBq")) == pytest.approx(
            float(original.GetAttribute("TheraTwin.AdministeredActivity_MBq")))
        # both end in Bq/mL: the same total activity concentration as the core reader's volume
        assert slicer.util.arrayFromVolume(node).sum(dtype=np.float64) == pytest.approx(
            slicer.util.arrayFromVolume(original).sum(dtype=np.float64), rel=1e-5)
    assert loaded[0][0].GetAttribute("TheraTwin.ValueMapping").startswith("Real World Value Mapping applied")
    assert loaded[1][0].GetAttribute("TheraTwin.ValueMapping") is None
    # the CT is recognised, and each time point is linked to the CT of its frame of reference
    ct, originalCt = loaded[2]
    assert ct.GetAttribute("TheraTwin.Role") == "CT"
    for node, original in loaded[:2]:
        expected = original.GetNodeReference("TheraTwin.CT") is originalCt
        assert (node.GetNodeReference("TheraTwin.CT") is ct) == expected
    # the DICOM identity comes along: patient, study, series and files (the exports reference them)
    study = L.studyFromNodes([n for n, _ in loaded[:2]])
    reference = L.studyFromNodes([o for _, o in loaded[:2]])
    assert study.patient.patient_id == reference.patient.patient_id
    assert study.study_uid == reference.study_uid
    for t0, t1 in zip(reference.cycles[0].time_points, study.cycles[0].time_points, strict=True):
        assert t1.source.series_uid == t0.source.series_uid and t1.source.sop_instance_uids
        assert all(Path(f).is_file() for f in t1.source.files)
