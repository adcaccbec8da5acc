"""TheraTwin whole-workflow self-test (hidden module): loads the demo patient and runs every module's Logic.

Run it in Slicer from the Python console (``slicer.util.selectModule("TheraTwinSelfTest")`` then "Reload and
Test"), with ctest (``slicer_add_python_unittest``), or headless with slicer-core
(``Testing/slicer/test_workflow.py``). The checks compare the results with the demo's ground truth
(``demo-truth.json``) within the tolerances the imaging simulation allows.
"""

import json
import logging
import os
import pathlib
import tempfile
import zipfile

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

#
# TheraTwinSelfTest
#


class TheraTwinSelfTest(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TheraTwin Self Test")
        self.parent.categories = ["Nuclear Medicine"]
        self.parent.dependencies = ["TheraTwinKinetics", "TheraTwinDosimetry", "TheraTwinTwin", "TheraTwinExport",
                                    "TheraTwinSampleData"]
        self.parent.contributors = ["TheraTwin developers"]
        self.parent.hidden = True
        self.parent.helpText = _(
            "Whole-workflow test of the TheraTwin modules on the demo patient. "
            '<a href="https://github.com/theratwin/SlicerTheraTwin#readme">Documentation</a>.'
        )
        self.parent.acknowledgementText = _("Part of the TheraTwin extension.")


#
# TheraTwinSelfTestLogic
#


class TheraTwinSelfTestLogic(ScriptedLoadableModuleLogic):
    """Runs the whole workflow through the modules' Logic classes (no Widget)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def runWorkflow(self, scene, outputDirectory, *, fast=False, loaded=None, progress=None) -> dict:
        """Load the demo patient (unless ``loaded`` = ``(StudyNodes, DemoPatient)`` is given), then run Kinetics,
        Dosimetry, Twin and Export on it.

        Returns
        -------
        dict
            ``nodes`` and ``demo`` (the loaded patient and its ground truth) and the outputs of each module's
            Logic under ``kinetics``, ``dosimetry``, ``twin`` and ``export``.
        """
        # the module files are importable by name inside Slicer (and in the headless tests)
        import TheraTwinDosimetry
        import TheraTwinExport
        import TheraTwinKinetics
        import TheraTwinSampleData
        import TheraTwinTwin

        if loaded is None:
            loaded = TheraTwinSampleData.TheraTwinSampleDataLogic().loadDemo(scene, fast=fast)
        nodes, demo = loaded
        timePoints = nodes.allTimePoints()
        out = {"nodes": nodes, "demo": demo}
        logging.info("TheraTwin self-test: kinetics")
        out["kinetics"] = TheraTwinKinetics.TheraTwinKineticsLogic().process(timePoints, nodes.segmentation,
                                                                            progress=progress)
        logging.info("TheraTwin self-test: dosimetry")
        out["dosimetry"] = TheraTwinDosimetry.TheraTwinDosimetryLogic().process(timePoints, nodes.segmentation,
                                                                               progress=progress)
        logging.info("TheraTwin self-test: twin")
        out["twin"] = TheraTwinTwin.TheraTwinTwinLogic().process(timePoints, nodes.segmentation, progress=progress)
        logging.info("TheraTwin self-test: export")
        out["export"] = TheraTwinExport.TheraTwinExportLogic().process(
            timePoints, nodes.segmentation, outputDirectory, writeReport=False, progress=progress)
        return out

    @staticmethod
    def truth(demo, cycle, structure) -> dict:
        """Ground truth of one structure in one cycle (from ``demo-truth.json``)."""
        truth = demo.truth if demo.truth else json.loads(pathlib.Path(demo.truth_path).read_text(encoding="utf-8"))
        return next(c for c in truth["cycles"] if c["cycle"] == cycle)["structures"][structure]


#
# TheraTwinSelfTestTest
#


class TheraTwinSelfTestTest(ScriptedLoadableModuleTest):
    """Whole workflow on the demo patient, checked against its ground truth."""

    #: Use the half-resolution demo (set False in the application for the realistic patient).
    fast = True

    def setUp(self):
        self.scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
        self.scene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_WholeWorkflow()

    def test_WholeWorkflow(self):
        self.delayDisplay(_("Loading the demo patient and running every module"))
        with tempfile.TemporaryDirectory() as folder:
            out = TheraTwinSelfTestLogic().runWorkflow(self.scene, pathlib.Path(folder), fast=self.fast)
            self.checkWorkflow(out, pathlib.Path(folder))
        self.delayDisplay(_("Test passed"))

    def checkWorkflow(self, out, folder) -> None:
        """The checks of the whole workflow (shared with the headless test)."""
        truth = TheraTwinSelfTestLogic.truth
        demo = out["demo"]
        # kinetics: kidney TIA of cycle 1 within 30 % of the truth (blur, noise, misregistration, 4 time points)
        kidneys = out["kinetics"]["run"].results.cycles[1].structure("kidneys")
        self.assertAlmostEqual(kidneys.tia_MBq_h / truth(demo, 1, "kidneys")["tia_MBq_h"], 1.0, delta=0.3)
        self.assertIsNotNone(out["kinetics"]["tiaVolume"])
        self.assertGreaterEqual(out["kinetics"]["chart"].GetNumberOfPlotSeriesNodes(), 2)
        # dosimetry: kidney dose per activity in the published PSMA-617 range (0.4-0.8 Gy/GBq) and near the truth
        dosimetry = out["dosimetry"]
        kidneysDose = dosimetry["run"].results.cycles[1].structure("kidneys")
        self.assertTrue(0.3 <= kidneysDose.dose_per_activity_Gy_per_GBq <= 0.9, kidneysDose.dose_per_activity_Gy_per_GBq)
        self.assertAlmostEqual(kidneysDose.mean_dose_Gy / truth(demo, 1, "kidneys")["mean_dose_Gy"], 1.0, delta=0.35)
        self.assertTrue(TheraTwinLib.isDoseVolume(dosimetry["doseVolume"]))
        self.assertEqual(TheraTwinLib.doseUnitName(dosimetry["doseVolume"]), "Gy")  # where SlicerRT reads it
        self.assertTrue(TheraTwinLib.isDoseVolume(dosimetry["cumulativeDoseVolume"]))
        self.assertGreater(dosimetry["dvhChart"].GetNumberOfPlotSeriesNodes(), 0)
        # twin: a prediction row per structure with ordered intervals, and a recommendation
        twin = out["twin"]
        table = twin["predictionTable"]
        self.assertEqual(table.GetNumberOfRows(), len(twin["prediction"]["structures"]))
        low = TheraTwinLib.tableColumn(table, "Dose_Gy low")
        mean = TheraTwinLib.tableColumn(table, "Dose_Gy")
        high = TheraTwinLib.tableColumn(table, "Dose_Gy high")
        self.assertTrue(((low <= mean) & (mean <= high)).all())
        self.assertTrue(twin["twinState"].GetText().startswith("{"))
        summary = dict(zip(TheraTwinLib.tableColumn(twin["recommendationTable"], "Quantity"),
                           TheraTwinLib.tableColumn(twin["recommendationTable"], "Value"), strict=True))
        self.assertIn("recommendation.administered_MBq", summary)
        self.assertTrue(any(key.startswith("forecast.toxicity.") for key in summary))
        # export: RT Dose, SR, SEG and the FHIR bundle were written
        files = out["export"]["files"]
        for kind in ("rtdose", "sr", "seg", "fhir_bundle", "twin_state"):
            self.assertIn(kind, files)
        self.assertTrue((folder / "fhir-bundle.json").is_file())
        # the scene, saved as a bundle, holds no credential from the environment
        secrets = [v for k, v in os.environ.items() if k.startswith("THERATWIN_") and
                   any(w in k for w in ("PASSWORD", "TOKEN", "USER")) and len(v) >= 6]
        bundle = TheraTwinLib.saveSceneToBundle(self.scene, folder / "scene.mrb")
        with zipfile.ZipFile(bundle) as archive:
            content = b"".join(archive.read(name) for name in archive.namelist())
        self.assertFalse([s for s in secrets if s.encode() in content])
