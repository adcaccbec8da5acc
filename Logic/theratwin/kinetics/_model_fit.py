"""One kinetic model fitted to one time-activity curve: weighted least squares or MAP (prior-informed), the
covariance, the TIA with its SD, AICc and the Laplace evidence. :func:`theratwin.kinetics.fit_tac` (``fit.py``)
selects among such fits; see its module docstring for the references.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import chi2 as chi2_dist

from ..errors import FitError
from .priors import PriorTerm

__all__ = ["ModelFit", "aicc"]

# Without SDs the error scale is estimated from the residuals; on noiseless data it would reach 0. It is kept at
# or above 1e-6 of the largest sample (far below any measurement error, far above the optimiser's tolerance).
_SIGMA_FLOOR_REL = 1e-6
_SIGMA_START_REL = 0.05  # first guess of the relative error scale of a prior-informed fit without SDs
_SIGMA_ITERATIONS = 12
_MAP_STARTS = 3  # starting points optimised in a prior-informed fit (the best by objective value)


@dataclass
class ModelFit:
    """One model fitted to one curve (a candidate of :class:`~theratwin.kinetics.TacFit`).

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
        Weighted residual sum of squares (in units of the estimated error scale when no SDs were given), degrees
        of freedom ``n - n_params_effective``, AICc (None when undefined or for a prior-informed fit).
    log_evidence
        Laplace approximation of the log marginal likelihood, up to a constant common to every model fitted to
        the same data (None unless computed for evidence selection).
    n_params_effective
        Parameters the data determine, ``tr(J H^-1 J^T)``: ``k`` for least squares, less for a MAP fit.
    priors
        The prior terms of a MAP fit: name, mean, SD and the fitted value of each constrained quantity.
    sigma_MBq
        Error scale estimated from the residuals when no SDs were given (MBq); None otherwise.
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
    dof: float
    n_params: int
    aicc: float | None
    r_squared: float
    notes: list[str] = field(default_factory=list)
    log_evidence: float | None = None
    n_params_effective: float = float("nan")
    priors: list[dict[str, Any]] = field(default_factory=list)
    sigma_MBq: float | None = None
    _predict: Any = field(default=None, repr=False)

    @property
    def prior_informed(self) -> bool:
        """True for a MAP fit (priors on some parameters)."""
        return bool(self.priors)

    def predict(self, time_h: Any) -> np.ndarray:
        """Fitted activity (MBq) at ``time_h``."""
        return np.asarray(self._predict(np.asarray(time_h, float)), float)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "params": self.params, "params_sd": self.params_sd,
            "tia_MBq_h": self.tia_MBq_h, "tia_sd_MBq_h": self.tia_sd_MBq_h,
            "effective_half_life_h": self.effective_half_life_h, "chi2": self.chi2, "dof": self.dof,
            "n_params": self.n_params, "aicc": self.aicc, "r_squared": self.r_squared, "notes": list(self.notes),
            "log_evidence": self.log_evidence, "n_params_effective": self.n_params_effective,
            "priors": [dict(p) for p in self.priors], "sigma_MBq": self.sigma_MBq,
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


def _solve(resid: Any, guesses: Sequence[np.ndarray], k: int, jac: Any = None) -> Any:
    """The best (lowest cost) Levenberg-Marquardt solution over the starting points, or None."""
    best = None
    for x0 in guesses:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = least_squares(resid, np.asarray(x0, float), jac="2-point" if jac is None else jac, method="lm",
                                  xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=2000 * (k + 1))
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    return best


