"""The early phase of the hybrid voxel integral (before the exponential tail), vectorised over voxels: a fast
early component by log-trapezoids (MIRD Pamphlet 16), or an uptake phase by two models weighted by their Laplace
evidence. :func:`theratwin.kinetics.fit_voxels` (``voxel.py``) documents the method and calls
:func:`_hybrid_integral` once the noise scale is pooled.
"""

from __future__ import annotations

import math

import numpy as np

# smallest noise SD of an early sample, relative to the tail amplitude (see _early_uptake)
_DEFICIT_FLOOR_REL = 1e-5


def _log_trapezoid(a: np.ndarray, b: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area ``dt (a - b) / ln(a / b)`` of the exponential through ``a`` and ``b`` (MIRD Pamphlet 16), the linear
    trapezoid ``dt (a + b) / 2`` where that is undefined (a sample <= 0, or a ~ b); with ``d/da`` and ``d/db``."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        use_log = (a > 0) & (b > 0) & (np.abs(a - b) > 1e-6 * np.abs(a + b))
        aa, bb = np.where(use_log, a, 2.0), np.where(use_log, b, 1.0)
        ln_r = np.log(aa / bb)
        area = np.where(use_log, dt * (aa - bb) / ln_r, 0.5 * dt * (a + b))
        da = np.where(use_log, dt * (1.0 / ln_r - (aa - bb) / (aa * ln_r * ln_r)), 0.5 * dt)
        db = np.where(use_log, dt * (-1.0 / ln_r + (aa - bb) / (bb * ln_r * ln_r)), 0.5 * dt)
    return area, da, db


def _early_excess(y: np.ndarray, var_y: np.ndarray, t: np.ndarray, c0: np.ndarray, lam: np.ndarray, e: np.ndarray,
                  f: np.ndarray, cov: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Fast early component (first sample above the tail): the MIRD 16 hybrid integral and its unit variance.

    ``[0, t0]`` along the tail's shape through the first sample, ``C(t0) (exp(lambda t0) - 1) / lambda``;
    log-trapezoids between the early samples and down to the tail at ``t_j``; the tail to infinity.
    """
    j = y.shape[0]
    c11, c12, c22 = cov
    t0 = float(t[0])
    big_e0 = np.expm1(lam * t0) / lam
    d_big_e0 = (t0 * np.exp(lam * t0) * lam - np.expm1(lam * t0)) / (lam * lam)
    tia = y[0] * big_e0 + f[j] / lam
    g_y = np.zeros_like(y)
    g_y[0] = big_e0
    dfj = np.zeros_like(lam)
    for i in range(j):  # loop over the few early samples, vectorised over voxels
        b = y[i + 1] if i + 1 < j else f[j]
        area, da, db = _log_trapezoid(y[i], b, float(t[i + 1] - t[i]))
        tia = tia + area
        g_y[i] += da
        if i + 1 < j:
            g_y[i + 1] += db
        else:
            dfj = db + 1.0 / lam  # d TIA / d f(t_j)
    g_c = dfj * e[j]
    g_l = y[0] * d_big_e0 - dfj * t[j] * f[j] - f[j] / (lam * lam)
    var = (g_y**2 * var_y).sum(0) + g_c**2 * c11 + 2 * g_c * g_l * c12 + g_l**2 * c22
    return tia, var


def _early_uptake(y: np.ndarray, var_y: np.ndarray, t: np.ndarray, c0: np.ndarray, lam: np.ndarray,
                  e: np.ndarray, f: np.ndarray, cov: tuple[np.ndarray, ...], k: np.ndarray, mu_u: float,
                  s_u: float, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uptake (first sample at or below the tail): two models weighted by their Laplace evidence.

    M0, uptake complete before the first scan: the tail from 0, ``C0 / lambda``. M1, uptake-washout with
    ``A(0) = 0`` through the early samples: ``C(t) = C0 (exp(-lambda t) - exp(-(lambda + kappa) t))``, TIA
    ``C0/lambda - C0/(lambda + kappa)``, ``kappa = exp(u)`` from a MAP fit with the uptake half-time prior
    (Gauss-Newton, vectorised; the tail held fixed). Returns the TIA, its variance and the weight of M1.
    """
    j = y.shape[0]
    c11, c12, c22 = cov
    tj = t[:j, None]
    t0 = float(t[0])
    # the fit is conditional on the tail (its uncertainty enters the SD through the delta method below), so the
    # residuals carry the samples' own variance only
    sig2 = k * var_y
    # floor: 1e-5 of the tail amplitude, above the float32 precision of the samples and of the tail fit, so that a
    # noiseless curve is not read as an uptake deficit of that size
    sig = np.sqrt(np.maximum(sig2, (_DEFICIT_FLOOR_REL * c0) ** 2 + np.float32(1e-30)))
    d0 = f[0] - y[0]
    # start: the uptake rate that puts M1 through the first sample exactly (noiseless data: the answer)
    u = np.where((y[0] > 0) & (d0 > 0), np.log(np.maximum(np.log(c0 / d0) / t0 - lam, 1e-30)), mu_u - 4 * s_u)
    lo, hi = mu_u - 6 * s_u, mu_u + 6 * s_u
    u = np.clip(np.nan_to_num(u, nan=mu_u), lo, hi)
    yf_s = (y - f[:j]) / sig  # -deficit / sigma
    c_s = c0 / sig  # (j, n)
    prec = np.float32(1.0 / s_u**2)
    act = np.arange(u.size)
    for _ in range(iterations):  # Gauss-Newton on u, voxels leave once converged
        ua = u[act]
        kap = np.exp(ua)
        ceu = c_s[:, act] * np.exp(-tj * (lam[act] + kap))
        r = yf_s[:, act] + ceu
        jac = -tj * kap * ceu
        if j == 1:
            num, den = jac[0] * r[0], jac[0] * jac[0]
        else:
            num, den = (jac * r).sum(0), (jac * jac).sum(0)
        step = np.clip(-(num + (ua - mu_u) * prec) / (den + prec), -1.0, 1.0)
        u[act] = np.clip(ua + step, lo, hi)
        act = act[np.abs(step) > 1e-4]
        if not act.size:
            break
    kap = np.exp(u)
    lu = lam + kap
    eu = np.exp(-tj * lu)
    r = (y - f[:j] + c0 * eu) / sig
    jac = -c0 * tj * kap * eu / sig
    f_u = (jac * jac).sum(0) + 1.0 / s_u**2
    # Laplace evidences (Gaussian constants common to both dropped); M1 carries the prior-informed parameter u
    log_z1 = -0.5 * (r * r).sum(0) - 0.5 * ((u - mu_u) / s_u) ** 2 - math.log(s_u) - 0.5 * np.log(f_u)
    r0 = (y - f[:j]) / sig
    log_z0 = -0.5 * (r0 * r0).sum(0)
    w1 = 1.0 / (1.0 + np.exp(np.clip(log_z0 - log_z1, -700.0, 700.0)))
    tia0, tia1 = c0 / lam, c0 / lam - c0 / lu
    # delta method; u follows the data through the Gauss-Newton stationarity condition (implicit function)
    dtia_du = c0 * kap / (lu * lu)
    g1_y = dtia_du * (-jac / sig) / f_u
    g1_c = 1.0 / lam - 1.0 / lu - dtia_du * (jac * (eu - e[:j]) / sig).sum(0) / f_u
    g1_l = -c0 / lam**2 + c0 / lu**2 - dtia_du * (jac * tj * (f[:j] - c0 * eu) / sig).sum(0) / f_u
    g_y = w1 * g1_y
    g_c = (1 - w1) / lam + w1 * g1_c
    g_l = -(1 - w1) * c0 / lam**2 + w1 * g1_l
    var = k * ((g_y**2 * var_y).sum(0) + g_c**2 * c11 + 2 * g_c * g_l * c12 + g_l**2 * c22)
    # within-model variance + between-model variance of the two uptake models (law of total variance)
    var = var + w1 * (1 - w1) * (tia1 - tia0) ** 2
    return (1 - w1) * tia0 + w1 * tia1, var, w1


def _hybrid_integral(y: np.ndarray, var_y: np.ndarray, t: np.ndarray, c0: np.ndarray, lam: np.ndarray,
                     cov: tuple[np.ndarray, np.ndarray, np.ndarray], k: np.ndarray, mu_u: float, s_u: float,
                     iterations: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TIA and its SD from the tail ``c0 exp(-lam t)`` and the early samples ``y`` (j, n) before it.

    ``var_y`` (j, n) and ``cov`` (the tail's ``(c0, lambda)`` covariance) are per unit noise scale ``k`` (n);
    ``mu_u``, ``s_u`` the normal prior of ``u = ln(lambda_uptake - lambda)``. See ``fit_voxels``. Returns the TIA,
    its SD and the weight of the uptake-washout model (0 on the fast-component branch).
    """
    j = y.shape[0]
    # float32 throughout (as the tail fits): the early part is a small correction, 1e-7 relative is ample
    y, var_y, c0, lam, k = (np.asarray(v, np.float32) for v in (y, var_y, c0, lam, k))
    cov = tuple(np.asarray(v, np.float32) for v in cov)  # type: ignore[assignment]
    t = t.astype(np.float32)
    e = np.exp(-np.multiply.outer(t[: j + 1], lam))  # (j + 1, n)
    f = c0 * e
    excess = (y[0] > f[0]) & (f[j] > 0)
    tia = np.empty_like(c0)
    var = np.empty_like(c0)
    w1 = np.zeros_like(c0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for sel, is_x in ((np.flatnonzero(excess), True), (np.flatnonzero(~excess), False)):
            if not sel.size:
                continue
            args = (y[:, sel], var_y[:, sel], t, c0[sel], lam[sel], e[:, sel], f[:, sel],
                    tuple(cv[sel] for cv in cov))
            if is_x:
                tx, vx = _early_excess(*args)
                tia[sel], var[sel] = tx, k[sel] * vx
            else:
                tia[sel], var[sel], w1[sel] = _early_uptake(*args, k[sel], mu_u, s_u, iterations)
    return tia.astype(np.float64), np.sqrt(np.maximum(var, 0.0)).astype(np.float64), w1
