"""Fitting of one time-activity curve: weighted least squares or prior-informed (MAP) fits, covariance, TIA
with SD, and model selection that works with the 3-5 scans clinics acquire.

``fit_tac(model="auto")`` chooses among the selectable models (mono-exponential, uptake-washout, fast + slow
washout, tri-exponential) in one of two ways, and says which in ``TacFit.method``:

- ``selection="evidence"`` (default): every candidate with at most as many parameters as samples (one fewer
  without SDs) is fitted by MAP with the weak population priors of :mod:`theratwin.kinetics.priors` on the
  parameters sparse data cannot pin down (uptake rate, fast-phase rate and share) and a wide one on the slow
  clearance (which keeps it off the physical-decay boundary; the amplitude keeps a flat prior), and the
  candidates are weighted by their posterior probabilities from the Laplace approximation of the marginal
  likelihood (the evidence), which is defined for any number of samples.
  The TIA is the posterior model average (``"evidence_average"``) or that of the most probable model
  (``"evidence:<model>"``, ``average=False``). This is what lets an uptake phase or a fast early washout seen at
  one scan count, where AICc (undefined for ``n <= k + 1``) would leave only the mono-exponential.
- ``selection="aicc"``: least-squares fits of the candidates AICc supports (``n >= k + 2``, one more without
  SDs), Akaike weights and model averaging (``"model_average"``, or ``"aicc:<model>"``), as NUKFIT does.

Where no selection happens the method says so: ``"fit:<model>"`` (a model requested by name, least squares),
``"map:<model>"`` (requested by name with priors), ``"fallback:<model>"`` (a documented fallback, with a note).

References
----------
- Kletting P, Schimmel S, Kestler HA, et al. Molecular radiotherapy: the NUKFIT software for calculating the
  time-integrated activity coefficient. Med Phys 2013;40:102504 (model set, AICc selection, weights).
- Glatting G, Kletting P, Reske SN, et al. Choosing the optimal fit function: comparison of the Akaike
  information criterion and the F-test. Med Phys 2007;34:4285-92.
- Burnham KP, Anderson DR. Model Selection and Multimodel Inference, 2nd ed. Springer 2002 (AICc eq. 2.2,
  Akaike weights eq. 2.14, unconditional variance of a model-averaged estimate eq. 4.9 after Buckland et al.
  1997 Biometrics 53:603).
- MacKay DJC. Information Theory, Inference, and Learning Algorithms. Cambridge University Press 2003, ch. 27-28
  (Laplace's method, evidence and Occam factors for model comparison).
- Hoeting JA, Madigan D, Raftery AE, Volinsky CT. Bayesian model averaging: a tutorial. Stat Sci 1999;14:382-417
  (posterior mean and variance of a model-averaged quantity).
- Siegel JA, et al. MIRD Pamphlet No. 16. J Nucl Med 1999;40:37S-61S (sampling, fitting and integration of
  time-activity data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import nuclides
from ..errors import ConfigurationError, FitError, InvalidInputError
from ._model_fit import ModelFit, _fit_one, aicc
from .models import KINETIC_MODELS, get_model, selectable_models
from .priors import KineticPriors

__all__ = ["TacFit", "ModelFit", "fit_tac", "aicc", "describe_method", "SELECTIONS"]

#: Model-selection criteria of ``fit_tac(model="auto")``.
SELECTIONS = ("evidence", "aicc")

@dataclass
class TacFit:
    """Result of :func:`fit_tac`.

    Attributes
    ----------
    model
        Name of the selected model (most probable, or lowest AICc), the requested one, or the fallback used.
    params, params_sd, covariance, covariance_names
        Parameters of the selected model (units in their names), their SDs and covariance.
    tia_MBq_h, tia_sd_MBq_h
        Time-integrated activity from 0 to infinity (MBq·h) and its SD. With ``model="auto"`` and
        ``average=True`` this is the model average (``method`` ``"evidence_average"`` or ``"model_average"``).
    effective_half_life_h
        Half-life of the terminal phase of the selected model (h).
    model_weights
        Weights of the candidates (sum 1), ``{model: weight}``: posterior model probabilities (evidence) or
        Akaike weights (AICc); ``{model: 1}`` when no selection happened.
    aicc
        AICc of each candidate (None when undefined for the number of points or not used).
    log_evidence
        Log evidence of each candidate (evidence selection; up to a common constant), else empty.
    method
        How the TIA was obtained: ``"evidence_average"``, ``"evidence:<model>"``, ``"model_average"`` (AICc),
        ``"aicc:<model>"``, ``"fit:<model>"``, ``"map:<model>"`` or ``"fallback:<model>"`` (see the module
        docstring and :func:`describe_method`).
    selection
        ``"evidence"``, ``"aicc"`` or ``"none"`` (no model selection happened).
    priors
        The :class:`~theratwin.kinetics.priors.KineticPriors` of a prior-informed fit (as a dictionary), else None.
    notes
        Fallbacks and caveats the user must know (never empty when a fallback was used).
    time_h, activity_MBq, activity_sd_MBq
        The data fitted (sorted).
    candidates
        ``{model: ModelFit}`` for every model tried successfully.
    """

    model: str
    params: dict[str, float]
    params_sd: dict[str, float]
    covariance: np.ndarray
    covariance_names: list[str]
    tia_MBq_h: float
    tia_sd_MBq_h: float
    effective_half_life_h: float
    model_weights: dict[str, float]
    aicc: dict[str, float | None]
    method: str
    nuclide: str
    time_h: np.ndarray
    activity_MBq: np.ndarray
    activity_sd_MBq: np.ndarray | None
    candidates: dict[str, ModelFit] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fit_quality: dict[str, float] = field(default_factory=dict)
    selection: str = "none"
    log_evidence: dict[str, float | None] = field(default_factory=dict)
    priors: dict[str, Any] | None = None
    _predict: Any = field(default=None, repr=False)

    @property
    def method_description(self) -> str:
        """One sentence on how the TIA was obtained (for reports and provenance)."""
        return describe_method(self.method)

    @property
    def fallback(self) -> bool:
        """True when a documented fallback replaced the requested fit."""
        return self.method.startswith("fallback")

    def predict(self, time_h: Any) -> np.ndarray:
        """Activity (MBq) at ``time_h`` (the weighted mean curve when the TIA is model-averaged)."""
        return np.asarray(self._predict(np.asarray(time_h, float)), float)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (numbers and lists only)."""
        return {
            "model": self.model, "method": self.method, "nuclide": self.nuclide,
            "params": self.params, "params_sd": self.params_sd,
            "covariance": self.covariance.tolist(), "covariance_names": list(self.covariance_names),
            "tia_MBq_h": self.tia_MBq_h, "tia_sd_MBq_h": self.tia_sd_MBq_h,
            "effective_half_life_h": self.effective_half_life_h,
            "model_weights": self.model_weights, "aicc": self.aicc,
            "time_h": self.time_h.tolist(), "activity_MBq": self.activity_MBq.tolist(),
            "activity_sd_MBq": None if self.activity_sd_MBq is None else self.activity_sd_MBq.tolist(),
            "fit_quality": self.fit_quality, "notes": list(self.notes),
            "selection": self.selection, "log_evidence": self.log_evidence, "priors": self.priors,
            "method_description": self.method_description,
            "candidates": {k: v.to_dict() for k, v in self.candidates.items()},
        }


