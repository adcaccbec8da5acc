"""TheraTwinLib: the Qt-free adapter between Slicer's MRML scene and the ``theratwin`` core.

Importable with only ``slicer-core`` (PyPI) installed, so it is tested outside the application. It turns
volume, segmentation and subject-hierarchy nodes into ``theratwin`` objects (LPS <-> RAS happens here and only
here) and results back into volume, table and plot nodes. ``theratwin`` itself is imported inside the functions,
after the module has made sure its dependencies are installed.
"""

from .Dependencies import ensureRequirements, missingRequirements, readRequirements
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
from .Plots import dvhChartNode, removeOutputNodes, seriesOfChart, timeActivityChartNode
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
    "volumeNodeFromImage",
    "updateVolumeNodeFromImage",
    "imageFromVolumeNode",
    "ijkToRasFromGeometry",
    "geometryFromIjkToRas",
    "markAsDoseVolume",
    "isDoseVolume",
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
]
