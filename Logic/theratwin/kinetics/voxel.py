"""Voxel-wise kinetics: all voxel time-activity curves of a ``(T, Z, Y, X)`` series fitted at once.

The mono-exponential ``C(t) = C0 exp(-lambda t)`` with ``lambda >= lambda_phys`` is fitted to every voxel in
the mask simultaneously with numpy (no loop over voxels):

1. initial ``lambda`` from a log-linear regression weighted by ``C^2`` (the first-order variance of ``ln C``
   under constant absolute noise), ``C0`` from the linear least-squares solution for that ``lambda``;
2. a few Gauss-Newton iterations on ``(C0, lambda)`` with Levenberg damping, each followed by the exact
   linear solution for ``C0`` (variable projection, Golub & Pereyra 1973 SIAM J Numer Anal 10:413), with
   ``lambda`` projected onto ``[lambda_phys, inf)``; voxels leave the iteration when converged;
3. the TIA ``C0/lambda`` with its SD by the delta method. With given SDs the covariance is
   ``(J^T W J)^-1``; otherwise a noise model supplies it: by default counting-like variance ``k C(t)`` with
   ``k`` pooled over the 3x3x3 neighbourhood (ratio of residual sums to their expectations
   ``sum f_i (1 - h_ii)``, leverages ``h_ii`` of the fit) and the sandwich covariance
   ``A^-1 (sum k f_i J_i J_i^T) A^-1`` of the unweighted estimate (White 1980 Econometrica 48:817). Pooling
   gives the SD many degrees of freedom where a single 4-point voxel curve has only two.

Voxels whose curve never decreases (maximum at the last sample), or whose fit fails, get the trapezoidal
rule with ``C(0) = 0`` and a physical-decay tail (linear in the samples, so its SD follows from the residual
scale); negative noise samples are kept (no clipping), so sums over regions stay unbiased. Voxels with no
positive sample get TIA 0. ``model_map`` says which voxel got what (codes in
``VOXEL_MODEL_CODES``). The same estimator as :func:`theratwin.kinetics.fit_tac` with ``model="mono_exp"``
(unweighted when no SDs are given), so both agree on the same curve.

``model="hybrid"`` (what ``"auto"`` does with >= 3 time points, and what the kinetics stage uses) integrates each
voxel piecewise, as in the hybrid trapezoid/exponential integration of MIRD Pamphlet 16 (Siegel et al. 1999
J Nucl Med 40:37S, section on integration of time-activity data), because a mono-exponential through all samples
is pulled flat by an uptake phase at the first scan (+10..30 % TIA) and steep by a fast early component
(-10..40 %), and with the uptake phase treated as the structure fits treat it (:mod:`theratwin.kinetics.fit`):

- tail ``[t_j, inf)``: mono-exponential ``C0 exp(-lambda t)``, ``lambda >= lambda_phys``, fitted to the last
  three samples (the last two of three: ``t_j`` is the second scan of a 4-scan schedule, the third of a 5-scan
  one; as above, then refitted once with weights ``1 / f(t_i)``, i.e. iteratively reweighted for counting-like
  variance ``k f``, so the late samples of a slow component are not swamped by the early ones); integrated
  analytically to infinity;
- first sample above the tail (a fast early component, e.g. blood): log-trapezoids (exponential interpolation)
  between the early samples and down to the tail at ``t_j``, and ``[0, t0]`` along the tail's shape through the
  first sample, ``C(t0) (exp(lambda t0) - 1) / lambda``;
- first sample at or below the tail (uptake): two models weighted by their Laplace evidence, as the structure
  fits weigh theirs. M0: uptake complete before the first scan, TIA ``C0 / lambda``. M1: uptake-washout with
  ``A(0) = 0``, ``C(t) = C0 (exp(-lambda t) - exp(-(lambda + kappa) t))``, TIA ``C0/lambda - C0/(lambda +
  kappa)``, with ``ln kappa`` fitted to the early samples by MAP (vectorised Gauss-Newton) under the uptake
  half-time prior of :class:`~theratwin.kinetics.priors.KineticPriors`, the tail held fixed. On noiseless data
  the first sample fixes ``kappa`` exactly (``C0 exp(-(lambda + kappa) t0)`` is the deficit), so M1 is exact on
  uptake-washout curves; with noise the prior keeps ``kappa`` plausible where one sample cannot.

The SD is the delta method on the early samples (variance ``k C(t_i)``, or given SDs) and the tail's
``(C0, lambda)`` (covariance ``k (J^T W J)^-1`` of the weighted fit), with ``kappa`` following the data through the
MAP's stationarity condition, plus the between-model variance of M0 and M1; ``k`` is pooled over the
neighbourhood from the weighted residuals of the tail fits (one degree of freedom per voxel with four scans), so
the early part is computed in a second pass once ``k`` is known. Measured against closed-form TIAs
(``Testing/python/test_kinetics_schedules.py``, ``Testing/benchmarks/test_bench_fit_voxels.py``): noiseless
uptake-washout voxels (uptake half-time 0.5-3 h, T_eff 20-150 h, scans at 4, 24, 48, 168 h) median |error|
< 0.01 %, 95th percentile 0.07 %; fast + slow washout within 1 % (4 scans) and 1.8 % (5 scans from 1 h);
mono-exponentials within 0.2 % (the evidence leaves M1 a small weight for an uptake faster than the first scan
resolves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nuclides
from ..errors import InvalidInputError
from ..progress import ProgressCallback, report
from ._voxel_early import _hybrid_integral
from .priors import KineticPriors

__all__ = ["VoxelFit", "fit_voxels", "VOXEL_MODEL_CODES"]

#: Codes of ``VoxelFit.model_map``.
VOXEL_MODEL_CODES: dict[int, str] = {0: "none", 1: "mono_exp", 2: "trapezoid", 3: "hybrid"}


@dataclass
class VoxelFit:
    """Result of :func:`fit_voxels` (all maps ``(Z, Y, X)``, float32 unless stated).

    Attributes
    ----------
    tia_Bq_h_per_mL, tia_sd_Bq_h_per_mL
        Time-integrated activity concentration 0..infinity and its SD (Bq·h/mL).
    model_map
        uint8 code of the model used per voxel (see ``model_codes``); 0 outside the mask / no activity.
    r_squared
        Goodness of fit (coefficient of determination) of the mono-exponential; NaN where not fitted.
    effective_half_life_h
        Effective half-life of the fitted curve (h); NaN where not fitted.
    lambda_eff_per_h, lambda_eff_sd_per_h
        Effective decay constant and its SD (1/h); NaN where not fitted.
    c0_Bq_per_mL
        Fitted concentration extrapolated to t = 0 (Bq/mL).
    model_codes
        ``{code: model name}``.
    n_iterations
        Gauss-Newton iterations performed.
    """

    tia_Bq_h_per_mL: np.ndarray
    tia_sd_Bq_h_per_mL: np.ndarray
    model_map: np.ndarray
    r_squared: np.ndarray
    effective_half_life_h: np.ndarray
    lambda_eff_per_h: np.ndarray
    lambda_eff_sd_per_h: np.ndarray
    c0_Bq_per_mL: np.ndarray
    time_h: np.ndarray
    nuclide: str
    model: str
    model_codes: dict[int, str]
    n_iterations: int

    @property
    def goodness_of_fit(self) -> np.ndarray:
        """Alias of ``r_squared`` (the goodness-of-fit map)."""
        return self.r_squared

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts of voxels per model and the iterations used."""
        counts = np.bincount(self.model_map.ravel(), minlength=len(self.model_codes))
        return {"model": self.model, "nuclide": self.nuclide, "time_h": self.time_h.tolist(),
                "n_iterations": self.n_iterations,
                "voxels_per_model": {self.model_codes[i]: int(c) for i, c in enumerate(counts)
                                     if i in self.model_codes}}


