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
