"""Biologically effective dose for radionuclide therapy (Dale's linear-quadratic formalism), EQD2, gEUD.

For a dose-rate curve ``R(t)`` delivering ``D = integral R dt``, with mono-exponential repair of sublethal
damage (rate ``mu = ln 2 / T_rep``), the BED is (Dale RG. Br J Radiol 1985;58:515-528; Dale RG. Phys Med Biol
1996;41:1871-1884)::

    BED = D + G D^2 / (alpha/beta),   G = (2 / D^2) int_0^inf R(t) int_0^t R(w) exp(-mu (t - w)) dw dt

(the Lea-Catcheside dose-protraction factor). For a sum of exponentials ``R(t) = sum_i c_i exp(-a_i t)`` the
double integral is, in closed form, ``sum_ij c_i c_j / ((a_i + a_j)(a_i + mu))``. Special cases:

* mono-exponential (``R = R0 exp(-lambda t)``): ``G = lambda / (lambda + mu)``, the classical
  ``BED = D (1 + D lambda / ((mu + lambda) alpha/beta))`` (Dale 1985, Eq. for permanent implants);
* with an exponential uptake phase (``R = K (exp(-lambda t) - exp(-(lambda + lambda_u) t))``; Dale 1996,
  Baechler S et al. Med Phys 2008;35:1123-1134, Eq. 8);
* bi-exponential clearance (``R = K (f exp(-l1 t) + (1 - f) exp(-l2 t))`` per unit activity; Baechler 2008).

All functions are vectorised: dose and half-lives may be arrays of the same (broadcastable) shape (voxel-wise
BED from voxel kinetics). Cycles separated by much more than the repair time add their BEDs.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

__all__ = [
    "bed",
    "bed_multiexponential",
    "protraction_factor",
    "eqd2",
    "geud",
]

_LN2 = float(np.log(2.0))


def protraction_factor(coefficients: np.ndarray, rates_per_h: np.ndarray, repair_rate_per_h: np.ndarray | float) -> np.ndarray:
    """Lea-Catcheside factor G of ``R(t) = sum_i c_i exp(-a_i t)`` (closed form, see the module docstring).

    Parameters
    ----------
    coefficients
        ``c_i`` with shape ``(n, ...)`` (any scale; G is scale-free).
    rates_per_h
        ``a_i`` (1/h), shape ``(n, ...)``, all > 0.
    repair_rate_per_h
        ``mu = ln 2 / T_rep`` (1/h), broadcastable to ``(...)``.
    """
    c = np.asarray(coefficients, dtype=float)
    a = np.asarray(rates_per_h, dtype=float)
    mu = np.asarray(repair_rate_per_h, dtype=float)
    if np.any(a <= 0):
        raise InvalidInputError("All exponential rates must be > 0 (a half-life must be finite and positive).")
    dose = np.sum(c / a, axis=0)
    double = np.zeros(np.broadcast_shapes(c.shape[1:], a.shape[1:], mu.shape))
    for i in range(c.shape[0]):
        for j in range(c.shape[0]):
            double = double + c[i] * c[j] / ((a[i] + a[j]) * (a[i] + mu))
    return 2.0 * double / (dose * dose)


def _check_positive(name: str, value: np.ndarray) -> None:
    if np.any(~np.isfinite(value)) or np.any(value <= 0):
        raise InvalidInputError(f"{name} must be finite and > 0; got {value if np.ndim(value) == 0 else 'an array with invalid values'}.")


def bed(dose_Gy: np.ndarray | float, alpha_beta_Gy: np.ndarray | float = 2.6,
        repair_half_time_h: np.ndarray | float = 2.8, effective_half_life_h: np.ndarray | float | None = None,
        uptake_half_life_h: np.ndarray | float | None = None) -> np.ndarray | float:
    """BED (Gy) of an absorbed dose delivered by a mono-exponentially decreasing dose rate, optionally after
    an exponential uptake phase (Dale 1985; Dale 1996; Baechler et al. 2008).

    Parameters
    ----------
    dose_Gy
        Absorbed dose (Gy), scalar or array (e.g. a voxel dose map).
    alpha_beta_Gy
        alpha/beta of the tissue (Gy); default 2.6 Gy (kidney, Wessels et al. J Nucl Med 2008;49:1884).
    repair_half_time_h
        Half-time of sublethal damage repair (h); default 2.8 h (kidney, Wessels et al. 2008).
    effective_half_life_h
        Effective (clearance) half-life of the dose rate (h); required. Arrays are voxel-wise.
    uptake_half_life_h
        Half-life of the uptake phase (h), None for instantaneous uptake. The dose rate is
        ``K (1 - exp(-lambda_u t)) exp(-lambda t)``.

    Returns
    -------
    float or numpy.ndarray
        BED in Gy (same shape as the broadcast inputs).
    """
    if effective_half_life_h is None:
        raise InvalidInputError("bed() needs effective_half_life_h (h), e.g. from the kinetic fit.")
    d = np.asarray(dose_Gy, dtype=float)
    ab = np.asarray(alpha_beta_Gy, dtype=float)
    trep = np.asarray(repair_half_time_h, dtype=float)
    teff = np.asarray(effective_half_life_h, dtype=float)
    _check_positive("alpha_beta_Gy", ab)
    _check_positive("repair_half_time_h", trep)
    _check_positive("effective_half_life_h", teff)
    if np.any(d < 0) or not np.all(np.isfinite(d)):
        raise InvalidInputError("dose_Gy must be finite and >= 0.")
    lam = _LN2 / teff
    mu = _LN2 / trep
    if uptake_half_life_h is None:
        g = lam / (lam + mu)  # Dale 1985
    else:
        tu = np.asarray(uptake_half_life_h, dtype=float)
        _check_positive("uptake_half_life_h", tu)
        lam2 = lam + _LN2 / tu
        one = np.ones(np.broadcast(lam, lam2).shape)
        g = protraction_factor(np.stack([one, -one]), np.stack([lam * one, lam2 * one]), mu)
    out = d * (1.0 + g * d / ab)
    return float(out) if out.ndim == 0 else out


def bed_multiexponential(dose_Gy: np.ndarray | float, coefficients: np.ndarray, half_lives_h: np.ndarray, *,
                         alpha_beta_Gy: np.ndarray | float = 2.6,
                         repair_half_time_h: np.ndarray | float = 2.8) -> np.ndarray | float:
    """BED (Gy) for a dose-rate curve that is a sum of exponentials ``sum_i c_i exp(-ln2 t / T_i)``.

    Covers the bi-exponential clearance (``c = [f, 1 - f]``) and uptake models (``c = [1, -1]``) of Baechler
    et al. 2008; ``coefficients`` and ``half_lives_h`` have shape ``(n,)`` or ``(n, ...)`` for voxel-wise use.
    Only the shape of the curve matters (G is scale-free); ``dose_Gy`` sets the dose.
    """
    c = np.asarray(coefficients, dtype=float)
    t = np.asarray(half_lives_h, dtype=float)
    _check_positive("half_lives_h", t)
    ab = np.asarray(alpha_beta_Gy, dtype=float)
    _check_positive("alpha_beta_Gy", ab)
    g = protraction_factor(c, _LN2 / t, _LN2 / np.asarray(repair_half_time_h, dtype=float))
    d = np.asarray(dose_Gy, dtype=float)
    out = d * (1.0 + g * d / ab)
    return float(out) if np.ndim(out) == 0 else out


def eqd2(bed_Gy: np.ndarray | float, alpha_beta_Gy: np.ndarray | float) -> np.ndarray | float:
    """Equivalent dose in 2-Gy fractions: ``EQD2 = BED / (1 + 2 Gy / (alpha/beta))`` (Withers HR et al.
    Int J Radiat Oncol Biol Phys 1983;9:1225; Bentzen SM et al. Radiother Oncol 2012;105:266)."""
    ab = np.asarray(alpha_beta_Gy, dtype=float)
    _check_positive("alpha_beta_Gy", ab)
    out = np.asarray(bed_Gy, dtype=float) / (1.0 + 2.0 / ab)
    return float(out) if out.ndim == 0 else out


def geud(dose_Gy: np.ndarray, weights: np.ndarray | None = None, a: float = -10.0) -> float:
    """Generalised equivalent uniform dose ``(sum v_i D_i^a)^(1/a)`` (Niemierko A. Med Phys 1999;26:1100).

    Parameters
    ----------
    dose_Gy
        Voxel doses (or BEDs) of the structure, Gy.
    weights
        Voxel volume weights (fractional mask), normalised here; None for equal weights.
    a
        Volume-effect parameter; negative for tumours (cold spots dominate), default -10
        (Niemierko 1999 quotes a = -10 to -5 for tumours).
    """
    d = np.asarray(dose_Gy, dtype=float).ravel()
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=float).ravel()
    keep = w > 0
    d, w = d[keep], w[keep]
    if d.size == 0:
        raise InvalidInputError("gEUD of an empty structure: the mask has no voxel on the dose grid.")
    if a == 0:
        raise InvalidInputError("gEUD parameter a must be non-zero.")
    w = w / w.sum()
    if a < 0 and np.any(d <= 0):
        return 0.0
    return float(np.sum(w * d**a) ** (1.0 / a))
