"""Virtual-cohort validation of the twin against a Bayes oracle and single-time-point methods (cycle 2 imaged once).

Setting (as in issue 15): 200 virtual patients per scenario, cycle 1 imaged at 4, 24, 48 and 96 h, cycle 2 once
(96 h, Hänscheid's protocol, or 48 h, the time Hou et al. J Nucl Med 2021;62:1006 found best for
177Lu-PSMA); truth = the exact TIA of each patient's cycle-2 curve. Virtual patients come from
:func:`theratwin.twin.make_cohort`: per-gram population priors with structure masses varying between patients
(CV 25 % organs, 80 % lesions), IIV and IOV, one correlated measurement factor per structure and cycle
(calibration/segmentation/recovery) and random linear-scale proportional + additive noise per scan (the twin
assumes log-normal error). The last scenario has independent errors only (the setting of the earlier tests).

The twin's estimate is its posterior median (``twin``): for the metric of the table (a relative error window
nearly symmetric in log) the loss-optimal estimate of a right-skewed posterior lies near its median, not its
mean; the posterior mean (``twin mean``, what the stage reports as the TIA) is shown beside it and is typically
within 1-2.5 points. The floor (``bayes`` column, :class:`BayesOracle`) is computed here, independently of the twin: the Bayes
estimator that knows the true population (μ, Ω, Γ per gram, the masses) and the true error model (linear-scale
Gaussian random noise, log-normal correlated factor) and integrates the exact posterior of the cycle-2 TIA
given the *same data* by importance sampling (no Laplace approximation). Its estimate is the one that
minimises the expected loss of the reported metric (the share of errors > 10 %), so no method that uses the
same data can beat it except by chance: the twin's distance to it is the price of the twin's approximations
(Laplace, log-normal error, point estimate). The ``knows c1`` column is a lower bound that is not reachable:
the Bayes estimator that also knows the patient's exact cycle-1 parameters.

Comparators (``theratwin.kinetics``, independent code): Hänscheid 2018 (``A·2t/ln 2``), Madsen 2018
(population T_eff from the prior table) and "prior" (the patient's cycle-1 fit scaled to the cycle-2 point).
Published reference for 177Lu-DOTATATE kidneys (Devasia et al. 2021, as quoted in EJNMMI Phys 2023,
doi:10.1186/s40658-023-00530-1): share of TIAs with > 10 % error — Hänscheid 20 %, Madsen 17 %,
mixed-effects 6 %.

Asserted (seed 11; every scenario draws its own patients): in every scenario and structure the twin's share of
errors > 10 % is within 2 points of the Bayes floor; its 90 % intervals (cycle-2 estimate and cycle-3
prediction) cover the truth in 85-95 % pooled over the scenarios and, per scenario, within the binomial band of
a calibrated method (family-wise 0.1 %); it beats every single-time-point comparator; the oracle is a floor (its RMS error is not
worse than the twin's); all in modest CPU time. Run ``python Testing/python/test_twin_cohort.py [seed ...]`` to print the table.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.optimize import minimize

import theratwin as tt
from theratwin.twin import MeasurementErrorModel, PatientTwin, builtin_priors, make_cohort
from theratwin.twin.priors import prior_spec

N_PATIENTS = 200
STRUCTURES = ("kidneys", "lesion_1")
MASS_CV = {"kidneys": 0.25, "lesion_1": 0.80}
SCENARIOS = {
    # name: (radiopharmaceutical, cycle-2 scan time h, random SD organ/lesion, correlated SD organ/lesion)
    "PSMA 96h, low noise": ("PSMA-617", 96.0, (0.02, 0.03), (0.03, 0.05)),
    "PSMA 96h, typical noise": ("PSMA-617", 96.0, (0.05, 0.08), (0.05, 0.10)),
    "PSMA 48h, low noise": ("PSMA-617", 48.0, (0.02, 0.03), (0.03, 0.05)),
    "PSMA 48h, typical noise": ("PSMA-617", 48.0, (0.05, 0.08), (0.05, 0.10)),
    "DOTATATE 96h, typical noise": ("DOTATATE", 96.0, (0.05, 0.08), (0.05, 0.10)),
    "PSMA 96h, independent errors": ("PSMA-617", 96.0, (0.05, 0.08), (0.0, 0.0)),
}
METHODS = ("twin", "twin mean", "hanscheid", "madsen", "prior", "bayes", "knows c1")
LAM_LU = tt.nuclides.get("Lu-177").decay_constant_per_h
ADDITIVE_SD = 0.05


# ------------------------------------------------------------------------------------------- the oracle
def _activity(eta: np.ndarray, t: np.ndarray, adm: float) -> np.ndarray:
    """A(t) = A_adm e^{η0} (e^{-λw t} − e^{-λu t}), λw = λ_phys + e^{η1}, λu = λw + e^{η2} (written out here)."""
    lam_w = LAM_LU + np.exp(eta[..., 1:2])
    lam_u = lam_w + np.exp(eta[..., 2:3])
    return adm * np.exp(eta[..., 0:1]) * (np.exp(-lam_w * t) - np.exp(-lam_u * t))


def _tia(eta: np.ndarray, adm: float) -> np.ndarray:
    lam_w = LAM_LU + np.exp(eta[..., 1])
    lam_u = lam_w + np.exp(eta[..., 2])
    return adm * np.exp(eta[..., 0]) * (1.0 / lam_w - 1.0 / lam_u)


def _loglik(y: np.ndarray, a: np.ndarray, sd_rel: float) -> np.ndarray:
    """Exact log-likelihood of the truth's noise: y ~ N(a, (σ_r a)² + σ_a²) per scan (summed over the last axis)."""
    var = (sd_rel * a) ** 2 + ADDITIVE_SD ** 2
    return -0.5 * np.sum((y - a) ** 2 / var + np.log(var), axis=-1)


