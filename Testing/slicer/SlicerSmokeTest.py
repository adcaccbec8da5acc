"""TheraTwin smoke test inside a real 3D Slicer (>= 5.12; Windows, macOS, Linux), run by a maintainer.

From the repository root (a source checkout: the script loads the modules from it), or with the extension
installed (the installed modules are used)::

    Slicer --no-main-window --testing --python-script Testing/slicer/SlicerSmokeTest.py [--full]

In an extension build tree it is also the ctest ``py_TheraTwin_SlicerSmokeTest`` (TheraTwinExtension/CMakeLists.txt).
``--testing`` makes Slicer exit when the script ends, with status 1 if it failed; without it Slicer stays open.
``--full`` uses the realistic demo patient (Sample Data's "TheraTwinDemoPatient", a few minutes) instead of the
half-resolution one.

It checks, in order: the Slicer version; the Python packages (installed without asking in testing mode); that every
module's panel opens and its folder and file fields start empty (parameter node and widget); that the demo patient
loads through Sample Data's own code (download of the registered file, checksum, TheraTwin's file reader); that
Apply on Kinetics, Dosimetry, Twin and Export, in that order, fills each panel's outputs, Export into its default
folder; and the outputs against the demo's ground truth (the whole-workflow self-test's checks and those of
``smoke.py``, which the CI runs on slicer-core). It prints ``TheraTwin smoke test passed`` at the end.
"""

import argparse
import logging
import pathlib
import sys
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXTENSION_MODULES = ("TheraTwinSampleData", "TheraTwinSelfTest")


def addPaths(source):
    """This folder (smoke.py) on Python's path and, for a source checkout (``source``), the repository's Modules
    (TheraTwinLib) and Logic (theratwin); an installed extension or a build tree brings its own."""
    for folder in (HERE, ROOT / "Logic", ROOT / "Modules") if source else (HERE,):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def loadModules(names):
    """Load the TheraTwin modules from the source checkout unless Slicer already has them (installed extension),
    as the Extension Wizard's "Load module" does (factoryManager registerModule + loadModules)."""
    import qt
    import slicer

    files = {name: ROOT / "Modules" / name / f"{name}.py" for name in names}
    files.update({name: ROOT / "TheraTwinExtension" / f"{name}.py" for name in EXTENSION_MODULES})
    missing = [name for name in files if not hasattr(slicer.modules, name.lower())]
    if not missing:
        return
    factory = slicer.app.moduleManager().factoryManager()
    for name in missing:
        factory.registerModule(qt.QFileInfo(str(files[name])))
        if not factory.isRegistered(name):
            raise RuntimeError(f"{files[name]} could not be registered as a Slicer module")
    if not factory.loadModules(missing):
        raise RuntimeError(f"Slicer could not load {missing}; see the log above")


def showPanel(name):
    """Open a module's panel: selected in the main window, or created and entered without one
    (``slicer.util.selectModule`` needs the main window's module selector)."""
    import slicer

    widget = slicer.util.getModuleWidget(name)  # creates the widget (setup) on first use
    if slicer.util.mainWindow() is not None:
        slicer.util.selectModule(name)
    else:
        widget.enter()
    return widget