def describe_method(method: str) -> str:
    """A phrase naming how a TIA with this method string was obtained (``TacFit.method``, or the kinetics stage's
    ``tia_method``: also ``"stp:<method>"`` and ``"hanscheid"``), for reports and provenance."""
    kind, _, model = method.partition(":")
    stp = {"prior": "prior-informed single time point (the earlier cycle's fitted curve, rescaled to its sample "
                    "nearest in time, scaled through the measurement)",
           "madsen": "single time point with a population effective half-life (Madsen 2018)",
           "hanscheid": "Hänscheid single-time-point approximation A(t) 2t/ln 2"}
    if kind == "stp" or kind == "hanscheid":
        return stp.get(model or kind, method)
    text = {
        "evidence_average": "prior-informed (MAP) fits of the candidate models averaged with their posterior "
                            "probabilities (Laplace evidence)",
        "evidence": f"prior-informed (MAP) fit of {model}, the most probable candidate (Laplace evidence)",
        "model_average": "least-squares fits of the candidate models averaged with Akaike (AICc) weights",
        "aicc": f"least-squares fit of {model}, selected by AICc",
        "fit": f"least-squares fit of {model} (model given, no selection)",
        "map": f"prior-informed (MAP) fit of {model} (model given, no selection)",
        "fallback": f"fallback {model} (documented in the notes)",
    }.get(kind)
    return text if text is not None else method


