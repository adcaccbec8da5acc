"""Virtual-patient cohorts for testing the twin, and the single-time-point comparators.

A virtual patient is drawn from the same model family as the twin (uptake–washout kinetics, log-normal
between-patient variability Ω and inter-occasion variability Γ from :mod:`theratwin.twin.priors`), sampled
at chosen times per cycle and corrupted with proportional + additive Gaussian noise **on the linear scale**
(the twin assumes log-normal error — a deliberate, realistic mismatch). The truth of every cycle (TIA) is
kept, so estimation error and interval coverage can be measured.

Comparators for a single measurement A(t) (MBq) at time t (h):

* Hänscheid H et al. J Nucl Med 2018;59:75: ``TIA ≈ A(t) · 2t / ln 2``. For mono-exponential clearance
  (rate λ) the ratio to the true TIA is ``2λt e^{−λt} / ln 2``: exact at λt ≈ 0.63 and 1.5, at most +6 %
  in between (λt = 1), and falling off outside; proposed with t = 96 h.
* Madsen MT et al. Med Phys 2018;45:2318: ``TIA = A(t) · e^{λt} / λ`` with λ = ln 2 / T_eff from a
  population (or the patient's previous cycle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..nuclides import get as get_nuclide
from ..study.codes import structure_kind
from .model import BiexponentialModel, activity_from_exponentials, tia_from_exponentials
from .priors import KineticPriorSpec, prior_spec, structure_prior

__all__ = ["VirtualPatient", "VirtualCohort", "make_cohort", "hanscheid_tia", "madsen_tia"]


def hanscheid_tia(time_h: float | np.ndarray, activity_MBq: float | np.ndarray) -> np.ndarray:
    """Hänscheid et al. 2018 single-time-point TIA, ``A(t)·2t/ln 2`` (MBq·h)."""
    return np.asarray(activity_MBq, float) * 2.0 * np.asarray(time_h, float) / math.log(2.0)


def madsen_tia(time_h: float | np.ndarray, activity_MBq: float | np.ndarray,
               effective_half_life_h: float | np.ndarray) -> np.ndarray:
    """Madsen et al. 2018 single-time-point TIA, ``A(t)·e^{λt}/λ`` with λ = ln 2/T_eff (MBq·h)."""
    lam = math.log(2.0) / np.asarray(effective_half_life_h, float)
    return np.asarray(activity_MBq, float) * np.exp(lam * np.asarray(time_h, float)) / lam


@dataclass
class VirtualPatient:
    """One virtual patient: true per-cycle parameters, measurements and true TIAs.

    ``eta[structure][cycle]`` is the true η = (ln U, φ, ψ) of each cycle and ``theta[structure]`` the patient's
    own parameters θ (η = θ + κ with the cycle's inter-occasion deviation κ); ``measurements[cycle][structure]``
    is ``(time_h, activity_MBq)``; ``true_tia_MBq_h[cycle][structure]`` the exact TIA.
    """

    patient_id: str
    administered_MBq: dict[int, float]
    eta: dict[str, dict[int, np.ndarray]]
    measurements: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]
    true_tia_MBq_h: dict[int, dict[str, float]]
    mass_g: dict[str, float] = field(default_factory=dict)
    theta: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class VirtualCohort:
    """A list of virtual patients plus the settings that made them."""

    patients: list[VirtualPatient]
    radiopharmaceutical: str
    nuclide: str
    structures: list[str]
    sampling_h: dict[int, tuple[float, ...]]
    proportional_sd: float
    lesion_proportional_sd: float
    additive_sd_MBq: float
    seed: int


def make_cohort(n_patients: int, *, radiopharmaceutical: str = "PSMA-617", nuclide: str = "Lu-177",
                structures: Sequence[str] = ("kidneys", "lesion_1"),
                sampling_h: dict[int, Sequence[float]] | None = None, n_cycles: int = 3,
                administered_MBq: float = 7400.0, proportional_sd: float = 0.05,
                lesion_proportional_sd: float = 0.08, additive_sd_MBq: float = 0.05,
                prior_overrides: dict[str, KineticPriorSpec] | None = None, seed: int = 1) -> VirtualCohort:
    """Draw a virtual cohort (see the module docstring).

    Parameters
    ----------
    n_patients
        Number of patients.
    structures
        Structure names (their kind selects the prior, e.g. ``"kidneys"``, ``"lesion_1"``).
    sampling_h
        ``{cycle: sampling times (h)}``; default cycle 1 at 4, 24, 48, 96 h (common SPECT/CT schedule) and
        cycle 2 at 96 h (Hänscheid's single time point). Cycles without sampling have truth only.
    n_cycles
        Number of cycles with a true TIA.
    proportional_sd, lesion_proportional_sd, additive_sd_MBq
        Noise: ``y = A (1 + σ_p ε₁) + σ_a ε₂``, ε ~ N(0, 1), clipped at 0.
    """
    sampling = {int(k): tuple(float(t) for t in v) for k, v in (sampling_h or {1: (4, 24, 48, 96), 2: (96,)}).items()}
    rng = np.random.default_rng(seed)
    model = BiexponentialModel()
    lam_phys = float(get_nuclide(nuclide).decay_constant_per_h)
    priors = [structure_prior(prior_spec(radiopharmaceutical, s, prior_overrides), nuclide) for s in structures]
    patients: list[VirtualPatient] = []
    cycles = sorted(set(range(1, n_cycles + 1)) | set(sampling))
    chol = [(np.linalg.cholesky(pr.iiv_cov), np.linalg.cholesky(pr.iov_cov)) for pr in priors]
    for n in range(n_patients):
        eta: dict[str, dict[int, np.ndarray]] = {}
        meas: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {c: {} for c in sampling}
        truth: dict[int, dict[str, float]] = {c: {} for c in cycles}
        masses: dict[str, float] = {}
        thetas: dict[str, np.ndarray] = {}
        for s, pr, (l_iiv, l_iov) in zip(structures, priors, chol, strict=True):
            theta = pr.mean + l_iiv @ rng.standard_normal(3)
            thetas[s] = theta
            eta[s] = {}
            sp = lesion_proportional_sd if structure_kind(s).role.value == "lesion" else proportional_sd
            masses[s] = prior_spec(radiopharmaceutical, s, prior_overrides).reference_mass_g
            for c in cycles:
                e = theta + l_iov @ rng.standard_normal(3)
                eta[s][c] = e
                coef, rate = model.exponentials(e[None, :], np.asarray(administered_MBq), np.asarray(100.0), [s], lam_phys)
                truth[c][s] = float(tia_from_exponentials(coef, rate)[0])
                if c in sampling:
                    t = np.asarray(sampling[c])
                    a = activity_from_exponentials(coef[0], rate[0], t)
                    y = a * (1.0 + sp * rng.standard_normal(t.size)) + additive_sd_MBq * rng.standard_normal(t.size)
                    meas[c][s] = (t, np.maximum(y, 0.0))
        patients.append(VirtualPatient(f"VP{n + 1:04d}", {c: administered_MBq for c in cycles}, eta, meas, truth, masses,
                                       thetas))
    return VirtualCohort(patients, radiopharmaceutical, nuclide, list(structures), sampling, proportional_sd,
                         lesion_proportional_sd, additive_sd_MBq, seed)
