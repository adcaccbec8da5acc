"""The report's first page: what the therapy team decides on, readable in two minutes.

Patient and cycles given; the plan for the remaining cycles with its joint confidence and what binds it; the
cumulative organ doses against their limits (delivered so far, predicted to the end of the plan); the lesion
doses; the warnings that matter. Every number is read from ``results.json`` and annotated with its JSON path
(:mod:`theratwin.report.format`); the page ends with a page break, everything else is the appendix.
"""

from __future__ import annotations

import re
from typing import Any

from ..results import Results
from ._dosimetry import field_path, latest_cycle_key, section_glance
from ._generic import is_number
from .figures import figure_png, limits_figure, png_data_uri
from .format import NumberStyle, esc, interval_span, lookup, number_span

__all__ = ["section_first_page"]

# Cumulative field of the dosimetry results a limit on each quantity is compared with.
_DELIVERED_FIELD = {"bed": "cumulative_bed_Gy", "eqd2": "cumulative_eqd2_Gy", "dose": "cumulative_dose_Gy"}
_QUANTITY = {"bed": "BED", "eqd2": "EQD2", "dose": "dose"}
_MAX_LESIONS = 8
_MAX_WARNINGS = 4
_PROBABILITY = NumberStyle(significant=2, min_decimals=2, max_decimals=4)


def _created(value: Any) -> str:
    """The creation time of the results, to the minute, in UTC (the exact value is in the appendix)."""
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value or "–")
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo is not None else "")


def _patient_block(data: dict[str, Any], results: Results, title: str, institution: str) -> str:
    study = data.get("study") or {}
    patient = results.study.patient if results.study is not None else None
    cycles = data.get("cycles") or {}
    rph = next((c.get("radiopharmaceutical") for c in cycles.values() if c.get("radiopharmaceutical")), "")
    nuclide = next((c.get("nuclide") for c in cycles.values() if c.get("nuclide")), "")
    given = []
    for key, c in sorted(cycles.items(), key=lambda kv: int(kv[0])):
        start = str(c.get("administration_start", ""))[:10]
        given.append(f'<li>cycle {esc(key)}: {number_span(data, ["cycles", key, "administered_MBq"], unit="MBq")} MBq'
                     f' <span class="muted">({esc(start)})</span></li>')
    items = [
        ("Patient ID", esc(study.get("patient_id") or (patient.patient_id if patient else "–"))),
        ("Name", esc(str(patient.name).replace("^", " ").strip() if patient and patient.name else "–")),
        ("Birth date / sex", esc(f"{patient.birth_date.isoformat() if patient and patient.birth_date else '–'} / "
                                 f"{patient.sex if patient and patient.sex else '–'}")),
        ("Therapy", esc(f"{rph} ({nuclide})")),
        ("Report created", f'<span class="created">{esc(_created(data.get("created")))}</span>'),
    ]
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
    inst = f'<p class="subtitle">{esc(institution)}</p>' if institution else ""
    return (f'<header class="first-header"><h1>{esc(title)}</h1>{inst}<dl class="ids">{dl}'
            f'<div class="cycles-given"><dt>Cycles given</dt><dd><ul>{"".join(given)}</ul></dd></div></dl>'
            f'{_alerts(results)}</header>')


def _alerts(results: Results) -> str:
    """First-page box: results accepted despite a failed plausibility check, and other errors (never hidden
    below the fold)."""
    serious = [w for w in results.warnings if w.stage == "plausibility" or w.severity == "error"]
    if not serious:
        return ""
    items = "".join(f"<li><b>{esc(w.stage)}</b>: {esc(w.message)}</li>" for w in serious)
    return ('<div class="alert" role="alert"><p><b>Check before use:</b> these results failed a plausibility '
            f'check or carry an error and were written because the run was told to proceed.</p><ul>{items}</ul>'
            '</div>')