def _validate(time_h: Any, activity_MBq: Any, activity_sd_MBq: Any) -> tuple[np.ndarray, np.ndarray,
                                                                             np.ndarray | None, list[str]]:
    notes: list[str] = []
    t = np.atleast_1d(np.asarray(time_h, dtype=float)).ravel()
    a = np.atleast_1d(np.asarray(activity_MBq, dtype=float)).ravel()
    if t.size != a.size:
        raise InvalidInputError(f"time_h has {t.size} values but activity_MBq has {a.size}; give one activity per time.")
    if t.size == 0:
        raise InvalidInputError("No time points given; a time-activity curve needs at least one sample.")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise InvalidInputError(f"Times must be finite and >= 0 h since administration; got {t.tolist()}.")
    if not np.all(np.isfinite(a)):
        raise InvalidInputError(f"Activities contain NaN or infinity: {a.tolist()} MBq. Check the images/masks.")
    if np.any(a < 0):
        raise InvalidInputError(
            f"Negative activities {a[a < 0].tolist()} MBq at t = {t[a < 0].tolist()} h; a structure cannot hold "
            "negative activity. Check background subtraction and calibration."
        )
    sd = None
    if activity_sd_MBq is not None:
        sd = np.atleast_1d(np.asarray(activity_sd_MBq, dtype=float)).ravel()
        if sd.size != t.size or not np.all(np.isfinite(sd)) or np.any(sd <= 0):
            raise InvalidInputError(
                f"activity_sd_MBq must hold one positive finite SD per time point; got {sd.tolist()}."
            )
    order = np.argsort(t, kind="stable")
    if np.any(np.diff(t) < 0):
        notes.append("Times were not in increasing order; the samples were sorted by time.")
        t, a = t[order], a[order]
        sd = sd[order] if sd is not None else None
    if np.any(np.diff(t) == 0):
        dup = t[1:][np.diff(t) == 0]
        raise InvalidInputError(
            f"Duplicated time points {dup.tolist()} h; combine repeated measurements (e.g. their mean with "
            "its SD) before fitting."
        )
    return t, a, sd, notes


def _direct(model: Any, t: np.ndarray, a: np.ndarray, sd: np.ndarray | None, lp: float, nuclide: str,
            notes: list[str], method: str) -> TacFit:
    d = model.fit_direct(t, a, sd, lp)
    names = list(d.params_sd)
    cov = np.diag([d.params_sd[k] ** 2 for k in names]) if names else np.zeros((0, 0))
    return TacFit(
        model=model.name, params=d.params, params_sd=d.params_sd, covariance=cov, covariance_names=names,
        tia_MBq_h=float(d.tia_MBq_h), tia_sd_MBq_h=float(d.tia_sd_MBq_h),
        effective_half_life_h=float(d.effective_half_life_h), model_weights={model.name: 1.0},
        aicc={model.name: None}, method=method, nuclide=nuclide, time_h=t, activity_MBq=a, activity_sd_MBq=sd,
        notes=notes + list(d.notes), fit_quality={"n_points": float(t.size)}, _predict=d.predict,
    )


