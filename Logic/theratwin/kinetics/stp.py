"""Single-time-point (STP) estimates of the time-integrated activity.

Validity (derived for a mono-exponential curve ``A(t) = A0 exp(-lambda t)``, ``lambda = ln2 / T_eff``):

- ``"hanscheid"`` (Hänscheid et al. 2018 J Nucl Med 59:75-81): ``TIA ~ A(t) 2t / ln2``. The ratio to the
  true TIA ``A(t) exp(lambda t)/lambda`` is ``2x / (ln2 e^x)`` with ``x = ln2 t/T_eff``: exact at
  ``t = T_eff`` and ``t = 2 T_eff``, at most +6.1 % between them (at ``t = T_eff/ln2``), and within 10 % for
  ``0.76 T_eff <= t <= 2.44 T_eff``. Needs no kinetic information; use it when the scan time is close to the
  expected effective half-life (e.g. ~4 d for 177Lu kidneys).
- ``"madsen"`` (Madsen et al. 2018 Med Phys 45:2318-24): ``TIA = A(t) exp(lambda t) / lambda`` with a
  population effective half-life. Exact at any time when the patient's T_eff equals the population value;
  the error grows as ``|t - 1/lambda| * delta_lambda`` (relative), so it is least sensitive at ``t ~ 1/lambda
  = 1.44 T_eff``.
- ``"prior"``: the same patient's earlier-cycle fit gives the curve shape; the new cycle's curve is that
  shape scaled through the single measurement: ``TIA_n = A_n(t) * TIA_prior / A_prior(t)``. Valid when the
  kinetics (rate constants) of the structure do not change between cycles; an inter-cycle variability
  (default 10 % on the ratio, configurable) is added to the SD. Exact for any shape if the rates repeat.
  ``A_prior(t)`` is the fitted prior curve rescaled to the prior cycle's *measured* sample nearest in time to
  ``t`` (factor = measured / fitted at that sample; the voxel path does the same with neighbourhood sums): where
  the prior fit misses its samples (a poor fit, chi2_red >> 1, e.g. a fast and a slow phase through a model
  that has one), the misfit is not carried into the new cycle; that sample's random SD enters the estimate's SD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import nuclides
from ..errors import ConfigurationError, InvalidInputError

__all__ = ["StpEstimate", "single_time_point", "single_time_point_estimate", "hanscheid_ratio"]


@dataclass
class StpEstimate:
    """A single-time-point TIA estimate (MBq·h) with its SD and the method used."""

    tia_MBq_h: float
    tia_sd_MBq_h: float
    method: str
    time_h: float
    activity_MBq: float
    effective_half_life_h: float | None
    notes: list[str] = field(default_factory=list)
    rescale_factor: float = 1.0
    rescale_time_h: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: TIA and SD (MBq·h), method, the time (h) and activity (MBq) used, effective
        half-life (h), notes and any rescaling."""
        return {"tia_MBq_h": self.tia_MBq_h, "tia_sd_MBq_h": self.tia_sd_MBq_h, "method": self.method,
                "time_h": self.time_h, "activity_MBq": self.activity_MBq,
                "effective_half_life_h": self.effective_half_life_h, "notes": list(self.notes),
                "rescale_factor": self.rescale_factor, "rescale_time_h": self.rescale_time_h}


def hanscheid_ratio(time_h: float, effective_half_life_h: float) -> float:
    """Ratio of the Hänscheid estimate to the exact mono-exponential TIA at ``time_h`` (see module doc)."""
    x = math.log(2.0) * time_h / effective_half_life_h
    return 2.0 * x / (math.log(2.0) * math.exp(x))