def _plan_block(data: dict[str, Any]) -> str:
    plan = lookup(data, ["twin", "plan"])
    if not isinstance(plan, dict):
        return ('<div class="card plan"><h2>Plan for the remaining cycles</h2><p class="none">The digital twin made no '
                "plan (see the warnings in the appendix).</p></div>")
    base = ["twin", "plan"]
    acts = plan.get("activities_MBq") or {}
    protocol = plan.get("protocol") or {}
    if acts:
        cycles = sorted(acts, key=int)
        same = max(acts.values()) - min(acts.values()) < 1.0
        span = f"cycle {cycles[0]}" if len(cycles) == 1 else f"cycles {cycles[0]}–{cycles[-1]}"
        if same:
            each = f'{number_span(data, [*base, "activities_MBq", cycles[0]], unit="MBq")} MBq each'
        else:
            each = " / ".join(number_span(data, [*base, "activities_MBq", c], unit="MBq") for c in cycles) + " MBq"
        head = (f'<p class="big">{number_span(data, [*base, "n_cycles_planned"])} more '
                f'cycle{"s" if len(cycles) > 1 else ""} ({span}): {each}</p>')
    else:
        head = ('<p class="big">No further cycle</p>' if plan.get("status") != "protocol_complete"
                else '<p class="big">Protocol complete: no further cycle</p>')
    binding = plan.get("binding_constraint", "")
    bind_text = (f"the protocol ({esc(protocol.get('name', ''))})" if binding == "the protocol"
                 else f"<b>{esc(binding)}</b> (organ-at-risk limit)")
    lines = [
        f'<p>Probability that every organ at risk stays within its limit at the end of the plan: '
        f'{number_span(data, [*base, "probability_within_limits"], style=_PROBABILITY)} (required ≥ '
        f'{number_span(data, [*base, "confidence"], style=_PROBABILITY)}).</p>',
        f"<p>What binds the plan: {bind_text}.</p>",
    ]
    sens = plan.get("sensitivity") or {}
    if is_number(sens.get("limit_increase_Gy")) and isinstance(sens.get("next_step"), dict):
        lines.append(
            f'<p>What would change it: a limit on {esc(sens.get("organ", ""))} higher by '
            f'{number_span(data, [*base, "sensitivity", "limit_increase_Gy"], unit="Gy")} Gy would allow '
            f'{number_span(data, [*base, "sensitivity", "next_step", "cycles"])} cycle(s) at '
            f'{number_span(data, [*base, "sensitivity", "next_step", "activity_MBq"], unit="MBq")} MBq.</p>')
    elif sens.get("organ") and is_number(sens.get("fraction_of_limit_at_confidence")):
        lines.append(
            f'<p>Closest to its limit: {esc(sens["organ"])}, its quantile at the plan\'s confidence at '
            f'{number_span(data, [*base, "sensitivity", "fraction_of_limit_at_confidence"], style=_PROBABILITY)}'
            " of the limit.</p>")
    tumour = plan.get("tumour_dose_Gy")
    if isinstance(tumour, dict):
        lines.append(f'<p>Expected whole-tumour absorbed dose at the end of the plan (all cycles, mass-weighted over '
                     f'lesions): {interval_span(data, [*base, "tumour_dose_Gy"])} Gy (mean [90 % interval]).</p>')
    alt = []
    for key, a in (plan.get("alternatives") or {}).items():
        if not isinstance(a, dict) or not is_number(a.get("probability_within_limits")):
            continue
        a_acts = a.get("activities_MBq") or {}
        what = (f'{len(a_acts)} × {number_span(data, [*base, "alternatives", key, "activities_MBq", next(iter(a_acts))], unit="MBq")} MBq'
                if a_acts and max(a_acts.values()) - min(a_acts.values()) < 1.0 else
                " / ".join(number_span(data, [*base, "alternatives", key, "activities_MBq", c], unit="MBq") for c in a_acts)
                + " MBq" if a_acts else "no cycle")
        alt.append(f"{esc(key)}: {what}, probability "
                   f'{number_span(data, [*base, "alternatives", key, "probability_within_limits"], style=_PROBABILITY)}')
    alt_html = f'<p class="alternatives">Alternatives — {"; ".join(alt)}.</p>' if alt else ""
    return (f'<div class="card plan" id="plan"><h2>Plan for the remaining cycles</h2>{head}{"".join(lines)}{alt_html}'
            '<p class="twin-label">Research use: a model\'s proposal within the protocol, not a prescription.</p></div>')


