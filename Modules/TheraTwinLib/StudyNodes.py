"""Study <-> scene: time-point volumes, acquisition times and administrations as node attributes.

A time-point volume carries what the core needs as node attributes (saved with the scene):

=====================================  ======================================================================
Attribute                              Meaning
=====================================  ======================================================================
``TheraTwin.Role``                     ``TimePoint`` (quantitative SPECT/PET in Bq/mL), ``CT``, ``Map``
``TheraTwin.Cycle``                    therapy cycle number (1, 2, ...)
``TheraTwin.AcquisitionStart``         ISO datetime of the acquisition start (AcquisitionDateTime 0008,002A)
``TheraTwin.AcquisitionDuration_s``    acquisition duration in s (ActualFrameDuration 0018,1242 x frames)
``TheraTwin.Radiopharmaceutical``      e.g. ``PSMA-617`` (Radiopharmaceutical 0018,0031)
``TheraTwin.Nuclide``                  e.g. ``Lu-177`` (RadionuclideCodeSequence 0018,0304)
``TheraTwin.AdministeredActivity_MBq``  RadionuclideTotalDose (0018,1074) / 1e6
``TheraTwin.AdministrationStart``      ISO datetime (RadiopharmaceuticalStartDateTime 0018,1078)
=====================================  ======================================================================

The CT of a time point is the node referenced by role ``TheraTwin.CT``. The patient comes from the
subject-hierarchy subject item above the volume (DICOM.PatientID ... as Slicer's DICOM module sets them).
Volumes loaded by Slicer's DICOM module have ``DICOM.instanceUIDs`` instead; :func:`annotateFromDicom` reads
the headers (through ``slicer.dicomDatabase.fileForInstance`` in the application) and sets the attributes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import slicer

from .Messages import userMessage
from .Segmentations import segmentationFromSegmentationNode, segmentationNodeFromSegmentation
from .Volumes import imageFromVolumeNode, volumeNodeFromImage

__all__ = [
    "ATTRIBUTE_PREFIX",
    "ROLE",
    "CYCLE",
    "ACQUISITION_START",
    "ACQUISITION_DURATION",
    "RADIOPHARMACEUTICAL",
    "NUCLIDE",
    "ADMINISTERED_ACTIVITY",
    "ADMINISTRATION_START",
    "CT_REFERENCE_ROLE",
    "NOT_A_TIME_POINT",
    "StudyNodes",
    "setTimePointAttributes",
    "timePointNodes",
    "annotateFromDicom",
    "nuclideFromCodeMeaning",
    "studyFromNodes",
    "addStudyToScene",
    "loadStudyFromDicom",
    "annotateSceneFromDicom",
]

ATTRIBUTE_PREFIX = "TheraTwin."
ROLE = "TheraTwin.Role"
CYCLE = "TheraTwin.Cycle"
ACQUISITION_START = "TheraTwin.AcquisitionStart"
ACQUISITION_DURATION = "TheraTwin.AcquisitionDuration_s"
RADIOPHARMACEUTICAL = "TheraTwin.Radiopharmaceutical"
NUCLIDE = "TheraTwin.Nuclide"
ADMINISTERED_ACTIVITY = "TheraTwin.AdministeredActivity_MBq"
ADMINISTRATION_START = "TheraTwin.AdministrationStart"
PATIENT_JSON = "TheraTwin.Patient"
SOURCE_JSON = "TheraTwin.Source"
STUDY_JSON = "TheraTwin.Study"
CT_REFERENCE_ROLE = "TheraTwin.CT"
#: Slicer's attribute listing the SOP instances a node was loaded from (set by its DICOM plugins).
DICOM_INSTANCE_UIDS = "DICOM.instanceUIDs"
#: Why a DICOM-loaded volume is not used as a time point (set by :func:`annotateSceneFromDicom`).
NOT_A_TIME_POINT = "TheraTwin.NotATimePoint"


@dataclass
class StudyNodes:
    """The nodes that represent one :class:`theratwin.Study` in a scene."""

    timePoints: dict[int, list[Any]] = field(default_factory=dict)  # {cycle: [volume nodes in time order]}
    cts: list[Any] = field(default_factory=list)
    segmentation: Any = None
    subjectItemId: int = 0

    def allTimePoints(self) -> list[Any]:
        return [n for cycle in sorted(self.timePoints) for n in self.timePoints[cycle]]


def _setSource(node: Any, source: Any) -> None:
    """Keep where an image came from in DICOM (UIDs, files), so exports can reference it."""
    if source is None or not (source.series_uid or source.sop_instance_uids):
        return
    node.SetAttribute(SOURCE_JSON, json.dumps(dataclasses.asdict(source)))
    if source.sop_instance_uids:
        node.SetAttribute(DICOM_INSTANCE_UIDS, " ".join(source.sop_instance_uids))


def _source(node: Any) -> Any:
    import theratwin as tt

    text = node.GetAttribute(SOURCE_JSON) if node is not None else None
    if not text:
        return tt.study.SourceRef()
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}
    return tt.study.SourceRef(**fields)


def _patientJson(patient: Any) -> str:
    d = dataclasses.asdict(patient)
    d["birth_date"] = patient.birth_date.isoformat() if patient.birth_date else None
    return json.dumps(d)


def setTimePointAttributes(volumeNode: Any, *, cycle: int, acquisitionStart: datetime,
                           acquisitionDuration_s: float, administration: Any) -> None:
    """Mark ``volumeNode`` as a time point of ``cycle`` after ``administration`` (a theratwin Administration)."""
    volumeNode.SetAttribute(ROLE, "TimePoint")
    volumeNode.SetAttribute(CYCLE, str(int(cycle)))
    volumeNode.SetAttribute(ACQUISITION_START, acquisitionStart.isoformat())
    volumeNode.SetAttribute(ACQUISITION_DURATION, repr(float(acquisitionDuration_s)))
    volumeNode.SetAttribute(RADIOPHARMACEUTICAL, administration.radiopharmaceutical)
    volumeNode.SetAttribute(NUCLIDE, administration.nuclide)
    volumeNode.SetAttribute(ADMINISTERED_ACTIVITY, repr(float(administration.activity_MBq)))
    volumeNode.SetAttribute(ADMINISTRATION_START, administration.start.isoformat())


def timePointNodes(scene: Any, *, near: Any = None) -> list[Any]:
    """Every volume marked as a time point; with ``near``, only those under the same subject-hierarchy subject."""
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    nodes = [n for n in nodes if n.GetAttribute(ROLE) == "TimePoint"]
    if near is not None:
        subject = _subjectItem(near)
        if subject:
            nodes = [n for n in nodes if _subjectItem(n) == subject]
    return nodes


def _subjectItem(node: Any) -> int:
    scene = node.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node)
    while item and item != sh.GetSceneItemID():
        if sh.GetItemLevel(item) == slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelPatient():
            return int(item)
        item = sh.GetItemParent(item)
    return 0


# Element symbols of the radionuclides used in theranostics, for DICOM CID 18 code meanings ("^177^Lutetium").
_ELEMENT_SYMBOLS = {"lutetium": "Lu", "yttrium": "Y", "iodine": "I", "terbium": "Tb", "actinium": "Ac",
                    "gallium": "Ga", "fluorine": "F", "technetium": "Tc", "indium": "In", "radium": "Ra",
                    "holmium": "Ho", "lead": "Pb", "copper": "Cu", "bismuth": "Bi", "astatine": "At"}


def nuclideFromCodeMeaning(meaning: str) -> str:
    """Nuclide name such as ``Lu-177`` from a DICOM radionuclide code meaning (``^177^Lutetium``, ``Lu-177``)."""
    parts = [p for p in meaning.replace(" ", "").split("^") if p]
    if len(parts) == 2 and parts[0].isdigit() and parts[1].lower() in _ELEMENT_SYMBOLS:
        return f"{_ELEMENT_SYMBOLS[parts[1].lower()]}-{parts[0]}"
    return meaning


def _dicomDatetime(dateText: str, timeText: str) -> datetime:
    timeText = (timeText or "000000").split(".")[0].ljust(6, "0")
    return datetime.strptime(dateText + timeText, "%Y%m%d%H%M%S")


def _administeredActivity_MBq(ds: Any, item: Any, path: str) -> float:
    """RadionuclideTotalDose (0018,1074) in MBq: the NM Isotope module gives it in MBq (PS3.3 C.8.4.10.1.7),
    the PET Isotope module in Bq (PS3.3 C.8.9.2). Values off by 10^6 for their modality (a common vendor
    mistake) are taken in the other unit, as the core's DICOM reader does."""
    import theratwin as tt

    dose = float(item.get("RadionuclideTotalDose", 0) or 0)
    if dose <= 0:
        raise tt.DicomReadError("RadionuclideTotalDose is missing or not positive; the administered activity is "
                                "unknown. Enter it in the module panel.", path=path, tag="RadionuclideTotalDose")
    if ds.get("Modality") == "PT":
        return dose / 1e6 if dose >= 1e5 else dose
    return dose / 1e6 if dose > 1e6 else dose


