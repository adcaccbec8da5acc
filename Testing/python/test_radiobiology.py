"""BED (Dale) against closed forms and direct numerical integration of the dose-rate curve; EQD2; gEUD; tissues."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

import theratwin as tt
from theratwin.radiobiology import REFERENCES, bed, bed_multiexponential, eqd2, geud, tissue_parameters

LN2 = math.log(2.0)


def _bed_numerical(rate, dose_Gy: float, ab: float, trep_h: float, t_max_h: float) -> float:
    """BED = D + G D^2/(a/b), G = (2/D^2) int_0^T R(t) int_0^t R(w) exp(-mu (t - w)) dw dt (Lea-Catcheside),
    integrated numerically with scipy quad (independent of the closed forms)."""
    mu = LN2 / trep_h

    def inner(t: float) -> float:
        return quad(lambda w: rate(w) * math.exp(-mu * (t - w)), 0.0, t, limit=200)[0]

    double = quad(lambda t: rate(t) * inner(t), 0.0, t_max_h, limit=400)[0]
    d_num = quad(rate, 0.0, t_max_h, limit=200)[0]
    assert d_num == pytest.approx(dose_Gy, rel=1e-6)
    g = 2.0 * double / dose_Gy**2
    return dose_Gy + g * dose_Gy**2 / ab


def test_mono_exponential_matches_dale_1985() -> None:
    for d, ab, trep, teff in [(20.0, 2.6, 2.8, 50.0), (5.0, 10.0, 1.5, 30.0), (40.0, 3.0, 0.5, 100.0)]:
        lam, mu = LN2 / teff, LN2 / trep
        dale = d * (1 + d * lam / ((mu + lam) * ab))  # Dale 1985
        assert bed(d, ab, trep, teff) == pytest.approx(dale, rel=1e-3 * 1e-3)
    # worked by hand: lambda = 0.0138629/h, mu = 0.2475526/h, 20 (1 + 20 x 0.0530302 / 2.6) = 28.1585
    assert bed(20.0, 2.6, 2.8, 50.0) == pytest.approx(28.1585, abs=5e-4)


def test_mono_exponential_matches_numerical_integration() -> None:
    d, ab, trep, teff = 25.0, 2.6, 2.8, 40.0
    lam = LN2 / teff
    rate = lambda t: d * lam * math.exp(-lam * t)  # noqa: E731
    assert bed(d, ab, trep, teff) == pytest.approx(_bed_numerical(rate, d, ab, trep, 40 * teff), rel=1e-3)


def test_uptake_phase_matches_numerical_integration() -> None:
    d, ab, trep, teff, tu = 18.0, 2.6, 2.8, 45.0, 3.0
    lam, lam2 = LN2 / teff, LN2 / teff + LN2 / tu
    k = d / (1 / lam - 1 / lam2)
    rate = lambda t: k * (math.exp(-lam * t) - math.exp(-lam2 * t))  # noqa: E731
    num = _bed_numerical(rate, d, ab, trep, 40 * teff)
    assert bed(d, ab, trep, teff, uptake_half_life_h=tu) == pytest.approx(num, rel=1e-3)
    # the uptake phase spreads the dose over a longer time: lower BED than instantaneous uptake
    assert bed(d, ab, trep, teff, uptake_half_life_h=tu) < bed(d, ab, trep, teff)


def test_bi_exponential_matches_numerical_integration() -> None:
    d, ab, trep = 30.0, 2.6, 2.8
    f, t1, t2 = 0.4, 5.0, 60.0
    a1, a2 = LN2 / t1, LN2 / t2
    k = d / (f / a1 + (1 - f) / a2)
    rate = lambda t: k * (f * math.exp(-a1 * t) + (1 - f) * math.exp(-a2 * t))  # noqa: E731
    num = _bed_numerical(rate, d, ab, trep, 40 * t2)
    assert bed_multiexponential(d, [f, 1 - f], [t1, t2], alpha_beta_Gy=ab, repair_half_time_h=trep) == \
        pytest.approx(num, rel=1e-3)


def test_voxelwise_arrays() -> None:
    dose = np.array([[1.0, 10.0], [20.0, 0.0]])
    teff = np.array([[20.0, 40.0], [80.0, 60.0]])
    ab = np.array([[2.6, 2.6], [10.0, 3.0]])
    out = bed(dose, ab, 2.8, teff)
    assert out.shape == dose.shape
    for idx in np.ndindex(dose.shape):
        assert out[idx] == pytest.approx(bed(float(dose[idx]), float(ab[idx]), 2.8, float(teff[idx])), rel=1e-12)
    assert out[1, 1] == 0.0
    with pytest.raises(tt.InvalidInputError, match="effective_half_life_h"):
        bed(dose, 2.6, 2.8, np.zeros_like(dose))
    with pytest.raises(tt.InvalidInputError, match="needs effective_half_life_h"):
        bed(1.0)


def test_eqd2_and_fractionation_identity() -> None:
    # 30 x 2 Gy external beam: BED = 60 (1 + 2/ab), so EQD2 = 60 Gy for any ab
    for ab in (2.6, 3.0, 10.0):
        assert eqd2(60.0 * (1 + 2.0 / ab), ab) == pytest.approx(60.0)


def test_geud() -> None:
    assert geud(np.full(10, 7.0)) == pytest.approx(7.0)
    d = np.array([10.0, 20.0, 30.0])
    assert geud(d, a=1.0) == pytest.approx(20.0)
    # negative a: dominated by the cold part, between min and mean
    g = geud(d, a=-10.0)
    assert 10.0 < g < 20.0
    # weights: half-covered voxel counts half
    assert geud(np.array([10.0, 40.0]), np.array([1.0, 0.5]), a=1.0) == pytest.approx(20.0)


def test_tissue_table_covers_structure_kinds_and_documents_sources() -> None:
    from theratwin.study.codes import STRUCTURE_KINDS

    for kind in STRUCTURE_KINDS.values():
        tp = tissue_parameters(kind.tissue)
        assert tp.tissue == kind.tissue
        assert tp.alpha_beta_Gy > 0 and tp.repair_half_time_h > 0
        assert tp.references and tp.note
    kid = tissue_parameters("kidney")
    assert (kid.alpha_beta_Gy, kid.repair_half_time_h) == (2.6, 2.8)
    assert kid.limit()["value_Gy"] == 40.0 and kid.limit(risk_factors=True)["value_Gy"] == 28.0
    assert "Bodei" in kid.limit()["reference"] and "Wessels" in kid.limit()["reference"]
    rm = tissue_parameters("red_marrow").limit()
    assert rm["quantity"] == "dose" and rm["value_Gy"] == 2.0
    assert tissue_parameters("tumour").limit() is None


def test_tissue_overrides() -> None:
    tp = tissue_parameters("kidney", {"kidney": {"limit_Gy": 35.0, "alpha_beta_Gy": 2.5}})
    assert tp.limit_Gy == 35.0 and tp.alpha_beta_Gy == 2.5 and tp.repair_half_time_h == 2.8
    assert "user" in tp.references
    new = tissue_parameters("thyroid", {"thyroid": {"alpha_beta_Gy": 4.0, "repair_half_time_h": 1.0}})
    assert new.alpha_beta_Gy == 4.0
    with pytest.raises(tt.ConfigurationError, match="Unknown tissue parameter"):
        tissue_parameters("kidney", {"kidney": {"alpha_beta": 2.0}})


def test_tumour_parameters_follow_the_indication() -> None:
    """PSMA ligands treat prostate cancer: a/b 1.5 Gy (Brenner & Hall 1999; Miralbell 2012 1.4 [0.9-2.2] Gy) and a
    short repair half-time (16 min, Wang 2003); somatostatin analogues keep the generic tumour values, stated as
    generic; a site overrides the tumour values on top of the indication's."""
    from theratwin.radiobiology import TUMOUR_INDICATIONS, indication_for

    assert indication_for("PSMA-617") == indication_for("177Lu-PSMA-I&T") == "prostate_cancer"
    assert indication_for("DOTATATE") == indication_for("Lu-177 DOTATOC") == "neuroendocrine_tumour"
    assert indication_for("NaI") == indication_for(None) == "generic"
    pc = tissue_parameters("tumour", indication="prostate_cancer")
    assert (pc.alpha_beta_Gy, pc.repair_half_time_h) == (1.5, 0.27)
    refs = " ".join(REFERENCES[r] for r in pc.references)
    assert "Miralbell" in refs and "Brenner" in refs and "Wang" in refs
    net = tissue_parameters("tumour", indication="neuroendocrine_tumour")
    assert (net.alpha_beta_Gy, net.repair_half_time_h) == (10.0, 1.5) and "generic" in net.references
    assert tissue_parameters("tumour") == TUMOUR_INDICATIONS["generic"]
    site = tissue_parameters("tumour", {"tumour": {"repair_half_time_h": 1.9}}, indication="prostate_cancer")
    assert (site.alpha_beta_Gy, site.repair_half_time_h) == (1.5, 1.9) and "user" in site.references
    with pytest.raises(tt.ConfigurationError, match="indication"):
        tissue_parameters("tumour", indication="glioma")
    # the BED of a protracted tumour dose: Dale's formula with these parameters (60 h, 30 Gy): 1.09 x D, and
    # 1.49 x D had the generic 1.5 h repair been kept with a/b 1.5 Gy
    lam, mu = LN2 / 60.0, LN2 / 0.27
    assert bed(30.0, pc.alpha_beta_Gy, pc.repair_half_time_h, 60.0) == pytest.approx(
        30.0 * (1 + 30.0 * lam / ((mu + lam) * 1.5)), rel=1e-6)
    assert bed(30.0, 1.5, 0.27, 60.0) / 30.0 == pytest.approx(1.0896, abs=5e-4)
    assert bed(30.0, 1.5, 1.5, 60.0) / 30.0 == pytest.approx(1.4878, abs=5e-4)
