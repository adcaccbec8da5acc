"""The HTML report: one self-contained file (CSS inlined, figures embedded as base64 PNG).

All numbers are read from the JSON form of the results (``Results.to_dict()`` after a JSON round trip, i.e.
exactly what ``results.json`` holds) and shown through :func:`~theratwin.report.format.number_span`, which
annotates each with its JSON path. Figures are drawn from the in-memory objects (maps, masks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

import numpy as np

from ..progress import ProgressCallback, report
from ..results import RESEARCH_USE_NOTICE, Results
from ..study import ImageVolume
from .figures import (
    dvh_figure,
    figure_png,
    mip_figure,
    png_data_uri,
    structure_colors,
    tac_figure,
)
from .format import esc, interval_span, lookup, number_span

__all__ = ["ReportConfig", "render_html", "results_json_data", "limit_status"]


@dataclass
class ReportConfig:
    """Settings of the report (plain data, JSON-serialisable).

    Attributes
    ----------
    title
        Document title (HTML ``<title>``, heading, DICOM Document Title).
    institution
        Shown under the title when set.
    pdf
        Also write ``report.pdf`` (WeasyPrint).
    dicom
        Also write the Encapsulated PDF DICOM object (needs ``pdf``).
    show_body_outline
        Outline the body contour on the projections (off: it frames every image and hides little).
    """

    title: str = "TheraTwin dosimetry report"
    institution: str = ""
    pdf: bool = True
    dicom: bool = True
    show_body_outline: bool = False


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


def results_json_data(results: Results) -> dict[str, Any]:
    """The results as ``results.json`` holds them (a JSON round trip, so floats are exactly the written ones)."""
    return json.loads(results.to_json())


def _read_package_text(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _field_path(cycle_key: str, structure: str, field: str) -> list[str]:
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


def _section_summary(data: dict[str, Any], results: Results, config: ReportConfig) -> str:
    study = data.get("study") or {}
    patient = results.study.patient if results.study is not None else None
    items = [
        ("Patient ID", esc(study.get("patient_id") or (patient.patient_id if patient else "–"))),
        ("Patient name", esc(str(patient.name).replace("^", " ").strip() if patient and patient.name else "–")),
        ("Birth date", esc(patient.birth_date.isoformat() if patient and patient.birth_date else "–")),
        ("Sex", esc(patient.sex if patient and patient.sex else "–")),
        ("Study UID", f'<span class="uid">{esc(study.get("study_uid") or "–")}</span>'),
        ("Report created", f'<span data-path=\'["created"]\'>{esc(data.get("created", ""))}</span>'),
        ("Software", f'TheraTwin <span data-path=\'["software","version"]\'>'
                     f'{esc((data.get("software") or {}).get("version", ""))}</span>'),
        ("Cycles analysed", esc(", ".join(str(k) for k in (data.get("cycles") or {})) or "–")),
    ]
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
    inst = f'<p class="subtitle">{esc(config.institution)}</p>' if config.institution else ""
    return (f'<header><h1>{esc(config.title)}</h1>{inst}'
            f'<p class="subtitle">Dosimetry, radiobiology and digital-twin prediction for radioligand therapy'
            f'</p><dl class="ids">{dl}</dl></header>')


def _section_treatment(data: dict[str, Any]) -> str:
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


def _latest_cycle_key(data: dict[str, Any]) -> str | None:
    keys = [k for k, c in (data.get("cycles") or {}).items() if c.get("structures")]
    return max(keys, key=int) if keys else None


def _section_glance(data: dict[str, Any], lesions: set[str]) -> str:
    """Organs with a limit, latest cycle: cumulative value against the limit; and the twin's recommendation."""
    key = _latest_cycle_key(data)
    parts = []
    if key is not None:
        rows = []
        for name, sr in data["cycles"][key]["structures"].items():
            if not isinstance(sr.get("limit"), dict):
                continue
            field, status = limit_status(data, key, name)
            val = (number_span(data, _field_path(key, name, field), unit="Gy", structure=name, cycle=key)
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
                + number_span(data, _field_path(key, name, "mean_dose_Gy"), unit="Gy", structure=name, cycle=key,
                              tag="td")
                + number_span(data, _field_path(key, name, "cumulative_dose_Gy"), unit="Gy", structure=name,
                              cycle=key, tag="td") + "</tr>")
        if lesion_rows:
            parts.append(
                f'<div class="card"><h3>Lesions, cycle {esc(key)}</h3><table class="glance-lesions"><thead><tr>'
                '<th>Lesion</th><th class="num">Mean dose (Gy)</th><th class="num">Cumulative (Gy)</th></tr>'
                f"</thead><tbody>{''.join(lesion_rows)}</tbody></table></div>")
    rec = _find_recommendation(data.get("twin"))
    if rec is not None:
        path, _ = rec
        parent = ["twin", *path[:-1]]
        block = lookup(data, parent) or {}
        extra = []
        if _is_number(block.get("cycle")):
            extra.append(f'for cycle {number_span(data, [*parent, "cycle"])}')
        if _is_number(block.get("confidence")):
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


