"""Results -> table nodes (one row per cycle and structure; units in column names and unit labels)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import vtk

__all__ = ["STRUCTURE_COLUMNS", "PREDICTION_QUANTITIES", "structureResultsTableNode", "dvhMetricsTableNode",
           "keyValueTableNode", "twinPredictionTableNode", "flattenForTable", "tableColumn"]

#: (column name, StructureResult field, unit label, description) of the per-structure table.
STRUCTURE_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("Volume_mL", "volume_mL", "mL", "Structure volume"),
    ("Mass_g", "mass_g", "g", "Structure mass"),
    ("TIA_MBq_h", "tia_MBq_h", "MBq*h", "Time-integrated activity"),
    ("TIA_SD_MBq_h", "tia_sd_MBq_h", "MBq*h", "Standard deviation of the time-integrated activity"),
    ("EffectiveHalfLife_h", "effective_half_life_h", "h", "Effective half-life of the fitted curve"),
    ("MeanDose_Gy", "mean_dose_Gy", "Gy", "Mean absorbed dose"),
    ("MeanDose_SD_Gy", "mean_dose_sd_Gy", "Gy", "Standard deviation of the mean absorbed dose"),
    ("DosePerActivity_Gy_per_GBq", "dose_per_activity_Gy_per_GBq", "Gy/GBq", "Mean dose per administered activity"),
    ("BED_Gy", "bed_Gy", "Gy", "Biologically effective dose"),
    ("EQD2_Gy", "eqd2_Gy", "Gy", "Equivalent dose in 2 Gy fractions"),
    ("CumulativeDose_Gy", "cumulative_dose_Gy", "Gy", "Absorbed dose summed over cycles so far"),
    ("CumulativeBED_Gy", "cumulative_bed_Gy", "Gy", "BED summed over cycles so far"),
)


def _newTable(scene: Any, name: str, tableNode: Any = None) -> Any:
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    else:
        tableNode.RemoveAllColumns()
    return tableNode


def _value(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(float(v)) else float("nan")


def _vtkColumn(name: str, values: np.ndarray) -> Any:
    if values.dtype.kind in "US":
        column = vtk.vtkStringArray()
        for v in values:
            column.InsertNextValue(str(v))
    else:
        column = vtk.vtkIntArray() if values.dtype.kind in "iu" else vtk.vtkDoubleArray()
        column.SetNumberOfTuples(len(values))
        for i, v in enumerate(values):
            column.SetValue(i, int(v) if values.dtype.kind in "iu" else float(v))
    column.SetName(name)
    return column


def _fill(tableNode: Any, columns: list[tuple[str, np.ndarray, str, str]]) -> Any:
    """Replace the columns of ``tableNode`` (strings, integers and doubles; ``updateTableFromArray`` takes
    numbers only)."""
    wasModified = tableNode.StartModify()
    tableNode.RemoveAllColumns()
    for name, values, _unit, _description in columns:
        tableNode.AddColumn(_vtkColumn(name, np.asarray(values)))
    for name, _values, unit, description in columns:
        if unit:
            tableNode.SetColumnUnitLabel(name, unit)
        if description:
            tableNode.SetColumnDescription(name, description)
    tableNode.EndModify(wasModified)
    return tableNode


def structureResultsTableNode(scene: Any, results: Any, *, cycles: Iterable[int] | None = None,
                              name: str = "TheraTwin results", tableNode: Any = None) -> Any:
    """A table with one row per cycle and structure and the columns of :data:`STRUCTURE_COLUMNS`.

    Quantities a stage did not compute are NaN (shown empty), so "not computed" is not confused with zero.
    """
    rows = [(c, s) for c in sorted(results.cycles) if cycles is None or c in set(cycles)
            for s in results.cycles[c].structures.values()]
    tableNode = _newTable(scene, name, tableNode)
    columns: list[tuple[str, np.ndarray, str, str]] = [
        ("Cycle", np.array([c for c, _ in rows], dtype=np.int32), "", "Therapy cycle"),
        ("Structure", np.array([s.structure for _, s in rows], dtype=str), "", "Structure name"),
    ]
    for column, fieldName, unit, description in STRUCTURE_COLUMNS:
        columns.append((column, np.array([_value(getattr(s, fieldName)) for _, s in rows], dtype=float),
                        unit, description))
    return _fill(tableNode, columns)


def dvhMetricsTableNode(scene: Any, results: Any, cycle: int, *, name: str = "TheraTwin DVH metrics",
                        tableNode: Any = None) -> Any:
    """DVH metrics (``StructureResult.dvh_metrics``) of one cycle: one row per structure, one column per metric."""
    structures = [s for s in results.cycles[cycle].structures.values() if s.dvh_metrics]
    metrics: list[str] = []
    for s in structures:
        metrics += [m for m in s.dvh_metrics if m not in metrics]
    tableNode = _newTable(scene, name, tableNode)
    columns: list[tuple[str, np.ndarray, str, str]] = [
        ("Structure", np.array([s.structure for s in structures], dtype=str), "", "Structure name")]
    for metric in metrics:
        unit = "Gy" if metric.endswith("_Gy") else ("1" if metric.endswith("_fraction") else "")
        columns.append((metric, np.array([_value(s.dvh_metrics.get(metric)) for s in structures]), unit, ""))
    return _fill(tableNode, columns)


def keyValueTableNode(scene: Any, values: dict[str, Any], *, name: str, tableNode: Any = None) -> Any:
    """A two-column (Quantity, Value) table of a flat dict; nested values are shown as JSON text."""
    tableNode = _newTable(scene, name, tableNode)
    keys = list(values)
    texts = [v if isinstance(v, str) else json.dumps(v, default=str) for v in values.values()]
    return _fill(tableNode, [("Quantity", np.array(keys, dtype=str), "", ""),
                             ("Value", np.array(texts, dtype=str), "", "")])


def tableColumn(tableNode: Any, name: str) -> np.ndarray:
    """Values of a table column as a numpy array (numbers or strings)."""
    table = tableNode.GetTable()
    column = table.GetColumnByName(name)
    if column is None:
        raise KeyError(f"Table '{tableNode.GetName()}' has no column {name!r}.")
    if hasattr(column, "GetValue") and column.IsA("vtkStringArray"):
        return np.array([column.GetValue(i) for i in range(column.GetNumberOfValues())], dtype=str)
    return np.array([column.GetValue(i) for i in range(column.GetNumberOfTuples())])


def flattenForTable(values: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to ``{"a.b.c": value}`` (lists stay whole) for a key-value table."""
    flat: dict[str, Any] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            flat.update(flattenForTable(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        flat[prefix] = values
    return flat


#: (column prefix, quantity of a ``theratwin.twin.StructurePrediction``, unit) of the prediction table.
PREDICTION_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("TIA_MBq_h", "tia_MBq_h", "MBq*h"),
    ("Dose_Gy", "dose_Gy", "Gy"),
    ("BED_Gy", "bed_Gy", "Gy"),
    ("CumulativeDose_Gy", "cumulative_dose_Gy", "Gy"),
    ("CumulativeBED_Gy", "cumulative_bed_Gy", "Gy"),
)


def twinPredictionTableNode(scene: Any, prediction: Any, *, name: str = "TheraTwin prediction",
                            tableNode: Any = None) -> Any:
    """Table of a twin prediction (``theratwin.twin.Prediction``, e.g. ``TwinResults.prediction``; its
    ``to_dict()`` form is read back first): one row per structure, mean and interval of each quantity
    (``<quantity>`` mean, ``<quantity> low`` / ``high`` the interval at the prediction's level)."""
    if isinstance(prediction, dict):
        from theratwin.twin import Prediction

        prediction = Prediction.from_dict(prediction)
    structures = list(prediction.structures.values())
    level = float(prediction.level)
    tableNode = _newTable(scene, name, tableNode)
    columns: list[tuple[str, np.ndarray, str, str]] = [
        ("Structure", np.array([s.structure for s in structures], dtype=str), "", "Structure name")]
    for column, key, unit in PREDICTION_QUANTITIES:
        for part, label in (("mean", ""), ("low", " low"), ("high", " high")):
            values = np.array([_value(getattr(s.intervals()[key], part)) for s in structures], dtype=float)
            description = f"{'Mean' if part == 'mean' else 'Bound of the central'} " + (
                "of the predictive distribution" if part == "mean" else f"{100 * level:.0f} % interval")
            columns.append((column + label, values, unit, description))
    tableNode = _fill(tableNode, columns)
    tableNode.SetAttribute("TheraTwin.PredictedCycle", str(prediction.cycle))
    tableNode.SetAttribute("TheraTwin.AdministeredActivity_MBq", str(prediction.administered_MBq))
    return tableNode
