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