# Keys that name the recommended activity itself inside a recommendation block, most specific first (other
# MBq figures there, such as a standard or maximum activity, are context, not the recommendation).
_RECOMMENDED_KEYS = ("recommended_activity_MBq", "recommended_MBq", "activity_MBq", "administered_MBq")


def _find_recommendation(twin: Any, path: tuple[str | int, ...] = ()) -> tuple[list[str | int], float] | None:
    """Path and value of the recommended activity (MBq) in the twin's output, whatever its exact schema.

    Looks for a number whose key mentions MBq, either itself named "recommended..." or inside a mapping
    named "recommend..." (preferring keys that mention the activity), depth first.
    """
    if not isinstance(twin, dict):
        return None
    for k, v in twin.items():
        kl = str(k).lower()
        if "recommend" in kl:
            if _is_number(v) and "mbq" in kl:
                return [*path, k], float(v)
            if isinstance(v, dict):
                numeric = [kk for kk, vv in v.items() if _is_number(vv)]
                for want in _RECOMMENDED_KEYS:
                    if want in numeric:
                        return [*path, k, want], float(v[want])
                keys = [kk for kk in numeric if "recommend" in str(kk).lower() and "mbq" in str(kk).lower()]
                if keys:
                    return [*path, k, keys[0]], float(v[keys[0]])
    for k, v in twin.items():
        if isinstance(v, dict):
            found = _find_recommendation(v, (*path, k))
            if found is not None:
                return found
    return None


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
            if sd_field and _is_number(sr.get(sd_field)):
                # the "±" is drawn by CSS (.sd::before) so that the element holds the number only
                span = number_span(data, _field_path(key, name, field), unit=unit, structure=name, cycle=key)
                span += number_span(data, _field_path(key, name, sd_field), unit=unit, structure=name, cycle=key,
                                    css_class="num sd")
                cells.append(f'<td class="num">{span}</td>')
            else:
                cells.append(number_span(data, _field_path(key, name, field), unit=unit, structure=name,
                                         cycle=key, tag="td"))
        model = sr.get("kinetic_model") or sr.get("tia_method") or "–"
        twin_note = ' <span class="sd">(twin estimate)</span>' if sr.get("estimated_by_twin") else ""
        _, status = limit_status(data, key, name)
        rows.append(
            f'<tr data-structure="{esc(name)}"><th>{esc(name)}</th><td>{esc(model)}{twin_note}</td>{"".join(cells)}'
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


def _section_dosimetry(data: dict[str, Any], names: list[str]) -> str:
    """Dosimetry tables: the latest cycle first (with cumulative values), then the earlier cycles."""
    latest = _latest_cycle_key(data)
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
        "far. Limits apply to the cumulative value of the quantity named.</p></section>"
    )
    return "".join(parts)


# Fit-quality figures worth a physicist's glance (others stay in results.json).
_FIT_QUALITY_KEYS = ("r_squared", "chi2_reduced")


