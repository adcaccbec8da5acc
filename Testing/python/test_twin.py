"""Digital twin: analytic kinetics and BED, Bayesian update, predictions, recommendation, state, plug-ins."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest
from scipy.integrate import dblquad, quad

import theratwin as tt
from theratwin.twin import (
    OUTCOME_MODELS,
    TWIN_MODELS,
    KineticPriorSpec,
    LogisticDoseResponse,
    MeasurementErrorModel,
    PatientTwin,
    StructurePrior,
    lea_catcheside_g,
    make_cohort,
    tia_from_exponentials,
)

LAM_LU = tt.nuclides.get("Lu-177").decay_constant_per_h


def _biexp(u: float, lam_w: float, lam_u: float, a0: float = 7400.0):
    return lambda t: a0 * u * (np.exp(-lam_w * t) - np.exp(-lam_u * t))


class TestClosedForms:
    def test_tia_matches_numerical_integral(self) -> None:
        coef = np.array([240.0, -240.0])
        rate = np.array([0.0173, 0.46])
        ref, _ = quad(lambda t: float(np.sum(coef * np.exp(-rate * t))), 0, np.inf, limit=200)
        assert tia_from_exponentials(coef, rate) == pytest.approx(ref, rel=1e-9)

    def test_g_factor_mono_exponential_is_lambda_over_lambda_plus_mu(self) -> None:
        lam, mu = 0.02, math.log(2) / 2.8
        g = lea_catcheside_g(np.array([1.0]), np.array([lam]), mu)
        assert g == pytest.approx(lam / (lam + mu), rel=1e-12)  # Dale 1985

    def test_g_factor_biexponential_matches_double_integral(self) -> None:
        coef = np.array([1.0, -1.0])
        rate = np.array([0.0173, 0.46])
        mu = math.log(2) / 2.8

        def rdot(t: float) -> float:
            return float(np.sum(coef * np.exp(-rate * t)))

        inner, _ = dblquad(lambda w, t: rdot(t) * rdot(w) * math.exp(-mu * (t - w)), 0, 2000, 0, lambda t: t,
                           epsabs=1e-10, epsrel=1e-10)
        d = tia_from_exponentials(coef, rate)
        assert lea_catcheside_g(coef, rate, mu) == pytest.approx(2 * inner / d**2, rel=1e-5)

    def test_twin_bed_equals_project_radiobiology(self) -> None:
        """The twin's vectorised BED agrees with theratwin.radiobiology for the same kinetics."""
        rb = pytest.importorskip("theratwin.radiobiology")
        coef = np.array([1.0, -1.0])
        rate = np.array([0.0173, 0.46])
        g = lea_catcheside_g(coef, rate, math.log(2) / 2.8)
        d = 20.0
        ours = d + g * d * d / 2.6
        theirs = rb.bed_multiexponential(d, coef, math.log(2) / rate, alpha_beta_Gy=2.6, repair_half_time_h=2.8)
        assert ours == pytest.approx(theirs, rel=1e-9)


def _dense_twin(u: float = 0.03, t_eff_h: float = 40.0, t_up_h: float = 1.5, noise: float = 0.0,
                seed: int = 0) -> tuple[PatientTwin, float]:
    lam_w = math.log(2) / t_eff_h
    lam_u = lam_w + math.log(2) / t_up_h
    f = _biexp(u, lam_w, lam_u)
    rng = np.random.default_rng(seed)
    twin = PatientTwin("Lu-177", "PSMA-617")
    t = np.array([1.0, 4, 24, 48, 72, 96, 168])
    for c in (1, 2):
        y = f(t) * (1 + noise * rng.standard_normal(t.size))
        twin.observe(c, "kidneys", t, y, 7400.0)
    return twin, 7400.0 * u * (1 / lam_w - 1 / lam_u)


