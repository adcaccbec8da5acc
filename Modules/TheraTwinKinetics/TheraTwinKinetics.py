"""TheraTwin Kinetics: time-activity curves, kinetic fits and time-integrated activity from SPECT/PET time points."""

import logging
import pathlib
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.util import VTKObservationMixin

try:  # inside the Slicer application
    import qt  # noqa: F401  (present only in the application)
except ModuleNotFoundError:  # slicer-core (PyPI) in scripts and CI: no Qt; the Logic runs, the Widget cannot
    from TheraTwinLib.Headless import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
        WithinRange,
        parameterNodeWrapper,
        translate,
    )
    from TheraTwinLib.Headless import tr as _
else:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )

import TheraTwinLib

#: The packages the core needs (one list for every TheraTwin module, installed on first use with consent).
REQUIREMENTS = TheraTwinLib.REQUIREMENTS

#
# TheraTwinKinetics
#


class TheraTwinKinetics(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TheraTwin Kinetics")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = []
        self.parent.contributors = ["TheraTwin developers"]
        self.parent.helpText = _(
            "Fits time-activity curves of each structure from quantitative SPECT/PET time points (Bq/mL), "
            "after registering the time points to the first one, and shows the curves, the time-integrated "
            "activities and the voxel TIA map. Research use only. "
            '<a href="https://github.com/theratwin/SlicerTheraTwin#readme">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "TheraTwin is an open-source project for theranostic digital twins. Kinetic models follow the MIRD "
            "Pamphlet No. 26 (Hänscheid et al. 2018 for single time points)."
        )


#
# TheraTwinKineticsParameterNode
#


@parameterNodeWrapper
class TheraTwinKineticsParameterNode:
    """
    dicomFolder - a folder of DICOM files of one patient to import (SPECT/PET time points, CT, SEG); None: not chosen.
    timePointVolume - any time-point volume of the patient; every time point of that patient is used.
    segmentation - the structures (organs, lesions).
    registerTimePoints - align time points without CT to the first one (SPECT to SPECT); time points with a CT
        are always aligned through their CT.
    kineticModel - the model fitted to each curve: "auto" (prior-informed fits selected by their evidence) or a
        model of theratwin.kinetics.KINETIC_MODELS, built-in or installed as a plug-in.
    cycle - the cycle whose curves and TIA map are shown.
    tiaVolume, tacChart, resultsTable - outputs.
    """

    dicomFolder: pathlib.Path | None
    timePointVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    registerTimePoints: bool = True
    kineticModel: Annotated[str, TheraTwinLib.registryChoice(TheraTwinLib.kineticModelChoices,
                                                             TheraTwinLib.BUILTIN_KINETIC_MODELS)] = "auto"
    cycle: Annotated[int, WithinRange(1, 20)] = 1
    tiaVolume: vtkMRMLScalarVolumeNode
    tacChart: vtkMRMLPlotChartNode
    resultsTable: vtkMRMLTableNode


#
# TheraTwinKineticsWidget
#


class TheraTwinKineticsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TheraTwinKinetics.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TheraTwinKineticsLogic()
        TheraTwinLib.registerPathParameterConnector()  # an empty folder field is None, not Path(".")
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.importDicomButton.connect("clicked(bool)", self.onImportDicomButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        TheraTwinLib.clearPipelineCache()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if getattr(slicer, "dicomDatabase", None) is not None:
            self._annotateDicomVolumes()
        if not self._parameterNode.timePointVolume:
            timePoints = TheraTwinLib.timePointNodes(slicer.mrmlScene)
            if timePoints:
                self._parameterNode.timePointVolume = timePoints[0]
        if not self._parameterNode.segmentation:
            self._parameterNode.segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def _annotateDicomVolumes(self) -> None:
        """Volumes loaded by the DICOM module become time points when their headers say so. This runs whenever the
        panel is shown, so it never raises: a volume whose file is missing or unreadable is left out, with its reason
        in the log and in its attribute TheraTwin.NotATimePoint, and is not read again."""
        problems = []
        try:
            TheraTwinLib.annotateSceneFromDicom(slicer.mrmlScene, slicer.dicomDatabase.fileForInstance,
                                                problems=problems)
        except Exception as error:  # e.g. the DICOM database closed meanwhile: the panel must still open
            logging.error(f"TheraTwin: DICOM volumes were not examined: {TheraTwinLib.userMessage(error)}")
        if problems:
            slicer.util.showStatusMessage(_("{count} DICOM volume(s) not used as time points; the log says why.").format(
                count=len(problems)), 5000)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.timePointVolume and self._parameterNode.segmentation)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Fit the time-activity curves") if ready else _(
            "Select a time-point volume and a segmentation")
        self.ui.importDicomButton.enabled = bool(self._parameterNode and self._parameterNode.dicomFolder)

    def onImportDicomButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The DICOM study could not be imported."), waitCursor=True), \
                TheraTwinLib.explainedErrors():
            self.logic.importDicomUsingParameterNode(self._parameterNode, slicer.mrmlScene)

    def onApplyButton(self) -> None:
        progressDialog = slicer.util.createProgressDialog(labelText=_("Fitting time-activity curves..."), maximum=100)

        def progress(fraction, message):
            progressDialog.setValue(int(100 * fraction))
            progressDialog.setLabelText(message)
            slicer.app.processEvents()
            if progressDialog.wasCanceled:
                from theratwin.progress import Cancelled

                raise Cancelled(_("Cancelled by the user"))

        with slicer.util.tryWithErrorDisplay(_("Kinetic fitting failed."), waitCursor=True), \
                TheraTwinLib.explainedErrors():
            try:
                self.logic.processUsingParameterNode(self._parameterNode, progress=progress)
            finally:
                progressDialog.close()
            slicer.util.setSliceViewerLayers(foreground=self._parameterNode.tiaVolume, foregroundOpacity=0.5)
            TheraTwinKineticsLogic.showChart(self._parameterNode.tacChart)