def _fit_caption(data: dict[str, Any], name: str) -> str:
    """Model, TIA method, Akaike weights and fit quality per cycle, for a TAC's caption."""
    lines = []
    for key, c in (data.get("cycles") or {}).items():
        sr = (c.get("structures") or {}).get(name) or {}
        if not sr:
            continue
        items = [f"model {esc(sr.get('kinetic_model') or '–')}"]
        if sr.get("tia_method"):
            items.append(f"TIA {esc(sr['tia_method'])}")
        weights = sr.get("model_weights")
        if isinstance(weights, dict):
            vals = [f"{esc(k)} {number_span(data, _field_path(key, name, f'model_weights.{k}'), structure=name, cycle=key)}"
                    for k, v in weights.items() if _is_number(v) and "." not in str(k)]
            if len(vals) > 1:
                items.append("AICc weights " + ", ".join(vals))
        quality = sr.get("fit_quality")
        if isinstance(quality, dict):
            for k in _FIT_QUALITY_KEYS:
                if _is_number(quality.get(k)):
                    items.append(f"{k.replace('_', ' ')} "
                                 f"{number_span(data, _field_path(key, name, f'fit_quality.{k}'), structure=name, cycle=key)}")
        lines.append(f"<li>cycle {esc(key)}: {'; '.join(items)}</li>")
    return f'<ul class="fit-details">{"".join(lines)}</ul>' if lines else ""


def _section_structures(data: dict[str, Any], colors: dict[str, str], names: list[str]) -> tuple[str, int]:
    """Small multiples of the time-activity curves, one per structure, captioned with the chosen model."""
    parts = []
    n_fig = 0
    for name in names:
        per_cycle = []
        for key, c in (data.get("cycles") or {}).items():
            sr = (c.get("structures") or {}).get(name)
            if sr:
                per_cycle.append({"cycle": key, "nuclide": c.get("nuclide"), **sr})
        fig = tac_figure(name, per_cycle, color=colors.get(name, "#0072B2"))
        if fig is None:
            continue
        n_fig += 1
        parts.append(
            f'<figure class="plot tac" data-figure="tac" data-structure="{esc(name)}" id="tac-{esc(name)}">'
            f'<img alt="Time-activity curve of {esc(name)}" src="{png_data_uri(figure_png(fig))}">'
            f"<figcaption>{_fit_caption(data, name)}</figcaption></figure>"
        )
    if not parts:
        return "", 0
    return ('<section id="structures"><h2>Time-activity curves</h2><p class="note">Measured activity (± 1 SD), '
            "fitted model re-evaluated from the stored parameters, and ± 1 SD band (relative TIA uncertainty "
            f'applied to the curve).</p><div class="tac-grid">{"".join(parts)}</div></section>'), n_fig


def _section_images(results: Results, data: dict[str, Any], masks: dict[str, np.ndarray],
                    activity: ImageVolume | None, colors: dict[str, str]) -> str:
    key = _latest_cycle_key(data) or (str(min(results.cycles)) if results.cycles else None)
    panels: list[tuple[str, ImageVolume]] = []
    if activity is not None:
        panels.append(("Activity (first scan)", activity))
    elif key is not None and f"cycle{key}/tia" in results.maps:
        panels.append((f"TIA cycle {key}", results.maps[f"cycle{key}/tia"]))
    if key is not None and f"cycle{key}/dose" in results.maps:
        panels.append((f"Dose cycle {key}", results.maps[f"cycle{key}/dose"]))
    if len(results.cycles) > 1 and "cumulative/dose" in results.maps:
        panels.append(("Cumulative dose", results.maps["cumulative/dose"]))
    if not panels:
        return ""
    shape = panels[0][1].shape
    panels = [(t, v) for t, v in panels if v.shape == shape]
    fig = mip_figure(panels, {n: m for n, m in masks.items() if np.shape(m) == shape}, colors)
    if fig is None:
        return ""
    return (
        '<section id="images"><h2>Activity and dose: maximum-intensity projections</h2>'
        '<figure class="plot mip" data-figure="mip"><img alt="Coronal and axial maximum-intensity projections" '
        f'src="{png_data_uri(figure_png(fig, palette=False))}"><figcaption>Coronal (head up) and axial (anterior up) '
        "maximum-intensity projections on the reference SPECT grid; patient left on the viewer's right. "
        "Lines: projected structure outlines.</figcaption></figure></section>"
    )