@dataclass
class OracleResult:
    estimate: float  # minimises the expected share of errors > 10 %
    mean: float
    ess: float


def _importance_sample(neg_log_post, start: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws and normalised weights of exp(−neg_log_post): mode by scipy, Student-t proposal (ν = 5) with the
    inverse numerical Hessian at the mode, scale inflated 1.3x (heavier tails than the target); if the effective
    sample size is below 300, again with a wider proposal and more draws."""
    opt = minimize(neg_log_post, start, method="BFGS")
    if not opt.success:  # e.g. a rough start: a derivative-free pass, then BFGS again
        opt = minimize(neg_log_post, opt.x, method="Nelder-Mead",
                       options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 20000, "maxfev": 40000, "adaptive": True})
        opt = minimize(neg_log_post, opt.x, method="BFGS")
    mode, d = opt.x, start.size
    h = 1e-4
    eye = np.eye(d) * h
    hess = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            hess[i, j] = hess[j, i] = (neg_log_post(mode + eye[i] + eye[j]) - neg_log_post(mode + eye[i] - eye[j])
                                       - neg_log_post(mode - eye[i] + eye[j])
                                       + neg_log_post(mode - eye[i] - eye[j])) / (4 * h * h)
    try:
        base = np.linalg.inv(hess)
        np.linalg.cholesky(base)
    except np.linalg.LinAlgError:
        base = np.asarray(opt.hess_inv)
    for scale, nu, size in ((1.3, 5.0, n), (2.0, 3.0, 4 * n), (3.0, 3.0, 8 * n)):
        chol = np.linalg.cholesky(scale ** 2 * base)
        z = rng.standard_normal((size, d))
        x = mode + (z / np.sqrt(rng.chisquare(nu, (size, 1)) / nu)) @ chol.T
        m = np.linalg.solve(chol, (x - mode).T).T
        log_q = -0.5 * (nu + d) * np.log1p(np.sum(m * m, axis=1) / nu)
        logw = -neg_log_post(x) - log_q
        w = np.exp(logw - np.max(logw))
        w /= np.sum(w)
        if 1.0 / np.sum(w * w) >= 300:
            break
    return x, w


class BayesOracle:
    """Exact posterior of the cycle-2 TIA of one structure of one patient (see the module docstring).

    Unknowns: ζ₁ = η₁ + δ₁ e₀ (cycle-1 parameters as measured: the correlated factor folded into the amplitude),
    η₂ and δ₂. A priori (ζ₁, η₂) are jointly Gaussian with means μ, covariances Ω + Γ + σ_c² e₀e₀ᵀ and Ω + Γ and
    cross-covariance Ω; δ₂ ~ N(0, σ_c²). Likelihoods: y ~ N(a, (σ_r a)² + σ_a²) per scan (the truth's noise),
    a = A(t; ζ₁) in cycle 1 and A(t; η₂)·e^{δ₂} in cycle 2. The posterior of (ζ₁, η₂, δ₂) is integrated by
    importance sampling (:func:`_importance_sample`, vectorised log posterior).
    """

    def __init__(self, mean: np.ndarray, omega: np.ndarray, gamma: np.ndarray, sd_rel: float, sd_corr_rel: float,
                 adm: float, rng: np.random.Generator, n: int = 6000) -> None:
        self.mu, self.omega, self.gamma = mean, omega, gamma
        self.sd_rel = sd_rel
        self.s_c = math.sqrt(math.log1p(sd_corr_rel ** 2))
        self.adm, self.rng, self.n = adm, rng, n

    def _result(self, eta2: np.ndarray, w: np.ndarray) -> OracleResult:
        tia = _tia(eta2, self.adm)
        order = np.argsort(tia)
        ts, cdf = tia[order], np.cumsum(w[order])
        # the estimate e maximising P(|e/T − 1| <= 0.1) = P(e/1.1 <= T <= e/0.9), over candidate quantiles
        cand = ts[np.minimum(np.searchsorted(cdf, np.linspace(0.005, 0.995, 199)), ts.size - 1)]
        lo_idx = np.searchsorted(ts, cand / 1.1, side="left")
        hi_idx = np.searchsorted(ts, cand / 0.9, side="right")
        cdf0 = np.concatenate([[0.0], cdf])
        best = cand[int(np.argmax(cdf0[hi_idx] - cdf0[lo_idx]))]
        return OracleResult(float(best), float(np.sum(w * tia)), float(1.0 / np.sum(w * w)))

    def _cycle2_loglik(self, eta2: np.ndarray, delta2: np.ndarray, t2: float, y2: float) -> np.ndarray:
        a2 = _activity(eta2, np.array([t2]), self.adm) * np.exp(delta2)[..., None]
        return _loglik(np.array([y2]), a2, self.sd_rel)

    def _split(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(η₂, δ₂) from the last entries of x (δ₂ ≡ 0 without a correlated error)."""
        eta2 = x[..., k:k + 3]
        delta2 = x[..., k + 3] if self.s_c > 0 else np.zeros(x.shape[:-1])
        return eta2, delta2

    def same_data(self, t1: np.ndarray, y1: np.ndarray, t2: float, y2: float) -> OracleResult:
        e0 = np.zeros((3, 3))
        e0[0, 0] = 1.0
        joint = np.block([[self.omega + self.gamma + self.s_c ** 2 * e0, self.omega],
                          [self.omega, self.omega + self.gamma]])
        joint_inv = np.linalg.inv(joint)
        mu6 = np.concatenate([self.mu, self.mu])

        def nlp(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, float)
            d = x[..., :6] - mu6
            eta2, delta2 = self._split(x, 3)
            out = (0.5 * np.einsum("...i,ij,...j->...", d, joint_inv, d)
                   - _loglik(y1, _activity(x[..., :3], t1, self.adm), self.sd_rel)
                   - self._cycle2_loglik(eta2, delta2, t2, y2))
            if self.s_c > 0:
                out = out + 0.5 * (delta2 / self.s_c) ** 2
            return out

        start = self.mu.copy()
        start[0] += math.log(max(float(np.max(y1)), 1e-6) / float(np.max(_activity(start, t1, self.adm))))
        sigma1_inv = np.linalg.inv(joint[:3, :3])

        def nlp1(z: np.ndarray) -> float:  # cycle 1 alone: a good start for the joint mode
            d = z - self.mu
            return float(0.5 * d @ sigma1_inv @ d - _loglik(y1, _activity(z, t1, self.adm), self.sd_rel))

        start = minimize(nlp1, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-8}).x
        eta2 = self.mu + self.omega @ sigma1_inv @ (start - self.mu)
        eta2[0] += math.log(max(y2, 1e-6) / float(_activity(eta2, np.array([t2]), self.adm)[0]))
        x0 = np.concatenate([start, eta2] + ([np.zeros(1)] if self.s_c > 0 else []))
        x, w = _importance_sample(lambda v: nlp(v) if np.ndim(v) > 1 else float(nlp(v)), x0, self.rng, self.n)
        return self._result(self._split(x, 3)[0], w)

    def knows_cycle1(self, eta1: np.ndarray, t2: float, y2: float) -> OracleResult:
        gain = self.omega @ np.linalg.inv(self.omega + self.gamma)
        mean = self.mu + gain @ (eta1 - self.mu)
        cov_inv = np.linalg.inv(self.omega + self.gamma - gain @ self.omega)

        def nlp(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, float)
            d = x[..., :3] - mean
            eta2, delta2 = self._split(x, 0)
            out = 0.5 * np.einsum("...i,ij,...j->...", d, cov_inv, d) - self._cycle2_loglik(eta2, delta2, t2, y2)
            if self.s_c > 0:
                out = out + 0.5 * (delta2 / self.s_c) ** 2
            return out

        x0 = mean.copy()
        x0[0] += math.log(max(y2, 1e-6) / float(_activity(x0, np.array([t2]), self.adm)[0]))
        x0 = np.concatenate([x0] + ([np.zeros(1)] if self.s_c > 0 else []))
        x, w = _importance_sample(lambda v: nlp(v) if np.ndim(v) > 1 else float(nlp(v)), x0, self.rng, self.n)
        return self._result(self._split(x, 0)[0], w)


# ------------------------------------------------------------------------------------------- the cohort run
def _stp(method: str, t: float, a: float, **kw) -> float:
    return tt.kinetics.single_time_point(t, a, "Lu-177", method, **kw)


@dataclass
class ScenarioResult:
    name: str
    errors: dict[str, dict[str, np.ndarray]]  # method -> structure -> relative errors
    coverage_cycle2: dict[str, float]
    coverage_cycle3: dict[str, float]
    min_ess: float
    seconds_twin: float
    seconds_oracle: float

    def share_over_10pct(self, method: str, structure: str) -> float:
        return float(np.mean(np.abs(self.errors[method][structure]) > 0.10))

    def rms(self, method: str, structure: str) -> float:
        return float(np.sqrt(np.mean(np.square(self.errors[method][structure]))))


def run_scenario(name: str, n_patients: int = N_PATIENTS, seed: int = 11) -> ScenarioResult:
    rph, t_scan, (r_org, r_les), (c_org, c_les) = SCENARIOS[name]
    # every scenario draws its own patients (independent cohorts: pooled coverage counts independent trials)
    cohort = make_cohort(n_patients, radiopharmaceutical=rph, structures=STRUCTURES, proportional_sd=r_org,
                         lesion_proportional_sd=r_les, correlated_sd=c_org, lesion_correlated_sd=c_les,
                         mass_cv=MASS_CV["kidneys"], lesion_mass_cv=MASS_CV["lesion_1"],
                         sampling_h={1: (4.0, 24.0, 48.0, 96.0), 2: (t_scan,)},
                         seed=seed * 1000 + list(SCENARIOS).index(name))
    pop = builtin_priors(rph)
    measurement = MeasurementErrorModel(r_org, r_les, ADDITIVE_SD, c_org, c_les)
    errors: dict[str, dict[str, list[float]]] = {m: {s: [] for s in STRUCTURES} for m in METHODS}
    cov2: dict[str, list[bool]] = {s: [] for s in STRUCTURES}
    cov3: dict[str, list[bool]] = {s: [] for s in STRUCTURES}
    rng = np.random.default_rng(seed + 1000)
    t_twin = t_oracle = 0.0
    min_ess = math.inf
    for p in cohort.patients:
        t0 = time.process_time()  # CPU time: the machine is shared, wall time is not ours
        twin = PatientTwin("Lu-177", rph, measurement=measurement)
        for c, data in p.measurements.items():
            for s, (t, y) in data.items():
                twin.observe(c, s, t, y, p.administered_MBq[c], mass_g=p.mass_g[s])
        pred = twin.predict(3, p.administered_MBq[3], n_draws=2000)
        values: dict[str, dict[str, float]] = {s: {} for s in STRUCTURES}
        for s in STRUCTURES:
            est = twin.tia(2, s, n_draws=4000)
            true2 = p.true_tia_MBq_h[2][s]
            cov2[s].append(est.low_MBq_h <= true2 <= est.high_MBq_h)
            iv = pred[s].tia_MBq_h
            cov3[s].append(iv.low <= p.true_tia_MBq_h[3][s] <= iv.high)
            values[s]["twin"] = est.median_MBq_h
            values[s]["twin mean"] = est.mean_MBq_h
        t_twin += time.process_time() - t0
        t0 = time.process_time()
        for s, les in zip(STRUCTURES, (False, True), strict=True):
            pp = pop.lookup(s)[0]
            prior = pp.structure_prior(p.mass_g[s])
            oracle = BayesOracle(prior.mean, prior.iiv_cov, prior.iov_cov, r_les if les else r_org,
                                 c_les if les else c_org, p.administered_MBq[2], rng)
            (t2,), (a2,) = p.measurements[2][s]
            t1, a1 = p.measurements[1][s]
            same = oracle.same_data(np.asarray(t1), np.asarray(a1), float(t2), float(a2))
            knows = oracle.knows_cycle1(p.eta[s][1], float(t2), float(a2))
            min_ess = min(min_ess, same.ess)
            values[s].update(bayes=same.estimate, **{"knows c1": knows.estimate})
        t_oracle += time.process_time() - t0
        for s in STRUCTURES:
            (t2,), (a2,) = p.measurements[2][s]
            t1, a1 = p.measurements[1][s]
            values[s]["hanscheid"] = _stp("hanscheid", t2, a2)
            values[s]["madsen"] = _stp("madsen", t2, a2, effective_half_life_h=prior_spec(rph, s).effective_half_life_h)
            try:
                values[s]["prior"] = _stp("prior", t2, a2, prior=tt.kinetics.fit_tac(t1, a1, nuclide="Lu-177"))
            except tt.TheraTwinError:
                values[s]["prior"] = math.nan  # counted as an error > 10 % below
            true2 = p.true_tia_MBq_h[2][s]
            for m, v in values[s].items():
                errors[m][s].append(v / true2 - 1.0 if math.isfinite(v) else math.inf)
    return ScenarioResult(
        name, {m: {s: np.asarray(v) for s, v in d.items()} for m, d in errors.items()},
        {s: float(np.mean(v)) for s, v in cov2.items()}, {s: float(np.mean(v)) for s, v in cov3.items()},
        min_ess, t_twin, t_oracle)


def format_table(results: list[ScenarioResult], seed: int | None = None) -> str:
    head = f"seed {seed}, " if seed is not None else ""
    lines = [f"Share of cycle-2 TIAs with > 10 % error (RMS error) — {head}{N_PATIENTS} virtual patients per scenario",
             f"{'scenario':30s} {'structure':9s} " + " ".join(f"{m:>14s}" for m in METHODS)
             + f" {'twin-bayes':>10s} {'PI cov c2/c3':>13s}"]
    for r in results:
        for s in STRUCTURES:
            cells = [f"{100 * r.share_over_10pct(m, s):5.1f}% ({100 * min(r.rms(m, s), 9.99):5.1f}%)" for m in METHODS]
            gap = 100 * (r.share_over_10pct("twin", s) - r.share_over_10pct("bayes", s))
            lines.append(f"{r.name:30s} {s:9s} " + " ".join(f"{c:>14s}" for c in cells)
                         + f" {gap:+9.1f}  {100 * r.coverage_cycle2[s]:5.1f}/{100 * r.coverage_cycle3[s]:4.1f}%")
    lines.append("bayes = the Bayes floor with the same data (true population and error model, exact posterior); "
                 "knows c1 = also knows the exact cycle-1 parameters (unreachable bound).")
    lines.append(f"CPU s: twin {sum(r.seconds_twin for r in results):.1f}, oracle {sum(r.seconds_oracle for r in results):.1f};"
                 f" smallest importance-sampling ESS {min(r.min_ess for r in results):.0f}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def results() -> list[ScenarioResult]:
    out = [run_scenario(name) for name in SCENARIOS]
    print("\n" + format_table(out, 11))
    return out


def test_oracle_is_well_sampled(results: list[ScenarioResult]) -> None:
    assert min(r.min_ess for r in results) > 100


def test_twin_is_within_two_points_of_the_bayes_floor(results: list[ScenarioResult]) -> None:
    for r in results:
        for s in STRUCTURES:
            gap = r.share_over_10pct("twin", s) - r.share_over_10pct("bayes", s)
            assert gap <= 0.02, (r.name, s, format_table(results))


def test_the_floor_is_a_floor(results: list[ScenarioResult]) -> None:
    """Knowing more cannot hurt much: the oracles' RMS errors are not worse than the twin's (sampling noise)."""
    for r in results:
        for s in STRUCTURES:
            assert r.rms("knows c1", s) <= r.rms("bayes", s) * 1.05, (r.name, s)
            assert r.rms("bayes", s) <= r.rms("twin", s) * 1.05, (r.name, s)


def test_twin_beats_single_time_point_methods(results: list[ScenarioResult]) -> None:
    for r in results:
        for s in STRUCTURES:
            for m in ("hanscheid", "madsen", "prior"):
                assert r.share_over_10pct("twin", s) <= r.share_over_10pct(m, s), (r.name, s, m)
                assert r.rms("twin", s) < r.rms(m, s), (r.name, s, m)
    r96 = next(r for r in results if r.name == "PSMA 96h, independent errors")
    assert r96.share_over_10pct("twin", "kidneys") < 0.5 * r96.share_over_10pct("hanscheid", "kidneys")


def test_prediction_intervals_are_calibrated(results: list[ScenarioResult]) -> None:
    """90 % intervals (cycle-2 estimate and cycle-3 prediction) cover the truth in 85-95 % of patients.

    The 85-95 % band is held pooled over the six independent scenarios (1200 patients per structure and cycle,
    binomial SE 0.9 points). Per scenario (200 patients, SE 2.1 points) a calibrated twin falls outside 85-95 %
    by chance in about 1 of 50 cells, so each of the 24 cells is held to the binomial band that a calibrated
    method leaves with a family-wise probability of 0.1 % (80.5-97.5 %: Bonferroni over the cells); the
    per-seed tables in the issue report show every cell against 85-95 %."""
    from scipy.stats import binom

    alpha = 0.001 / (2 * len(STRUCTURES) * len(SCENARIOS)) / 2  # two-sided, Bonferroni over the cells
    lo = binom.ppf(alpha, N_PATIENTS, 0.9) / N_PATIENTS
    hi = binom.isf(alpha, N_PATIENTS, 0.9) / N_PATIENTS
    for s in STRUCTURES:
        for cov in ("coverage_cycle2", "coverage_cycle3"):
            values = [getattr(r, cov)[s] for r in results]
            assert 0.85 <= float(np.mean(values)) <= 0.95, (s, cov, values)
            for r, v in zip(results, values, strict=True):
                assert lo <= v <= hi, (r.name, s, cov, v, (lo, hi))


def test_cohort_cost_stays_modest(results: list[ScenarioResult]) -> None:
    """A guard against a pathological slowdown, not a speed claim (speed lives in Testing/benchmarks): 1200
    twins (6 scenarios x 200 patients) fitted, estimated and predicted take ~30-60 s of CPU on the CI machine."""
    assert sum(r.seconds_twin for r in results) < 240.0


if __name__ == "__main__":
    for sd in [int(a) for a in sys.argv[1:]] or [11]:
        print(format_table([run_scenario(name, seed=sd) for name in SCENARIOS], sd), flush=True)
