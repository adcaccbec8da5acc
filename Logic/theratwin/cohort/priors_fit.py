"""``theratwin fit-priors``: a site's own population priors, fitted to its cohort (research use).

Model (the twin's, :mod:`theratwin.twin.model` ``"biexp"``, in the parameters of the priors file
``theratwin-priors/1``): for individual ``i`` (a patient's organ, or one lesion) with mass ``m_i`` and cycle ``k``::

    θ_i = (ln U − β ln m_i, φ, ψ)_i ~ N(μ, Ω)           between patients (IIV), β = 1 (uptake per gram)
    η_ik = θ_i + (β ln m_i, 0, 0) + κ_ik,  κ_ik ~ N(0, Γ)   between cycles (IOV)
    ln y_j = ln A(t_j; η_ik) + ε_j,  ε_j ~ N(0, σ_r² + σ_a²/y_j²)

with Ω and Γ diagonal. It is fitted by maximum likelihood with the Laplace approximation of each individual's
random effects — the iterative two-stage / EM form of first-order conditional estimation (Steimer JL et al. in
*Variability in Drug Therapy*, 1985; Lindstrom MJ, Bates DM. Biometrics 1990;46:673): each iteration finds every
individual's posterior mode and covariance of (θ_i, κ_i1..κ_iK) with the twin's own batched MAP + Laplace fit
(:func:`theratwin.twin.model.fit_map_laplace`), then updates μ, Ω, Γ and σ_r from their moments, until the
estimates change by less than 1e-4 (on μ and the log-SDs), accelerated by SQUAREM.

Standard errors are the large-sample (Gaussian) ones of a hierarchical model with individual estimates of known
precision: ``SE(μ_p) = (Σ_i a_ip)^{-1/2}`` with ``a_ip = (1 − C_i,pp/ω_p²)/ω_p²`` (C_i the posterior covariance:
``a`` is the precision of ``θ_i`` about μ, ``1/(ω² + v_i)``), ``SE(ω_p²) = (2/Σ_i a_ip²)^{1/2}`` and the same
for Γ over the cycles with data. A component the data do not inform (e.g. the uptake rate when the first scan is
hours after uptake ended) keeps a large SE — the file then says little more than its start value.

Checked against known populations (``Testing/benchmarks/test_bench_cohort.py``, 20 cohorts of 60 patients):
for ln U per gram and φ the SEs hold (60-65 % of estimates within 1 SE, 80-95 % within 2 SE, mean z ≈ 0.1);
the uptake-rate mean ψ is biased low by about 2.5 SE (12 % in the rate) — the Laplace approximation's known
weakness for a weakly informed, saturating parameter (the first scan comes when uptake is nearly complete).

Between-cycle variability and correlated measurement error: a calibration or segmentation error shared by the
scans of one cycle moves ln y exactly as a change of ln U does, so TACs alone identify only their sum. The
fit estimates the sum and subtracts the site's stated correlated error (``correlated_sd``, default the twin's
5 % for organs, 10 % for lesions) from the ln U component of Γ; both are written to the file.
"""

from __future__ import annotations

import json
import math
import os
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
    iov_sd_se: np.ndarray
    random_sd: float
    correlated_sd: float
    reference_mass_g: float
    n_individuals: int
    n_patients: int
    n_cycles: int
    n_observations: int
    iterations: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "parameters": list(PARAMETERS),
            "mean": self.mean.tolist(), "mean_se": self.mean_se.tolist(),
            "iiv_sd": self.iiv_sd.tolist(), "iiv_sd_se": self.iiv_sd_se.tolist(),
            "iov_sd_total": self.iov_sd.tolist(), "iov_sd_total_se": self.iov_sd_se.tolist(),
            "random_rel_sd": self.random_sd, "correlated_rel_sd": self.correlated_sd,
            "reference_mass_g": self.reference_mass_g, "n_individuals": self.n_individuals,
            "n_patients": self.n_patients, "n_cycles": self.n_cycles, "n_observations": self.n_observations,
            "iterations": self.iterations, "converged": self.converged,
        }


