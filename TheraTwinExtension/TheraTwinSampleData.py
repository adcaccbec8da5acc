"""TheraTwin sample data: the built-in demo patient, registered in Slicer's Sample Data module (hidden module).

The demo patient (a synthetic 177Lu-PSMA-617 patient, two cycles, SPECT + CT per time point and a DICOM SEG)
is not downloaded: ``theratwin.demo.build_demo`` generates it locally, deterministically for a given seed, and
caches it. Following the SlicerMorph pattern of registering sample data with SHA256 checksums, the files of the
default build are listed in ``Resources/TheraTwinDemoPatient.sha256`` (``sha256sum`` format, computed from the
deterministic build with :meth:`TheraTwinSampleDataLogic.writeChecksums`) and every generated file is verified
against that list before it is loaded, so a changed generator or a corrupted cache cannot pass silently.

The Sample Data entry goes through Sample Data's ordinary path, so the GUI button and scripts
(``SampleData.downloadSample("TheraTwinDemoPatient")``) behave the same -- a ``customDownloader`` would serve only
the button (Slicer v5.12.0 ``Modules/Scripted/SampleData/SampleData.py``: the button calls
``source.customDownloader``, ``downloadSamples`` calls ``downloadFromSource``, which ignores it). Its one "file" is
the checksum list itself, given as a ``file://`` URI with its SHA256 (``downloadFile`` fetches it with
``urllib.request.urlretrieve`` into Slicer's cache and verifies the checksum), with the file type of this module's
scripted reader, :class:`TheraTwinSampleDataFileReader` (registered by Slicer for a ``<Module>FileReader`` class,
``qSlicerScriptedLoadableModule::registerIO``), which builds, verifies and loads the demo patient.
"""

import hashlib
import logging
import os
import pathlib

import slicer

try:  # inside the Slicer application
    import qt  # noqa: F401  (present only in the application)
except ModuleNotFoundError:  # slicer-core (PyPI) in scripts and CI: the Logic runs without Qt
    from TheraTwinLib.Headless import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    )
    from TheraTwinLib.Headless import tr as _
else:
    from slicer.i18n import tr as _
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    )

import TheraTwinLib

RESOURCES = pathlib.Path(__file__).resolve().parent / "Resources"
#: SHA256 of every file of the default demo build (relative to the build's DICOM folder).
CHECKSUMS = {False: RESOURCES / "TheraTwinDemoPatient.sha256", True: RESOURCES / "TheraTwinDemoPatientFast.sha256"}

#
# TheraTwinSampleData
#


