"""Kinetic model family of the twin, its registry, and the vectorised Bayesian fit (MAP + Laplace).

Twin models
-----------
A twin model maps the per-structure, per-cycle log-parameters η (last axis, ``n_params`` long) and the
administration to a **sum of exponentials** ``A(t) = Σ_m c_m exp(−k_m t)`` (coefficients in MBq, rates in 1/h).
Everything downstream — time-integrated activity ``Σ c_m/k_m``, the Lea–Catcheside factor of the BED, the
fit — works on that representation, so a plug-in only implements this small protocol (:class:`TwinModel`):

``name: str``, ``n_params: int``
``prior(structure, radiopharmaceutical, nuclide, overrides) -> StructurePrior``
``exponentials(eta, administered_MBq, ligand_nmol, structures, lambda_phys_per_h) -> (coef_MBq, rate_per_h)``
    ``eta`` has shape ``(S, ..., n_params)`` (S structures, in the order of ``structures``); the other
    arrays broadcast against ``eta[..., 0]``; the outputs have shape ``eta.shape[:-1] + (M,)``.
``log_activity_jacobian(...)`` (optional) — analytic ``(log A, ∂ log A/∂η)`` for the fit; without it the
    fit differentiates ``exponentials`` numerically.

Plug-ins register in :data:`TWIN_MODELS` (entry-point group ``theratwin.twin_models``); the built-ins are
``"biexp"`` (:class:`BiexponentialModel`) and ``"pbpk_psma"`` (:class:`theratwin.twin.pbpk.PBPKSaturationModel`).

Posterior
---------
Per structure the unknowns are x = (θ, κ_1 … κ_K, δ_1 … δ_K): the patient parameters, one IOV deviation per
observed cycle and one correlated measurement error per cycle (``δ_k``: a log-scale factor shared by every
scan of the structure in cycle k — calibration, segmentation, recovery; it scales what was *measured*, not
the patient's activity, so TIA and dose use θ + κ_k only). The negative log posterior is the sum of squares of

* data residuals ``(ln y_j − ln A(t_j; θ + κ_k(j)) − δ_k(j)) / s_j`` (log-normal random error per scan,
  ``s_j² = σ_prop² + (σ_add² + sd_j²) / y_j²``: proportional plus additive, the additive part evaluated at
  the datum),
* ``L_Ω⁻¹ (θ − μ)`` (IIV prior), ``L_Γ⁻¹ κ_k`` (IOV prior) and ``δ_k / σ_c,k`` (correlated error),

i.e. a nonlinear least-squares problem — the Bayesian (MAP, "empirical Bayes") individualisation objective
of population pharmacokinetics (Sheiner LB, Beal SL. J Pharm Sci 1982;71:1344), extended by the
inter-occasion terms (Karlsson MO, Sheiner LB. J Pharmacokinet Biopharm 1993;21:735). It is solved for all structures at once by a batched Levenberg–Marquardt
iteration (Marquardt 1963) with the analytic Jacobian; the Laplace approximation of the posterior is
N(x̂, (JᵀJ)⁻¹) with the Gauss–Newton Hessian at the mode (Bates & Watts 1988, ch. 2). Draws from it are then
importance-corrected towards the exact posterior (:func:`log_posterior_draws`, sampling-importance-resampling
in ``TwinPosterior.draw_eta``), which removes the bias of the Gaussian where the model is curved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import FitError
from ..registry import Registry
from .priors import KineticPriorSpec, StructurePrior, prior_spec, structure_prior

__all__ = [
    "TwinModel",
    "TWIN_MODELS",
    "BiexponentialModel",
    "FitData",
    "LaplacePosterior",
    "fit_map_laplace",
    "log_posterior_draws",
    "activity_from_exponentials",
    "tia_from_exponentials",
    "lea_catcheside_g",
]


@runtime_checkable
class TwinModel(Protocol):
    """Protocol of a twin kinetic model: what :class:`~theratwin.twin.PatientTwin` and the fit call on it.

    :data:`TWIN_MODELS` refuses an entry that lacks one of these members. A model may also offer, and the twin
    then uses: ``log_activity(eta, time_h, administered_MBq, ligand_nmol, structures, lambda_phys_per_h)`` and
    ``log_activity_jacobian(...)`` (analytic ln A and its Jacobian, instead of numerical differences of
    ``exponentials``); ``uses_population_priors = True`` (η[0] is ln U and the twin scales the population
    priors to each structure's mass); ``to_dict()`` with a class method ``from_dict(d)`` (its settings in the
    twin state).
    """

    name: str
    n_params: int

    def prior(self, structure: str, radiopharmaceutical: str, nuclide: str,
              overrides: dict[str, KineticPriorSpec] | None) -> StructurePrior:
        """Prior of η for ``structure`` (a structure name) under ``radiopharmaceutical`` (a prior key) and
        ``nuclide``, with the caller's ``overrides`` (structure kind key -> spec) applied."""
        ...

    def exponentials(self, eta: np.ndarray, administered_MBq: np.ndarray, ligand_nmol: np.ndarray,
                     structures: list[str], lambda_phys_per_h: float) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (MBq) and rates (1/h) of ``A(t) = Σ_m c_m exp(−k_m t)``, shape ``eta.shape[:-1] + (M,)``."""
        ...


#: Registry of twin models (entry-point group ``theratwin.twin_models``); entries are classes or instances,
#: checked against :class:`TwinModel` when registered.
TWIN_MODELS: Registry[Any] = Registry("theratwin.twin_models", "twin model", protocol=TwinModel)


def activity_from_exponentials(coef_MBq: np.ndarray, rate_per_h: np.ndarray, time_h: np.ndarray) -> np.ndarray:
    """``A(t) = Σ_m c_m exp(−k_m t)`` (MBq); ``time_h`` broadcasts against ``coef[..., 0]``."""
    t = np.asarray(time_h, dtype=float)[..., None]
    return np.sum(coef_MBq * np.exp(-rate_per_h * t), axis=-1)


def tia_from_exponentials(coef_MBq: np.ndarray, rate_per_h: np.ndarray) -> np.ndarray:
    """Time-integrated activity ``∫_0^∞ A dt = Σ_m c_m / k_m`` (MBq·h)."""
    return np.sum(coef_MBq / rate_per_h, axis=-1)


def lea_catcheside_g(coef_MBq: np.ndarray, rate_per_h: np.ndarray, repair_rate_per_h: np.ndarray | float) -> np.ndarray:
    """Lea–Catcheside dose-protraction factor G for a dose rate ∝ Σ_m c_m exp(−k_m t) with mono-exponential repair.

    ``G = (2/D²) ∫_0^∞ Ḋ(t) ∫_0^t Ḋ(w) e^{−μ(t−w)} dw dt`` (Dale 1985, Br J Radiol 58:515, eq. 5 for the
    general case). For a sum of exponentials the double integral is closed-form (direct integration):
    ``∫∫ = Σ_ij c_i c_j / ((k_i + k_j)(k_i + μ))`` and ``D ∝ Σ_i c_i/k_i``, so
    ``G = 2 Σ_ij c_i c_j / ((k_i + k_j)(k_i + μ)) / (Σ_i c_i/k_i)²``. For one exponential this is the
    familiar ``λ/(λ + μ)``; for the uptake–washout form it equals the bi-exponential result of Baechler et
    al. 2008 (Med Phys 35:1123). BED = D + G·D²/(α/β).
    """
    mu = np.asarray(repair_rate_per_h, dtype=float)[..., None, None]
    ci = coef_MBq[..., :, None]
    cj = coef_MBq[..., None, :]
    ki = rate_per_h[..., :, None]
    kj = rate_per_h[..., None, :]
    num = np.sum(ci * cj / ((ki + kj) * (ki + mu)), axis=(-2, -1))
    tia2 = np.square(np.sum(coef_MBq / rate_per_h, axis=-1))
    # G does not depend on the amplitude; a zero amplitude (no activity) gets G = 0 instead of 0/0
    return np.divide(2.0 * num, tia2, out=np.zeros_like(tia2), where=tia2 > 0)


class BiexponentialModel:
    """Uptake–washout model ``A(t) = A_adm · U · (e^{−λw t} − e^{−λu t})`` with η = (ln U, φ, ψ).

    ``λw = λ_phys + e^φ`` (physical decay plus biological washout, so λw ≥ λ_phys), ``λu = λw + e^ψ``.
    """

    name = "biexp"
    n_params = 3
    #: η[0] is ln U: the twin takes this model's priors from its population priors (built-in or a site's
    #: file, :mod:`theratwin.twin.population`) at each structure's own mass.
    uses_population_priors = True

    def prior(self, structure: str, radiopharmaceutical: str, nuclide: str,
              overrides: dict[str, KineticPriorSpec] | None) -> StructurePrior:
        """The built-in prior at the structure kind's reference mass (the twin scales it to the patient's)."""
        return structure_prior(prior_spec(radiopharmaceutical, structure, overrides), nuclide)

    def log_amplitude_offset(self, ligand_nmol: np.ndarray, structures: list[str], shape: tuple[int, ...]) -> np.ndarray:
        """Additive term of ln U from the ligand amount (zero: activity scales linearly)."""
        return np.zeros(shape)

    def exponentials(self, eta: np.ndarray, administered_MBq: np.ndarray, ligand_nmol: np.ndarray,
                     structures: list[str], lambda_phys_per_h: float) -> tuple[np.ndarray, np.ndarray]:
        """``c = A_adm·U·(1, −1)``, ``k = (λw, λu)``: the two exponentials of ``A(t) = A_adm·U·(e^{−λw t} −
        e^{−λu t})``."""
        log_u = eta[..., 0] + self.log_amplitude_offset(ligand_nmol, structures, eta.shape[:-1])
        amp = np.asarray(administered_MBq, dtype=float) * np.exp(log_u)
        lam_w = lambda_phys_per_h + np.exp(eta[..., 1])
        lam_u = lam_w + np.exp(eta[..., 2])
        coef = np.stack([amp, -amp], axis=-1)
        rate = np.stack([lam_w, lam_u], axis=-1)
        return coef, rate

    def log_activity(self, eta: np.ndarray, time_h: np.ndarray, administered_MBq: np.ndarray,
                     ligand_nmol: np.ndarray, structures: list[str], lambda_phys_per_h: float) -> np.ndarray:
        """``ln A(t)`` alone (numerically stable through ``expm1``; no Jacobian), e.g. for many posterior draws."""
        t = np.asarray(time_h, dtype=float)
        lam_w = lambda_phys_per_h + np.exp(eta[..., 1])
        one_minus = -np.expm1(-np.exp(eta[..., 2]) * t)  # 1 − e^{−Δt}
        log_u = eta[..., 0] + self.log_amplitude_offset(ligand_nmol, structures, eta.shape[:-1])
        return np.asarray(np.log(administered_MBq) + log_u - lam_w * t + np.log(np.maximum(one_minus, 1e-300)))

    def log_activity_jacobian(self, eta: np.ndarray, time_h: np.ndarray, administered_MBq: np.ndarray,
                              ligand_nmol: np.ndarray, structures: list[str],
                              lambda_phys_per_h: float) -> tuple[np.ndarray, np.ndarray]:
        """``ln A(t)`` and ``∂ ln A/∂η`` in closed form (numerically stable through ``expm1``)."""
        t = np.asarray(time_h, dtype=float)
        e_phi = np.exp(eta[..., 1])
        delta = np.exp(eta[..., 2])
        one_minus = -np.expm1(-delta * t)  # 1 − e^{−Δt}
        log_a = self.log_activity(eta, t, administered_MBq, ligand_nmol, structures, lambda_phys_per_h)
        jac = np.empty(eta.shape)
        jac[..., 0] = 1.0
        # ∂/∂φ: λw and λu move together (λu = λw + Δ), so ∂ ln(e^{−λw t} − e^{−λu t})/∂λw = −t
        jac[..., 1] = -t * e_phi
        # ∂/∂ψ: t Δ e^{−Δt} / (1 − e^{−Δt}) (this form does not overflow for large Δt)
        jac[..., 2] = t * delta * np.exp(-delta * t) / np.maximum(one_minus, 1e-300)
        return log_a, jac


TWIN_MODELS.register("biexp", BiexponentialModel)


@dataclass
class FitData:
    """Observations of S structures, padded to R per structure (``mask`` marks the real ones).

    Arrays have shape (S, R): ``time_h``, ``log_activity`` (ln MBq), ``sd_log`` (SD of ln activity),
    ``cycle_index`` (0..K−1, index into the twin's observed cycles), ``administered_MBq``, ``ligand_nmol``,
    ``mask`` (bool). ``correlated_sd`` (S, K) is the SD of the per-cycle correlated error δ (log scale);
    None fits without δ (every error independent between scans).
    """

    time_h: np.ndarray
    log_activity: np.ndarray
    sd_log: np.ndarray
    cycle_index: np.ndarray
    administered_MBq: np.ndarray
    ligand_nmol: np.ndarray
    mask: np.ndarray
    n_cycles: int
    correlated_sd: np.ndarray | None = None


@dataclass
class LaplacePosterior:
    """Gaussian (Laplace) posterior of x = (θ, κ_1..κ_K[, δ_1..δ_K]) per structure: mode (S, P), covariance
    (S, P, P); ``n_correlated`` is the number of δ entries at the end of x (K, or 0 without them)."""

    mode: np.ndarray
    cov: np.ndarray
    n_cycles: int
    n_params: int
    iterations: int
    converged: np.ndarray
    n_correlated: int = 0

    def eta_matrix(self, cycle_index: int | None) -> np.ndarray:
        """Matrix M (n_params × P) with η = M x for an observed cycle (``None``: θ only)."""
        p = self.n_params
        m = np.zeros((p, p * (1 + self.n_cycles) + self.n_correlated))
        m[:, :p] = np.eye(p)
        if cycle_index is not None:
            m[:, p * (1 + cycle_index): p * (2 + cycle_index)] = np.eye(p)
        return m


def _model_logs(model: Any, eta: np.ndarray, data: FitData, structures: list[str],
                lam_phys: float) -> tuple[np.ndarray, np.ndarray]:
    """ln A at the data and its Jacobian w.r.t. η (analytic if the model offers it, else forward differences)."""
    if hasattr(model, "log_activity_jacobian"):
        return model.log_activity_jacobian(eta, data.time_h, data.administered_MBq, data.ligand_nmol,
                                           structures, lam_phys)

    def logs(e: np.ndarray) -> np.ndarray:
        c, k = model.exponentials(e, data.administered_MBq, data.ligand_nmol, structures, lam_phys)
        return np.log(np.maximum(activity_from_exponentials(c, k, data.time_h), 1e-300))

    base = logs(eta)
    jac = np.empty(eta.shape)
    h = 1e-6
    for p in range(eta.shape[-1]):
        e = eta.copy()
        e[..., p] += h
        jac[..., p] = (logs(e) - base) / h
    return base, jac


def fit_map_laplace(model: Any, structures: list[str], priors: list[StructurePrior], data: FitData,
                    lambda_phys_per_h: float, *, max_iter: int = 60, tol: float = 1e-8) -> LaplacePosterior:
    """Batched MAP + Laplace fit of the structures' x = (θ, κ_1..κ_K) (see the module docstring).

    Parameters
    ----------
    model
        A :class:`TwinModel`.
    structures, priors
        S structure names and their priors (same order as the rows of ``data``).
    data
        Padded observations.
    lambda_phys_per_h
        Physical decay constant of the nuclide, 1/h.

    Returns
    -------
    LaplacePosterior
    """
    s_n = len(structures)
    p = int(model.n_params)
    k_n = int(data.n_cycles)
    n_d = 0 if data.correlated_sd is None else k_n  # correlated-error entries δ_k
    n_k = p * (1 + k_n)
    n_x = n_k + n_d
    mu = np.stack([pr.mean for pr in priors])  # (S, p)
    l_iiv = np.stack([np.linalg.inv(np.linalg.cholesky(pr.iiv_cov)) for pr in priors])
    l_iov = np.stack([np.linalg.inv(np.linalg.cholesky(pr.iov_cov)) for pr in priors])
    onehot = (data.cycle_index[..., None] == np.arange(k_n)) & data.mask[..., None]  # (S, R, K)
    onehot_f = onehot.astype(float)
    w = np.where(data.mask, 1.0 / data.sd_log, 0.0)  # (S, R)
    logy = np.where(data.mask, data.log_activity, 0.0)
    # δ_k / σ_c; a zero σ_c pins δ_k to 0 (a floor keeps the Hessian finite)
    w_d = None if data.correlated_sd is None else 1.0 / np.maximum(data.correlated_sd, 1e-4)  # (S, K)

    def residuals(x: np.ndarray, with_jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
        theta = x[:, :p]
        kappa = x[:, p:n_k].reshape(s_n, k_n, p)
        eta = theta[:, None, :] + np.einsum("srk,skp->srp", onehot_f, kappa)
        loga, dloga = _model_logs(model, eta, data, structures, lambda_phys_per_h)
        if w_d is not None:
            loga = loga + np.einsum("srk,sk->sr", onehot_f, x[:, n_k:])
        r_data = (logy - np.where(data.mask, loga, 0.0)) * w
        r_iiv = np.einsum("sij,sj->si", l_iiv, theta - mu)
        r_iov = np.einsum("sij,skj->ski", l_iov, kappa).reshape(s_n, k_n * p)
        parts = [r_data, r_iiv, r_iov] + ([] if w_d is None else [x[:, n_k:] * w_d])
        r = np.concatenate(parts, axis=1)
        if not with_jac:
            return r, None
        j_eta = -dloga * w[..., None]  # (S, R, p)
        j_parts = [j_eta, (onehot[..., None] * j_eta[:, :, None, :]).reshape(s_n, -1, k_n * p)]
        if w_d is not None:
            j_parts.append(-onehot_f * w[..., None])  # ∂r_data/∂δ_k
        j_data = np.concatenate(j_parts, axis=2)
        j_iiv = np.concatenate([l_iiv, np.zeros((s_n, p, n_x - p))], axis=2)
        j_iov = np.zeros((s_n, k_n * p, n_x))
        for k in range(k_n):
            j_iov[:, k * p:(k + 1) * p, p * (1 + k): p * (2 + k)] = l_iov
        blocks = [j_data, j_iiv, j_iov]
        if w_d is not None:
            j_d = np.zeros((s_n, n_d, n_x))
            j_d[:, np.arange(n_d), n_k + np.arange(n_d)] = w_d
            blocks.append(j_d)
        return r, np.concatenate(blocks, axis=1)

    x = np.concatenate([mu, np.zeros((s_n, n_x - p))], axis=1)
    damping = np.full(s_n, 1e-3)
    r, jac = residuals(x, True)
    cost = 0.5 * np.sum(r * r, axis=1)
    converged = np.zeros(s_n, bool)
    iterations = 0
    eye = np.eye(n_x)
    for _ in range(max_iter):
        iterations += 1
        assert jac is not None
        jtj = np.einsum("srp,srq->spq", jac, jac)
        grad = np.einsum("srp,sr->sp", jac, r)
        lhs = jtj + damping[:, None, None] * (jtj * eye + 1e-9 * eye)
        step = -np.linalg.solve(lhs, grad[..., None])[..., 0]
        # keep steps in log space sane (a factor e^3 per iteration at most)
        step = np.clip(step, -3.0, 3.0)
        x_try = x + step
        r_try, _ = residuals(x_try, False)
        cost_try = 0.5 * np.sum(r_try * r_try, axis=1)
        ok = np.isfinite(cost_try) & (cost_try <= cost)
        rel = np.abs(cost - cost_try) / np.maximum(cost, 1e-12)
        converged = ok & ((rel < tol) | (np.max(np.abs(step), axis=1) < 1e-7))
        x = np.where(ok[:, None], x_try, x)
        damping = np.where(ok, np.maximum(damping / 5.0, 1e-9), damping * 10.0)
        r, jac = residuals(x, True)
        cost = 0.5 * np.sum(r * r, axis=1)
        if np.all(converged | (damping > 1e8)):
            break
    if not np.all(np.isfinite(x)):
        bad = [structures[i] for i in np.flatnonzero(~np.all(np.isfinite(x), axis=1))]
        raise FitError(f"Twin fit diverged for structures {bad}; check their activities and times (MBq, h).")
    assert jac is not None
    jtj = np.einsum("srp,srq->spq", jac, jac)
    cov = np.linalg.inv(jtj + 1e-12 * eye)
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    return LaplacePosterior(x, cov, k_n, p, iterations, converged, n_d)


def log_posterior_draws(model: Any, structures: list[str], priors: list[StructurePrior], data: FitData,
                        lambda_phys_per_h: float, x: np.ndarray) -> np.ndarray:
    """Unnormalised log posterior (S, N) of N draws per structure, ``x`` (S, N, P) as in :func:`fit_map_laplace`.

    The same terms as the fit's sum of squares (data, IIV, IOV and correlated-error residuals), evaluated for
    many draws at once; used to importance-correct the Laplace draws (``TwinPosterior.draw_eta``).
    """
    s_n, n, _ = x.shape
    p = int(model.n_params)
    k_n = int(data.n_cycles)
    n_k = p * (1 + k_n)
    theta = x[..., :p]
    kappa = x[..., p:n_k].reshape(s_n, n, k_n, p)
    # each point's cycle deviation, gathered (padding points read cycle 0; their residuals are masked below)
    cyc = np.where(data.mask, data.cycle_index, 0)
    eta = theta[:, :, None, :] + np.take_along_axis(kappa, cyc[:, None, :, None], axis=2)  # (S, N, R, p)
    view = FitData(data.time_h[:, None, :], data.log_activity[:, None, :], data.sd_log[:, None, :],
                   data.cycle_index[:, None, :], data.administered_MBq[:, None, :], data.ligand_nmol[:, None, :],
                   data.mask[:, None, :], k_n, None)
    if hasattr(model, "log_activity"):
        loga = model.log_activity(eta, view.time_h, view.administered_MBq, view.ligand_nmol, structures,
                                  lambda_phys_per_h)
    else:
        loga, _ = _model_logs(model, eta, view, structures, lambda_phys_per_h)
    if data.correlated_sd is not None:
        loga = loga + np.take_along_axis(x[..., n_k:], cyc[:, None, :], axis=2)
    w = np.where(data.mask, 1.0 / data.sd_log, 0.0)[:, None, :]
    r_data = np.where(data.mask[:, None, :], (data.log_activity[:, None, :] - loga) * w, 0.0)
    out = -0.5 * np.sum(r_data * r_data, axis=-1)
    for i, pr in enumerate(priors):
        l_iiv = np.linalg.inv(np.linalg.cholesky(pr.iiv_cov))
        l_iov = np.linalg.inv(np.linalg.cholesky(pr.iov_cov))
        r_iiv = (theta[i] - pr.mean) @ l_iiv.T
        r_iov = kappa[i] @ l_iov.T
        out[i] -= 0.5 * (np.sum(r_iiv * r_iiv, axis=-1) + np.sum(r_iov * r_iov, axis=(-2, -1)))
    if data.correlated_sd is not None:
        r_d = x[..., n_k:] / np.maximum(data.correlated_sd, 1e-4)[:, None, :]
        out -= 0.5 * np.sum(r_d * r_d, axis=-1)
    return np.asarray(out)


def log_normal_sd(y_MBq: np.ndarray, sd_MBq: np.ndarray, proportional_sd: float | np.ndarray,
                  additive_sd_MBq: float | np.ndarray) -> np.ndarray:
    """SD of ln y for the proportional + additive error model, ``√(σ_p² + (σ_a² + sd²)/y²)``.

    Non-positive data are evaluated at ``y = σ_a`` (they carry almost no information, as they should).
    """
    y = np.maximum(np.asarray(y_MBq, float), np.maximum(np.asarray(additive_sd_MBq, float), 1e-9))
    return np.sqrt(np.square(proportional_sd) + (np.square(additive_sd_MBq) + np.square(sd_MBq)) / np.square(y))


LN2 = math.log(2.0)
