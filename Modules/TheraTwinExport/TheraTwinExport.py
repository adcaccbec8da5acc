"""TheraTwin Export: RT Dose, SR and SEG into Slicer's DICOM database and to a PACS; FHIR bundle and push."""

import logging
import pathlib
import urllib.parse

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.util import VTKObservationMixin

try:  # inside the Slicer application
    import qt
except ModuleNotFoundError:  # slicer-core (PyPI) in scripts and CI: no Qt; the Logic runs, the Widget cannot
    from TheraTwinLib.Headless import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
        parameterNodeWrapper,
        translate,
    )
    from TheraTwinLib.Headless import tr as _

    qt = None
else:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.parameterNodeWrapper import parameterNodeWrapper
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
# TheraTwinExport
#


class TheraTwinExport(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TheraTwin Export")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = []
        self.parent.contributors = ["TheraTwin developers"]
        self.parent.helpText = _(
            "Writes the results as DICOM RT Dose, Structured Report (TID 1500) and SEG, adds them to Slicer's "
            "DICOM database and sends them to a PACS (DICOMweb or DIMSE); writes the FHIR R4 bundle and pushes it "
            "to a FHIR server; writes the HTML/PDF report. Endpoints are application settings; credentials come "
            "from the environment (THERATWIN_PACS_USER, THERATWIN_PACS_PASSWORD, THERATWIN_PACS_TOKEN, "
            "THERATWIN_FHIR_TOKEN ...) and are never stored in the scene. Research use only. "
            '<a href="https://github.com/theratwin/SlicerTheraTwin#readme">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "DICOM objects are written with highdicom and pydicom; FHIR resources follow HL7 FHIR R4."
        )


#
# TheraTwinExportParameterNode
#


@parameterNodeWrapper
class TheraTwinExportParameterNode:
    """
    timePointVolume - any time-point volume of the patient; every time point of that patient is used.
    segmentation - the structures.
    outputDirectory - where DICOM files, the FHIR bundle and the report are written; None: a new folder under
        Slicer's temporary folder (TheraTwinExportLogic.defaultOutputDirectory), shown here after the export.
    writeDicom, writeFhir, writeReport - what to write.
    importIntoDicomDatabase - add the DICOM objects to Slicer's DICOM database.
    pushToPacs, pushToFhir - send to the endpoints of the application settings.
    exportTable - output: what was written and sent.
    (No endpoint or credential here: the scene may be shared; endpoints live in the application settings.)
    """

    timePointVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    outputDirectory: pathlib.Path | None
    writeDicom: bool = True
    writeFhir: bool = True
    writeReport: bool = True
    importIntoDicomDatabase: bool = True
    pushToPacs: bool = False
    pushToFhir: bool = False
    exportTable: vtkMRMLTableNode


#
# TheraTwinExportWidget
#


class TheraTwinExportWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TheraTwinExport.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TheraTwinExportLogic()
        TheraTwinLib.registerPathParameterConnector()  # an empty folder field is None, not Path(".")
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.saveSettingsButton.connect("clicked(bool)", self.onSaveSettingsButton)
        endpoints = self.logic.endpointSettings()
        self.ui.pacsUrlLineEdit.text = endpoints["pacsUrl"]
        self.ui.fhirUrlLineEdit.text = endpoints["fhirUrl"]
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
        p = self._parameterNode
        self.ui.applyButton.enabled = bool(p and p.timePointVolume and p.segmentation)

    def onSaveSettingsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The endpoint settings were not saved."), waitCursor=True), \
                TheraTwinLib.explainedErrors():
            self.logic.saveEndpointSettings(self.ui.pacsUrlLineEdit.text, self.ui.fhirUrlLineEdit.text)

    def onApplyButton(self) -> None:
        progressDialog = slicer.util.createProgressDialog(labelText=_("Exporting..."), maximum=100)

        def progress(fraction, message):
            progressDialog.setValue(int(100 * fraction))
            progressDialog.setLabelText(message)
            slicer.app.processEvents()
            if progressDialog.wasCanceled:
                from theratwin.progress import Cancelled

                raise Cancelled(_("Cancelled by the user"))

        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True), \
                TheraTwinLib.explainedErrors():
            try:
                self.logic.processUsingParameterNode(self._parameterNode, progress=progress)
            finally:
                progressDialog.close()


#
# TheraTwinExportLogic
#


class _MemorySettings:
    """Application settings without Qt (slicer-core): kept for this process only."""

    def __init__(self) -> None:
        self._values = {}

    def value(self, key, default=""):
        return self._values.get(key, default)

    def setValue(self, key, value) -> None:
        self._values[key] = value