def single_time_point_estimate(
    time_h: float,
    activity_MBq: float,
    nuclide: str = "Lu-177",
    method: str = "hanscheid",
    effective_half_life_h: float | None = None,
    *,
    activity_sd_MBq: float | None = None,
    effective_half_life_sd_h: float | None = None,
    prior: Any = None,
    inter_cycle_variability: float = 0.10,
    rescale_to_nearest_sample: bool = True,
) -> StpEstimate:
    """Single-time-point TIA with its SD (see the module docstring for validity).

    Parameters
    ----------
    time_h
        Scan time in h since the start of administration.
    activity_MBq
        Activity in the structure at ``time_h`` (MBq).
    nuclide
        Nuclide (its half-life bounds the effective half-life).
    method
        ``"hanscheid"``, ``"madsen"`` or ``"prior"``.
    effective_half_life_h
        Population effective half-life (``"madsen"``, required) or the expected one (``"hanscheid"``,
        optional: only used to report the method's expected bias).
    activity_sd_MBq
        SD of the activity (MBq); default 0 (only model terms in the SD).
    effective_half_life_sd_h
        SD of the population effective half-life (``"madsen"``); default 0.
    prior
        For ``"prior"``: an earlier-cycle :class:`~theratwin.kinetics.TacFit` of the same structure (or any
        object with ``predict(time_h)``, ``tia_MBq_h`` and ``tia_sd_MBq_h``).
    inter_cycle_variability
        Relative SD assumed for the change of kinetics between cycles (``"prior"``).
    rescale_to_nearest_sample
        ``"prior"``: rescale the prior curve to the prior's measured sample nearest in time (needs ``prior`` to
        carry ``time_h`` and ``activity_MBq``, as a :class:`~theratwin.kinetics.TacFit` does; see the module
        docstring).

    Returns
    -------
    StpEstimate
    """
    t = float(time_h)
    a = float(activity_MBq)
    if not math.isfinite(t) or t <= 0:
        raise InvalidInputError(f"The scan time must be > 0 h after administration; got {time_h}.")
    if not math.isfinite(a) or a < 0:
        raise InvalidInputError(f"The activity must be finite and >= 0 MBq; got {activity_MBq}.")
    sd_a = float(activity_sd_MBq or 0.0)
    nuc = nuclides.get(nuclide)
    notes: list[str] = []
    m = method.lower()
    if effective_half_life_h is not None:
        if not (0 < effective_half_life_h <= nuc.half_life_h * (1 + 1e-9)):
            raise InvalidInputError(
                f"Effective half-life {effective_half_life_h} h is impossible for {nuc.name} (physical half-life "
                f"{nuc.half_life_h:.2f} h): it must lie in (0, {nuc.half_life_h:.2f}] h."
            )
    if m == "hanscheid":
        # Hänscheid et al. 2018 JNM 59:75, eq. in the text: TIA ~ A(t) * 2t / ln 2
        tia = a * 2.0 * t / math.log(2.0)
        sd = sd_a * 2.0 * t / math.log(2.0)
        if effective_half_life_h is not None:
            ratio = hanscheid_ratio(t, effective_half_life_h)
            notes.append(f"Expected Hänscheid bias at t/T_eff = {t / effective_half_life_h:.2f}: "
                         f"{100 * (ratio - 1):+.1f} % (mono-exponential).")
            if abs(ratio - 1) > 0.10:
                notes.append("Scan time outside 0.76-2.44 T_eff: the Hänscheid approximation is off by > 10 %.")
        else:
            # the method's own model error is at most ~10 % in its validity range; include it in the SD
            sd = math.hypot(sd, 0.10 * tia)
            notes.append("No expected T_eff given: a 10 % method uncertainty is included in the SD.")
        return StpEstimate(tia, sd, "hanscheid", t, a, effective_half_life_h, notes)
    if m == "madsen":
        if effective_half_life_h is None:
            raise ConfigurationError("method='madsen' needs effective_half_life_h (population value, h).")
        lam = math.log(2.0) / effective_half_life_h
        # Madsen et al. 2018 Med Phys 45:2318: mono-exponential through A(t) with population lambda
        tia = a * math.exp(lam * t) / lam
        var = (sd_a * math.exp(lam * t) / lam) ** 2
        if effective_half_life_sd_h:
            sd_lam = lam * effective_half_life_sd_h / effective_half_life_h
            var += (tia * (t - 1.0 / lam) * sd_lam) ** 2  # dTIA/dlambda = TIA (t - 1/lambda)
        return StpEstimate(tia, math.sqrt(var), "madsen", t, a, effective_half_life_h, notes)
    if m == "prior":
        if prior is None:
            raise ConfigurationError("method='prior' needs prior= an earlier-cycle fit of the same structure.")
        a_prior = float(np.asarray(prior.predict(np.array([t])), float)[0])
        if not (a_prior > 0 and math.isfinite(a_prior)):
            raise InvalidInputError(
                f"The prior curve predicts {a_prior} MBq at t = {t} h; it cannot be scaled to this scan. Use "
                "method='hanscheid'."
            )
        factor, rel_sample, t_k = _nearest_sample_factor(prior, t) if rescale_to_nearest_sample else (1.0, 0.0, None)
        a_prior *= factor
        ratio = float(prior.tia_MBq_h) / a_prior
        tia = a * ratio
        # shape uncertainty: the prior's relative TIA SD (the amplitude part cancels only partly, so this is
        # conservative) combined with the inter-cycle variability, the measurement SD and, when rescaled, the
        # random SD of the prior sample used
        rel_prior = float(prior.tia_sd_MBq_h) / float(prior.tia_MBq_h) if prior.tia_MBq_h else 0.0
        rel = math.sqrt(rel_prior**2 + inter_cycle_variability**2 + (sd_a / a if a > 0 else 0.0) ** 2
                        + rel_sample**2)
        t_eff = getattr(prior, "effective_half_life_h", None)
        rescaled = "" if t_k is None else (f", prior curve rescaled to its sample at {t_k:.1f} h (measured/fitted = "
                                           f"{factor:.3f})")
        notes.append(f"Prior-informed: earlier-cycle curve shape scaled to the measurement (TIA/A(t) = "
                     f"{ratio:.1f} h){rescaled}, inter-cycle variability {100 * inter_cycle_variability:.0f} %.")
        return StpEstimate(tia, abs(tia) * rel, "prior", t, a, t_eff, notes, rescale_factor=factor,
                           rescale_time_h=t_k)
    raise ConfigurationError(f"Unknown single-time-point method {method!r}; use 'hanscheid', 'madsen' or 'prior'.")


