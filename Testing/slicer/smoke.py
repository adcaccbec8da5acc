"""The TheraTwin smoke test, shared by the two places it runs.

- Inside a real 3D Slicer, by a maintainer (Windows, macOS, Linux):
  ``Slicer --no-main-window --testing --python-script Testing/slicer/SlicerSmokeTest.py`` (or ctest in an extension
  build, ``py_TheraTwin_SlicerSmokeTest``). That script opens every module's panel and clicks through them.
- In CI on slicer-core (no application, no Qt): ``Testing/slicer/test_smoke.py``, with the modules' headless
  parameter objects in place of the panels' parameter nodes.

Both go through the same steps, written once here: path fields start unset; the demo patient is loaded through
its Sample Data reader; each module's Logic runs from its parameter node (``processUsingParameterNode``, what the
Apply buttons call) in the order Kinetics -> Dosimetry -> Twin -> Export, Export with no folder chosen (so into
its default folder); the outputs are checked with the whole-workflow self-test's checks against the demo's
ground truth, plus the smoke test's own (files on disk, SlicerRT dose unit, nothing written elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODULES = ("TheraTwinKinetics", "TheraTwinDosimetry", "TheraTwinTwin", "TheraTwinExport")
#: Folder and file fields of each module's parameter node: None until the user chooses one.
PATH_FIELDS = {"TheraTwinKinetics": ("dicomFolder",), "TheraTwinTwin": ("twinFile",),
               "TheraTwinExport": ("outputDirectory",)}
#: The widget bound to each path field (``SlicerParameterName`` in the module's .ui file).
PATH_WIDGETS = {"dicomFolder": "dicomFolderPathLineEdit", "twinFile": "twinFilePathLineEdit",
                "outputDirectory": "outputDirectoryPathLineEdit"}
#: Export outputs that must exist as files (``results.outputs`` kinds).
EXPORT_FILES = ("rtdose", "sr", "seg", "fhir_bundle", "report_html", "twin_state")


def pathFieldsSet(parameterNodes: dict[str, Any]) -> list[str]:
    """``module.field = value`` for every path field that is not unset (None)."""
    return [f"{name}.{field} = {getattr(parameterNodes[name], field)!r}"
            for name, fields in PATH_FIELDS.items() if name in parameterNodes for field in fields
            if getattr(parameterNodes[name], field) is not None]


def loadDemoThroughSampleData(sampleDataModule: Any, scene: Any, cacheFolder: Path, *, fast: bool,
                              download: Any = None) -> tuple[Any, Any]:
    """Load the demo patient the way Sample Data does: fetch the registered file (``download(uri, target)``,
    default ``urllib.request.urlretrieve`` as SampleDataLogic.downloadFile does), verify its SHA256, and give it to
    the module's file reader. Returns ``(StudyNodes, DemoPatient)``."""
    import hashlib
    import urllib.request

    source = sampleDataModule.sampleDataSource()
    uri = source["uris"][0]
    digest = source["checksums"][0].split(":", 1)[1]
    if fast:  # the same path with the fast build's checksum list (Sample Data registers the default build's)
        manifest = sampleDataModule.CHECKSUMS[True]
        uri, digest = manifest.as_uri(), sampleDataModule.TheraTwinSampleDataLogic.sha256(manifest)
    target = Path(cacheFolder) / source["fileNames"][0]
    (download or urllib.request.urlretrieve)(uri, str(target))
    if hashlib.sha256(target.read_bytes()).hexdigest() != digest:
        raise AssertionError(f"{target}: SHA256 differs from the registered checksum")
    return sampleDataModule.TheraTwinSampleDataLogic().loadDemoFromManifest(scene, target)


def runModules(modules: dict[str, Any], parameterNodes: dict[str, Any], timePointNode: Any,
               segmentationNode: Any) -> dict[str, Any]:
    """Run each module's Logic from its parameter node, as its Apply button does, on the loaded patient.

    Returns ``{"kinetics", "dosimetry", "twin", "export"}`` -> that Logic's outputs. Export's folder is left as the
    parameter node has it (unset: Export chooses its default folder and writes it back).
    """
    out = {}
    for name in MODULES:
        parameters = parameterNodes[name]
        parameters.timePointVolume = timePointNode
        parameters.segmentation = segmentationNode
        if name == "TheraTwinExport":
            parameters.writeReport = True
            parameters.importIntoDicomDatabase = False
        logic = getattr(modules[name], f"{name}Logic")()
        out[name.removeprefix("TheraTwin").lower()] = logic.processUsingParameterNode(parameters)
    return out


def checkOutputs(testCase: Any, out: dict[str, Any], parameterNodes: dict[str, Any], lib: Any) -> Path:
    """The smoke test's checks beyond the self-test's (``testCase``: a unittest.TestCase for the assertions).
    Returns the folder Export wrote to."""
    export = parameterNodes["TheraTwinExport"]
    folder = Path(export.outputDirectory)
    testCase.assertTrue(folder.is_dir(), f"Export wrote nowhere: {folder}")
    testCase.assertEqual(Path(out["export"]["outputDirectory"]), folder)
    for kind in EXPORT_FILES:
        relative = out["export"]["files"].get(kind)
        testCase.assertIsNotNone(relative, f"Export did not write {kind}")
        for path in relative if isinstance(relative, list) else [relative]:
            testCase.assertTrue((folder / path).is_file(), f"{kind}: {folder / path} is missing")
    bundle = json.loads((folder / "fhir-bundle.json").read_text(encoding="utf-8"))
    testCase.assertEqual(bundle["resourceType"], "Bundle")
    # the parameter nodes hold the outputs the panels show
    testCase.assertIsNotNone(parameterNodes["TheraTwinKinetics"].tiaVolume)
    dose = parameterNodes["TheraTwinDosimetry"].doseVolume
    testCase.assertTrue(lib.isDoseVolume(dose))
    testCase.assertEqual(lib.doseUnitName(dose), "Gy")  # where SlicerRT reads it
    testCase.assertGreater(parameterNodes["TheraTwinTwin"].predictionTable.GetNumberOfRows(), 0)
    testCase.assertIsNotNone(export.exportTable)
    return folder
