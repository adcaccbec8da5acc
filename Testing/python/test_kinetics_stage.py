"""The kinetics stage on a small synthetic study: TAC/TIA fields, single-time-point cycle, maps, JSON."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest

import theratwin as tt
from theratwin.pipeline import Pipeline, PipelineConfig

LP = math.log(2.0) / tt.nuclides.get("Lu-177").half_life_h
GEOM = tt.Geometry((12, 14, 16), (4.8, 4.8, 4.8), origin_mm=(-36.0, -31.2, -26.4))
LAM_K = LP + 0.02  # kidney effective decay constant, 1/h
LAM_L = LP + 0.01  # lesion
CONC_K, CONC_L = 2e5, 6e5  # Bq/mL at t = 0 (extrapolated)


def _masks():
    k = np.zeros(GEOM.shape, bool)
    k[3:9, 3:10, 3:8] = True
    lesion = np.zeros(GEOM.shape, bool)
    lesion[4:7, 5:8, 10:13] = True
    return {"kidneys": k, "lesion_1": lesion}


def _cycle(n: int, hours, scale: float = 1.0) -> tt.Cycle:
    start = datetime(2026, 3, 2, 9, 0) + timedelta(days=42 * (n - 1))
    adm = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
    masks = _masks()
    body = np.zeros(GEOM.shape, bool)
    body[1:11, 1:13, 1:15] = True
    tps = []
    for i, h in enumerate(hours):
        arr = np.where(body, 100.0 * math.exp(-(LP + 0.05) * h), 0.0).astype(np.float32)
        arr[masks["kidneys"]] = scale * CONC_K * math.exp(-LAM_K * h)
        arr[masks["lesion_1"]] = scale * CONC_L * math.exp(-LAM_L * h)
        ct = np.where(body, 30.0, -1000.0).astype(np.float32)
        tps.append(tt.TimePoint(tt.ImageVolume.from_geometry(arr, GEOM, "Bq/mL"), start + timedelta(hours=h), 1200.0,
                                ct=tt.ImageVolume.from_geometry(ct, GEOM, "HU") if (n, i) == (1, 0) else None,
                                counts_per_MBq_s=18.0))
    return tt.Cycle(n, adm, tps)


@pytest.fixture(scope="module")
def run():
    masks = _masks()
    seg = tt.Segmentation(GEOM, [tt.Structure("kidneys", 1), tt.Structure("lesion_1", 2)], masks)
    study = tt.Study(tt.Patient("KIN-1"), [_cycle(1, [4.0, 24.0, 48.0, 96.0, 168.0]), _cycle(2, [48.0], 1.2)], seg)
    # the images are already aligned (only the reference has a CT): identity registration keeps them exact
    p = Pipeline(PipelineConfig(stages=("registration", "kinetics"),
                                stage_options={"registration": {"spect_to_spect": False}}))
    res = p.run(study)
    return study, res, p.last_context


def test_structure_fields_and_exact_tia_on_noise_free_images(run) -> None:
    study, res, ctx = run
    vol_k = _masks()["kidneys"].sum() * GEOM.voxel_volume_mL
    sr = res.cycles[1].structures["kidneys"]
    truth = CONC_K * vol_k / 1e6 / LAM_K  # MBq h
    # the mono-exponential candidate is exact; the reported TIA is the posterior model average, in which the
    # uptake-washout model (uptake half-time prior, first scan at 4 h, 3 % SDs) keeps some weight: < 1 %
    fit = ctx.state.tac_fits[1]["kidneys"]
    assert fit.candidates["mono_exp"].tia_MBq_h == pytest.approx(truth, rel=1e-3)
    assert sr.tia_MBq_h == pytest.approx(truth, rel=0.01)
    assert sr.tia_method == "evidence_average" and sr.kinetic_model == "mono_exp"
    assert sr.effective_half_life_h == pytest.approx(math.log(2) / LAM_K, rel=1e-3)
    assert sr.residence_time_h == pytest.approx(sr.tia_MBq_h / 7400.0, rel=1e-12)
    assert sr.volume_mL == pytest.approx(vol_k)
    assert sr.mass_g == pytest.approx(vol_k * 1.03, rel=1e-3)  # 30 HU -> 1.03 g/mL
    assert len(sr.time_h) == 5 and len(sr.activity_sd_MBq) == 5
    # TIA SD includes the correlated calibration + segmentation components (5 % and 3 %)
    assert sr.tia_sd_MBq_h >= math.hypot(0.05, 0.03) * sr.tia_MBq_h * 0.999
    assert sum(sr.model_weights.values()) == pytest.approx(1.0)


def test_single_time_point_cycle_uses_cycle1_kinetics(run) -> None:
    _, res, _ = run
    vol_l = _masks()["lesion_1"].sum() * GEOM.voxel_volume_mL
    sr = res.cycles[2].structures["lesion_1"]
    assert sr.tia_method == "stp:prior"
    # the cycle-1 curve's shape, scaled by 1.2: exact up to the cycle-1 model average (< 1 %, see above)
    assert sr.tia_MBq_h == pytest.approx(1.2 * res.cycles[1].structures["lesion_1"].tia_MBq_h, rel=1e-3)
    assert sr.tia_MBq_h == pytest.approx(1.2 * CONC_L * vol_l / 1e6 / LAM_L, rel=0.01)
    assert any("prior-informed" in w.message and w.cycle == 2 for w in res.warnings)


def test_voxel_maps_and_state(run) -> None:
    study, res, ctx = run
    for n in (1, 2):
        tia = res.maps[f"cycle{n}/tia"]
        assert tia.unit == "Bq.h/mL" and tia.geometry.same_grid(GEOM)
        assert f"cycle{n}/tia_sd" in res.maps
    assert res.maps["cycle1/effective_half_life"].unit == "h"
    k = _masks()["kidneys"]
    np.testing.assert_allclose(res.maps["cycle1/tia"].array[k], CONC_K / LAM_K, rtol=1e-3)
    # cycle 2 voxels from one scan with the cycle-1 voxel decay constants: exact for repeated kinetics
    np.testing.assert_allclose(res.maps["cycle2/tia"].array[k], 1.2 * CONC_K / LAM_K, rtol=1e-3)
    assert 1 in ctx.state.voxel_fits and "kidneys" in ctx.state.tac_fits[1]
    # voxel and structure TIAs agree (uniform organ, no blur): the voxel sum with the structure's mono-exponential
    # candidate exactly, with its model average within 1 %
    voxel_sum = float(res.maps["cycle1/tia"].array[k].sum()) * GEOM.voxel_volume_mL / 1e6
    fit = ctx.state.tac_fits[1]["kidneys"]
    assert voxel_sum == pytest.approx(fit.candidates["mono_exp"].tia_MBq_h, rel=2e-3)
    assert voxel_sum == pytest.approx(res.cycles[1].structures["kidneys"].tia_MBq_h, rel=0.01)


def test_results_json_round_trip(run) -> None:
    _, res, _ = run
    d = json.loads(res.to_json())
    k = d["cycles"]["1"]["structures"]["kidneys"]
    assert {"tia_MBq_h", "tia_sd_MBq_h", "kinetic_model", "effective_half_life_h", "model_weights"} <= set(k)
    assert any(m["stage"] == "kinetics" and m["references"] for m in d["methods"])


def test_partial_volume_option_raises_small_structure_activity(run) -> None:
    study, res, _ = run
    p = Pipeline(PipelineConfig(stages=("registration", "kinetics"),
                                stage_options={"kinetics": {"system_fwhm_mm": 10.0, "voxel_fits": False,
                                                            "pvc_method": "mask"},
                                               "registration": {"spect_to_spect": False}}))
    res2 = p.run(study)
    a = res.cycles[1].structures["lesion_1"]
    b = res2.cycles[1].structures["lesion_1"]
    assert b.fit_quality["recovery_coefficient"] < 1.0
    assert b.tia_MBq_h == pytest.approx(a.tia_MBq_h / b.fit_quality["recovery_coefficient"], rel=1e-6)
    with pytest.raises(tt.ConfigurationError, match="Unknown kinetics options"):
        Pipeline(PipelineConfig(stages=("registration", "kinetics"),
                                stage_options={"kinetics": {"fwhm": 10.0}})).run(study)


def test_two_time_point_cycle_reports_its_fallbacks() -> None:
    masks = _masks()
    seg = tt.Segmentation(GEOM, [tt.Structure("kidneys", 1), tt.Structure("lesion_1", 2)], masks)
    study = tt.Study(tt.Patient("KIN-2"), [_cycle(1, [24.0, 96.0])], seg)
    res = Pipeline(PipelineConfig(stages=("registration", "kinetics"),
                                  stage_options={"registration": {"spect_to_spect": False}})).run(study)
    sr = res.cycles[1].structures["kidneys"]
    assert sr.tia_method == "fallback:trapezoid_fitted_tail"
    # trapezoid from A(0)=0 plus the mono-exponential tail through the two samples: exact tail, linear rise
    vol = masks["kidneys"].sum() * GEOM.voxel_volume_mL
    a = CONC_K * vol / 1e6 * np.exp(-LAM_K * np.array([24.0, 96.0]))
    expected = 0.5 * 24 * a[0] + 0.5 * 72 * (a[0] + a[1]) + a[1] / LAM_K
    assert sr.tia_MBq_h == pytest.approx(expected, rel=1e-6)
    assert any("Fallback" in w.message and w.structure == "kidneys" for w in res.warnings)
    assert any("cannot be estimated" in w.message for w in res.warnings)
    assert np.all(np.isfinite(res.maps["cycle1/tia_sd"].array))