class TestBayesianUpdate:
    def test_dense_exact_data_recover_tia(self) -> None:
        twin, true = _dense_twin()
        est = twin.tia(1, "kidneys")
        assert est.mean_MBq_h == pytest.approx(true, rel=0.01)
        assert est.low_MBq_h < true < est.high_MBq_h
        assert twin.posterior().converged.all()

    def test_more_data_narrow_the_interval(self) -> None:
        twin = PatientTwin("Lu-177", "PSMA-617")
        twin.observe(1, "kidneys", [96.0], [60.0], 7400.0)
        wide = twin.tia(1, "kidneys")
        twin.observe(1, "kidneys", [4, 24, 48, 96], [200.0, 170.0, 110.0, 60.0], 7400.0)
        narrow = twin.tia(1, "kidneys")
        assert narrow.sd_MBq_h < 0.5 * wide.sd_MBq_h

    def test_single_point_cycle_follows_its_measurement(self) -> None:
        """Cycle 2 measured 30 % higher than cycle 1 predicts: the estimate moves most of the way there."""
        twin, true = _dense_twin()
        lam_w = math.log(2) / 40.0
        base = _biexp(0.03, lam_w, lam_w + math.log(2) / 1.5)(96.0)
        twin.observe(2, "kidneys", [96.0], [1.3 * base], 7400.0)
        est = twin.tia(2, "kidneys").mean_MBq_h
        assert 1.15 * true < est < 1.35 * true
        # the patient level (cycle 1) is barely pulled by one point of another cycle
        assert twin.tia(1, "kidneys").mean_MBq_h == pytest.approx(true, rel=0.05)

    def test_gap_cycles_and_unplanned_cycles(self) -> None:
        """Cycles 1 and 3 imaged, 2 not: cycle 3 is estimated; an unknown cycle needs a plan."""
        twin, true = _dense_twin()
        twin.observations.pop((2, "kidneys"))
        lam_w = math.log(2) / 40.0
        twin.observe(3, "kidneys", [96.0], [_biexp(0.03, lam_w, lam_w + math.log(2) / 1.5)(96.0)], 7400.0)
        assert twin.tia(3, "kidneys").mean_MBq_h == pytest.approx(true, rel=0.05)
        with pytest.raises(tt.InvalidInputError, match="twin.plan"):
            twin.tia(5, "kidneys")
        twin.plan(5, 3700.0)
        assert twin.tia(5, "kidneys").mean_MBq_h == pytest.approx(0.5 * true, rel=0.15)

    def test_activity_scaling_and_observe_validation(self) -> None:
        twin, _ = _dense_twin()
        p1 = twin.predict(3, 3700.0, n_draws=4000)
        p2 = twin.predict(3, 7400.0, n_draws=4000)
        # same draws (same seed): the linear model scales TIA and dose exactly with activity
        assert p2["kidneys"].tia_MBq_h.mean == pytest.approx(2 * p1["kidneys"].tia_MBq_h.mean, rel=1e-9)
        assert p2["kidneys"].bed_Gy.mean > 2 * p1["kidneys"].bed_Gy.mean  # quadratic term of the BED
        with pytest.raises(tt.InvalidInputError, match="one activity per time"):
            twin.observe(3, "kidneys", [1, 2], [3.0], 7400.0)
        with pytest.raises(tt.InvalidInputError, match="times must be > 0"):
            twin.observe(3, "kidneys", [0.0], [3.0], 7400.0)
        with pytest.raises(tt.InvalidInputError, match="administered_MBq"):
            twin.observe(3, "kidneys", [1.0], [3.0], -5.0)
        with pytest.raises(tt.InvalidInputError, match="one cycle has one administration"):
            twin.observe(1, "liver", [24.0], [100.0], 6000.0)
        with pytest.raises(tt.ConfigurationError, match="No built-in twin prior"):
            PatientTwin("Lu-177", "radium chloride")


