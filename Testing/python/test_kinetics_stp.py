"""Single-time-point methods: exact where the theory says they are, documented biases elsewhere."""

from __future__ import annotations

import math

import numpy as np
import pytest

import theratwin as tt
from theratwin.kinetics import fit_tac, hanscheid_ratio, single_time_point, single_time_point_estimate

LP = math.log(2.0) / tt.nuclides.get("Lu-177").half_life_h


def test_hanscheid_exact_at_t_equal_effective_half_life_and_twice_it() -> None:
    t_eff = 40.0
    lam = math.log(2) / t_eff
    for t in (t_eff, 2 * t_eff):
        a = 100 * math.exp(-lam * t)
        assert single_time_point(t, a, method="hanscheid") == pytest.approx(100 / lam, rel=1e-12)
    # maximal overestimate (+6.1 %) at t = T_eff / ln 2
    t = t_eff / math.log(2)
    assert single_time_point(t, 100 * math.exp(-lam * t)) / (100 / lam) == pytest.approx(2 / (math.log(2) * math.e))


def test_hanscheid_reports_expected_bias_when_t_eff_given() -> None:
    est = single_time_point_estimate(10.0, 5.0, method="hanscheid", effective_half_life_h=60.0)
    assert any("off by > 10 %" in n for n in est.notes)
    assert hanscheid_ratio(60.0, 60.0) == pytest.approx(1.0)


@pytest.mark.parametrize("t", [6.0, 24.0, 96.0, 200.0])
def test_madsen_exact_with_the_right_effective_half_life_at_any_time(t: float) -> None:
    t_eff = 50.0
    lam = math.log(2) / t_eff
    assert single_time_point(t, 80 * math.exp(-lam * t), method="madsen", effective_half_life_h=t_eff) == \
        pytest.approx(80 / lam, rel=1e-12)


def test_madsen_sd_from_half_life_uncertainty_vanishes_at_t_equal_one_over_lambda() -> None:
    t_eff = 50.0
    lam = math.log(2) / t_eff
    est = single_time_point_estimate(1 / lam, 10.0, method="madsen", effective_half_life_h=t_eff,
                                     effective_half_life_sd_h=5.0)
    assert est.tia_sd_MBq_h == pytest.approx(0.0, abs=1e-9)


def test_prior_informed_exact_when_kinetics_repeat() -> None:
    lc, lu = LP + 0.02, LP + 0.5
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    curve1 = 100 * (np.exp(-lc * t) - np.exp(-lu * t))
    prior = fit_tac(t, curve1, model="biexp_uptake", activity_sd_MBq=0.01 * curve1)
    # cycle 2: same rates, 30 % more uptake; one scan at 48 h
    a2 = 130 * (math.exp(-lc * 48) - math.exp(-lu * 48))
    tia2 = single_time_point(48.0, a2, method="prior", prior=prior)
    assert tia2 == pytest.approx(130 * (1 / lc - 1 / lu), rel=1e-5)


def test_invalid_inputs() -> None:
    with pytest.raises(tt.InvalidInputError, match="impossible"):
        single_time_point(24.0, 1.0, method="madsen", effective_half_life_h=500.0)
    with pytest.raises(tt.ConfigurationError, match="needs effective_half_life_h"):
        single_time_point(24.0, 1.0, method="madsen")
    with pytest.raises(tt.ConfigurationError, match="Unknown"):
        single_time_point(24.0, 1.0, method="guess")
    with pytest.raises(tt.InvalidInputError, match="> 0 h"):
        single_time_point(0.0, 1.0)


def test_prior_curve_rescaled_to_nearest_sample_carries_no_misfit() -> None:
    # cycle 1: a fast + slow curve fitted (on purpose) with one exponential, which misses its 48 h sample;
    # cycle 2: the same kinetics at 0.8 x the amplitude, scanned once at 48 h. Rescaled to the measured 48 h
    # sample the prior curve gives TIA_2 / TIA_1 = 0.8 exactly; the fitted curve alone carries its misfit
    t = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
    lf, ls = math.log(2) / 6.0, math.log(2) / 60.0
    curve = 60 * np.exp(-lf * t) + 40 * np.exp(-ls * t)
    prior = fit_tac(t, curve, model="mono_exp", activity_sd_MBq=0.03 * curve)
    a2 = 0.8 * curve[2]
    est = single_time_point_estimate(48.0, a2, method="prior", prior=prior)
    plain = single_time_point_estimate(48.0, a2, method="prior", prior=prior, rescale_to_nearest_sample=False)
    assert est.tia_MBq_h == pytest.approx(0.8 * prior.tia_MBq_h, rel=1e-9)
    assert est.rescale_time_h == 48.0 and est.rescale_factor == pytest.approx(curve[2] / prior.predict([48.0])[0])
    assert abs(plain.tia_MBq_h / (0.8 * prior.tia_MBq_h) - 1) > 0.05
    assert any("rescaled to its sample at 48.0 h" in n for n in est.notes)
    # the sample's random SD (3 %) enters the estimate's SD
    assert est.tia_sd_MBq_h > plain.tia_sd_MBq_h * est.tia_MBq_h / plain.tia_MBq_h