def _from_single(mf: ModelFit, *, weights: dict[str, float], aiccs: dict[str, float | None], method: str,
                 nuclide: str, t: np.ndarray, a: np.ndarray, sd: np.ndarray | None,
                 cands: dict[str, ModelFit], notes: list[str]) -> TacFit:
    return TacFit(
        model=mf.model, params=mf.params, params_sd=mf.params_sd, covariance=mf.covariance,
        covariance_names=mf.covariance_names, tia_MBq_h=mf.tia_MBq_h, tia_sd_MBq_h=mf.tia_sd_MBq_h,
        effective_half_life_h=mf.effective_half_life_h, model_weights=weights, aicc=aiccs, method=method,
        nuclide=nuclide, time_h=t, activity_MBq=a, activity_sd_MBq=sd, candidates=cands,
        notes=notes + mf.notes, fit_quality=_quality(mf, t.size), _predict=mf._predict,
    )


def _quality(mf: ModelFit, n: int) -> dict[str, float]:
    q = {"chi2": mf.chi2, "dof": float(mf.dof), "r_squared": mf.r_squared, "n_points": float(n),
         "n_params": float(mf.n_params)}
    if mf.dof > 0:
        q["chi2_reduced"] = mf.chi2 / mf.dof
    if mf.aicc is not None:
        q["aicc"] = mf.aicc
    if mf.prior_informed:
        q["n_params_effective"] = mf.n_params_effective
    if mf.sigma_MBq is not None:
        q["sigma_estimated_MBq"] = mf.sigma_MBq
    return q


def _as_priors(priors: KineticPriors | dict[str, Any] | None) -> KineticPriors:
    if isinstance(priors, KineticPriors):
        return priors
    if priors is None or isinstance(priors, dict):
        return KineticPriors.from_dict(priors)
    raise ConfigurationError(f"priors must be a KineticPriors or a dictionary of its fields; got {priors!r}.")


def _averaged(res: TacFit, fits: dict[str, ModelFit], weights: dict[str, float], method: str, *,
              total_variance: bool) -> None:
    """Replace the TIA of ``res`` by the weighted average over ``fits`` and its SD; set the mean curve."""
    tia_avg = sum(weights[nm] * fits[nm].tia_MBq_h for nm in fits)
    if total_variance:
        # posterior variance of a Bayesian model average: mean of the within-model variances plus the variance
        # of the model means (law of total variance; Hoeting et al. 1999)
        sd_avg = math.sqrt(sum(weights[nm] * (fits[nm].tia_sd_MBq_h ** 2 + (fits[nm].tia_MBq_h - tia_avg) ** 2)
                               for nm in fits))
    else:
        # unconditional SD of a model-averaged estimate (Burnham & Anderson 2002, eq. 4.9)
        sd_avg = sum(weights[nm] * math.sqrt(fits[nm].tia_sd_MBq_h ** 2 + (fits[nm].tia_MBq_h - tia_avg) ** 2)
                     for nm in fits)
    res.tia_MBq_h = float(tia_avg)
    res.tia_sd_MBq_h = float(sd_avg)
    res.method = method

    def predict(tq: np.ndarray) -> np.ndarray:
        return sum(weights[nm] * fits[nm].predict(tq) for nm in fits)  # type: ignore[return-value]

    res._predict = predict