class TestPredictAndRecommend:
    @pytest.fixture(scope="class")
    def twin(self) -> PatientTwin:
        cohort = make_cohort(1, structures=("kidneys", "parotid_glands", "red_marrow", "lesion_1"), seed=5)
        p = cohort.patients[0]
        twin = PatientTwin("Lu-177", "PSMA-617")
        for c, d in p.measurements.items():
            for s, (t, y) in d.items():
                twin.observe(c, s, t, y, 7400.0, mass_g=p.mass_g[s])
        return twin

    def test_cumulative_is_sum_of_cycles(self, twin: PatientTwin) -> None:
        pred = twin.predict(3, 7400.0, n_draws=20000, keep_draws=True)
        means = [twin.predict(c, 7400.0, n_draws=20000, seed=100 + c)["kidneys"].bed_Gy.mean for c in (1, 2, 3)]
        assert pred["kidneys"].cumulative_bed_Gy.mean == pytest.approx(sum(means), rel=0.02)
        d = pred.draws
        assert d is not None
        assert np.all(d["cumulative_bed_Gy"] >= d["bed_Gy"])
        # EQD2 = BED/(1 + 2/(α/β)), cumulative
        ab = pred["kidneys"].alpha_beta_Gy
        assert np.allclose(d["cumulative_eqd2_Gy"][0], d["cumulative_bed_Gy"][0] / (1 + 2 / ab))
        # 90 % interval brackets the median and holds ~90 % of the draws
        iv = pred["kidneys"].dose_Gy
        inside = np.mean((d["dose_Gy"][0] >= iv.low) & (d["dose_Gy"][0] <= iv.high))
        assert inside == pytest.approx(0.9, abs=0.005)

    def test_trajectory_of_planned_cycles(self, twin: PatientTwin) -> None:
        pred = twin.predict(6, 7400.0, n_draws=5000)
        traj = pred.cumulative_by_cycle
        assert traj is not None and sorted(traj) == [1, 2, 3, 4, 5, 6]
        means = [traj[c]["kidneys"]["cumulative_bed_Gy"].mean for c in range(1, 7)]
        assert all(b > a for a, b in zip(means, means[1:], strict=False))
        assert traj[6]["kidneys"]["cumulative_bed_Gy"] == pred["kidneys"].cumulative_bed_Gy
        # future cycles carry fresh inter-occasion variability: the interval widens with the horizon
        width = [traj[c]["kidneys"]["cumulative_bed_Gy"].high - traj[c]["kidneys"]["cumulative_bed_Gy"].low
                 for c in (3, 6)]
        assert width[1] > width[0]

    def test_recommendation_sits_at_the_quantile_not_the_mean(self, twin: PatientTwin) -> None:
        limits = {"kidneys": {"quantity": "bed", "value_Gy": 12.0, "reference": "test"}, "red_marrow": None,
                  "parotid_glands": None}
        r90 = twin.recommend_activity(3, limits=limits, confidence=0.9)
        r50 = twin.recommend_activity(3, limits=limits, confidence=0.5)
        assert r90.status == "ok" and r90.limiting_structure == "kidneys"
        assert 0 < r90.administered_MBq < r50.administered_MBq
        # at the recommended activity the 90 % quantile of cumulative kidney BED is the limit (to the 1 MBq step)
        assert r90.predicted_at_limit_quantile_Gy["kidneys"] == pytest.approx(12.0, abs=0.01)
        assert r90.predicted_cumulative["kidneys"].mean < 12.0
        # more cycles share the remaining budget: equal activity per cycle decreases with the number of cycles
        acts = [r90.equal_activity_per_cycle_MBq[n] for n in sorted(r90.equal_activity_per_cycle_MBq)]
        assert all(a >= b for a, b in zip(acts, acts[1:], strict=False))
        assert "lesion_1" in r90.lesion_dose_Gy and r90.responder_probability is not None
        assert 0.0 <= r90.responder_probability.low <= r90.responder_probability.high <= 1.0
        assert "RESEARCH USE" in r90.to_dict()["notice"]

    def test_limit_already_reached(self, twin: PatientTwin) -> None:
        rec = twin.recommend_activity(3, limits={"kidneys": 0.5, "red_marrow": None, "parotid_glands": None})
        assert rec.administered_MBq == 0.0 and rec.status == "limit_reached"

    def test_forecast_probabilities_with_uncertainty(self, twin: PatientTwin) -> None:
        fc = twin.forecast(3, 7400.0)
        kid = fc["toxicity"]["kidneys"]["probability"]
        assert 0.0 <= kid["low"] <= kid["mean"] <= kid["high"] <= 1.0
        assert fc["response"]["probability"]["high"] > fc["response"]["probability"]["low"]
        assert "RESEARCH USE" in fc["notice"]
        # more activity -> higher toxicity and response probabilities
        fc2 = twin.forecast(3, 20000.0)
        assert fc2["toxicity"]["parotid_glands"]["probability"]["mean"] > fc["toxicity"]["parotid_glands"]["probability"]["mean"]
        assert fc2["response"]["probability"]["mean"] >= fc["response"]["probability"]["mean"]


