"""Planning queries on a fitted twin: the protocol-aware treatment plan, the single-cycle activity
recommendation and the response/toxicity forecast.

Private helpers of :meth:`PatientTwin.plan_treatment <theratwin.twin.twin.PatientTwin.plan_treatment>`,
:meth:`PatientTwin.recommend_activity <theratwin.twin.twin.PatientTwin.recommend_activity>` and
:meth:`PatientTwin.forecast <theratwin.twin.twin.PatientTwin.forecast>`, which document them; all work on
the twin's posterior draws (:class:`~theratwin.twin._posterior.TwinPosterior`: ``draw_eta``,
``cycle_quantities``) and read the twin itself only through :class:`~theratwin.twin._posterior.PlanningTwin`.

Joint limits: a plan is acceptable when the probability that *every* organ at risk stays under its cumulative
limit is at least the confidence — evaluated on the joint posterior-predictive draws (one draw = one possible
patient: all organs and all cycles together), so organs and cycles are never checked one at a time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from ..results import RESEARCH_USE_NOTICE
from ..study.codes import structure_kind
from ._posterior import PlanningTwin
from .outcome import OUTCOME_MODELS, default_response_model, default_toxicity_models
from .protocol import PLAN_SHAPES, TreatmentProtocol
from .results import Interval, Recommendation, TreatmentPlan
from .tissues import OrganLimit, resolve_limits

__all__ = ["plan_treatment", "recommend_activity", "forecast"]


class _LimitDraws:
    """Posterior-predictive draws of the limited quantities for cycles given and future cycles.

    ``base`` (L, N): cumulative limited quantity of the cycles before ``first_cycle``; per future cycle and
    unit activity, dose ``d1`` and Lea–Catcheside ``g1`` (C, L, N) — with the ligand amount fixed the kinetics
    do not depend on the activity, so dose = A·d1 and BED = A·d1 + G·(A·d1)²/(α/β) (Dale 1985).
    """

    def __init__(self, twin: PlanningTwin, first_cycle: int, last_cycle: int, limits: dict[str, OrganLimit],
                 standard_activity_MBq: float, ligand_nmol: float | None, n_draws: int,
                 rng: np.random.Generator) -> None:
        fit = twin.fitted()
        self.structures = fit.structures
        self.limits = limits
        self.limited = [self.structures.index(s) for s in limits]
        self.names = [self.structures[i] for i in self.limited]
        self.quantity = [limits[s].quantity for s in self.names]
        self.limit_v = np.array([limits[s].value_Gy for s in self.names])
        self.given = list(range(1, first_cycle))
        self.schedule = twin.schedule(first_cycle - 1, standard_activity_MBq, None) if self.given else {}
        self.future = list(range(first_cycle, last_cycle + 1))
        etas = fit.draw_eta(sorted(set(self.given) | set(self.future)), n_draws, rng)
        dpt, ab, mu = twin.structure_constants()
        self.ab = ab
        self.n_draws = n_draws
        self.lesions = [i for i, s in enumerate(self.structures) if structure_kind(s).role.value == "lesion"]
        self.base = np.zeros((len(self.limited), n_draws))
        self.base_dose = np.zeros((len(self.structures), n_draws))  # every structure's dose of the cycles given
        for c in self.given:
            a, lg = self.schedule[c]
            q = fit.cycle_quantities(etas[c], a, lg, dpt, ab, mu)
            self.base += self._measure(q)
            self.base_dose += q["dose"]
        lig = ligand_nmol if ligand_nmol is not None else twin.reference_ligand_nmol
        unit = [fit.cycle_quantities(etas[c], 1.0, lig, dpt, ab, mu) for c in self.future]
        shape = (len(self.future), len(self.limited), n_draws)
        self.d1 = np.stack([u["dose"][self.limited] for u in unit]) if unit else np.zeros(shape)
        self.g1 = np.stack([u["g"][self.limited] for u in unit]) if unit else np.zeros(shape)
        self.lesion_d1 = (np.stack([u["dose"][self.lesions] for u in unit]) if unit
                          else np.zeros((0, len(self.lesions), n_draws)))
        self.ab_l = ab[self.limited][None, :, None]
        self.is_dose = np.array([q == "dose" for q in self.quantity])[None, :, None]
        self.is_eqd2 = np.array([q == "eqd2" for q in self.quantity])[None, :, None]

    def _measure(self, qd: dict[str, np.ndarray]) -> np.ndarray:
        rows = []
        for j, i in enumerate(self.limited):
            if self.quantity[j] == "dose":
                rows.append(qd["dose"][i])
            elif self.quantity[j] == "bed":
                rows.append(qd["bed"][i])
            else:  # EQD2 = BED / (1 + 2/(α/β))
                rows.append(qd["bed"][i] / (1.0 + 2.0 / self.ab[i]))
        return np.stack(rows) if rows else np.zeros((0, self.n_draws))

    def cumulative(self, activities: np.ndarray) -> np.ndarray:
        """Cumulative limited quantity (L, N) after the future cycles at ``activities`` (C,) MBq."""
        a = np.asarray(activities, float)[:, None, None]
        dose = a * self.d1
        bed = dose + self.g1 * dose * dose / self.ab_l
        val = np.where(self.is_dose, dose, np.where(self.is_eqd2, bed / (1.0 + 2.0 / self.ab_l), bed))
        return self.base + np.sum(val, axis=0)

    def joint_probability(self, activities: np.ndarray) -> float:
        """Share of draws in which every limited organ stays at or under its limit."""
        if not self.limited:
            return 1.0
        return float(np.mean(np.all(self.cumulative(activities) <= self.limit_v[:, None], axis=0)))

    def tumour_dose(self, twin: PlanningTwin, activities: np.ndarray) -> np.ndarray | None:
        """Cumulative whole-tumour dose per draw (given + planned cycles), None without lesions."""
        if not self.lesions:
            return None
        return np.asarray(_mass_weights(twin, self.lesions) @ self.lesion_doses(activities))

    def lesion_doses(self, activities: np.ndarray) -> np.ndarray:
        """Cumulative dose per lesion and draw (lesions, N), given + planned cycles."""
        future = np.einsum("c,cln->ln", np.asarray(activities, float), self.lesion_d1) if self.future else 0.0
        return self.base_dose[self.lesions] + future


def _plan_vector(n_future: int, n: int, activity: float) -> np.ndarray:
    return np.array([activity] * n + [0.0] * (n_future - n))


def _largest(feasible: Any, lo: float, hi: float) -> float | None:
    """Largest activity in [lo, hi] (1 MBq steps) with ``feasible(a)``, assuming feasibility decreases with a."""
    if not feasible(lo):
        return None
    if feasible(hi):
        return hi
    a, b = lo, hi
    while b - a > 1.0:
        mid = 0.5 * (a + b)
        if feasible(mid):
            a = mid
        else:
            b = mid
    return float(math.floor(a))


def _equal_plan(ld: _LimitDraws, lo: float, hi: float, confidence: float) -> tuple[int, float]:
    """Most cycles n (at least ``lo`` each), then the largest equal activity ≤ ``hi``; (0, 0) if none fits."""
    c_n = len(ld.future)
    for n in range(c_n, 0, -1):
        a = _largest(lambda x, n=n: ld.joint_probability(_plan_vector(c_n, n, x)) >= confidence, lo, hi)
        if a is not None:
            return n, a
    return 0, 0.0


def _adapted_plan(ld: _LimitDraws, n: int, lo: float, hi: float, confidence: float) -> np.ndarray:
    """Front-loaded plan over the same n cycles: each cycle as high as keeps the later ones possible at ``lo``."""
    c_n = len(ld.future)
    acts = np.zeros(c_n)
    for c in range(n):
        def ok(x: float, c: int = c) -> bool:
            trial = acts.copy()
            trial[c] = x
            trial[c + 1:n] = lo
            return ld.joint_probability(trial) >= confidence
        acts[c] = _largest(ok, lo, hi) or 0.0
    return acts


def _organ_outcomes(ld: _LimitDraws, activities: np.ndarray, confidence: float) -> dict[str, dict[str, Any]]:
    cum = ld.cumulative(activities)
    out: dict[str, dict[str, Any]] = {}
    for j, s in enumerate(ld.names):
        q = float(np.quantile(cum[j], confidence))
        out[s] = {
            "quantity": ld.quantity[j], "limit_Gy": float(ld.limit_v[j]),
            "reference": ld.limits[s].reference,
            "given_Gy": Interval.from_draws(ld.base[j], 0.9).to_dict() if ld.given else None,
            "end_of_plan_Gy": Interval.from_draws(cum[j], 0.9).to_dict(),
            "quantile_at_confidence_Gy": q,
            "fraction_of_limit_at_confidence": q / float(ld.limit_v[j]),
            "probability_over_limit": float(np.mean(cum[j] > ld.limit_v[j])),
        }
    return out


def plan_treatment(twin: PlanningTwin, next_cycle: int | None, protocol: TreatmentProtocol,
                   limits: dict[str, Any] | None, confidence: float, *, shape: str | None,
                   ligand_nmol: float | None, n_draws: int, seed: int | None) -> TreatmentPlan:
    """The plan for the remaining cycles (see ``PatientTwin.plan_treatment``)."""
    if not 0.5 <= confidence < 1.0:
        raise InvalidInputError(f"confidence must be in [0.5, 1), got {confidence}.")
    shape = shape or protocol.plan_shape
    if shape not in PLAN_SHAPES:
        raise InvalidInputError(f"plan shape must be one of {PLAN_SHAPES}, got {shape!r}.")
    structures = twin.fitted().structures
    first = int(next_cycle) if next_cycle is not None else max(
        [*twin.observed_cycles, *[c for c in twin.planned if twin.planned[c][0] > 0]]) + 1
    lim = resolve_limits(structures, {**twin.limits, **(limits or {})})
    rng = np.random.default_rng(twin.seed + 2 if seed is None else seed)
    ld = _LimitDraws(twin, first, protocol.max_cycles if first <= protocol.max_cycles else first - 1, lim,
                     protocol.activity_MBq, ligand_nmol, n_draws, rng)
    c_n = len(ld.future)
    lo, hi = protocol.min_activity_MBq, protocol.max_activity_MBq
    given = {c: ld.schedule[c][0] for c in ld.given}
    notes: list[str] = []
    if not lim:
        notes.append(f"No organ-at-risk limit applies to the observed structures {structures}; only the protocol "
                     "bounds the plan.")
    if c_n == 0:
        notes.append(f"The protocol allows {protocol.max_cycles} cycles; {first - 1} are given.")

    def solve(conf: float, shp: str) -> tuple[np.ndarray, int]:
        n, a = _equal_plan(ld, lo, hi, conf) if c_n else (0, 0.0)
        acts = _plan_vector(c_n, n, a)
        if shp == "adapted" and n:
            acts = _adapted_plan(ld, n, lo, hi, conf)
        return acts, n

    acts, n = solve(confidence, shape)
    p_joint = ld.joint_probability(acts)
    organs = _organ_outcomes(ld, acts, confidence)
    # what binds: the protocol when every remaining cycle is at the upper bound, else the organ most likely over
    if c_n == 0:
        status, binding = "protocol_complete", "the protocol"
    elif n == 0:
        status = "limit_reached"
        binding = _binding_organ(ld, _next_step(acts, n, c_n, lo, hi), confidence) if organs else "the protocol"
    elif n == c_n and np.all(acts[:n] >= hi - 1.0):
        status, binding = "protocol", "the protocol"
    else:
        status = "organ_limit"
        binding = _binding_organ(ld, _next_step(acts, n, c_n, lo, hi), confidence)
    closest = max(organs, key=lambda s: organs[s]["fraction_of_limit_at_confidence"]) if organs else None
    sensitivity = _sensitivity(ld, acts, n, c_n, lo, hi, confidence, status, binding, closest, organs, protocol)
    alternatives: dict[str, Any] = {}
    for conf in (0.8, 0.95):
        if abs(conf - confidence) < 1e-9:
            continue
        a2, _ = solve(conf, shape)
        alternatives[f"confidence {conf:g}"] = _summary_of(ld, twin, a2, conf, ld.future)
    other = "adapted" if shape == "equal" else "equal"
    a_other, _ = solve(confidence, other)
    alternatives[f"{other} activities"] = _summary_of(ld, twin, a_other, confidence, ld.future)
    std = _plan_vector(c_n, c_n, protocol.activity_MBq)
    alternatives["standard regimen"] = _summary_of(ld, twin, std, confidence, ld.future)
    tumour = ld.tumour_dose(twin, acts)
    lesions = {ld.structures[i]: Interval.from_draws(v, 0.9) for i, v in zip(ld.lesions, ld.lesion_doses(acts),
                                                                              strict=True)}
    planned = {c: float(a) for c, a in zip(ld.future, acts, strict=True) if a > 0}
    return TreatmentPlan(
        next_cycle=first, cycles_given=given, protocol=protocol, confidence=confidence, shape=shape,
        activities_MBq=planned, total_planned_MBq=float(np.sum(acts)), probability_within_limits=p_joint,
        status=status, binding_constraint=binding, closest_to_limit=closest, limits=lim, organs=organs,
        tumour_dose_Gy=None if tumour is None else Interval.from_draws(tumour, 0.9), lesion_dose_Gy=lesions,
        sensitivity=sensitivity, alternatives=alternatives, n_draws=n_draws, notes=notes)


def _next_step(acts: np.ndarray, n: int, c_n: int, lo: float, hi: float) -> np.ndarray:
    """The smallest step up from a plan: more activity per cycle if below the bound, else one more cycle."""
    step = acts.copy()
    if n and np.any(acts[:n] < hi - 1.0):
        step[:n] = np.minimum(acts[:n] + max(1.0, 0.01 * hi), hi)
    elif n < c_n:
        step[n] = lo
    return step


def _needed_increase(ld: _LimitDraws, activities: np.ndarray, j: int, confidence: float) -> float | None:
    """Smallest increase of organ j's limit (Gy) that makes the plan ``activities`` jointly acceptable, other
    limits unchanged; None when the other organs alone already fail the confidence."""
    cum = ld.cumulative(activities)
    others_ok = np.all(np.delete(cum <= ld.limit_v[:, None], j, axis=0), axis=0)
    k = math.ceil(confidence * ld.n_draws - 1e-9)
    if int(np.sum(others_ok)) < k:
        return None
    # among the draws that keep every other limit, the k-th smallest value of organ j must be within its limit
    return max(float(np.sort(cum[j][others_ok])[k - 1]) - float(ld.limit_v[j]), 0.0)


def _binding_organ(ld: _LimitDraws, step: np.ndarray, confidence: float) -> str:
    """The organ whose limit, relaxed the least (relative to the limit), would allow the next step up; when no
    single organ would, the one most often over its limit at that step."""
    needs = [_needed_increase(ld, step, j, confidence) for j in range(len(ld.names))]
    finite = [(need / float(ld.limit_v[j]), j) for j, need in enumerate(needs) if need is not None]
    if finite:
        return ld.names[min(finite)[1]]
    over = np.mean(ld.cumulative(step) > ld.limit_v[:, None], axis=1)
    return ld.names[int(np.argmax(over))]


def _summary_of(ld: _LimitDraws, twin: PlanningTwin, acts: np.ndarray, confidence: float,
                future: list[int]) -> dict[str, Any]:
    tumour = ld.tumour_dose(twin, acts)
    return {"confidence": confidence,
            "activities_MBq": {str(c): float(a) for c, a in zip(future, acts, strict=True) if a > 0},
            "total_planned_MBq": float(np.sum(acts)),
            "probability_within_limits": ld.joint_probability(acts),
            "tumour_dose_Gy": None if tumour is None else Interval.from_draws(tumour, 0.9).to_dict()}


def _sensitivity(ld: _LimitDraws, acts: np.ndarray, n: int, c_n: int, lo: float, hi: float, confidence: float,
                 status: str, binding: str, closest: str | None, organs: dict[str, dict[str, Any]],
                 protocol: TreatmentProtocol) -> dict[str, Any]:
    """What would change the plan.

    With an organ binding: the increase of its limit (at the same confidence) that would allow the next step
    up (``next_step``: more activity per cycle, or one more cycle at the protocol's minimum). With the protocol
    binding: the organ closest to its limit and how close (fraction of the limit at the confidence quantile).
    """
    if status in ("protocol", "protocol_complete") or binding not in ld.names:
        frac = organs[closest]["fraction_of_limit_at_confidence"] if closest is not None else None
        text = "The protocol, not an organ limit, bounds the plan"
        if closest is not None and frac is not None:
            text += (f"; the organ closest to its limit is {closest} ({100 * frac:.0f} % of its "
                     f"{organs[closest]['quantity'].upper()} limit at {100 * confidence:.0f} % confidence)")
        return {"organ": closest, "fraction_of_limit_at_confidence": frac, "limit_increase_Gy": None,
                "next_step": None, "text": text + "."}
    step = _next_step(acts, n, c_n, lo, hi)
    j = ld.names.index(binding)
    more = _needed_increase(ld, step, j, confidence)
    more_activity = bool(n and np.any(acts[:n] < hi - 1.0))
    n_step = n if more_activity else n + 1
    a_step = float(step[0]) if more_activity else float(lo)
    what = (f"{a_step:.0f} MBq per cycle instead of {acts[0]:.0f}" if more_activity
            else f"one more cycle ({n_step} instead of {n}) at {lo:.0f} MBq")
    q = ld.quantity[j].upper()
    if more is None:
        text = f"{binding} binds, with other organs close to their limits: relaxing {binding} alone would not allow {what}."
    else:
        text = (f"{binding} binds: a {q} limit {more:.2g} Gy higher (at {100 * confidence:.0f} % confidence) "
                f"would allow {what}.")
    return {"organ": binding, "fraction_of_limit_at_confidence": organs[binding]["fraction_of_limit_at_confidence"],
            "limit_increase_Gy": more, "next_step": {"cycles": n_step, "activity_MBq": a_step}, "text": text}


def recommend_activity(twin: PlanningTwin, cycle: int, limits: dict[str, Any] | None, confidence: float, *,
                       ligand_nmol: float | None, max_activity_MBq: float | None, standard_activity_MBq: float | None,
                       max_cycles: int | None, n_draws: int, seed: int | None) -> Recommendation:
    """Largest activity for ``cycle`` keeping all limits jointly (see ``PatientTwin.recommend_activity``)."""
    if not 0.5 <= confidence < 1.0:
        raise InvalidInputError(f"confidence must be in [0.5, 1), got {confidence}.")
    structures = twin.fitted().structures
    lim = resolve_limits(structures, {**twin.limits, **(limits or {})})
    if not lim:
        raise ConfigurationError(f"No organ-at-risk limits apply to the observed structures {structures}.")
    protocol = twin.protocol
    top = float(max_activity_MBq if max_activity_MBq is not None else protocol.max_activity_MBq)
    standard = float(standard_activity_MBq if standard_activity_MBq is not None else protocol.activity_MBq)
    horizon = int(max_cycles if max_cycles is not None else max(protocol.max_cycles - cycle + 1, 1))
    rng = np.random.default_rng(twin.seed + 1 if seed is None else seed)
    ld = _LimitDraws(twin, cycle, cycle + horizon - 1, lim, standard, ligand_nmol, n_draws, rng)

    def ok(a: float, n_cycles: int = 1) -> bool:
        return ld.joint_probability(_plan_vector(horizon, n_cycles, a)) >= confidence

    equal = {n: float(_largest(lambda a, n=n: ok(a, n), 1.0, top) or 0.0) for n in range(1, horizon + 1)}
    if not ok(0.0):
        equal = dict.fromkeys(equal, 0.0)
    rec = equal[1]
    status = "ok"
    if rec <= 0.0:
        status = "limit_reached"
    elif rec >= top:
        status = "upper_bound"
    acts = _plan_vector(horizon, 1, rec)
    cum = ld.cumulative(acts)
    qs = np.quantile(cum, confidence, axis=1) if ld.limited else np.zeros(0)
    # the organ that binds: the one most often over its limit one step above the recommendation
    over = np.mean(ld.cumulative(_plan_vector(horizon, 1, rec + max(1.0, 0.01 * top))) > ld.limit_v[:, None], axis=1)
    limiting = ld.names[int(np.argmax(over if status != "upper_bound" else qs / ld.limit_v))]
    remaining = 0
    for n in range(1, horizon + 1):
        if ok(standard, n):
            remaining = n
        else:
            break
    lesion_dose = {ld.structures[i]: Interval.from_draws(rec * ld.lesion_d1[0][k], 0.9)
                   for k, i in enumerate(ld.lesions)}
    responder = None
    if ld.lesions:
        model = OUTCOME_MODELS.get(default_response_model(twin.radiopharmaceutical_key))
        per_cycle = {"dose": np.zeros((len(structures), n_draws))}
        per_cycle["dose"][ld.lesions] = rec * ld.lesion_d1[0]
        responder = Interval.from_draws(model.probability(_tumour_dose(twin, per_cycle, ld.lesions)), 0.9)
    return Recommendation(
        cycle, float(rec), confidence, limiting, lim,
        {s: float(qs[j]) for j, s in enumerate(ld.names)},
        {s: Interval.from_draws(cum[j], 0.9) for j, s in enumerate(ld.names)},
        lesion_dose, responder, equal, remaining, standard, status,
        probability_within_limits=ld.joint_probability(acts),
        within_protocol=bool(protocol.min_activity_MBq <= rec <= protocol.max_activity_MBq))


def _mass_weights(twin: PlanningTwin, lesions: list[int]) -> np.ndarray:
    """Mass weights of the lesions (Violet 2019 used the whole tumour: mass-weighted mean dose)."""
    masses = []
    for i in lesions:
        m = twin.structure_mass_g(twin.fitted().structures[i])
        masses.append(m if m is not None else 1.0)
    w = np.asarray(masses, float)
    return w / np.sum(w)


def _tumour_dose(twin: PlanningTwin, qd: dict[str, np.ndarray], lesions: list[int]) -> np.ndarray:
    """Whole-body tumour dose per draw: mass-weighted mean over lesions (Violet 2019 used the whole tumour)."""
    return np.einsum("l,ln->n", _mass_weights(twin, lesions), qd["dose"][lesions])


def forecast(twin: PlanningTwin, cycle: int, administered_MBq: float | None, *, n_draws: int,
             response_model: str | None, toxicity_models: dict[str, str] | None) -> dict[str, Any]:
    """Responder and toxicity probabilities per draw (see ``PatientTwin.forecast``)."""
    pred = twin.predict(cycle, administered_MBq, n_draws=n_draws, keep_draws=True)
    assert pred.draws is not None
    structures = twin.fitted().structures
    out: dict[str, Any] = {"cycle": cycle, "notice": RESEARCH_USE_NOTICE, "toxicity": {}, "response": None}
    lesions = [i for i, s in enumerate(structures) if structure_kind(s).role.value == "lesion"]
    if lesions:
        model = OUTCOME_MODELS.get(response_model or default_response_model(twin.radiopharmaceutical_key))
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