def _organ_block(data: dict[str, Any]) -> str:
    plan = lookup(data, ["twin", "plan"])
    organs = (plan or {}).get("organs") if isinstance(plan, dict) else None
    key = latest_cycle_key(data)
    if not organs:  # no plan (the twin did not run): the measured cumulative values against the limits
        return section_glance(data, set())
    rows, fig_rows = [], []
    base = ["twin", "plan", "organs"]
    for name, o in organs.items():
        q = str(o.get("quantity", "")).lower()
        field = _DELIVERED_FIELD.get(q)
        delivered_path = field_path(key, name, field) if key is not None and field else None
        delivered = lookup(data, delivered_path) if delivered_path else None
        end = o.get("end_of_plan_Gy") or {}
        fig_rows.append({"label": f"{name} ({_QUANTITY.get(q, q)})", "limit_Gy": o.get("limit_Gy"),
                         "delivered_Gy": delivered if is_number(delivered) else None,
                         "end_mean_Gy": end.get("mean"), "end_low_Gy": end.get("low"), "end_high_Gy": end.get("high"),
                         "quantile_Gy": o.get("quantile_at_confidence_Gy")})
        delivered_html = (number_span(data, delivered_path, unit="Gy", structure=name, cycle=key, tag="td")
                          if delivered_path else '<td class="num missing">–</td>')
        rows.append(
            f'<tr data-structure="{esc(name)}"><th>{esc(name)}</th><td>{esc(_QUANTITY.get(q, q))}</td>'
            f'{number_span(data, [*base, name, "limit_Gy"], unit="Gy", structure=name, tag="td")}'
            f"{delivered_html}"
            f'{interval_span(data, [*base, name, "end_of_plan_Gy"], tag="td", css_class="num interval", structure=name)}'
            f'{number_span(data, [*base, name, "quantile_at_confidence_Gy"], unit="Gy", structure=name, tag="td")}'
            f'{number_span(data, [*base, name, "probability_over_limit"], style=_PROBABILITY, structure=name, tag="td")}'
            "</tr>")
    conf = (plan or {}).get("confidence", 0.9)
    fig = limits_figure(fig_rows, confidence=float(conf) if is_number(conf) else 0.9)
    img = ""
    if fig is not None:
        img = ('<figure class="plot limits" data-figure="limits"><img alt="Cumulative organ doses against their limits" '
               f'src="{png_data_uri(figure_png(fig))}"><figcaption>In % of each organ\'s limit: delivered so far '
               "(measured, dark), predicted at the end of the plan (light, 90 % prediction interval) and the quantile "
               "the plan keeps under the limit (diamond).</figcaption></figure>")
    pct = f"{100 * float(conf):.0f} %" if is_number(conf) else "plan"
    table = (
        '<table class="organ-limits"><colgroup><col style="width:23%"><col style="width:9%"><col style="width:9%">'
        '<col style="width:13%"><col style="width:22%"><col style="width:12%"><col style="width:12%"></colgroup>'
        '<thead><tr><th>Organ at risk</th><th>Limit on</th><th class="num">Limit</th>'
        f'<th class="num">Delivered (to cycle {esc(key)})</th><th class="num">End of plan: mean [90 % interval]</th>'
        f'<th class="num">{pct} quantile</th><th class="num">P(over limit)</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Absorbed dose, BED and EQD2 in Gy, cumulative over all cycles. Delivered: measured '
        "(dosimetry); end of plan: predicted by the twin for the plan above.</p>")
    return f'<div class="organs"><h2>Organs at risk: cumulative dose against the limit</h2>{img}{table}</div>'


