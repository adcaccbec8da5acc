"""The cohort table: one row per patient, cycle and structure, as Parquet and CSV.

Built from each completed patient's ``results.json`` (the single source of truth), sorted by patient, cycle and
structure, so the same results give byte-identical CSV and equal Parquet tables whichever cluster computed them.
Every column's unit is in its name and in the Parquet field metadata (``unit``, ``description``).

Single-time-point comparison: where a cycle has full kinetics (>= 3 time points and a fitted TIA), the table also
gives Hänscheid's single-time-point TIA (``A(t)·2t/ln 2``, Hänscheid et al. J Nucl Med 2018;59:75) from that
cycle's time point nearest to 96 h (the time the method was proposed for) and its relative error against the
full kinetics — the number a site needs before adopting a reduced imaging protocol.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .._version import __version__
from ..results import RESEARCH_USE_NOTICE

__all__ = ["COLUMNS", "cohort_rows", "patient_rows", "write_table", "write_patients_csv", "read_table_csv",
           "STP_NOMINAL_TIME_H"]

#: Hänscheid et al. 2018 proposed the single scan at about 4 days.
STP_NOMINAL_TIME_H = 96.0

# (name, type, unit, description)
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("patient", "string", "", "cohort patient key (output folder name)"),
    ("patient_id", "string", "", "DICOM PatientID"),
    ("cycle", "int64", "", "therapy cycle number"),
    ("structure", "string", "", "structure (segment) name"),
    ("structure_kind", "string", "", "twin prior key of the structure (kidneys, lesion, other, ...)"),
    ("radiopharmaceutical", "string", "", "radiopharmaceutical of the cycle"),
    ("nuclide", "string", "", "nuclide of the cycle"),
    ("administered_MBq", "float64", "MBq", "administered activity"),
    ("administration_start", "string", "", "start of administration (ISO 8601)"),
    ("n_time_points", "int64", "", "imaging time points of the cycle with data for the structure"),
    ("first_time_h", "float64", "h", "first imaging time after administration"),
    ("last_time_h", "float64", "h", "last imaging time after administration"),
    ("volume_mL", "float64", "mL", "structure volume"),
    ("mass_g", "float64", "g", "structure mass"),
    ("tia_MBq_h", "float64", "MBq h", "time-integrated activity"),
    ("tia_sd_MBq_h", "float64", "MBq h", "SD of the time-integrated activity"),
    ("tia_method", "string", "", "how the TIA was obtained (fit:<model>, stp:<method>, ...)"),
    ("kinetic_model", "string", "", "kinetic model of the fit"),
    ("effective_half_life_h", "float64", "h", "effective half-life of the washout"),
    ("mean_dose_Gy", "float64", "Gy", "mean absorbed dose"),
    ("mean_dose_sd_Gy", "float64", "Gy", "SD of the mean absorbed dose"),
    ("dose_per_activity_Gy_per_GBq", "float64", "Gy/GBq", "mean absorbed dose per administered activity"),
    ("dose_method", "string", "", "dose method (dvk, led, svalue, ...)"),
    ("bed_Gy", "float64", "Gy", "biologically effective dose of the cycle"),
    ("eqd2_Gy", "float64", "Gy", "equivalent dose in 2 Gy fractions of the cycle"),
    ("cumulative_dose_Gy", "float64", "Gy", "absorbed dose summed over cycles up to this one"),
    ("cumulative_bed_Gy", "float64", "Gy", "BED summed over cycles up to this one"),
    ("twin_tia_MBq_h", "float64", "MBq h", "the twin's TIA for a sparsely imaged cycle (posterior mean)"),
    ("twin_tia_low_MBq_h", "float64", "MBq h", "lower end of the twin's interval"),
    ("twin_tia_high_MBq_h", "float64", "MBq h", "upper end of the twin's interval"),
    ("stp_time_h", "float64", "h", "time of the scan used for the single-time-point comparison"),
    ("stp_tia_MBq_h", "float64", "MBq h", "Hänscheid single-time-point TIA from that scan"),
    ("stp_relative_error", "float64", "1", "stp_tia_MBq_h / tia_MBq_h - 1 (full kinetics as reference)"),
    ("flags", "string", "", "codes separated by ';': sparse (<= 2 time points), twin_estimate, warning, error"),
    ("warnings", "string", "", "the run's warnings for this cycle and structure, ' | '-separated"),
    ("software_version", "string", "", "TheraTwin version that computed the results"),
)
_NAMES = [c[0] for c in COLUMNS]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _stp(sr: dict[str, Any], nuclide: str) -> tuple[float | None, float | None, float | None]:
    """(scan time, Hänscheid TIA, relative error) for a fully imaged structure, else Nones."""
    from ..errors import TheraTwinError
    from ..kinetics import single_time_point

    t, a, full = sr.get("time_h") or [], sr.get("activity_MBq") or [], _num(sr.get("tia_MBq_h"))
    method = str(sr.get("tia_method") or "")
    if len(t) < 3 or full is None or full <= 0 or not (method.startswith("fit") or method == "model_average"):
        return None, None, None
    candidates = [(abs(ti - STP_NOMINAL_TIME_H), ti, ai) for ti, ai in zip(t, a, strict=False)
                  if _num(ti) and _num(ai) is not None and ai > 0]
    if not candidates:
        return None, None, None
    _, ti, ai = min(candidates)
    try:
        stp = float(single_time_point(float(ti), float(ai), nuclide, method="hanscheid"))
    except TheraTwinError:
        return None, None, None
    return float(ti), stp, stp / full - 1.0


def patient_rows(patient: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows of one patient's ``results.json`` data."""
    from ..twin.priors import prior_key

    study = results.get("study") or {}
    warnings = results.get("warnings") or []
    version = (results.get("software") or {}).get("version", "")
    rows = []
    for ckey, cyc in sorted((results.get("cycles") or {}).items(), key=lambda kv: int(kv[0])):
        n = int(ckey)
        for name, sr in sorted((cyc.get("structures") or {}).items()):
            times = sr.get("time_h") or []
            own = [w for w in warnings if w.get("cycle") == n and w.get("structure") == name
                   and w.get("severity") in ("warning", "error")]
            twin = sr.get("estimated_by_twin") or {}
            flags = []
            if 0 < len(times) <= 2:
                flags.append("sparse")
            if twin:
                flags.append("twin_estimate")
            flags += sorted({str(w.get("severity")) for w in own})
            stp_t, stp_tia, stp_err = _stp(sr, str(cyc.get("nuclide") or "Lu-177"))
            rows.append({
                "patient": patient, "patient_id": study.get("patient_id"), "cycle": n, "structure": name,
                "structure_kind": prior_key(name), "radiopharmaceutical": cyc.get("radiopharmaceutical"),
                "nuclide": cyc.get("nuclide"), "administered_MBq": _num(cyc.get("administered_MBq")),
                "administration_start": cyc.get("administration_start"), "n_time_points": len(times),
                "first_time_h": _num(times[0]) if times else None, "last_time_h": _num(times[-1]) if times else None,
                **{k: _num(sr.get(k)) for k in ("volume_mL", "mass_g", "tia_MBq_h", "tia_sd_MBq_h",
                                                "effective_half_life_h", "mean_dose_Gy", "mean_dose_sd_Gy",
                                                "dose_per_activity_Gy_per_GBq", "bed_Gy", "eqd2_Gy",
                                                "cumulative_dose_Gy", "cumulative_bed_Gy")},
                "tia_method": sr.get("tia_method"), "kinetic_model": sr.get("kinetic_model"),
                "dose_method": sr.get("dose_method"),
                "twin_tia_MBq_h": _num(twin.get("tia_MBq_h")), "twin_tia_low_MBq_h": _num(twin.get("low")),
                "twin_tia_high_MBq_h": _num(twin.get("high")),
                "stp_time_h": stp_t, "stp_tia_MBq_h": stp_tia, "stp_relative_error": stp_err,
                "flags": ";".join(flags), "warnings": " | ".join(f"{w.get('stage')}: {w.get('message')}" for w in own),
                "software_version": version,
            })
    return rows


