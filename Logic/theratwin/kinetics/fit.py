"""Fitting of one time-activity curve: weighted least squares, covariance, TIA with SD, AICc selection.

References
----------
- Kletting P, Schimmel S, Kestler HA, et al. Molecular radiotherapy: the NUKFIT software for calculating the
  time-integrated activity coefficient. Med Phys 2013;40:102504 (model set, AICc selection, weights).
- Glatting G, Kletting P, Reske SN, et al. Choosing the optimal fit function: comparison of the Akaike
  information criterion and the F-test. Med Phys 2007;34:4285-92.
- Burnham KP, Anderson DR. Model Selection and Multimodel Inference, 2nd ed. Springer 2002 (AICc eq. 2.2,
  Akaike weights eq. 2.14, unconditional variance of a model-averaged estimate eq. 4.9 after Buckland et al.
  1997 Biometrics 53:603).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import chi2 as chi2_dist

from .. import nuclides
from ..errors import FitError, InvalidInputError
from .models import KINETIC_MODELS, get_model, selectable_models

__all__ = ["TacFit", "ModelFit", "fit_tac", "aicc"]


@dataclass
class ModelFit:
    """One model fitted to one curve (a candidate of :class:`TacFit`).

    Attributes
    ----------
    model
        Model name.
    theta, theta_covariance
        Internal parameters and their covariance.
    params, params_sd, covariance, covariance_names
        Readable parameters (units in their names), their SDs and covariance matrix (order
        ``covariance_names``), propagated from ``theta_covariance`` by the Jacobian.
    tia_MBq_h, tia_sd_MBq_h
        Time-integrated activity 0..infinity (MBq·h) and its SD (delta method).
    chi2, dof, aicc
        Weighted residual sum of squares, degrees of freedom, AICc (None when undefined).
    """

    model: str
    theta: np.ndarray
    theta_covariance: np.ndarray
    params: dict[str, float]
    params_sd: dict[str, float]
    covariance: np.ndarray
    covariance_names: list[str]
    tia_MBq_h: float
    tia_sd_MBq_h: float
    effective_half_life_h: float
    chi2: float
    dof: int
    n_params: int
    aicc: float | None
    r_squared: float
    notes: list[str] = field(default_factory=list)
    _predict: Any = field(default=None, repr=False)

    def predict(self, time_h: Any) -> np.ndarray:
        """Fitted activity (MBq) at ``time_h``."""
        return np.asarray(self._predict(np.asarray(time_h, float)), float)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "params": self.params, "params_sd": self.params_sd,
            "tia_MBq_h": self.tia_MBq_h, "tia_sd_MBq_h": self.tia_sd_MBq_h,
            "effective_half_life_h": self.effective_half_life_h, "chi2": self.chi2, "dof": self.dof,
            "n_params": self.n_params, "aicc": self.aicc, "r_squared": self.r_squared, "notes": list(self.notes),
        }


@dataclass
class TacFit:
    """Result of :func:`fit_tac`.

    Attributes
    ----------
    model
        Name of the selected model (lowest AICc) or of the fallback used.
    params, params_sd, covariance, covariance_names
        Parameters of the selected model (units in their names), their SDs and covariance.
    tia_MBq_h, tia_sd_MBq_h
        Time-integrated activity from 0 to infinity (MBq·h) and its SD. With ``model="auto"`` and
        ``average=True`` this is the Akaike-weighted model average (``method == "model_average"``).
    effective_half_life_h
        Half-life of the terminal phase of the selected model (h).
    model_weights
        Akaike weights of the candidates (sum 1), ``{model: weight}``.
    aicc
        AICc of each candidate (None when undefined for the number of points).
    method
        ``"fit:<model>"``, ``"model_average"`` or ``"fallback:<model>"``.
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
    _predict: Any = field(default=None, repr=False)

    @property
    def fallback(self) -> bool:
        """True when a documented fallback replaced the requested fit."""
        return self.method.startswith("fallback")

    def predict(self, time_h: Any) -> np.ndarray:
        """Activity (MBq) at ``time_h`` (the Akaike-weighted mean curve when the TIA is model-averaged)."""
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
            "candidates": {k: v.to_dict() for k, v in self.candidates.items()},
        }


def aicc(chi2: float, n_points: int, n_params: int) -> float | None:
    """Corrected Akaike information criterion ``chi2 + 2k + 2k(k+1)/(n-k-1)`` (Burnham & Anderson 2002,
    eq. 2.2, Gaussian errors; the likelihood constant cancels between models fitted to the same data).

    Returns None when ``n - k - 1 < 1`` (AICc undefined).
    """
    if n_points - n_params - 1 < 1:
        return None
    k = n_params
    return chi2 + 2.0 * k + 2.0 * k * (k + 1) / (n_points - k - 1)


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


def _num_grad(fun: Any, x: np.ndarray) -> np.ndarray:
    """Central-difference Jacobian of a vector (or scalar) function of ``x``."""
    f0 = np.atleast_1d(np.asarray(fun(x), float))
    jac = np.empty((f0.size, x.size))
    for i in range(x.size):
        h = 1e-6 * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        jac[:, i] = (np.atleast_1d(fun(xp)) - np.atleast_1d(fun(xm))) / (2 * h)
    return jac


