"""Population priors of the kinetic parameters sparse time-activity curves cannot pin down.

With the 3-5 scans clinics acquire (e.g. 4, 24, 48 and 168 h), the slow clearance and the amplitude of a
curve are well determined, but the rate of the uptake phase (usually over before or at the first scan) and the
rate and share of a fast early washout phase (seen at one or two early scans) are not. A least-squares fit of a
model with these parameters then either is not identifiable (as many parameters as points) or scatters wildly.
The prior-informed fit of :func:`theratwin.kinetics.fit_tac` (maximum a posteriori, MAP) adds weak population
priors on exactly these parameters, plus a very wide one on the slow clearance (it keeps the biological rate off
the physical-decay boundary, where the likelihood is flat and an improper prior would make the evidence
infinite); the amplitude keeps a flat prior on its logarithm. Where the data determine the curve, the MAP fit is
the least-squares fit. It is the per-patient
form of the population information that population-based model selection and non-linear mixed-effects fitting
bring to sparse data ("A population-based method to determine the time-integrated activity in molecular
radiotherapy", EJNMMI Phys 2021, doi:10.1186/s40658-021-00427-x; "Single-time-point dosimetry using model
selection and nonlinear mixed-effects modelling: a proof of concept", EJNMMI Phys, doi:10.1186/s40658-023-00530-1).

Every prior is a normal distribution of a linear function of the models' internal parameters ``theta``
(:mod:`theratwin.kinetics.models`): a log-normal prior on a half-time is a normal prior on the log-rate.

====================================  ==========  ===========  ====================================================
Parameter (model)                     Median      log SD       Source
====================================  ==========  ===========  ====================================================
biological half-time of the slow      200 h       3.0          not published as a population distribution
clearance ``ln2/(l_eff - l_phys)``                             (assumption): a deliberately vague prior, 95 % range
(every model)                                                  0.6 h - 70 000 h (i.e. up to no biological
                                                               clearance); 177Lu-PSMA-617 organ T_eff of 17-42 h
                                                               (twin priors, AAPM 2026 abstract) lie inside.
uptake half-time ``ln2/(lu - lc)``    1.0 h       1.0          not published as a population distribution
(biexp_uptake, triexp)                                         (assumption). Organ and lesion uptake half-times of
                                                               about 0.2-2.5 h are used by the demo patient
                                                               (:mod:`theratwin.demo.kinetics`) and by the twin's
                                                               priors (also "unpublished" there); the prior's
                                                               95 % range, 0.14-7 h, contains them.
fast-phase excess half-time           6.0 h       1.0          not published as a population distribution
``ln2/(l_fast - l_slow)`` (biexp,                              (assumption). 177Lu-PSMA-617 blood elimination
triexp)                                                        10.8 h (Kabasakal et al. 2017, Mol Imaging Radionucl
                                                               Ther 26:62); early renal and marrow phases of a few
                                                               hours; 95 % range 0.8-43 h.
fast fraction ``A_fast/(A_fast +      logit 0     1.5 (logit)  not published (assumption): fast fractions of 5-95 %
A_slow)`` (biexp, triexp)             (50 %)                   inside the 95 % range.
====================================  ==========  ===========  ====================================================

The priors are deliberately wide: with the schedules above they move a noiseless curve's TIA by well under
2 % (tested against closed-form TIAs in ``Testing/python/test_kinetics_schedules.py``). A site with its own
population fit (e.g. from a non-linear mixed-effects analysis of its patients) sets the fields of
:class:`KineticPriors` (``KineticsConfig.priors`` in the pipeline); the priors used are recorded with every fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigurationError

__all__ = ["LogNormalPrior", "NormalPrior", "KineticPriors", "PriorTerm", "rate_prior_term"]


@dataclass(frozen=True)
class LogNormalPrior:
    """Log-normal prior of a positive quantity: ``ln X ~ N(ln median, log_sd^2)``."""

    median: float
    log_sd: float
    source: str = ""

    def __post_init__(self) -> None:
        if not (self.median > 0 and math.isfinite(self.median) and self.log_sd > 0 and math.isfinite(self.log_sd)):
            raise ConfigurationError(
                f"A log-normal prior needs median > 0 and log_sd > 0; got median={self.median!r}, "
                f"log_sd={self.log_sd!r}.")


@dataclass(frozen=True)
class NormalPrior:
    """Normal prior ``X ~ N(mean, sd^2)``."""

    mean: float
    sd: float
    source: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and self.sd > 0 and math.isfinite(self.sd)):
            raise ConfigurationError(f"A normal prior needs a finite mean and sd > 0; got mean={self.mean!r}, "
                                     f"sd={self.sd!r}.")


_NOT_PUBLISHED = "not published as a population distribution (assumption); see theratwin.kinetics.priors"


@dataclass(frozen=True)
class KineticPriors:
    """Priors of the kinetic parameters the data of a sparse schedule cannot pin down (module table).

    Attributes
    ----------
    clearance_biological_half_time_h
        Biological half-time of the slow (terminal) clearance, ``ln 2 / (lambda_eff - lambda_phys)`` (h).
    uptake_half_time_h
        Half-time of the uptake phase, ``ln 2 / (lambda_uptake - lambda_clearance)`` (h).
    fast_excess_half_time_h
        ``ln 2 / (lambda_fast - lambda_slow)`` of a fast washout phase (h).
    fast_fraction_logit
        ``ln(A_fast / A_slow)``, the logit of the fast phase's share of the initial amplitude.
    """

    clearance_biological_half_time_h: LogNormalPrior = LogNormalPrior(200.0, 3.0, _NOT_PUBLISHED)
    uptake_half_time_h: LogNormalPrior = LogNormalPrior(1.0, 1.0, _NOT_PUBLISHED)
    fast_excess_half_time_h: LogNormalPrior = LogNormalPrior(6.0, 1.0, _NOT_PUBLISHED)
    fast_fraction_logit: NormalPrior = field(default_factory=lambda: NormalPrior(0.0, 1.5, _NOT_PUBLISHED))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded with every prior-informed fit)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> KineticPriors:
        """Priors from a (partial) dictionary of the fields above; missing fields keep their defaults.

        A field is a dictionary (``{"median": 0.5, "log_sd": 0.8}`` or ``{"mean": 0, "sd": 1}``) or the prior
        object itself.
        """
        if not d:
            return cls()
        known: dict[str, type[Any]] = {
            "clearance_biological_half_time_h": LogNormalPrior, "uptake_half_time_h": LogNormalPrior,
            "fast_excess_half_time_h": LogNormalPrior, "fast_fraction_logit": NormalPrior}
        unknown = set(d) - set(known)
        if unknown:
            raise ConfigurationError(f"Unknown kinetic priors {sorted(unknown)}; known: {sorted(known)}.")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, known[k]):
                kw[k] = v
            elif isinstance(v, dict):
                try:
                    kw[k] = known[k](**v)
                except TypeError as exc:
                    raise ConfigurationError(f"Kinetic prior {k}: {exc}.") from None
            else:
                raise ConfigurationError(f"Kinetic prior {k} must be a dictionary; got {v!r}.")
        return cls(**kw)


@dataclass(frozen=True)
class PriorTerm:
    """One normal prior on a linear function of a model's internal parameters: ``c . theta ~ N(mean, sd^2)``.

    Attributes
    ----------
    name
        What the term constrains (for notes and provenance).
    coefficients
        ``c``, one per internal parameter.
    mean, sd
        Mean and SD of ``c . theta``.
    """

    name: str
    coefficients: tuple[float, ...]
    mean: float
    sd: float

    def residual(self, theta: np.ndarray) -> float:
        """Standardised residual ``(c . theta - mean) / sd``."""
        return (float(np.dot(self.coefficients, theta)) - self.mean) / self.sd


def rate_prior_term(name: str, index: int, n_params: int, half_time: LogNormalPrior) -> PriorTerm:
    """Prior on ``theta[index] = ln(rate)`` (1/h) from a log-normal prior on the half-time ``ln2 / rate``."""
    c = [0.0] * n_params
    c[index] = 1.0
    return PriorTerm(name, tuple(c), math.log(math.log(2.0)) - math.log(half_time.median), half_time.log_sd)
