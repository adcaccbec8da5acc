"""Structure TACs from images: activity sums, uncertainty components, partial-volume recovery."""

from __future__ import annotations

import math

import numpy as np
import pytest

import theratwin as tt
from theratwin.kinetics import (
    ActivityUncertaintyModel,
    RecoveryModel,
    mask_recovery_coefficient,
    sphere_recovery_coefficient,
    structure_tacs,
)


def _images(geom, values):
    return [tt.ImageVolume.from_geometry(np.full(geom.shape, v, np.float32), geom, "Bq/mL") for v in values]


def test_activity_is_concentration_times_fractional_volume() -> None:
    geom = tt.Geometry((4, 5, 6), (2.0, 2.0, 2.0))
    m = np.zeros(geom.shape, np.float32)
    m[1:3, 1:4, 2:5] = 1.0
    m[0, 0, 0] = 0.5
    tacs = structure_tacs(_images(geom, [1e6, 5e5]), {"organ": m}, [4.0, 24.0])
    vol_mL = (18 + 0.5) * 0.008
    np.testing.assert_allclose(tacs["organ"].activity_MBq, [1.0 * vol_mL, 0.5 * vol_mL], rtol=1e-6)
    assert tacs["organ"].volume_mL == pytest.approx(vol_mL)


def test_counting_statistics_and_systematic_components() -> None:
    geom = tt.Geometry((2, 2, 2), (10.0, 10.0, 10.0))
    m = np.ones(geom.shape, np.float32)  # 8 mL
    unc = ActivityUncertaintyModel(calibration_rel_sd=0.05, segmentation_rel_sd=0.03, random_rel_sd=0.0)
    # 1.25e6 Bq/mL * 8 mL = 10 MBq; 10 MBq * 10 cps/MBq * 1000 s = 1e5 counts -> 1/sqrt(1e5)
    tacs = structure_tacs(_images(geom, [1.25e6]), {"s": m}, [24.0], acquisition_duration_s=[1000.0],
                          counts_per_MBq_s=[10.0], uncertainty=unc)
    tac = tacs["s"]
    assert tac.activity_MBq[0] == pytest.approx(10.0)
    assert tac.activity_sd_random_MBq[0] == pytest.approx(10.0 / math.sqrt(1e5), rel=1e-6)
    assert tac.systematic_rel_sd == pytest.approx(math.hypot(0.05, 0.03))
    assert tac.activity_sd_MBq[0] == pytest.approx(10.0 * math.sqrt(1e-5 + 0.05**2 + 0.03**2), rel=1e-6)


def test_sphere_recovery_limits_and_mask_agreement() -> None:
    # large spheres recover fully, tiny ones not at all; RC grows with volume
    assert sphere_recovery_coefficient(1e5, 10.0) > 0.97
    assert sphere_recovery_coefficient(1e-3, 10.0) < 0.01
    rcs = [sphere_recovery_coefficient(v, 10.0) for v in (1, 5, 20, 100)]
    assert rcs == sorted(rcs)
    # the analytic sphere formula and the numerical mask blur agree for a voxelised sphere
    r_mm = (3 * 10.0 * 1000 / (4 * math.pi)) ** (1 / 3)
    g = np.mgrid[-30:31, -30:31, -30:31].astype(float)
    sphere = np.sqrt((g**2).sum(0)) <= r_mm
    vol = sphere.sum() / 1000.0
    assert mask_recovery_coefficient(sphere, (1.0, 1.0, 1.0), 10.0) == pytest.approx(
        sphere_recovery_coefficient(vol, 10.0), abs=0.005)


