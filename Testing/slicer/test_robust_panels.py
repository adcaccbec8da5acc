"""Panels never fail on a foreign exception: each becomes one clear line, and a bad DICOM volume is left out.

The exceptions are real ones, made by the code that raises them in use: ``open`` on a missing file, pydicom on
a file that is not DICOM and on pixel data in a transfer syntax no decoder reads; the DICOM files are the demo
patient's.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pydicom
import pytest
from modules import loadModuleFile
from pydicom import encaps

import theratwin as tt
import TheraTwinLib as L
from TheraTwinLib.StudyNodes import NOT_A_TIME_POINT


def raised(function) -> BaseException:
    try:
        function()
    except BaseException as error:  # noqa: BLE001 - the test collects what the call raises
        return error
    raise AssertionError("nothing was raised")


def undecodable(source: Path, target: Path) -> Path:
    """A copy of a DICOM file whose pixel data is in MPEG-2 (no pydicom decoder exists for it)."""
    ds = pydicom.dcmread(source)
    frames = [bytes(ds.PixelData)]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = encaps.encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(target, enforce_file_format=True)
    return target


def test_messages_for_foreign_exceptions(tmp_path, demo_scene) -> None:
    missing = tmp_path / "gone" / "IM0001.dcm"
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM", encoding="utf-8")
    nm = next(Path(demo_scene["demo"].dicom_dir).rglob("NM_SPECT.dcm"))
    mpeg = undecodable(nm, tmp_path / "mpeg.dcm")
    cases = {
        "missing": (raised(lambda: open(missing, "rb")), "File or folder not found: " + str(missing)),
        "not DICOM": (raised(lambda: pydicom.dcmread(text)), f"Not a DICOM file ({text})"),
        "pixels": (raised(lambda: pydicom.dcmread(mpeg).pixel_array), f"The pixel data ({mpeg}) cannot be decoded"),
        "permission": (PermissionError(errno.EACCES, "Permission denied", "/pacs/out"), "No permission to use /pacs/out"),
        "disk full": (OSError(errno.ENOSPC, "No space left on device", "/out/x.dcm"), "The disk is full while writing"),
        "memory": (MemoryError(), "Not enough memory"),
        "package": (raised(lambda: __import__("theratwin_no_such_package")),
                    "The Python package 'theratwin_no_such_package' is missing"),
        "other": (raised(lambda: {}["kidneys"]), "Unexpected KeyError"),
        # an AttributeError inside the core's own code is a bug: said so, not blamed on the data
        "bug": (raised(lambda: __import__("theratwin._time").__dict__["_time"].aware("2026")),
                "Internal error in TheraTwin (a bug, not a problem with your data): AttributeError"),
    }
    for name, (error, expected) in cases.items():
        path = {"not DICOM": text, "pixels": mpeg}.get(name)
        message = L.userMessage(error, path=path)
        assert message.startswith(expected), (name, message)
        assert "\n" not in message and "Traceback" not in message


def test_explained_errors_keeps_own_messages_and_restates_the_rest(scene) -> None:
    logic = loadModuleFile("TheraTwinKinetics").TheraTwinKineticsLogic()
    # our own check of the user's input: passed through unchanged
    with pytest.raises(ValueError, match="No DICOM folder"), L.explainedErrors():
        logic.importDicom(scene, [None])
    with pytest.raises(tt.InvalidInputError), L.explainedErrors():
        L.studyFromNodes([])
    from theratwin.progress import Cancelled

    with pytest.raises(Cancelled), L.explainedErrors():
        raise Cancelled("by the user")
    # a ValueError from numpy, deep in a computation: restated, the original kept as the cause
    with pytest.raises(L.ExplainedError, match="Unexpected ValueError") as info, L.explainedErrors():
        np.zeros(6).reshape(4, 4)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(tt.InvalidInputError, match="'/no/such/folder' does not exist"), L.explainedErrors():
        logic.importDicom(scene, ["/no/such/folder"])
    twin = loadModuleFile("TheraTwinTwin").TheraTwinTwinLogic()
    with pytest.raises(L.ExplainedError, match="File or folder not found: /no/such/twin.json"), L.explainedErrors():
        twin.loadTwin(scene, "/no/such/twin.json")


@pytest.fixture
def dicomVolumes(scene, demo_scene, tmp_path):
    """Volumes as Slicer's DICOM module leaves them (``DICOM.instanceUIDs``), over good and bad files."""
    dicom = Path(demo_scene["demo"].dicom_dir)
    nm = sorted(dicom.rglob("NM_SPECT.dcm"))[0]
    ct = sorted((nm.parent / "CT").glob("*.dcm"))[0]
    mr = tmp_path / "mr.dcm"
    header = pydicom.dcmread(ct)
    header.Modality = "MR"
    header.save_as(mr)
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM", encoding="utf-8")
    files = {"good": nm, "ct": ct, "missing": tmp_path / "deleted.dcm", "notInDatabase": "", "notDicom": text,
             "pixels": undecodable(nm, tmp_path / "mpeg.dcm"), "noRadiopharmaceutical": mr}
    spect = pydicom.dcmread(nm)
    mapping = spect.RealWorldValueMappingSequence[0]
    mapped = (spect.pixel_array * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept))
    nodes = {}
    for name in files:
        array = mapped.astype(np.float32) if name == "good" else np.zeros((2, 3, 4), np.float32)
        node = L.volumeNodeFromImage(scene, tt.ImageVolume(array, spacing_mm=(1, 1, 1), unit="1"), name)
        node.SetAttribute("DICOM.instanceUIDs", f"1.2.826.0.1.3680043.10.999.{len(nodes) + 1}")
        nodes[name] = node
    calls: list[str] = []

    def fileForInstance(uid: str) -> str:
        calls.append(uid)
        index = int(uid.rsplit(".", 1)[1]) - 1
        return str(list(files.values())[index])

    return {"nodes": nodes, "fileForInstance": fileForInstance, "calls": calls}