def _at_prior_mean(theta: np.ndarray, c: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``theta`` moved (least change) onto the prior means ``c theta = mu``: one more starting point."""
    return theta - c.T @ np.linalg.lstsq(c @ c.T, c @ theta - mu, rcond=None)[0]


def _effective_params(j_data: np.ndarray, cov: np.ndarray) -> float:
    """Number of parameters the data determine, ``tr(J H^-1 J^T)`` (k for least squares, less with priors)."""
    return float(np.trace(j_data @ cov @ j_data.T))


def _fit_one(model: Any, t: np.ndarray, a: np.ndarray, sd: np.ndarray | None, lp: float,
             prior_terms: Sequence[PriorTerm] = (), *, evidence: bool = False) -> ModelFit:
    """Fit one model by weighted least squares, or by MAP when ``prior_terms`` are given.

    MAP: the standardised prior residuals ``(c theta - mean) / sd`` are appended to the weighted data residuals,
    so Levenberg-Marquardt minimises ``chi2 + sum r_p^2`` (minus twice the log posterior) and the Gauss-Newton
    Hessian of the stacked residuals is the Laplace posterior precision ``H = J^T W J + C^T S^-2 C``. Without
    SDs the error scale ``sigma`` (constant, MBq) is unknown: it is re-estimated from the residuals,
    ``sigma^2 = RSS / (n - p_eff)`` with ``p_eff = tr(J H^-1 J^T)`` the parameters the data determine (for least
    squares ``n - k``, the usual unbiased estimate), and the MAP fit repeated until it settles. With
    ``evidence`` the Laplace approximation of the log marginal likelihood is recorded (see ``fit_tac``).
    """
    name = model.name
    k = len(model.param_names)
    n = t.size
    terms = list(prior_terms)
    m = len(terms)
    c = np.array([pt.coefficients for pt in terms], float).reshape(m, k)
    mu = np.array([pt.mean for pt in terms], float)
    s_p = np.array([pt.sd for pt in terms], float)
    a_max = max(float(np.max(np.abs(a))), 1e-30)
    floor = _SIGMA_FLOOR_REL * a_max

    def make(scale: np.ndarray) -> Any:
        def resid(theta: np.ndarray) -> np.ndarray:
            r = (model.evaluate(theta, t, lp) - a) / scale
            return np.concatenate([r, (c @ theta - mu) / s_p]) if m else r
        return resid

    model_jac = getattr(model, "jacobian", None)

    def make_jac(scale: np.ndarray) -> Any:
        if model_jac is None:
            return None

        def jac(theta: np.ndarray) -> np.ndarray:
            j = np.asarray(model_jac(theta, t, lp), float) / scale[:, None]
            return np.vstack([j, c / s_p[:, None]]) if m else j
        return jac

    guesses = [np.asarray(g, float) for g in model.initial_guesses(t, a, lp)]
    scale = sd if sd is not None else np.full(n, (_SIGMA_START_REL if m else 1.0) * a_max)
    if m and guesses:
        # the priors smooth the objective: start from the prior means too, and optimise from the few starts with
        # the lowest objective only (each Levenberg-Marquardt run costs ~10^2 model evaluations)
        guesses.append(_at_prior_mean(guesses[0], c, mu))
        obj = make(scale)
        costs = [float(np.sum(r**2)) if np.all(np.isfinite(r := obj(g))) else np.inf for g in guesses]
        guesses = [guesses[i] for i in np.argsort(costs)[:_MAP_STARTS]]
    best = _solve(make(scale), guesses, k, make_jac(scale))
    if best is None:
        raise FitError(f"The {name} model could not be fitted to t = {t.tolist()} h, A = {a.tolist()} MBq.")

    def sigma_hat(res: Any, sc: np.ndarray) -> float:
        jd = res.jac[:n]
        cov_ = np.linalg.pinv(res.jac.T @ res.jac, rcond=1e-12)
        rss_ = float(np.sum((res.fun[:n] * sc) ** 2))
        return max(math.sqrt(rss_ / max(n - _effective_params(jd, cov_), 0.5)), floor)

    if sd is None and m:
        # unknown error scale with priors: the MAP depends on sigma; iterate to the fixed point
        for _ in range(_SIGMA_ITERATIONS):
            sig = sigma_hat(best, scale)
            if abs(math.log(sig / float(scale[0]))) < 1e-3:
                break
            scale = np.full(n, sig)
            best = _solve(make(scale), [best.x], k, make_jac(scale)) or best
        final = _solve(make(scale), [best.x, *guesses], k, make_jac(scale))  # all starts once more at the final scale
        if final is not None and final.cost <= best.cost:
            best = final
    theta = best.x
    jac = np.array(best.jac, float)
    r_data = np.array(best.fun[:n], float)
    if sd is None:
        # express the data rows in units of the estimated error scale
        sig = sigma_hat(best, scale)
        jac[:n] *= scale[:, None] / sig
        r_data *= scale / sig
        sigma: float | None = sig
    else:
        sigma = None
    j_data = jac[:n]
    h = jac.T @ jac
    cov = np.linalg.pinv(h, rcond=1e-12)
    p_eff = float(k) if not m else _effective_params(j_data, cov)
    chi2 = float(np.sum(r_data**2))
    dof = n - p_eff
    notes: list[str] = []
    if sd is not None and dof > 0 and chi2 > chi2_dist.ppf(0.99, dof):
        # the data scatter more than their stated SDs allow (chi-square test, p < 0.01): scale the
        # covariance by the reduced chi-square (Birge ratio) so the TIA SD reflects the misfit
        cov = cov * (chi2 / dof)
        notes.append(f"{name}: residuals exceed the stated uncertainties (chi2 = {chi2:.1f} for {dof:.1f} degrees "
                     f"of freedom, p < 0.01); covariance scaled by chi2/dof = {chi2 / dof:.1f}.")
    if np.linalg.matrix_rank(h) < k:
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
    ic: float | None = None
    if m == 0 and sd is not None:
        ic = aicc(chi2, n, k)
    elif m == 0:
        # sigma estimated from the residuals: AICc = n ln(RSS/n) + 2K + 2K(K+1)/(n-K-1) with K = k + 1
        # (the variance counts as a parameter; Glatting et al. 2007, Burnham & Anderson 2002 eq. 2.2)
        rss = float(np.sum((fitted - a) ** 2))
        base = aicc(0.0, n, k + 1)
        ic = None if base is None else n * math.log(max(rss, 1e-300) / n) + base
    r_prior = (c @ theta - mu) / s_p if m else np.zeros(0)
    log_ev: float | None = None
    if evidence:
        sign, logdet = np.linalg.slogdet(h)
        if sign > 0 and np.isfinite(logdet):
            # Laplace approximation of ln p(data | model) up to a constant common to all models fitted to the same
            # data: -chi2/2 + ln prior(theta*) + (k/2) ln 2pi - ln|H|/2, the flat prior of the log-amplitude
            # contributing unit density (MacKay 2003, Information Theory, Inference and Learning
            # Algorithms, ch. 27-28). Unknown sigma: its estimate is plugged in (-n ln sigma).
            log_ev = (-0.5 * chi2 - 0.5 * float(np.sum(r_prior**2)) - float(np.sum(np.log(s_p)))
                      - 0.5 * logdet + 0.5 * (k - m) * math.log(2.0 * math.pi))
            if sigma is not None:
                log_ev -= n * math.log(sigma)
    prior_info = [{"name": pt.name, "mean": pt.mean, "sd": pt.sd, "value": float(np.dot(pt.coefficients, theta))}
                  for pt in terms]
    return ModelFit(
        model=name, theta=theta, theta_covariance=cov, params={kk: float(v) for kk, v in params.items()},
        params_sd=params_sd, covariance=pcov, covariance_names=names, tia_MBq_h=tia, tia_sd_MBq_h=tia_sd,
        effective_half_life_h=float(model.effective_half_life_h(theta, lp)), chi2=chi2, dof=dof, n_params=k,
        aicc=ic, r_squared=r2, notes=notes, log_evidence=log_ev, n_params_effective=p_eff, priors=prior_info,
        sigma_MBq=sigma, _predict=lambda tq, th=theta: model.evaluate(th, tq, lp),
    )