def test_recovery_correction_restores_blurred_sphere_activity() -> None:
    from scipy.ndimage import gaussian_filter

    geom = tt.Geometry((41, 41, 41), (2.0, 2.0, 2.0))
    g = (np.indices(geom.shape) - 20) * 2.0
    sphere = (np.sqrt((g**2).sum(0)) <= 12.0).astype(np.float32)
    fwhm = 12.0
    blurred = gaussian_filter(sphere * 1e6, sigma=fwhm / 2.3548 / 2.0, mode="constant")
    img = [tt.ImageVolume.from_geometry(blurred.astype(np.float32), geom, "Bq/mL")]
    truth = float(sphere.sum()) * geom.voxel_volume_mL  # MBq at 1e6 Bq/mL
    raw = structure_tacs(img, {"lesion": sphere}, [24.0])["lesion"]
    corr = structure_tacs(img, {"lesion": sphere}, [24.0],
                          recovery=RecoveryModel("mask", system_fwhm_mm=fwhm))["lesion"]
    assert raw.activity_MBq[0] < 0.8 * truth
    assert corr.activity_MBq[0] == pytest.approx(truth, rel=0.01)
    assert corr.systematic_rel_sd > raw.systematic_rel_sd


def test_images_on_different_grids_are_refused() -> None:
    a = tt.Geometry((2, 2, 2), (1.0, 1.0, 1.0))
    b = tt.Geometry((2, 2, 2), (2.0, 1.0, 1.0))
    with pytest.raises(tt.InvalidInputError, match="one grid"):
        structure_tacs(_images(a, [1.0]) + _images(b, [1.0]), {"s": np.ones(a.shape)}, [1.0, 2.0])


def test_geometric_transfer_matrix_removes_spill_in_and_spill_out() -> None:
    from scipy.ndimage import gaussian_filter

    geom = tt.Geometry((40, 40, 48), (3.0, 3.0, 3.0))
    z, y, x = (np.indices(geom.shape) - np.array([19.5, 19.5, 23.5])[:, None, None, None]) * 3.0
    body = ((x / 65) ** 2 + (y / 55) ** 2 + (z / 55) ** 2 <= 1).astype(np.float32)
    hot = ((x - 12) ** 2 + y**2 + z**2 <= 12.0**2).astype(np.float32)  # 10 kBq/mL
    warm = ((x + 14) ** 2 + y**2 + z**2 <= 13.0**2).astype(np.float32)  # 3 kBq/mL, next to the hot one
    truth_img = 1e3 * body + (10e3 - 1e3) * hot + (3e3 - 1e3) * warm
    fwhm = 12.0
    blurred = gaussian_filter(truth_img, sigma=fwhm / 2.3548 / 3.0, mode="constant")
    img = [tt.ImageVolume.from_geometry(blurred.astype(np.float32), geom, "Bq/mL")]
    masks = {"body": body, "hot": hot, "warm": warm}
    v = geom.voxel_volume_mL
    exact = {"hot": 10e3 * hot.sum() * v / 1e6, "warm": 3e3 * warm.sum() * v / 1e6}
    gtm = structure_tacs(img, masks, [24.0], recovery=RecoveryModel("gtm", system_fwhm_mm=fwhm), body="body")
    rc = structure_tacs(img, masks, [24.0], recovery=RecoveryModel("mask", system_fwhm_mm=fwhm))
    for name in ("hot", "warm"):
        assert gtm[name].activity_MBq[0] == pytest.approx(exact[name], rel=0.01)
    # the spill-out-only recovery coefficient leaves the warm sphere's spill-in from its hot neighbour
    assert rc["warm"].activity_MBq[0] > 1.05 * exact["warm"]
    assert gtm["body"].activity_MBq[0] == pytest.approx(float(truth_img.sum()) * v / 1e6, rel=0.01)