def _section_dvh(results: Results, data: dict[str, Any], colors: dict[str, str]) -> str:
    curves = []
    for key, c in (data.get("cycles") or {}).items():
        for name, sr in (c.get("structures") or {}).items():
            if isinstance(sr.get("dvh"), dict):
                curves.append((name, int(key), sr["dvh"]))
    seg = results.study.segmentation if results.study is not None else None
    panels = None
    if seg is not None:
        roles = {st.name: st.role.value for st in seg.structures}
        if any(r == "lesion" for r in roles.values()):
            panels = {n: "lesions" if roles.get(n) == "lesion" else "organs and body" for n in roles}
    fig = dvh_figure(curves, colors, panels)
    if fig is None:
        return ""
    return (
        '<section id="dvh"><h2>Dose-volume histograms</h2><figure class="plot dvh" data-figure="dvh">'
        f'<img alt="Cumulative dose-volume histograms" src="{png_data_uri(figure_png(fig))}">'
        "<figcaption>Cumulative DVH (fraction of the structure volume receiving at least the dose): latest cycle "
        "solid, earlier cycles thin dashed.</figcaption></figure></section>"
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _scalar_html(data: dict[str, Any], path: list[str | int], value: Any, *, structure: str | None = None) -> str:
    if _is_number(value):
        return number_span(data, path, structure=structure)
    if isinstance(value, list) and all(_is_number(v) for v in value):
        if len(value) > 12:
            return '<span class="none">(series not shown)</span>'
        return ", ".join(number_span(data, [*path, i], structure=structure) for i in range(len(value)))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return esc(value if value is not None else "–")


# Unit suffixes of JSON keys (the project's naming rule) and how a header shows them.
_UNIT_SUFFIXES = (
    ("_Gy_per_MBq_h", "Gy/(MBq·h)"), ("_Gy_per_GBq", "Gy/GBq"), ("_MBq_h", "MBq·h"), ("_per_h", "1/h"),
    ("_Gy", "Gy"), ("_MBq", "MBq"), ("_GBq", "GBq"), ("_nmol", "nmol"), ("_ug", "µg"), ("_mL", "mL"),
    ("_g", "g"), ("_h", "h"), ("_mm", "mm"),
)


_ACRONYMS = {"tia": "TIA", "bed": "BED", "eqd2": "EQD2", "ntcp": "NTCP", "tcp": "TCP", "dvh": "DVH", "sd": "SD",
             "geud": "gEUD", "aicc": "AICc", "iov": "IOV", "cv": "CV"}


def _label(key: Any) -> str:
    """A readable, wrappable header for a JSON key: ``cumulative_bed_Gy`` -> ``cumulative bed (Gy)``."""
    text = str(key)
    unit = ""
    for suffix, shown in _UNIT_SUFFIXES:
        if text.endswith(suffix) and len(text) > len(suffix):
            text, unit = text[: -len(suffix)], shown
            break
    text = " ".join(_ACRONYMS.get(w, w) for w in text.split("_"))
    return esc(f"{text} ({unit})" if unit else text)


def _is_interval(v: Any) -> bool:
    """A summary of a predictive distribution: a central value and a ``low``-``high`` interval."""
    return (isinstance(v, dict) and _is_number(v.get("low")) and _is_number(v.get("high"))
            and (_is_number(v.get("mean")) or _is_number(v.get("median"))))


def _is_plain(v: Any) -> bool:
    return _is_scalar(v) or (isinstance(v, list) and all(_is_number(x) for x in v))


def _is_cell(v: Any) -> bool:
    """Renderable in one table cell: a scalar, a short numeric list, an interval or a small flat mapping."""
    return _is_plain(v) or _is_interval(v) or (
        isinstance(v, dict) and 0 < len(v) <= 8 and all(_is_plain(x) for x in v.values()))


def _cell_html(data: dict[str, Any], path: list[str | int], value: Any, *, structure: str | None = None,
               notes: list[str] | None = None) -> str:
    if _is_interval(value):
        centre = "mean" if _is_number(value.get("mean")) else "median"
        return interval_span(data, path, centre=centre, structure=structure)
    if isinstance(value, dict):
        bits = []
        for k, v in value.items():
            if isinstance(v, str) and len(v) > 60 and notes is not None:
                # long texts (references, notes) become numbered notes under the table
                if v not in notes:
                    notes.append(v)
                bits.append(f"{esc(k)} [{notes.index(v) + 1}]")
            else:
                bits.append(f"{esc(k)} {_scalar_html(data, [*path, k], v, structure=structure)}")
        return '<span class="compact">' + "; ".join(bits) + "</span>"
    return _scalar_html(data, path, value, structure=structure)


def _td(data: dict[str, Any], path: list[str | int], value: Any, *, structure: str | None = None,
        notes: list[str] | None = None) -> str:
    """A table cell; a number or an interval is annotated on the cell itself (fewer boxes to lay out)."""
    if _is_number(value):
        return number_span(data, path, structure=structure, tag="td")
    if _is_interval(value):
        centre = "mean" if _is_number(value.get("mean")) else "median"
        return interval_span(data, path, centre=centre, structure=structure, tag="td")
    return f"<td>{_cell_html(data, path, value, structure=structure, notes=notes)}</td>"


def _notes_html(notes: list[str]) -> str:
    if not notes:
        return ""
    return '<ol class="table-notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ol>"


def _matrix(data: dict[str, Any], path: list[str | int], rows: dict[str, dict[str, Any]], *,
            notes: list[str], transpose: bool = False, structures: list[str] | None = None) -> str:
    """A table of records. Rows are the record names; with ``transpose`` the records are columns and the rows
    are their keys (used when each record maps structure names to values)."""
    if transpose:
        row_names: list[str] = []
        for rec in rows.values():
            row_names += [k for k in rec if k not in row_names]
        order = structures or []
        row_names.sort(key=lambda n: order.index(n) if n in order else len(order))
        cols = list(rows)
        head = "".join(f"<th>{_label(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><th>{esc(r)}</th>" + "".join(
                _td(data, [*path, c, r], rows[c][r], structure=r, notes=notes) if r in rows[c] else "<td>–</td>"
                for c in cols) + "</tr>"
            for r in row_names)
    else:
        cols = []
        for name, rec in rows.items():
            # a column repeating the row key (e.g. "structure") says nothing new
            cols += [k for k, v in rec.items() if k not in cols and v != name]
        is_structure = bool(structures) and all(k in (structures or []) for k in rows)
        head = "".join(f"<th>{_label(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><th>{esc(k)}</th>" + "".join(
                _td(data, [*path, k, c], rec[c], structure=str(k) if is_structure else None, notes=notes)
                if c in rec else "<td>–</td>"
                for c in cols) + "</tr>"
            for k, rec in rows.items())
    return (f'<div class="table-wrap"><table class="generic"><thead><tr><th></th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _render_generic(data: dict[str, Any], path: list[str | int], value: Any, depth: int = 0,
                    skip: tuple[str, ...] = (), structures: list[str] | None = None,
                    notes: list[str] | None = None) -> str:
    """Render any JSON value whose schema is not fixed (the twin's output).

    Scalars and intervals go into a key/value table; mappings keyed by structure name become one table with a
    row per structure; other mappings of records one table with a row per record; anything deeper nests
    under a heading. Long texts inside cells become numbered notes (``notes``).
    """
    notes = [] if notes is None else notes
    structures = structures or []
    if depth > 6:
        return '<p class="none">(nested data not shown)</p>'
    if _is_cell(value) and not isinstance(value, dict):
        return f"<p>{_cell_html(data, path, value, notes=notes)}</p>"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and all(_is_cell(x) for x in v.values()) for v in value):
            cols: list[str] = []
            for v in value:
                cols += [k for k in v if k not in cols]
            head = "".join(f"<th>{_label(c)}</th>" for c in cols)
            body = "".join(
                "<tr>" + "".join(_td(data, [*path, i, c], v[c], notes=notes) if c in v else "<td>–</td>"
                                 for c in cols) + "</tr>"
                for i, v in enumerate(value))
            return f'<table class="generic"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        return "".join(_render_generic(data, [*path, i], v, depth + 1, structures=structures, notes=notes)
                       for i, v in enumerate(value))
    if not isinstance(value, dict):
        return f"<p>{esc(value)}</p>"
    items = {k: v for k, v in value.items() if k not in skip}
    singles = {k: v for k, v in items.items() if _is_plain(v) or _is_interval(v)}
    records = {k: v for k, v in items.items() if k not in singles and isinstance(v, dict) and v
               and all(_is_cell(x) for x in v.values())}
    rest = {k: v for k, v in items.items() if k not in singles and k not in records}
    by_structure = {k: v for k, v in records.items() if structures and all(n in structures for n in v)}
    others = {k: v for k, v in records.items() if k not in by_structure}
    out = []
    if singles:
        rows = "".join(
            f"<tr><th>{_label(k)}</th>{_td(data, [*path, k], v, notes=notes)}</tr>" for k, v in singles.items())
        out.append(f'<table class="kv">{rows}</table>')
    if by_structure:
        out.append(_matrix(data, path, by_structure, notes=notes, transpose=True, structures=structures))
    if len(others) >= 2 and len(set.intersection(*(set(v) for v in others.values()))) >= 1:
        out.append(_matrix(data, path, others, notes=notes, structures=structures))
    else:
        for k, v in others.items():
            # a header showing a JSON key carries the key's path, so that a reader can check it too
            head = "".join(f"<th data-key-path=\"{esc(json.dumps([*path, k, c]))}\">{_label(c)}</th>" for c in v)
            cells = "".join(_td(data, [*path, k, c], x, notes=notes) for c, x in v.items())
            out.append(f'<div class="table-wrap"><table class="generic"><caption>{_label(k)}</caption><thead><tr>'
                       f"{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table></div>")
    for k, v in rest.items():
        h = "h3" if depth == 0 else "h4"
        title = f"cycle {k}" if str(k).isdigit() else _label(k)
        out.append(f'<div class="twin-part"><{h}>{title}</{h}>'
                   f"{_render_generic(data, [*path, k], v, depth + 1, structures=structures, notes=notes)}</div>")
    return "".join(out)


