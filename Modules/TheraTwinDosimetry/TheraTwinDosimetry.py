"""TheraTwin Dosimetry: absorbed-dose and BED maps, dose-volume histograms and cumulative dose over cycles."""

import logging
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
# TheraTwinDosimetry
#


class TheraTwinDosimetry(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TheraTwin Dosimetry")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = []
        self.parent.contributors = ["TheraTwin developers"]
        self.parent.helpText = _(
            "Computes absorbed-dose maps (voxel S-value kernel convolution or local energy deposition) and "
            "biologically effective dose from the time-integrated activity of every cycle, shows them on the CT "
            "with dose-volume histograms and a metrics table, and sums dose and BED over cycles. The maps are "
            "dose volumes for SlicerRT (isodose, DVH). Research use only. "
            '<a href="https://github.com/theratwin/SlicerTheraTwin#readme">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Voxel S-values follow MIRD Pamphlet No. 17 (Bolch et al. 1999) with ICRP-107 emission data; BED "
            "follows Dale (1985) for exponentially decreasing dose rates."
        )


#
# TheraTwinDosimetryParameterNode
#


@parameterNodeWrapper
class TheraTwinDosimetryParameterNode:
    """
    timePointVolume - any time-point volume of the patient; every time point of that patient is used.
    segmentation - the structures.
    ctVolume - CT to show the dose on (optional).
    doseMethod - the dose engine: "dvk" (voxel kernel convolution), "led" (local energy deposition) or another
        engine of theratwin.dosimetry.DOSE_ENGINES, e.g. a site's Monte Carlo installed as a plug-in.
    computeBed - also compute the biologically effective dose.
    cycle - the cycle whose dose, DVH and metrics are shown.
    doseVolume, bedVolume, dvhChart, dvhTable, resultsTable - outputs.
    """

    timePointVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    ctVolume: vtkMRMLScalarVolumeNode
    doseMethod: Annotated[str, TheraTwinLib.registryChoice(TheraTwinLib.doseEngineChoices,
                                                           TheraTwinLib.BUILTIN_DOSE_ENGINES)] = "dvk"
    computeBed: bool = True
    cycle: Annotated[int, WithinRange(1, 20)] = 1
    doseVolume: vtkMRMLScalarVolumeNode
    bedVolume: vtkMRMLScalarVolumeNode
    dvhChart: vtkMRMLPlotChartNode
    dvhTable: vtkMRMLTableNode
    resultsTable: vtkMRMLTableNode


#
# TheraTwinDosimetryWidget
#


class TheraTwinDosimetryWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TheraTwinDosimetry.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TheraTwinDosimetryLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
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
        if not self._parameterNode.timePointVolume:
            timePoints = TheraTwinLib.timePointNodes(slicer.mrmlScene)
            if timePoints:
                self._parameterNode.timePointVolume = timePoints[0]
        if not self._parameterNode.segmentation:
            self._parameterNode.segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        if not self._parameterNode.ctVolume and self._parameterNode.timePointVolume:
            self._parameterNode.ctVolume = self._parameterNode.timePointVolume.GetNodeReference("TheraTwin.CT")

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
        self.ui.applyButton.toolTip = _("Compute dose and BED") if ready else _(
            "Select a time-point volume and a segmentation")

    def onApplyButton(self) -> None:
        progressDialog = slicer.util.createProgressDialog(labelText=_("Computing absorbed dose..."), maximum=100)

        def progress(fraction, message):
            progressDialog.setValue(int(100 * fraction))
            progressDialog.setLabelText(message)
            slicer.app.processEvents()
            if progressDialog.wasCanceled:
                from theratwin.progress import Cancelled

                raise Cancelled(_("Cancelled by the user"))

        with slicer.util.tryWithErrorDisplay(_("Dose calculation failed."), waitCursor=True), \
                TheraTwinLib.explainedErrors():
            try:
                self.logic.processUsingParameterNode(self._parameterNode, progress=progress)
            finally:
                progressDialog.close()
            slicer.util.setSliceViewerLayers(background=self._parameterNode.ctVolume,
                                             foreground=self._parameterNode.doseVolume, foregroundOpacity=0.5)
            TheraTwinLib.showChartInLayout(self._parameterNode.dvhChart)


#
# TheraTwinDosimetryLogic
#


class TheraTwinDosimetryLogic(ScriptedLoadableModuleLogic):
    """Dosimetry on scene nodes; works without the Widget (scripts, slicer-core):

    >>> outputs = TheraTwinDosimetryLogic().process(TheraTwinLib.timePointNodes(scene), segmentationNode)
    >>> outputs["doseVolume"], outputs["dvhChart"], outputs["table"]
    """

    #: Stages this module runs (in pipeline order).
    STAGES = ("registration", "kinetics", "dosimetry", "radiobiology")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return TheraTwinDosimetryParameterNode(super().getParameterNode())

    def processUsingParameterNode(self, parameterNode, progress=None) -> dict:
        """Run :meth:`process` on the parameter node's inputs and store the outputs in it."""
        if not parameterNode.timePointVolume or not parameterNode.segmentation:
            raise ValueError(_("Select a time-point volume and a segmentation."))
        timePoints = TheraTwinLib.timePointNodes(parameterNode.timePointVolume.GetScene(),
                                                 near=parameterNode.timePointVolume)
        TheraTwinLib.removeOutputNodes(parameterNode.dvhChart, parameterNode.dvhTable, parameterNode.resultsTable)
        outputs = self.process(timePoints, parameterNode.segmentation, doseMethod=parameterNode.doseMethod,
                               computeBed=parameterNode.computeBed, cycle=parameterNode.cycle, progress=progress)
        parameterNode.doseVolume = outputs["doseVolume"]
        parameterNode.bedVolume = outputs["bedVolume"]
        parameterNode.dvhChart = outputs["dvhChart"]
        parameterNode.dvhTable = outputs["dvhTable"]
        parameterNode.resultsTable = outputs["table"]
        return outputs

    def process(self, timePointNodes, segmentationNode, *, doseMethod="dvk", computeBed=True, cycle=1,
                progress=None) -> dict:
        """Kinetics, dose and (optionally) BED for every cycle.

        Returns
        -------
        dict
            ``run`` (TheraTwinLib.PipelineRun), ``doseVolume`` and ``bedVolume`` of ``cycle`` (dose volumes for
            SlicerRT, Gy), ``cumulativeDoseVolume``, ``dvhChart``, ``dvhTable`` (DVH metrics of ``cycle``),
            ``table`` (per cycle and structure, with cumulative columns) and ``maps`` (every map shown).
        """
        TheraTwinLib.ensureRequirements()
        stages = self.STAGES if computeBed else self.STAGES[:-1]
        options = {} if doseMethod == "dvk" else {"dosimetry": {"method": doseMethod}}
        run = TheraTwinLib.runPipelineOnNodes(timePointNodes, segmentationNode=segmentationNode, stages=stages,
                                              stageOptions=options, progress=progress)
        if cycle not in run.results.cycles:
            raise ValueError(_("The study has no cycle {cycle}.").format(cycle=cycle))
        for warning in run.results.warnings:
            logging.warning(f"TheraTwin {warning.stage}: {warning.message}")
        # the dose maps go under the patient's study, where SlicerRT looks for their unit
        shown = TheraTwinLib.showDosimetry(segmentationNode.GetScene(), run.results, cycle,
                                           referenceNode=next(iter(timePointNodes), None))
        from theratwin.results import CUMULATIVE, map_name

        maps = shown["maps"]
        return {"run": run, "doseVolume": maps.get(map_name(cycle, "dose")),
                "bedVolume": maps.get(map_name(cycle, "bed")),
                "cumulativeDoseVolume": maps.get(map_name(CUMULATIVE, "dose")), "dvhChart": shown["dvhChart"],
                "dvhTable": shown["dvhTable"], "table": shown["table"], "maps": maps}


#
# TheraTwinDosimetryTest
#


class TheraTwinDosimetryTest(ScriptedLoadableModuleTest):
    """Dose of a uniform activity in a large cube: at the centre it approaches the local-deposition value."""

    def setUp(self):
        self.scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
        self.scene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_DoseOfUniformCube()

    def test_DoseOfUniformCube(self):
        from datetime import datetime, timedelta

        import numpy as np

        import theratwin as tt

        self.delayDisplay(_("Building a synthetic study"))
        geometry = tt.Geometry((24, 24, 24), (4.8, 4.8, 4.8))
        start = datetime(2026, 1, 5, 9, 0)
        administration = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
        mask = np.zeros(geometry.shape, bool)
        mask[4:20, 4:20, 4:20] = True
        effectiveHalfLife_h = 50.0
        timePoints = []
        for hours in (4.0, 24.0, 72.0, 168.0):
            concentration = np.where(mask, 1.0e5 * 2 ** (-hours / effectiveHalfLife_h), 0.0).astype(np.float32)
            timePoints.append(tt.TimePoint(tt.ImageVolume.from_geometry(concentration, geometry, "Bq/mL"),
                                           start + timedelta(hours=hours), 900.0))
        segmentation = tt.Segmentation(geometry, [tt.Structure("liver", 1)], {"liver": mask})
        study = tt.Study(tt.Patient("TT-DOSIMETRY"), [tt.Cycle(1, administration, timePoints)], segmentation)
        nodes = TheraTwinLib.addStudyToScene(self.scene, study)
        outputs = TheraTwinDosimetryLogic().process(nodes.allTimePoints(), nodes.segmentation, computeBed=False)
        dose_Gy = TheraTwinLib.imageFromVolumeNode(outputs["doseVolume"]).array
        # deep inside a uniform source all emitted electron energy is absorbed locally (MIRD: absorbed fraction
        # 1 for non-penetrating radiation): D = TIA density x mean electron energy / density
        nuclide = tt.nuclides.get("Lu-177")
        tia_Bq_s_per_g = 1.0e5 * effectiveHalfLife_h / np.log(2) * 3600.0  # unit density: per mL = per g
        electron_Gy = tia_Bq_s_per_g * nuclide.electron_energy_MeV * 1.602176634e-13 * 1000.0
        self.assertTrue(TheraTwinLib.isDoseVolume(outputs["doseVolume"]))
        self.assertAlmostEqual(float(dose_Gy[12, 12, 12]) / electron_Gy, 1.0, delta=0.1)
        self.delayDisplay(_("Test passed"))