def _nearest_sample_factor(prior: Any, time_h: float) -> tuple[float, float, float | None]:
    """(measured / fitted, relative random SD of that sample, its time) at the prior's sample nearest ``time_h``;
    ``(1, 0, None)`` when the prior carries no samples or they cannot be used."""
    tp = getattr(prior, "time_h", None)
    ap = getattr(prior, "activity_MBq", None)
    if tp is None or ap is None:
        return 1.0, 0.0, None
    tp, ap = np.asarray(tp, float).ravel(), np.asarray(ap, float).ravel()
    if tp.size == 0 or tp.size != ap.size:
        return 1.0, 0.0, None
    k = int(np.argmin(np.abs(tp - time_h)))
    fitted = float(np.asarray(prior.predict(np.array([tp[k]])), float)[0])
    measured = float(ap[k])
    if not (fitted > 0 and measured > 0 and math.isfinite(fitted) and math.isfinite(measured)):
        return 1.0, 0.0, None
    sd = getattr(prior, "activity_sd_MBq", None)
    rel = float(np.asarray(sd, float).ravel()[k]) / measured if sd is not None and np.size(sd) == tp.size else 0.0
    return measured / fitted, rel, float(tp[k])


def single_time_point(
    time_h: float,
    activity_MBq: float,
    nuclide: str = "Lu-177",
    method: str = "hanscheid",
    effective_half_life_h: float | None = None,
    **kwargs: Any,
) -> float:
    """Single-time-point TIA in MBq·h (see :func:`single_time_point_estimate` for the SD and options).

    ``method`` is ``"hanscheid"`` (``TIA ~ A(t) 2t/ln2``, Hänscheid et al. 2018 JNM 59:75), ``"madsen"``
    (population effective half-life, Madsen et al. 2018 Med Phys 45:2318) or ``"prior"`` (``prior=`` an
    earlier-cycle fit of the same patient). Validity is documented in :mod:`theratwin.kinetics.stp`.
    """
    return single_time_point_estimate(time_h, activity_MBq, nuclide, method, effective_half_life_h,
                                      **kwargs).tia_MBq_h
