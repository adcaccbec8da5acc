"""PSMA PBPK option: ligand conservation, saturation by ligand amount, and its use in the twin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theratwin.twin import PatientTwin, PSMAPBPKModel, make_cohort
from theratwin.twin.pbpk import TISSUES


@pytest.fixture(scope="module")
def model() -> PSMAPBPKModel:
    return PSMAPBPKModel()


def test_total_ligand_is_conserved(model: PSMAPBPKModel) -> None:
    r = model.simulate(150.0, 7400.0)
    np.testing.assert_allclose(r.total_nmol(), 150.0, rtol=1e-6)
    # almost everything leaves eventually (renal clearance and release), nothing is created
    assert r.excreted_nmol[-1] > 0.95 * 150.0
    assert np.all(np.diff(r.excreted_nmol) >= -1e-9)


def test_activity_follows_hot_fraction_and_decay(model: PSMAPBPKModel) -> None:
    """Activity = A_adm/L_adm * amount * exp(-λ t): identical hot and cold kinetics."""
    r = model.simulate(100.0, 7400.0)
    lam = math.log(2) / 159.528
    i = np.searchsorted(r.time_h, 24.0)
    assert r.activity_MBq["kidneys"][i] == pytest.approx(74.0 * r.tissue_nmol["kidneys"][i] * math.exp(-lam * r.time_h[i]))
    # activity scales exactly with activity at fixed ligand amount (no saturation by activity)
    r2 = model.simulate(100.0, 3700.0)
    assert r2.tia_MBq_h["kidneys"] == pytest.approx(0.5 * r.tia_MBq_h["kidneys"], rel=1e-9)


def test_doubling_ligand_lowers_salivary_and_kidney_dose_per_gbq(model: PSMAPBPKModel) -> None:
    """Saturation (Kletting 2016, Begum 2018): more ligand at fixed activity -> lower uptake per GBq."""
    one = model.simulate(100.0, 7400.0)
    two = model.simulate(200.0, 7400.0)
    for tissue in ("kidneys", "salivary_glands"):
        assert two.tia_MBq_h[tissue] < 0.95 * one.tia_MBq_h[tissue], tissue
    # tissues without receptors get relatively more (ligand not bound elsewhere stays in circulation longer)
    assert two.tia_MBq_h["rest"] > one.tia_MBq_h["rest"]
    # at trace amounts binding is linear: the uptake fraction stops depending on the ligand amount
    a, b = model.simulate(0.01, 7400.0), model.simulate(0.02, 7400.0)
    assert b.tia_MBq_h["kidneys"] == pytest.approx(a.tia_MBq_h["kidneys"], rel=0.01)


def test_tumour_sink_effect() -> None:
    """Begum 2018: a larger tumour burden (more PSMA receptors) takes ligand from the kidneys and glands."""
    small = PSMAPBPKModel(tumour_receptor_nmol=2.0).simulate(100.0, 7400.0)
    large = PSMAPBPKModel(tumour_receptor_nmol=40.0).simulate(100.0, 7400.0)
    assert large.tia_MBq_h["tumour"] > 5 * small.tia_MBq_h["tumour"]
    for tissue in ("kidneys", "salivary_glands"):
        assert large.tia_MBq_h[tissue] < 0.97 * small.tia_MBq_h[tissue], tissue


def test_pbpk_twin_predicts_lower_dose_per_gbq_with_more_ligand() -> None:
    p = make_cohort(1, structures=("kidneys", "parotid_glands", "lesion_1"), seed=4).patients[0]
    twin = PatientTwin("Lu-177", "PSMA-617", model="pbpk_psma")
    lin = PatientTwin("Lu-177", "PSMA-617")
    for c, d in p.measurements.items():
        for s, (t, y) in d.items():
            twin.observe(c, s, t, y, 7400.0, ligand_nmol=100.0)
            lin.observe(c, s, t, y, 7400.0, ligand_nmol=100.0)
    base = twin.predict(3, 7400.0, ligand_nmol=100.0)
    more = twin.predict(3, 7400.0, ligand_nmol=200.0)
    for s in ("kidneys", "parotid_glands"):
        assert more[s].dose_Gy.mean < 0.95 * base[s].dose_Gy.mean, s
        # at the observed ligand amount the PBPK twin agrees with the linear twin
        assert base[s].dose_Gy.mean == pytest.approx(lin.predict(3, 7400.0)[s].dose_Gy.mean, rel=0.05)
    # the linear model cannot see the ligand amount
    assert lin.predict(3, 7400.0, ligand_nmol=200.0)["kidneys"].dose_Gy.mean == pytest.approx(
        lin.predict(3, 7400.0, ligand_nmol=100.0)["kidneys"].dose_Gy.mean, rel=1e-12)
    # "9 GBq with 150 nmol" vs "7.4 GBq with 100 nmol": less than proportional increase of kidney dose
    big = twin.predict(3, 9000.0, ligand_nmol=150.0)["kidneys"].dose_Gy.mean
    assert big < 9000.0 / 7400.0 * base["kidneys"].dose_Gy.mean


def test_tissue_list_is_the_documented_one() -> None:
    assert TISSUES == ("kidneys", "salivary_glands", "liver", "spleen", "tumour", "rest")


class TestPatientSpecificPBPK:
    """MAP + Laplace fit of receptor amounts and release rates to one patient's cycle-1 data."""

    @pytest.fixture(scope="class")
    def case(self):
        from dataclasses import replace

        from theratwin.twin import PBPKPatientFit, PSMAPBPKParameters

        pop = PSMAPBPKParameters()
        scale_rec = {"kidneys": 1.6, "salivary_glands": 0.6, "tumour": 0.5}
        truth = replace(pop, receptor_nmol={k: v * scale_rec.get(k, 1.0) for k, v in pop.receptor_nmol.items()},
                        release_per_h={**pop.release_per_h, "kidneys": pop.release_per_h["kidneys"] * 1.3})
        model = PSMAPBPKModel(truth)
        t = np.array([4.0, 24.0, 48.0, 96.0])
        sim = model.simulate(100.0, 7400.0, time_h=t)
        rng = np.random.default_rng(1)

        def noisy(a):
            return a * (1 + 0.03 * rng.standard_normal(a.size))

        obs = {"kidneys": (t, noisy(sim.activity_at("kidneys", t))),
               "parotid_glands": (t, noisy(0.65 * sim.activity_at("salivary_glands", t))),
               "submandibular_glands": (t, noisy(0.35 * sim.activity_at("salivary_glands", t))),
               "lesion_1": (t, noisy(sim.activity_at("tumour", t))),
               "body": (t, np.full(4, 1000.0))}  # not a PBPK tissue: ignored
        fit = PBPKPatientFit(proportional_sd=0.03)
        post = fit.fit(obs, 7400.0, 100.0)
        return fit, post, model, scale_rec

    def test_recovers_receptor_scales(self, case) -> None:
        fit, post, _, scale_rec = case
        assert post.tissues == ["kidneys", "salivary_glands", "tumour"]
        sd = np.sqrt(np.diag(post.cov))
        for i, tissue in enumerate(post.tissues):
            est = post.mode[2 * i]
            assert abs(est - math.log(scale_rec[tissue])) < max(3 * sd[2 * i], 0.05), tissue
        assert post.scales()["kidneys"]["release"] == pytest.approx(1.3, rel=0.15)

    def test_patient_saturation_prediction_beats_population(self, case) -> None:
        fit, post, model, _ = case
        truth = model.simulate(200.0, 7400.0).tia_MBq_h
        population = PSMAPBPKModel().simulate(200.0, 7400.0).tia_MBq_h
        pred = fit.predict_tia(post, 7400.0, 200.0, level=0.99)
        for tissue in ("kidneys", "salivary_glands"):
            p = pred[tissue]
            assert abs(p["tia_MBq_h"] / truth[tissue] - 1) < 0.05
            assert abs(population[tissue] / truth[tissue] - 1) > 0.2  # the population curve is off for this patient
            assert p["low_MBq_h"] <= truth[tissue] <= p["high_MBq_h"]
        # the patient's own saturation: doubling the ligand lowers kidney and salivary TIA per GBq
        base = fit.predict_tia(post, 7400.0, 100.0)
        assert pred["kidneys"]["tia_MBq_h"] < 0.95 * base["kidneys"]["tia_MBq_h"]
        assert pred["salivary_glands"]["tia_MBq_h"] < 0.95 * base["salivary_glands"]["tia_MBq_h"]

    def test_patient_curve_drives_the_twin_and_survives_json(self, case) -> None:
        from theratwin.twin import PBPKSaturationModel

        _, post, _, _ = case
        twin = PatientTwin("Lu-177", "PSMA-617", model=PBPKSaturationModel(post.parameters))
        t = np.array([4.0, 24.0, 48.0, 96.0])
        twin.observe(1, "kidneys", t, [150.0, 160.0, 110.0, 50.0], 7400.0, ligand_nmol=100.0)
        ratio = twin.predict(2, 7400.0, ligand_nmol=200.0)["kidneys"].tia_MBq_h.mean / \
            twin.predict(2, 7400.0, ligand_nmol=100.0)["kidneys"].tia_MBq_h.mean
        model_ratio = (PSMAPBPKModel(post.parameters).simulate(200.0, 1.0).tia_MBq_h["kidneys"]
                       / PSMAPBPKModel(post.parameters).simulate(100.0, 1.0).tia_MBq_h["kidneys"])
        assert ratio == pytest.approx(model_ratio, rel=0.01)
        back = PatientTwin.from_json(twin.to_json())
        assert back.model.pbpk.p == post.parameters

    def test_input_errors(self) -> None:
        from theratwin import InvalidInputError
        from theratwin.twin import PBPKPatientFit

        with pytest.raises(InvalidInputError, match="PBPK tissue"):
            PBPKPatientFit().fit({"body": ([1.0], [2.0])}, 7400.0, 100.0)
        with pytest.raises(InvalidInputError, match="same sampling times"):
            PBPKPatientFit().fit({"parotid_glands": ([4.0, 24.0], [1.0, 1.0]),
                                  "submandibular_glands": ([4.0, 48.0], [1.0, 1.0])}, 7400.0, 100.0)