def run(full):
    import slicer

    modules = ("TheraTwinKinetics", "TheraTwinDosimetry", "TheraTwinTwin", "TheraTwinExport")
    addPaths(source=not all(hasattr(slicer.modules, name.lower()) for name in modules + EXTENSION_MODULES))
    loadModules(modules)
    import SampleData
    import smoke
    import TheraTwinSampleData
    import TheraTwinSelfTest

    import TheraTwinLib

    check = TheraTwinSelfTest.TheraTwinSelfTestTest("test_WholeWorkflow")  # a unittest.TestCase: its asserts
    check.scene = slicer.mrmlScene

    logging.info(f"TheraTwin smoke test: Slicer {TheraTwinLib.checkSlicerVersion()}")
    installed = TheraTwinLib.ensureRequirements()  # testing mode: installs without asking
    logging.info(f"TheraTwin smoke test: packages installed now: {installed or 'none'}")

    # every panel opens; folder and file fields start empty in the parameter node and in the widget
    widgets = {name: showPanel(name) for name in smoke.MODULES}
    parameterNodes = {name: widgets[name].logic.getParameterNode() for name in smoke.MODULES}
    check.assertEqual(smoke.pathFieldsSet(parameterNodes), [])
    for name, fields in smoke.PATH_FIELDS.items():
        for field in fields:
            check.assertEqual(getattr(widgets[name].ui, smoke.PATH_WIDGETS[field]).currentPath, "",
                              f"{name}: the {field} field is not empty")
        check.assertFalse(name == "TheraTwinTwin" and widgets[name].ui.loadTwinButton.enabled,
                          "Twin's Load is enabled without a file")

    # the demo patient through Sample Data's own code and TheraTwin's file reader
    TheraTwinSampleData.registerSampleData()
    source = TheraTwinSampleData.sampleDataSource()
    if full:
        loaded = SampleData.downloadSamples(source["sampleName"])
    else:
        manifest = TheraTwinSampleData.CHECKSUMS[True]
        loaded = SampleData.SampleDataLogic().downloadFromURL(
            uris=[manifest.as_uri()], fileNames=["TheraTwinDemoPatientFast" + TheraTwinSampleData.DEMO_FILE_SUFFIX],
            nodeNames=source["nodeNames"], loadFileTypes=source["loadFileTypes"],
            checksums=[f"SHA256:{TheraTwinSampleData.TheraTwinSampleDataLogic.sha256(manifest)}"])
    check.assertTrue(loaded, "Sample Data loaded nothing")
    timePoints = TheraTwinLib.timePointNodes(slicer.mrmlScene)
    segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    check.assertGreaterEqual(len(timePoints), 5)
    check.assertIsNotNone(segmentation)
    demo = TheraTwinSampleData.TheraTwinSampleDataLogic().buildDemo(fast=not full)

    # Apply on each panel, in order; each fills its outputs
    outputs = {"TheraTwinKinetics": "tiaVolume", "TheraTwinDosimetry": "doseVolume",
               "TheraTwinTwin": "predictionTable", "TheraTwinExport": "exportTable"}
    for name in smoke.MODULES:
        showPanel(name)
        parameters = parameterNodes[name]
        parameters.timePointVolume = timePoints[0]
        parameters.segmentation = segmentation
        if name == "TheraTwinExport":
            parameters.importIntoDicomDatabase = False  # leave the user's DICOM database alone
        check.assertTrue(widgets[name].ui.applyButton.enabled, f"{name}: Apply is disabled")
        widgets[name].ui.applyButton.click()
        check.assertIsNotNone(getattr(parameters, outputs[name]), f"{name}: Apply produced no {outputs[name]}")
    check.assertIsNotNone(parameterNodes["TheraTwinExport"].outputDirectory, "Export chose no folder")
    check.assertEqual(widgets["TheraTwinExport"].ui.outputDirectoryPathLineEdit.currentPath,
                      str(parameterNodes["TheraTwinExport"].outputDirectory))

    # the same run through the Logic (continued, not recomputed), checked against the demo's ground truth
    modules = {name: sys.modules[name] for name in smoke.MODULES}
    out = smoke.runModules(modules, parameterNodes, timePoints[0], segmentation)
    folder = smoke.checkOutputs(check, out, parameterNodes, TheraTwinLib)
    check.checkWorkflow({**out, "nodes": None, "demo": demo}, folder)
    logging.info(f"TheraTwin smoke test: outputs in {folder}")

    # closing the scene and opening the panels again raises nothing
    slicer.mrmlScene.Clear(0)
    for name in smoke.MODULES:
        showPanel(name)


def main(argv):
    import slicer

    parser = argparse.ArgumentParser(description="TheraTwin smoke test inside 3D Slicer")
    parser.add_argument("--full", action="store_true", help="use the realistic demo patient (slower)")
    args = parser.parse_args(argv)
    try:
        run(args.full)
    except Exception:
        traceback.print_exc()
        print("TheraTwin smoke test FAILED")
        slicer.util.exit(1)
        return 1
    print("TheraTwin smoke test passed")
    slicer.util.exit(0)
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
