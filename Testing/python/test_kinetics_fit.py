"""Curve fitting: unbiased TIA with honest SDs on noisy data, AICc selection, and bad-input behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

import theratwin as tt
from theratwin.kinetics import aicc, fit_tac

LP = math.log(2.0) / tt.nuclides.get("Lu-177").half_life_h


def _realisations(curve, t, rel_sd, n, seed, model):
    rng = np.random.default_rng(seed)
    clean = curve(t)
    sd = rel_sd * clean
    tias, sds = [], []
    for _ in range(n):
        noisy = clean + sd * rng.standard_normal(t.size)
        fit = fit_tac(t, noisy, model=model, activity_sd_MBq=sd)
        tias.append(fit.tia_MBq_h)
        sds.append(fit.tia_sd_MBq_h)
    return np.array(tias), np.array(sds)


def test_mono_exponential_noisy_unbiased_and_sd_covers_68_percent() -> None:
    lam = LP + 0.015
    t = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
    tias, sds = _realisations(lambda x: 100 * np.exp(-lam * x), t, 0.05, 400, 1, "mono_exp")
    truth = 100 / lam
    assert abs(tias.mean() / truth - 1) < 0.02
    coverage = np.mean(np.abs(tias - truth) <= sds)
    assert 0.60 <= coverage <= 0.76, coverage


def test_biexponential_uptake_noisy_unbiased_and_sd_covers_68_percent() -> None:
    lc, lu = LP + 0.02, LP + 0.02 + 0.35
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    curve = lambda x: 200 * (np.exp(-lc * x) - np.exp(-lu * x))  # noqa: E731
    tias, sds = _realisations(curve, t, 0.05, 300, 2, "biexp_uptake")
    truth = 200 * (1 / lc - 1 / lu)
    assert abs(tias.mean() / truth - 1) < 0.02
    coverage = np.mean(np.abs(tias - truth) <= sds)
    assert 0.60 <= coverage <= 0.76, coverage


@pytest.mark.parametrize("selection", ["evidence", "aicc"])
def test_selection_picks_the_generating_model_most_of_the_time(selection: str) -> None:
    rng = np.random.default_rng(3)
    t = np.array([0.5, 1.0, 2.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    lc, lu = LP + 0.02, LP + 0.02 + 0.5
    up = 200 * (np.exp(-lc * t) - np.exp(-lu * t))
    mono = 150 * np.exp(-lc * t)
    picks_up, picks_mono = 0, 0
    cands = ["mono_exp", "biexp_uptake", "biexp"]
    for _ in range(40):
        f = fit_tac(t, up * (1 + 0.04 * rng.standard_normal(t.size)), activity_sd_MBq=0.04 * up, candidates=cands,
                    selection=selection)
        picks_up += f.model == "biexp_uptake"
        g = fit_tac(t, mono * (1 + 0.04 * rng.standard_normal(t.size)), activity_sd_MBq=0.04 * mono,
                    candidates=cands, selection=selection)
        picks_mono += g.model == "mono_exp"
        assert sum(g.model_weights.values()) == pytest.approx(1.0)
    assert picks_up >= 32 and picks_mono >= 28, (picks_up, picks_mono)


def test_model_average_combines_candidates_with_akaike_weights() -> None:
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    a = 100 * np.exp(-(LP + 0.01) * t) * np.array([0.97, 1.03, 1.0, 0.98, 1.02, 1.0])
    fit = fit_tac(t, a, activity_sd_MBq=0.03 * a, candidates=["mono_exp", "biexp"], selection="aicc")
    assert fit.method == "model_average" and fit.selection == "aicc"
    w = fit.model_weights
    expected = sum(w[m] * fit.candidates[m].tia_MBq_h for m in w)
    assert fit.tia_MBq_h == pytest.approx(expected)
    # Akaike weights from the AICc differences (Burnham & Anderson 2002 eq. 2.14)
    ics = {m: fit.candidates[m].aicc for m in w}
    best = min(ics.values())
    raw = {m: math.exp(-(ic - best) / 2) for m, ic in ics.items()}
    for m in w:
        assert w[m] == pytest.approx(raw[m] / sum(raw.values()))


def test_aicc_formula_and_undefined_case() -> None:
    assert aicc(3.0, 6, 2) == pytest.approx(3.0 + 4 + 12 / 3)
    assert aicc(3.0, 3, 2) is None


def test_refuses_model_with_more_parameters_than_points() -> None:
    t = np.array([4.0, 24.0, 96.0])
    with pytest.raises(tt.FitError, match="biexp.*3 time points"):
        fit_tac(t, [10.0, 8.0, 3.0], model="biexp")
    with pytest.raises(tt.FitError, match="single_time_point"):
        fit_tac([24.0], [5.0])


@pytest.mark.parametrize(
    ("times", "acts", "match"),
    [
        ([4.0, 24.0, 24.0], [3.0, 2.0, 1.0], "Duplicated"),
        ([4.0, 24.0, 48.0], [3.0, -2.0, 1.0], "Negative"),
        ([4.0, 24.0, 48.0], [3.0, float("nan"), 1.0], "NaN"),
        ([4.0, 24.0], [3.0, 2.0, 1.0], "3"),
        ([-1.0, 24.0, 48.0], [3.0, 2.0, 1.0], ">= 0"),
    ],
)
def test_bad_input_gives_clear_errors(times, acts, match) -> None:
    with pytest.raises(tt.InvalidInputError, match=match):
        fit_tac(times, acts)


def test_unsorted_times_are_sorted_and_reported() -> None:
    lam = LP + 0.02
    t = np.array([96.0, 4.0, 48.0, 24.0, 168.0])
    fit = fit_tac(t, 50 * np.exp(-lam * t), model="mono_exp")
    assert fit.tia_MBq_h == pytest.approx(50 / lam, rel=1e-6)
    assert any("sorted" in n for n in fit.notes)
    assert np.all(np.diff(fit.time_h) > 0)


def test_never_decreasing_curve_falls_back_to_physical_tail() -> None:
    t = np.array([4.0, 24.0, 48.0, 96.0])
    a = np.array([1.0, 2.0, 3.0, 4.0])
    fit = fit_tac(t, a, activity_sd_MBq=0.1 * a)
    assert fit.fallback and fit.model == "trapezoid"
    assert any("never decreases" in n for n in fit.notes)
    exact = 0.5 * 4 * 1 + 0.5 * 20 * 3 + 0.5 * 24 * 5 + 0.5 * 48 * 7 + 4.0 / LP
    assert fit.tia_MBq_h == pytest.approx(exact)


def test_all_zero_curve_reports_zero_tia_as_fallback() -> None:
    fit = fit_tac([4.0, 24.0, 48.0], [0.0, 0.0, 0.0], activity_sd_MBq=[0.1, 0.1, 0.1])
    assert fit.tia_MBq_h == 0.0 and fit.model == "zero" and fit.fallback
    assert fit.tia_sd_MBq_h > 0
    assert fit.notes


def test_too_few_points_for_aicc_uses_mono_exponential_and_says_so() -> None:
    lam = LP + 0.01
    t = np.array([4.0, 48.0, 168.0])
    fit = fit_tac(t, 10 * np.exp(-lam * t), activity_sd_MBq=[0.1, 0.1, 0.1], selection="aicc")
    assert fit.method == "fallback:mono_exp" and fit.selection == "none"
    assert any("no model selection happened" in n for n in fit.notes)
    assert fit.tia_MBq_h == pytest.approx(10 / lam, rel=1e-5)
    two = fit_tac([24.0, 96.0], [10.0, 5.0])
    assert two.method == "fallback:trapezoid_fitted_tail"


def test_covariance_inflated_when_data_scatter_more_than_stated() -> None:
    lam = LP + 0.02
    t = np.array([4.0, 24.0, 48.0, 96.0, 168.0, 240.0])
    a = 100 * np.exp(-lam * t) * np.array([1.2, 0.8, 1.2, 0.8, 1.2, 0.8])
    fit = fit_tac(t, a, model="mono_exp", activity_sd_MBq=0.01 * a)
    assert any("chi2" in n for n in fit.notes)
    unscaled = fit_tac(t, a, model="mono_exp", activity_sd_MBq=0.5 * a)
    assert fit.tia_sd_MBq_h > 0.2 * unscaled.tia_sd_MBq_h


def test_result_serialises_to_json() -> None:
    import json

    t = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
    fit = fit_tac(t, 100 * np.exp(-(LP + 0.02) * t), activity_sd_MBq=2.0 + 0 * t)
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["tia_MBq_h"] == pytest.approx(fit.tia_MBq_h)
    assert set(d["model_weights"]) == set(fit.model_weights)


def test_auto_without_uncertainties_estimates_the_error_scale() -> None:
    rng = np.random.default_rng(9)
    lam = LP + 0.02
    t = np.array([2.0, 4.0, 24.0, 48.0, 96.0, 168.0, 240.0])
    a = 100 * np.exp(-lam * t) * (1 + 0.02 * rng.standard_normal(t.size))
    fit = fit_tac(t, a, candidates=["mono_exp", "biexp_uptake"], selection="aicc")
    # the variance counts as a parameter: mono (k = 2 + 1) and biexp_uptake (3 + 1) are both eligible at n = 7
    assert set(fit.model_weights) == {"mono_exp", "biexp_uptake"}
    assert fit.model == "mono_exp"
    assert fit.tia_MBq_h == pytest.approx(100 / lam, rel=0.03)
    assert 0 < fit.tia_sd_MBq_h < 0.05 * fit.tia_MBq_h


def test_weighted_mono_exp_finds_the_global_minimum_of_a_two_phase_curve() -> None:
    """A fast-clearing curve with a small slow tail (bladder content plus spill-in, demo patient, cycle 1) and
    8.8 % SDs has two weighted least-squares minima; the fit must return the global one, found here by an
    exhaustive search over lambda with A0 profiled out (weighted linear least squares for each lambda)."""
    t = np.array([4.16, 24.17, 46.99, 167.82])
    a = np.array([350.96, 38.343, 3.5394, 0.093389])
    sd = 0.0877 * a
    lam_phys = tt.nuclides.get("Lu-177").decay_constant_per_h
    w = 1.0 / sd**2
    best_chi2 = np.inf
    for lam in np.geomspace(lam_phys * 1.0001, 2.0, 200_000):
        e = np.exp(-lam * t)
        a0 = np.sum(w * a * e) / np.sum(w * e * e)
        best_chi2 = min(best_chi2, float(np.sum(w * (a - a0 * e) ** 2)))
    fit = tt.kinetics.fit_tac(t, a, nuclide="Lu-177", model="mono_exp", activity_sd_MBq=sd)
    chi2 = float(np.sum(((fit.predict(t) - a) / sd) ** 2))
    assert chi2 <= best_chi2 * (1 + 1e-6)
    # the global minimum follows the fast phase that holds the activity (T_eff ~ 6.5 h, not ~ 21 h)
    assert 4.0 < fit.effective_half_life_h < 9.0


def test_evidence_selection_reports_weights_priors_and_evidence() -> None:
    t = np.array([4.0, 24.0, 48.0, 168.0])
    lc, lu = LP + 0.012, LP + 0.012 + math.log(2) / 2.0
    a = 100 * (np.exp(-lc * t) - np.exp(-lu * t))
    fit = fit_tac(t, a, activity_sd_MBq=0.05 * a)
    assert fit.selection == "evidence" and fit.method == "evidence_average"
    # four points with SDs: every model with at most four parameters competes (AICc would allow one)
    assert set(fit.model_weights) == {"mono_exp", "biexp_uptake", "biexp"}
    assert set(fit.log_evidence) == set(fit.model_weights)
    top = max(fit.log_evidence.values())
    raw = {m: math.exp(v - top) for m, v in fit.log_evidence.items()}
    for m in raw:
        assert fit.model_weights[m] == pytest.approx(raw[m] / sum(raw.values()))
    assert fit.priors is not None and set(fit.priors) >= {"uptake_half_time_h", "fast_fraction_logit"}
    assert all(fit.candidates[m].prior_informed for m in fit.candidates)
    assert fit.tia_MBq_h == pytest.approx(100 * (1 / lc - 1 / lu), rel=0.02)
    one = fit_tac(t, a, activity_sd_MBq=0.05 * a, average=False)
    assert one.method == f"evidence:{one.model}" and one.tia_MBq_h == one.candidates[one.model].tia_MBq_h


def test_model_given_with_priors_is_a_map_fit_and_says_so() -> None:
    t = np.array([24.0, 48.0, 168.0])
    lc = LP + 0.012
    a = 100 * np.exp(-lc * t)
    fit = fit_tac(t, a, model="biexp_uptake", activity_sd_MBq=0.03 * a, priors=tt.kinetics.KineticPriors())
    assert fit.method == "map:biexp_uptake" and fit.selection == "none" and fit.priors is not None
    # three points, three parameters: the uptake half-time comes from its prior (median 1 h), which subtracts
    # the prior's uptake deficit A0 / (lambda_c + ln2 / 1 h) from the washout integral
    assert fit.params["lambda_uptake_per_h"] - fit.params["lambda_eff_per_h"] == pytest.approx(math.log(2), rel=0.05)
    with pytest.raises(tt.FitError, match="needs at least 4"):
        fit_tac(t, a, model="biexp_uptake", priors=tt.kinetics.KineticPriors())  # no SDs: one more point


def test_bad_selection_and_priors_are_configuration_errors() -> None:
    t = np.array([4.0, 24.0, 48.0, 168.0])
    a = 100 * np.exp(-(LP + 0.01) * t)
    with pytest.raises(tt.ConfigurationError, match="selection"):
        fit_tac(t, a, selection="bic")
    with pytest.raises(tt.ConfigurationError, match="Unknown kinetic priors"):
        fit_tac(t, a, priors={"uptake_rate": 1.0})
    with pytest.raises(tt.ConfigurationError, match="median > 0"):
        fit_tac(t, a, priors={"uptake_half_time_h": {"median": -1.0, "log_sd": 1.0}})
    from theratwin.kinetics.stage import KineticsConfig

    with pytest.raises(tt.ConfigurationError, match="Unknown kinetic priors"):
        KineticsConfig(priors={"bogus": {}})


def test_plugin_without_priors_is_left_out_of_the_evidence_selection_with_a_note() -> None:
    from test_kinetics_models import _PhysicalDecayOnly

    tt.kinetics.KINETIC_MODELS.register("physical_only", _PhysicalDecayOnly())
    try:
        t = np.array([4.0, 24.0, 48.0, 168.0])
        a = 100 * np.exp(-(LP + 0.01) * t)
        fit = fit_tac(t, a, activity_sd_MBq=0.03 * a, candidates=["mono_exp", "biexp_uptake", "physical_only"])
        assert "physical_only" not in fit.model_weights
        assert any("physical_only (no priors" in n for n in fit.notes)
    finally:
        tt.kinetics.KINETIC_MODELS.unregister("physical_only")
