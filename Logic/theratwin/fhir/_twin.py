"""The digital twin's forecasts: predicted ``Observation`` panels, ``RiskAssessment`` and ``CarePlan``.

Everything here is a prediction, clearly marked as one: status ``preliminary`` (``draft`` for the CarePlan),
method and ``meta.tag`` "twin-prediction", 90 % intervals, and the research-use notice. The CarePlan carries the
twin's plan for the remaining cycles (one proposed activity per planned cycle); a structure's prior–data
conflicts are components (``prior-data-conflict``, in SD) and notes of its predicted panel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..results import RESEARCH_USE_NOTICE
from ..study import StructureKind, structure_kind
from ._common import PREDICTED_TAG, Analysis, finite, interval, interval_component
from ._imaging import ImagingRefs
from ._observations import OBSERVATION_SYSTEM, body_site
from ._patient import medication_concept
from .codes import IDENTIFIER_BASE, OBSERVATION_CATEGORY_SYSTEM, coding, quantity

__all__ = ["add_predicted_observations", "add_risk_assessments", "add_care_plan"]


#: Predicted quantities of the twin (``results.twin["prediction"]["structures"][name]``): key -> (code, unit).
_PREDICTED_QUANTITIES = {
    "tia_MBq_h": ("predicted-time-integrated-activity", "MBq.h"),
    "dose_Gy": ("predicted-absorbed-dose", "Gy"),
    "bed_Gy": ("predicted-biologically-effective-dose", "Gy"),
    "cumulative_dose_Gy": ("predicted-cumulative-absorbed-dose", "Gy"),
    "cumulative_bed_Gy": ("predicted-cumulative-biologically-effective-dose", "Gy"),
    "cumulative_eqd2_Gy": ("predicted-cumulative-equieffective-dose-2gy", "Gy"),
}


def _predicted_components(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Components (value and interval) of one structure's predicted quantities."""
    comps: list[dict[str, Any]] = []
    for key, (code, unit) in _PREDICTED_QUANTITIES.items():
        if key not in values:
            continue
        central, low, high = interval(values[key])
        if central is None:
            continue
        comps.append({"code": {"coding": [coding(code)]}, "valueQuantity": quantity(central, unit)})
        if low is not None and high is not None:
            v = values[key]
            level = finite(v.get("level")) if isinstance(v, Mapping) else None
            comps.append(interval_component(code, unit, low, high, level))
    return comps