# Reading order of the twin's output blocks (any other block follows, in its own order).
_TWIN_ORDER = ("recommendation", "recommended_activity", "prediction", "predictions", "forecast", "forecasts",
               "estimates", "config", "model")
_TWIN_TITLES = {
    "recommendation": "Recommended activity for the next cycle",
    "prediction": "Prediction for the next cycle",
    "predictions": "Predictions",
    "forecast": "Risk forecasts (toxicity and response)",
    "forecasts": "Risk forecasts (toxicity and response)",
    "estimates": "Twin estimates for sparsely imaged cycles",
    "config": "Twin settings",
    "model": "Twin model",
}


def _section_twin(data: dict[str, Any], structures: list[str]) -> str:
    twin = data.get("twin")
    if not twin:
        body = '<p class="none">The digital-twin stage did not run or produced no prediction.</p>'
    elif not isinstance(twin, dict):
        body = _render_generic(data, ["twin"], twin, structures=structures)
    else:
        keys = [k for k in _TWIN_ORDER if k in twin] + [k for k in twin if k not in _TWIN_ORDER]
        parts = []
        for k in keys:
            v = twin[k]
            if k == "notice":
                continue  # the same research-use notice is shown in the label above
            # per-structure priors are long and unchanged between patients: they stay in results.json
            skip = ("structures", "notice") if k == "model" else ("notice",)
            title = _TWIN_TITLES.get(k, k)
            if _is_plain(v) or _is_interval(v):
                parts.append(f'<table class="kv"><tr><th>{_label(k)}</th>{_td(data, ["twin", k], v)}</tr></table>')
            else:
                notes: list[str] = []
                inner = _render_generic(data, ["twin", k], v, depth=1, skip=skip, structures=structures, notes=notes)
                parts.append(f'<div class="twin-part" id="twin-{esc(k)}"><h3>{esc(title)}</h3>{inner}'
                             f"{_notes_html(notes)}</div>")
        body = "".join(parts)
    return (
        '<section id="twin"><h2>Digital twin: next-cycle prediction, recommendation and risk forecasts</h2>'
        '<p class="twin-label">RESEARCH USE ONLY — model predictions; intervals are prediction intervals from '
        "the posterior (mean [low–high]); not validated for treatment decisions.</p>" + body + "</section>"
    )