def annotateFromDicom(volumeNode: Any, fileForInstance: Callable[[str], str], *, cycle: int | None = None) -> bool:
    """Set the time-point attributes of a volume loaded by Slicer's DICOM module from its DICOM header.

    Parameters
    ----------
    volumeNode
        Volume with the ``DICOM.instanceUIDs`` attribute.
    fileForInstance
        Maps a SOPInstanceUID to its file (``slicer.dicomDatabase.fileForInstance`` in the application).
    cycle
        Cycle number; by default left for :func:`studyFromNodes` to infer from the administration datetimes.

    Returns
    -------
    bool
        True if the header carried an acquisition datetime and a RadiopharmaceuticalInformationSequence.
    """
    import pydicom

    import theratwin as tt

    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        return False
    path = fileForInstance(uids[0])
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    # timezone-aware as the core reads them: DT offsets, TimezoneOffsetFromUTC, else this computer's zone
    from theratwin.dicom import DicomClock

    clock = DicomClock()
    start = clock.dt(ds, "AcquisitionDateTime", ds) or clock.da_tm(ds, "AcquisitionDate", "AcquisitionTime")
    if start is None:
        return False
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if not info:
        return False
    item = info[0]
    adminStart = clock.dt(item, "RadiopharmaceuticalStartDateTime", ds) or clock.localize(
        _dicomDatetime(str(ds.get("SeriesDate", ds.get("StudyDate", ""))),
                       str(item.get("RadiopharmaceuticalStartTime", ""))), ds)
    if adminStart is None:
        raise tt.DicomReadError("no injection date and time (RadiopharmaceuticalStartDateTime, or StartTime with a "
                                "SeriesDate); the time points cannot be placed in time.", path=path,
                                tag="RadiopharmaceuticalStartDateTime")
    nuclideCode = item.get("RadionuclideCodeSequence")
    if not nuclideCode:
        raise tt.DicomReadError("no RadionuclideCodeSequence; cannot tell the nuclide.", path=path,
                                tag="RadionuclideCodeSequence")
    nuclide = nuclideFromCodeMeaning(str(nuclideCode[0].CodeMeaning))
    duration_s = _acquisitionDuration_s(ds)
    administration = tt.Administration(str(item.get("Radiopharmaceutical", "")) or "unknown", nuclide,
                                       _administeredActivity_MBq(ds, item, path), adminStart)
    _ensureBqPerMl(volumeNode, ds, path)
    _setDicomIdentity(volumeNode, ds, uids, fileForInstance)
    setTimePointAttributes(volumeNode, cycle=cycle or 0, acquisitionStart=start, acquisitionDuration_s=duration_s,
                           administration=administration)
    if cycle is None:
        volumeNode.RemoveAttribute(CYCLE)
    volumeNode.SetAttribute("TheraTwin.Unit", "Bq/mL")
    return True


