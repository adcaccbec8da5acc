"""Prior–data conflict: detecting a prior the patient's data contradict, and widening it.

Private helpers of :meth:`PatientTwin.posterior <theratwin.twin.twin.PatientTwin.posterior>`; the record
:class:`PriorConflict` is public (``PatientTwin.conflicts``, ``TwinResults.conflicts``).

Test (a prior-predictive check, Box GEP. J R Stat Soc A 1980;143:383, in the form used for empirical-Bayes
estimates in population pharmacokinetics, Savic RM, Karlsson MO. AAPS J 2009;11:558): after the MAP fit, the
patient's parameter estimate θ̂ deviates from the prior mean μ by ``d = θ̂ − μ``. If the prior were right,
``d`` would have variance ``Ω − V`` (Ω the prior variance, V the posterior variance: exactly so in the
linear-Gaussian case), so ``z = d / √(Ω − V)`` is standard normal. ``|z| > conflict_sd`` (default 3) flags the
parameter. Parameters the data barely inform (``Ω − V < 5 % Ω``: the posterior is still the prior) are not
tested — their estimate is the prior's by construction. The same check on a cycle's deviation κ̂ against
the IOV prior Γ flags a change between cycles larger than the twin assumes.

Handling (``conflict_handling="widen"``): the conflicting prior's SD is multiplied by |z| (rows and columns of
Ω or Γ scaled, so the covariance stays positive definite), which puts the data about one SD from the prior
mean: the patient's data decide and the prior still regularises what they leave open. The twin is then refitted.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .model import LaplacePosterior
from .priors import StructurePrior

__all__ = ["PriorConflict", "detect_conflicts", "widened_priors"]

_NAMES = ("uptake", "washout", "uptake_rate")


@dataclass(frozen=True)
class PriorConflict:
    """One parameter of one structure whose data contradict its prior (see the module docstring).

    Attributes
    ----------
    structure, parameter
        The structure and the parameter (``"uptake"``, ``"washout"``, ``"uptake_rate"``; ``"parameter j"``
        for plug-in models).
    level
        ``"population"`` (the IIV prior of the patient's parameters) or ``"cycle"`` (the IOV prior of
        one cycle's deviation, ``cycle`` says which).
    z_sd
        Standardised deviation of the patient's estimate from the prior (SD).
    prior_value, patient_value, unit
        The prior's and the patient's value in interpretable units: uptake in % of the administered activity,
        effective washout half-life and uptake half-time in h; for a cycle, the factor by which that cycle's
        parameter differs from the patient's own (prior 1).
    action
        What the twin did (``"prior SD widened x7.1"`` or ``"none"``).
    widen_factor
        Factor applied to the prior SD (1 when not widened).
    """

    structure: str
    parameter: str
    level: str
    cycle: int | None
    z_sd: float
    prior_value: float
    patient_value: float
    unit: str
    action: str
    widen_factor: float
    index: int

    @property
    def message(self) -> str:
        """One line for warnings, reports and the SR."""
        what = self.parameter.replace("_", " ")
        if self.level == "cycle":
            head = (f"{self.structure}: cycle {self.cycle} {what} differs from the patient's other cycles by a factor "
                    f"{self.patient_value:.3g} ({abs(self.z_sd):.1f} SD of the between-cycle prior)")
        else:
            head = (f"{self.structure}: prior-data conflict in the {what} (patient {self.patient_value:.3g} vs prior "
                    f"{self.prior_value:.3g} {self.unit}; {abs(self.z_sd):.1f} SD)")
        return f"{head}; {self.action}." if self.action != "none" else f"{head}; prior kept as it is."

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["message"] = self.message
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorConflict:
        """The conflict from its :meth:`to_dict` form (``message`` is derived again)."""
        def number(key: str) -> float:  # non-finite numbers are dropped from results.json
            return float(d.get(key, math.nan))

        return cls(structure=str(d["structure"]), parameter=str(d["parameter"]), level=str(d["level"]),
                   cycle=None if d.get("cycle") is None else int(d["cycle"]), z_sd=number("z_sd"),
                   prior_value=number("prior_value"), patient_value=number("patient_value"), unit=str(d["unit"]),
                   action=str(d["action"]), widen_factor=number("widen_factor"), index=int(d["index"]))


def _natural(index: int, value: float, lam_phys: float, builtin: bool) -> tuple[float, str]:
    """A log-parameter in interpretable units (built-in model family), else itself."""
    if not builtin:
        return value, "(log scale)"
    if index == 0:
        return 100.0 * math.exp(value), "% of administered"
    if index == 1:
        return math.log(2.0) / (lam_phys + math.exp(value)), "h (effective half-life)"
    return math.log(2.0) / math.exp(value), "h (uptake half-time)"


def detect_conflicts(model: Any, structures: list[str], cycles: list[int], priors: list[StructurePrior],
                     post: LaplacePosterior, *, observed: Container[tuple[int, str]], lambda_phys: float,
                     conflict_sd: float, conflict_handling: str, level: str = "both") -> list[PriorConflict]:
    """Conflicts of the fitted posterior ``post`` of ``model`` with ``priors`` (see the module docstring).

    ``observed``: the (cycle, structure) pairs with data (only those have a cycle deviation to test);
    ``lambda_phys`` the nuclide's decay constant (1/h); ``conflict_sd`` the threshold (SD) and
    ``conflict_handling`` ``"widen"`` or ``"none"``. ``level``: ``"population"`` (IIV priors), ``"cycle"`` (IOV
    priors) or ``"both"``.
    """
    builtin = bool(getattr(model, "uses_population_priors", False)) and post.n_params == 3
    action = "widen" if conflict_handling == "widen" else "none"
    p = post.n_params
    out: list[PriorConflict] = []

    def check(s: str, est: np.ndarray, v_post: np.ndarray, mean: np.ndarray, cov: np.ndarray, level: str,
              cycle: int | None) -> None:
        for j in range(p):
            var = cov[j, j] - v_post[j, j]
            if not var > 0.05 * cov[j, j]:
                continue  # the data barely inform this parameter: nothing to test
            z = float((est[j] - mean[j]) / math.sqrt(var))
            if abs(z) <= conflict_sd:
                continue
            name = _NAMES[j] if builtin else f"parameter {j}"
            if level == "cycle":
                # factor on U, on the biological washout rate or on the uptake-rate excess of that cycle
                prior_v, patient_v, unit = 1.0, math.exp(float(est[j])) if builtin else float(est[j]), "x"
            else:
                prior_v, unit = _natural(j, float(mean[j]), lambda_phys, builtin)
                patient_v, _ = _natural(j, float(est[j]), lambda_phys, builtin)
            factor = abs(z) if action == "widen" else 1.0
            out.append(PriorConflict(s, name, level, cycle, z, prior_v, patient_v, unit,
                                     f"prior SD widened x{factor:.1f} so that the patient's data decide"
                                     if action == "widen" else "none", factor, j))

    for i, s in enumerate(structures):
        pr, mode, cov = priors[i], post.mode[i], post.cov[i]
        if level in ("population", "both"):
            check(s, mode[:p], cov[:p, :p], pr.mean, pr.iiv_cov, "population", None)
        for k, c in enumerate(cycles):
            if level == "population" or (c, s) not in observed:
                continue
            sl = slice(p * (1 + k), p * (2 + k))
            check(s, mode[sl], cov[sl, sl], np.zeros(p), pr.iov_cov, "cycle", c)
    return out


def widened_priors(structures: list[str], priors: list[StructurePrior],
                   conflicts: list[PriorConflict]) -> list[StructurePrior]:
    """``priors`` with the SD of every conflicting parameter multiplied by its conflict's |z|."""
    out = []
    for s, pr in zip(structures, priors, strict=True):
        f_iiv = np.ones(pr.mean.size)
        f_iov = np.ones(pr.mean.size)
        for c in conflicts:
            if c.structure != s:
                continue
            target = f_iiv if c.level == "population" else f_iov
            target[c.index] = max(target[c.index], c.widen_factor)
        if np.all(f_iiv == 1.0) and np.all(f_iov == 1.0):
            out.append(pr)
            continue
        out.append(replace(pr, iiv_cov=pr.iiv_cov * np.outer(f_iiv, f_iiv), iov_cov=pr.iov_cov * np.outer(f_iov, f_iov)))
    return out
