"""The report's sections of free-form content: the digital twin's output, the warnings and the methods."""

from __future__ import annotations

from typing import Any

from ._dosimetry import latest_cycle_key
from ._generic import is_interval, is_number, is_plain, label, notes_html, render_generic, td
from .format import esc, number_span

__all__ = ["section_twin", "section_warnings", "section_methods"]


# Reading order of the twin's output blocks (any other block follows, in its own order).
_TWIN_ORDER = ("plan", "conflicts", "recommendation", "recommended_activity", "prediction", "predictions", "forecast",
               "forecasts", "estimates", "trajectory", "config", "model")
_TWIN_TITLES = {
    "plan": "Plan for the remaining cycles (details)",
    "conflicts": "Prior-data conflicts",
    "recommendation": "Largest activity for the next cycle alone (all limits jointly)",
    "trajectory": "Cumulative trajectory at the standard activity",
    "prediction": "Prediction for the next cycle",
    "predictions": "Predictions",
    "forecast": "Risk forecasts (toxicity and response)",
    "forecasts": "Risk forecasts (toxicity and response)",
    "estimates": "Twin estimates for sparsely imaged cycles",
    "config": "Twin settings",
    "model": "Twin model",
}


def section_twin(data: dict[str, Any], structures: list[str]) -> str:
    twin = data.get("twin")
    if not twin:
        body = '<p class="none">The digital-twin stage did not run or produced no prediction.</p>'
    elif not isinstance(twin, dict):
        body = render_generic(data, ["twin"], twin, structures=structures)
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
            if is_plain(v) or is_interval(v):
                parts.append(f'<table class="kv"><tr><th>{label(k)}</th>{td(data, ["twin", k], v)}</tr></table>')
            else:
                notes: list[str] = []
                inner = render_generic(data, ["twin", k], v, depth=1, skip=skip, structures=structures, notes=notes)
                parts.append(f'<div class="twin-part" id="twin-{esc(k)}"><h3>{esc(title)}</h3>{inner}'
                             f"{notes_html(notes)}</div>")
        body = "".join(parts)
    return (
        '<section id="twin"><h2>Digital twin: plan, prediction, prior-data conflicts and risk forecasts</h2>'
        '<p class="twin-label">RESEARCH USE ONLY — model predictions; intervals are prediction intervals from '
        "the posterior (mean [low–high]); not validated for treatment decisions.</p>" + body + "</section>"
    )


def section_warnings(data: dict[str, Any]) -> str:
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
        cyc = number_span(data, ["warnings", idx[0], "cycle"]) if is_number(first.get("cycle")) else ""
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
    key = latest_cycle_key(data)
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


def section_methods(data: dict[str, Any]) -> str:
    methods = data.get("methods") or []
    software = data.get("software") or {}
    refs: list[str] = []
    blocks = []
    for i, m in enumerate(methods):
        params = m.get("parameters") or {}
        pnotes: list[str] = []
        ptab = (render_generic(data, ["methods", i, "parameters"], params, depth=1, notes=pnotes)
                + notes_html(pnotes)) if params else ""
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