class TestState:
    def test_json_round_trip_reproduces_predictions(self) -> None:
        twin, _ = _dense_twin(noise=0.05, seed=3)
        twin.plan(3, 6000.0)
        text = twin.to_json()
        d = json.loads(text)
        assert d["schema"] == "theratwin-twin/2" and "RESEARCH USE" in d["notice"]
        back = PatientTwin.from_json(text)
        assert back.tia(2, "kidneys") == twin.tia(2, "kidneys")
        a = twin.predict(3).to_dict()
        b = back.predict(3).to_dict()
        assert a == b and a["administered_MBq"] == 6000.0
        np.testing.assert_allclose(np.asarray(d["posterior"]["mode"]), back.posterior().mode, rtol=1e-10)

    def test_version_1_state_is_still_read(self) -> None:
        """A twin saved by the first schema (no correlated error, no priors/protocol fields) restores as it was."""
        twin, _ = _dense_twin(noise=0.05, seed=3)
        d = json.loads(twin.to_json())
        d["schema"] = "theratwin-twin/1"
        d["measurement"] = {"proportional_sd": 0.05, "lesion_proportional_sd": 0.08, "additive_sd_MBq": 0.05}
        for k in ("priors", "conflict_sd", "conflict_handling", "protocol"):
            d.pop(k)
        back = PatientTwin.from_dict(d)
        assert back.measurement is not None and back.measurement.correlated_sd == 0.0
        assert back.protocol == twin.protocol
        assert back.tia(2, "kidneys").mean_MBq_h == pytest.approx(twin.tia(2, "kidneys").mean_MBq_h, rel=0.02)

    def test_site_priors_travel_with_the_state(self, tmp_path) -> None:
        from theratwin.twin import builtin_priors

        data = builtin_priors("PSMA-617").to_dict()
        data["structures"]["kidneys"]["mean"][0] += 0.5  # a site whose kidneys take up 65 % more
        path = tmp_path / "site.json"
        path.write_text(json.dumps(data))
        twin = PatientTwin("Lu-177", "PSMA-617", priors=path)
        twin.observe(1, "kidneys", [96.0], [60.0], 7400.0, mass_g=300.0)
        back = PatientTwin.from_json(twin.to_json())
        assert back.priors is not None and back.priors.origin == str(path)
        assert back.tia(1, "kidneys") == twin.tia(1, "kidneys")
        assert twin.summary()["structures"]["kidneys"]["prior_source"] == f"{path}: kidneys"

    def test_unknown_schema_is_refused(self) -> None:
        twin, _ = _dense_twin()
        d = json.loads(twin.to_json())
        d["schema"] = "theratwin-twin/99"
        with pytest.raises(tt.InvalidInputError, match="theratwin-twin/99"):
            PatientTwin.from_json(json.dumps(d))
        with pytest.raises(tt.InvalidInputError, match="not valid JSON"):
            PatientTwin.from_json("{")


class MonoExponentialPlugin:
    """An outside twin model: mono-exponential washout, η = (ln U, ln λ_bio)."""

    name = "monoexp_test"
    n_params = 2

    def prior(self, structure, radiopharmaceutical, nuclide, overrides) -> StructurePrior:
        spec = KineticPriorSpec(0.5, 310.0, 40.0, 1.0, 0.4, 0.2)
        return StructurePrior(np.array([math.log(0.03), math.log(0.013)]), np.diag([0.16, 0.09]),
                              np.diag([0.01, 0.01]), spec)

    def exponentials(self, eta, administered_MBq, ligand_nmol, structures, lambda_phys_per_h):
        amp = np.asarray(administered_MBq, float) * np.exp(eta[..., 0])
        lam = lambda_phys_per_h + np.exp(eta[..., 1])
        return amp[..., None], lam[..., None]


