"""``theratwin fit-priors``: a site's own population priors, fitted to its cohort (research use).

Model (the twin's, :mod:`theratwin.twin.model` ``"biexp"``, in the parameters of the priors file
``theratwin-priors/1``): for individual ``i`` (a patient's organ, or one lesion) with mass ``m_i`` and cycle ``k``::

    θ_i = (ln U − β ln m_i, φ, ψ)_i ~ N(μ, Ω)           between patients (IIV), β = 1 (uptake per gram)
    η_ik = θ_i + (β ln m_i, 0, 0) + κ_ik,  κ_ik ~ N(0, Γ)   between cycles (IOV)
    ln y_j = ln A(t_j; η_ik) + ε_j,  ε_j ~ N(0, σ_r² + σ_a²/y_j²)

with Ω and Γ diagonal. It is fitted by maximum likelihood with the EM algorithm (Monte Carlo EM by importance
sampling, the method of NONMEM's IMP; Levine RA, Casella G. J Comput Graph Stat 2001;10:422): each E-step centres a
multivariate-t importance density on every individual's posterior mode and Laplace covariance of (θ_i, κ_i1..κ_iK)
(the twin's own batched MAP + Laplace fit, :func:`theratwin.twin.model.fit_map_laplace`), mixed with one twice as
wide, and weights 1000 samples by the exact posterior; the M-step sets μ, Ω, Γ and σ_r to the weighted moments.
The random numbers are drawn once (the fit is deterministic) and EM is accelerated by SQUAREM until the estimates
change by less than 1e-4 (on μ and the log-SDs).

Why not the Laplace moments themselves (the iterative two-stage / FOCE form, Steimer 1985; Lindstrom & Bates 1990,
used here first): the uptake rate ψ is bounded by the data from one side only — the first scan, hours after
injection, shows that uptake is over but not how fast it ended — so its posterior is skewed with a long tail towards
fast uptake; its mode lies below its mean and the Laplace moments biased μ_ψ low by 2.5 SE on average (20 cohorts
of 60 patients, see below). The sampled E-step uses the posterior's mean and spread, not its mode.

Standard errors: the observed information of (μ, ln ω, ln γ, ln σ_r) by Louis' formula (Louis TA. J R Stat Soc B
1982;44:226) from the same importance sample — per individual, the posterior mean of the complete-data information
less the posterior covariance of the complete-data score — inverted jointly, so each SE accounts for every
individual's estimation uncertainty and for the other parameters.

Identifiability of the between-cycle SDs: separating Γ_pp from Ω_pp needs individuals with two cycles whose own
scans measure component p more precisely than its between-cycle SD. With the usual schedule — 4, 24, 48, 168 h
after the first cycle and one or three late scans after later cycles — ψ is measured (coarsely, by the 4 h scan)
in the first cycle only, so its IOV is held at the built-in prior's value (the file says so) and ω_ψ is the
between-patient SD given that value. A component whose information comes out non-positive has no SE (null).

Checked against known populations (``Testing/benchmarks/test_bench_cohort.py``, 20 cohorts of 60 patients):
mean z of (ln U per g, φ, ψ) −0.04, −0.14, −0.09 (SD of z 1.00, 1.19, 0.78), within 1 SE 70, 70, 75 %, within
2 SE 95, 85, 100 % (68 and 95 % expected for calibrated SEs). With the Laplace moments instead: mean z 0.13, 0.06,
−2.48, ψ within 2 SE in 35 % only. The importance sample's own error, measured over three sample seeds on one
cohort, is about 0.2 SE on μ_ψ and under 0.05 SE on the others.

Between-cycle variability and correlated measurement error: a calibration or segmentation error shared by the
scans of one cycle moves ln y exactly as a change of ln U does, so TACs alone identify only their sum. The
fit estimates the sum and subtracts the site's stated correlated error (``correlated_sd``, default the twin's
5 % for organs, 10 % for lesions) from the ln U component of Γ; both are written to the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from .._version import __version__
from ..errors import FitError, InvalidInputError
from ..nuclides import get as get_nuclide

__all__ = ["Individual", "StructureFit", "PriorsFit", "collect_individuals", "fit_population", "fit_priors",
           "PRIORS_SCHEMA", "PARAMETERS", "priors_file_entry"]

#: The priors-file format and parameter order of the twin (``theratwin.twin.population``, issue 15).
PRIORS_SCHEMA = "theratwin-priors/1"
PARAMETERS = ("log_uptake_per_g", "log_washout_bio_per_h", "log_uptake_excess_per_h")
_ADDITIVE_SD_MBQ = 0.05
_ORGAN_CORRELATED_SD, _LESION_CORRELATED_SD = 0.05, 0.10  # the twin's MeasurementErrorModel defaults
_MIN_SD = 0.01  # floor of fitted SDs (keeps Ω, Γ positive definite)
_N_SAMPLES = 1000  # importance samples per individual
_CHUNK_VALUES = 2_000_000  # importance-sample values (individuals x samples x scans x 3) computed at once
_T_DOF = 4.0  # degrees of freedom of the multivariate-t importance density (heavier tails than the posterior)
_MIN_TWO_CYCLE = 10  # individuals with two informative cycles needed to separate a component's IOV from its IIV


@dataclass
class Individual:
    """One structure of one patient: mass and per cycle ``(time_h, activity_MBq, administered_MBq)``."""

    key: str
    patient: str
    mass_g: float
    cycles: list[tuple[np.ndarray, np.ndarray, float]]


class _Prior(NamedTuple):
    mean: np.ndarray
    iiv_cov: np.ndarray
    iov_cov: np.ndarray


@dataclass
class StructureFit:
    """Population estimates of one structure kind with standard errors (see the module docstring)."""

    kind: str
    mean: np.ndarray
    mean_se: np.ndarray
    iiv_sd: np.ndarray
    iiv_sd_se: np.ndarray
    iov_sd: np.ndarray  # between-cycle SD including the correlated measurement error in component 0
    iov_sd_se: np.ndarray  # NaN where the component is held (``iov_held``)
    random_sd: float
    correlated_sd: float
    reference_mass_g: float
    n_individuals: int
    n_patients: int
    n_cycles: int
    n_observations: int
    iterations: int
    converged: bool
    iov_held: tuple[bool, bool, bool] = (False, False, False)  # IOV held at its start value (not identifiable)
    min_effective_samples: float = float("nan")  # smallest importance-sampling ESS over the individuals

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of one structure kind's fit: means, IIV and IOV SDs with their standard errors,
        measurement SDs and the fit's diagnostics."""
        return {
            "kind": self.kind, "parameters": list(PARAMETERS),
            "mean": self.mean.tolist(), "mean_se": _se_list(self.mean_se),
            "iiv_sd": self.iiv_sd.tolist(), "iiv_sd_se": _se_list(self.iiv_sd_se),
            "iov_sd_total": self.iov_sd.tolist(), "iov_sd_total_se": _se_list(self.iov_sd_se),
            "iov_held_at_start": list(self.iov_held),
            "random_rel_sd": self.random_sd, "correlated_rel_sd": self.correlated_sd,
            "reference_mass_g": self.reference_mass_g, "n_individuals": self.n_individuals,
            "n_patients": self.n_patients, "n_cycles": self.n_cycles, "n_observations": self.n_observations,
            "iterations": self.iterations, "converged": self.converged,
            "n_importance_samples": _N_SAMPLES, "min_effective_samples": self.min_effective_samples,
        }