class TheraTwinExportLogic(ScriptedLoadableModuleLogic):
    """Export on scene nodes; works without the Widget (scripts, slicer-core):

    >>> logic = TheraTwinExportLogic()
    >>> outputs = logic.process(TheraTwinLib.timePointNodes(scene), segmentationNode, "/tmp/out")
    >>> outputs["files"]["rtdose"]
    """

    PACS_URL_KEY = "TheraTwin/PacsUrl"
    FHIR_URL_KEY = "TheraTwin/FhirUrl"

    def __init__(self, settings=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.settings = settings if settings is not None else (qt.QSettings() if qt is not None else _MemorySettings())

    def getParameterNode(self):
        return TheraTwinExportParameterNode(super().getParameterNode())

    def endpointSettings(self) -> dict:
        """``{"pacsUrl", "fhirUrl"}`` from the application settings ("" when not set)."""
        return {"pacsUrl": str(self.settings.value(self.PACS_URL_KEY, "") or ""),
                "fhirUrl": str(self.settings.value(self.FHIR_URL_KEY, "") or "")}

    def saveEndpointSettings(self, pacsUrl: str, fhirUrl: str) -> None:
        """Store the endpoints in the application settings (never in the scene).

        Raises
        ------
        ValueError
            If a URL carries a user name or password: credentials belong in the environment
            (THERATWIN_PACS_USER / THERATWIN_PACS_PASSWORD / THERATWIN_PACS_TOKEN, THERATWIN_FHIR_TOKEN ...).
        """
        for label, url in (("PACS", pacsUrl), ("FHIR", fhirUrl)):
            parsed = urllib.parse.urlsplit(url or "")
            userInfo = parsed.netloc.rpartition("@")[0]
            # dimse://AETITLE@host:port names an application entity, not a user; only a password is a secret
            if parsed.password is not None or (userInfo and parsed.scheme in ("http", "https")):
                raise ValueError(_("The {label} URL contains credentials; remove them and set them in the "
                                   "environment (THERATWIN_{label}_USER / _PASSWORD / _TOKEN).").format(label=label))
        self.settings.setValue(self.PACS_URL_KEY, pacsUrl or "")
        self.settings.setValue(self.FHIR_URL_KEY, fhirUrl or "")

    @staticmethod
    def defaultOutputDirectory() -> pathlib.Path:
        """A new folder for one export when none was chosen: ``TheraTwin/export-<date>-<time>`` under Slicer's
        temporary folder (the system's temporary folder without the application), never the working directory."""
        import datetime
        import tempfile

        application = TheraTwinLib.slicerApplication()
        base = pathlib.Path(application.temporaryPath if application is not None else tempfile.gettempdir())
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = base / "TheraTwin" / f"export-{stamp}"
        suffix = 1
        while folder.exists():
            suffix += 1
            folder = base / "TheraTwin" / f"export-{stamp}-{suffix}"
        return folder

    def processUsingParameterNode(self, parameterNode, progress=None) -> dict:
        """Run :meth:`process` on the parameter node's inputs and store the summary table in it; an unset output
        folder becomes :meth:`defaultOutputDirectory`, written back so the user sees where the files went."""
        if not parameterNode.timePointVolume or not parameterNode.segmentation:
            raise ValueError(_("Select a time-point volume and a segmentation."))
        if TheraTwinLib.pathOrNone(parameterNode.outputDirectory) is None:
            parameterNode.outputDirectory = self.defaultOutputDirectory()
        timePoints = TheraTwinLib.timePointNodes(parameterNode.timePointVolume.GetScene(),
                                                 near=parameterNode.timePointVolume)
        TheraTwinLib.removeOutputNodes(parameterNode.exportTable)
        outputs = self.process(timePoints, parameterNode.segmentation, parameterNode.outputDirectory,
                               writeDicom=parameterNode.writeDicom, writeFhir=parameterNode.writeFhir,
                               writeReport=parameterNode.writeReport,
                               importIntoDicomDatabase=parameterNode.importIntoDicomDatabase,
                               pushToPacs=parameterNode.pushToPacs, pushToFhir=parameterNode.pushToFhir,
                               progress=progress)
        parameterNode.exportTable = outputs["table"]
        return outputs

    def process(self, timePointNodes, segmentationNode, outputDirectory, *, writeDicom=True, writeFhir=True,
                writeReport=True, importIntoDicomDatabase=False, pushToPacs=False, pushToFhir=False,
                progress=None) -> dict:
        """Run the whole pipeline into ``outputDirectory`` and write/send the selected outputs.

        Returns
        -------
        dict
            ``run``, ``outputDirectory``, ``files`` (``results.outputs``: kind -> paths relative to the
            folder), ``imported`` (files added to the DICOM database) and ``table`` (summary table node).
        """
        TheraTwinLib.ensureRequirements()
        endpoints = self.endpointSettings()
        if pushToPacs and not endpoints["pacsUrl"]:
            raise ValueError(_("Sending to a PACS was asked but no PACS is set; enter it under Endpoints."))
        if pushToFhir and not endpoints["fhirUrl"]:
            raise ValueError(_("Sending to a FHIR server was asked but none is set; enter it under Endpoints."))
        stages = ["registration", "kinetics", "dosimetry", "radiobiology", "twin"]
        if writeReport:
            stages.append("report")
        if writeDicom or pushToPacs or importIntoDicomDatabase:
            stages.append("dicom_export")
        if writeFhir or pushToFhir:
            stages.append("fhir_export")
        outputDirectory = TheraTwinLib.pathOrNone(outputDirectory)
        if outputDirectory is None:
            raise ValueError(_("Choose the output folder (an empty folder setting is not the working directory)."))
        run = TheraTwinLib.runPipelineOnNodes(timePointNodes, segmentationNode=segmentationNode, stages=stages,
                                              outDir=outputDirectory,
                                              pacsUrl=endpoints["pacsUrl"] if pushToPacs else None,
                                              fhirUrl=endpoints["fhirUrl"] if pushToFhir else None,
                                              progress=progress)
        for warning in run.results.warnings:
            logging.warning(f"TheraTwin {warning.stage}: {warning.message}")
        twin = run.state.twin
        if twin is not None and "twin_state" not in run.results.outputs:
            # the twin ran earlier without an output folder (another module): write its state here as well
            TheraTwinLib.writeTextFile(outputDirectory / "twin-state.json", twin.to_json())
            run.results.outputs["twin_state"] = "twin-state.json"
        imported = []
        if importIntoDicomDatabase:
            imported = self.importIntoDicomDatabase(outputDirectory / "dicom")
        summary = {kind: value for kind, value in run.results.outputs.items()}
        summary["imported_into_dicom_database"] = len(imported)
        summary["warnings"] = [w.message for w in run.results.warnings if w.severity != "info"]
        summary = self._withoutEndpoints(summary, endpoints)
        table = TheraTwinLib.keyValueTableNode(segmentationNode.GetScene(), summary, name="TheraTwin export")
        return {"run": run, "outputDirectory": outputDirectory, "files": dict(run.results.outputs),
                "imported": imported, "table": table}

    @staticmethod
    def _withoutEndpoints(summary: dict, endpoints: dict) -> dict:
        """The summary goes into the scene, which may be shared: name the endpoints, do not spell them out."""
        import json

        text = json.dumps(summary, default=str)
        for label, url in (("<PACS>", endpoints["pacsUrl"]), ("<FHIR server>", endpoints["fhirUrl"])):
            if url:
                text = text.replace(url.rstrip("/"), label)
        return json.loads(text)

    @staticmethod
    def importIntoDicomDatabase(folder) -> list:
        """Add the DICOM files of ``folder`` to Slicer's DICOM database (application only; [] otherwise)."""
        files = sorted(str(p) for p in pathlib.Path(folder).glob("**/*.dcm"))
        if not files or getattr(slicer, "dicomDatabase", None) is None:
            return []
        from DICOMLib import DICOMUtils

        DICOMUtils.importDicom(str(folder))
        return files


#
# TheraTwinExportTest
#


class TheraTwinExportTest(ScriptedLoadableModuleTest):
    """Endpoint settings refuse credentials and never reach the scene."""

    def setUp(self):
        self.scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
        self.scene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_EndpointSettings()

    def test_EndpointSettings(self):
        logic = TheraTwinExportLogic(settings=_MemorySettings())
        with self.assertRaises(ValueError):
            logic.saveEndpointSettings("https://user:secret@pacs.example.org/dicom-web", "")
        logic.saveEndpointSettings("dimse://ORTHANC@127.0.0.1:4242", "https://fhir.example.org/r4")
        self.assertEqual(logic.endpointSettings()["pacsUrl"], "dimse://ORTHANC@127.0.0.1:4242")
        fields = getattr(TheraTwinExportParameterNode, "__annotations__", {})
        self.assertFalse(any(word in name.lower() for name in fields for word in ("url", "password", "token")))
        self.delayDisplay(_("Test passed"))