def cohort_rows(out_dir: Path, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of every completed patient (``records``: patient key -> task record), in table order."""
    from .records import PATIENTS_DIR

    rows: list[dict[str, Any]] = []
    for key in sorted(records):
        if records[key].get("status") != "done":
            continue
        path = out_dir / PATIENTS_DIR / key / "results.json"
        rows += patient_rows(key, json.loads(path.read_text(encoding="utf-8")))
    return rows


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same double
    return str(v)


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, str]:
    """Write ``cohort-table.parquet`` and ``cohort-table.csv``; returns their names by kind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    schema = pa.schema(
        [pa.field(n, types[t], metadata={"unit": u, "description": d}) for n, t, u, d in COLUMNS],
        metadata={"theratwin": json.dumps({"schema": "theratwin-cohort-table/1", "notice": RESEARCH_USE_NOTICE,
                                           "software_version": __version__})})
    table = pa.Table.from_pylist([{k: r.get(k) for k in _NAMES} for r in rows], schema=schema)
    pq.write_table(table, out_dir / "cohort-table.parquet")
    with (out_dir / "cohort-table.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(_NAMES)
        for r in rows:
            w.writerow([_csv_value(r.get(k)) for k in _NAMES])
    return {"table_parquet": "cohort-table.parquet", "table_csv": "cohort-table.csv"}


def read_table_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read ``cohort-table.csv`` back with the column types (empty cells are None)."""
    kinds = {n: t for n, t, _, _ in COLUMNS}
    out = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                t = kinds.get(k, "string")
                row[k] = None if v == "" else int(v) if t == "int64" else float(v) if t == "float64" else v
            out.append(row)
    return out


def write_patients_csv(records: dict[str, dict[str, Any]], out_dir: Path) -> Path:
    """``cohort-patients.csv``: one row per patient (status, error, seconds, worker, input folder)."""
    path = out_dir / "cohort-patients.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["patient", "status", "error", "seconds", "worker", "finished", "input"])
        for key in sorted(records):
            r = records[key]
            src = r.get("source") or {}
            w.writerow([key, r.get("status"), r.get("error") or "", _csv_value(r.get("seconds")), r.get("worker") or "",
                        r.get("finished") or "", src.get("folder") or src.get("pacs_url") or ""])
    return path