class TheraTwinSampleData(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TheraTwin Sample Data")
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = ["SampleData"]
        self.parent.contributors = ["TheraTwin developers"]
        self.parent.hidden = True
        self.parent.helpText = _(
            "Registers the TheraTwin demo patient in the Sample Data module. "
            '<a href="https://github.com/theratwin/SlicerTheraTwin#readme">Documentation</a>.'
        )
        self.parent.acknowledgementText = _("The demo patient is synthetic; see theratwin.demo for its sources.")
        if hasattr(slicer, "app"):
            slicer.app.connect("startupCompleted()", registerSampleData)


#: File type and name suffix of the demo patient's Sample Data "file" (see the module docstring).
DEMO_FILE_TYPE = "TheraTwinDemoPatientFile"
DEMO_FILE_SUFFIX = ".theratwin-demo"


def sampleDataSource() -> dict:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the demo patient."""
    manifest = CHECKSUMS[False]
    return {
        "category": "TheraTwin",
        "sampleName": "TheraTwinDemoPatient",
        "thumbnailFileName": str(RESOURCES / "Icons" / "TheraTwinDemoPatient.png"),
        "uris": [manifest.as_uri()],
        "fileNames": ["TheraTwinDemoPatient" + DEMO_FILE_SUFFIX],
        "nodeNames": ["TheraTwinDemoPatient"],
        "loadFileTypes": [DEMO_FILE_TYPE],
        "checksums": [f"SHA256:{TheraTwinSampleDataLogic.sha256(manifest)}"],
    }


def registerSampleData():
    """Add the demo patient to the Sample Data module (category "TheraTwin"); registering twice is harmless."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sampleDataSource())


#
# TheraTwinSampleDataLogic
#


class TheraTwinSampleDataLogic(ScriptedLoadableModuleLogic):
    """Build, verify and load the demo patient (works without the application)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def sha256(path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def computeChecksums(self, dicomDirectory) -> dict:
        """``{relative path: SHA256}`` of every file under ``dicomDirectory``, sorted by path."""
        root = pathlib.Path(dicomDirectory)
        return {p.relative_to(root).as_posix(): self.sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}

    def readChecksums(self, fast=False) -> dict:
        """The registered checksums (``{relative path: SHA256}``)."""
        path = CHECKSUMS[bool(fast)]
        if not path.is_file():
            return {}
        entries = (line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip())
        return {name.strip(): digest for digest, name in entries}

    def writeChecksums(self, dicomDirectory, fast=False) -> pathlib.Path:
        """Record the checksums of a fresh deterministic build (maintainers, when the demo generator changes)."""
        path = CHECKSUMS[bool(fast)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{d}  {n}\n" for n, d in self.computeChecksums(dicomDirectory).items()),
                        encoding="utf-8", newline="\n")  # the same bytes on every OS (the file is checksummed)
        return path

    def verify(self, dicomDirectory, fast=False) -> list:
        """Differences between the built files and the registered checksums (empty when they match)."""
        expected = self.readChecksums(fast)
        if not expected:
            return [f"no registered checksums in {CHECKSUMS[bool(fast)]}"]
        actual = self.computeChecksums(dicomDirectory)
        problems = [f"{name}: missing" for name in expected if name not in actual]
        problems += [f"{name}: SHA256 {actual[name]} != registered {digest}" for name, digest in expected.items()
                     if name in actual and actual[name] != digest]
        problems += [f"{name}: not registered" for name in actual if name not in expected]
        return problems

    def buildDemo(self, fast=False, progress=None, rebuild=False):
        """Build (or reuse from the cache) the demo patient; returns ``theratwin.demo.DemoPatient``."""
        TheraTwinLib.ensureRequirements()
        from theratwin.demo import build_demo

        return build_demo(fast=fast, progress=progress, rebuild=rebuild)

    def loadDemo(self, scene, fast=False, verify=True, progress=None):
        """Build, verify and load the demo patient into ``scene``.

        Returns
        -------
        tuple
            ``(TheraTwinLib.StudyNodes, theratwin.demo.DemoPatient)``.

        Raises
        ------
        RuntimeError
            If ``verify`` and a built file differs from the registered checksums.
        """
        demo = self.buildDemo(fast=fast, progress=progress)
        if verify:
            problems = self.verify(demo.dicom_dir, fast=fast)
            if problems:
                # the cache may hold a build of an older generator: build once more before giving up
                demo = self.buildDemo(fast=fast, progress=progress, rebuild=True)
                problems = self.verify(demo.dicom_dir, fast=fast)
            if problems:
                raise RuntimeError(_("The demo patient does not match its registered checksums: {problems}").format(
                    problems="; ".join(problems[:5])))
        from theratwin.dicom import read_study

        study = read_study(demo.dicom_dir)
        nodes = TheraTwinLib.addStudyToScene(scene, study)
        logging.info(f"TheraTwin demo patient loaded from {demo.dicom_dir}")
        return nodes, demo


    def isDemoManifest(self, path) -> bool | None:
        """For a copy of a registered checksum list: True for the fast build's, False for the default's, None if
        it is neither (e.g. the list of another TheraTwin version)."""
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError:
            return None
        for fast, manifest in CHECKSUMS.items():
            if manifest.is_file() and data == manifest.read_bytes():
                return fast
        return None

    def loadDemoFromManifest(self, scene, path, progress=None):
        """Load the demo patient whose checksum list ``path`` is a copy of (what Sample Data hands the reader)."""
        fast = self.isDemoManifest(path)
        if fast is None:
            raise ValueError(_("{path} is not the checksum list of this TheraTwin's demo patient; update the "
                               "extension or load the demo from the TheraTwin category of Sample Data.").format(
                path=path))
        return self.loadDemo(scene, fast=fast, progress=progress)


#
# TheraTwinSampleDataFileReader
#


class TheraTwinSampleDataFileReader:
    """Slicer file reader of the demo patient's Sample Data "file" (see the module docstring). Slicer instantiates
    it with the C++ reader as ``parent`` (methods as in Slicer's SlicerScriptedFileReaderWriterTest.py)."""

    def __init__(self, parent):
        self.parent = parent

    def description(self):
        return _("TheraTwin demo patient")

    def fileType(self):
        return DEMO_FILE_TYPE

    def extensions(self):
        return [_("TheraTwin demo patient") + f" (*{DEMO_FILE_SUFFIX})"]

    def canLoadFileConfidence(self, filePath):
        if not str(filePath).endswith(DEMO_FILE_SUFFIX):
            return 0.0
        return 0.9 if TheraTwinSampleDataLogic().isDemoManifest(filePath) is not None else 0.0

    def load(self, properties):
        import vtk

        try:
            nodes, _demo = TheraTwinSampleDataLogic().loadDemoFromManifest(self.parent.mrmlScene(),
                                                                          properties["fileName"])
        except Exception as error:  # the reader reports to Slicer's message collection instead of raising
            logging.exception("TheraTwin demo patient could not be loaded")
            self.parent.userMessages().AddMessage(vtk.vtkCommand.ErrorEvent, _(
                "The TheraTwin demo patient could not be loaded: {reason}").format(
                reason=TheraTwinLib.messageFor(error)))
            return False
        loaded = nodes.allTimePoints() + list(nodes.cts) + ([nodes.segmentation] if nodes.segmentation else [])
        self.parent.loadedNodes = [node.GetID() for node in loaded]
        return True


#
# TheraTwinSampleDataTest
#


class TheraTwinSampleDataTest(ScriptedLoadableModuleTest):
    """The fast demo build matches its registered checksums and loads as a two-cycle study."""

    def setUp(self):
        self.scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
        self.scene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_LoadFastDemo()

    def test_LoadFastDemo(self):
        nodes, demo = TheraTwinSampleDataLogic().loadDemo(self.scene, fast=True)
        self.assertEqual(sorted(nodes.timePoints), [1, 2])
        self.assertEqual(len(nodes.timePoints[1]), len(demo.truth["cycles"][0]["time_points"]))
        self.assertIsNotNone(nodes.segmentation)
        self.assertTrue(os.path.isdir(demo.dicom_dir))
