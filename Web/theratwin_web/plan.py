"""What the page shows of the twin, from ``results.json``'s ``twin`` part: the protocol-aware plan of the
remaining cycles (``twin["plan"]``: activities, joint probability that every organ stays under its limit, what
binds) and the largest activity for the next cycle alone with its organ table (``twin["recommendation"]``).

:func:`twin_plan` is the one place the page reads the twin, through ``theratwin.twin.TwinResults`` (the record the
SR, FHIR and report exports read too). It does no arithmetic on the numbers: every value shown is one the twin stage
wrote (intervals as ``{mean, low, high, level}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from theratwin.twin import Interval, TwinResults

__all__ = ["twin_plan", "STATUS_TEXT"]

#: How the recommendation's ``status`` reads on the page.
STATUS_TEXT = {
    "ok": "the binding organ reaches its limit at this activity (at the stated confidence)",
    "limit_reached": "an organ is already at its limit: no further cycle is recommended",
    "upper_bound": "no organ reaches its limit below the search ceiling: the recommendation is the ceiling",
}


def _interval(value: Interval | None) -> dict[str, float] | None:
    if value is None or not all(math.isfinite(v) for v in (value.mean, value.low, value.high)):
        return None
    return {"mean": value.mean, "low": value.low, "high": value.high, "level": value.level}


def twin_plan(twin: TwinResults | Mapping[str, Any] | None) -> dict[str, Any]:
    """The twin's plan for display.

    Parameters
    ----------
    twin
        The twin's results: ``results.json["twin"]`` (read with ``TwinResults.from_dict``) or
        ``Results.twin`` (a :class:`~theratwin.twin.TwinResults`), or None when the twin stage did not run.

    Returns
    -------
    dict
        ``available`` (bool), ``cycle``, ``activity_MBq`` (recommended), ``confidence``, ``status`` and
        ``status_text``, ``binding`` (the limiting structure), ``organs`` (per organ at risk: limit quantity and
        value, predicted cumulative interval after the recommended cycle, value at the confidence quantile, and
        the toxicity probability when forecast), ``lesions`` (predicted lesion dose intervals), ``response``
        (responder probability), ``prediction`` (per structure at the standard activity: dose and BED
        intervals), ``standard_activity_MBq``, ``notice`` and ``treatment`` (the plan of the remaining cycles, or
        None when the twin wrote none: ``headline``, ``activities`` as ``[{cycle, activity_MBq}]``,
        ``total_planned_MBq``, ``probability_within_limits``, ``confidence``, ``status``, ``binding_constraint``,
        ``closest_to_limit``).
    """
    if not twin:
        return {"available": False, "message": "The twin stage has not run (run the pipeline through 'twin')."}
    tr = twin if isinstance(twin, TwinResults) else TwinResults.from_dict(twin)
    rec, prediction, plan = tr.recommendation, tr.prediction, tr.plan
    toxicity = {fc.name: fc.probability for fc in tr.forecasts("toxicity")}
    limits = rec.limits if rec is not None else {}
    cumulative = rec.predicted_cumulative if rec is not None else {}
    at_quantile = rec.predicted_at_limit_quantile_Gy if rec is not None else {}
    organs = []
    for name in dict.fromkeys([*limits, *cumulative]):
        limit = limits.get(name)
        organs.append({
            "structure": name,
            "quantity": limit.quantity if limit is not None else "",
            "limit_Gy": limit.value_Gy if limit is not None else None,
            "reference": limit.reference if limit is not None else "",
            "predicted_cumulative_Gy": _interval(cumulative.get(name)),
            "at_confidence_Gy": at_quantile.get(name),
            "toxicity_probability": _interval(toxicity.get(name)),
            "binding": rec is not None and name == rec.limiting_structure,
        })
    predicted = [{
        "structure": name,
        "dose_Gy": _interval(s.dose_Gy),
        "bed_Gy": _interval(s.bed_Gy),
        "cumulative_bed_Gy": _interval(s.cumulative_bed_Gy),
    } for name, s in prediction.structures.items()]
    status = rec.status if rec is not None else ""
    treatment = None if plan is None else {
        "headline": plan.headline(),
        "activities": [{"cycle": c, "activity_MBq": v} for c, v in plan.activities_MBq.items()],
        "total_planned_MBq": plan.total_planned_MBq,
        "probability_within_limits": plan.probability_within_limits,
        "confidence": plan.confidence,
        "status": plan.status,
        "binding_constraint": plan.binding_constraint,
        "closest_to_limit": plan.closest_to_limit,
    }
    return {
        "available": True,
        "cycle": rec.cycle if rec is not None else prediction.cycle,
        "activity_MBq": rec.administered_MBq if rec is not None else None,
        "confidence": rec.confidence if rec is not None else None,
        "status": status,
        "status_text": STATUS_TEXT.get(status, status),
        "binding": rec.limiting_structure if rec is not None else None,
        "organs": organs,
        "lesions": [{"structure": k, "dose_Gy": _interval(v)} for k, v in (rec.lesion_dose_Gy if rec else {}).items()],
        "response": _interval(rec.responder_probability if rec is not None else None),
        "remaining_cycles_at_standard_activity": rec.remaining_cycles_at_standard_activity if rec else None,
        "standard_activity_MBq": rec.standard_activity_MBq if rec is not None else prediction.administered_MBq,
        "prediction_activity_MBq": prediction.administered_MBq,
        "prediction": predicted,
        "model": tr.model.get("model"),
        "notice": tr.notice,
        "treatment": treatment,
    }