#
# TheraTwinKineticsLogic
#


class TheraTwinKineticsLogic(ScriptedLoadableModuleLogic):
    """Kinetics on scene nodes; works without the Widget (scripts, slicer-core):

    >>> logic = TheraTwinKineticsLogic()
    >>> outputs = logic.process(TheraTwinLib.timePointNodes(scene), segmentationNode)
    """

    #: Stages this module runs (in pipeline order).
    STAGES = ("registration", "kinetics")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return TheraTwinKineticsParameterNode(super().getParameterNode())

    def processUsingParameterNode(self, parameterNode, progress=None) -> dict:
        """Run :meth:`process` on the parameter node's inputs and store the outputs in it."""
        if not parameterNode.timePointVolume or not parameterNode.segmentation:
            raise ValueError(_("Select a time-point volume and a segmentation."))
        timePoints = TheraTwinLib.timePointNodes(parameterNode.timePointVolume.GetScene(),
                                                 near=parameterNode.timePointVolume)
        TheraTwinLib.removeOutputNodes(parameterNode.tacChart, parameterNode.resultsTable)
        outputs = self.process(timePoints, parameterNode.segmentation,
                               registerTimePoints=parameterNode.registerTimePoints,
                               kineticModel=parameterNode.kineticModel, cycle=parameterNode.cycle,
                               progress=progress)
        parameterNode.tiaVolume = outputs["tiaVolume"]
        parameterNode.tacChart = outputs["chart"]
        parameterNode.resultsTable = outputs["table"]
        return outputs

    def importDicomUsingParameterNode(self, parameterNode, scene, progress=None):
        """Import the parameter node's DICOM folder into ``scene`` and select the imported study."""
        if TheraTwinLib.pathOrNone(parameterNode.dicomFolder) is None:
            raise ValueError(_("Choose the folder of the patient's DICOM files first."))
        nodes = self.importDicom(scene, [parameterNode.dicomFolder], progress=progress)
        parameterNode.timePointVolume = nodes.allTimePoints()[0]
        parameterNode.segmentation = nodes.segmentation
        return nodes

    def importDicom(self, scene, paths, progress=None):
        """Import one patient's DICOM (folders or files: SPECT/PET time points, CT, SEG) with the core's reader.

        Returns ``TheraTwinLib.StudyNodes`` (time-point volumes with their acquisition and administration
        attributes, CTs, the segmentation). Unset paths (None, "", ".") are ignored; none left is an error.
        """
        chosen = [path for path in map(TheraTwinLib.pathOrNone, paths) if path is not None]
        if not chosen:
            raise ValueError(_("No DICOM folder or file was given."))
        TheraTwinLib.ensureRequirements()
        return TheraTwinLib.loadStudyFromDicom(scene, chosen, progress=progress)

    def importDicomStudy(self, scene, studyInstanceUID, progress=None):
        """Import a study of Slicer's DICOM database (application only) by its StudyInstanceUID."""
        database = slicer.dicomDatabase
        files = [f for series in database.seriesForStudy(studyInstanceUID) for f in database.filesForSeries(series)]
        if not files:
            raise ValueError(_("The DICOM database has no files of study {uid}.").format(uid=studyInstanceUID))
        return self.importDicom(scene, files, progress=progress)

    def process(self, timePointNodes, segmentationNode, *, registerTimePoints=True, kineticModel="auto", cycle=1,
                progress=None) -> dict:
        """Register and fit; return ``{"run", "tiaVolume", "chart", "table", "maps"}``.

        Parameters
        ----------
        timePointNodes
            Quantitative SPECT/PET volumes (Bq/mL) with TheraTwin time-point attributes.
        segmentationNode
            The structures.
        kineticModel
            ``"auto"`` or a model name of ``theratwin.kinetics``.
        cycle
            The cycle whose curves and TIA map are shown.
        """
        TheraTwinLib.ensureRequirements()
        options = {} if kineticModel == "auto" else {"kinetics": {"model": kineticModel}}
        if not registerTimePoints:
            # time points with a CT are always aligned through their CT; this leaves the others as they are
            options["registration"] = {"spect_to_spect": False}
        run = TheraTwinLib.runPipelineOnNodes(timePointNodes, segmentationNode=segmentationNode, stages=self.STAGES,
                                              stageOptions=options, progress=progress)
        scene = segmentationNode.GetScene()
        if cycle not in run.results.cycles:
            raise ValueError(_("The study has no cycle {cycle}.").format(cycle=cycle))
        shown = TheraTwinLib.showKinetics(scene, run.results, cycle, run.state)
        from theratwin.results import map_name

        tiaKey = map_name(cycle, "tia")
        for warning in run.results.warnings:
            logging.warning(f"TheraTwin {warning.stage}: {warning.message}")
        return {"run": run, "tiaVolume": shown["maps"].get(tiaKey), "chart": shown["chart"],
                "table": shown["table"], "maps": shown["maps"]}

    @staticmethod
    def showChart(chartNode) -> None:
        """Show ``chartNode`` in the layout's plot view (application with views only)."""
        TheraTwinLib.showChartInLayout(chartNode)