def test_bad_dicom_volumes_are_left_out_with_their_reason(scene, dicomVolumes) -> None:
    nodes, calls = dicomVolumes["nodes"], dicomVolumes["calls"]
    problems: list = []
    annotated = L.annotateSceneFromDicom(scene, dicomVolumes["fileForInstance"], problems=problems)
    assert annotated == [nodes["good"]]
    assert nodes["good"].GetAttribute("TheraTwin.Role") == "TimePoint"
    assert nodes["good"].GetAttribute("TheraTwin.Nuclide") == "Lu-177"
    assert nodes["ct"].GetAttribute("TheraTwin.Role") == "CT"
    assert nodes["good"].GetNodeReference("TheraTwin.CT") is nodes["ct"]  # same frame of reference
    reasons = {name: node.GetAttribute(NOT_A_TIME_POINT) for name, node in nodes.items()}
    assert reasons["good"] is None and reasons["ct"] is None
    assert reasons["missing"].startswith("File or folder not found") and "deleted.dcm" in reasons["missing"]
    assert "not in the DICOM database" in reasons["notInDatabase"]
    assert reasons["notDicom"].startswith("Not a DICOM file") and "notes.txt" in reasons["notDicom"]
    assert reasons["pixels"].startswith("The pixel data") and "cannot be decoded" in reasons["pixels"]
    assert "RadiopharmaceuticalInformationSequence" in reasons["noRadiopharmaceutical"]
    assert sorted(n.GetName() for n, _ in problems) == ["missing", "noRadiopharmaceutical", "notDicom",
                                                        "notInDatabase", "pixels"]
    # shown again (the panel's enter()): nothing is read twice
    calls.clear()
    assert L.annotateSceneFromDicom(scene, dicomVolumes["fileForInstance"]) == []
    assert calls == []
    # unless asked to retry (e.g. after installing a decoder)
    assert L.annotateSceneFromDicom(scene, dicomVolumes["fileForInstance"], retry=True) == []
    assert len(set(calls)) == 5
