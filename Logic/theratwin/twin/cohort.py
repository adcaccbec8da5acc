"""Virtual-patient cohorts for testing the twin, and the single-time-point comparators.

A virtual patient is drawn from the same model family as the twin (uptake–washout kinetics, log-normal
between-patient variability Ω and inter-occasion variability Γ of the population priors,
:mod:`theratwin.twin.population`), with structure masses drawn around the reference masses (the amplitude
prior is per gram, so uptake follows mass), sampled at chosen times per cycle and corrupted with

* one correlated factor per structure and cycle, ``c_k = exp(σ_c ξ_k)`` (calibration, segmentation,
  recovery: every scan of the cycle is scaled by it; σ_c = √ln(1 + CV²) for the relative SD given), and
* random proportional + additive Gaussian noise per scan **on the linear scale**
  (the twin assumes log-normal error — a deliberate, realistic mismatch).

The truth of every cycle (TIA of the patient's activity, without the measurement factor) is kept, so
estimation error and interval coverage can be measured.

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
from .population import PopulationPriors, builtin_priors
from .priors import KineticPriorSpec

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
    #: ``{cycle: {structure: c_k}}``: the correlated measurement factor of each imaged cycle.
    correlated_factor: dict[int, dict[str, float]] = field(default_factory=dict)


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
    correlated_sd: float = 0.0
    lesion_correlated_sd: float = 0.0
    mass_cv: float = 0.0
    lesion_mass_cv: float = 0.0


def make_cohort(n_patients: int, *, radiopharmaceutical: str = "PSMA-617", nuclide: str = "Lu-177",
                structures: Sequence[str] = ("kidneys", "lesion_1"),
                sampling_h: dict[int, Sequence[float]] | None = None, n_cycles: int = 3,
                administered_MBq: float = 7400.0, proportional_sd: float = 0.05,
                lesion_proportional_sd: float = 0.08, additive_sd_MBq: float = 0.05,
                prior_overrides: dict[str, KineticPriorSpec] | None = None, seed: int = 1,
                correlated_sd: float = 0.0, lesion_correlated_sd: float = 0.0, mass_cv: float = 0.0,
                lesion_mass_cv: float = 0.0, priors: PopulationPriors | None = None) -> VirtualCohort:
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
        Random noise per scan: ``y = A c_k (1 + σ_p ε₁) + σ_a ε₂``, ε ~ N(0, 1), clipped at 0.
    correlated_sd, lesion_correlated_sd
        Relative SD of the correlated factor ``c_k`` shared by a structure's scans in one cycle (0: none).
    mass_cv, lesion_mass_cv
        Between-patient CV of the structure masses (log-normal around the reference mass; 0: the reference
        mass itself). The uptake amplitude scales with the mass (per-gram prior).
    priors
        Population the patients are drawn from (default: the built-in priors of ``radiopharmaceutical``).
    """
    sampling = {int(k): tuple(float(t) for t in v) for k, v in (sampling_h or {1: (4, 24, 48, 96), 2: (96,)}).items()}
    rng = np.random.default_rng(seed)
    model = BiexponentialModel()
    lam_phys = float(get_nuclide(nuclide).decay_constant_per_h)
    pop = priors or builtin_priors(radiopharmaceutical, nuclide, prior_overrides)
    per_gram = [pop.lookup(s)[0] for s in structures]
    lesion = [structure_kind(s).role.value == "lesion" for s in structures]
    patients: list[VirtualPatient] = []
    cycles = sorted(set(range(1, n_cycles + 1)) | set(sampling))
    chol = [(np.linalg.cholesky(pr.iiv_cov), np.linalg.cholesky(pr.iov_cov)) for pr in per_gram]
    for n in range(n_patients):
        eta: dict[str, dict[int, np.ndarray]] = {}
        meas: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {c: {} for c in sampling}
        truth: dict[int, dict[str, float]] = {c: {} for c in cycles}
        factors: dict[int, dict[str, float]] = {c: {} for c in sampling}
        masses: dict[str, float] = {}
        thetas: dict[str, np.ndarray] = {}
        for s, pp, les, (l_iiv, l_iov) in zip(structures, per_gram, lesion, chol, strict=True):
            cv_m = lesion_mass_cv if les else mass_cv
            s_m = math.sqrt(math.log1p(cv_m * cv_m))
            # log-normal mass with the reference mass as its mean
            masses[s] = (float(pp.reference_mass_g * math.exp(s_m * rng.standard_normal() - 0.5 * s_m * s_m))
                         if cv_m > 0 else pp.reference_mass_g)
            pr = pp.structure_prior(masses[s])
            theta = pr.mean + l_iiv @ rng.standard_normal(3)
            thetas[s] = theta
            eta[s] = {}
            sp = lesion_proportional_sd if les else proportional_sd
            cv_c = lesion_correlated_sd if les else correlated_sd
            s_c = math.sqrt(math.log1p(cv_c * cv_c))
            for c in cycles:
                e = theta + l_iov @ rng.standard_normal(3)
                eta[s][c] = e
                coef, rate = model.exponentials(e[None, :], np.asarray(administered_MBq), np.asarray(100.0), [s], lam_phys)
                truth[c][s] = float(tia_from_exponentials(coef, rate)[0])
                if c in sampling:
                    t = np.asarray(sampling[c])
                    factor = float(math.exp(s_c * rng.standard_normal())) if cv_c > 0 else 1.0
                    factors[c][s] = factor
                    a = factor * activity_from_exponentials(coef[0], rate[0], t)
                    y = a * (1.0 + sp * rng.standard_normal(t.size)) + additive_sd_MBq * rng.standard_normal(t.size)
                    meas[c][s] = (t, np.maximum(y, 0.0))
        patients.append(VirtualPatient(f"VP{n + 1:04d}", {c: administered_MBq for c in cycles}, eta, meas, truth, masses,
                                       thetas, factors))
    return VirtualCohort(patients, radiopharmaceutical, nuclide, list(structures), sampling, proportional_sd,
                         lesion_proportional_sd, additive_sd_MBq, seed, correlated_sd, lesion_correlated_sd, mass_cv,
                         lesion_mass_cv)