def _lesion_block(data: dict[str, Any], lesions: set[str]) -> str:
    key = latest_cycle_key(data)
    if key is None:
        return ""
    plan = lookup(data, ["twin", "plan"]) or {}
    names = [n for n in data["cycles"][key]["structures"] if n in lesions]
    if not names:
        return ""
    rows = []
    for name in names[:_MAX_LESIONS]:
        end = (interval_span(data, ["twin", "plan", "lesion_dose_Gy", name], tag="td", css_class="num interval",
                             structure=name)
               if isinstance((plan.get("lesion_dose_Gy") or {}).get(name), dict) else '<td class="num missing">–</td>')
        rows.append(
            f"<tr><th>{esc(name)}</th>"
            + number_span(data, field_path(key, name, "mean_dose_Gy"), unit="Gy", structure=name, cycle=key, tag="td")
            + number_span(data, field_path(key, name, "cumulative_dose_Gy"), unit="Gy", structure=name, cycle=key,
                          tag="td")
            + end + "</tr>")
    more = (f'<p class="note">{len(names) - _MAX_LESIONS} more lesion(s) in the appendix.</p>'
            if len(names) > _MAX_LESIONS else "")
    return ('<div class="lesions"><h2>Lesions: absorbed dose</h2><table class="lesion-doses"><thead><tr><th>Lesion</th>'
            f'<th class="num">Cycle {esc(key)} (Gy)</th><th class="num">Cumulative so far (Gy)</th>'
            '<th class="num">End of plan, mean [90 %] (Gy)</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{more}</div>")


def _warning_block(data: dict[str, Any]) -> str:
    """Warnings and errors (not the information notes), grouped over structures, most severe first."""
    warnings = [w for w in data.get("warnings") or [] if w.get("severity") in ("error", "warning")]
    if not warnings:
        return ('<div class="first-warnings"><h2>Warnings</h2><p class="none">No warning (information notes: '
                "appendix).</p></div>")
    # one line per kind of warning: messages that differ only in the structure named and its figures (e.g. every
    # structure below the resolution limit) are one group, shown with its first message and the structures
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for w in sorted(warnings, key=lambda w: 0 if w.get("severity") == "error" else 1):
        kind = re.sub(r"'[^']*'|[-+]?\d[\d.,]*(e[-+]?\d+)?", "#", str(w.get("message", "")))
        groups.setdefault((str(w.get("severity")), str(w.get("stage", "")), kind), []).append(w)
    items = []
    for (sev, stage, _), ws in list(groups.items())[:_MAX_WARNINGS]:
        names = list(dict.fromkeys(str(w["structure"]) for w in ws if w.get("structure")))
        where = ", ".join(names)
        message = str(ws[0].get("message", ""))
        if len(set(str(w.get("message", "")) for w in ws)) > 1:
            message += f" (likewise for {len(names) - 1} more)" if len(names) > 1 else " (and in other cycles)"
        items.append(f'<li class="sev-{esc(sev)}"><b>{esc(sev)}</b> ({esc(stage)}{", " + esc(where) if where else ""}):'
                     f" {esc(message)}</li>")
    more = (f'<p class="note">{len(groups) - _MAX_WARNINGS} more in the appendix.</p>'
            if len(groups) > _MAX_WARNINGS else "")
    return f'<div class="first-warnings"><h2>Warnings</h2><ul>{"".join(items)}</ul>{more}</div>'


def section_first_page(data: dict[str, Any], results: Results, *, title: str, institution: str,
                       lesions: set[str]) -> str:
    """The first page (see the module docstring)."""
    return ('<section id="first-page" class="first-page">'
            + _patient_block(data, results, title, institution) + _plan_block(data) + _organ_block(data)
            + _lesion_block(data, lesions) + _warning_block(data) + "</section>")
