"""Kinetic models: exact TIAs on analytic curves, the physical-decay constraint, and plug-in models."""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest

import theratwin as tt
from theratwin.kinetics import KINETIC_MODELS, fit_tac
from theratwin.registry import Registry

LP = math.log(2.0) / tt.nuclides.get("Lu-177").half_life_h  # 1/h
T = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0, 336.0])


def test_mono_exponential_exact() -> None:
    lam = LP + 0.02
    a = 120.0 * np.exp(-lam * T)
    fit = fit_tac(T, a, model="mono_exp")
    assert fit.tia_MBq_h == pytest.approx(120.0 / lam, rel=1e-6)
    assert fit.params["A0_MBq"] == pytest.approx(120.0, rel=1e-6)
    assert fit.effective_half_life_h == pytest.approx(math.log(2) / lam, rel=1e-6)
    np.testing.assert_allclose(fit.predict(T), a, rtol=1e-6)


def test_biexponential_uptake_exact() -> None:
    lc, lu = LP + 0.015, LP + 0.015 + 0.4
    a = 80.0 * (np.exp(-lc * T) - np.exp(-lu * T))
    fit = fit_tac(T, a, model="biexp_uptake")
    assert fit.tia_MBq_h == pytest.approx(80.0 * (1 / lc - 1 / lu), rel=1e-6)
    assert fit.params["lambda_uptake_per_h"] == pytest.approx(lu, rel=1e-5)


def test_biexponential_exact() -> None:
    l1, l2 = LP + 0.01, LP + 0.2
    a = 50.0 * np.exp(-l1 * T) + 70.0 * np.exp(-l2 * T)
    fit = fit_tac(T, a, model="biexp")
    assert fit.tia_MBq_h == pytest.approx(50.0 / l1 + 70.0 / l2, rel=1e-6)


def test_triexponential_exact() -> None:
    t = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 24.0, 48.0, 96.0, 168.0, 336.0])
    l1, l2, l3 = LP + 0.01, LP + 0.1, LP + 1.0
    a1, a2 = 40.0, 60.0
    a = a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) - (a1 + a2) * np.exp(-l3 * t)
    fit = fit_tac(t, a, model="triexp")
    assert fit.tia_MBq_h == pytest.approx(a1 / l1 + a2 / l2 - (a1 + a2) / l3, rel=1e-5)


def test_trapezoid_with_physical_tail_exact_on_piecewise_linear_curve() -> None:
    # A(t) piecewise linear through the samples from A(0)=0, then physical decay: the rule is exact
    t = np.array([4.0, 24.0, 72.0])
    a = np.array([10.0, 30.0, 20.0])
    exact = 0.5 * 4 * 10 + 0.5 * 20 * (10 + 30) + 0.5 * 48 * (30 + 20) + 20.0 / LP
    fit = fit_tac(t, a, model="trapezoid", activity_sd_MBq=[1.0, 1.0, 1.0])
    assert fit.tia_MBq_h == pytest.approx(exact, rel=1e-12)
    # linear in the samples: SD = sqrt(sum (dTIA/dA_i)^2 sd_i^2) with dTIA/dA = (12, 34, 24 + 1/LP)
    assert fit.tia_sd_MBq_h == pytest.approx(math.sqrt(12**2 + 34**2 + (24 + 1 / LP) ** 2), rel=1e-6)
    assert fit.predict(np.array([100.0]))[0] == pytest.approx(20.0 * math.exp(-LP * 28.0))


def test_trapezoid_fitted_tail_uses_last_two_points_but_never_slower_than_physics() -> None:
    lam = LP + 0.03
    t = np.array([24.0, 48.0, 96.0])
    a = 50.0 * np.exp(-lam * t)
    fit = fit_tac(t, a, model="trapezoid_fitted_tail")
    assert fit.params["lambda_tail_per_h"] == pytest.approx(lam, rel=1e-9)
    rising = fit_tac(t, np.array([10.0, 20.0, 30.0]), model="trapezoid_fitted_tail")
    assert rising.params["lambda_tail_per_h"] == pytest.approx(LP)


