"""The report's tables of the fixed results schema: treatment, the at-a-glance cards and dosimetry per structure.

A limit is compared with the cumulative value of the quantity it is set on (:func:`limit_status`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..twin.output import TwinResults
from ._generic import is_number
from .format import esc, lookup, number_span

__all__ = ["field_path", "latest_cycle_key", "limit_status", "section_treatment", "section_glance",
           "section_dosimetry"]


# Columns of the per-structure tables: (JSON field of StructureResult, header, unit).
_STRUCTURE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("tia_MBq_h", "TIA", "MBq·h"),
    ("effective_half_life_h", "T<sub>eff</sub>", "h"),
    ("mean_dose_Gy", "Mean dose", "Gy"),
    ("dvh_metrics.Dmax_Gy", "D<sub>max</sub>", "Gy"),
    ("dvh_metrics.D2_Gy", "D<sub>2%</sub>", "Gy"),
    ("dvh_metrics.D98_Gy", "D<sub>98%</sub>", "Gy"),
    ("bed_Gy", "BED", "Gy"),
    ("eqd2_Gy", "EQD2", "Gy"),
    ("cumulative_dose_Gy", "Cumulative dose", "Gy"),
    ("cumulative_bed_Gy", "Cumulative BED", "Gy"),
    ("cumulative_eqd2_Gy", "Cumulative EQD2", "Gy"),
)

# Which cumulative field a limit on a given quantity is compared with.
_LIMIT_FIELDS = {
    "bed": "cumulative_bed_Gy",
    "eqd2": "cumulative_eqd2_Gy",
    "dose": "cumulative_dose_Gy",
    "absorbed_dose": "cumulative_dose_Gy",
    "absorbed dose": "cumulative_dose_Gy",
    "mean_dose": "cumulative_dose_Gy",
    "d": "cumulative_dose_Gy",
}


def field_path(cycle_key: str, structure: str, field: str) -> list[str]:
    return ["cycles", cycle_key, "structures", structure, *field.split(".")]


def limit_status(data: dict[str, Any], cycle_key: str, structure: str) -> tuple[str | None, str]:
    """Compare a structure's cumulative value with its limit.

    Returns
    -------
    (field, status)
        The cumulative JSON field compared (None when the limit or value is missing) and ``"ok"``, ``"over"``
        or ``"unknown"``.
    """
    sr = lookup(data, ["cycles", cycle_key, "structures", structure]) or {}
    limit = sr.get("limit")
    if not isinstance(limit, dict) or not isinstance(limit.get("value_Gy"), (int, float)):
        return None, "unknown"
    quantity = str(limit.get("quantity", "BED")).strip().lower()
    field = _LIMIT_FIELDS.get(quantity)
    if field is None:
        return None, "unknown"
    value = sr.get(field)
    if not isinstance(value, (int, float)):
        return field, "unknown"
    return field, "over" if value > limit["value_Gy"] else "ok"


def _status_cell(status: str) -> str:
    text = {"ok": "below limit", "over": "ABOVE LIMIT", "unknown": "no limit / not computed"}[status]
    return f'<td class="status-{status}">{text}</td>'


def _limit_cells(data: dict[str, Any], cycle_key: str, structure: str) -> str:
    base = ["cycles", cycle_key, "structures", structure, "limit"]
    limit = lookup(data, base)
    if not isinstance(limit, dict):
        return '<td class="missing">–</td><td class="num missing">–</td>'
    quantity = esc(limit.get("quantity", ""))
    value = number_span(data, [*base, "value_Gy"], unit="Gy", structure=structure, cycle=cycle_key, tag="td")
    ref = limit.get("reference")
    title = f' title="{esc(ref)}"' if ref else ""
    return f"<td{title}>{quantity}</td>{value}"


def section_treatment(data: dict[str, Any]) -> str:
    rows = []
    for key, c in (data.get("cycles") or {}).items():
        base = ["cycles", key]
        times = ", ".join(
            number_span(data, [*base, "time_points_h", i], unit="h", cycle=key)
            for i in range(len(c.get("time_points_h") or []))
        ) or '<span class="none">none</span>'
        start = str(c.get("administration_start", ""))
        rows.append(
            f'<tr>{number_span(data, [*base, "cycle"], cycle=key, tag="td")}'
            f'<td><span data-path=\'{esc(json.dumps([*base, "administration_start"]))}\' '
            f'data-kind="datetime">{esc(start.replace("T", " "))}</span></td>'
            f'<td>{esc(c.get("radiopharmaceutical", ""))}</td><td>{esc(c.get("nuclide", ""))}</td>'
            f'{number_span(data, [*base, "administered_MBq"], unit="MBq", cycle=key, tag="td")}'
            f"<td>{times}</td></tr>"
        )
    if not rows:
        return '<h2 id="treatment">Treatment</h2><p class="none">No cycle in the results.</p>'
    return (
        '<section id="treatment"><h2>Treatment</h2><table class="treatment"><thead><tr><th>Cycle</th>'
        "<th>Administration start</th><th>Radiopharmaceutical</th><th>Nuclide</th>"
        '<th class="num">Administered activity (MBq)</th><th>Imaging time points (h after start)</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def latest_cycle_key(data: dict[str, Any]) -> str | None:
    keys = [k for k, c in (data.get("cycles") or {}).items() if c.get("structures")]
    return max(keys, key=int) if keys else None


def section_glance(data: dict[str, Any], lesions: set[str]) -> str:
    """Organs with a limit, latest cycle: cumulative value against the limit; and the twin's recommendation."""
    key = latest_cycle_key(data)
    parts = []
    if key is not None:
        rows = []
        for name, sr in data["cycles"][key]["structures"].items():
            if not isinstance(sr.get("limit"), dict):
                continue
            field, status = limit_status(data, key, name)
            val = (number_span(data, field_path(key, name, field), unit="Gy", structure=name, cycle=key)
                   if field else "–")
            rows.append(f'<tr><td>{esc(name)}</td>{_limit_cells(data, key, name)}'
                        f'<td class="num">{val}</td>{_status_cell(status)}</tr>')
        if rows:
            parts.append(
                f'<div class="card"><h3>Limits after cycle {esc(key)} (cumulative)</h3>'
                '<table class="glance-limits"><thead><tr><th>Structure</th><th>Limit on</th>'
                '<th class="num">Limit (Gy)</th><th class="num">Cumulative (Gy)</th><th>Status</th></tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table>"
                '<p class="note">Sources of the limits: see Methods.</p></div>'
            )
    if key is not None:
        lesion_rows = []
        for name in data["cycles"][key]["structures"]:
            if name not in lesions:
                continue
            lesion_rows.append(
                f"<tr><td>{esc(name)}</td>"
                + number_span(data, field_path(key, name, "mean_dose_Gy"), unit="Gy", structure=name, cycle=key,
                              tag="td")
                + number_span(data, field_path(key, name, "cumulative_dose_Gy"), unit="Gy", structure=name,
                              cycle=key, tag="td") + "</tr>")
        if lesion_rows:
            parts.append(
                f'<div class="card"><h3>Lesions, cycle {esc(key)}</h3><table class="glance-lesions"><thead><tr>'
                '<th>Lesion</th><th class="num">Mean dose (Gy)</th><th class="num">Cumulative (Gy)</th></tr>'
                f"</thead><tbody>{''.join(lesion_rows)}</tbody></table></div>")
    path = _recommendation_path(data)
    if path is not None:
        parent = ["twin", *path[:-1]]
        block = lookup(data, parent) or {}
        extra = []
        if is_number(block.get("cycle")):
            extra.append(f'for cycle {number_span(data, [*parent, "cycle"])}')
        if is_number(block.get("confidence")):
            extra.append(f'at confidence {number_span(data, [*parent, "confidence"])}')
        limiting = block.get("limiting_structure", block.get("limiting_organ"))
        rec_status = block.get("status")
        if isinstance(limiting, str):
            # at the search ceiling no limit binds: name the organ closest to its limit, not a "limiting" one
            extra.append(("closest to its limit: " if rec_status == "upper_bound" else "limited by ") + esc(limiting))
        if rec_status == "upper_bound":
            extra.append("no organ limit is reached below the highest activity considered")
        elif isinstance(rec_status, str):
            extra.append(f"status: {esc(rec_status)}")
        parts.append(
            '<div class="card"><h3>Twin: recommended next activity</h3>'
            f'<p class="big">{number_span(data, ["twin", *path], unit="MBq")} MBq</p>'
            + (f"<p>{', '.join(extra)}</p>" if extra else "")
            + '<p class="twin-label">Research use: model prediction, not a prescription.</p></div>'
        )
    if not parts:
        return ""
    return f'<section id="glance"><h2>At a glance</h2><div class="glance">{"".join(parts)}</div></section>'


