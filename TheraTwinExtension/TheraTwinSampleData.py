"""TheraTwin sample data: the built-in demo patient, registered in Slicer's Sample Data module (hidden module).

The demo patient (a synthetic 177Lu-PSMA-617 patient, two cycles, SPECT + CT per time point and a DICOM SEG)
is not downloaded: ``theratwin.demo.build_demo`` generates it locally, deterministically for a given seed, and
caches it. Following the SlicerMorph pattern of registering sample data with SHA256 checksums, the files of the
default build are listed in ``Resources/TheraTwinDemoPatient.sha256`` (``sha256sum`` format, computed from the
deterministic build with :meth:`TheraTwinSampleDataLogic.writeChecksums`) and every generated file is verified
against that list before it is loaded, so a changed generator or a corrupted cache cannot pass silently. The
entry is registered with Sample Data's ``customDownloader`` hook, which builds, verifies and loads instead of
downloading.
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


def registerSampleData():
    """Add the demo patient to the Sample Data module (category "TheraTwin")."""
    import SampleData

    logic = TheraTwinSampleDataLogic()
    checksums = logic.readChecksums()
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="TheraTwin",
        sampleName="TheraTwinDemoPatient",
        thumbnailFileName=str(RESOURCES / "Icons" / "TheraTwinDemoPatient.png"),
        # not a download: the files are generated locally (see the module docstring); the "URIs" name them
        uris=[f"theratwin-demo:{name}" for name in checksums],
        fileNames=list(checksums),
        nodeNames=None,
        checksums=[f"SHA256:{digest}" for digest in checksums.values()],
        customDownloader=lambda source: logic.loadDemo(slicer.mrmlScene),
    )


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
        entries = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
        return {name.strip(): digest for digest, name in entries}

    def writeChecksums(self, dicomDirectory, fast=False) -> pathlib.Path:
        """Record the checksums of a fresh deterministic build (maintainers, when the demo generator changes)."""
        path = CHECKSUMS[bool(fast)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{d}  {n}\n" for n, d in self.computeChecksums(dicomDirectory).items()))
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