def _setDicomIdentity(volumeNode: Any, ds: Any, uids: list[str], fileForInstance: Callable[[str], str]) -> None:
    """Patient, study and source (UIDs, files) of a DICOM-loaded volume, as :func:`addStudyToScene` keeps them."""
    import theratwin as tt

    birth = str(ds.get("PatientBirthDate", "") or "")
    patient = tt.Patient(str(ds.get("PatientID", "") or "ANONYMOUS"), str(ds.get("PatientName", "") or ""),
                         birth_date=datetime.strptime(birth[:8], "%Y%m%d").date() if len(birth) >= 8 else None,
                         sex=str(ds.get("PatientSex", "") or "") if ds.get("PatientSex") in ("M", "F", "O") else "",
                         issuer=str(ds.get("IssuerOfPatientID", "") or ""))
    volumeNode.SetAttribute(PATIENT_JSON, _patientJson(patient))
    volumeNode.SetAttribute(STUDY_JSON, json.dumps({
        "study_uid": str(ds.get("StudyInstanceUID", "")), "description": str(ds.get("StudyDescription", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", ""))}))
    _setSource(volumeNode, tt.study.SourceRef(
        study_uid=str(ds.get("StudyInstanceUID", "")), series_uid=str(ds.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")), modality=str(ds.get("Modality", "")),
        sop_instance_uids=tuple(uids), sop_class_uid=str(ds.get("SOPClassUID", "")),
        series_description=str(ds.get("SeriesDescription", "")), files=tuple(fileForInstance(u) for u in uids)))


def _acquisitionDuration_s(ds: Any) -> float:
    """Acquisition duration in s: AcquisitionDuration (0018,9073, s), else the NM Rotation Information
    (PS3.3 C.8.4.12: ActualFrameDuration ms x NumberOfFramesInRotation, summed over rotations), else the PET
    ActualFrameDuration (0018,1242, ms) -- the same order as the core's DICOM reader."""
    if ds.get("AcquisitionDuration") is not None:
        return float(ds.AcquisitionDuration)
    rotations = ds.get("RotationInformationSequence") or []
    total_ms = sum(float(r.get("ActualFrameDuration", 0) or 0) * int(r.get("NumberOfFramesInRotation", 0) or 0)
                   for r in rotations)
    if total_ms > 0:
        return total_ms / 1000.0
    if ds.get("Modality") == "PT" and ds.get("ActualFrameDuration") is not None:
        return float(ds.ActualFrameDuration) / 1000.0
    return 0.0


def _ensureBqPerMl(volumeNode: Any, header: Any, path: str) -> None:
    """Make sure the node's voxels are activity concentrations in Bq/mL.

    Quantitative SPECT stores counts-like integers and the Real World Value Mapping (PS3.3 C.7.6.16.2.11) to
    Bq/mL, which Slicer's generic DICOM loading does not apply. The node's voxels are compared with the stored
    and the mapped values of the file (their sums, independent of slice order): stored values are mapped here,
    mapped values are kept, anything else is refused. PET must have Units (0054,1001) BQML.

    Raises
    ------
    theratwin.DicomReadError
        If the voxels cannot be shown to be in Bq/mL.
    """
    import numpy as np
    import pydicom

    import theratwin as tt

    modality = header.get("Modality")
    if modality == "PT":
        if str(header.get("Units", "")).upper() != "BQML":
            raise tt.DicomReadError(f"PET Units are {header.get('Units')!r}, not BQML; TheraTwin needs activity "
                                    "concentration.", path=path, tag="Units")
        return
    mappings = header.get("RealWorldValueMappingSequence") or []
    mapping = next((m for m in mappings if "Bq/ml" in str(m.get("LUTExplanation", "")) or any(
        str(c.get("CodeValue", "")).lower() == "bq/ml" for c in m.get("MeasurementUnitsCodeSequence", []))), None)
    if mapping is None:
        raise tt.DicomReadError("no Real World Value Mapping to Bq/mL; the SPECT is not quantitative. Reconstruct "
                                "with quantitative calibration.", path=path, tag="RealWorldValueMappingSequence")
    slope = float(mapping.get("RealWorldValueSlope", 1.0))
    intercept = float(mapping.get("RealWorldValueIntercept", 0.0))
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    mapped = stored * slope + intercept
    voxels = slicer.util.arrayFromVolume(volumeNode)
    total = float(np.sum(voxels, dtype=np.float64))
    if abs(total - mapped.sum()) <= 1e-4 * abs(mapped.sum()) and voxels.size == mapped.size:
        return
    if abs(total - stored.sum()) <= 1e-4 * abs(stored.sum()) and voxels.size == stored.size:
        slicer.util.updateVolumeFromArray(volumeNode, (voxels.astype(np.float64) * slope + intercept).astype(np.float32))
        volumeNode.SetAttribute("TheraTwin.ValueMapping", f"Real World Value Mapping applied: slope {slope!r}, "
                                f"intercept {intercept!r} -> Bq/mL")
        return
    raise tt.DicomReadError("the volume's voxels are neither the stored nor the Bq/mL values of its file; load the "
                            "study with TheraTwin Kinetics > Import DICOM instead.", path=path,
                            tag="RealWorldValueMappingSequence")


def _administration(node: Any) -> Any:
    import theratwin as tt

    missing = [a for a in (RADIOPHARMACEUTICAL, NUCLIDE, ADMINISTERED_ACTIVITY, ADMINISTRATION_START, ACQUISITION_START)
               if not node.GetAttribute(a)]
    if missing:
        raise tt.InvalidInputError(
            f"Volume '{node.GetName()}' lacks {', '.join(missing)}; load it from DICOM with its "
            "RadiopharmaceuticalInformationSequence or set the administration in the module panel."
        )
    return tt.Administration(node.GetAttribute(RADIOPHARMACEUTICAL), node.GetAttribute(NUCLIDE),
                             float(node.GetAttribute(ADMINISTERED_ACTIVITY)),
                             datetime.fromisoformat(node.GetAttribute(ADMINISTRATION_START)))


def _patient(node: Any) -> Any:
    import theratwin as tt

    text = node.GetAttribute(PATIENT_JSON)
    if text:
        d = json.loads(text)
        d["birth_date"] = date.fromisoformat(d["birth_date"]) if d.get("birth_date") else None
        return tt.Patient(**d)
    scene = node.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    subject = _subjectItem(node)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    if subject:
        patientId = sh.GetItemAttribute(subject, constants.GetDICOMPatientIDAttributeName())
        if patientId:
            return tt.Patient(patientId, sh.GetItemAttribute(subject, constants.GetDICOMPatientNameAttributeName()),
                              sex=sh.GetItemAttribute(subject, constants.GetDICOMPatientSexAttributeName()) or "")
    return tt.Patient("ANONYMOUS")


def studyFromNodes(timePoints: Sequence[Any], *, segmentationNode: Any = None, referenceCtNode: Any = None) -> Any:
    """Build a :class:`theratwin.Study` from time-point volume nodes (see the module docstring).

    Cycles come from ``TheraTwin.Cycle``, or, when absent, from the distinct administration start datetimes
    (cycle 1 is the earliest). The CT of each time point is its ``TheraTwin.CT`` reference, if any; the
    segmentation is resampled to the reference CT (or the first time point) grid.

    Raises
    ------
    theratwin.InvalidInputError
        If a node lacks acquisition or administration information, or no time point is given.
    """
    import theratwin as tt

    nodes = [n for n in timePoints if n is not None]
    if not nodes:
        raise tt.InvalidInputError("No time-point volumes given; select the quantitative SPECT/PET volumes (Bq/mL).")
    byCycle: dict[int, list[Any]] = {}
    cts: dict[str, Any] = {}  # one ImageVolume per CT node, shared by its time points
    administrations: dict[int, Any] = {}
    starts = sorted({_administration(n).start for n in nodes})
    for node in nodes:
        administration = _administration(node)
        cycleText = node.GetAttribute(CYCLE)
        cycle = int(cycleText) if cycleText and int(cycleText) > 0 else starts.index(administration.start) + 1
        administrations.setdefault(cycle, administration)
        ct = node.GetNodeReference(CT_REFERENCE_ROLE)
        timePoint = tt.TimePoint(
            imageFromVolumeNode(node, unit="Bq/mL"),
            datetime.fromisoformat(node.GetAttribute(ACQUISITION_START)),
            float(node.GetAttribute(ACQUISITION_DURATION) or 0.0),
            ct=cts.setdefault(ct.GetID(), imageFromVolumeNode(ct, unit="HU")) if ct is not None else None,
            source=_source(node),
            ct_source=_source(ct) if ct is not None else tt.study.SourceRef(),
        )
        byCycle.setdefault(cycle, []).append(timePoint)
    cycles = [tt.Cycle(c, administrations[c], byCycle[c]) for c in sorted(byCycle)]
    referenceCt = imageFromVolumeNode(referenceCtNode, unit="HU") if referenceCtNode is not None else None
    segmentation = None
    if segmentationNode is not None:
        segmentation = segmentationFromSegmentationNode(segmentationNode)
        segmentation.source = _source(segmentationNode)
    studyInfo = json.loads(nodes[0].GetAttribute(STUDY_JSON) or "{}")
    study = tt.Study(_patient(nodes[0]), cycles, segmentation, study_uid=studyInfo.get("study_uid", ""),
                     frame_of_reference_uid=studyInfo.get("frame_of_reference_uid", ""),
                     description=studyInfo.get("description", ""), reference_ct=referenceCt,
                     reference_ct_source=_source(referenceCtNode) if referenceCtNode is not None else tt.study.SourceRef())
    return study


def addStudyToScene(scene: Any, study: Any, *, prefix: str = "") -> StudyNodes:
    """Put a :class:`theratwin.Study` into ``scene``: one volume per time point and CT, the segmentation,
    all under a subject-hierarchy subject and study item with the patient's DICOM attributes."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    patient = study.patient
    subject = sh.CreateSubjectItem(sh.GetSceneItemID(), patient.name or patient.patient_id)
    sh.SetItemAttribute(subject, constants.GetDICOMPatientIDAttributeName(), patient.patient_id)
    sh.SetItemAttribute(subject, constants.GetDICOMPatientNameAttributeName(), patient.name)
    sh.SetItemAttribute(subject, constants.GetDICOMPatientSexAttributeName(), patient.sex)
    studyItem = sh.CreateStudyItem(subject, study.description or "TheraTwin study")
    if study.study_uid:
        sh.SetItemUID(studyItem, constants.GetDICOMUIDName(), study.study_uid)
    result = StudyNodes(subjectItemId=int(subject))
    ctNodes: dict[int, Any] = {}
    for cycle in study.cycles:
        for timePoint in cycle.time_points:
            hours = timePoint.time_h(cycle.administration)
            node = volumeNodeFromImage(scene, timePoint.image, f"{prefix}C{cycle.number} SPECT {hours:.0f} h")
            setTimePointAttributes(node, cycle=cycle.number, acquisitionStart=timePoint.acquisition_start,
                                   acquisitionDuration_s=timePoint.acquisition_duration_s,
                                   administration=cycle.administration)
            node.SetAttribute(PATIENT_JSON, _patientJson(patient))
            node.SetAttribute(STUDY_JSON, json.dumps({"study_uid": study.study_uid, "description": study.description,
                                                      "frame_of_reference_uid": study.frame_of_reference_uid}))
            _setSource(node, timePoint.source)
            sh.CreateItem(studyItem, node)
            if timePoint.ct is not None:
                ct = ctNodes.get(id(timePoint.ct))
                if ct is None:
                    ct = volumeNodeFromImage(scene, timePoint.ct, f"{prefix}C{cycle.number} CT {hours:.0f} h")
                    ct.SetAttribute(ROLE, "CT")
                    _setSource(ct, timePoint.ct_source)
                    sh.CreateItem(studyItem, ct)
                    ctNodes[id(timePoint.ct)] = ct
                    result.cts.append(ct)
                node.SetNodeReferenceID(CT_REFERENCE_ROLE, ct.GetID())
            result.timePoints.setdefault(cycle.number, []).append(node)
    if study.segmentation is not None:
        result.segmentation = segmentationNodeFromSegmentation(scene, study.segmentation, f"{prefix}Structures")
        _setSource(result.segmentation, study.segmentation.source)
        sh.CreateItem(studyItem, result.segmentation)
    return result


def loadStudyFromDicom(scene: Any, paths: Sequence[str | os.PathLike[str]], *, prefix: str = "",
                       progress: Callable[[float, str], None] | None = None) -> StudyNodes:
    """Read DICOM files or folders with the core's reader and add the study to ``scene``.

    The core reader applies the Real World Value Mapping of quantitative SPECT (Bq/mL), groups series into
    time points and cycles by their datetimes and RadiopharmaceuticalInformationSequence, and reads the SEG,
    which Slicer's generic DICOM loading does not do for therapy studies.

    Parameters
    ----------
    paths
        One folder, or the files of one patient (e.g. ``slicer.dicomDatabase.filesForSeries`` of each series of
        a study). Files are linked into a folder of their own that is kept (the exports reference them).
    """
    import theratwin as tt
    from theratwin.dicom import read_study

    given = [Path(p) for p in paths]
    for path in given:
        if not path.exists():
            raise tt.InvalidInputError(f"DICOM path '{path}' does not exist; choose an existing folder or files.")
    if len(given) == 1 and given[0].is_dir():
        folder = given[0]
    else:
        folder = Path(tempfile.mkdtemp(prefix="theratwin-dicom-"))
        for index, path in enumerate(given):
            target = folder / f"{index:06d}_{path.name}"
            try:
                target.symlink_to(path.resolve())
            except OSError:  # no symlinks (Windows without privilege): copy
                import shutil

                shutil.copy2(path, target)
    return addStudyToScene(scene, read_study(folder, progress=progress), prefix=prefix)


def annotateSceneFromDicom(scene: Any, fileForInstance: Callable[[str], str], *,
                           problems: list[tuple[Any, str]] | None = None, retry: bool = False) -> list[Any]:
    """:func:`annotateFromDicom` for every volume loaded by Slicer's DICOM module that is not yet annotated.

    CTs are marked as such (with their DICOM source), and each time point is linked to a CT of its frame of
    reference (the same patient position, PS3.3 C.7.4.1; SPECT/CT scanners write one per acquisition). Returns the
    new time points.

    A volume that cannot be a time point -- no radiopharmaceutical information, a file missing from the database
    or the disk, a file that is not DICOM, pixel data no installed decoder reads, counts instead of Bq/mL -- is left
    out with its reason in the attribute ``TheraTwin.NotATimePoint`` (and in ``problems`` as ``(node, reason)``,
    and the log); it is not read again on the next call unless ``retry``. Nothing here raises for one bad volume:
    the Kinetics panel calls this whenever it is shown.
    """
    import pydicom

    import theratwin as tt

    annotated, cts = [], []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        uids = (node.GetAttribute(DICOM_INSTANCE_UIDS) or "").split()
        if node.GetAttribute(ROLE) == "CT":
            cts.append(node)
        if node.GetAttribute(ROLE) or not uids or (node.GetAttribute(NOT_A_TIME_POINT) and not retry):
            continue
        path = None
        try:
            path = fileForInstance(uids[0])
            if not path:
                raise tt.InvalidInputError(f"SOP instance {uids[0]} is not in the DICOM database (its file is "
                                           "unknown); import the series into the DICOM database again.")
            header = pydicom.dcmread(path, stop_before_pixels=True)
            if header.get("Modality") == "CT":
                node.SetAttribute(ROLE, "CT")
                node.SetAttribute("TheraTwin.Unit", "HU")
                _setDicomIdentity(node, header, uids, fileForInstance)
                cts.append(node)
                continue
            if annotateFromDicom(node, fileForInstance):
                node.RemoveAttribute(NOT_A_TIME_POINT)
                annotated.append(node)
                continue
            reason = (f"{path}: no acquisition datetime or RadiopharmaceuticalInformationSequence (not a "
                      "quantitative SPECT/PET time point)")
        except Exception as error:  # one unreadable volume must not stop the panel: keep why, go on
            reason = str(error) if isinstance(error, tt.TheraTwinError) else userMessage(error, path=path)
        node.SetAttribute(NOT_A_TIME_POINT, reason)
        if problems is not None:
            problems.append((node, reason))
        logging.warning(f"TheraTwin: volume '{node.GetName()}' is not used as a time point: {reason}")
    for node in annotated:
        frame = _source(node).frame_of_reference_uid
        candidates = [ct for ct in cts if frame and _source(ct).frame_of_reference_uid == frame]
        if candidates and node.GetNodeReference(CT_REFERENCE_ROLE) is None:
            node.SetNodeReferenceID(CT_REFERENCE_ROLE, candidates[0].GetID())
    return annotated