def fit_tac(
    time_h: Any,
    activity_MBq: Any,
    nuclide: str = "Lu-177",
    model: str | Any = "auto",
    activity_sd_MBq: Any = None,
    *,
    candidates: list[str] | None = None,
    average: bool = True,
    selection: str = "evidence",
    priors: KineticPriors | dict[str, Any] | None = None,
) -> TacFit:
    """Fit a time-activity curve and integrate it from 0 to infinity.

    Parameters
    ----------
    time_h
        Sample times in h since the start of administration.
    activity_MBq
        Activity in the structure at each time (MBq), decay-corrected to the acquisition start only (i.e.
        *not* corrected back to the administration: the curve includes physical decay).
    nuclide
        Nuclide name (sets the physical decay constant that bounds every clearance rate).
    model
        ``"auto"`` (model selection over ``candidates``, see ``selection``), a registered model name
        (``"mono_exp"``, ``"biexp_uptake"``, ``"biexp"``, ``"triexp"``, ``"trapezoid"``,
        ``"trapezoid_fitted_tail"`` or a plug-in), or a model object implementing
        :class:`~theratwin.kinetics.KineticModel`.
    activity_sd_MBq
        Standard deviation of each activity (MBq). Used as weights ``1/sd^2`` and taken as absolute (the
        covariance is ``(J^T W J)^-1``). When None the errors are taken as constant with a scale estimated from
        the residuals (needs more points than parameters).
    candidates
        Models considered by ``"auto"`` (default: every selectable registered model).
    average
        With ``"auto"``, report the model-average TIA and its SD; otherwise the TIA of the selected model.
    selection
        ``"evidence"`` (default): prior-informed (MAP) fits compared by their Laplace evidence, posterior model
        averaging (SD by the law of total variance); ``"aicc"``: least-squares fits, AICc, Akaike weights
        (SD by Burnham & Anderson 2002 eq. 4.9). See the module docstring.
    priors
        :class:`~theratwin.kinetics.priors.KineticPriors` (or a dictionary of its fields) of the prior-informed
        fits; default: the built-in ones. With a model given by name, passing priors makes its fit a MAP fit.

    Returns
    -------
    TacFit
        The fit; ``method`` says how the TIA was obtained, ``notes`` lists every fallback applied.

    Raises
    ------
    InvalidInputError
        Unequal lengths, NaN, negative activities or times, duplicated times, bad SDs.
    FitError
        An explicitly requested model has more parameters than the samples support, or no fit is possible.
    ConfigurationError
        Unknown ``selection`` or invalid ``priors``.

    Notes
    -----
    Documented fallbacks (reported in ``notes`` and ``method == "fallback:..."``):

    - all activities zero: TIA = 0 (model ``"zero"``), SD from the trapezoidal propagation if SDs are given;
    - a curve that never decreases within the sampled window (maximum at the last sample) with ``"auto"``:
      trapezoidal rule with a physical-decay tail (no clearance is extrapolated that the data do not show);
    - ``"auto"`` with two samples: trapezoidal rule with a fitted (>= physical) tail;
    - ``"auto"`` when the samples support a single candidate only (e.g. AICc with ``n < k + 2`` for every other
      model): that candidate's fit, which is not a selection.

    With given SDs the covariance is ``H^-1`` (``H = J^T W J``, plus the prior precision for a MAP fit); if the
    residuals are inconsistent with the SDs (chi-square test on ``n - p_eff`` degrees of freedom, p < 0.01) it is
    scaled by ``chi2/dof`` (Birge ratio) and a note says so.
    """
    if selection not in SELECTIONS:
        raise ConfigurationError(f"selection must be one of {SELECTIONS}; got {selection!r}.")
    t, a, sd, notes = _validate(time_h, activity_MBq, activity_sd_MBq)
    nuc = nuclides.get(nuclide)
    lp = float(nuc.decay_constant_per_h)
    n = t.size

    if np.all(a == 0):
        notes.append("All activities are zero: TIA = 0 reported (no uptake measured).")
        res = _direct(get_model("trapezoid"), t, a, sd, lp, nuc.name, notes, "fallback:zero")
        res.model = "zero"
        res.model_weights = {"zero": 1.0}
        res.aicc = {"zero": None}
        return res

    never_decreasing = n >= 2 and int(np.argmax(a)) == n - 1
    if never_decreasing:
        notes.append(
            f"The curve never decreases within the sampled window (maximum at the last sample, "
            f"t = {t[-1]:.1f} h): clearance after it is not supported by the data."
        )

    if not (isinstance(model, str) and model.lower() == "auto"):
        m = get_model(model)
        if hasattr(m, "fit_direct"):
            return _direct(m, t, a, sd, lp, nuc.name, notes, f"fit:{m.name}")
        k = len(m.param_names)
        use_priors = priors is not None and hasattr(m, "prior_terms")
        terms = list(m.prior_terms(_as_priors(priors))) if use_priors else []
        need = k + 1 if (not terms or sd is None) else k
        if n < need:
            raise FitError(
                f"The {m.name} model has {k} parameters but only {n} time points were given; it needs at least "
                f"{need}. Use a model with fewer parameters (e.g. 'mono_exp' needs 3 points, 'trapezoid' 1) "
                "or a single-time-point method."
            )
        mf = _fit_one(m, t, a, sd, lp, terms)
        res = _from_single(mf, weights={m.name: 1.0}, aiccs={m.name: mf.aicc},
                           method=f"{'map' if terms else 'fit'}:{m.name}", nuclide=nuc.name, t=t, a=a, sd=sd,
                           cands={m.name: mf}, notes=notes)
        res.priors = _as_priors(priors).to_dict() if terms else None
        return res

    if n == 1:
        raise FitError(
            f"Only one time point (t = {t[0]:.1f} h): no curve can be fitted. Use "
            "theratwin.kinetics.single_time_point (Hänscheid, Madsen or prior-informed)."
        )
    if never_decreasing:
        notes.append("Fallback: trapezoidal rule with a physical-decay tail after the last sample.")
        return _direct(get_model("trapezoid"), t, a, sd, lp, nuc.name, notes, "fallback:trapezoid")
    if n == 2:
        notes.append("Fallback: two samples support no model selection; trapezoidal rule with a fitted "
                     "(>= physical) tail.")
        return _direct(get_model("trapezoid_fitted_tail"), t, a, sd, lp, nuc.name, notes,
                       "fallback:trapezoid_fitted_tail")

    names = list(candidates) if candidates is not None else list(selectable_models())
    if selection == "evidence":
        return _select_by_evidence(names, t, a, sd, lp, nuc.name, notes, _as_priors(priors), average)
    return _select_by_aicc(names, t, a, sd, lp, nuc.name, notes, average)