def _section_warnings(data: dict[str, Any]) -> str:
    """Warnings and errors in a table, most severe first; information notes in a compact list after it.

    Identical messages of one stage and cycle are grouped over structures.
    """
    warnings = data.get("warnings") or []
    if not warnings:
        return '<section id="warnings"><h2>Warnings</h2><p class="none">No warning was raised.</p></section>'
    order = {"error": 0, "warning": 1, "info": 2}
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for i, w in enumerate(warnings):
        key = (str(w.get("severity", "warning")), str(w.get("stage", "")), str(w.get("cycle", "")),
               str(w.get("message", "")))
        groups.setdefault(key, []).append(i)
    rows, infos = [], []
    for (sev, stage, _, message), idx in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 1), kv[1][0])):
        first = warnings[idx[0]]
        cyc = number_span(data, ["warnings", idx[0], "cycle"]) if _is_number(first.get("cycle")) else ""
        structures = ", ".join(esc(warnings[i].get("structure")) for i in idx if warnings[i].get("structure"))
        if sev == "info":
            where = " · ".join(x for x in (f"cycle {cyc}" if cyc else "", structures) if x)
            infos.append(f"<li><b>{esc(stage)}</b>{' (' + where + ')' if where else ''}: {esc(message)}</li>")
            continue
        rows.append(
            f'<tr class="sev-{esc(sev)}"><td class="sev-{esc(sev)}">{esc(sev)}</td><td>{esc(stage)}</td>'
            f'<td class="num">{cyc}</td><td>{esc(message)}</td><td class="structures">{structures}</td></tr>'
        )
    table = (
        '<table class="warnings"><thead><tr><th>Severity</th><th>Stage</th><th>Cycle</th><th>Message</th>'
        f"<th>Structures</th></tr></thead><tbody>{''.join(rows)}</tbody></table>" if rows
        else '<p class="none">No warning or error was raised.</p>'
    )
    info_html = (f'<h3>Notes from the run</h3><ul class="info-notes">{"".join(infos)}</ul>' if infos else "")
    return f'<section id="warnings"><h2>Warnings</h2>{table}{info_html}</section>'


