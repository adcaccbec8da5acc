"""The "dosimetry" and "radiobiology" stages on a small synthetic study (kinetics results put in by hand)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

import theratwin as tt
from theratwin.dosimetry import DOSE_ENGINES, dose_map, organ_self_s_value
from theratwin.dosimetry.stage import DosimetryStage
from theratwin.pipeline import PipelineConfig, PipelineContext, PipelineState
from theratwin.radiobiology import bed, eqd2
from theratwin.radiobiology.stage import RadiobiologyStage

GEO = tt.Geometry(shape=(24, 24, 24), spacing_mm=(4.8, 4.8, 4.8), origin_mm=(-55.2, -55.2, -55.2))
TEFF_H = {"kidneys": 40.0, "lesion_1": 80.0}


def _study(with_ct: bool) -> tt.Study:
    start = datetime(2026, 3, 2, 9, 0, 0)
    cycles = []
    for n in (1, 2):
        adm = tt.Administration("PSMA-617", "Lu-177", 7400.0, start + timedelta(weeks=6 * (n - 1)))
        arr = np.zeros(GEO.shape, np.float32)
        ct = None
        if with_ct:
            hu = np.zeros(GEO.shape, np.float32)
            hu[:, :, 16:] = 800.0  # "bone" slab: 1.46 g/mL by the default calibration
            ct = tt.ImageVolume.from_geometry(hu, GEO, "HU")
        tp = tt.TimePoint(tt.ImageVolume.from_geometry(arr, GEO, "Bq/mL"), adm.start + timedelta(hours=24), 1800.0,
                          ct=ct)
        cycles.append(tt.Cycle(n, adm, [tp]))
    kid = np.zeros(GEO.shape, bool)
    kid[6:14, 6:14, 6:12] = True
    les = np.zeros(GEO.shape, bool)
    les[8:12, 8:12, 16:20] = True
    seg = tt.Segmentation(GEO, [tt.Structure("kidneys", 1), tt.Structure("lesion_1", 2)],
                          {"kidneys": kid, "lesion_1": les})
    return tt.Study(tt.Patient("TT-DOSE-1"), cycles, seg)


def _context(study: tt.Study, options: dict | None = None) -> PipelineContext:
    res = tt.Results.for_study(study)
    for c in study.cycles:
        tia = np.zeros(GEO.shape, np.float32)
        for name, conc in (("kidneys", 2.0e5), ("lesion_1", 1.0e6)):
            m = study.segmentation.masks[name]
            tia[m] = conc * (1.0 if c.number == 1 else 0.8)
            sr = res.cycles[c.number].structure(name)
            sr.tia_MBq_h = float(tia[m].sum() * GEO.voxel_volume_mL / 1e6)
            sr.tia_sd_MBq_h = 0.1 * sr.tia_MBq_h
            sr.effective_half_life_h = TEFF_H[name]
        res.maps[f"cycle{c.number}/tia"] = tt.ImageVolume.from_geometry(tia, GEO, "Bq.h/mL")
    return PipelineContext(study, res, PipelineConfig(stage_options=options or {}),
                           state=PipelineState(reference_grid=GEO))


def test_dosimetry_and_radiobiology_stages() -> None:
    study = _study(with_ct=True)
    ctx = _context(study)
    DosimetryStage().run(ctx)
    RadiobiologyStage().run(ctx)
    res = ctx.results
    for key in ("cycle1/dose", "cycle2/dose", "cycle1/bed", "cycle2/bed", "cumulative/dose", "cumulative/bed"):
        assert key in res.maps and res.maps[key].unit == "Gy" and res.maps[key].geometry.same_grid(GEO)
    rho = tt.dosimetry.hu_to_density(study.reference_ct.array)
    dose1 = dose_map(res.maps["cycle1/tia"].array, GEO.spacing_mm, "Lu-177", density_g_per_mL=rho)
    np.testing.assert_allclose(res.maps["cycle1/dose"].array, dose1, rtol=1e-6)
    kid = study.segmentation.masks["kidneys"]
    s1 = res.cycles[1].structures["kidneys"]
    assert s1.mean_dose_Gy == pytest.approx(float(dose1[kid].mean()), rel=1e-5)  # unit density there
    assert s1.mean_dose_sd_Gy == pytest.approx(0.1 * s1.mean_dose_Gy)
    assert s1.dose_per_activity_Gy_per_GBq == pytest.approx(s1.mean_dose_Gy / 7.4)
    assert s1.dose_method == "dvk" and s1.dvh["type"] == "cumulative"
    assert s1.dvh_metrics["D98_Gy"] <= s1.dvh_metrics["D50_Gy"] <= s1.dvh_metrics["D2_Gy"]
    assert s1.volume_mL == pytest.approx(kid.sum() * GEO.voxel_volume_mL)
    # organ S-value dose for comparison: electrons local, close to the voxel mean for a 43 mL organ
    assert s1.organ_s_value_dose_Gy == pytest.approx(
        s1.tia_MBq_h * 3600 * organ_self_s_value("Lu-177", s1.mass_g) / 1000, rel=1e-9)
    assert s1.organ_s_value_dose_Gy == pytest.approx(s1.mean_dose_Gy, rel=0.15)
    # lesion in the "bone" slab: mass-weighted with density 1.46
    les = res.cycles[1].structures["lesion_1"]
    assert les.mass_g == pytest.approx(64 * GEO.voxel_volume_mL * 1.46, rel=1e-3)
    # radiobiology: BED from mean dose and effective half-life, cumulative sums, limits
    s2 = res.cycles[2].structures["kidneys"]
    for s in (s1, s2):
        assert s.bed_Gy == pytest.approx(bed(s.mean_dose_Gy, 2.6, 2.8, 40.0), rel=1e-9)
        assert s.eqd2_Gy == pytest.approx(eqd2(s.bed_Gy, 2.6), rel=1e-9)
    assert s2.cumulative_dose_Gy == pytest.approx(s1.mean_dose_Gy + s2.mean_dose_Gy)
    assert s2.cumulative_bed_Gy == pytest.approx(s1.bed_Gy + s2.bed_Gy)
    assert s2.limit["quantity"] == "BED" and s2.limit["value_Gy"] == 40.0
    assert s2.limit["cumulative_value_Gy"] == pytest.approx(s2.cumulative_bed_Gy)
    # PSMA-617 treats prostate cancer: the lesion's a/b and repair half-time are the indication's, and recorded
    assert les.geud_Gy is not None and les.limit is None
    assert (les.alpha_beta_Gy, les.repair_half_time_h) == (1.5, 0.27)
    rb = next(m for m in res.methods if m.stage == "radiobiology")
    assert "prostate_cancer" in rb.method and rb.parameters["tumour_indication"]["1"]["alpha_beta_Gy"] == 1.5
    assert any("Miralbell" in r for r in rb.references)
    # voxel BED: kidney voxels use the kidney half-life and a/b
    i = (10, 10, 9)
    assert res.maps["cycle1/bed"].array[i] == pytest.approx(bed(float(dose1[i]), 2.6, 2.8, 40.0), rel=1e-5)
    np.testing.assert_allclose(res.maps["cumulative/dose"].array,
                               res.maps["cycle1/dose"].array + res.maps["cycle2/dose"].array, rtol=1e-6)
    # methods and JSON
    stages = [m.stage for m in res.methods]
    assert "dosimetry" in stages and "radiobiology" in stages
    d = res.to_dict()
    assert d["cycles"]["1"]["structures"]["kidneys"]["mean_dose_Gy"] == pytest.approx(s1.mean_dose_Gy)


def test_voxel_effective_half_life_map_and_risk_factors() -> None:
    study = _study(with_ct=False)
    ctx = _context(study, {"radiobiology": {"risk_factors": ["kidneys"]}})
    teff_map = np.full(GEO.shape, 20.0, np.float32)
    ctx.results.maps["cycle1/effective_half_life"] = tt.ImageVolume.from_geometry(teff_map, GEO, "h")
    DosimetryStage().run(ctx)
    RadiobiologyStage().run(ctx)
    res = ctx.results
    dose = res.maps["cycle1/dose"].array
    i = (10, 10, 9)
    assert res.maps["cycle1/bed"].array[i] == pytest.approx(bed(float(dose[i]), 2.6, 2.8, 20.0), rel=1e-5)
    assert res.cycles[1].structures["kidneys"].limit["value_Gy"] == 28.0
    assert any("No reference CT" in w.message for w in res.warnings)


def test_outside_dose_engine_through_the_stage() -> None:
    """A plug-in engine registered from outside runs through the dosimetry stage when configured."""

    class HalfLED:
        name = "half_led"
        description = "half of LED (test plug-in)"
        references = ["test plug-in"]

        def compute(self, tia_Bq_h_per_mL, voxel_mm, nuclide, *, density_g_per_mL=None, progress=None):
            return 0.5 * dose_map(tia_Bq_h_per_mL, voxel_mm, nuclide, method="led")

    DOSE_ENGINES.register("half_led", HalfLED)
    try:
        study = _study(with_ct=False)
        ctx = _context(study, {"dosimetry": {"method": "half_led"}})
        DosimetryStage().run(ctx)
    finally:
        DOSE_ENGINES.unregister("half_led")
    led = dose_map(ctx.results.maps["cycle1/tia"].array, GEO.spacing_mm, "Lu-177", method="led")
    np.testing.assert_allclose(ctx.results.maps["cycle1/dose"].array, 0.5 * led, rtol=1e-6)
    assert ctx.results.cycles[1].structures["kidneys"].dose_method == "half_led"
    assert any("half of LED" in m.method for m in ctx.results.methods)


def test_bad_options() -> None:
    study = _study(with_ct=False)
    with pytest.raises(tt.ConfigurationError, match="Unknown dose engine"):
        DosimetryStage().run(_context(study, {"dosimetry": {"method": "nope"}}))
    with pytest.raises(tt.ConfigurationError, match="Unknown dosimetry option"):
        DosimetryStage().run(_context(study, {"dosimetry": {"methd": "dvk"}}))


def test_structure_bed_uses_the_fitted_curve_shape() -> None:
    """With an uptake-and-clearance fit (kinetics stage's parameter names), the structure BED is Dale's BED for
    that curve: the uptake form of bed() with uptake half-life ln2/(lambda_u - lambda_c)."""
    study = _study(with_ct=False)
    ctx = _context(study)
    lc, lu = np.log(2) / 40.0, np.log(2) / 40.0 + np.log(2) / 2.0
    for c in (1, 2):
        ctx.results.cycles[c].structures["kidneys"].kinetic_params = {
            "A0_MBq": 50.0, "lambda_eff_per_h": lc, "lambda_bio_per_h": lc - np.log(2) / 159.5,
            "lambda_uptake_per_h": lu}
    DosimetryStage().run(ctx)
    RadiobiologyStage().run(ctx)
    s = ctx.results.cycles[1].structures["kidneys"]
    assert s.bed_Gy == pytest.approx(bed(s.mean_dose_Gy, 2.6, 2.8, 40.0, uptake_half_life_h=2.0), rel=1e-9)
    assert s.bed_Gy < bed(s.mean_dose_Gy, 2.6, 2.8, 40.0)


def test_missing_half_life_falls_back_to_the_previous_cycle() -> None:
    study = _study(with_ct=False)
    ctx = _context(study)
    ctx.results.cycles[2].structures["kidneys"].effective_half_life_h = None
    DosimetryStage().run(ctx)
    RadiobiologyStage().run(ctx)
    s2 = ctx.results.cycles[2].structures["kidneys"]
    assert s2.bed_Gy == pytest.approx(bed(s2.mean_dose_Gy, 2.6, 2.8, TEFF_H["kidneys"]), rel=1e-9)
    assert any("earlier cycle" in w.message for w in ctx.results.warnings)


def test_covered_fraction_on_a_coarser_unaligned_grid() -> None:
    """A 20 mm-radius sphere segmented at 1 mm, seen by a 3.3 mm grid shifted by a third of a voxel: the covered
    fractions add up to the segmented volume, are 1 inside and 0 far outside."""
    from theratwin.dosimetry.masks import covered_fraction

    fine = tt.Geometry((60, 60, 60), (1.0, 1.0, 1.0), (-29.5, -29.5, -29.5))
    z, y, x = np.indices(fine.shape) - 29.5
    seg = tt.Segmentation(fine, [tt.Structure("lesion_1", 1)], {"lesion_1": x * x + y * y + z * z <= 400.0})
    coarse = tt.Geometry((22, 22, 22), (3.3, 3.3, 3.3), (-33.5, -34.0, -35.0))
    f = covered_fraction(seg, "lesion_1", coarse)
    assert f.min() >= 0.0 and f.max() <= 1.0
    assert float(f.sum()) * coarse.voxel_volume_mL == pytest.approx(seg.volume_mL("lesion_1"), rel=0.01)
    centre = np.round(coarse.lps_to_index(np.zeros(3))).astype(int)
    assert f[centre[2], centre[1], centre[0]] == pytest.approx(1.0)
    assert f[0, 0, 0] == 0.0