def _se_list(se: np.ndarray) -> list[float | None]:
    """SEs for JSON: null where there is none (a held or uninformed component)."""
    return [float(v) if np.isfinite(v) else None for v in se]


def _se_text(se: np.ndarray, held: tuple[bool, ...] | None = None) -> str:
    return ", ".join("held" if held and held[i] else f"{v:.3g}" if np.isfinite(v) else "n/a" for i, v in enumerate(se))


def priors_file_entry(fit: StructureFit) -> dict[str, Any]:
    """One structure of the priors file (``theratwin-priors/1``) from a fit.

    The single place where this module meets the twin's file format: Ω and Γ as diagonal covariances, the
    correlated error taken out of Γ's ln U component, the measurement model, and the SEs in ``sources``.
    """
    iov = np.square(fit.iov_sd)
    iov[0] = max(iov[0] - fit.correlated_sd**2, _MIN_SD**2)
    se = _se_text(fit.mean_se)
    iov_se = _se_text(fit.iov_sd_se, fit.iov_held)
    held = [p for p, h in zip(PARAMETERS, fit.iov_held, strict=True) if h]
    return {
        "mean": [float(v) for v in fit.mean],
        "iiv_cov": np.diag(np.square(fit.iiv_sd)).tolist(),
        "iov_cov": np.diag(iov).tolist(),
        "mass_exponent": 1.0,
        "reference_mass_g": fit.reference_mass_g,
        "measurement": {"random_rel_sd": min(fit.random_sd, 0.99), "correlated_rel_sd": fit.correlated_sd,
                        "additive_sd_MBq": _ADDITIVE_SD_MBQ},
        "n_patients": fit.n_patients,
        "sources": {
            "mean": f"theratwin fit-priors {__version__} (NLME, importance-sampling EM) on {fit.n_individuals} "
                    f"individuals of {fit.n_patients} patients, {fit.n_cycles} cycles, {fit.n_observations} "
                    f"activities; SE [{se}]",
            "iiv_cov": f"same fit, diagonal; SD SE [{_se_text(fit.iiv_sd_se)}]",
            "iov_cov": "same fit, diagonal; ln U component minus the stated correlated error "
                       f"({fit.correlated_sd:.3g}); SD SE [{iov_se}]"
                       + (f"; {', '.join(held)} held at the built-in prior: fewer than {_MIN_TWO_CYCLE} patients "
                          "with two cycles whose scans inform it, so the cohort cannot separate its between-cycle "
                          "from its between-patient variability" if held else ""),
            "measurement": "random part fitted; correlated part stated by the site (not identifiable from TACs)",
        },
    }