def _limit_sources(data: dict[str, Any]) -> str:
    """Each structure's limit with its note and reference, as stored with the latest cycle's results."""
    key = _latest_cycle_key(data)
    if key is None:
        return ""
    items = []
    for name, sr in data["cycles"][key]["structures"].items():
        lim = sr.get("limit")
        if not isinstance(lim, dict):
            continue
        value = number_span(data, ["cycles", key, "structures", name, "limit", "value_Gy"], unit="Gy",
                            structure=name, cycle=key)
        risk = " (with risk factors)" if lim.get("risk_factors") else ""
        text = " ".join(esc(lim[k]) for k in ("note", "reference") if lim.get(k))
        items.append(f"<li><b>{esc(name)}</b>: cumulative {esc(lim.get('quantity', ''))} ≤ {value} Gy{risk}. "
                     f"{text}</li>")
    return f'<h3>Limits</h3><ul class="limit-refs">{"".join(items)}</ul>' if items else ""


def _section_methods(data: dict[str, Any]) -> str:
    methods = data.get("methods") or []
    software = data.get("software") or {}
    refs: list[str] = []
    blocks = []
    for i, m in enumerate(methods):
        params = m.get("parameters") or {}
        pnotes: list[str] = []
        ptab = (_render_generic(data, ["methods", i, "parameters"], params, depth=1, notes=pnotes)
                + _notes_html(pnotes)) if params else ""
        for r in m.get("references") or []:
            if r not in refs:
                refs.append(r)
        nums = ", ".join(f"[{refs.index(r) + 1}]" for r in m.get("references") or [])
        blocks.append(
            f'<div class="method"><h4>{esc(m.get("stage", ""))}: {esc(m.get("method", ""))} '
            f'<span class="muted">({esc(m.get("software", "TheraTwin"))} {esc(m.get("version", ""))})</span> '
            f"{esc(nums)}</h4>{ptab}</div>"
        )
    if not blocks:
        blocks.append('<p class="none">No method was recorded.</p>')
    blocks.append(_limit_sources(data))
    ref_html = ("<h3>References</h3><ol class=\"refs\">" + "".join(f"<li>{esc(r)}</li>" for r in refs) + "</ol>"
                if refs else "")
    return (
        '<section id="methods"><h2>Methods, parameters and software</h2>'
        f'<p>Software: {esc(software.get("name", "TheraTwin"))} '
        f'<span data-path=\'["software","version"]\'>{esc(software.get("version", ""))}</span>; schema '
        f'{esc(data.get("schema", ""))}.</p>' + "".join(blocks) + ref_html + "</section>"
    )