#
# TheraTwinKineticsTest
#


class TheraTwinKineticsTest(ScriptedLoadableModuleTest):
    """Runs the Logic on a small synthetic two-time-point study (no download, a few seconds)."""

    def setUp(self):
        self.scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
        self.scene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_KineticsOnSyntheticStudy()

    def test_KineticsOnSyntheticStudy(self):
        from datetime import datetime, timedelta

        import numpy as np

        import theratwin as tt

        self.delayDisplay(_("Building a synthetic study"))
        geometry = tt.Geometry((12, 12, 12), (4.8, 4.8, 4.8))
        start = datetime(2026, 1, 5, 9, 0)
        administration = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
        mask = np.zeros(geometry.shape, bool)
        mask[4:8, 4:8, 4:8] = True
        effectiveHalfLife_h = 40.0
        timePoints = []
        for hours in (4.0, 24.0, 72.0, 168.0):
            concentration = np.where(mask, 2.0e5 * 2 ** (-hours / effectiveHalfLife_h), 0.0).astype(np.float32)
            image = tt.ImageVolume.from_geometry(concentration, geometry, "Bq/mL")
            timePoints.append(tt.TimePoint(image, start + timedelta(hours=hours), 900.0))
        segmentation = tt.Segmentation(geometry, [tt.Structure("kidneys", 1)], {"kidneys": mask})
        study = tt.Study(tt.Patient("TT-KINETICS"), [tt.Cycle(1, administration, timePoints)], segmentation)
        nodes = TheraTwinLib.addStudyToScene(self.scene, study)
        outputs = TheraTwinKineticsLogic().process(nodes.allTimePoints(), nodes.segmentation, registerTimePoints=False)
        kidneys = outputs["run"].results.cycles[1].structure("kidneys")
        # mono-exponential curve: TIA = A0 * T_eff / ln 2 (MIRD Pamphlet 21, eq. 12 with one exponential)
        activity0_MBq = 2.0e5 * mask.sum() * geometry.voxel_volume_mL / 1e6
        expected_MBq_h = activity0_MBq * effectiveHalfLife_h / np.log(2)
        self.assertAlmostEqual(kidneys.tia_MBq_h / expected_MBq_h, 1.0, delta=0.05)
        self.assertIsNotNone(outputs["chart"])
        self.delayDisplay(_("Test passed"))