class TestPlugins:
    def test_outside_twin_model_and_outcome_model(self) -> None:
        TWIN_MODELS.register("monoexp_test", MonoExponentialPlugin)
        OUTCOME_MODELS.register("logistic_test", LogisticDoseResponse("logistic_test", 1.0, 2.0, "dose", "test"))
        try:
            # exact data and no correlated (calibration) error: the fit must return the curve it was given
            twin = PatientTwin("Lu-177", "PSMA-617", model="monoexp_test",
                               measurement=MeasurementErrorModel(correlated_sd=0.0, lesion_correlated_sd=0.0))
            lam = LAM_LU + 0.01
            t = np.array([24.0, 48, 96, 168])
            twin.observe(1, "kidneys", t, 7400 * 0.025 * np.exp(-lam * t), 7400.0)
            twin.observe(1, "lesion_1", t, 7400 * 0.005 * np.exp(-lam * t), 7400.0)
            assert twin.tia(1, "kidneys").mean_MBq_h == pytest.approx(7400 * 0.025 / lam, rel=0.01)
            fc = twin.forecast(2, 7400.0, response_model="logistic_test")
            assert fc["response"]["model"]["name"] == "logistic_test"
            state = PatientTwin.from_json(twin.to_json())
            assert state.model_name == "monoexp_test"
        finally:
            TWIN_MODELS.unregister("monoexp_test")
            OUTCOME_MODELS.unregister("logistic_test")

    def test_outside_model_runs_through_the_pipeline(self, tmp_path) -> None:
        TWIN_MODELS.register("monoexp_test", MonoExponentialPlugin)
        try:
            res, ctx = _run_twin_pipeline(tmp_path, {"model": "monoexp_test"})
        finally:
            TWIN_MODELS.unregister("monoexp_test")
        assert res.twin is not None and res.twin["model"]["model"] == "monoexp_test"
        assert ctx.state.twin.model_name == "monoexp_test"


# ---------------------------------------------------------------------------------------------- stage
def _two_cycle_study() -> tt.Study:
    geo = tt.Geometry(shape=(4, 4, 4), spacing_mm=(4.8, 4.8, 4.8), origin_mm=(0.0, 0.0, 0.0))
    cycles = []
    for n, times in ((1, (4.0, 24.0, 48.0, 96.0)), (2, (96.0,))):
        start = datetime(2026, 3, 2, 9) + timedelta(weeks=6 * (n - 1))
        adm = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
        tps = [tt.TimePoint(tt.ImageVolume.from_geometry(np.ones(geo.shape, np.float32), geo, "Bq/mL"),
                            start + timedelta(hours=h), 1200.0) for h in times]
        cycles.append(tt.Cycle(n, adm, tps))
    mask = np.zeros(geo.shape, bool)
    mask[1:3, 1:3, 1:3] = True
    seg = tt.Segmentation(geo, [tt.Structure("kidneys", 1), tt.Structure("lesion_1", 2)],
                          {"kidneys": mask, "lesion_1": ~mask})
    return tt.Study(tt.Patient("TT-TWIN-1"), cycles, seg)


class _FakeKinetics:
    """Stands in for the kinetics stage: writes a virtual patient's TACs into the results (the patient, with its
    truth, is kept in ``truth``)."""

    name = "kinetics"
    requires = ()
    truth = None

    def run(self, ctx) -> None:
        p = make_cohort(1, structures=("kidneys", "lesion_1"), seed=21).patients[0]
        type(self).truth = p
        for c, d in p.measurements.items():
            for s, (t, y) in d.items():
                sr = ctx.results.cycles[c].structure(s)
                sr.time_h, sr.activity_MBq = [float(v) for v in t], [float(v) for v in y]
                sr.mass_g = p.mass_g[s]


def _run_twin_pipeline(tmp_path, options=None):
    """Run ("kinetics" = the stand-in, "twin") and restore the real kinetics stage afterwards."""
    from theratwin.pipeline import STAGES, Pipeline, PipelineConfig
    from theratwin.pipeline.core import load_builtin_stages

    load_builtin_stages()
    original = STAGES.get("kinetics") if "kinetics" in STAGES else None
    STAGES.register("kinetics", _FakeKinetics, replace=True)
    try:
        pipe = Pipeline(PipelineConfig(stages=("kinetics", "twin"), stage_options={"twin": dict(options or {})}))
        res = pipe.run(_two_cycle_study(), out_dir=tmp_path)
    finally:
        if original is not None:
            STAGES.register("kinetics", original, replace=True)
        else:
            STAGES.unregister("kinetics")
    return res, pipe.last_context