def _twin_predictions(twin: Mapping[str, Any] | None) -> list[tuple[int, float | None, str, Mapping[str, Any]]]:
    """[(cycle, administered_MBq, structure, values)] from ``results.twin``'s prediction block(s)."""
    if not twin:
        return []
    block = twin.get("prediction", twin.get("predictions"))
    if block is None:
        return []
    preds: list[Mapping[str, Any]]
    if isinstance(block, Mapping) and "structures" in block:
        preds = [block]
    elif isinstance(block, Mapping):
        preds = [dict(v, cycle=v.get("cycle", k)) for k, v in block.items() if isinstance(v, Mapping)]
    elif isinstance(block, list):
        preds = [p for p in block if isinstance(p, Mapping)]
    else:
        return []
    out = []
    for p in preds:
        try:
            cyc = int(p.get("cycle"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        adm = finite(p.get("administered_MBq", p.get("activity_MBq")))
        for name, vals in (p.get("structures") or {}).items():
            if isinstance(vals, Mapping):
                out.append((cyc, adm, str(name), vals))
    return out


def _forecasts(twin: Mapping[str, Any] | None, kind: str) -> list[tuple[str, Mapping[str, Any]]]:
    """[(structure or "lesions", forecast)] of ``kind`` ("toxicity" or "response") from ``results.twin``.

    The twin gives toxicity per organ (``{"organ": {"model", "probability"}}``) and one response forecast
    for the patient's lesions together (``{"model", "probability", "quantity"}``).
    """
    if not twin:
        return []
    fc = twin.get("forecast", twin.get("forecasts")) or {}
    block = fc.get(kind) if isinstance(fc, Mapping) else None
    if isinstance(block, Mapping) and "probability" in block:
        return [("lesions", block)]
    if isinstance(block, Mapping):
        return [(str(k), v) for k, v in block.items() if isinstance(v, Mapping)]
    return []


def _model_text(model: Any) -> str:
    if isinstance(model, Mapping):
        parts = [str(model.get("name") or model.get("type") or "model")]
        params = [f"{k}={v}" for k, v in model.items() if k not in ("name", "type", "reference", "kind")]
        if params:
            parts.append("(" + ", ".join(params) + ")")
        if model.get("reference"):
            parts.append(f"reference: {model['reference']}")
        return " ".join(parts)
    return str(model)


def _conflicts(twin: Mapping[str, Any] | None, structure: str) -> list[Mapping[str, Any]]:
    """The twin's prior–data conflicts of ``structure`` (``results.twin["conflicts"]``)."""
    items = (twin or {}).get("conflicts") or []
    return [c for c in items if isinstance(c, Mapping) and c.get("structure") == structure]


def _plan(twin: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    plan = (twin or {}).get("plan")
    return plan if isinstance(plan, Mapping) and isinstance(plan.get("activities_MBq"), Mapping) else None


def _recommendation(twin: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not twin:
        return None
    rec = twin.get("recommendation", twin.get("recommended_activity"))
    return rec if isinstance(rec, Mapping) else None


def add_predicted_observations(a: Analysis, imaging: ImagingRefs,
                               kinds: dict[str, StructureKind]) -> list[tuple[str, str]]:
    """Add the predicted panels of the twin's planned cycle(s); returns their (``fullUrl``, structure)."""
    key, tag, issued, patient_ref, b = a.key, a.tag, a.issued, a.patient_ref, a.builder
    pred_structs: list[tuple[str, str]] = []
    for cyc_n, adm_MBq, name, vals in _twin_predictions(a.results.twin):
        comps = _predicted_components(vals)
        if not comps:
            continue
        if adm_MBq is not None:
            comps.insert(0, {"code": {"coding": [coding("administered-activity-assumed")]},
                             "valueQuantity": quantity(adm_MBq, "MBq")})
        conflicts = _conflicts(a.results.twin, name)
        for c in conflicts:
            z = finite(c.get("z_sd"))
            if z is not None:
                comps.append({"code": {"coding": [coding("prior-data-conflict")],
                                       "text": f"prior-data conflict: {c.get('parameter')} ({c.get('level')})"},
                              "valueQuantity": quantity(z, "{SD}")})
        kind = kinds.get(name) or structure_kind(name)
        value = f"{key}/predicted/cycle{cyc_n}/{name}"
        obs = {
            "resourceType": "Observation",
            "meta": {"tag": [tag, PREDICTED_TAG]},
            "identifier": [{"system": OBSERVATION_SYSTEM, "value": value}],
            "status": "preliminary",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "imaging",
                                      "display": "Imaging"}]}],
            "code": {"coding": [coding("predicted-structure-dosimetry")],
                     "text": f"PREDICTED dosimetry of {name}, cycle {cyc_n} (digital twin, not measured)"},
            "subject": {"reference": patient_ref},
            "issued": issued,
            "bodySite": body_site(kind, name),
            "method": {"coding": [coding("twin-prediction")]},
            "note": [{"text": "Predicted by the TheraTwin digital twin for a planned cycle; not a measurement. "
                              + RESEARCH_USE_NOTICE}] + [{"text": str(c.get("message", ""))} for c in conflicts],
            "component": comps,
        }
        derived = imaging.derived_for(a.study, None)
        if derived:
            obs["derivedFrom"] = derived
        pred_structs.append((b.add(obs, system=OBSERVATION_SYSTEM, value=value), name))
    return pred_structs


