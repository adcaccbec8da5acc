"""TheraTwinLib: the Qt-free adapter between Slicer's MRML scene and the ``theratwin`` core.

Importable with only ``slicer-core`` (PyPI) installed, so it is tested outside the application. It turns
volume, segmentation and subject-hierarchy nodes into ``theratwin`` objects (LPS <-> RAS happens here and only
here) and results back into volume, table and plot nodes. ``theratwin`` itself is imported inside the functions,
after the module has made sure its dependencies are installed.

The first thing it does is refuse a 3D Slicer older than :data:`MINIMUM_SLICER_VERSION` with a clear message
(:mod:`TheraTwinLib.Compatibility`); everything above that check stays valid Python 3.9.
"""

from .Compatibility import (
    MINIMUM_SLICER_VERSION,
    UnsupportedSlicerError,
    checkSlicerVersion,
    slicerApplication,
)

checkSlicerVersion()

from .Choices import (
    BUILTIN_DOSE_ENGINES,
    BUILTIN_KINETIC_MODELS,
    doseEngineChoices,
    kineticModelChoices,
    registryChoice,
)
from .Dependencies import (
    REQUIREMENTS,
    RestartRequiredError,
    ensureRequirements,
    loadedOutdatedPackages,
    missingRequirements,
    readRequirements,
)
from .Messages import ExplainedError, explainedErrors, messageFor, userMessage
from .Parameters import isOptionalPath, pathOrNone, pathText, registerPathParameterConnector, writeTextFile
from .Pipeline import (
    DOSE_MAP_KINDS,
    PipelineRun,
    clearPipelineCache,
    fittedCurves,
    forgetStages,
    mapNodeName,
    runPipelineOnNodes,
    showDosimetry,
    showKinetics,
    showMap,
    showMaps,
)
from .Plots import (
    dvhChartNode,
    removeOutputNodes,
    seriesOfChart,
    showChartInLayout,
    showTableInLayout,
    timeActivityChartNode,
)
from .Scenes import loadSceneFromBundle, saveSceneToBundle
from .Segmentations import (
    segmentationFromSegmentationNode,
    segmentationNodeFromSegmentation,
    terminologyEntry,
)
from .StudyNodes import (
    StudyNodes,
    addStudyToScene,
    annotateFromDicom,
    annotateSceneFromDicom,
    loadStudyFromDicom,
    nuclideFromCodeMeaning,
    setTimePointAttributes,
    studyFromNodes,
    timePointNodes,
)
from .Tables import (
    PREDICTION_QUANTITIES,
    STRUCTURE_COLUMNS,
    dvhMetricsTableNode,
    flattenForTable,
    keyValueTableNode,
    structureResultsTableNode,
    tableColumn,
    twinPredictionTableNode,
)
from .Volumes import (
    DOSE_COLOR_TABLE_NAME,
    DOSE_VOLUME_ATTRIBUTE,
    UNIT_ATTRIBUTE,
    doseColorTableNode,
    doseUnitName,
    geometryFromIjkToRas,
    ijkToRasFromGeometry,
    imageFromVolumeNode,
    isDoseVolume,
    markAsDoseVolume,
    showColorLegend,
    updateVolumeNodeFromImage,
    volumeNodeFromImage,
)

__all__ = [
    "kineticModelChoices",
    "doseEngineChoices",
    "registryChoice",
    "BUILTIN_KINETIC_MODELS",
    "BUILTIN_DOSE_ENGINES",
    "MINIMUM_SLICER_VERSION",
    "UnsupportedSlicerError",
    "checkSlicerVersion",
    "slicerApplication",
    "volumeNodeFromImage",
    "updateVolumeNodeFromImage",
    "imageFromVolumeNode",
    "ijkToRasFromGeometry",
    "geometryFromIjkToRas",
    "markAsDoseVolume",
    "isDoseVolume",
    "doseUnitName",
    "doseColorTableNode",
    "DOSE_VOLUME_ATTRIBUTE",
    "DOSE_COLOR_TABLE_NAME",
    "UNIT_ATTRIBUTE",
    "segmentationNodeFromSegmentation",
    "segmentationFromSegmentationNode",
    "terminologyEntry",
    "StudyNodes",
    "addStudyToScene",
    "studyFromNodes",
    "timePointNodes",
    "setTimePointAttributes",
    "annotateFromDicom",
    "annotateSceneFromDicom",
    "loadStudyFromDicom",
    "nuclideFromCodeMeaning",
    "structureResultsTableNode",
    "dvhMetricsTableNode",
    "keyValueTableNode",
    "tableColumn",
    "twinPredictionTableNode",
    "flattenForTable",
    "PREDICTION_QUANTITIES",
    "STRUCTURE_COLUMNS",
    "timeActivityChartNode",
    "dvhChartNode",
    "seriesOfChart",
    "removeOutputNodes",
    "showChartInLayout",
    "showTableInLayout",
    "saveSceneToBundle",
    "loadSceneFromBundle",
    "PipelineRun",
    "runPipelineOnNodes",
    "clearPipelineCache",
    "forgetStages",
    "showColorLegend",
    "showMap",
    "showMaps",
    "showKinetics",
    "showDosimetry",
    "mapNodeName",
    "fittedCurves",
    "DOSE_MAP_KINDS",
    "ensureRequirements",
    "missingRequirements",
    "readRequirements",
    "REQUIREMENTS",
    "RestartRequiredError",
    "loadedOutdatedPackages",
    "ExplainedError",
    "explainedErrors",
    "userMessage",
    "messageFor",
    "pathOrNone",
    "pathText",
    "writeTextFile",
    "isOptionalPath",
    "registerPathParameterConnector",
]