def _vertebra_phantom(rim_Bq_per_mL: float = 1e3):
    """A 'marrow' cylinder inside a cold 5 mm rim (cortex) inside warm soft tissue, next to a hot 'kidney': the local
    background is not the body's average (3 mm voxels)."""
    geom = tt.Geometry((40, 48, 48), (3.0, 3.0, 3.0))
    z, y, x = (np.indices(geom.shape) - np.array([19.5, 23.5, 23.5])[:, None, None, None]) * 3.0
    body = ((x / 70) ** 2 + (y / 70) ** 2 <= 1).astype(np.float32)
    marrow = ((x**2 + y**2 <= 14.0**2) & (np.abs(z) <= 30)).astype(np.float32)
    rim = (((x**2 + y**2 <= 19.0**2) & (np.abs(z) <= 35)) & (marrow == 0)).astype(np.float32)
    kidney = (((x - 45) / 14) ** 2 + (y / 12) ** 2 + (z / 30) ** 2 <= 1).astype(np.float32)
    truth = 4e3 * body + (rim_Bq_per_mL - 4e3) * rim + (2.5e3 - 4e3) * marrow + (40e3 - 4e3) * kidney
    return geom, {"body": body, "red_marrow": marrow, "kidneys": kidney}, truth


def test_gtm_local_shells_handle_a_cold_rim_that_the_classic_gtm_and_rc_do_not() -> None:
    """Marrow (2.5 kBq/mL) in a cold 5 mm rim (1 kBq/mL) in soft tissue (4 kBq/mL) next to a kidney (40 kBq/mL),
    12 mm FWHM: the classic GTM (one uniform rest of the body) reads the marrow 43 % low, the spill-out-only mask RC
    36 % high; the shell GTM 12 % low (the rim is thinner than the first 9 mm shell layer, which averages it with
    soft tissue: anatomy the segmentation does not give is not recovered). Without the rim the shells are exact."""
    from scipy.ndimage import gaussian_filter

    geom, masks, truth = _vertebra_phantom()
    fwhm = 12.0
    img = [tt.ImageVolume.from_geometry(gaussian_filter(truth, fwhm / 2.3548 / 3.0, mode="constant")
                                        .astype(np.float32), geom, "Bq/mL")]
    exact = {n: float((masks[n] * truth).sum()) * geom.voxel_volume_mL / 1e6 for n in ("red_marrow", "kidneys")}
    shells = structure_tacs(img, masks, [24.0], recovery=RecoveryModel("gtm", system_fwhm_mm=fwhm), body="body")
    classic = structure_tacs(img, masks, [24.0], recovery=RecoveryModel("gtm", system_fwhm_mm=fwhm, shell_mm=0),
                             body="body")
    rc = structure_tacs(img, masks, [24.0], recovery=RecoveryModel("mask", system_fwhm_mm=fwhm))
    ratio = {k: v["red_marrow"].activity_MBq[0] / exact["red_marrow"] for k, v in
             (("shells", shells), ("classic", classic), ("rc", rc))}
    assert ratio["shells"] == pytest.approx(1.0, abs=0.15), ratio
    assert abs(ratio["shells"] - 1.0) < abs(ratio["classic"] - 1.0) / 3 and \
        abs(ratio["shells"] - 1.0) < abs(ratio["rc"] - 1.0) / 3, ratio
    assert shells["kidneys"].activity_MBq[0] == pytest.approx(exact["kidneys"], rel=0.02)
    # no rim: the local background is uniform and the shells recover the marrow exactly
    geom, masks, truth = _vertebra_phantom(rim_Bq_per_mL=4e3)
    img = [tt.ImageVolume.from_geometry(gaussian_filter(truth, fwhm / 2.3548 / 3.0, mode="constant")
                                        .astype(np.float32), geom, "Bq/mL")]
    exact_m = float((masks["red_marrow"] * truth).sum()) * geom.voxel_volume_mL / 1e6
    no_rim = structure_tacs(img, masks, [24.0], recovery=RecoveryModel("gtm", system_fwhm_mm=fwhm), body="body")
    assert no_rim["red_marrow"].activity_MBq[0] == pytest.approx(exact_m, rel=0.02)