def add_risk_assessments(a: Analysis, kinds: dict[str, StructureKind], obs_refs: dict[tuple[int, str], str],
                         pred_structs: list[tuple[str, str]], report_ref: str) -> list[str]:
    """Add a RiskAssessment for the twin's toxicity and for its response forecast; returns their ``fullUrl``."""
    results, key, tag, issued, patient_ref, b = a.results, a.key, a.tag, a.issued, a.patient_ref, a.builder
    risk_refs = []
    risk_system = f"{IDENTIFIER_BASE}/risk-assessment"
    for kind_name, code in (("toxicity", "organ-toxicity-forecast"), ("response", "lesion-response-forecast")):
        fcs = _forecasts(results.twin, kind_name)
        preds = []
        basis = []
        for name, fc in fcs:
            prob, low, high = interval(fc.get("probability", fc))
            if prob is None:
                continue
            prob = min(max(prob, 0.0), 1.0)
            what = f"{name}: {'normal-tissue complication' if kind_name == 'toxicity' else 'response'}"
            if fc.get("endpoint"):
                what += f" ({fc['endpoint']})"
            pred: dict[str, Any] = {
                "outcome": {"coding": [coding(code)], "text": what},
                "probabilityDecimal": round(prob, 6),
            }
            why = []
            if low is not None and high is not None:
                why.append(f"90 % interval {low:.3g} to {high:.3g}")
            if fc.get("model"):
                why.append("model " + _model_text(fc["model"]))
            if fc.get("quantity"):
                why.append(f"from the {fc['quantity']}")
            if why:
                pred["rationale"] = "; ".join(why)
            preds.append(pred)
            lesion_names = [n for n in kinds if kinds[n].role.value == "lesion"] if name == "lesions" else [name]
            basis += [{"reference": r} for (_, sn), r in obs_refs.items() if sn in lesion_names]
            basis += [{"reference": r} for r, sn in pred_structs if sn in lesion_names]
        if not preds:
            continue
        value = f"{key}/{kind_name}"
        ra = {
            "resourceType": "RiskAssessment",
            "meta": {"tag": [tag, PREDICTED_TAG]},
            "identifier": [{"system": risk_system, "value": value}],
            "status": "preliminary",
            "method": {"coding": [coding("twin-prediction")]},
            "code": {"coding": [coding(code)]},
            "subject": {"reference": patient_ref},
            "occurrenceDateTime": issued,
            "basis": basis + [{"reference": report_ref}],
            "prediction": preds,
            "note": [{"text": f"Forecast by the TheraTwin digital twin ({kind_name}). {RESEARCH_USE_NOTICE}"}],
        }
        risk_refs.append(b.add(ra, system=risk_system, value=value))
    return risk_refs


def _plan_care_plan(a: Analysis, plan: Mapping[str, Any], report_ref: str, risk_refs: list[str]) -> dict[str, Any]:
    """CarePlan of the twin's plan: one proposed MedicationRequest activity per planned cycle."""
    last = a.study.cycles[-1].administration
    protocol = plan.get("protocol") or {}
    desc = str(plan.get("headline") or "Plan for the remaining cycles")
    sens = (plan.get("sensitivity") or {}).get("text")
    if sens:
        desc += f". {sens}"
    desc += f" Protocol: {protocol.get('name', '')}."
    activities = []
    interval = finite(protocol.get("interval_weeks"))
    for cyc, mbq in sorted(plan["activities_MBq"].items(), key=lambda kv: int(kv[0])):
        value = finite(mbq)
        if value is None:
            continue
        activities.append({"detail": {
            "kind": "MedicationRequest",
            "code": {"coding": [coding("planned-cycle-activity")], "text": f"Planned activity of cycle {cyc}"},
            "status": "not-started",
            "scheduledString": f"cycle {cyc}" + (f", every {interval:g} weeks" if interval else ""),
            "productCodeableConcept": medication_concept(last.radiopharmaceutical, last.nuclide),
            "quantity": quantity(value, "MBq"),
            "description": f"Cycle {cyc}: {value:.0f} MBq (twin plan, research use)",
        }})
    p = finite(plan.get("probability_within_limits"))
    conf = finite(plan.get("confidence"))
    note = ("Proposal computed by the TheraTwin digital twin within the protocol; the physician decides. "
            + (f"Joint probability that every organ at risk stays under its limit: {p:.3f} (required {conf:.2f}). "
               if p is not None and conf is not None else "") + RESEARCH_USE_NOTICE)
    cp: dict[str, Any] = {
        "resourceType": "CarePlan",
        "meta": {"tag": [a.tag, PREDICTED_TAG]},
        "identifier": [{"system": f"{IDENTIFIER_BASE}/care-plan", "value": f"{a.key}/recommendation"}],
        "status": "draft",
        "intent": "proposal",
        "title": "Radioligand therapy: plan for the remaining cycles (research use)",
        "description": desc,
        "subject": {"reference": a.patient_ref},
        "created": a.issued,
        "supportingInfo": [{"reference": report_ref}] + [{"reference": r} for r in risk_refs],
        "note": [{"text": note}],
    }
    if activities:
        cp["activity"] = activities
    return cp