def _fit_one(model: Any, t: np.ndarray, a: np.ndarray, sd: np.ndarray | None, lp: float) -> ModelFit:
    name = model.name
    k = len(model.param_names)
    n = t.size
    scale = sd if sd is not None else np.full(n, max(float(np.max(a)), 1e-30))

    def resid(theta: np.ndarray) -> np.ndarray:
        return (model.evaluate(theta, t, lp) - a) / scale

    best = None
    for x0 in model.initial_guesses(t, a, lp):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = least_squares(resid, np.asarray(x0, float), method="lm", xtol=1e-12, ftol=1e-12,
                                  gtol=1e-12, max_nfev=2000 * (k + 1))
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise FitError(f"The {name} model could not be fitted to t = {t.tolist()} h, A = {a.tolist()} MBq.")
    theta = best.x
    jac = best.jac
    chi2 = float(np.sum(best.fun**2))
    dof = n - k
    notes: list[str] = []
    jtj = jac.T @ jac
    cov = np.linalg.pinv(jtj, rcond=1e-12)
    if sd is None:
        # unknown error scale: estimate it from the residuals (unweighted least squares)
        s2 = chi2 / dof if dof > 0 else np.inf
        cov = cov * s2
    elif dof > 0 and chi2 > chi2_dist.ppf(0.99, dof):
        # the data scatter more than their stated SDs allow (chi-square test, p < 0.01): scale the
        # covariance by the reduced chi-square (Birge ratio) so the TIA SD reflects the misfit
        cov = cov * (chi2 / dof)
        notes.append(f"{name}: residuals exceed the stated uncertainties (chi2 = {chi2:.1f} for {dof} degrees of "
                     f"freedom, p < 0.01); covariance scaled by chi2/dof = {chi2 / dof:.1f}.")
    if np.linalg.matrix_rank(jtj) < k:
        notes.append(f"{name}: some parameters are not determined by the data (singular Jacobian); their SD "
                     "is reported from the pseudo-inverse.")
    tia = float(model.tia(theta, lp))
    g = _num_grad(lambda th: model.tia(th, lp), theta)[0]
    var = float(g @ cov @ g)
    tia_sd = math.sqrt(var) if np.isfinite(var) and var >= 0 else float("nan")
    names = list(model.physical_params(theta, lp).keys())
    pj = _num_grad(lambda th: np.array(list(model.physical_params(th, lp).values())), theta)
    pcov = pj @ cov @ pj.T
    params = model.physical_params(theta, lp)
    params_sd = {nm: float(math.sqrt(max(pcov[i, i], 0.0))) if np.isfinite(pcov[i, i]) else float("nan")
                 for i, nm in enumerate(names)}
    fitted = model.evaluate(theta, t, lp)
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    r2 = 1.0 - float(np.sum((a - fitted) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    if sd is not None:
        ic = aicc(chi2, n, k)
    else:
        # sigma estimated from the residuals: AICc = n ln(RSS/n) + 2K + 2K(K+1)/(n-K-1) with K = k + 1
        # (the variance counts as a parameter; Glatting et al. 2007, Burnham & Anderson 2002 eq. 2.2)
        rss = chi2 * float(scale[0]) ** 2
        base = aicc(0.0, n, k + 1)
        ic = None if base is None else n * math.log(max(rss, 1e-300) / n) + base
    return ModelFit(
        model=name, theta=theta, theta_covariance=cov, params={kk: float(v) for kk, v in params.items()},
        params_sd=params_sd, covariance=pcov, covariance_names=names, tia_MBq_h=tia, tia_sd_MBq_h=tia_sd,
        effective_half_life_h=float(model.effective_half_life_h(theta, lp)), chi2=chi2, dof=dof, n_params=k,
        aicc=ic, r_squared=r2, notes=notes, _predict=lambda tq, th=theta: model.evaluate(th, tq, lp),
    )


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
    return q


def fit_tac(
    time_h: Any,
    activity_MBq: Any,
    nuclide: str = "Lu-177",
    model: str | Any = "auto",
    activity_sd_MBq: Any = None,
    *,
    candidates: list[str] | None = None,
    average: bool = True,
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
        ``"auto"`` (AICc selection over ``candidates``), a registered model name (``"mono_exp"``,
        ``"biexp_uptake"``, ``"biexp"``, ``"triexp"``, ``"trapezoid"``, ``"trapezoid_fitted_tail"`` or a
        plug-in), or a model object implementing :class:`~theratwin.kinetics.KineticModel`.
    activity_sd_MBq
        Standard deviation of each activity (MBq). Used as weights ``1/sd^2`` and taken as absolute (the
        covariance is ``(J^T W J)^-1``). When None the fit is unweighted and the error scale is estimated from
        the residuals (needs more points than parameters).
    candidates
        Models considered by ``"auto"`` (default: every selectable registered model).
    average
        With ``"auto"``, report the Akaike-weighted model-average TIA and its unconditional SD
        (Burnham & Anderson 2002 eq. 4.9); otherwise the TIA of the selected model.

    Returns
    -------
    TacFit
        The fit; ``notes`` lists every fallback applied.

    Raises
    ------
    InvalidInputError
        Unequal lengths, NaN, negative activities or times, duplicated times, bad SDs.
    FitError
        An explicitly requested model has as many or more parameters than samples, or no fit is possible.

    Notes
    -----
    Documented fallbacks (reported in ``notes`` and ``method == "fallback:..."``):

    - all activities zero: TIA = 0 (model ``"zero"``), SD from the trapezoidal propagation if SDs are given;
    - a curve that never decreases within the sampled window (maximum at the last sample) with ``"auto"``:
      trapezoidal rule with a physical-decay tail (no clearance is extrapolated that the data do not show);
    - ``"auto"`` with too few samples for any AICc-eligible model (``n < k + 2``): mono-exponential if it has
      at least one degree of freedom, otherwise the trapezoidal rule with a fitted (>= physical) tail.

    With given SDs the covariance is ``(J^T W J)^-1``; if the residuals are inconsistent with the SDs
    (chi-square test, p < 0.01) it is scaled by ``chi2/dof`` (Birge ratio) and a note says so.
    """
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
        if n <= k:
            raise FitError(
                f"The {m.name} model has {k} parameters but only {n} time points were given; it needs at least "
                f"{k + 1}. Use a model with fewer parameters (e.g. 'mono_exp' needs 3 points, 'trapezoid' 1) "
                "or a single-time-point method."
            )
        mf = _fit_one(m, t, a, sd, lp)
        return _from_single(mf, weights={m.name: 1.0}, aiccs={m.name: mf.aicc}, method=f"fit:{m.name}",
                            nuclide=nuc.name, t=t, a=a, sd=sd, cands={m.name: mf}, notes=notes)

    if n == 1:
        raise FitError(
            f"Only one time point (t = {t[0]:.1f} h): no curve can be fitted. Use "
            "theratwin.kinetics.single_time_point (Hänscheid, Madsen or prior-informed)."
        )
    if never_decreasing:
        notes.append("Fallback: trapezoidal rule with a physical-decay tail after the last sample.")
        return _direct(get_model("trapezoid"), t, a, sd, lp, nuc.name, notes, "fallback:trapezoid")

    names = list(candidates) if candidates is not None else list(selectable_models())
    k_extra = 0 if sd is not None else 1
    eligible = [nm for nm in names if n - (len(get_model(nm).param_names) + k_extra) - 1 >= 1]
    skipped = [nm for nm in names if nm not in eligible]
    if skipped:
        notes.append(f"Models not considered (more parameters than {n} points support for AICc): "
                     f"{', '.join(skipped)}.")
    if not eligible:
        if n > len(get_model("mono_exp").param_names):
            notes.append("Fallback: too few points for AICc selection; mono-exponential fit used alone.")
            mf = _fit_one(get_model("mono_exp"), t, a, sd, lp)
            return _from_single(mf, weights={"mono_exp": 1.0}, aiccs={"mono_exp": mf.aicc},
                                method="fallback:mono_exp", nuclide=nuc.name, t=t, a=a, sd=sd,
                                cands={"mono_exp": mf}, notes=notes)
        notes.append("Fallback: too few points for any fit; trapezoidal rule with a fitted (>= physical) tail.")
        return _direct(get_model("trapezoid_fitted_tail"), t, a, sd, lp, nuc.name, notes,
                       "fallback:trapezoid_fitted_tail")

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
    ics = {nm: float(mf.aicc) for nm, mf in fits.items()}  # type: ignore[arg-type]
    best_ic = min(ics.values())
    raw = {nm: math.exp(-0.5 * (ic - best_ic)) for nm, ic in ics.items()}
    tot = sum(raw.values())
    weights = {nm: w / tot for nm, w in raw.items()}
    best = min(ics, key=lambda nm: ics[nm])
    aicc_all: dict[str, float | None] = {nm: ics.get(nm) for nm in names}
    res = _from_single(fits[best], weights=weights, aiccs=aicc_all, method=f"fit:{best}", nuclide=nuc.name,
                       t=t, a=a, sd=sd, cands=fits, notes=notes)
    if average and len(fits) > 1:
        tia_avg = sum(weights[nm] * fits[nm].tia_MBq_h for nm in fits)
        # unconditional SD of a model-averaged estimate (Burnham & Anderson 2002, eq. 4.9)
        sd_avg = sum(weights[nm] * math.sqrt(fits[nm].tia_sd_MBq_h ** 2 + (fits[nm].tia_MBq_h - tia_avg) ** 2)
                     for nm in fits)
        res.tia_MBq_h = float(tia_avg)
        res.tia_sd_MBq_h = float(sd_avg)
        res.method = "model_average"

        def predict(tq: np.ndarray) -> np.ndarray:
            return sum(weights[nm] * fits[nm].predict(tq) for nm in fits)  # type: ignore[return-value]

        res._predict = predict
    return res


def _available() -> list[str]:  # pragma: no cover - debugging helper
    return KINETIC_MODELS.names()