def _lesions(results: Results) -> set[str]:
    """Names of the structures whose role is lesion (from the segmentation's coded kinds)."""
    seg = results.study.segmentation if results.study is not None else None
    return {st.name for st in seg.structures if st.is_lesion} if seg is not None else set()


def _ordered_structures(results: Results) -> list[str]:
    """Structures in reading order: organs at risk, other organs, lesions, then the body."""
    names = results.structure_names()
    seg = results.study.segmentation if results.study is not None else None
    if seg is None:
        return names
    rank = {"organ_at_risk": 0, "organ": 1, "lesion": 2, "body": 3}
    roles = {st.name: rank.get(st.role.value, 1) for st in seg.structures}
    return sorted(names, key=lambda n: (roles.get(n, 1), names.index(n)))


def _masks_for(results: Results, masks: dict[str, np.ndarray] | None, shape: tuple[int, int, int] | None,
               config: ReportConfig) -> dict[str, np.ndarray]:
    seg = results.study.segmentation if results.study is not None else None
    body = {s.name for s in seg.structures if s.role.value == "body"} if seg is not None else {"body"}
    if masks is None and seg is not None and results.maps and shape is not None:
        geom = next(v.geometry for v in results.maps.values() if v.shape == shape)
        masks = {s.name: seg.fractional_mask(s.name, geom) for s in seg.structures}
    masks = dict(masks or {})
    if not config.show_body_outline:
        masks = {k: v for k, v in masks.items() if k not in body}
    return masks


def render_html(results: Results, *, masks: dict[str, np.ndarray] | None = None,
                activity: ImageVolume | None = None, config: ReportConfig | None = None,
                progress: ProgressCallback | None = None) -> str:
    """Render the report as one self-contained HTML document.

    Parameters
    ----------
    results
        The run's results (numbers are taken from their JSON form, as in ``results.json``).
    masks
        ``{structure: mask (z, y, x)}`` on the grid of the maps (e.g. ``ctx.state["masks"]``); by default the
        study's segmentation resampled to that grid.
    activity
        Activity-concentration volume (Bq/mL) on the grid of the maps for the projections; by default the
        latest cycle's TIA map.
    config
        Report settings.
    progress
        Progress callback (fraction, message).

    Returns
    -------
    str
        The HTML text (UTF-8; figures embedded as ``data:image/png;base64`` URIs).
    """
    cfg = config or ReportConfig()
    data = results_json_data(results)
    report(progress, 0.0, "report: collecting results")
    names = _ordered_structures(results)
    seg = results.study.segmentation if results.study is not None else None
    colors = structure_colors(list(dict.fromkeys([*names, *(seg.names if seg else [])])))
    shape = activity.shape if activity is not None else (
        next(iter(results.maps.values())).shape if results.maps else None)
    mask_map = _masks_for(results, masks, shape, cfg)
    report(progress, 0.1, "report: time-activity curves")
    struct_html, _ = _section_structures(data, colors, names)
    report(progress, 0.6, "report: projections and DVH")
    parts = [
        _section_summary(data, results, cfg),
        _section_glance(data, _lesions(results)),
        _section_treatment(data),
        _section_warnings(data),
        _section_dosimetry(data, names),
        struct_html,
        _section_images(results, data, mask_map, activity, colors),
        _section_dvh(results, data, colors),
        _section_twin(data, names),
        _section_methods(data),
    ]
    titles = {"glance": "At a glance", "treatment": "Treatment", "warnings": "Warnings",
              "dosimetry": "Dosimetry", "structures": "Time-activity curves", "images": "Projections",
              "dvh": "DVH", "twin": "Twin prediction", "methods": "Methods"}
    present = [k for k in titles if any(f'<section id="{k}"' in p for p in parts if p)]
    nav = ('<nav class="toc">' + " · ".join(f'<a href="#{k}">{titles[k]}</a>' for k in present) + "</nav>")
    parts.insert(1, nav)
    page = Template(_read_package_text("report.html")).substitute(
        title=esc(cfg.title), css=_read_package_text("report.css"), notice=esc(RESEARCH_USE_NOTICE),
        version=esc(data.get("software", {}).get("version", "")), body="\n".join(p for p in parts if p),
    )
    report(progress, 1.0, "report: HTML done")
    return page
