"""Virtual-cohort validation of the twin against single-time-point methods (cycle 2 imaged once).

Setting (as in the issue): 200 virtual patients per scenario, cycle 1 imaged at 4, 24, 48 and 96 h,
cycle 2 at 96 h only (the time Hänscheid et al. proposed); truth = the exact TIA of each patient's cycle-2
curve. Virtual patients come from :func:`theratwin.twin.make_cohort` (same model family as the twin, with
IIV, IOV and linear-scale proportional + additive noise; the twin assumes log-normal error).

Comparators (``theratwin.kinetics``, independent code): Hänscheid 2018 (``A·2t/ln 2``), Madsen 2018
(population T_eff from the prior table) and "prior" (the patient's cycle-1 fit scaled to the cycle-2 point).
Published reference for 177Lu-DOTATATE kidneys (Devasia et al. 2021, as quoted in EJNMMI Phys 2023,
doi:10.1186/s40658-023-00530-1): share of TIAs with > 10 % error — Hänscheid 20 %, Madsen 17 %,
mixed-effects 6 %. Target for the twin: ≤ 5 %.

The floor ("oracle" column, :class:`OracleModel`): the Bayes estimator that knows the patient's exact cycle-1
curve and the true population. No method that learns from cycle 1 could know more, so its share of errors
> 10 % is the lowest reachable in the scenario. Two things set it: the measurement noise of the one cycle-2
scan (with proportional noise σ at least about P(|N(0, σ)| > 0.1): 4.6 % at σ = 5 %, 21 % at 8 %, "noise
floor" column) and the change of the washout rate between cycles (IOV), which one scan cannot see and which
matters more the further the scan is from t ≈ 1/λ_eff. Scenarios: 96 h (Hänscheid's protocol) and 48 h (the
single-time-point time Hou et al. J Nucl Med 2021;62:1006 found best for 177Lu-PSMA), low (2 %/3 %) and
typical (5 %/8 %, organs/lesions) noise.

Measured (seed 11, 200 patients per scenario, share > 10 %: twin / oracle floor / Hänscheid / Madsen):
kidneys 96 h 10/8.5/52/63 % (low noise) and 16.5/15/55/65 % (typical); kidneys 48 h 0/0/41/6 % and
3.5/4.5/43/14.5 %; lesions 96 h 6/5.5/30/11 % and 25/23/41/32 %; lesions 48 h 10/4/36/42 % and 34.5/27/48/46 %;
DOTATATE 96 h typical: kidneys 7.5/7.5/38.5/35 %, lesions 26/21.5/38/30 %. So the twin is at the floor for
kidneys and within 7.5 points of it for lesions, and the ≤ 5 % target is reachable only where the floor is below
it (kidneys at 48 h): at 96 h the assumed kidney IOV of the washout rate (unpublished, see priors) and at typical
noise the lesion measurement noise put the floor itself above 5 %.

Asserted: the twin beats every comparator in every scenario (share > 10 % and RMS); it is within 4 points of the
floor for kidneys and 10 points for lesions; wherever the floor is ≤ 2.5 % it meets the ≤ 5 % target; its 90 %
intervals cover the truth in 85-95 %. Run ``python Testing/python/test_twin_cohort.py``
to print the table for all scenarios.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy.special import ndtr

import theratwin as tt
from theratwin.twin import MeasurementErrorModel, PatientTwin, make_cohort
from theratwin.twin.model import BiexponentialModel
from theratwin.twin.priors import prior_spec

N_PATIENTS = 200
STRUCTURES = ("kidneys", "lesion_1")
SCENARIOS = {
    # name: (radiopharmaceutical, cycle-2 scan time h, organ noise, lesion noise)
    "PSMA 96h, low noise": ("PSMA-617", 96.0, 0.02, 0.03),
    "PSMA 96h, typical noise": ("PSMA-617", 96.0, 0.05, 0.08),
    "PSMA 48h, low noise": ("PSMA-617", 48.0, 0.02, 0.03),
    "PSMA 48h, typical noise": ("PSMA-617", 48.0, 0.05, 0.08),
    "DOTATATE 96h, typical noise": ("DOTATATE", 96.0, 0.05, 0.08),
}
#: Scenarios run by the test (all of them are printed by the script).
TESTED = tuple(SCENARIOS)
METHODS = ("twin", "hanscheid", "madsen", "prior", "oracle")


class OracleModel(BiexponentialModel):
    """The floor: the Bayes estimator that knows the patient's *exact* cycle-1 parameters η₁ (what four perfect
    scans would give) and the true population (μ, Ω, Γ and noise level of the cohort).

    Given η₁, the patient's own parameters are θ | η₁ ~ N(μ + Ω(Ω+Γ)⁻¹(η₁ − μ), (Ω⁻¹ + Γ⁻¹)⁻¹) (Gaussian
    conditioning) and cycle 2 adds its own deviation κ₂ ~ N(0, Γ); this prior plus the cycle-2 scan gives the
    posterior. No method that learns from cycle 1 and the population can know more, so its share of errors
    > 10 % is the lowest any such method can reach in the scenario (up to the Laplace approximation).
    """

    name = "oracle"

    def __init__(self, eta_cycle1: dict[str, np.ndarray]) -> None:
        self.eta_cycle1 = eta_cycle1

    def prior(self, structure, radiopharmaceutical, nuclide, overrides):
        pr = super().prior(structure, radiopharmaceutical, nuclide, overrides)
        gain = pr.iiv_cov @ np.linalg.inv(pr.iiv_cov + pr.iov_cov)
        mean = pr.mean + gain @ (np.asarray(self.eta_cycle1[structure], float) - pr.mean)
        cov = np.linalg.inv(np.linalg.inv(pr.iiv_cov) + np.linalg.inv(pr.iov_cov))
        return replace(pr, mean=mean, iiv_cov=cov)


def _stp(method: str, t: float, a: float, **kw) -> float:
    """tt.kinetics.single_time_point if installed, else the published formulas (Hänscheid 2018, Madsen 2018)."""
    try:
        from theratwin.kinetics import single_time_point
    except ImportError:  # pragma: no cover - kinetics is part of the package now
        if method == "hanscheid":
            return a * 2 * t / math.log(2)
        lam = math.log(2) / kw["effective_half_life_h"]
        return a * math.exp(lam * t) / lam
    return single_time_point(t, a, "Lu-177", method, **kw)


@dataclass
class ScenarioResult:
    name: str
    errors: dict[str, dict[str, np.ndarray]]  # method -> structure -> relative errors
    coverage_cycle2: dict[str, float]
    coverage_cycle3: dict[str, float]
    noise: dict[str, float]
    seconds: float

    def share_over_10pct(self, method: str, structure: str) -> float:
        return float(np.mean(np.abs(self.errors[method][structure]) > 0.10))

    def rms(self, method: str, structure: str) -> float:
        return float(np.sqrt(np.mean(np.square(self.errors[method][structure]))))


def run_scenario(name: str, n_patients: int = N_PATIENTS, seed: int = 11) -> ScenarioResult:
    rph, t_scan, s_org, s_les = SCENARIOS[name]
    t0 = time.process_time()  # CPU time: the machine is shared, wall time is not ours
    cohort = make_cohort(n_patients, radiopharmaceutical=rph, structures=STRUCTURES, proportional_sd=s_org,
                         lesion_proportional_sd=s_les, sampling_h={1: (4.0, 24.0, 48.0, 96.0), 2: (t_scan,)},
                         seed=seed)
    errors = {m: {s: [] for s in STRUCTURES} for m in METHODS}
    cov2 = {s: [] for s in STRUCTURES}
    cov3 = {s: [] for s in STRUCTURES}
    for p in cohort.patients:
        twin = PatientTwin("Lu-177", rph, measurement=MeasurementErrorModel(s_org, s_les))
        for c, data in p.measurements.items():
            for s, (t, y) in data.items():
                twin.observe(c, s, t, y, p.administered_MBq[c])
        pred = twin.predict(3, p.administered_MBq[3], n_draws=1000)
        oracle = PatientTwin("Lu-177", rph, model=OracleModel({k: v[1] for k, v in p.eta.items()}), measurement=MeasurementErrorModel(s_org, s_les))
        for s, (t, y) in p.measurements[2].items():
            oracle.observe(2, s, t, y, p.administered_MBq[2])
        for s in STRUCTURES:
            true2 = p.true_tia_MBq_h[2][s]
            est = twin.tia(2, s, n_draws=1000)
            cov2[s].append(est.low_MBq_h <= true2 <= est.high_MBq_h)
            iv = pred[s].tia_MBq_h
            cov3[s].append(iv.low <= p.true_tia_MBq_h[3][s] <= iv.high)
            (t2,), (a2,) = p.measurements[2][s]
            t1, a1 = p.measurements[1][s]
            t_eff = prior_spec(rph, s).effective_half_life_h
            values = {"twin": est.mean_MBq_h, "hanscheid": _stp("hanscheid", t2, a2),
                      "madsen": _stp("madsen", t2, a2, effective_half_life_h=t_eff),
                      "oracle": oracle.tia(2, s, n_draws=1000).median_MBq_h}
            try:
                fit1 = tt.kinetics.fit_tac(t1, a1, nuclide="Lu-177")
                values["prior"] = _stp("prior", t2, a2, prior=fit1)
            except tt.TheraTwinError:
                values["prior"] = math.nan  # counted as an error > 10 % below
            for m, v in values.items():
                errors[m][s].append(v / true2 - 1.0 if math.isfinite(v) else math.inf)
    return ScenarioResult(
        name, {m: {s: np.asarray(v) for s, v in d.items()} for m, d in errors.items()},
        {s: float(np.mean(v)) for s, v in cov2.items()}, {s: float(np.mean(v)) for s, v in cov3.items()},
        {"kidneys": s_org, "lesion_1": s_les}, time.process_time() - t0)


def format_table(results: list[ScenarioResult]) -> str:
    lines = ["Share of cycle-2 TIAs with > 10 % error (RMS error) — 200 virtual patients per scenario",
             f"{'scenario':26s} {'structure':9s} {'twin':>14s} {'Hänscheid':>14s} {'Madsen':>14s} "
             f"{'prior-cycle':>14s} {'oracle':>14s} {'noise floor':>11s} {'PI cov c2/c3':>13s}"]
    for r in results:
        for s in STRUCTURES:
            cells = [f"{100 * r.share_over_10pct(m, s):5.1f}% ({100 * min(r.rms(m, s), 9.99):5.1f}%)" for m in METHODS]
            floor = 2 * (1 - ndtr(0.10 / r.noise[s]))
            lines.append(f"{r.name:26s} {s:9s} {cells[0]:>14s} {cells[1]:>14s} {cells[2]:>14s} {cells[3]:>14s} "
                         f"{cells[4]:>14s} {100 * floor:10.1f}% {100 * r.coverage_cycle2[s]:5.1f}/{100 * r.coverage_cycle3[s]:4.1f}%")
    lines.append("Published (177Lu-DOTATATE kidneys, Devasia 2021 via EJNMMI Phys 2023 s40658-023-00530-1): "
                 "Hänscheid 20 %, Madsen 17 %, mixed-effects 6 %; target twin <= 5 %.")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def results() -> list[ScenarioResult]:
    out = [run_scenario(name) for name in TESTED]
    print("\n" + format_table(out))
    return out


def test_twin_meets_target_where_noise_allows(results: list[ScenarioResult]) -> None:
    best = next(r for r in results if r.name == "PSMA 48h, low noise")
    assert best.share_over_10pct("twin", "kidneys") <= 0.05, format_table(results)
    for r in results:
        for s in STRUCTURES:
            if r.share_over_10pct("oracle", s) <= 0.025:
                assert r.share_over_10pct("twin", s) <= 0.05, (r.name, s, format_table(results))


def test_twin_is_close_to_the_floor(results: list[ScenarioResult]) -> None:
    """Within 4 points (kidneys) / 10 points (lesions) of the Bayes estimator that knows cycle 1 exactly."""
    for r in results:
        assert r.share_over_10pct("twin", "kidneys") <= r.share_over_10pct("oracle", "kidneys") + 0.04, r.name
        assert r.share_over_10pct("twin", "lesion_1") <= r.share_over_10pct("oracle", "lesion_1") + 0.10, r.name
        # and the floor is a floor: knowing cycle 1 exactly cannot make the RMS error much worse
        for s in STRUCTURES:
            assert r.rms("oracle", s) <= r.rms("twin", s) * 1.05, (r.name, s)


def test_twin_beats_single_time_point_methods(results: list[ScenarioResult]) -> None:
    for r in results:
        for s in STRUCTURES:
            for m in ("hanscheid", "madsen", "prior"):  # the oracle is not a method: it knows the truth of cycle 1
                assert r.share_over_10pct("twin", s) <= r.share_over_10pct(m, s), (r.name, s, m)
                assert r.rms("twin", s) < r.rms(m, s), (r.name, s, m)
    # by a wide margin against the published baseline method at its own protocol (96 h)
    r96 = next(r for r in results if r.name == "PSMA 96h, typical noise")
    assert r96.share_over_10pct("twin", "kidneys") < 0.5 * r96.share_over_10pct("hanscheid", "kidneys")


def test_prediction_intervals_are_calibrated(results: list[ScenarioResult]) -> None:
    """90 % intervals (cycle-2 estimate and cycle-3 prediction) cover the truth in 85-95 % of patients."""
    for r in results:
        for s in STRUCTURES:
            assert 0.85 <= r.coverage_cycle2[s] <= 0.95, (r.name, s, r.coverage_cycle2[s])
            assert 0.85 <= r.coverage_cycle3[s] <= 0.95, (r.name, s, r.coverage_cycle3[s])


def test_cohort_runs_in_budget(results: list[ScenarioResult]) -> None:
    """1000 twins (5 scenarios x 200 patients) fit, estimated and predicted in < 30 s of CPU."""
    assert sum(r.seconds for r in results) < 30.0


if __name__ == "__main__":
    print(format_table([run_scenario(name) for name in SCENARIOS]))