def test_gtm_activity_is_concentration_times_volume_for_a_small_structure() -> None:
    """A 2 mL sphere in 4 mm voxels (its border voxels are mostly background): the GTM's activity is the sphere's
    concentration times its fractional volume, not the corrected voxels summed over the fractional mask (which
    reads 20-30 % low for such a sphere)."""
    from scipy.ndimage import gaussian_filter

    geom = tt.Geometry((32, 32, 32), (4.0, 4.0, 4.0))
    # fractional mask of the sphere by 4x supersampling, as the pipeline's covered fractions are
    sub = (np.arange(4) - 1.5) / 4
    g = np.indices(geom.shape) - 15.5
    frac = np.zeros(geom.shape)
    r_vox = (3 * 2000.0 / (4 * math.pi)) ** (1 / 3) / 4.0
    for dz in sub:
        for dy in sub:
            for dx in sub:
                frac += ((g[0] + dz) ** 2 + (g[1] + dy) ** 2 + (g[2] + dx) ** 2) <= r_vox**2
    frac /= 64
    body = np.ones(geom.shape, np.float32)
    truth = 1e3 + (30e3 - 1e3) * frac
    img = [tt.ImageVolume.from_geometry(gaussian_filter(truth, 10.0 / 2.3548 / 4.0, mode="nearest").astype(np.float32),
                                        geom, "Bq/mL")]
    masks = {"body": body, "lesion_1": frac.astype(np.float32)}
    got = structure_tacs(img, masks, [24.0], recovery=RecoveryModel("gtm", system_fwhm_mm=10.0), body="body")
    exact = 30e3 * float(frac.sum()) * geom.voxel_volume_mL / 1e6
    assert got["lesion_1"].activity_MBq[0] == pytest.approx(exact, rel=0.02)


def test_rbv_restores_a_blurred_piecewise_uniform_image() -> None:
    """The region-based voxel-wise correction of a noiseless blurred image whose regions are exactly the GTM's
    regions gives back the unblurred image (within 2 % of the structures' mean concentrations)."""
    from scipy.ndimage import gaussian_filter

    from theratwin.kinetics import GeometricTransferMatrix, rbv_correct

    geom, masks, truth = _vertebra_phantom(rim_Bq_per_mL=4e3)
    blurred = gaussian_filter(truth, 12.0 / 2.3548 / 3.0, mode="constant").astype(np.float32)
    gtm = GeometricTransferMatrix(masks, geom.spacing_mm, 12.0, body="body")
    corrected = rbv_correct(blurred, gtm)
    for name in ("red_marrow", "kidneys"):
        m = masks[name] > 0.5
        assert float(corrected[m].mean()) == pytest.approx(float(truth[m].mean()), rel=0.02), name
        assert float(blurred[m].mean()) != pytest.approx(float(truth[m].mean()), rel=0.1)


def test_partial_volume_flag_counts_parts_and_uses_the_resolution() -> None:
    from theratwin.kinetics import partial_volume_flag

    geom = tt.Geometry((30, 30, 60), (2.0, 2.0, 2.0))
    g = (np.indices(geom.shape) - np.array([14.5, 14.5, 29.5])[:, None, None, None]) * 2.0
    # two 4 mL spheres 60 mm apart: together 8 mL, each part 4 mL
    r = (3 * 4000.0 / (4 * math.pi)) ** (1 / 3)
    pair = ((g[0] ** 2 + g[1] ** 2 + (g[2] - 30) ** 2 <= r * r) | (g[0] ** 2 + g[1] ** 2 + (g[2] + 30) ** 2 <= r * r))
    f = partial_volume_flag(pair, geom.spacing_mm, 10.0)
    assert f["parts"] == 2 and f["largest_part_mL"] == pytest.approx(4.0, rel=0.05)
    assert f["threshold_mL"] == pytest.approx(8.0) and f["too_small"]  # (2 x 10 mm)^3 = 8 mL > 4 mL
    assert not partial_volume_flag(pair, geom.spacing_mm, 7.0)["too_small"]  # (14 mm)^3 = 2.7 mL < 4 mL
