"""What the page shows of the twin, from ``results.json``'s ``twin`` part: the protocol-aware plan of the
remaining cycles (``twin["plan"]``: activities, joint probability that every organ stays under its limit, what
binds) and the largest activity for the next cycle alone with its organ table (``twin["recommendation"]``).

:func:`twin_plan` is the one place that reads the twin's JSON for display. It does no arithmetic on the numbers:
every value shown is one the twin stage wrote (intervals as ``{mean, low, high, level}``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["twin_plan", "STATUS_TEXT"]

#: How the recommendation's ``status`` reads on the page.
STATUS_TEXT = {
    "ok": "the binding organ reaches its limit at this activity (at the stated confidence)",
    "limit_reached": "an organ is already at its limit: no further cycle is recommended",
    "upper_bound": "no organ reaches its limit below the search ceiling: the recommendation is the ceiling",
}


def _interval(value: Any) -> dict[str, float] | None:
    if isinstance(value, dict) and {"mean", "low", "high"} <= set(value):
        return {k: float(value[k]) for k in ("mean", "low", "high") if value.get(k) is not None} | {
            "level": float(value.get("level", 0.9))}
    return None


def twin_plan(twin: dict[str, Any] | None) -> dict[str, Any]:
    """The twin's plan for display.

    Parameters
    ----------
    twin
        ``results.json["twin"]`` (``Results.twin``), or None when the twin stage did not run.

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
    if not twin or not isinstance(twin, dict):
        return {"available": False, "message": "The twin stage has not run (run the pipeline through 'twin')."}
    rec = twin.get("recommendation") or {}
    forecast = twin.get("forecast") or {}
    toxicity = forecast.get("toxicity") or {}
    limits = rec.get("limits") or {}
    at_quantile = rec.get("predicted_at_limit_quantile_Gy") or {}
    cumulative = rec.get("predicted_cumulative") or {}
    organs = []
    for name in dict.fromkeys([*limits, *cumulative]):
        limit = limits.get(name) or {}
        tox = (toxicity.get(name) or {}).get("probability")
        organs.append({
            "structure": name,
            "quantity": str(limit.get("quantity", "")),
            "limit_Gy": limit.get("value_Gy"),
            "reference": limit.get("reference", ""),
            "predicted_cumulative_Gy": _interval(cumulative.get(name)),
            "at_confidence_Gy": at_quantile.get(name),
            "toxicity_probability": _interval(tox),
            "binding": name == rec.get("limiting_structure"),
        })
    prediction = twin.get("prediction") or {}
    predicted = [{
        "structure": name,
        "dose_Gy": _interval(s.get("dose_Gy")),
        "bed_Gy": _interval(s.get("bed_Gy")),
        "cumulative_bed_Gy": _interval(s.get("cumulative_bed_Gy")),
    } for name, s in (prediction.get("structures") or {}).items()]
    status = str(rec.get("status", ""))
    plan = twin.get("plan") if isinstance(twin.get("plan"), dict) else None
    treatment = None if plan is None else {
        "headline": plan.get("headline", ""),
        "activities": [{"cycle": int(k), "activity_MBq": v} for k, v in (plan.get("activities_MBq") or {}).items()],
        "total_planned_MBq": plan.get("total_planned_MBq"),
        "probability_within_limits": plan.get("probability_within_limits"),
        "confidence": plan.get("confidence"),
        "status": plan.get("status"),
        "binding_constraint": plan.get("binding_constraint"),
        "closest_to_limit": plan.get("closest_to_limit"),
    }
    return {
        "available": True,
        "cycle": rec.get("cycle", prediction.get("cycle")),
        "activity_MBq": rec.get("administered_MBq"),
        "confidence": rec.get("confidence"),
        "status": status,
        "status_text": STATUS_TEXT.get(status, status),
        "binding": rec.get("limiting_structure"),
        "organs": organs,
        "lesions": [{"structure": k, "dose_Gy": _interval(v)} for k, v in (rec.get("lesion_dose_Gy") or {}).items()],
        "response": _interval(rec.get("responder_probability")),
        "remaining_cycles_at_standard_activity": rec.get("remaining_cycles_at_standard_activity"),
        "standard_activity_MBq": rec.get("standard_activity_MBq", prediction.get("administered_MBq")),
        "prediction_activity_MBq": prediction.get("administered_MBq"),
        "prediction": predicted,
        "model": (twin.get("model") or {}).get("model") if isinstance(twin.get("model"), dict) else twin.get("model"),
        "notice": twin.get("notice", ""),
        "treatment": treatment,
    }