def _only_candidate(mf: ModelFit, criterion: str, t: np.ndarray, a: np.ndarray, sd: np.ndarray | None,
                    nuclide: str, notes: list[str]) -> TacFit:
    notes.append(f"Fallback: only {mf.model} is supported by {t.size} points for {criterion}; its fit is used "
                 "alone (no model selection happened).")
    return _from_single(mf, weights={mf.model: 1.0}, aiccs={mf.model: mf.aicc}, method=f"fallback:{mf.model}",
                        nuclide=nuclide, t=t, a=a, sd=sd, cands={mf.model: mf}, notes=notes)


def _select_by_evidence(names: list[str], t: np.ndarray, a: np.ndarray, sd: np.ndarray | None, lp: float,
                        nuclide: str, notes: list[str], priors: KineticPriors, average: bool) -> TacFit:
    """Prior-informed fits of the candidates, weighted by their Laplace evidence (see the module docstring)."""
    n = t.size
    fits: dict[str, ModelFit] = {}
    skipped: list[str] = []
    for nm in names:
        m = get_model(nm)
        k = len(m.param_names)
        if not hasattr(m, "prior_terms") or hasattr(m, "fit_direct"):
            skipped.append(f"{nm} (no priors: not comparable by evidence)")
            continue
        terms = list(m.prior_terms(priors))
        if k - len(terms) != 1:
            # the improper flat prior of the log-amplitude cancels between models only if every model has exactly
            # this one unconstrained parameter
            skipped.append(f"{nm} ({k - len(terms)} parameters without a prior; 1 needed)")
            continue
        if k > (n if sd is not None else n - 1):
            skipped.append(f"{nm} ({k} parameters)")
            continue
        try:
            mf = _fit_one(m, t, a, sd, lp, terms, evidence=True)
        except FitError as exc:
            notes.append(str(exc))
            continue
        if mf.log_evidence is None or not np.isfinite(mf.tia_MBq_h):
            notes.append(f"{nm}: evidence not computable (parameters not determined); left out of the selection.")
            continue
        fits[nm] = mf
    if skipped:
        notes.append(f"Models not considered (evidence selection, {n} points"
                     f"{'' if sd is not None else ' without SDs'}): {', '.join(skipped)}.")
    if not fits:
        raise FitError(f"No kinetic model could be fitted to t = {t.tolist()} h, A = {a.tolist()} MBq.")
    if len(fits) == 1:
        res = _only_candidate(next(iter(fits.values())), "the evidence", t, a, sd, nuclide, notes)
        res.priors = priors.to_dict()
        return res
    lev = {nm: float(mf.log_evidence) for nm, mf in fits.items()}  # type: ignore[arg-type]
    top = max(lev.values())
    raw = {nm: math.exp(v - top) for nm, v in lev.items()}
    tot = sum(raw.values())
    weights = {nm: w / tot for nm, w in raw.items()}
    best = max(weights, key=lambda nm: weights[nm])
    res = _from_single(fits[best], weights=weights, aiccs={nm: None for nm in fits}, method=f"evidence:{best}",
                       nuclide=nuclide, t=t, a=a, sd=sd, cands=fits, notes=notes)
    res.selection = "evidence"
    res.log_evidence = {nm: lev.get(nm) for nm in fits}
    res.priors = priors.to_dict()
    res.fit_quality["posterior_probability"] = weights[best]
    if average:
        _averaged(res, fits, weights, "evidence_average", total_variance=True)
    return res