def _as_kinetic_priors(priors: KineticPriors | dict[str, Any] | None) -> KineticPriors:
    return priors if isinstance(priors, KineticPriors) else KineticPriors.from_dict(priors)


def _trapezoid_weights(t: np.ndarray, lp: float) -> np.ndarray:
    """Weights w with TIA = sum_i w_i C_i for the trapezoid from C(0)=0 plus a physical tail C_n/lp."""
    tt = np.concatenate([[0.0], t])
    w = np.zeros(t.size)
    for i in range(t.size):  # loop over time points (T <= ~10), not voxels
        w[i] = 0.5 * (tt[i + 1] - tt[i]) + (0.5 * (tt[i + 2] - tt[i + 1]) if i + 1 < t.size else 0.0)
    w[-1] += 1.0 / lp
    return w


def _mono_chunk(yf: np.ndarray, wf: np.ndarray | None, t: np.ndarray, lp: float, max_iterations: int,
                tolerance: float, lam_init: np.ndarray | None = None,
                tail_only: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """Fit the mono-exponential to the columns of ``yf`` (T, n) (float32); see the module docstring.

    ``lam_init`` (1/h, per column) replaces the log-linear initialisation (warm start of a refit); ``tail_only``
    returns what the hybrid's tail needs (``c0``, ``lam``, ``r2``, ``rss``, ``cu11``, ``cu12``, ``cu22``) and
    skips the pooled-noise pieces of the mono-exponential model."""
    T, n = yf.shape
    t32 = t.astype(np.float32)
    tt32 = t32 * t32
    ones = np.ones(T, np.float32)
    if lam_init is not None:
        lam = np.maximum(np.nan_to_num(lam_init, nan=lp), lp).astype(np.float32)
        return _mono_iterate(yf, wf, t32, tt32, ones, lam, lp, max_iterations, tolerance, tail_only)
    # 1. log-linear initialisation, weights C^2 (delta method: var(ln C) ~ sigma^2 / C^2)
    pos = yf > 0
    lw = np.where(pos, yf * yf, np.float32(0))
    if wf is not None:
        lw *= wf
    lwly = lw * np.log(np.where(pos, yf, np.float32(1)))
    s0, s1, s2 = ones @ lw, t32 @ lw, tt32 @ lw
    sy, sty = ones @ lwly, t32 @ lwly
    den = s0 * s2 - s1 * s1
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(den > 0, (s0 * sty - s1 * sy) / den, np.float32(-lp))
    lam = np.maximum(-slope, np.float32(lp)).astype(np.float32)
    lam[~np.isfinite(lam)] = lp
    return _mono_iterate(yf, wf, t32, tt32, ones, lam, lp, max_iterations, tolerance, tail_only)


def _mono_iterate(yf: np.ndarray, wf: np.ndarray | None, t32: np.ndarray, tt32: np.ndarray, ones: np.ndarray,
                  lam: np.ndarray, lp: float, max_iterations: int, tolerance: float,
                  tail_only: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """Steps 2-3 of :func:`_mono_chunk` from the starting decay constants ``lam`` (float32, 1/h)."""
    T, n = yf.shape
    # 2. Gauss-Newton on lambda with C0 eliminated (variable projection): at each lambda, C0 is the exact
    #    linear least-squares solution, so the C0-gradient vanishes and only the lambda step is needed.
    idx = np.arange(n)
    mu = np.float32(1e-3)
    yi, wi = yf, wf
    iters = 0
    for it in range(max_iterations):
        iters = it + 1
        li = lam[idx]
        e = np.exp(np.multiply.outer(-t32, li))
        if wi is None:
            ee, ye = e * e, yi * e
        else:
            we = wi * e
            ee, ye = we * e, yi * we
        s_ee, s_tee, s_ttee = ones @ ee, t32 @ ee, tt32 @ ee
        s_ye, s_tye = ones @ ye, t32 @ ye
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ai = s_ye / s_ee
            g2 = -ai * (s_tye - ai * s_tee)
            j12 = -ai * s_tee
            j22 = ai * ai * s_ttee
            dl = s_ee * g2 / (s_ee * j22 * (1 + mu) ** 2 - j12 * j12)
        dl = np.where(np.isfinite(dl), dl, np.float32(0))
        # at most a factor of 2 per step in lambda, for robustness on noisy voxels
        dl = np.clip(dl, -0.5 * li, li)
        lnew = np.maximum(li + dl, np.float32(lp))
        lam[idx] = lnew
        moving = np.abs(lnew - li) > tolerance * li
        if not moving.any():
            break
        if moving.mean() < 0.5:
            idx = idx[moving]
            yi = yf[:, idx]
            wi = None if wf is None else wf[:, idx]
    # 3. C0 for the final lambda, covariance and TIA with SD (delta method)
    e = np.exp(np.multiply.outer(-t32, lam))
    if wf is None:
        ee, ye = e * e, yf * e
    else:
        we = wf * e
        ee, ye = we * e, yf * we
    s_ee, s_tee, s_ttee, s_ye = ones @ ee, t32 @ ee, tt32 @ ee, ones @ ye
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = s_ye / s_ee
        rr = yf - a[None, :] * e
        rr *= rr
        rss_plain = (ones @ rr).astype(np.float64)
        rss = rss_plain if wf is None else (ones @ (wf * rr)).astype(np.float64)
        lam64, a64 = lam.astype(np.float64), a.astype(np.float64)
        j11 = s_ee.astype(np.float64)
        j12 = -a64 * s_tee
        j22 = a64 * a64 * s_ttee
        if tail_only:
            det = j11 * j22 - j12 * j12
            ym = ((ones @ yf) / T).astype(np.float64)
            r2 = 1.0 - rss_plain / ((ones @ (yf * yf)).astype(np.float64) - T * ym**2)
            return {"c0": a64, "lam": lam64, "r2": r2, "rss": rss, "cu11": j22 / det, "cu12": -j12 / det,
                    "cu22": j11 / det}, iters
        if wf is not None:
            s2r = np.ones(n)
        elif T > 2:
            s2r = rss / (T - 2)
        else:
            s2r = np.full(n, np.nan)
        det = j11 * j22 - j12 * j12
        c11, c12, c22 = j22 / det * s2r, -j12 / det * s2r, j11 / det * s2r
        g_a, g_l = 1.0 / lam64, -a64 / (lam64 * lam64)
        var = g_a * g_a * c11 + 2 * g_a * g_l * c12 + g_l * g_l * c22
        ym = ((ones @ yf) / T).astype(np.float64)
        ss_tot = (ones @ (yf * yf)).astype(np.float64) - T * ym**2
        r2 = 1.0 - rss_plain / ss_tot
        tia = a64 / lam64
        # unit-variance pieces for the pooled noise models (see fit_voxels): u = A^-1 g, w = A^-1 e_lambda
        u1, u2 = (j22 * g_a - j12 * g_l) / det, (-j12 * g_a + j11 * g_l) / det
        w1, w2 = -j12 / det, j11 / det
        e3 = ee * e if wf is None else e * e * e
        s_e3, s_te3, s_tte3 = (ones @ e3).astype(np.float64), (t32 @ e3).astype(np.float64), (tt32 @ e3).astype(np.float64)
        a_pos = np.maximum(a64, 0.0)
        # Poisson-like variance k*f_i with f = C0 exp(-lambda t): M = sum f_i J_i J_i^T
        m11, m12, m22 = a_pos * s_e3, -a_pos * a64 * s_te3, a_pos * a64 * a64 * s_tte3
        v_pois = m11 * u1 * u1 + 2 * m12 * u1 * u2 + m22 * u2 * u2
        lv_pois = m11 * w1 * w1 + 2 * m12 * w1 * w2 + m22 * w2 * w2
        v_const = g_a * u1 + g_l * u2
        lv_const = j11 / det
        # expected RSS per unit k: sum_i f_i (1 - h_ii) = sum f - tr(A^-1 M) (leverages h_ii of the fit)
        sum_f = a_pos * (ones @ e).astype(np.float64) - (j22 * m11 - 2 * j12 * m12 + j11 * m22) / det
        cu11, cu12, cu22 = j22 / det, -j12 / det, j11 / det
    out = {"tia": tia, "tia_sd": np.sqrt(np.maximum(var, 0.0)), "lam": lam64, "lam_sd": np.sqrt(np.maximum(c22, 0.0)),
           "c0": a64, "r2": r2, "s2r": s2r, "rss": rss, "sum_f": sum_f, "v_pois": v_pois, "lv_pois": lv_pois,
           "v_const": v_const, "lv_const": lv_const,
           # (J^T W J)^-1 of (C0, lambda) per unit residual variance (W = given weights or identity)
           "cu11": cu11, "cu12": cu12, "cu22": cu22}
    return out, iters


def _tail_start(T: int) -> int:
    """Index of the first sample of the exponential tail: the last three samples (two when T = 3)."""
    return max(1, T - 3)


def _tail_chunk(yf: np.ndarray, wf: np.ndarray | None, t: np.ndarray, lp: float, max_iterations: int,
                tolerance: float, reweight: bool) -> tuple[dict[str, np.ndarray], int]:
    """Exponential tail of the columns of ``yf`` fitted to the samples from ``_tail_start(T)`` on.

    Returns ``c0``, ``lam``, ``r2``, the residual sum ``rss`` (in units of the noise scale ``k``: weighted by
    ``1/f`` for the counting-like model) and the covariance of ``(c0, lambda)`` per unit ``k`` (``cu11``, ``cu12``,
    ``cu22``; absolute with given SDs).
    """
    j = _tail_start(yf.shape[0])
    yt = np.ascontiguousarray(yf[j:])
    tt = t[j:]
    wt = None if wf is None else np.ascontiguousarray(wf[j:])
    out, iters = _mono_chunk(yt, wt, tt, lp, max_iterations, tolerance, tail_only=True)
    if reweight:
        # one iteratively-reweighted pass (IRLS; McCullagh & Nelder 1989, Generalized Linear Models, ch. 2.5):
        # weights 1/f(t_i) of the first fit, the inverse of the counting-like variance k f(t_i). Without it the
        # unweighted fit is dominated by the early, high samples and underestimates a slow late component.
        with np.errstate(over="ignore", invalid="ignore"):
            f = out["c0"][None, :] * np.exp(-np.multiply.outer(tt, out["lam"]))
        # floor at 5 % of the voxel's largest tail sample: a vanishing fitted value must not get all the weight
        floor = np.maximum(0.05 * np.abs(yt).max(0), np.float32(1e-12))
        w = 1.0 / np.maximum(f, floor[None, :])
        w = np.where(np.isfinite(w), w, 1.0 / floor[None, :]).astype(np.float32)
        out, it2 = _mono_chunk(yt, w, tt, lp, max_iterations, tolerance, lam_init=out["lam"], tail_only=True)
        iters += it2
    return out, iters


# voxels per chunk: (T, 65536) float32 arrays stay in cache and avoid fresh page faults on big temporaries
_CHUNK = 65536


def fit_voxels(
    time_h: Any,
    concentration_Bq_per_mL: Any,
    nuclide: str = "Lu-177",
    model: str = "auto",
    mask: Any = None,
    *,
    concentration_sd_Bq_per_mL: Any = None,
    noise_model: str = "poisson",
    pool_radius_voxels: int = 1,
    priors: KineticPriors | dict[str, Any] | None = None,
    max_iterations: int = 12,
    tolerance: float = 1e-4,
    progress: ProgressCallback | None = None,
) -> VoxelFit:
    """Fit every voxel's time-activity curve at once (vectorised) and integrate it to infinity.

    Parameters
    ----------
    time_h
        Sample times (h since administration), shape ``(T,)``, strictly increasing.
    concentration_Bq_per_mL
        Activity concentration series, shape ``(T, Z, Y, X)`` (Bq/mL), on one grid.
    nuclide
        Nuclide (physical decay constant bounds the clearance and sets the tail).
    model
        ``"auto"`` (mono-exponential, trapezoid fallback for non-decreasing or failed voxels),
        ``"mono_exp"`` (no fallback except voxels without activity), ``"trapezoid"`` or ``"hybrid"`` (first
        sample + exponential tail fitted to the later samples, see the module docstring; trapezoid fallback as
        ``"auto"``; with T = 2 it is ``"auto"``). For ``"hybrid"``, ``lambda_eff_per_h``, ``c0_Bq_per_mL`` and
        ``effective_half_life_h`` describe the tail.
    mask
        Boolean ``(Z, Y, X)``: voxels to fit (e.g. the body); others get 0. Default: every voxel with a
        positive sample.
    concentration_sd_Bq_per_mL
        Optional SDs ``(T, Z, Y, X)`` used as weights (absolute); otherwise the fit is unweighted and the SD
        comes from ``noise_model`` (needs T >= 3).
    noise_model
        How the TIA SD is estimated without given SDs (the point estimate is the same in every case):
        ``"poisson"`` (default): variance ``k * C(t)`` (counting-like), ``k`` pooled over the
        ``(2r+1)^3`` neighbourhood (``r = pool_radius_voxels``) of fitted voxels, covariance by the sandwich
        ``A^-1 (sum k f_i J_i J_i^T) A^-1``; ``"constant"``: one variance pooled over the neighbourhood;
        ``"none"``: each voxel's own residual variance ``RSS/(T-2)`` (as :func:`fit_tac` without SDs; with
        T = 4 only 2 degrees of freedom, so individual SDs scatter widely).
    max_iterations, tolerance
        Gauss-Newton iteration limit and relative step tolerance on lambda (1e-4: TIA converged to ~1e-4).
    progress
        Optional progress callback.

    Returns
    -------
    VoxelFit

    Notes
    -----
    Work is done on blocks of voxels (each block fully vectorised) to keep temporaries small; the result
    depends on the block size only within the convergence tolerance.
    """
    t = np.asarray(time_h, dtype=np.float64).ravel()
    c = np.asarray(concentration_Bq_per_mL)
    if c.ndim != 4 or c.shape[0] != t.size:
        raise InvalidInputError(
            f"concentration_Bq_per_mL must be (T, Z, Y, X) with T = len(time_h) = {t.size}; got {c.shape}."
        )
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0) or np.any(t < 0):
        raise InvalidInputError(f"time_h must be finite, >= 0 and strictly increasing; got {t.tolist()}.")
    if noise_model not in ("poisson", "constant", "none"):
        raise InvalidInputError(f"noise_model must be 'poisson', 'constant' or 'none'; got {noise_model!r}.")
    if model not in ("auto", "mono_exp", "trapezoid", "hybrid"):
        raise InvalidInputError(f"fit_voxels model must be 'auto', 'mono_exp', 'trapezoid' or 'hybrid'; got {model!r}.")
    if model != "trapezoid" and t.size < 2:
        raise InvalidInputError("A voxel-wise exponential fit needs at least 2 time points; use "
                                "model='trapezoid' or a single-time-point method.")
    nuc = nuclides.get(nuclide)
    lp = float(nuc.decay_constant_per_h)
    shape = c.shape[1:]
    T = t.size
    report(progress, 0.0, "selecting voxels")

    c2 = c.reshape(T, -1)
    active = np.all(np.isfinite(c2), axis=0) & np.any(c2 > 0, axis=0)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != shape:
            raise InvalidInputError(f"mask shape {m.shape} does not match the image grid {shape}.")
        active &= m.astype(bool).ravel()
    flat = np.flatnonzero(active)
    n_vox = flat.size
    sd2 = None
    if concentration_sd_Bq_per_mL is not None:
        sd2 = np.asarray(concentration_sd_Bq_per_mL).reshape(T, -1)
        if sd2.shape != c2.shape:
            raise InvalidInputError(f"concentration_sd_Bq_per_mL has shape {np.shape(concentration_sd_Bq_per_mL)}; "
                                    f"expected {c.shape}.")

    res = {k: np.full(n_vox, np.nan) for k in ("tia", "tia_sd", "lam", "lam_sd", "c0", "r2")}
    # per voxel pieces of the pooled noise models: residual sum, its expectation per unit k, unit variances
    pool = {k: np.zeros(n_vox) for k in ("num", "den", "v", "lv")}
    code = np.zeros(n_vox, np.uint8)
    hybrid = model in ("auto", "hybrid") and T >= 3
    # hybrid: the tail fits first (pass 1), the early part once the noise scale is pooled (pass 2)
    j_tail = _tail_start(T)
    dof_tail = T - j_tail - 2  # tail samples minus (C0, lambda)
    tail_cov = {key: np.full(n_vox, np.nan) for key in ("cu11", "cu12", "cu22")} if hybrid else {}
    k_self = np.full(n_vox, np.nan)
    is_hybrid = np.zeros(n_vox, bool)
    wt = _trapezoid_weights(t, lp)
    wt32 = wt.astype(np.float32)
    wt_norm = math.sqrt(float(np.sum(wt * wt)))
    iters_done = 0
    n_chunks = max(1, -(-n_vox // _CHUNK))
    for ci in range(n_chunks):  # blocks of voxels, each vectorised
        sl = slice(ci * _CHUNK, min((ci + 1) * _CHUNK, n_vox))
        cols = flat[sl]
        if cols.size and cols[-1] - cols[0] == cols.size - 1:  # contiguous block: a view, no gather
            cols = slice(int(cols[0]), int(cols[-1]) + 1)  # type: ignore[assignment]
        yf = c2[:, cols].astype(np.float32, copy=False)
        wf = None
        if sd2 is not None:
            sdc = sd2[:, cols].astype(np.float32, copy=False)
            if not np.all(np.isfinite(sdc)) or np.any(sdc <= 0):
                raise InvalidInputError("concentration_sd_Bq_per_mL must be positive and finite in the mask.")
            wf = 1.0 / (sdc * sdc)
        nch = yf.shape[1]
        if hybrid:
            h, it = _tail_chunk(yf, wf, t, lp, max_iterations, tolerance,
                                reweight=wf is None and noise_model != "constant")
            iters_done = max(iters_done, it)
            ok = np.isfinite(h["c0"]) & np.isfinite(h["lam"]) & (h["c0"] >= 0) & np.isfinite(h["cu22"])
            fb = (yf[-1] > yf[:-1].max(0)) | ~ok | ((yf > 0).sum(0) < 2)
            ch_code = np.where(fb, 2, 3).astype(np.uint8)
            with np.errstate(divide="ignore", invalid="ignore"):
                k_own = h["rss"] / dof_tail if dof_tail > 0 else np.full(nch, np.nan)
            if wf is not None:
                k_own = np.ones(nch)
            res["lam"][sl], res["c0"][sl], res["r2"][sl] = h["lam"], h["c0"], h["r2"]
            res["lam_sd"][sl] = np.sqrt(np.maximum(k_own * h["cu22"], 0.0))
            for key in ("cu11", "cu12", "cu22"):
                tail_cov[key][sl] = h[key]
            k_self[sl] = k_own
            is_hybrid[sl] = ~fb
            # sample variance for the trapezoid fallback's SD: k times the counting-like level of the curve
            s2r = k_own * (1.0 if (wf is not None or noise_model == "constant")
                           else np.maximum((np.ones(T, np.float32) @ yf).astype(np.float64) / T, 0.0))
            if noise_model in ("poisson", "constant") and wf is None:
                pool["num"][sl] = np.where(fb, 0.0, h["rss"])
                pool["den"][sl] = np.where(fb | ~np.isfinite(h["rss"]), 0.0, float(max(dof_tail, 0)))
                pool["v"][sl], pool["lv"][sl] = np.nan, h["cu22"]
        elif model in ("auto", "mono_exp", "hybrid"):  # (auto and hybrid with T = 2)
            out, it = _mono_chunk(yf, wf, t, lp, max_iterations, tolerance)
            iters_done = max(iters_done, it)
            ok = np.isfinite(out["tia"]) & np.isfinite(out["tia_sd"]) & (out["c0"] >= 0)
            if model in ("auto", "hybrid"):
                # never decreasing (last sample is the strict maximum), failed, or < 2 positive samples
                fb = (yf[-1] > yf[:-1].max(0)) | ~ok | ((yf > 0).sum(0) < 2)
            else:
                fb = ~ok
            ch_code = np.where(fb, 2, 1).astype(np.uint8)
            for k in res:
                res[k][sl] = out[k]
            s2r = out["s2r"]
            if noise_model == "poisson":
                pool["num"][sl] = np.where(fb, 0.0, out["rss"])
                pool["den"][sl] = np.where(fb | ~np.isfinite(out["sum_f"]), 0.0, out["sum_f"])
                pool["v"][sl], pool["lv"][sl] = out["v_pois"], out["lv_pois"]
            elif noise_model == "constant":
                pool["num"][sl] = np.where(fb, 0.0, out["rss"])
                pool["den"][sl] = np.where(fb, 0.0, float(T - 2))
                pool["v"][sl], pool["lv"][sl] = out["v_const"], out["lv_const"]
        else:
            fb = np.ones(nch, bool)
            ch_code = np.full(nch, 2, np.uint8)
            s2r = np.full(nch, np.nan)
        if fb.any():
            yfb = yf[:, fb]
            tia_fb = (wt32 @ yfb).astype(np.float64)
            if wf is not None:
                sd_fb = np.sqrt(((wt32[:, None] ** 2) / wf[:, fb]).sum(0)).astype(np.float64)
            else:
                # residual scale of the attempted fit as the sample SD (conservative: includes misfit)
                sd_fb = np.sqrt(s2r[fb]) * wt_norm
            idx = np.arange(sl.start, sl.stop)[fb]
            if noise_model == "poisson":
                pool["v"][idx] = ((wt32[:, None] ** 2) * np.maximum(yfb, 0)).sum(0)
            else:
                pool["v"][idx] = wt_norm**2
            pool["lv"][idx] = np.nan
            res["tia"][idx] = tia_fb
            res["tia_sd"][idx] = sd_fb
            for k in ("lam", "lam_sd", "c0", "r2"):
                res[k][idx] = np.nan
        code[sl] = ch_code
        report(progress, (0.9 if hybrid else 1.0) * (ci + 1) / n_chunks, "voxel fits")

    k_pool: np.ndarray | None = None
    if sd2 is None and noise_model != "none" and n_vox and T > 2:
        # pool the noise scale k over the neighbourhood: k = sum(RSS) / sum(E[RSS]/k) (ratio of sums)
        from scipy.ndimage import uniform_filter

        size = 2 * int(pool_radius_voxels) + 1
        # box sums over the neighbourhood (float32 is ample for a ratio of sums)
        vol = np.zeros(int(np.prod(shape)), np.float32)
        vol[flat] = pool["num"]
        num = uniform_filter(vol.reshape(shape), size=size, mode="constant").ravel()[flat].astype(np.float64)
        vol[flat] = pool["den"]
        den = uniform_filter(vol.reshape(shape), size=size, mode="constant").ravel()[flat].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            k_pool = np.where(den > 0, num / den, np.nan)
            own = np.where(pool["den"] > 0, pool["num"] / pool["den"], np.nan)
        k_pool = np.where(np.isfinite(k_pool), k_pool, own)
        fitted = np.isfinite(res["tia"]) & np.isfinite(k_pool)
        res["tia_sd"] = np.where(fitted, np.sqrt(np.maximum(k_pool * pool["v"], 0.0)), res["tia_sd"])
        code_is_fit = np.isfinite(pool["lv"]) & np.isfinite(k_pool)
        res["lam_sd"] = np.where(code_is_fit, np.sqrt(np.maximum(k_pool * pool["lv"], 0.0)), res["lam_sd"])

    if hybrid and is_hybrid.any():
        # pass 2: the early part of every hybrid voxel with its noise scale (given SDs: 1; pooled; own)
        report(progress, 0.9, "early phase (uptake / fast component)")
        if sd2 is not None:
            k_h = np.ones(n_vox)
        elif k_pool is not None:
            k_h = np.where(np.isfinite(k_pool), k_pool, k_self)
        else:
            k_h = k_self
        up = _as_kinetic_priors(priors).uptake_half_time_h
        mu_u, s_u = math.log(math.log(2.0) / up.median), up.log_sd  # prior of ln(lambda_uptake - lambda)
        idx_all = np.flatnonzero(is_hybrid)
        for start in range(0, idx_all.size, _CHUNK):
            idx = idx_all[start:start + _CHUNK]
            cols = flat[idx]
            y = c2[:j_tail, cols].astype(np.float64)
            if sd2 is not None:
                var_y = sd2[:j_tail, cols].astype(np.float64) ** 2
            elif noise_model == "constant":
                var_y = np.ones_like(y)
            else:
                var_y = np.maximum(y, 0.0)
            kk = k_h[idx]
            tia, tia_sd, _ = _hybrid_integral(y, var_y, t, res["c0"][idx], res["lam"][idx],
                                              (tail_cov["cu11"][idx], tail_cov["cu12"][idx], tail_cov["cu22"][idx]),
                                              np.nan_to_num(kk, nan=0.0), mu_u, s_u)
            res["tia"][idx] = tia
            res["tia_sd"][idx] = np.where(np.isfinite(kk), tia_sd, np.nan)
        bad = is_hybrid & ~np.isfinite(res["tia"])
        if bad.any():  # numerically failed early part: the trapezoid fallback
            code[bad] = 2
            res["tia"][bad] = (wt @ c2[:, flat[bad]].astype(np.float64))
            res["tia_sd"][bad] = np.nan
    if hybrid:
        report(progress, 1.0, "voxel fits")

    def put(v: np.ndarray, fill: float, dtype: Any = np.float32) -> np.ndarray:
        full = np.full(int(np.prod(shape)), fill, dtype=dtype)
        full[flat] = v
        return full.reshape(shape)

    with np.errstate(divide="ignore", invalid="ignore"):
        thalf = math.log(2.0) / res["lam"]
    return VoxelFit(
        tia_Bq_h_per_mL=put(res["tia"], 0.0), tia_sd_Bq_h_per_mL=put(res["tia_sd"], 0.0),
        model_map=put(code, 0, np.uint8), r_squared=put(res["r2"], np.nan),
        effective_half_life_h=put(thalf, np.nan), lambda_eff_per_h=put(res["lam"], np.nan),
        lambda_eff_sd_per_h=put(res["lam_sd"], np.nan), c0_Bq_per_mL=put(res["c0"], np.nan), time_h=t,
        nuclide=nuc.name, model=model, model_codes=dict(VOXEL_MODEL_CODES), n_iterations=iters_done,
    )