def collect_individuals(cohort_dir: str | os.PathLike[str], radiopharmaceutical: str | None = None
                        ) -> tuple[str, str, dict[str, list[Individual]]]:
    """Read the completed patients of a ``theratwin cohort`` folder; group structures by twin prior key.

    Returns (radiopharmaceutical, nuclide, ``{kind: individuals}``). The body (kind ``other``) is left out: it
    mixes every tissue.
    """
    from ..twin.priors import prior_key, radiopharmaceutical_key
    from .records import PATIENTS_DIR, TASK_FILE

    root = Path(cohort_dir) / PATIENTS_DIR
    if not root.is_dir():
        raise InvalidInputError(f"{cohort_dir}: not a 'theratwin cohort' output folder (no {PATIENTS_DIR}/).")
    found_rph: set[str] = set()
    nuclides: set[str] = set()
    by_kind: dict[str, list[Individual]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            task = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
            if task.get("status") != "done":
                continue
            results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        series: dict[str, Individual] = {}
        for _, cyc in sorted((results.get("cycles") or {}).items(), key=lambda kv: int(kv[0])):
            rph = str(cyc.get("radiopharmaceutical") or "")
            if radiopharmaceutical and radiopharmaceutical_key(rph) != radiopharmaceutical_key(radiopharmaceutical):
                continue
            found_rph.add(rph)
            nuclides.add(str(cyc.get("nuclide") or "Lu-177"))
            for name, sr in (cyc.get("structures") or {}).items():
                t = np.asarray(sr.get("time_h") or [], float)
                y = np.asarray(sr.get("activity_MBq") or [], float)
                mass = sr.get("mass_g")
                ok = (t.size > 0 and t.size == y.size and np.all(np.isfinite(t)) and np.all(t > 0)
                      and np.all(np.isfinite(y)) and np.all(y > 0) and mass)
                if not ok or prior_key(name) == "other":
                    continue
                ind = series.setdefault(name, Individual(f"{folder.name}/{name}", folder.name, float(mass), []))
                ind.cycles.append((t, y, float(cyc["administered_MBq"])))
        for name, ind in series.items():
            by_kind.setdefault(prior_key(name), []).append(ind)
    if not by_kind:
        raise InvalidInputError(f"{cohort_dir}: no completed patient with time-activity curves.")
    if len(found_rph) > 1 and not radiopharmaceutical:
        raise InvalidInputError(f"{cohort_dir}: cycles of several radiopharmaceuticals {sorted(found_rph)}; "
                                "choose one with --radiopharmaceutical.")
    if len(nuclides) > 1:
        raise InvalidInputError(f"{cohort_dir}: cycles with several nuclides {sorted(nuclides)}; fit one at a time.")
    return (radiopharmaceutical or found_rph.pop()), nuclides.pop(), by_kind


class _Posterior(NamedTuple):
    """Importance sample of some individuals' x = (θ, κ_1..κ_K): samples (S, M, P), normalised weights (S, M),
    squared standardised residuals of the data at each sample (S, M, R) and the effective sample sizes (S,)."""

    x: np.ndarray
    weight: np.ndarray
    res2: np.ndarray
    ess: np.ndarray


def fit_population(kind: str, individuals: list[Individual], nuclide: str, *, start_mean: np.ndarray,
                   start_iiv_sd: np.ndarray, start_iov_sd: np.ndarray, correlated_sd: float,
                   start_random_sd: float = 0.05, max_iter: int = 600, tol: float = 1e-4,
                   n_samples: int = _N_SAMPLES, seed: int = 0) -> StructureFit:
    """Fit μ, Ω, Γ and σ_r of one structure kind (see the module docstring).

    ``n_samples`` importance samples per individual (drawn once, from ``seed``: the fit is deterministic).
    """
    from ..twin.model import BiexponentialModel, FitData, fit_map_laplace

    model = BiexponentialModel()
    lam = float(get_nuclide(nuclide).decay_constant_per_h)
    s_n = len(individuals)
    k_n = max(len(ind.cycles) for ind in individuals)
    r_n = max(sum(len(c[0]) for c in ind.cycles) for ind in individuals)
    p_n = 3 * (1 + k_n)
    t = np.ones((s_n, r_n))
    logy = np.zeros((s_n, r_n))
    adm = np.ones((s_n, r_n))
    cyc = np.zeros((s_n, r_n), int)
    mask = np.zeros((s_n, r_n), bool)
    has_cycle = np.zeros((s_n, k_n), bool)
    for i, ind in enumerate(individuals):
        j = 0
        for k, (ti, yi, ai) in enumerate(ind.cycles):
            n = len(ti)
            t[i, j:j + n], logy[i, j:j + n], adm[i, j:j + n], cyc[i, j:j + n] = ti, np.log(yi), ai, k
            mask[i, j:j + n] = True
            has_cycle[i, k] = True
            j += n
    shift = np.zeros((s_n, 3))
    shift[:, 0] = np.log([ind.mass_g for ind in individuals])  # β = 1
    inv_y2 = np.where(mask, np.exp(-2.0 * logy), 0.0)
    structures = [kind] * s_n
    ligand = np.full((s_n, r_n), 100.0)
    onehot = (cyc[..., None] == np.arange(k_n)).astype(float)
    # components of x with a posterior to sample: θ and the κ of cycles with data (the others stay at 0, their prior
    # mean; they carry no information about the population)
    active = np.concatenate([np.ones((s_n, 3), bool), np.repeat(has_cycle, 3, axis=1)], axis=1)
    n_active = active.sum(axis=1)
    # defensive mixture (Hesterberg T. Technometrics 1995;37:185): half the samples from the Laplace posterior's
    # multivariate t, half from the same t twice as wide — the uptake rate's posterior has a long tail towards fast
    # uptake (the data bound it from one side only) that the Laplace scale misses
    width = np.where(np.arange(n_samples) % 2 == 1, 2.0, 1.0)
    chunk = max(1, _CHUNK_VALUES // (n_samples * r_n * 3))  # individuals sampled at once (bounded memory)

    def draws(sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fixed random numbers of individuals ``sl``: standard normals, t scale factors, log proposal density."""
        rng = np.random.default_rng([seed, sl.start])
        z = rng.standard_normal((sl.stop - sl.start, n_samples, p_n)) * active[sl, None, :]
        z_scale = width * np.sqrt(_T_DOF / rng.chisquare(_T_DOF, (sl.stop - sl.start, n_samples)))
        maha = np.sum(z * z, axis=2) * z_scale**2  # (x − mode)ᵀ C⁻¹ (x − mode)
        dof = _T_DOF + n_active[sl, None]
        log_q = np.logaddexp(-0.5 * dof * np.log1p(maha / _T_DOF),
                             -0.5 * dof * np.log1p(maha / (4.0 * _T_DOF)) - n_active[sl, None] * math.log(2.0))
        return z, z_scale, log_q

    def unpack(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        return v[:3], np.exp(v[3:6]), np.exp(v[6:9]), float(np.exp(v[9]))

    def data_sd(s_r: float) -> np.ndarray:
        return np.sqrt(s_r**2 + _ADDITIVE_SD_MBQ**2 * inv_y2)

    def posterior(v: np.ndarray) -> Iterator[tuple[slice, _Posterior]]:
        """E-step: the Laplace approximation of each individual's posterior (the twin's MAP fit) as the centre and
        scale of a multivariate-t importance sample of the exact posterior, chunk by chunk of individuals."""
        mu, w_sd, g_sd, s_r = unpack(v)
        sd_log = np.where(mask, data_sd(s_r), 1.0)
        data = FitData(t, logy, sd_log, cyc, adm, ligand, mask, k_n)
        priors = [_Prior(mu + shift[i], np.diag(w_sd**2), np.diag(g_sd**2)) for i in range(s_n)]
        lap = fit_map_laplace(model, structures, cast(Any, priors), data, lam)
        cov = np.where(active[:, :, None] & active[:, None, :], lap.cov, 0.0) + np.eye(p_n) * ~active[:, :, None]
        chol = np.linalg.cholesky(cov)
        mode = np.where(active, lap.mode, 0.0)
        for lo in range(0, s_n, chunk):
            sl = slice(lo, min(lo + chunk, s_n))
            z, z_scale, log_q = draws(sl)
            x = mode[sl, None, :] + z_scale[..., None] * np.einsum("spq,smq->smp", chol[sl], z)
            theta, kappa = x[..., :3], x[..., 3:].reshape(*x.shape[:2], k_n, 3)
            eta = theta[:, :, None, :] + np.einsum("srk,smkp->smrp", onehot[sl], kappa)
            with np.errstate(over="ignore"):  # the unused Jacobian of very fast uptakes
                loga, _ = model.log_activity_jacobian(eta, t[sl, None], adm[sl, None], ligand[sl, None],
                                                      structures[sl], lam)
            res2 = np.where(mask[sl, None], (logy[sl, None] - loga) / sd_log[sl, None], 0.0) ** 2
            log_target = (-0.5 * res2.sum(axis=2)
                          - 0.5 * np.sum(((theta - (mu + shift[sl])[:, None]) / w_sd) ** 2, axis=2)
                          - 0.5 * np.sum(has_cycle[sl, None, :, None] * (kappa / g_sd) ** 2, axis=(2, 3)))
            log_w = log_target - log_q
            log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
            weight = np.exp(log_w - log_w.max(axis=1, keepdims=True))
            weight /= weight.sum(axis=1, keepdims=True)
            yield sl, _Posterior(x, weight, res2, 1.0 / np.sum(weight**2, axis=1))

    def em_step(v: np.ndarray) -> np.ndarray:
        """One EM iteration on v = (μ, ln ω, ln γ, ln σ_r): importance-sampled E-step, moment M-step."""
        e_theta, e_theta2 = np.zeros((s_n, 3)), np.zeros((s_n, 3))
        e_kap2 = np.zeros((s_n, k_n, 3))
        e_res2 = np.zeros((s_n, r_n))
        for sl, post in posterior(v):
            w = post.weight[..., None]
            theta = post.x[..., :3] - shift[sl, None]
            e_theta[sl], e_theta2[sl] = np.sum(w * theta, axis=1), np.sum(w * theta**2, axis=1)
            e_kap2[sl] = np.sum(w[..., None] * post.x[..., 3:].reshape(*w.shape[:2], k_n, 3) ** 2, axis=1)
            e_res2[sl] = np.sum(w * post.res2, axis=1)
        s_r = unpack(v)[3]
        new_mu = e_theta.mean(axis=0)
        new_w = np.sqrt(np.maximum((e_theta2 - 2.0 * new_mu * e_theta).mean(axis=0) + new_mu**2, _MIN_SD**2))
        new_g = np.where(held, unpack(v)[2], np.sqrt(np.maximum(e_kap2[has_cycle].mean(axis=0), _MIN_SD**2)))
        # residual variance: the expected squared residual (ln scale) less the additive error's part
        e_res2 *= data_sd(s_r) ** 2
        new_s = math.sqrt(max(float((e_res2 - _ADDITIVE_SD_MBQ**2 * inv_y2)[mask].mean()), 1e-6))
        return np.concatenate([new_mu, np.log(new_w), np.log(new_g), [math.log(new_s)]])

    # EM accelerated by SQUAREM (Varadhan R, Roland C. Scand J Stat 2008;35:335, scheme S3): two EM steps, an
    # extrapolation along them, and one EM step from there; plain EM needs hundreds of iterations here because
    # weakly informed components (the uptake rate) move slowly. The importance sample's random numbers are fixed,
    # so the EM map is deterministic and the iteration converges to the maximum of the sampled likelihood.
    v = np.concatenate([np.asarray(start_mean, float), np.log(np.asarray(start_iiv_sd, float)),
                        np.log(np.asarray(start_iov_sd, float)), [math.log(start_random_sd)]])
    # which between-cycle SDs the schedule identifies: the scans' sensitivities at the start values' individual fits
    _, w0, g0, s0 = unpack(v)
    lap0 = fit_map_laplace(model, structures, cast(Any, [_Prior(v[:3] + shift[i], np.diag(w0**2), np.diag(g0**2))
                                                         for i in range(s_n)]),
                           FitData(t, logy, np.where(mask, data_sd(s0), 1.0), cyc, adm, ligand, mask, k_n), lam)
    eta0 = lap0.mode[:, None, :3] + np.einsum("srk,skp->srp", onehot, lap0.mode[:, 3:].reshape(s_n, k_n, 3))
    with np.errstate(over="ignore"):
        _, jac0 = model.log_activity_jacobian(eta0, t, adm, ligand, structures, lam)
    held = _iov_not_identifiable(jac0, data_sd(s0), onehot * mask[..., None], w0, g0)
    converged = False
    iterations = 0
    while iterations < max_iter:
        v1 = em_step(v)
        v2 = em_step(v1)
        iterations += 2
        r, d = v1 - v, v2 - 2.0 * v1 + v
        alpha = -float(np.linalg.norm(r)) / max(float(np.linalg.norm(d)), 1e-12)
        alpha = min(alpha, -1.0)  # -1 is the plain EM step v2
        try:
            v_new = em_step(v - 2.0 * alpha * r + alpha**2 * d)
        except FitError:  # the extrapolation went too far for the individual fits: keep the plain EM steps
            v_new = np.full_like(v, np.nan)
        iterations += 1
        if not np.all(np.isfinite(v_new)):
            v_new = em_step(v2)
        change = float(np.max(np.abs(v_new - v)))
        v = v_new
        if change < tol:
            converged = True
            break
    mu, w_sd, g_sd, s_r = unpack(v)
    info = np.zeros((10, 10))  # at the final estimates, for the standard errors
    min_ess = math.inf
    for sl, post in posterior(v):
        info += _louis_information(post, shift[sl], has_cycle[sl], mu, w_sd, g_sd, s_r, data_sd(s_r)[sl], mask[sl])
        min_ess = min(min_ess, float(post.ess.min()))
    free = np.concatenate([np.ones(6, bool), ~held, [True]])  # held components are not estimated
    se = np.full(10, np.nan)
    var = np.diag(np.linalg.pinv(info[np.ix_(free, free)]))  # pinv: a flat direction gives no SE, not an error
    se[free] = np.sqrt(np.where(var > 0, var, np.nan))  # NaN: no information (reported as null)
    return StructureFit(kind, mu, se[:3], w_sd, se[3:6] * w_sd, g_sd, se[6:9] * g_sd, s_r, correlated_sd,
                        float(np.median([ind.mass_g for ind in individuals])), s_n,
                        len({ind.patient for ind in individuals}), int(has_cycle.sum()), int(mask.sum()), iterations,
                        converged, (bool(held[0]), bool(held[1]), bool(held[2])), min_ess)


def _iov_not_identifiable(jac: np.ndarray, sd_log: np.ndarray, cycle_mask: np.ndarray, iiv_sd: np.ndarray,
                          iov_sd: np.ndarray) -> np.ndarray:
    """Components whose between-cycle SD the cohort cannot estimate (3,) bool.

    ``jac`` (S, R, 3) is ∂ ln A/∂η at each individual's fit, ``cycle_mask`` (S, R, K) marks each cycle's scans. A
    cycle measures component p when its own scans (with the population prior N(0, Ω + Γ) on η) pin η_p down more
    closely than the between-cycle SD γ_p it is to reveal; estimating γ_p needs individuals with two such cycles.
    The uptake rate ψ, for one, is seen only in scans of the first hours: with one such scan per cycle, or only in
    the first cycle, its between-cycle SD is not identifiable.
    """
    prior_var = iiv_sd**2 + iov_sd**2
    jw = jac / sd_log[..., None]
    info = np.einsum("srk,srp,srq->skpq", cycle_mask.astype(float), jw, jw) + np.diag(1.0 / prior_var)
    post_var = np.diagonal(np.linalg.inv(info), axis1=2, axis2=3)  # (S, K, 3)
    informative = np.asarray(np.any(cycle_mask, axis=1))[..., None] & (post_var < iov_sd**2)
    return np.asarray(np.sum(informative.sum(axis=1) >= 2, axis=0) < _MIN_TWO_CYCLE)


def _louis_information(post: _Posterior, shift: np.ndarray, has_cycle: np.ndarray, mu: np.ndarray, w_sd: np.ndarray,
                       g_sd: np.ndarray, s_r: float, sd_log: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Observed information of v = (μ, ln ω, ln γ, ln σ_r) by Louis' formula (Louis TA. J R Stat Soc B 1982;44:226):
    per individual, the posterior mean of the complete-data information less the posterior covariance of the
    complete-data score, both from the importance sample."""
    s_n, m_n = post.weight.shape
    k_n = has_cycle.shape[1]
    d_t = post.x[..., :3] - shift[:, None] - mu  # θ − μ (S, M, 3)
    kap2 = (post.x[..., 3:].reshape(s_n, m_n, k_n, 3) ** 2 * has_cycle[:, None, :, None]).sum(axis=2)
    n_cyc = has_cycle.sum(axis=1)[:, None, None]
    g = np.where(mask, (s_r / sd_log) ** 2, 0.0)[:, None]  # σ_r²/s_j², the random error's share of each variance
    score = np.concatenate([d_t / w_sd**2, (d_t / w_sd) ** 2 - 1.0, kap2 / g_sd**2 - n_cyc,
                            np.sum(g * (post.res2 - 1.0), axis=2)[..., None]], axis=2)  # (S, M, 10)
    wt = post.weight[..., None]
    hess = np.zeros((10, 10))  # posterior mean of −∂² of the complete-data log-likelihood, summed over individuals
    idx = np.arange(3)
    hess[idx, idx] = s_n / w_sd**2
    hess[idx, idx + 3] = hess[idx + 3, idx] = np.sum(wt * 2.0 * d_t, axis=(0, 1)) / w_sd**2
    hess[idx + 3, idx + 3] = np.sum(wt * 2.0 * (d_t / w_sd) ** 2, axis=(0, 1))
    hess[idx + 6, idx + 6] = np.sum(wt * 2.0 * kap2, axis=(0, 1)) / g_sd**2
    hess[9, 9] = np.sum(post.weight * np.sum(2.0 * g**2 * post.res2 - 2.0 * g * (1.0 - g) * (post.res2 - 1.0), axis=2))
    e_score = np.sum(wt * score, axis=1)
    cov_score = np.einsum("sm,smp,smq->pq", post.weight, score, score) - np.einsum("sp,sq->pq", e_score, e_score)
    return hess - cov_score


@dataclass
class PriorsFit:
    """The fitted priors of a cohort: one :class:`StructureFit` per structure kind, and what was left out."""

    radiopharmaceutical: str
    nuclide: str
    cohort: str
    fits: dict[str, StructureFit]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_priors_dict(self) -> dict[str, Any]:
        """The priors file (``theratwin-priors/1``), read by ``PatientTwin(priors=...)`` and ``--priors``."""
        return {
            "schema": PRIORS_SCHEMA,
            "radiopharmaceutical": self.radiopharmaceutical,
            "nuclide": self.nuclide,
            "model": "biexp",
            "parameters": list(PARAMETERS),
            "description": f"Population priors fitted to the cohort {self.cohort} by theratwin fit-priors "
                           f"{__version__} (research use).",
            "method": "Nonlinear mixed effects (IIV and IOV, diagonal), maximum likelihood by Monte Carlo EM with "
                      "importance sampling around the twin's MAP + Laplace fit of each individual; SEs by Louis' "
                      "observed information. "
                      "Structure kinds not listed fall back to the built-in priors.",
            "structures": {k: priors_file_entry(f) for k, f in sorted(self.fits.items())},
            "references": {
                "STEI85": "Steimer JL, Mallet A, Mentre F. Estimating interindividual pharmacokinetic variability. "
                          "In: Rowland M et al. (eds) Variability in Drug Therapy. Raven Press 1985:65-111",
                "LIND90": "Lindstrom MJ, Bates DM. Nonlinear mixed effects models for repeated measures data. "
                          "Biometrics 1990;46:673-687",
                "LOUI82": "Louis TA. Finding the observed information matrix when using the EM algorithm. "
                          "J R Stat Soc B 1982;44:226-233",
                "LEVI01": "Levine RA, Casella G. Implementations of the Monte Carlo EM algorithm. "
                          "J Comput Graph Stat 2001;10:422-439",
                "KARL93": "Karlsson MO, Sheiner LB. The importance of modeling interoccasion variability in "
                          "population pharmacokinetic analyses. J Pharmacokinet Biopharm 1993;21:735-750",
            },
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the priors file and, next to it, ``<name>.fit.json`` (estimates with SEs, convergence)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_priors_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        detail = {"software": {"name": "TheraTwin", "version": __version__},
                  "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                  "cohort": self.cohort, "radiopharmaceutical": self.radiopharmaceutical, "nuclide": self.nuclide,
                  "fits": {k: f.to_dict() for k, f in sorted(self.fits.items())}, "skipped": self.skipped}
        p.with_suffix(".fit.json").write_text(json.dumps(detail, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return p

    def describe(self) -> str:
        """A few lines for the CLI: per structure kind the number of patients, the mean ± SE of (ln U per
        g, φ, ψ), IIV and IOV SDs."""
        lines = [f"population priors for {self.radiopharmaceutical} ({self.nuclide}) from {self.cohort} "
                 "(research use); mean ± SE of (ln U per g, phi, psi), IIV SD, IOV SD:"]
        for k, f in sorted(self.fits.items()):
            m = ", ".join(f"{a:.3f}±{b:.3f}" for a, b in zip(f.mean, f.mean_se, strict=True))
            lines.append(f"  {k:<22} n={f.n_individuals:<4} mean ({m}); IIV {np.round(f.iiv_sd, 3).tolist()}; "
                         f"IOV {np.round(f.iov_sd, 3).tolist()}"
                         + "".join(f" ({p} held)" for p, h in zip(("ln U", "phi", "psi"), f.iov_held, strict=True) if h)
                         + f"; random {f.random_sd:.3f}"
                         + ("" if f.converged else "  [not converged]"))
        for k, why in sorted(self.skipped.items()):
            lines.append(f"  {k:<22} not fitted: {why}")
        return "\n".join(lines)


def fit_priors(cohort_dir: str | os.PathLike[str], *, radiopharmaceutical: str | None = None,
               min_individuals: int = 5, correlated_sd: dict[str, float] | None = None) -> PriorsFit:
    """Fit the twin's population model to every structure kind of a cohort folder (see the module docstring).

    Start values are the built-in priors; kinds seen in fewer than ``min_individuals`` patients are skipped.
    ``correlated_sd`` maps kinds to the site's correlated (per-cycle) measurement error; default 5 % for organs,
    10 % for lesions.
    """
    from ..twin.priors import prior_spec, structure_prior

    rph, nuclide, by_kind = collect_individuals(cohort_dir, radiopharmaceutical)
    fits: dict[str, StructureFit] = {}
    skipped: dict[str, str] = {}
    for kind, inds in sorted(by_kind.items()):
        n_patients = len({i.patient for i in inds})
        if n_patients < min_individuals:
            skipped[kind] = f"{n_patients} patient(s) < {min_individuals}"
            continue
        spec = prior_spec(rph, kind)
        sp = structure_prior(spec, nuclide)
        start = np.array(sp.mean, float)
        start[0] -= math.log(spec.reference_mass_g)  # the built-in prior per gram (β = 1)
        c_sd = (correlated_sd or {}).get(kind, _LESION_CORRELATED_SD if kind == "lesion" else _ORGAN_CORRELATED_SD)
        start_iov = np.sqrt(np.diag(sp.iov_cov))
        start_iov[0] = math.hypot(start_iov[0], c_sd)  # the fit's ln U component includes the correlated error
        fits[kind] = fit_population(kind, inds, nuclide, start_mean=start, start_iiv_sd=np.sqrt(np.diag(sp.iiv_cov)),
                                    start_iov_sd=start_iov, correlated_sd=c_sd)
    if not fits:
        raise InvalidInputError(f"{cohort_dir}: no structure kind with at least {min_individuals} patients to fit.")
    return PriorsFit(rph, nuclide, str(cohort_dir), fits, skipped)