def _recommendation_path(data: dict[str, Any]) -> list[str] | None:
    """Path (below ``data["twin"]``) of the twin's recommended next-cycle activity, read through
    :class:`~theratwin.twin.TwinResults` (the record SR and FHIR read too); None without one."""
    twin = data.get("twin")
    if not twin:
        return None
    rec = TwinResults.from_dict(twin).recommendation
    return None if rec is None or not math.isfinite(rec.administered_MBq) else ["recommendation", "administered_MBq"]


def _dosimetry_table(data: dict[str, Any], key: str, names: list[str]) -> str:
    """One row per structure for cycle ``key``: TIA, dose, DVH metrics, BED/EQD2, cumulative, limit, status."""
    cyc = (data.get("cycles") or {}).get(key) or {}
    structures = cyc.get("structures") or {}
    head = "".join(f'<th class="num">{h}<br><span class="unit">({u})</span></th>' for _, h, u in _STRUCTURE_COLUMNS)
    rows = []
    for name in [n for n in names if n in structures]:
        sr = structures[name]
        cells = []
        for field, _, unit in _STRUCTURE_COLUMNS:
            sd_field = {"tia_MBq_h": "tia_sd_MBq_h", "mean_dose_Gy": "mean_dose_sd_Gy"}.get(field)
            if sd_field and is_number(sr.get(sd_field)):
                # the "±" is drawn by CSS (.sd::before) so that the element holds the number only
                span = number_span(data, field_path(key, name, field), unit=unit, structure=name, cycle=key)
                span += number_span(data, field_path(key, name, sd_field), unit=unit, structure=name, cycle=key,
                                    css_class="num sd")
                cells.append(f'<td class="num">{span}</td>')
            else:
                cells.append(number_span(data, field_path(key, name, field), unit=unit, structure=name,
                                         cycle=key, tag="td"))
        model = sr.get("kinetic_model") or sr.get("tia_method") or "–"
        twin_note = ' <span class="sd">(twin estimate)</span>' if sr.get("estimated_by_twin") else ""
        _, status = limit_status(data, key, name)
        rows.append(
            f'<tr data-structure="{esc(name)}"><th>{esc(name)}{_resolution_flag(sr)}</th>'
            f'<td>{esc(model)}{twin_note}</td>{"".join(cells)}'
            f"{_limit_cells(data, key, name)}{_status_cell(status)}</tr>"
        )
    if not rows:
        return ""
    return (
        f'<div class="table-wrap"><table class="structure-table" data-cycle="{esc(key)}"><thead><tr>'
        f"<th>Structure</th><th>Model</th>{head}"
        '<th>Limit on</th><th class="num">Limit<br><span class="unit">(Gy)</span></th><th>Status</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _resolution_flag(sr: dict[str, Any]) -> str:
    """A marker for a structure below the resolution limit (``partial_volume.too_small``), with the numbers."""
    pv = sr.get("partial_volume") or {}
    if not pv.get("too_small"):
        return ""
    title = (f"largest part {float(pv.get('largest_part_mL', float('nan'))):.1f} mL &lt; (2 × FWHM)³ = "
             f"{float(pv.get('threshold_mL', float('nan'))):.1f} mL; dose as imaged "
             f"{float(sr.get('mean_dose_as_imaged_Gy', float('nan'))):.3g} Gy")
    return f' <span class="flag below-resolution" title="{title}">below resolution ‡</span>'


def section_dosimetry(data: dict[str, Any], names: list[str]) -> str:
    """Dosimetry tables: the latest cycle first (with cumulative values), then the earlier cycles."""
    latest = latest_cycle_key(data)
    if latest is None:
        return ""
    keys = sorted((k for k, c in (data.get("cycles") or {}).items() if c.get("structures")), key=int, reverse=True)
    parts = ['<section id="dosimetry"><h2>Dosimetry and radiobiology per structure</h2>']
    for k in keys:
        title = f"Cycle {esc(k)} and cumulative" + (" (this cycle)" if k == latest else "")
        parts.append(f'<h3>{title}</h3>{_dosimetry_table(data, k, names)}')
    parts.append(
        '<p class="note">TIA: time-integrated activity from administration to infinity (± 1 SD). D<sub>2%</sub>, '
        "D<sub>98%</sub>: minimum dose to the hottest 2 % / 98 % of the volume. Cumulative: sum over the cycles so "
        "far. Limits apply to the cumulative value of the quantity named. Mean doses are corrected for partial "
        "volume (the dose of the reported, recovery-corrected TIA; the voxel map's own value is kept as "
        "<em>mean_dose_as_imaged_Gy</em> in results.json). ‡ Below resolution: the structure is smaller than "
        "(2 × FWHM)³; its activity and dose rest on that correction, interpret them with caution.</p></section>"
    )
    return "".join(parts)
