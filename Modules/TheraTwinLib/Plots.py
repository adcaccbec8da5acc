"""Plot nodes: time-activity curves with their fitted curves, and dose-volume histograms.

Each chart is a ``vtkMRMLPlotChartNode`` with one ``vtkMRMLPlotSeriesNode`` per curve, reading its points
from a ``vtkMRMLTableNode`` (Slicer's plotting model: tables hold data, series say how to draw them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import slicer

from .Compatibility import slicerApplication

__all__ = ["timeActivityChartNode", "dvhChartNode", "seriesOfChart", "removeOutputNodes", "showChartInLayout",
           "showTableInLayout"]


def _chart(scene: Any, name: str, title: str, xLabel: str, yLabel: str) -> Any:
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(title)
    chart.SetXAxisTitle(xLabel)
    chart.SetYAxisTitle(yLabel)
    return chart


def _series(scene: Any, chart: Any, table: Any, name: str, xColumn: str, yColumn: str, color: tuple[float, ...],
            *, markers: bool) -> Any:
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName(xColumn)
    series.SetYColumnName(yColumn)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    if markers:
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    else:
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetColor(*color[:3])
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return series


_PALETTE = [(0.89, 0.10, 0.11), (0.22, 0.49, 0.72), (0.30, 0.69, 0.29), (0.60, 0.31, 0.64), (1.0, 0.50, 0.0),
            (0.65, 0.34, 0.16), (0.97, 0.51, 0.75), (0.6, 0.6, 0.6), (0.1, 0.1, 0.1)]


def _color(results: Any, name: str, index: int) -> tuple[float, ...]:
    study = getattr(results, "study", None)
    if study is not None and study.segmentation is not None and name in study.segmentation.names:
        return tuple(c / 255.0 for c in study.segmentation.structure(name).color_rgb)
    return _PALETTE[index % len(_PALETTE)]


def timeActivityChartNode(scene: Any, results: Any, cycle: int, *,
                          fittedCurves: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                          samples: int = 200, name: str | None = None) -> Any:
    """Chart of the measured time-activity curves of ``cycle`` (markers) and their fitted curves (lines).

    Parameters
    ----------
    results
        :class:`theratwin.Results` with ``time_h`` / ``activity_MBq`` filled by the kinetics stage.
    fittedCurves
        ``{structure: f(time_h) -> activity_MBq}``, e.g. ``fit.predict`` of ``theratwin.kinetics.fit_tac``.
        Drawn from 0 h to 1.5 x the last time point.
    """
    structures = [s for s in results.cycles[cycle].structures.values() if s.time_h and s.activity_MBq]
    name = name or f"TheraTwin TAC cycle {cycle}"
    chart = _chart(scene, name, f"Time-activity curves, cycle {cycle}", "Time since administration (h)",
                   "Activity (MBq)")
    measured = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} measured")
    fitted = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} fitted")
    measuredArrays: list[np.ndarray] = []
    measuredNames: list[str] = []
    # different structures may have different time points (e.g. a time point without that structure in view)
    longest = max((len(s.time_h) for s in structures), default=0)
    for s in structures:
        t = np.full(longest, np.nan)
        a = np.full(longest, np.nan)
        t[:len(s.time_h)] = s.time_h
        a[:len(s.activity_MBq)] = s.activity_MBq
        measuredArrays += [t, a]
        measuredNames += [f"{s.structure} time_h", f"{s.structure} activity_MBq"]
    if measuredArrays:
        slicer.util.updateTableFromArray(measured, measuredArrays, measuredNames)
    tLast = max((max(s.time_h) for s in structures), default=1.0)
    grid = np.linspace(0.0, 1.5 * tLast, samples)
    fittedArrays = [grid]
    fittedNames = ["time_h"]
    for s in structures:
        if fittedCurves and s.structure in fittedCurves:
            fittedArrays.append(np.asarray(fittedCurves[s.structure](grid), dtype=float))
            fittedNames.append(f"{s.structure} fit_MBq")
    slicer.util.updateTableFromArray(fitted, fittedArrays, fittedNames)
    for i, s in enumerate(structures):
        color = _color(results, s.structure, i)
        _series(scene, chart, measured, f"{s.structure} (measured)", f"{s.structure} time_h",
                f"{s.structure} activity_MBq", color, markers=True)
        if f"{s.structure} fit_MBq" in fittedNames:
            _series(scene, chart, fitted, f"{s.structure} (fit)", "time_h", f"{s.structure} fit_MBq", color,
                    markers=False)
    return chart


def dvhChartNode(scene: Any, results: Any, cycle: int | str, *, name: str | None = None) -> Any:
    """Cumulative dose-volume histograms of ``cycle`` (``StructureResult.dvh``: dose_Gy, volume_fraction)."""
    structures = [s for s in results.cycles[cycle].structures.values() if s.dvh]
    name = name or f"TheraTwin DVH cycle {cycle}"
    chart = _chart(scene, name, f"Dose-volume histograms, cycle {cycle}", "Dose (Gy)", "Volume (%)")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    longest = max((len(s.dvh["dose_Gy"]) for s in structures), default=0)
    arrays, names = [], []
    for s in structures:
        d = np.full(longest, np.nan)
        v = np.full(longest, np.nan)
        d[:len(s.dvh["dose_Gy"])] = s.dvh["dose_Gy"]
        v[:len(s.dvh["volume_fraction"])] = 100.0 * np.asarray(s.dvh["volume_fraction"], dtype=float)
        arrays += [d, v]
        names += [f"{s.structure} dose_Gy", f"{s.structure} volume_percent"]
    if arrays:
        slicer.util.updateTableFromArray(table, arrays, names)
    for i, s in enumerate(structures):
        _series(scene, chart, table, f"{s.structure} DVH", f"{s.structure} dose_Gy", f"{s.structure} volume_percent",
                _color(results, s.structure, i), markers=False)
    return chart


def seriesOfChart(chartNode: Any) -> list[Any]:
    """The plot series nodes of a chart, in order."""
    return [chartNode.GetNthPlotSeriesNode(i) for i in range(chartNode.GetNumberOfPlotSeriesNodes())]


def removeOutputNodes(*nodes: Any) -> None:
    """Remove earlier output nodes before a module makes new ones: a chart goes with its series and their
    tables, a table or volume on its own (None entries are ignored)."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        scene = node.GetScene()
        if node.IsA("vtkMRMLPlotChartNode"):
            series = seriesOfChart(node)
            tables = {s.GetTableNode() for s in series if s.GetTableNode() is not None}
            for other in [*series, *tables]:
                scene.RemoveNode(other)
        scene.RemoveNode(node)


def _layoutManager() -> Any:
    """The application's layout manager, or None (slicer-core, or ``Slicer --no-main-window``)."""
    application = slicerApplication()
    return application.layoutManager() if application is not None else None


def showChartInLayout(chartNode: Any) -> bool:
    """Switch to the four-up plot layout showing ``chartNode``; False (and nothing done) without views."""
    layoutManager = _layoutManager()
    if chartNode is None or layoutManager is None:
        return False
    layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
    layoutManager.plotWidget(0).mrmlPlotViewNode().SetPlotChartNodeID(chartNode.GetID())
    return True


def showTableInLayout(tableNode: Any) -> bool:
    """Switch to the four-up table layout showing ``tableNode``; False (and nothing done) without views."""
    layoutManager = _layoutManager()
    if tableNode is None or layoutManager is None:
        return False
    layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    applicationLogic = slicer.app.applicationLogic()
    applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
    applicationLogic.PropagateTableSelection()
    return True