class TestStage:
    def test_pbpk_model_with_patient_fit_in_the_pipeline(self, tmp_path) -> None:
        res, ctx = _run_twin_pipeline(tmp_path, {"model": "pbpk_psma", "n_draws": 2000})
        fit = res.twin["pbpk"]["patient_fit"]
        assert fit is not None and set(fit["scales"]) == {"kidneys", "tumour"}
        from theratwin.twin import PSMAPBPKParameters

        population = PSMAPBPKParameters().receptor_nmol["kidneys"]
        assert ctx.state.twin.model.pbpk.p.receptor_nmol["kidneys"] == pytest.approx(
            population * fit["scales"]["kidneys"]["receptor"])


    def test_pipeline_writes_estimates_prediction_state(self, tmp_path) -> None:
        res, ctx = _run_twin_pipeline(tmp_path)
        p = _FakeKinetics.truth
        tw = res.twin
        assert tw is not None and "RESEARCH USE" in tw["notice"]
        est = res.cycles[2].structures["kidneys"].estimated_by_twin
        assert est is not None and est["low"] < est["tia_MBq_h"] < est["high"]
        # the estimate is close to the virtual patient's truth (and its interval is honest about it)
        assert est["tia_MBq_h"] == pytest.approx(p.true_tia_MBq_h[2]["kidneys"], rel=0.25)
        assert res.cycles[1].structures["kidneys"].estimated_by_twin is None  # fully imaged cycle
        assert tw["prediction"]["cycle"] == 3
        assert sorted(tw["trajectory"]["cumulative_by_cycle"], key=int) == [str(c) for c in range(1, 7)]
        assert set(tw["prediction"]["structures"]) == {"kidneys", "lesion_1"}
        assert tw["recommendation"]["administered_MBq"] > 0
        assert "kidneys" in tw["forecast"]["toxicity"]
        state = (tmp_path / "twin-state.json").read_text()
        assert res.outputs["twin_state"] == "twin-state.json"
        back = PatientTwin.from_json(state)
        assert back.tia(2, "kidneys").mean_MBq_h == pytest.approx(est["tia_MBq_h"], rel=1e-12)
        assert isinstance(ctx.state.twin, PatientTwin)
        data = json.loads((tmp_path / "results.json").read_text())
        assert data["twin"]["prediction"]["structures"]["kidneys"]["cumulative_bed_Gy"]["high"] > 0
        assert any(m["stage"] == "twin" for m in data["methods"])
        # only kinetics ran before the twin: it still works and says what it did instead
        assert any(w.stage == "twin" and "radiobiology" in w.message for w in res.warnings)


