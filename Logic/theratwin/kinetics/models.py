"""Kinetic models of time-activity curves and their registry.

Every built-in model keeps the effective clearance at least as fast as physical decay: each clearance rate
is written ``lambda = lambda_phys + exp(phi)`` with a free ``phi`` (so the biological rate ``exp(phi)`` is
positive), and faster components are built on slower ones (``lambda_2 = lambda_1 + exp(phi_2)``), which also
makes the exponentials identifiable (no label switching). Amplitudes are fitted as logarithms, so they stay
positive. Time-integrated activities from 0 to infinity are analytic sums of ``A / lambda``.

Plug-in protocol
----------------
A kinetic model registered in :data:`KINETIC_MODELS` (``KINETIC_MODELS.register("name", obj)`` or the
entry-point group ``theratwin.kinetic_models`` pointing at an object or a class without arguments) provides:

``name``
    Registry name (str).
``param_names``
    Names of the internal parameters ``theta`` fitted by weighted least squares (tuple of str). Their number
    ``k`` is what AICc counts and what the "more parameters than data" refusal checks.
``selectable``
    Whether ``fit_tac(model="auto")`` considers the model (bool).
``initial_guesses(time_h, activity_MBq, lambda_phys_per_h) -> list[ndarray]``
    Starting values of ``theta``; the fit keeps the best of them.
``evaluate(theta, time_h, lambda_phys_per_h) -> ndarray``
    Activity in MBq at ``time_h``.
``tia(theta, lambda_phys_per_h) -> float``
    Time-integrated activity from 0 to infinity in MBq·h (analytic where possible).
``physical_params(theta, lambda_phys_per_h) -> dict[str, float]``
    Readable parameters with units in their names (``A0_MBq``, ``lambda_eff_per_h`` ...).
``effective_half_life_h(theta, lambda_phys_per_h) -> float``
    Half-life of the terminal (slowest) phase in h.
``jacobian(theta, time_h, lambda_phys_per_h) -> ndarray`` (optional)
    ``d activity / d theta``, shape ``(T, k)``; without it the optimiser uses finite differences.
``prior_terms(priors) -> list[PriorTerm]`` (optional)
    Normal priors (:class:`~theratwin.kinetics.priors.PriorTerm`) on linear functions of ``theta`` that the
    prior-informed fit adds, from a :class:`~theratwin.kinetics.priors.KineticPriors`. The prior-informed model
    selection (``fit_tac(model="auto")``, evidence) compares models in which every parameter but one amplitude
    (which keeps a flat prior on its logarithm) carries a prior; a model without this method is fitted by least
    squares only and is left out of that comparison.

A model that is not fitted by least squares (e.g. the trapezoidal rule) instead implements
``fit_direct(time_h, activity_MBq, activity_sd_MBq, lambda_phys_per_h) -> DirectFit`` and sets
``param_names = ()``; :func:`theratwin.kinetics.fit_tac` then calls it instead of the optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..registry import Registry
from .priors import KineticPriors, PriorTerm, rate_prior_term

__all__ = [
    "KineticModel",
    "DirectFit",
    "DirectKineticModel",
    "KINETIC_MODELS",
    "MonoExponential",
    "BiExponential",
    "BiExponentialUptake",
    "TriExponential",
    "Trapezoidal",
    "get_model",
]

# Bounds of the log-parameters inside the model functions, only to keep exp() finite while the optimiser
# explores; a biological rate of exp(-30) /h is indistinguishable from zero, exp(8) /h is instantaneous.
_PHI_MIN, _PHI_MAX = -30.0, 8.0
_LOGA_MIN, _LOGA_MAX = -60.0, 60.0


@runtime_checkable
class KineticModel(Protocol):
    """Protocol of a kinetic model plug-in (see the module docstring)."""

    name: str
    param_names: tuple[str, ...]
    selectable: bool

    def initial_guesses(self, time_h: np.ndarray, activity_MBq: np.ndarray,
                        lambda_phys_per_h: float) -> list[np.ndarray]:
        """Starting points for the least-squares fit; the fit keeps the best optimum over all of them.

        Parameters
        ----------
        time_h, activity_MBq
            The samples (h after administration, MBq).
        lambda_phys_per_h
            Physical decay constant of the nuclide (1/h).

        Returns
        -------
        list of numpy.ndarray
            Parameter vectors ``theta``, each ``len(param_names)`` long.
        """
        ...

    def evaluate(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """Activity ``A(t; theta)`` in MBq at each of ``time_h`` (h), vectorised over the times."""
        ...

    def tia(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """Time-integrated activity ``∫_0^∞ A(t; theta) dt`` in MBq·h."""
        ...

    def physical_params(self, theta: np.ndarray, lambda_phys_per_h: float) -> dict[str, float]:
        """Readable parameters of ``theta`` by name with units (e.g. ``A0_MBq``, ``lambda_eff_per_h``)."""
        ...

    def effective_half_life_h(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """Effective half-life ``ln 2 / lambda_eff`` of the slowest clearance phase in h."""
        ...


@runtime_checkable
class DirectKineticModel(Protocol):
    """Protocol of a kinetic model fitted without an optimiser (``fit_direct``, e.g. the trapezoidal rule)."""

    name: str
    param_names: tuple[str, ...]
    selectable: bool

    def fit_direct(self, time_h: np.ndarray, activity_MBq: np.ndarray, activity_sd_MBq: np.ndarray | None,
                   lambda_phys_per_h: float) -> DirectFit:
        """Fit without an optimiser (e.g. integrate the samples) and return the TIA with its standard deviation.

        Parameters
        ----------
        time_h, activity_MBq
            The samples (h after administration, MBq).
        activity_sd_MBq
            Standard deviation of each sample (MBq), or None (then the TIA's SD is NaN).
        lambda_phys_per_h
            Physical decay constant of the nuclide (1/h).
        """
        ...


@dataclass
class DirectFit:
    """Result of a model fitted without an optimiser (``fit_direct``).

    Attributes
    ----------
    params, params_sd
        Readable parameters and their standard deviations.
    tia_MBq_h, tia_sd_MBq_h
        Time-integrated activity 0..infinity and its standard deviation (MBq·h).
    effective_half_life_h
        Half-life of the tail in h.
    predict
        Callable ``time_h -> activity_MBq``.
    notes
        Assumptions the user must know (e.g. the tail used).
    """

    params: dict[str, float]
    params_sd: dict[str, float]
    tia_MBq_h: float
    tia_sd_MBq_h: float
    effective_half_life_h: float
    predict: Any
    notes: list[str] = field(default_factory=list)


#: Registry of kinetic models (entry-point group ``theratwin.kinetic_models``).
KINETIC_MODELS: Registry[Any] = Registry("theratwin.kinetic_models", "kinetic model", protocol=(KineticModel, DirectKineticModel))


def get_model(name_or_model: str | KineticModel) -> Any:
    """Return a registered model by name (instantiating registered classes), or the object itself."""
    obj = KINETIC_MODELS.get(name_or_model) if isinstance(name_or_model, str) else name_or_model
    return obj() if isinstance(obj, type) else obj


def _rate(phi: float) -> float:
    return math.exp(min(max(float(phi), _PHI_MIN), _PHI_MAX))


def _amp(log_a: float) -> float:
    return math.exp(min(max(float(log_a), _LOGA_MIN), _LOGA_MAX))


def _drate(phi: float) -> float:
    """d exp(phi) / d phi inside the clamp range (0 outside it, where _rate is constant)."""
    return _rate(phi) if _PHI_MIN < float(phi) < _PHI_MAX else 0.0


def _damp(log_a: float) -> float:
    return _amp(log_a) if _LOGA_MIN < float(log_a) < _LOGA_MAX else 0.0


def _phi_of(rate_per_h: float) -> float:
    return math.log(max(rate_per_h, math.exp(_PHI_MIN + 1.0)))


def _loglinear(time_h: np.ndarray, activity_MBq: np.ndarray) -> tuple[float, float]:
    """Log-linear least-squares line through the positive points: (A0_MBq, lambda_per_h)."""
    ok = activity_MBq > 0
    t, y = time_h[ok], np.log(activity_MBq[ok])
    if t.size == 0:
        return 1.0, 0.0
    if t.size == 1 or np.ptp(t) == 0:
        return float(np.exp(y.mean())), 0.0
    slope, icpt = np.polyfit(t, y, 1)
    return float(np.exp(icpt)), float(-slope)


def _segment_rates(time_h: np.ndarray, activity_MBq: np.ndarray) -> list[tuple[float, float]]:
    """(A0_MBq, lambda_per_h) of the line through each pair of consecutive positive clearance-phase points.

    Extra starting points for the optimiser: with weights ``1/sd^2`` a curve whose clearance slows down
    (a fast early phase, a slow tail) can have one least-squares minimum per phase, and the log-linear line
    through all points starts the fit between them.
    """
    t, a = _tail_points(time_h, activity_MBq)
    out = []
    for i in range(t.size - 1):
        if a[i] > 0 and a[i + 1] > 0 and t[i + 1] > t[i]:
            lam = float(np.log(a[i] / a[i + 1]) / (t[i + 1] - t[i]))
            out.append((float(a[i] * np.exp(lam * t[i])), lam))
    return out


def _tail_points(time_h: np.ndarray, activity_MBq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points from the maximum onwards (the clearance phase), at least the last two."""
    i = int(np.argmax(activity_MBq))
    i = min(i, max(time_h.size - 2, 0))
    return time_h[i:], activity_MBq[i:]


class MonoExponential:
    """``A(t) = A0 exp(-lambda t)`` with ``lambda = lambda_phys + exp(phi)``; TIA = A0 / lambda.

    Parameters ``theta = (ln A0[MBq], phi)``.
    """

    name = "mono_exp"
    param_names = ("log_A0", "phi")
    selectable = True
    description = "mono-exponential clearance"

    def initial_guesses(self, time_h: np.ndarray, activity_MBq: np.ndarray,
                        lambda_phys_per_h: float) -> list[np.ndarray]:
        """Starts from the log-linear line through the clearance phase, each segment's slope and slow/fast
        biological clearance guesses."""
        a0, lam = _loglinear(*_tail_points(time_h, activity_MBq))
        a_max = float(np.max(activity_MBq)) + 1e-12
        starts = [(a0, lam), (a_max, 0.1 * lambda_phys_per_h + lambda_phys_per_h),
                  (a_max, 3.0 * lambda_phys_per_h + lambda_phys_per_h)] + _segment_rates(time_h, activity_MBq)
        guesses = []
        for a0g, lam_g in starts:
            lb = max(lam_g - lambda_phys_per_h, 1e-3 * lambda_phys_per_h)
            guesses.append(np.array([math.log(max(a0g, 1e-12)), _phi_of(lb)]))
        return guesses

    def evaluate(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``A(t) = A0 exp(-(lambda_phys + exp(phi)) t)`` in MBq."""
        lam = lambda_phys_per_h + _rate(theta[1])
        return _amp(theta[0]) * np.exp(-lam * np.asarray(time_h, float))

    def jacobian(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``∂A/∂theta`` at each time, shape ``(len(time_h), 2)`` (zero where a parameter is clamped)."""
        t = np.asarray(time_h, float)
        e = np.exp(-(lambda_phys_per_h + _rate(theta[1])) * t)
        return np.column_stack([_damp(theta[0]) * e, -_amp(theta[0]) * t * e * _drate(theta[1])])

    def tia(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``TIA = A0 / (lambda_phys + exp(phi))`` in MBq·h."""
        return _amp(theta[0]) / (lambda_phys_per_h + _rate(theta[1]))

    def physical_params(self, theta: np.ndarray, lambda_phys_per_h: float) -> dict[str, float]:
        """``A0_MBq``, ``lambda_eff_per_h`` and ``lambda_bio_per_h`` of ``theta``."""
        lb = _rate(theta[1])
        return {"A0_MBq": _amp(theta[0]), "lambda_eff_per_h": lambda_phys_per_h + lb, "lambda_bio_per_h": lb}

    def effective_half_life_h(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``ln 2 / (lambda_phys + exp(phi))`` in h."""
        return math.log(2.0) / (lambda_phys_per_h + _rate(theta[1]))

    def prior_terms(self, priors: KineticPriors) -> list[PriorTerm]:
        """Log-normal prior on the biological clearance half-time (``phi``)."""
        return [rate_prior_term("clearance biological half-time", 1, 2, priors.clearance_biological_half_time_h)]


class BiExponentialUptake:
    """Uptake and clearance: ``A(t) = A0 [exp(-lambda_c t) - exp(-lambda_u t)]``, ``A(0) = 0``.

    ``lambda_c = lambda_phys + exp(phi_c)``, ``lambda_u = lambda_c + exp(phi_u)`` (uptake faster than
    clearance). TIA = A0 (1/lambda_c - 1/lambda_u). Parameters ``theta = (ln A0, phi_c, phi_u)``.
    (NUKFIT's uptake/clearance function; Kletting et al. 2013 Med Phys 40:102504.)
    """

    name = "biexp_uptake"
    param_names = ("log_A0", "phi_clear", "phi_uptake")
    selectable = True
    description = "bi-exponential with uptake phase"

    def _rates(self, theta: np.ndarray, lp: float) -> tuple[float, float]:
        lc = lp + _rate(theta[1])
        return lc, lc + _rate(theta[2])

    def initial_guesses(self, time_h: np.ndarray, activity_MBq: np.ndarray,
                        lambda_phys_per_h: float) -> list[np.ndarray]:
        """Starts from the clearance slope of the tail (and of each segment) combined with uptake rates
        from complete before the first sample to still rising at the peak."""
        out = []
        t_first = float(max(time_h[0], 1e-3))
        # clearance: the log-linear line through the tail, then each segment's slope (see _segment_rates)
        for k, (a0, lam) in enumerate([_loglinear(*_tail_points(time_h, activity_MBq))]
                                      + _segment_rates(time_h, activity_MBq)):
            lb = max(lam - lambda_phys_per_h, 1e-3 * lambda_phys_per_h)
            lc = lambda_phys_per_h + lb
            # uptake rates from "complete well before the first point" to "still rising at the peak"
            for lu_over in (5.0 / t_first, 1.0 / t_first, 0.3 / t_first, 10.0 * lc)[: 4 if k == 0 else 2]:
                du = max(lu_over - lc, 1e-3 * lc)
                lu = lc + du
                peak_factor = max(1.0 - math.exp(-(lu - lc) * t_first), 1e-3)
                out.append(np.array([math.log(max(a0 / peak_factor, 1e-12)), _phi_of(lb), _phi_of(du)]))
        return out

    def evaluate(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``A(t) = A0 [exp(-lambda_c t) - exp(-lambda_u t)]`` in MBq."""
        lc, lu = self._rates(theta, lambda_phys_per_h)
        t = np.asarray(time_h, float)
        return _amp(theta[0]) * (np.exp(-lc * t) - np.exp(-lu * t))

    def jacobian(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``∂A/∂theta`` at each time, shape ``(len(time_h), 3)`` (zero where a parameter is clamped)."""
        lc, lu = self._rates(theta, lambda_phys_per_h)
        t = np.asarray(time_h, float)
        ec, eu = np.exp(-lc * t), np.exp(-lu * t)
        a0 = _amp(theta[0])
        # lambda_c moves both exponentials, lambda_u = lambda_c + exp(phi_u) only the uptake one
        return np.column_stack([_damp(theta[0]) * (ec - eu), a0 * t * (eu - ec) * _drate(theta[1]),
                                a0 * t * eu * _drate(theta[2])])

    def tia(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``TIA = A0 (1/lambda_c - 1/lambda_u)`` in MBq·h."""
        lc, lu = self._rates(theta, lambda_phys_per_h)
        return _amp(theta[0]) * (1.0 / lc - 1.0 / lu)

    def physical_params(self, theta: np.ndarray, lambda_phys_per_h: float) -> dict[str, float]:
        """``A0_MBq``, ``lambda_eff_per_h`` (= lambda_c), ``lambda_bio_per_h`` and ``lambda_uptake_per_h``."""
        lc, lu = self._rates(theta, lambda_phys_per_h)
        return {"A0_MBq": _amp(theta[0]), "lambda_eff_per_h": lc, "lambda_bio_per_h": lc - lambda_phys_per_h,
                "lambda_uptake_per_h": lu}

    def effective_half_life_h(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``ln 2 / lambda_c`` (clearance phase) in h."""
        return math.log(2.0) / self._rates(theta, lambda_phys_per_h)[0]

    def prior_terms(self, priors: KineticPriors) -> list[PriorTerm]:
        """Log-normal priors on the clearance biological half-time and the uptake half-time."""
        # phi_uptake = ln(lambda_u - lambda_c): log-normal prior on the uptake half-time
        return [rate_prior_term("clearance biological half-time", 1, 3, priors.clearance_biological_half_time_h),
                rate_prior_term("uptake half-time", 2, 3, priors.uptake_half_time_h)]


class BiExponential:
    """Two clearance phases: ``A(t) = A1 exp(-lambda_1 t) + A2 exp(-lambda_2 t)``.

    ``lambda_1 = lambda_phys + exp(phi_1)`` (slow), ``lambda_2 = lambda_1 + exp(phi_2)`` (fast).
    TIA = A1/lambda_1 + A2/lambda_2. Parameters ``theta = (ln A1, ln A2, phi_1, phi_2)``.
    """

    name = "biexp"
    param_names = ("log_A1", "log_A2", "phi_1", "phi_2")
    selectable = True
    description = "bi-exponential clearance"

    def _rates(self, theta: np.ndarray, lp: float) -> tuple[float, float]:
        l1 = lp + _rate(theta[2])
        return l1, l1 + _rate(theta[3])

    def initial_guesses(self, time_h: np.ndarray, activity_MBq: np.ndarray,
                        lambda_phys_per_h: float) -> list[np.ndarray]:
        """Starts from a log-linear line through the later half (slow phase) and through the residual of
        the earlier half (fast phase)."""
        n = time_h.size
        half = max(n // 2, 2)
        a_slow, l_slow = _loglinear(time_h[-half:], activity_MBq[-half:])
        lb = max(l_slow - lambda_phys_per_h, 1e-3 * lambda_phys_per_h)
        l1 = lambda_phys_per_h + lb
        resid = activity_MBq[:half] - a_slow * np.exp(-l1 * time_h[:half])
        a_fast, l_fast = _loglinear(time_h[:half], np.clip(resid, 1e-9 * max(a_slow, 1e-12), None))
        out = []
        for lf in (max(l_fast, 2 * l1), 5 * l1, 30 * l1):
            out.append(np.array([math.log(max(a_slow, 1e-12)), math.log(max(a_fast, 1e-3 * a_slow, 1e-12)),
                                 _phi_of(lb), _phi_of(lf - l1)]))
        return out

    def evaluate(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``A(t) = A1 exp(-lambda_1 t) + A2 exp(-lambda_2 t)`` in MBq."""
        l1, l2 = self._rates(theta, lambda_phys_per_h)
        t = np.asarray(time_h, float)
        return _amp(theta[0]) * np.exp(-l1 * t) + _amp(theta[1]) * np.exp(-l2 * t)

    def jacobian(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``∂A/∂theta`` at each time, shape ``(len(time_h), 4)`` (zero where a parameter is clamped)."""
        l1, l2 = self._rates(theta, lambda_phys_per_h)
        t = np.asarray(time_h, float)
        e1, e2 = np.exp(-l1 * t), np.exp(-l2 * t)
        a1, a2 = _amp(theta[0]), _amp(theta[1])
        # lambda_2 = lambda_1 + exp(phi_2): phi_1 moves both rates
        return np.column_stack([_damp(theta[0]) * e1, _damp(theta[1]) * e2,
                                -t * (a1 * e1 + a2 * e2) * _drate(theta[2]), -t * a2 * e2 * _drate(theta[3])])

    def tia(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``TIA = A1/lambda_1 + A2/lambda_2`` in MBq·h."""
        l1, l2 = self._rates(theta, lambda_phys_per_h)
        return _amp(theta[0]) / l1 + _amp(theta[1]) / l2

    def physical_params(self, theta: np.ndarray, lambda_phys_per_h: float) -> dict[str, float]:
        """``A1_MBq``, ``A2_MBq``, ``lambda_eff_per_h`` (= lambda_1, slow), ``lambda_bio_per_h`` and
        ``lambda_fast_per_h``."""
        l1, l2 = self._rates(theta, lambda_phys_per_h)
        return {"A1_MBq": _amp(theta[0]), "A2_MBq": _amp(theta[1]), "lambda_eff_per_h": l1,
                "lambda_bio_per_h": l1 - lambda_phys_per_h, "lambda_fast_per_h": l2}

    def effective_half_life_h(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``ln 2 / lambda_1`` (slow phase) in h."""
        return math.log(2.0) / self._rates(theta, lambda_phys_per_h)[0]

    def prior_terms(self, priors: KineticPriors) -> list[PriorTerm]:
        """Priors on the fast fraction (logit, ``ln(A2/A1)``), the clearance biological half-time and the
        fast phase's excess half-time."""
        # ln(A2/A1) = logit of the fast fraction; phi_2 = ln(lambda_2 - lambda_1)
        p = priors.fast_fraction_logit
        return [PriorTerm("fast fraction (logit)", (-1.0, 1.0, 0.0, 0.0), p.mean, p.sd),
                rate_prior_term("clearance biological half-time", 2, 4, priors.clearance_biological_half_time_h),
                rate_prior_term("fast-phase excess half-time", 3, 4, priors.fast_excess_half_time_h)]


class TriExponential:
    """Uptake and two clearance phases (NUKFIT-style, Kletting et al. 2013 Med Phys 40:102504):

    ``A(t) = A1 exp(-lambda_1 t) + A2 exp(-lambda_2 t) - (A1 + A2) exp(-lambda_3 t)``, ``A(0) = 0``, with
    ``lambda_1 = lambda_phys + exp(phi_1) < lambda_2 = lambda_1 + exp(phi_2) < lambda_3 = lambda_2 + exp(phi_3)``.
    TIA = A1/lambda_1 + A2/lambda_2 - (A1 + A2)/lambda_3. Parameters ``theta = (ln A1, ln A2, phi_1..3)``.
    """

    name = "triexp"
    param_names = ("log_A1", "log_A2", "phi_1", "phi_2", "phi_3")
    selectable = True
    description = "tri-exponential (uptake and two clearance phases)"

    def _rates(self, theta: np.ndarray, lp: float) -> tuple[float, float, float]:
        l1 = lp + _rate(theta[2])
        l2 = l1 + _rate(theta[3])
        return l1, l2, l2 + _rate(theta[4])

    def initial_guesses(self, time_h: np.ndarray, activity_MBq: np.ndarray,
                        lambda_phys_per_h: float) -> list[np.ndarray]:
        """Starts from the log-linear slope of the last three samples (slow phase) with three assumed
        fast-phase and uptake rates."""
        a_slow, l_slow = _loglinear(time_h[-3:], activity_MBq[-3:])
        lb = max(l_slow - lambda_phys_per_h, 1e-3 * lambda_phys_per_h)
        l1 = lambda_phys_per_h + lb
        t_first = float(max(time_h[0], 1e-3))
        out = []
        for f2, l2f, l3f in ((0.5, 5.0, 2.0 / t_first), (1.0, 10.0, 5.0 / t_first), (0.2, 3.0, 1.0 / t_first)):
            l2 = l1 * l2f
            l3 = max(l3f, 2.0 * l2)
            out.append(np.array([math.log(max(a_slow, 1e-12)), math.log(max(f2 * a_slow, 1e-12)), _phi_of(lb),
                                 _phi_of(l2 - l1), _phi_of(l3 - l2)]))
        return out

    def evaluate(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``A(t) = A1 exp(-lambda_1 t) + A2 exp(-lambda_2 t) - (A1 + A2) exp(-lambda_3 t)`` in MBq."""
        l1, l2, l3 = self._rates(theta, lambda_phys_per_h)
        a1, a2 = _amp(theta[0]), _amp(theta[1])
        t = np.asarray(time_h, float)
        return a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) - (a1 + a2) * np.exp(-l3 * t)

    def jacobian(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        """``∂A/∂theta`` at each time, shape ``(len(time_h), 5)`` (zero where a parameter is clamped)."""
        l1, l2, l3 = self._rates(theta, lambda_phys_per_h)
        t = np.asarray(time_h, float)
        e1, e2, e3 = np.exp(-l1 * t), np.exp(-l2 * t), np.exp(-l3 * t)
        a1, a2 = _amp(theta[0]), _amp(theta[1])
        # rates are nested (lambda_3 = lambda_2 + ..., lambda_2 = lambda_1 + ...): phi_j moves lambda_j and above
        d3 = t * (a1 + a2) * e3
        d2 = -t * a2 * e2 + d3
        d1 = -t * a1 * e1 + d2
        return np.column_stack([_damp(theta[0]) * (e1 - e3), _damp(theta[1]) * (e2 - e3), d1 * _drate(theta[2]),
                                d2 * _drate(theta[3]), d3 * _drate(theta[4])])

    def tia(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``TIA = A1/lambda_1 + A2/lambda_2 - (A1 + A2)/lambda_3`` in MBq·h."""
        l1, l2, l3 = self._rates(theta, lambda_phys_per_h)
        a1, a2 = _amp(theta[0]), _amp(theta[1])
        return a1 / l1 + a2 / l2 - (a1 + a2) / l3

    def physical_params(self, theta: np.ndarray, lambda_phys_per_h: float) -> dict[str, float]:
        """``A1_MBq``, ``A2_MBq``, ``lambda_eff_per_h`` (= lambda_1, slow), ``lambda_bio_per_h``,
        ``lambda_fast_per_h`` and ``lambda_uptake_per_h``."""
        l1, l2, l3 = self._rates(theta, lambda_phys_per_h)
        return {"A1_MBq": _amp(theta[0]), "A2_MBq": _amp(theta[1]), "lambda_eff_per_h": l1,
                "lambda_bio_per_h": l1 - lambda_phys_per_h, "lambda_fast_per_h": l2, "lambda_uptake_per_h": l3}

    def effective_half_life_h(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        """``ln 2 / lambda_1`` (slow phase) in h."""
        return math.log(2.0) / self._rates(theta, lambda_phys_per_h)[0]

    def prior_terms(self, priors: KineticPriors) -> list[PriorTerm]:
        """Priors on the fast fraction (logit), the clearance biological half-time, the fast phase's excess
        half-time and the uptake half-time."""
        p = priors.fast_fraction_logit
        return [PriorTerm("fast fraction (logit)", (-1.0, 1.0, 0.0, 0.0, 0.0), p.mean, p.sd),
                rate_prior_term("clearance biological half-time", 2, 5, priors.clearance_biological_half_time_h),
                rate_prior_term("fast-phase excess half-time", 3, 5, priors.fast_excess_half_time_h),
                rate_prior_term("uptake half-time", 4, 5, priors.uptake_half_time_h)]


class Trapezoidal:
    """Trapezoidal rule over the samples plus an exponential tail after the last one.

    From 0 to the first sample the activity is taken to rise linearly from ``A(0) = 0`` (``start="zero"``,
    right for an organ after an intravenous injection) or to equal the first sample (``start="constant"``).
    After the last sample ``t_n`` the activity decays as ``A_n exp(-lambda (t - t_n))`` with
    ``lambda = lambda_phys`` (``tail="physical"``: no biological clearance assumed after the last scan, which
    can only overestimate the tail) or the log-slope of
    the last two samples, never slower than physical decay (``tail="fitted"``). The TIA is linear in the
    samples (physical tail), so its SD follows exactly from the sample SDs (uncorrelated).
    """

    param_names: tuple[str, ...] = ()
    selectable = False

    def __init__(self, tail: str = "physical", start: str = "zero") -> None:
        if tail not in ("physical", "fitted") or start not in ("zero", "constant"):
            from ..errors import ConfigurationError

            raise ConfigurationError(
                f"Trapezoidal model: tail must be 'physical' or 'fitted' and start 'zero' or 'constant'; got "
                f"tail={tail!r}, start={start!r}."
            )
        self.tail = tail
        self.start = start
        self.name = "trapezoid" if tail == "physical" else "trapezoid_fitted_tail"
        self.description = f"trapezoidal rule with {tail} tail"

    def _tia(self, t: np.ndarray, a: np.ndarray, lp: float) -> tuple[float, float]:
        a0 = 0.0 if self.start == "zero" else float(a[0])
        tt = np.concatenate([[0.0], t]) if t[0] > 0 else t
        aa = np.concatenate([[a0], a]) if t[0] > 0 else a
        area = float(np.sum(0.5 * (aa[1:] + aa[:-1]) * np.diff(tt)))
        lam = lp
        if self.tail == "fitted" and t.size >= 2 and a[-1] > 0 and a[-2] > 0:
            lam = max(lp, math.log(a[-2] / a[-1]) / (t[-1] - t[-2]))
        return area + float(a[-1]) / lam, lam

    def fit_direct(self, time_h: np.ndarray, activity_MBq: np.ndarray, activity_sd_MBq: np.ndarray | None,
                   lambda_phys_per_h: float) -> DirectFit:
        """Trapezoidal area plus the tail ``A_n / lambda``; the SD from the sample SDs by the delta method
        (exact for the physical tail)."""
        t = np.asarray(time_h, float)
        a = np.asarray(activity_MBq, float)
        tia, lam = self._tia(t, a, lambda_phys_per_h)
        notes = [f"Trapezoidal integration with A(0) {'= 0' if self.start == 'zero' else '= A(t1)'} and a "
                 f"{'physical-decay' if lam == lambda_phys_per_h else 'fitted'} tail "
                 f"(T = {math.log(2) / lam:.1f} h) after the last sample."]
        sd = np.nan
        if activity_sd_MBq is not None:
            # delta method: dTIA/dA_i by central differences (exact for the linear physical-tail case)
            grad = np.empty(a.size)
            for i in range(a.size):
                h = 1e-6 * max(abs(a[i]), 1e-9)
                ap, am = a.copy(), a.copy()
                ap[i] += h
                am[i] -= h
                grad[i] = (self._tia(t, ap, lambda_phys_per_h)[0] - self._tia(t, am, lambda_phys_per_h)[0]) / (2 * h)
            sd = float(np.sqrt(np.sum((grad * np.asarray(activity_sd_MBq, float)) ** 2)))
        else:
            notes.append("No activity uncertainties given: the TIA standard deviation is unknown (NaN).")
        a_start = 0.0 if self.start == "zero" else float(a[0])
        t_last, a_last = float(t[-1]), float(a[-1])

        def predict(time_q: Any) -> np.ndarray:
            tq = np.asarray(time_q, float)
            inside = np.interp(tq, np.concatenate([[0.0], t]), np.concatenate([[a_start], a]))
            return np.where(tq <= t_last, inside, a_last * np.exp(-lam * (tq - t_last)))

        params = {f"A_{i}_MBq": float(v) for i, v in enumerate(a)}
        params["lambda_tail_per_h"] = lam
        sds = {f"A_{i}_MBq": float(s) for i, s in enumerate(activity_sd_MBq)} if activity_sd_MBq is not None else {}
        return DirectFit(params, sds, tia, sd, math.log(2.0) / lam, predict, notes)


def _register_builtins() -> None:
    for obj in (MonoExponential(), BiExponentialUptake(), BiExponential(), TriExponential(),
                Trapezoidal("physical"), Trapezoidal("fitted")):
        KINETIC_MODELS.register(obj.name, obj, replace=True)


_register_builtins()


def selectable_models() -> Sequence[str]:
    """Names of the models ``fit_tac(model="auto")`` considers, fewest parameters first."""
    ms = [(len(get_model(n).param_names), n) for n in KINETIC_MODELS.names()
          if getattr(get_model(n), "selectable", False)]
    return [n for _, n in sorted(ms)]
