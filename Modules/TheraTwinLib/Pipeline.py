"""Run the theratwin pipeline on scene nodes and put its results back into the scene.

A Logic calls :func:`runPipelineOnNodes` (nodes -> Study -> ``theratwin.pipeline.Pipeline``) and then
:func:`showMaps` / the table and plot helpers. The last runs are kept per process (keyed by the input nodes and
their modification times, with the stages done and their options), so that going from the Kinetics to the
Dosimetry module on the same data continues the run instead of registering the time points again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .Plots import dvhChartNode, timeActivityChartNode
from .StudyNodes import studyFromNodes
from .Tables import dvhMetricsTableNode, structureResultsTableNode
from .Volumes import UNIT_ATTRIBUTE, markAsDoseVolume, updateVolumeNodeFromImage, volumeNodeFromImage

__all__ = [
    "PipelineRun",
    "OUTPUT_STAGES",
    "KEPT_RUNS",
    "runPipelineOnNodes",
    "forgetStages",
    "clearPipelineCache",
    "mapNodeName",
    "showMap",
    "showMaps",
    "fittedCurves",
    "DOSE_MAP_KINDS",
]

#: Map kinds (the part after "/" in ``results.maps`` keys) that are absorbed dose or BED in Gy.
DOSE_MAP_KINDS = ("dose", "bed", "eqd2")


@dataclass
class PipelineRun:
    """What one run produced: the study built from the nodes, the results and the pipeline's shared state
    (``theratwin.pipeline.PipelineState``, the run context's own: a continued run updates it in place)."""

    study: Any
    results: Any
    state: Any = None  # theratwin.pipeline.PipelineState
    key: str = ""
    context: Any = None
    settings: dict[str, Any] = field(default_factory=dict)  # per stage: what its outcome depends on

    @property
    def completedStages(self) -> list[str]:
        return list(self.context.completed) if self.context is not None else []


#: Stages that write files or send data: their outcome also depends on the output folder and endpoints.
OUTPUT_STAGES = ("report", "dicom_export", "fhir_export")

#: How many runs (on different input nodes) are kept; each holds the registered images and maps in memory.
KEPT_RUNS = 2

_cache: dict[str, PipelineRun] = {}


def clearPipelineCache() -> None:
    """Forget the kept run (e.g. after editing input nodes in a way MTime does not show)."""
    _cache.clear()


def _inputsKey(nodes: Sequence[Any]) -> str:
    # node IDs repeat across scenes; the object address tells the nodes apart, the MTime their modifications
    return json.dumps([(n.GetID(), n.GetAddressAsString("vtkObject"), int(n.GetMTime())) for n in nodes
                       if n is not None])


def _stageSettings(stages: Sequence[str], options: dict[str, Any], outDir: Any, pacsUrl: Any,
                   fhirUrl: Any) -> dict[str, str]:
    settings = {}
    for name in stages:
        value: dict[str, Any] = {"options": options.get(name, {})}
        if name in OUTPUT_STAGES:
            value.update(outDir=str(outDir), pacs=pacsUrl, fhir=fhirUrl)
        settings[name] = json.dumps(value, sort_keys=True, default=str)
    return settings


def _continueRun(run: PipelineRun, stages: Sequence[str], config: Any, outDir: Path | None,
                 progress: Callable[[float, str], None] | None) -> None:
    """Run the stages not yet done on the kept context, following the pipeline's stage protocol (``requires``,
    progress mapped onto the whole request, stage timing, ``results.json`` when writing outputs)."""
    from theratwin.pipeline import Pipeline

    context = run.context
    context.out_dir = outDir
    context.progress = progress
    Pipeline(config).continue_run(context, list(stages))


def forgetStages(run: PipelineRun, fromStage: str) -> list[str]:
    """Undo ``fromStage`` and every stage completed after it on a kept run, so that the next
    :func:`runPipelineOnNodes` on the same nodes runs them again on the earlier stages' results (e.g. dosimetry
    with another method, without registering again). The results and state go back to what they were before
    ``fromStage`` ran (``theratwin.pipeline.Pipeline.invalidate``). Returns the forgotten stages (empty when
    ``fromStage`` did not run)."""
    from theratwin.pipeline import Pipeline

    stages = Pipeline.invalidate(run.context, fromStage)
    for name in stages:
        run.settings.pop(name, None)
    return stages


def runPipelineOnNodes(timePointNodes: Sequence[Any], *, segmentationNode: Any = None, referenceCtNode: Any = None,
                       stages: Sequence[str] | None = None, stageOptions: dict[str, dict[str, Any]] | None = None,
                       outDir: str | Path | None = None, pacsUrl: str | None = None, fhirUrl: str | None = None,
                       progress: Callable[[float, str], None] | None = None, useCache: bool = True,
                       outputFiles: dict[str, str] | None = None) -> PipelineRun:
    """Build a study from the nodes and run the pipeline stages on it.

    The last runs are kept (:data:`KEPT_RUNS`, one per set of input nodes): a request on the same nodes (same
    modification times) whose stages extend the kept run's stages with the same options continues that run
    instead of starting again (the Kinetics, Dosimetry, Twin and Export modules ask for ever longer stage lists,
    and registration dominates the time); a request the kept run already covers returns it; a request that differs
    from a later stage on (another dose engine, twin option, output folder or endpoint) runs that stage and the
    ones after it again on the kept results of the earlier ones (``theratwin.pipeline.Pipeline.invalidate``); one
    that differs from the first stage on starts a new run.

    Parameters
    ----------
    timePointNodes
        Quantitative SPECT/PET volumes (Bq/mL) with time-point attributes (see :mod:`TheraTwinLib.StudyNodes`).
    segmentationNode
        The structures (organs, lesions).
    stages
        Stage names, in pipeline order (default: every installed stage). Stages not installed are skipped
        with an info warning in the results.
    stageOptions
        ``{stage: {option: value}}`` (see each stage's config dataclass).
    outDir
        Where stages write files (DICOM, FHIR bundle, report); None writes nothing.
    progress
        ``f(fraction 0..1, message)``; it may raise ``theratwin.progress.Cancelled`` to stop.
    useCache
        False: always start a new run.
    outputFiles
        ``{relative path: text}`` written into ``outDir`` with the run's own files and listed in its manifest
        (e.g. the demo patient's ``demo-truth.json``); a file put there beforehand would be removed as an
        earlier run's leftover when the run seals the folder.
    """
    from theratwin.pipeline import DEFAULT_STAGES, Pipeline, PipelineConfig, PipelineState

    stages = tuple(stages or DEFAULT_STAGES)
    options = dict(stageOptions or {})
    outPath = Path(outDir) if outDir is not None else None
    inputsKey = _inputsKey([*timePointNodes, segmentationNode, referenceCtNode])
    settings = _stageSettings(stages, options, outPath, pacsUrl, fhirUrl)
    config = PipelineConfig(stages=stages, stage_options=options, pacs_url=pacsUrl, fhir_url=fhirUrl,
                            write_outputs=outPath is not None)
    kept = _cache.get(inputsKey) if useCache else None
    if kept is not None:
        done = kept.completedStages
        shared = 0
        while (shared < min(len(done), len(stages)) and done[shared] == stages[shared]
               and kept.settings.get(stages[shared]) == settings[stages[shared]]):
            shared += 1
        if shared == len(stages):
            return kept
        if shared < len(done) and (shared > 0 or all(s in OUTPUT_STAGES for s in done)):
            # run again from the first stage whose options, folder or endpoints differ, on the kept results of the
            # stages before it (files already written stay where they were until the run seals its folder)
            forgetStages(kept, done[shared])
            done = kept.completedStages
        if shared == len(done):
            if outPath is not None:
                outPath.mkdir(parents=True, exist_ok=True)
            if outputFiles is not None:
                kept.context.state.output_files = dict(outputFiles)
            _continueRun(kept, stages, config, outPath, progress)
            kept.settings.update(settings)
            return kept
    study = studyFromNodes(timePointNodes, segmentationNode=segmentationNode, referenceCtNode=referenceCtNode)
    pipeline = Pipeline(config)
    results = pipeline.run(study, out_dir=outPath, progress=progress,
                           state=PipelineState(output_files=dict(outputFiles or {})))
    context = pipeline.last_context
    run = PipelineRun(study, results, context.state, inputsKey, context, settings)
    _cache.pop(inputsKey, None)
    _cache[inputsKey] = run
    while len(_cache) > KEPT_RUNS:  # oldest first (dicts keep insertion order)
        _cache.pop(next(iter(_cache)))
    return run


def mapNodeName(key: str) -> str:
    """Node name of a results map, e.g. ``cycle1/dose`` -> ``TheraTwin cycle1 dose``."""
    return "TheraTwin " + key.replace("/", " ")


def showMap(scene: Any, results: Any, key: str, *, volumeNode: Any = None, referenceNode: Any = None) -> Any:
    """Put ``results.maps[key]`` into a volume node (reusing ``volumeNode`` or a node of the same name);
    dose and BED maps are marked as dose volumes (SlicerRT) with the dose colour table, under the subject-hierarchy
    study of ``referenceNode`` (a time point of the patient) unless they already have one."""
    image = results.maps[key]
    name = mapNodeName(key)
    node = volumeNode or scene.GetFirstNodeByName(name)
    if node is None:
        node = volumeNodeFromImage(scene, image, name)
    else:
        updateVolumeNodeFromImage(node, image)
    node.SetAttribute("TheraTwin.Role", "Map")
    node.SetAttribute("TheraTwin.MapKey", key)
    if _mapKind(key) in DOSE_MAP_KINDS:
        markAsDoseVolume(node, unit=image.unit, referenceNode=referenceNode)
    else:
        node.SetAttribute(UNIT_ATTRIBUTE, image.unit)
    return node


def showMaps(scene: Any, results: Any, kinds: Sequence[str], *, referenceNode: Any = None) -> dict[str, Any]:
    """:func:`showMap` for every map whose kind (``tia``, ``dose``, ``bed`` ...) is in ``kinds``."""
    return {key: showMap(scene, results, key, referenceNode=referenceNode) for key in results.maps
            if _mapKind(key) in kinds}


def _mapKind(key: str) -> str:
    """The kind of a results map (``dose`` of ``cycle1/dose``; the whole key when it is not a map name)."""
    from theratwin.results import parse_map_name

    name = parse_map_name(key)
    return name.kind if name is not None else key


def fittedCurves(results: Any, cycle: int, state: Any = None) -> dict[str, Callable[[Any], Any]]:
    """Fitted time-activity curves of ``cycle``: the kinetics stage's own fits (``state.tac_fits`` of the run's
    ``theratwin.pipeline.PipelineState``) when given, else refitted with the model it chose
    (``theratwin.kinetics.fit_tac``); empty without kinetics."""
    stageFits = ((state.tac_fits if state is not None else None) or {}).get(cycle, {})
    if stageFits:
        return {name: fit.predict for name, fit in stageFits.items() if hasattr(fit, "predict")}
    try:
        from theratwin import kinetics
    except ImportError:
        return {}
    import theratwin as tt

    curves: dict[str, Callable[[Any], Any]] = {}
    cycleResult = results.cycles[cycle]
    for s in cycleResult.structures.values():
        if not s.time_h or not s.activity_MBq or len(s.time_h) < 2:
            continue
        fit = None
        for model in dict.fromkeys((s.kinetic_model or "auto", "auto")):
            try:
                fit = kinetics.fit_tac(s.time_h, s.activity_MBq, nuclide=cycleResult.nuclide, model=model,
                                       activity_sd_MBq=s.activity_sd_MBq)
                break
            except tt.TheraTwinError:  # e.g. "model_average" is not a model name; fall back to auto
                continue
        if fit is None:
            continue
        curves[s.structure] = fit.predict
    return curves


def showKinetics(scene: Any, results: Any, cycle: int, state: Any = None) -> dict[str, Any]:
    """TAC chart (with fits), results table and TIA map of ``cycle``."""
    return {
        "chart": timeActivityChartNode(scene, results, cycle, fittedCurves=fittedCurves(results, cycle, state)),
        "table": structureResultsTableNode(scene, results, cycles=[cycle], name=f"TheraTwin kinetics cycle {cycle}"),
        "maps": showMaps(scene, results, ("tia",)),
    }


def showDosimetry(scene: Any, results: Any, cycle: int, *, referenceNode: Any = None) -> dict[str, Any]:
    """Dose/BED maps (under ``referenceNode``'s study, see :func:`showMap`), DVH chart, DVH metrics and
    per-structure table (all cycles, with cumulative columns)."""
    return {
        "maps": showMaps(scene, results, DOSE_MAP_KINDS, referenceNode=referenceNode),
        "dvhChart": dvhChartNode(scene, results, cycle),
        "dvhTable": dvhMetricsTableNode(scene, results, cycle, name=f"TheraTwin DVH metrics cycle {cycle}"),
        "table": structureResultsTableNode(scene, results, name="TheraTwin dosimetry"),
    }


__all__ += ["showKinetics", "showDosimetry"]