def _exact_posterior_tia2(twin: PatientTwin, p, structure: str, rel_sd: float, corr_sd: float,
                          n: int = 40000, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Cycle-2 TIA draws of the twin's Laplace Gaussian with exact importance weights, computed here.

    The model written out: x = (θ, κ₁, κ₂, δ₁, δ₂), θ ~ N(μ, Ω), κ_k ~ N(0, Γ), δ_k ~ N(0, σ_c²) (one log-scale
    measurement factor per cycle shared by its scans), ln y_j ~ N(ln A(t_j; θ + κ_k) + δ_k, s_j²). Returns the
    (unweighted) Laplace draws of the cycle-2 TIA, the normalised weights, and the ESS.
    """
    from theratwin.twin.model import log_normal_sd

    fit = twin.fitted()
    post = fit.laplace
    i = fit.structures.index(structure)
    prior = fit.priors[i]
    mode, cov = post.mode[i], post.cov[i]
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov)
    z = rng.standard_normal((n, mode.size))
    x = mode + z @ chol.T
    log_q = -0.5 * np.sum(z * z, axis=1)
    omega_inv = np.linalg.inv(prior.iiv_cov)
    gamma_inv = np.linalg.inv(prior.iov_cov)
    sigma_c = math.sqrt(math.log1p(corr_sd ** 2))
    theta = x[:, :3]
    lp = -0.5 * np.einsum("ni,ij,nj->n", theta - prior.mean, omega_inv, theta - prior.mean)
    tia2 = np.zeros(n)
    for k, c in enumerate((1, 2)):
        kappa = x[:, 3 + 3 * k: 6 + 3 * k]
        delta = x[:, 9 + k]
        lp += -0.5 * np.einsum("ni,ij,nj->n", kappa, gamma_inv, kappa) - 0.5 * (delta / sigma_c) ** 2
        eta = theta + kappa
        u, lam_w = np.exp(eta[:, 0]), LAM_LU + np.exp(eta[:, 1])
        lam_u = lam_w + np.exp(eta[:, 2])
        t, y = p.measurements[c][structure]
        a = 7400.0 * u[:, None] * (np.exp(-lam_w[:, None] * t) - np.exp(-lam_u[:, None] * t))
        s = log_normal_sd(y, np.zeros_like(y), rel_sd, 0.05)
        lp += -0.5 * np.sum(((np.log(y) - np.log(a) - delta[:, None]) / s) ** 2, axis=1)
        if c == 2:
            tia2 = 7400.0 * u * (1 / lam_w - 1 / lam_u)
    logw = lp - log_q
    w = np.exp(logw - logw.max())
    w /= w.sum()
    return tia2, w, z, float(1.0 / np.sum(w * w))


def _weighted_quantiles(values: np.ndarray, w: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    order = np.argsort(values)
    cdf = np.cumsum(w[order])
    return [float(values[order][np.searchsorted(cdf, q)]) for q in qs]


class TestLaplaceApproximation:
    def test_laplace_matches_importance_sampled_exact_posterior(self) -> None:
        """The twin's posterior agrees with the exact posterior, computed independently here by importance
        sampling (proposal: the Laplace Gaussian, weights: exact log posterior − proposal)."""
        p = make_cohort(1, structures=("kidneys",), proportional_sd=0.05, seed=17).patients[0]
        twin = PatientTwin("Lu-177", "PSMA-617", measurement=MeasurementErrorModel(0.05, 0.08, 0.05, 0.08, 0.1))
        for c, d in p.measurements.items():
            t, y = d["kidneys"]
            twin.observe(c, "kidneys", t, y, 7400.0, mass_g=310.0)
        post = twin.posterior()
        assert post.n_correlated == 2 and post.mode.shape == (1, 3 * 3 + 2)
        tia2, w, _, ess = _exact_posterior_tia2(twin, p, "kidneys", 0.05, 0.08)
        n = tia2.size
        print(f"\nimportance sampling: ESS {ess:.0f} of {n}")
        assert ess > 0.3 * n  # the Gaussian is a good proposal: the posterior is close to Laplace
        exact_mean = float(np.sum(w * tia2))
        lo, hi = _weighted_quantiles(tia2, w, (0.05, 0.95))
        est = twin.tia(2, "kidneys", n_draws=20000)
        print(f"exact mean {exact_mean:.0f} [{lo:.0f}, {hi:.0f}]; twin {est.mean_MBq_h:.0f} [{est.low_MBq_h:.0f}, {est.high_MBq_h:.0f}]")
        assert est.mean_MBq_h == pytest.approx(exact_mean, rel=0.01)
        assert est.low_MBq_h == pytest.approx(lo, rel=0.02)
        assert est.high_MBq_h == pytest.approx(hi, rel=0.02)
        # the correlated factor is what widens the interval: the same data without it give a narrower one
        indep = PatientTwin("Lu-177", "PSMA-617", measurement=MeasurementErrorModel(0.05, 0.08, 0.05, 0.0, 0.0))
        for c, d in p.measurements.items():
            indep.observe(c, "kidneys", *d["kidneys"], 7400.0, mass_g=310.0)
        assert indep.tia(2, "kidneys").sd_MBq_h < 0.9 * est.sd_MBq_h

    def test_resampled_draws_follow_the_exact_posterior_where_the_gaussian_is_off(self) -> None:
        """Lesions imaged once in cycle 2 (one late scan fixes uptake x washout along a curved ridge): the twin's
        importance-resampled draws give the exact posterior mean within 1 %, never further from it than the
        plain Laplace Gaussian, over several patients."""
        cohort = make_cohort(6, structures=("lesion_1",), lesion_proportional_sd=0.08, lesion_correlated_sd=0.1,
                             lesion_mass_cv=0.8, seed=29)
        gaussian_err, twin_err = [], []
        for p in cohort.patients:
            twin = PatientTwin("Lu-177", "PSMA-617", measurement=MeasurementErrorModel(0.05, 0.08, 0.05, 0.05, 0.1))
            for c, d in p.measurements.items():
                twin.observe(c, "lesion_1", *d["lesion_1"], 7400.0, mass_g=p.mass_g["lesion_1"])
            tia2, w, _, ess = _exact_posterior_tia2(twin, p, "lesion_1", 0.08, 0.1)
            assert ess > 0.1 * tia2.size
            exact = float(np.sum(w * tia2))
            gaussian_err.append(abs(float(np.mean(tia2)) / exact - 1))
            twin_err.append(abs(twin.tia(2, "lesion_1", n_draws=20000).mean_MBq_h / exact - 1))
        print(f"\n|mean/exact - 1|: Laplace {np.round(gaussian_err, 4)}, twin {np.round(twin_err, 4)}")
        assert max(twin_err) < 0.01
        assert np.mean(twin_err) <= np.mean(gaussian_err) + 0.002


class TestEntryPoints:
    def test_models_are_found_through_entry_points(self, tmp_path, monkeypatch) -> None:
        """A site's package declares its models in the entry-point groups; the registries load them."""
        pkg = tmp_path / "sitetwin.py"
        pkg.write_text(
            "import math\n"
            "import numpy as np\n"
            "from theratwin.twin import KineticPriorSpec, LogisticDoseResponse, StructurePrior\n\n"
            "class MonoExp:\n"
            "    name = 'site_monoexp'\n"
            "    n_params = 2\n"
            "    def prior(self, structure, radiopharmaceutical, nuclide, overrides):\n"
            "        spec = KineticPriorSpec(0.5, 310.0, 40.0, 1.0, 0.4, 0.2)\n"
            "        return StructurePrior(np.array([math.log(0.03), math.log(0.013)]), np.diag([0.16, 0.09]),\n"
            "                              np.diag([0.01, 0.01]), spec)\n"
            "    def exponentials(self, eta, administered_MBq, ligand_nmol, structures, lambda_phys_per_h):\n"
            "        amp = np.asarray(administered_MBq, float) * np.exp(eta[..., 0])\n"
            "        return amp[..., None], (lambda_phys_per_h + np.exp(eta[..., 1]))[..., None]\n\n"
            "SITE_RESPONSE = LogisticDoseResponse('site_response', 20.0, 1.5, 'dose', 'site fit')\n"
        )
        dist = tmp_path / "sitetwin-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sitetwin\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(
            "[theratwin.twin_models]\nsite_monoexp = sitetwin:MonoExp\n\n"
            "[theratwin.outcome_models]\nsite_response = sitetwin:SITE_RESPONSE\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        for reg in (TWIN_MODELS, OUTCOME_MODELS):
            monkeypatch.setattr(reg, "_loaded_entry_points", False)
        try:
            assert "site_monoexp" in TWIN_MODELS.names() and "site_response" in OUTCOME_MODELS.names()
            twin = PatientTwin("Lu-177", "PSMA-617", model="site_monoexp",
                               measurement=MeasurementErrorModel(correlated_sd=0.0, lesion_correlated_sd=0.0))
            lam = LAM_LU + 0.012
            t = np.array([24.0, 48, 96, 168])
            twin.observe(1, "lesion_1", t, 7400 * 0.025 * np.exp(-lam * t), 7400.0)
            assert twin.tia(1, "lesion_1").mean_MBq_h == pytest.approx(7400 * 0.025 / lam, rel=0.01)
            fc = twin.forecast(2, 7400.0, response_model="site_response")
            assert fc["response"]["model"]["reference"] == "site fit"
        finally:
            TWIN_MODELS.unregister("site_monoexp")
            OUTCOME_MODELS.unregister("site_response")
