"""Planning queries on a fitted twin: the activity recommendation and the response/toxicity forecast.

Private helpers of :meth:`PatientTwin.recommend_activity <theratwin.twin.twin.PatientTwin.recommend_activity>`
and :meth:`PatientTwin.forecast <theratwin.twin.twin.PatientTwin.forecast>`, which document them; both work on
the twin's posterior draws (``PatientTwin._draw_eta``, ``PatientTwin._cycle_quantities``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from ..results import RESEARCH_USE_NOTICE
from ..study.codes import structure_kind
from .outcome import OUTCOME_MODELS, default_response_model, default_toxicity_models
from .results import Interval, Recommendation
from .tissues import resolve_limits

if TYPE_CHECKING:
    from .twin import PatientTwin

__all__ = ["recommend_activity", "forecast"]


def recommend_activity(twin: PatientTwin, cycle: int, limits: dict[str, Any] | None, confidence: float, *,
                       ligand_nmol: float | None, max_activity_MBq: float, standard_activity_MBq: float,
                       max_cycles: int, n_draws: int, seed: int | None) -> Recommendation:
    """Largest activity for ``cycle`` under the organ-at-risk limits (see ``PatientTwin.recommend_activity``)."""
    if not 0.5 <= confidence < 1.0:
        raise InvalidInputError(f"confidence must be in [0.5, 1), got {confidence}.")
    twin.posterior()
    structures = twin._post_structures
    lim = resolve_limits(structures, {**twin.limits, **(limits or {})})
    if not lim:
        raise ConfigurationError(f"No organ-at-risk limits apply to the observed structures {structures}.")
    rng = np.random.default_rng(twin.seed + 1 if seed is None else seed)
    prev = [c for c in range(1, cycle)]
    sched = twin._schedule(cycle - 1, standard_activity_MBq, None) if prev else {}
    future = list(range(cycle, cycle + max_cycles))
    etas = twin._draw_eta(sorted(set(prev) | set(future)), n_draws, rng)
    dpt, ab, mu = twin._structure_constants()
    lig = ligand_nmol if ligand_nmol is not None else twin.reference_ligand_nmol
    limited = [structures.index(s) for s in lim]
    quantity = [lim[structures[i]].quantity for i in limited]
    limit_v = np.array([lim[structures[i]].value_Gy for i in limited])

    def measure(qd: dict[str, np.ndarray]) -> np.ndarray:
        rows = []
        for j, i in enumerate(limited):
            if quantity[j] == "dose":
                rows.append(qd["dose"][i])
            elif quantity[j] == "bed":
                rows.append(qd["bed"][i])
            else:
                rows.append(qd["bed"][i] / (1.0 + 2.0 / ab[i]))
        return np.stack(rows)

    base = np.zeros((len(limited), n_draws))
    for c in prev:
        a, lg = sched[c]
        base += measure(twin._cycle_quantities(etas[c], a, lg, dpt, ab, mu))

    # Per future cycle, per unit activity: dose d1 and Lea–Catcheside G (the ligand amount is fixed, so the
    # kinetics do not depend on the activity): dose = A·d1, BED = A·d1 + G·(A·d1)²/(α/β).
    unit = [twin._cycle_quantities(etas[c], 1.0, lig, dpt, ab, mu) for c in future]
    d1 = np.stack([u["dose"][limited] for u in unit])  # (cycles, L, N)
    g1 = np.stack([u["g"][limited] for u in unit])
    ab_l = ab[limited][None, :, None]
    is_dose = np.array([q == "dose" for q in quantity])[None, :, None]
    is_eqd2 = np.array([q == "eqd2" for q in quantity])[None, :, None]

    def cumulative(activity: float, n_cycles: int) -> np.ndarray:
        dose = activity * d1[:n_cycles]
        bed = dose + g1[:n_cycles] * dose * dose / ab_l
        val = np.where(is_dose, dose, np.where(is_eqd2, bed / (1.0 + 2.0 / ab_l), bed))
        return base + np.sum(val, axis=0)

    def quantiles(activity: float, n_cycles: int) -> np.ndarray:
        return np.quantile(cumulative(activity, n_cycles), confidence, axis=1)

    def largest(n_cycles: int) -> float:
        if np.any(quantiles(0.0, n_cycles) > limit_v) or np.any(quantiles(1.0, n_cycles) > limit_v):
            return 0.0
        if np.all(quantiles(max_activity_MBq, n_cycles) <= limit_v):
            return max_activity_MBq
        lo, hi = 1.0, max_activity_MBq
        while hi - lo > 1.0:  # bisection to 1 MBq; the quantiles increase with activity
            mid = 0.5 * (lo + hi)
            if np.all(quantiles(mid, n_cycles) <= limit_v):
                lo = mid
            else:
                hi = mid
        return math.floor(lo)

    equal = {n: float(largest(n)) for n in range(1, max_cycles + 1)}
    rec = equal[1]
    status = "ok"
    if rec <= 0.0:
        status = "limit_reached"
    elif rec >= max_activity_MBq:
        status = "upper_bound"
    qs = quantiles(rec, 1) if rec > 0 else quantiles(0.0, 1)
    ratio = qs / limit_v
    limiting = structures[limited[int(np.argmax(ratio))]]
    cum = cumulative(rec, 1)
    remaining = 0
    for n in range(1, max_cycles + 1):
        if np.all(quantiles(standard_activity_MBq, n) <= limit_v):
            remaining = n
        else:
            break
    qd = twin._cycle_quantities(etas[cycle], rec, lig, dpt, ab, mu)
    lesions = [i for i, s in enumerate(structures) if structure_kind(s).role.value == "lesion"]
    lesion_dose = {structures[i]: Interval.from_draws(qd["dose"][i], 0.9) for i in lesions}
    responder = None
    if lesions:
        model = OUTCOME_MODELS.get(default_response_model(twin._rph_key))
        responder = Interval.from_draws(model.probability(_tumour_dose(twin, qd, lesions)), 0.9)
    return Recommendation(
        cycle, float(rec), confidence, limiting, {structures[i]: lim[structures[i]] for i in limited},
        {structures[i]: float(qs[j]) for j, i in enumerate(limited)},
        {structures[i]: Interval.from_draws(cum[j], 0.9) for j, i in enumerate(limited)},
        lesion_dose, responder, equal, remaining, standard_activity_MBq, status)


def _tumour_dose(twin: PatientTwin, qd: dict[str, np.ndarray], lesions: list[int]) -> np.ndarray:
    """Whole-body tumour dose per draw: mass-weighted mean over lesions (Violet 2019 used the whole tumour)."""
    masses = []
    for i in lesions:
        s = twin._post_structures[i]
        m = next((ob.mass_g for (c, n), ob in twin.observations.items() if n == s and ob.mass_g), None)
        masses.append(m if m is not None else 1.0)
    w = np.asarray(masses) / np.sum(masses)
    return np.einsum("l,ln->n", w, qd["dose"][lesions])


def forecast(twin: PatientTwin, cycle: int, administered_MBq: float | None, *, n_draws: int,
             response_model: str | None, toxicity_models: dict[str, str] | None) -> dict[str, Any]:
    """Responder and toxicity probabilities per draw (see ``PatientTwin.forecast``)."""
    pred = twin.predict(cycle, administered_MBq, n_draws=n_draws, keep_draws=True)
    assert pred.draws is not None
    structures = twin._post_structures
    out: dict[str, Any] = {"cycle": cycle, "notice": RESEARCH_USE_NOTICE, "toxicity": {}, "response": None}
    lesions = [i for i, s in enumerate(structures) if structure_kind(s).role.value == "lesion"]
    if lesions:
        model = OUTCOME_MODELS.get(response_model or default_response_model(twin._rph_key))
        qd = {"dose": pred.draws["dose_Gy"]}
        p = model.probability(_tumour_dose(twin, qd, lesions))
        out["response"] = {"model": model.to_dict(), "probability": Interval.from_draws(p, 0.9).to_dict(),
                           "quantity": "per-cycle whole-tumour mean absorbed dose"}
    tox = {**default_toxicity_models(), **(toxicity_models or {})}
    for i, s in enumerate(structures):
        name = tox.get(s, tox.get(structure_kind(s).key))
        if not name:
            continue
        model = OUTCOME_MODELS.get(name)
        key = {"dose": "cumulative_dose_Gy", "bed": "cumulative_bed_Gy", "eqd2": "cumulative_eqd2_Gy"}[model.quantity]
        p = model.probability(pred.draws[key][i])
        out["toxicity"][s] = {"model": model.to_dict(), "probability": Interval.from_draws(p, 0.9).to_dict()}
    return out