@pytest.mark.parametrize("model", ["mono_exp", "biexp_uptake", "biexp"])
def test_clearance_never_slower_than_physical_decay(model: str) -> None:
    # data decaying slower than 177Lu itself (impossible): the fit stays at physical decay
    a = 100.0 * np.exp(-0.5 * LP * T)
    fit = fit_tac(T, a, model=model, activity_sd_MBq=0.02 * a)
    assert fit.params["lambda_eff_per_h"] >= LP * (1 - 1e-9)
    assert fit.params["lambda_bio_per_h"] >= 0.0


class _PhysicalDecayOnly:
    """A one-parameter plug-in: activity decays physically from A0 (no biological clearance)."""

    name = "physical_only"
    param_names = ("log_A0",)
    selectable = False

    def initial_guesses(self, time_h, activity_MBq, lambda_phys_per_h):
        return [np.array([math.log(float(activity_MBq[0]) * math.exp(lambda_phys_per_h * time_h[0]))])]

    def evaluate(self, theta, time_h, lambda_phys_per_h):
        return math.exp(theta[0]) * np.exp(-lambda_phys_per_h * np.asarray(time_h))

    def tia(self, theta, lambda_phys_per_h):
        return math.exp(theta[0]) / lambda_phys_per_h

    def physical_params(self, theta, lambda_phys_per_h):
        return {"A0_MBq": math.exp(theta[0])}

    def effective_half_life_h(self, theta, lambda_phys_per_h):
        return math.log(2) / lambda_phys_per_h


def test_plugin_model_registered_at_run_time_is_used_by_fit_tac() -> None:
    KINETIC_MODELS.register("physical_only", _PhysicalDecayOnly())
    try:
        a = 42.0 * np.exp(-LP * T)
        fit = fit_tac(T, a, model="physical_only", activity_sd_MBq=0.01 * a)
        assert fit.model == "physical_only"
        assert fit.tia_MBq_h == pytest.approx(42.0 / LP, rel=1e-6)
        assert isinstance(KINETIC_MODELS.get("physical_only"), tt.kinetics.KineticModel)
    finally:
        KINETIC_MODELS.unregister("physical_only")


def test_plugin_model_found_through_entry_point(tmp_path, monkeypatch) -> None:
    # a site package declaring [project.entry-points."theratwin.kinetic_models"] physical_only = ...
    pkg = tmp_path / "site_kinetics.py"
    pkg.write_text(textwrap.dedent('''
        import math
        import numpy as np

        class PhysicalOnly:
            name = "site_physical"
            param_names = ("log_A0",)
            selectable = False
            def initial_guesses(self, t, a, lp):
                return [np.array([math.log(float(a[0]) * math.exp(lp * t[0]))])]
            def evaluate(self, th, t, lp):
                return math.exp(th[0]) * np.exp(-lp * np.asarray(t))
            def tia(self, th, lp):
                return math.exp(th[0]) / lp
            def physical_params(self, th, lp):
                return {"A0_MBq": math.exp(th[0])}
            def effective_half_life_h(self, th, lp):
                return math.log(2) / lp
    '''))
    dist = tmp_path / "site_kinetics-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: site-kinetics\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[theratwin.kinetic_models]\nsite_physical = site_kinetics:PhysicalOnly\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[object] = Registry("theratwin.kinetic_models", "kinetic model")
    assert "site_physical" in reg
    model = tt.kinetics.get_model(reg.get("site_physical"))
    a = 10.0 * np.exp(-LP * T)
    fit = fit_tac(T, a, model=model, activity_sd_MBq=0.01 * a)
    assert fit.tia_MBq_h == pytest.approx(10.0 / LP, rel=1e-6)
    sys.modules.pop("site_kinetics", None)
