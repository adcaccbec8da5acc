"""Folder and file settings: unset means unset (None), never Slicer's working directory.

The former fields were ``pathlib.Path``, whose unset value ``Path(".")`` is true, so Import DICOM walked the
working directory, Export wrote into it and Twin's Load/Save were always enabled. Each test runs in a working
directory holding a DICOM-looking file and a twin-looking file, so that using the working directory would show.
"""

from __future__ import annotations

import pathlib
import tempfile
import typing

import pytest
from modules import loadModuleFile

import TheraTwinLib as L

PATH_FIELDS = {"TheraTwinKinetics": ["dicomFolder"], "TheraTwinTwin": ["twinFile"],
               "TheraTwinExport": ["outputDirectory"]}


@pytest.fixture
def busyWorkingDirectory(tmp_path, monkeypatch):
    folder = tmp_path / "cwd"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (folder / "twin.json").write_text("{}", encoding="utf-8")
    monkeypatch.chdir(folder)
    before = sorted(p.name for p in folder.iterdir())
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == before, "something was written into the working directory"


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), (".", None), (pathlib.Path(""), None), (pathlib.Path("."), None), ("  ", None),
    ("/data/p1", pathlib.Path("/data/p1")), (pathlib.Path("out"), pathlib.Path("out")), ("./out", pathlib.Path("out")),
])
def test_path_or_none(value, expected) -> None:
    assert L.pathOrNone(value) == expected
    assert L.pathText(value) == ("" if expected is None else str(expected))


def test_optional_path_annotation() -> None:
    assert L.isOptionalPath(pathlib.Path | None) and L.isOptionalPath(typing.Optional[pathlib.Path])  # noqa: UP045
    assert L.isOptionalPath(typing.Annotated[pathlib.Path | None, "x"])
    assert not L.isOptionalPath(pathlib.Path) and not L.isOptionalPath(str | None) and not L.isOptionalPath(int)
    assert L.registerPathParameterConnector() is False  # no application here: nothing to connect


@pytest.mark.parametrize("name", sorted(PATH_FIELDS))
def test_path_fields_start_unset(name) -> None:
    module = loadModuleFile(name)
    cls = getattr(module, f"{name}ParameterNode")
    hints = typing.get_type_hints(cls)
    parameters = cls()
    for field in PATH_FIELDS[name]:
        assert L.isOptionalPath(hints[field]), f"{name}.{field} is {hints[field]}"
        assert getattr(parameters, field) is None


@pytest.mark.parametrize("unset", [None, "", ".", pathlib.Path(".")])
def test_import_dicom_without_a_folder_is_refused(scene, busyWorkingDirectory, unset) -> None:
    module = loadModuleFile("TheraTwinKinetics")
    parameters = module.TheraTwinKineticsParameterNode(dicomFolder=unset)
    nodesBefore = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="Choose the folder"):
        module.TheraTwinKineticsLogic().importDicomUsingParameterNode(parameters, scene)
    with pytest.raises(ValueError, match="No DICOM folder"):
        module.TheraTwinKineticsLogic().importDicom(scene, [unset])
    assert scene.GetNumberOfNodes() == nodesBefore


@pytest.mark.parametrize("unset", [None, "", "."])
def test_twin_load_and_save_need_a_file(scene, busyWorkingDirectory, unset) -> None:
    logic = loadModuleFile("TheraTwinTwin").TheraTwinTwinLogic()
    with pytest.raises(ValueError, match="twin file"):
        logic.loadTwin(scene, unset)
    node = scene.AddNewNodeByClass("vtkMRMLTextNode")
    node.SetText('{"some": "twin"}')
    with pytest.raises(ValueError, match="file to save"):
        logic.saveTwin(node, unset)


def test_export_default_folder_is_new_and_under_the_temporary_folder(busyWorkingDirectory, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    logic = loadModuleFile("TheraTwinExport").TheraTwinExportLogic()
    first = logic.defaultOutputDirectory()
    assert first.parent == tmp_path / "tmp" / "TheraTwin" and first.name.startswith("export-")
    first.mkdir(parents=True)
    second = logic.defaultOutputDirectory()
    assert second != first and not second.exists()
    assert busyWorkingDirectory not in first.parents


@pytest.mark.parametrize("unset", [None, "", "."])
def test_export_logic_refuses_an_unset_folder(scene, study, busyWorkingDirectory, unset) -> None:
    module = loadModuleFile("TheraTwinExport")
    nodes = L.addStudyToScene(scene, study)
    with pytest.raises(ValueError, match="output folder"):
        module.TheraTwinExportLogic().process(nodes.allTimePoints(), nodes.segmentation, unset)


def test_saved_files_are_whole_or_unchanged(tmp_path, monkeypatch) -> None:
    """The Twin and Export modules save through ``writeTextFile``: a save that fails half-way (here the final
    rename) leaves the previous file as it was and no temporary file behind; a save that succeeds replaces it."""
    import os

    target = tmp_path / "twin-state.json"
    L.writeTextFile(target, '{"version": 1}')
    assert target.read_text(encoding="utf-8") == '{"version": 1}'

    def failingReplace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failingReplace)
    with pytest.raises(Exception, match="space"):
        L.writeTextFile(target, '{"version": 2, "long": "' + "x" * 100000 + '"}')
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == '{"version": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twin-state.json"]
    L.writeTextFile(target, '{"version": 3}')
    assert target.read_text(encoding="utf-8") == '{"version": 3}'
