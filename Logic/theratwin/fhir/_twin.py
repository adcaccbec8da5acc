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
from ..twin.output import TwinResults
from ..twin.results import StructurePrediction, TreatmentPlan
from ._common import PREDICTED_TAG, Analysis, finite, interval_component
from ._imaging import ImagingRefs
from ._observations import OBSERVATION_SYSTEM, body_site
from ._patient import medication_concept
from .codes import IDENTIFIER_BASE, OBSERVATION_CATEGORY_SYSTEM, coding, quantity

__all__ = ["add_predicted_observations", "add_risk_assessments", "add_care_plan"]


#: Predicted quantities of the twin (:data:`theratwin.twin.PREDICTED_QUANTITIES`): name -> (code, unit).
_PREDICTED_QUANTITIES = {
    "tia_MBq_h": ("predicted-time-integrated-activity", "MBq.h"),
    "dose_Gy": ("predicted-absorbed-dose", "Gy"),
    "bed_Gy": ("predicted-biologically-effective-dose", "Gy"),
    "cumulative_dose_Gy": ("predicted-cumulative-absorbed-dose", "Gy"),
    "cumulative_bed_Gy": ("predicted-cumulative-biologically-effective-dose", "Gy"),
    "cumulative_eqd2_Gy": ("predicted-cumulative-equieffective-dose-2gy", "Gy"),
}


def _predicted_components(prediction: StructurePrediction) -> list[dict[str, Any]]:
    """Components (value and interval) of one structure's predicted quantities."""
    comps: list[dict[str, Any]] = []
    for key, iv in prediction.intervals().items():
        code, unit = _PREDICTED_QUANTITIES[key]
        central, low, high = finite(iv.mean), finite(iv.low), finite(iv.high)
        if central is None:
            continue
        comps.append({"code": {"coding": [coding(code)]}, "valueQuantity": quantity(central, unit)})
        if low is not None and high is not None:
            comps.append(interval_component(code, unit, low, high, finite(iv.level)))
    return comps


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


def add_predicted_observations(a: Analysis, imaging: ImagingRefs,
                               kinds: dict[str, StructureKind]) -> list[tuple[str, str]]:
    """Add the predicted panels of the twin's planned cycle(s); returns their (``fullUrl``, structure)."""
    key, tag, issued, patient_ref, b = a.key, a.tag, a.issued, a.patient_ref, a.builder
    pred_structs: list[tuple[str, str]] = []
    twin = TwinResults.from_results(a.results)
    if twin is None:
        return pred_structs
    for cyc_n, adm, name, prediction in twin.predictions():
        comps = _predicted_components(prediction)
        if not comps:
            continue
        adm_MBq = finite(adm)
        if adm_MBq is not None:
            comps.insert(0, {"code": {"coding": [coding("administered-activity-assumed")]},
                             "valueQuantity": quantity(adm_MBq, "MBq")})
        conflicts = twin.conflicts_of(name)
        for c in conflicts:
            z = finite(c.z_sd)
            if z is not None:
                comps.append({"code": {"coding": [coding("prior-data-conflict")],
                                       "text": f"prior-data conflict: {c.parameter} ({c.level})"},
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
                              + RESEARCH_USE_NOTICE}] + [{"text": c.message} for c in conflicts],
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
    risk_refs: list[str] = []
    risk_system = f"{IDENTIFIER_BASE}/risk-assessment"
    twin = TwinResults.from_results(results)
    if twin is None:
        return risk_refs
    for kind_name, code in (("toxicity", "organ-toxicity-forecast"), ("response", "lesion-response-forecast")):
        preds = []
        basis = []
        for fc in twin.forecasts(kind_name):
            name = fc.name
            prob, low, high = finite(fc.probability.mean), finite(fc.probability.low), finite(fc.probability.high)
            if prob is None:
                continue
            prob = min(max(prob, 0.0), 1.0)
            what = f"{name}: {'normal-tissue complication' if kind_name == 'toxicity' else 'response'}"
            if fc.endpoint:
                what += f" ({fc.endpoint})"
            pred: dict[str, Any] = {
                "outcome": {"coding": [coding(code)], "text": what},
                "probabilityDecimal": round(prob, 6),
            }
            why = []
            if low is not None and high is not None:
                why.append(f"90 % interval {low:.3g} to {high:.3g}")
            if fc.model:
                why.append("model " + _model_text(fc.model))
            if fc.quantity:
                why.append(f"from the {fc.quantity}")
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


def _plan_care_plan(a: Analysis, plan: TreatmentPlan, report_ref: str, risk_refs: list[str]) -> dict[str, Any]:
    """CarePlan of the twin's plan: one proposed MedicationRequest activity per planned cycle."""
    last = a.study.cycles[-1].administration
    protocol = plan.protocol
    desc = plan.headline() or "Plan for the remaining cycles"
    sens = plan.sensitivity.get("text")
    if sens:
        desc += f". {sens}"
    desc += f" Protocol: {protocol.name}."
    activities = []
    interval = finite(protocol.interval_weeks)
    for cyc, mbq in sorted(plan.activities_MBq.items()):
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
    p = finite(plan.probability_within_limits)
    conf = finite(plan.confidence)
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
    twin = TwinResults.from_results(results)
    if twin is None:
        return
    if twin.plan is not None:
        b.add(_plan_care_plan(a, twin.plan, report_ref, risk_refs), system=f"{IDENTIFIER_BASE}/care-plan",
              value=f"{key}/recommendation")
        return
    rec = twin.recommendation
    rec_MBq = finite(rec.administered_MBq) if rec else None
    if rec is not None and rec_MBq is not None:
        last = study.cycles[-1].administration
        cp_system = f"{IDENTIFIER_BASE}/care-plan"
        desc = f"Recommended activity {rec_MBq:.0f} MBq for cycle {rec.cycle}"
        desc += f", keeping every organ at risk under its cumulative limit at confidence {rec.confidence:.2f}"
        if rec.status == "upper_bound":
            desc += "; no limit is reached up to the largest activity considered"
            if rec.limiting_structure:
                desc += f" (closest to its limit: {rec.limiting_structure})"
        elif rec.limiting_structure:
            desc += f"; limited by {rec.limiting_structure}"
        if rec.status == "limit_reached":
            desc += "; a limit is already reached: no further cycle is recommended"
        if rec.standard_activity_MBq:
            desc += (f"; {rec.remaining_cycles_at_standard_activity} more cycle(s) possible at "
                     f"{rec.standard_activity_MBq:.0f} MBq")
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