def _select_by_aicc(names: list[str], t: np.ndarray, a: np.ndarray, sd: np.ndarray | None, lp: float,
                    nuclide: str, notes: list[str], average: bool) -> TacFit:
    """Least-squares fits of the candidates AICc supports, Akaike weights (NUKFIT-style)."""
    n = t.size
    k_extra = 0 if sd is not None else 1
    eligible = [nm for nm in names if not hasattr(get_model(nm), "fit_direct")
                and n - (len(get_model(nm).param_names) + k_extra) - 1 >= 1]
    skipped = [nm for nm in names if nm not in eligible]
    if skipped:
        notes.append(f"Models not considered (more parameters than {n} points support for AICc): "
                     f"{', '.join(skipped)}.")
    if not eligible:
        notes.append("Too few points for AICc selection.")
        return _only_candidate(_fit_one(get_model("mono_exp"), t, a, sd, lp), "AICc", t, a, sd, nuclide, notes)
    fits: dict[str, ModelFit] = {}
    for nm in eligible:
        try:
            mf = _fit_one(get_model(nm), t, a, sd, lp)
        except FitError as exc:
            notes.append(str(exc))
            continue
        if mf.aicc is None or not np.isfinite(mf.tia_MBq_h) or not np.isfinite(mf.aicc):
            notes.append(f"{nm}: fit not usable (non-finite TIA or AICc); left out of the selection.")
            continue
        fits[nm] = mf
    if not fits:
        raise FitError(f"No kinetic model could be fitted to t = {t.tolist()} h, A = {a.tolist()} MBq.")
    if len(fits) == 1:
        return _only_candidate(next(iter(fits.values())), "AICc", t, a, sd, nuclide, notes)
    ics = {nm: float(mf.aicc) for nm, mf in fits.items()}  # type: ignore[arg-type]
    best_ic = min(ics.values())
    raw = {nm: math.exp(-0.5 * (ic - best_ic)) for nm, ic in ics.items()}
    tot = sum(raw.values())
    weights = {nm: w / tot for nm, w in raw.items()}
    best = min(ics, key=lambda nm: ics[nm])
    aicc_all: dict[str, float | None] = {nm: ics.get(nm) for nm in names}
    res = _from_single(fits[best], weights=weights, aiccs=aicc_all, method=f"aicc:{best}", nuclide=nuclide,
                       t=t, a=a, sd=sd, cands=fits, notes=notes)
    res.selection = "aicc"
    if average:
        _averaged(res, fits, weights, "model_average", total_variance=False)
    return res


def _available() -> list[str]:  # pragma: no cover - debugging helper
    return KINETIC_MODELS.names()