def priors_file_entry(fit: StructureFit) -> dict[str, Any]:
    """One structure of the priors file (``theratwin-priors/1``) from a fit.

    The single place where this module meets the twin's file format: Ω and Γ as diagonal covariances, the
    correlated error taken out of Γ's ln U component, the measurement model, and the SEs in ``sources``.
    """
    iov = np.square(fit.iov_sd)
    iov[0] = max(iov[0] - fit.correlated_sd**2, _MIN_SD**2)
    se = ", ".join(f"{v:.3g}" for v in fit.mean_se)
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
            "mean": f"theratwin fit-priors {__version__} (NLME, Laplace/iterative two-stage) on {fit.n_individuals} "
                    f"individuals of {fit.n_patients} patients, {fit.n_cycles} cycles, {fit.n_observations} "
                    f"activities; SE [{se}]",
            "iiv_cov": "same fit, diagonal; SD SE [" + ", ".join(f"{v:.3g}" for v in fit.iiv_sd_se) + "]",
            "iov_cov": "same fit, diagonal; ln U component minus the stated correlated error "
                       f"({fit.correlated_sd:.3g}); SD SE [" + ", ".join(f"{v:.3g}" for v in fit.iov_sd_se) + "]",
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
    from .runner import PATIENTS_DIR, TASK_FILE

    root = Path(cohort_dir) / PATIENTS_DIR
    if not root.is_dir():
        raise InvalidInputError(f"{cohort_dir}: not a 'theratwin cohort' output folder (no {PATIENTS_DIR}/).")
    found_rph: set[str] = set()
    nuclides: set[str] = set()
    by_kind: dict[str, list[Individual]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            task = json.loads((folder / TASK_FILE).read_text())
            if task.get("status") != "done":
                continue
            results = json.loads((folder / "results.json").read_text())
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


def _cycle_variances(cov: np.ndarray, n_cycles: int) -> np.ndarray:
    """Posterior variances of every cycle's κ (S, K, 3) from the covariance of x = (θ, κ_1..κ_K)."""
    return np.stack([np.diagonal(cov[:, 3 * (1 + k):3 * (2 + k), 3 * (1 + k):3 * (2 + k)], axis1=1, axis2=2)
                     for k in range(n_cycles)], axis=1)


def fit_population(kind: str, individuals: list[Individual], nuclide: str, *, start_mean: np.ndarray,
                   start_iiv_sd: np.ndarray, start_iov_sd: np.ndarray, correlated_sd: float,
                   start_random_sd: float = 0.05, max_iter: int = 600, tol: float = 1e-4) -> StructureFit:
    """Fit μ, Ω, Γ and σ_r of one structure kind (see the module docstring)."""
    from ..twin.model import BiexponentialModel, FitData, fit_map_laplace

    model = BiexponentialModel()
    lam = float(get_nuclide(nuclide).decay_constant_per_h)
    s_n = len(individuals)
    k_n = max(len(ind.cycles) for ind in individuals)
    r_n = max(sum(len(c[0]) for c in ind.cycles) for ind in individuals)
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

    def unpack(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        return v[:3], np.exp(v[3:6]), np.exp(v[6:9]), float(np.exp(v[9]))

    def em_step(v: np.ndarray) -> tuple[np.ndarray, Any]:
        """One EM iteration on v = (μ, ln ω, ln γ, ln σ_r): Laplace E-step, moment M-step."""
        mu, w_sd, g_sd, s_r = unpack(v)
        sd_log = np.sqrt(s_r**2 + _ADDITIVE_SD_MBQ**2 * inv_y2)
        data = FitData(t, logy, np.where(mask, sd_log, 1.0), cyc, adm, ligand, mask, k_n)
        priors = [_Prior(mu + shift[i], np.diag(w_sd**2), np.diag(g_sd**2)) for i in range(s_n)]
        post = fit_map_laplace(model, structures, cast(Any, priors), data, lam)
        x, c = post.mode, post.cov
        theta = x[:, :3] - shift
        c_theta = np.diagonal(c[:, :3, :3], axis1=1, axis2=2)
        new_mu = theta.mean(axis=0)
        new_w = np.sqrt(np.maximum(((theta - new_mu) ** 2 + c_theta).mean(axis=0), _MIN_SD**2))
        kap = x[:, 3:3 + 3 * k_n].reshape(s_n, k_n, 3)
        c_kap = _cycle_variances(c, k_n)
        new_g = np.sqrt(np.maximum((kap**2 + c_kap)[has_cycle].mean(axis=0), _MIN_SD**2))
        # residual variance: squared residual at the mode + its posterior variance (Jacobian-propagated)
        eta = x[:, None, :3] + np.einsum("srk,skp->srp", onehot, kap)
        loga, jac = model.log_activity_jacobian(eta, t, adm, ligand, structures, lam)
        var_eta = np.zeros((s_n, r_n))
        for k in range(k_n):
            m = np.zeros((3, c.shape[1]))
            m[:, :3] = np.eye(3)
            m[:, 3 * (1 + k):3 * (2 + k)] = np.eye(3)
            var_k = np.einsum("srp,spq,srq->sr", jac, np.einsum("pa,sab,qb->spq", m, c, m), jac)
            var_eta = np.where(cyc == k, var_k, var_eta)
        res2 = (logy - loga) ** 2 + var_eta - _ADDITIVE_SD_MBQ**2 * inv_y2
        new_s = math.sqrt(max(float(res2[mask].mean()), 1e-6))
        return np.concatenate([new_mu, np.log(new_w), np.log(new_g), [math.log(new_s)]]), post

    # EM accelerated by SQUAREM (Varadhan R, Roland C. Scand J Stat 2008;35:335, scheme S3): two EM steps, an
    # extrapolation along them, and one EM step from there; plain EM needs hundreds of iterations here because
    # weakly informed components (the uptake rate) move slowly.
    v = np.concatenate([np.asarray(start_mean, float), np.log(np.asarray(start_iiv_sd, float)),
                        np.log(np.asarray(start_iov_sd, float)), [math.log(start_random_sd)]])
    converged = False
    iterations = 0
    post: Any = None
    while iterations < max_iter:
        v1, _ = em_step(v)
        v2, _ = em_step(v1)
        iterations += 2
        r, d = v1 - v, v2 - 2.0 * v1 + v
        alpha = -float(np.linalg.norm(r)) / max(float(np.linalg.norm(d)), 1e-12)
        alpha = min(alpha, -1.0)  # -1 is the plain EM step v2
        try:
            v_new, post = em_step(v - 2.0 * alpha * r + alpha**2 * d)
        except FitError:  # the extrapolation went too far for the individual fits: keep the plain EM steps
            v_new = np.full_like(v, np.nan)
        iterations += 1
        if not np.all(np.isfinite(v_new)):
            v_new, post = em_step(v2)
        change = float(np.max(np.abs(v_new - v)))
        v = v_new
        if change < tol:
            converged = True
            break
    v, post = em_step(v)  # the posterior at the final estimates, for the standard errors
    mu, w_sd, g_sd, s_r = unpack(v)
    # standard errors (module docstring): precision of each θ_i about μ, a = (1 − C/ω²)/ω²
    assert post is not None
    c = post.cov
    c_theta = np.diagonal(c[:, :3, :3], axis1=1, axis2=2)
    a = np.maximum((1.0 - c_theta / w_sd**2) / w_sd**2, 1e-12)
    mean_se = 1.0 / np.sqrt(a.sum(axis=0))
    iiv_se = np.sqrt(2.0 / np.sum(a**2, axis=0)) / (2.0 * w_sd)
    c_kap = _cycle_variances(c, k_n)[has_cycle]
    b = np.maximum((1.0 - c_kap / g_sd**2) / g_sd**2, 1e-12)
    iov_se = np.sqrt(2.0 / np.sum(b**2, axis=0)) / (2.0 * g_sd)
    return StructureFit(kind, mu, mean_se, w_sd, iiv_se, g_sd, iov_se, s_r, correlated_sd,
                        float(np.median([ind.mass_g for ind in individuals])), s_n,
                        len({ind.patient for ind in individuals}), int(has_cycle.sum()), int(mask.sum()), iterations,
                        converged)


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
            "method": "Nonlinear mixed effects (IIV and IOV, diagonal), Laplace approximation of the random effects "
                      "by the twin's MAP + Laplace fit, iterative two-stage/EM maximisation; large-sample SEs. "
                      "Structure kinds not listed fall back to the built-in priors.",
            "structures": {k: priors_file_entry(f) for k, f in sorted(self.fits.items())},
            "references": {
                "STEI85": "Steimer JL, Mallet A, Mentre F. Estimating interindividual pharmacokinetic variability. "
                          "In: Rowland M et al. (eds) Variability in Drug Therapy. Raven Press 1985:65-111",
                "LIND90": "Lindstrom MJ, Bates DM. Nonlinear mixed effects models for repeated measures data. "
                          "Biometrics 1990;46:673-687",
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
        lines = [f"population priors for {self.radiopharmaceutical} ({self.nuclide}) from {self.cohort} "
                 "(research use); mean ± SE of (ln U per g, phi, psi), IIV SD, IOV SD:"]
        for k, f in sorted(self.fits.items()):
            m = ", ".join(f"{a:.3f}±{b:.3f}" for a, b in zip(f.mean, f.mean_se, strict=True))
            lines.append(f"  {k:<22} n={f.n_individuals:<4} mean ({m}); IIV {np.round(f.iiv_sd, 3).tolist()}; "
                         f"IOV {np.round(f.iov_sd, 3).tolist()}; random {f.random_sd:.3f}"
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
        fits[kind] = fit_population(kind, inds, nuclide, start_mean=start,
                                    start_iiv_sd=np.sqrt(np.diag(sp.iiv_cov)), start_iov_sd=np.sqrt(np.diag(sp.iov_cov)),
                                    correlated_sd=c_sd)
    if not fits:
        raise InvalidInputError(f"{cohort_dir}: no structure kind with at least {min_individuals} patients to fit.")
    return PriorsFit(rph, nuclide, str(cohort_dir), fits, skipped)