def add_care_plan(a: Analysis, report_ref: str, risk_refs: list[str]) -> None:
    """Add the CarePlan (intent ``proposal``): the twin's plan for the remaining cycles (one activity per
    planned cycle) or, for results without a plan, its recommended next-cycle activity."""
    results, study, key, tag, issued, patient_ref, b = (a.results, a.study, a.key, a.tag, a.issued, a.patient_ref,
                                                       a.builder)
    plan = _plan(results.twin)
    if plan is not None:
        b.add(_plan_care_plan(a, plan, report_ref, risk_refs), system=f"{IDENTIFIER_BASE}/care-plan",
              value=f"{key}/recommendation")
        return
    rec = _recommendation(results.twin)
    rec_MBq = finite(rec.get("administered_MBq", rec.get("activity_MBq"))) if rec else None
    if rec is not None and rec_MBq is not None:
        last = study.cycles[-1].administration
        cp_system = f"{IDENTIFIER_BASE}/care-plan"
        desc = f"Recommended activity {rec_MBq:.0f} MBq for cycle {rec.get('cycle', '?')}"
        if rec.get("confidence") is not None:
            desc += f", keeping every organ at risk under its cumulative limit at confidence {float(rec['confidence']):.2f}"
        if rec.get("status") == "upper_bound":
            desc += "; no limit is reached up to the largest activity considered"
            if rec.get("limiting_structure"):
                desc += f" (closest to its limit: {rec['limiting_structure']})"
        elif rec.get("limiting_structure"):
            desc += f"; limited by {rec['limiting_structure']}"
        if rec.get("status") == "limit_reached":
            desc += "; a limit is already reached: no further cycle is recommended"
        if rec.get("remaining_cycles_at_standard_activity") is not None and rec.get("standard_activity_MBq"):
            desc += (f"; {rec['remaining_cycles_at_standard_activity']} more cycle(s) possible at "
                     f"{float(rec['standard_activity_MBq']):.0f} MBq")
        cp = {
            "resourceType": "CarePlan",
            "meta": {"tag": [tag, PREDICTED_TAG]},
            "identifier": [{"system": cp_system, "value": f"{key}/recommendation"}],
            "status": "draft",
            "intent": "proposal",
            "title": "Radioligand therapy: recommended next-cycle activity (research use)",
            "description": desc,
            "subject": {"reference": patient_ref},
            "created": issued,
            "supportingInfo": [{"reference": report_ref}] + [{"reference": r} for r in risk_refs],
            "activity": [{"detail": {
                "kind": "MedicationRequest",
                "code": {"coding": [coding("recommended-next-cycle-activity")]},
                "status": "not-started",
                "productCodeableConcept": medication_concept(last.radiopharmaceutical, last.nuclide),
                "quantity": quantity(rec_MBq, "MBq"),
                "description": desc,
            }}],
            "note": [{"text": "Proposal computed by the TheraTwin digital twin; the physician decides. "
                              + RESEARCH_USE_NOTICE}],
        }
        b.add(cp, system=cp_system, value=f"{key}/recommendation")
