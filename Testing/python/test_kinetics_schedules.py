"""Kinetics on the schedules clinics use (issue 13): 4 scans (4, 24, 48, 168 h) or 5 (1, 4, 24, 48, 168 h).

Every truth is a closed-form TIA, never the fit's own output:

- uptake-washout ``A(t) = A0 (exp(-lc t) - exp(-lu t))``, ``lc = ln2/T_eff``, ``lu = lc + ln2/T_up``:
  ``TIA = A0 (1/lc - 1/lu)`` (the uptake phase visible at or before the first scan);
- fast + slow washout ``A0 (f exp(-lf t) + (1 - f) exp(-ls t))``: ``TIA = A0 (f/lf + (1 - f)/ls)``;
- mono-exponential ``A0 exp(-l t)``: ``TIA = A0 / l``.

Structure fits (``fit_tac(model="auto")``) are checked without SDs (as a new user calls it) and with 5 % SDs
stated on the same noiseless samples (as the kinetics stage calls it: the fit is then told the samples may be off
by 5 %, and the prior-informed average is a Bayesian compromise, so the bounds there are the issue's noisy ones);
then on noisy realisations for bias and coverage. Voxel fits (``fit_voxels``) on the same curves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from theratwin.kinetics import fit_tac, fit_voxels

L2 = math.log(2.0)
FOUR = np.array([4.0, 24.0, 48.0, 168.0])
FIVE = np.array([1.0, 4.0, 24.0, 48.0, 168.0])
UPTAKE = [(t_up, t_eff) for t_up in (0.5, 1.0, 2.0, 3.0) for t_eff in (20.0, 40.0, 80.0, 150.0)]
FAST_SLOW = [(f, tf, ts) for f in (0.3, 0.4, 0.5) for tf in (5.0, 6.5, 8.0) for ts in (50.0, 65.0, 80.0)]
MONO = (10.0, 20.0, 40.0, 80.0, 150.0)


def uptake_washout(t_up: float, t_eff: float, a0: float = 100.0):
    lc = L2 / t_eff
    lu = lc + L2 / t_up
    return (lambda t: a0 * (np.exp(-lc * t) - np.exp(-lu * t))), a0 * (1.0 / lc - 1.0 / lu)


def fast_slow(f: float, t_fast: float, t_slow: float, a0: float = 100.0):
    lf, ls = L2 / t_fast, L2 / t_slow
    return (lambda t: a0 * (f * np.exp(-lf * t) + (1 - f) * np.exp(-ls * t))), a0 * (f / lf + (1 - f) / ls)


def mono(t_eff: float, a0: float = 100.0):
    lam = L2 / t_eff
    return (lambda t: a0 * np.exp(-lam * t)), a0 / lam


def _errors(cases, schedule, rel_sd):
    out = []
    for curve, tia in cases:
        a = curve(schedule)
        fit = fit_tac(schedule, a, activity_sd_MBq=None if rel_sd is None else rel_sd * a)
        assert fit.method in ("evidence_average", f"evidence:{fit.model}")
        out.append(fit.tia_MBq_h / tia - 1.0)
    return np.array(out)


@pytest.mark.parametrize("schedule", [FOUR, FIVE], ids=["4 scans", "5 scans"])
@pytest.mark.parametrize("rel_sd", [None, 0.05], ids=["no SDs", "5 % SDs"])
def test_uptake_washout_within_2_percent(schedule: np.ndarray, rel_sd: float | None) -> None:
    err = _errors([uptake_washout(u, e) for u, e in UPTAKE], schedule, rel_sd)
    assert np.max(np.abs(err)) <= 0.02, dict(zip(UPTAKE, np.round(100 * err, 2), strict=True))


@pytest.mark.parametrize("rel_sd", [None, 0.05], ids=["no SDs", "5 % SDs"])
def test_fast_plus_slow_washout_from_1_h_within_5_percent(rel_sd: float | None) -> None:
    err = _errors([fast_slow(*c) for c in FAST_SLOW], FIVE, rel_sd)
    assert np.max(np.abs(err)) <= 0.05, dict(zip(FAST_SLOW, np.round(100 * err, 2), strict=True))


@pytest.mark.parametrize("schedule", [FOUR, FIVE], ids=["4 scans", "5 scans"])
def test_mono_exponential_within_1_percent(schedule: np.ndarray) -> None:
    err = _errors([mono(e) for e in MONO], schedule, None)
    assert np.max(np.abs(err)) <= 0.01, dict(zip(MONO, np.round(100 * err, 2), strict=True))
    # told the samples may be off by 5 %, the average keeps some weight on an uptake phase (prior median 1 h)
    # the first scan cannot exclude: within 2 % (largest for the fastest clearance, T_eff = 10 h)
    err = _errors([mono(e) for e in MONO], schedule, 0.05)
    assert np.max(np.abs(err)) <= 0.02, dict(zip(MONO, np.round(100 * err, 2), strict=True))


def test_issue_table_and_honest_method() -> None:
    # the issue's three curves (errors before this work: +24 %, +22 %, -40 % with "fit:mono_exp")
    rows = [(uptake_washout(1.0, 40.0), FIVE), (uptake_washout(2.5, 55.0), FOUR), (fast_slow(0.5, 5.0, 80.0), FIVE)]
    for (curve, tia), t in rows:
        fit = fit_tac(t, curve(t))
        assert fit.tia_MBq_h == pytest.approx(tia, rel=0.005)
        assert fit.selection == "evidence" and fit.method == "evidence_average"
        assert sum(fit.model_weights.values()) == pytest.approx(1.0)
        assert fit.to_dict()["method_description"].startswith("prior-informed (MAP) fits")


NOISY = {
    "uptake-washout T_up 2 h, T_eff 40 h, 4 scans": (uptake_washout(2.0, 40.0), FOUR),
    "uptake-washout T_up 1 h, T_eff 80 h, 5 scans": (uptake_washout(1.0, 80.0), FIVE),
    "fast + slow 40 % 6.5 h / 60 % 65 h, 5 scans": (fast_slow(0.4, 6.5, 65.0), FIVE),
    "mono-exponential T_eff 60 h, 4 scans": (mono(60.0), FOUR),
}


def test_noisy_curves_unbiased_with_honest_sd() -> None:
    """5 % Gaussian noise, SDs given, 100 realisations per curve: mean TIA error within 2 % for each curve; +-1 SD
    covers the analytic TIA in 62-74 % of the 400 realisations together (binomial SD 2.3 %), and per curve within
    the 99 % binomial band of 100 draws around 68 % (56-80 %). The per-curve 62-74 % check on 400 realisations
    each is in Testing/benchmarks/test_bench_kinetics_schedules.py."""
    rng = np.random.default_rng(2026)
    covered_all = []
    for name, ((curve, tia), t) in NOISY.items():
        clean = curve(t)
        sd = 0.05 * clean
        est, sds = [], []
        for _ in range(100):
            fit = fit_tac(t, clean + sd * rng.standard_normal(t.size), activity_sd_MBq=sd)
            est.append(fit.tia_MBq_h)
            sds.append(fit.tia_sd_MBq_h)
        e, s = np.array(est), np.array(sds)
        covered = np.abs(e - tia) <= s
        covered_all.append(covered)
        assert abs(e.mean() / tia - 1) <= 0.02, (name, e.mean() / tia - 1)
        assert 0.56 <= covered.mean() <= 0.80, (name, covered.mean())
    assert 0.62 <= np.mean(np.concatenate(covered_all)) <= 0.74


def test_voxels_on_the_same_curves() -> None:
    # noiseless voxels: uptake-washout on 4 scans within 2 %, fast + slow on 4 and 5 scans within 5 %, mono within 1 %
    cases = [(uptake_washout(u, e), FOUR, 0.02) for u, e in UPTAKE]
    cases += [(fast_slow(*c), t, 0.05) for c in FAST_SLOW for t in (FOUR, FIVE)]
    cases += [(mono(e), t, 0.01) for e in MONO for t in (FOUR, FIVE)]
    for t in (FOUR, FIVE):
        sel = [(c, tol) for c, tt, tol in cases if tt is t]
        # one curve every other voxel: the noise scale is pooled over 3x3x3 neighbourhoods, and a neighbour's
        # misfit (fast + slow through one tail) must not count as this voxel's noise
        series = np.zeros((t.size, 2 * len(sel), 1, 1))
        series[:, ::2, 0, 0] = np.stack([c[0](t) for c, _ in sel], axis=1)
        vf = fit_voxels(t, series)
        err = vf.tia_Bq_h_per_mL[::2, 0, 0] / np.array([c[1] for c, _ in sel]) - 1
        tol = np.array([tol for _, tol in sel])
        assert np.all(np.abs(err) <= tol), np.round(100 * err[np.abs(err) > tol], 2)
        assert np.all(vf.model_map[::2] == 3)  # hybrid ("auto" with >= 3 scans)
