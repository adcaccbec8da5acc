"""Dose maps: uniform-activity analytic doses, density scaling, FFT without wrap-around, plug-in engines."""

from __future__ import annotations

import numpy as np
import pytest

import theratwin as tt
from theratwin.dosimetry import DOSE_ENGINES, dose_map, fft_convolve, hu_to_density

# Gy per (Bq h/mL) per MeV at 1 g/mL: 3600 s/h x 1.602176634e-13 J/MeV / 1e-3 kg (SI definitions)
GY_PER_BQH_PER_ML_PER_MEV = 3600.0 * 1.602176634e-13 / 1e-3


def test_uniform_pure_beta_emitter_dvk_and_led_equal_analytic_dose() -> None:
    """90Y (no photons): in the interior of a large uniform region, every electron stops where the dose is
    uniform, so D = TIA x E_electron / rho (charged-particle equilibrium)."""
    tia = np.zeros((40, 40, 40), np.float32)
    tia[5:35, 5:35, 5:35] = 2.0e5  # Bq h/mL
    y = tt.nuclides.get("Y-90")
    analytic = 2.0e5 * GY_PER_BQH_PER_ML_PER_MEV * y.electron_energy_MeV
    dvk = dose_map(tia, (4.0, 4.0, 4.0), "Y-90", method="dvk")
    led = dose_map(tia, (4.0, 4.0, 4.0), "Y-90", method="led")
    interior = (slice(12, 28),) * 3
    np.testing.assert_allclose(dvk[interior], analytic, rtol=0.01)
    np.testing.assert_allclose(led[interior], analytic, rtol=1e-5)
    # the outermost 4 mm layer loses part of its electron energy across the surface (less than half)
    edge = dvk[20, 20, 5] / analytic
    assert 0.5 < edge < 0.95
    assert np.all(dvk >= 0)
    # energy conservation over the whole map (the 20 mm margin exceeds the 90Y electron range):
    # sum of dose x mass = TIA x E summed over voxels
    assert float(dvk.sum(dtype=np.float64)) == pytest.approx(float(led.sum(dtype=np.float64)), rel=0.005)


def test_uniform_lu177_interior_dose_with_photons() -> None:
    """177Lu in a 20 cm uniform cube: interior DVK dose = electrons + the photon energy absorbed within the kernel
    cube (ray-cast independently); LED = electrons only."""
    from test_dosimetry_kernels import _photon_energy_absorbed_in_box_MeV

    n, vox, r = 44, 4.8, 10
    tia = np.full((n, n, n), 1.0e5, np.float32)
    lu = tt.nuclides.get("Lu-177")
    dvk = dose_map(tia, vox, "Lu-177", method="dvk", radius_voxels=r)
    led = dose_map(tia, vox, "Lu-177", method="led")
    photons = _photon_energy_absorbed_in_box_MeV("Lu-177", np.full(3, (r + 0.5) * vox))
    analytic_dvk = 1.0e5 * GY_PER_BQH_PER_ML_PER_MEV * (lu.electron_energy_MeV + photons)
    analytic_led = 1.0e5 * GY_PER_BQH_PER_ML_PER_MEV * lu.electron_energy_MeV
    c = n // 2
    assert dvk[c, c, c] == pytest.approx(analytic_dvk, rel=0.02)
    # (LED also keeps the sub-keV X-rays, 2.5e-5 MeV per decay for 177Lu: 0.02 %)
    assert led[c, c, c] == pytest.approx(analytic_led, rel=5e-4)


def test_density_scaling() -> None:
    tia = np.full((24, 24, 24), 1.0e5, np.float32)
    rho = np.full(tia.shape, 1.0, np.float32)
    rho[:, :, 12:] = 1.9  # "bone" half
    led = dose_map(tia, 4.0, "Lu-177", method="led", density_g_per_mL=rho)
    led_w = dose_map(tia, 4.0, "Lu-177", method="led")
    np.testing.assert_allclose(led[:, :, 12:], led_w[:, :, 12:] / 1.9, rtol=1e-5)
    dvk = dose_map(tia, 4.0, "Lu-177", method="dvk", density_g_per_mL=rho)
    dvk_w = dose_map(tia, 4.0, "Lu-177", method="dvk")
    np.testing.assert_allclose(dvk, dvk_w / rho, rtol=1e-5)
    with pytest.raises(tt.InvalidInputError, match="density"):
        dose_map(tia, 4.0, "Lu-177", density_g_per_mL=np.zeros(tia.shape))


def test_point_source_gives_the_kernel_without_wrap_around() -> None:
    """A source in a corner voxel: the dose is the kernel itself around it, and nothing beyond the kernel's
    reach (no energy wrapped around to the opposite faces)."""
    tia = np.zeros((16, 16, 16), np.float32)
    tia[0, 0, 0] = 1.0e6
    k = np.asarray(tt.dosimetry.voxel_kernel("Lu-177", (3.0, 3.0, 3.0), 4))
    d = dose_map(tia, 3.0, "Lu-177", radius_voxels=4)
    scale = 1.0e6 * 0.027 * 3600.0 * 1e-6 * 1e-3  # Bq h/mL x mL x s/h x MBq/Bq x Gy/mGy
    # float32 FFT: absolute round-off of order 1e-7 x max; a wrapped kernel tail would be >= 1e-5 x max
    tol = 1e-6 * float(d.max())
    np.testing.assert_allclose(d[:5, :5, :5], k[4:, 4:, 4:] * scale, rtol=1e-3, atol=tol)
    assert float(k[4, 4, 8] / k[4, 4, 4]) > 1e-5  # the tail that would wrap is above the tolerance
    assert np.all(np.abs(d[5:, :, :]) < tol)
    assert np.all(np.abs(d[:, :, 5:]) < tol)


def test_overlap_add_equals_single_fft() -> None:
    rng = np.random.default_rng(3)
    vals = rng.random((37, 20, 22)).astype(np.float32)
    kernel = rng.random((7, 7, 7)).astype(np.float32)
    one = fft_convolve(vals, kernel)
    slabs = fft_convolve(vals, kernel, max_voxels=20 * 24 * 24)
    np.testing.assert_allclose(slabs, one, rtol=1e-4, atol=1e-5)
    # and both equal a direct convolution
    from scipy.ndimage import convolve

    direct = convolve(vals.astype(float), kernel.astype(float), mode="constant", cval=0.0)
    np.testing.assert_allclose(one, direct, rtol=1e-4, atol=1e-4)


def test_dose_map_is_deterministic_and_float32() -> None:
    rng = np.random.default_rng(0)
    tia = rng.random((20, 18, 16)).astype(np.float32) * 1e5
    a = dose_map(tia, (4.8, 4.8, 4.8), "Lu-177", method="dvk")
    b = dose_map(tia.astype(np.float64), (4.8, 4.8, 4.8), "Lu-177", method="dvk")
    assert a.dtype == np.float32 and a.shape == tia.shape
    np.testing.assert_array_equal(a, b)


def test_hu_to_density_calibration() -> None:
    hu = np.array([-1000.0, -500.0, 0.0, 800.0, 1600.0, 3000.0, -2000.0])
    rho = hu_to_density(hu)
    np.testing.assert_allclose(rho[:5], [0.0012, 0.5006, 1.0, 1.46, 1.92], rtol=1e-3)
    assert rho[5] > 1.92 and rho[6] == pytest.approx(0.0012)
    with pytest.raises(tt.InvalidInputError, match="calibration"):
        hu_to_density(hu, ((0.0, 1.0), (-100.0, 0.9)))
    # the inverse, for synthetic CTs consistent with the calibration
    back = tt.dosimetry.density_to_hu(hu_to_density(hu[:6]))
    np.testing.assert_allclose(back, hu[:6], atol=0.5)


def test_bad_inputs_and_unknown_engine() -> None:
    with pytest.raises(tt.InvalidInputError, match="3D"):
        dose_map(np.zeros((4, 4)), 4.0, "Lu-177")
    with pytest.raises(tt.InvalidInputError, match="NaN"):
        dose_map(np.full((4, 4, 4), np.nan), 4.0, "Lu-177")
    with pytest.raises(tt.InvalidInputError, match="voxel_mm"):
        dose_map(np.zeros((4, 4, 4)), (4.0, 4.0), "Lu-177")
    with pytest.raises(tt.ConfigurationError, match="Unknown dose engine 'nope'"):
        dose_map(np.zeros((4, 4, 4)), 4.0, "Lu-177", method="nope")


class _TwiceLED:
    """An engine from outside the package (as a site's Monte Carlo would be): 2 x LED, to be recognisable."""

    name = "twice_led"
    description = "test engine"
    references = ["test"]

    def compute(self, tia_Bq_h_per_mL, voxel_mm, nuclide, *, density_g_per_mL=None, progress=None):
        return 2.0 * dose_map(tia_Bq_h_per_mL, voxel_mm, nuclide, method="led", density_g_per_mL=density_g_per_mL)


def test_outside_engine_through_registry() -> None:
    DOSE_ENGINES.register("twice_led", _TwiceLED())
    try:
        tia = np.full((6, 6, 6), 1e4, np.float32)
        np.testing.assert_allclose(dose_map(tia, 4.0, "Lu-177", method="twice_led"),
                                   2 * dose_map(tia, 4.0, "Lu-177", method="led"), rtol=1e-6)
        assert isinstance(DOSE_ENGINES.get("twice_led"), tt.dosimetry.DoseEngine)
    finally:
        DOSE_ENGINES.unregister("twice_led")


def test_kernel_reaches_the_electron_range_whatever_radius_is_asked() -> None:
    """90Y in 1.5 mm voxels with radius_voxels=5: the electrons go up to about 20 mm, so the kernel is enlarged and
    a point source still deposits all its electron energy (dose x mass summed = LED's)."""
    tia = np.zeros((40, 40, 40), np.float32)
    tia[20, 20, 20] = 1e6
    d = dose_map(tia, 1.5, "Y-90", radius_voxels=5)
    led = dose_map(tia, 1.5, "Y-90", method="led")
    assert float(d.sum(dtype=np.float64)) == pytest.approx(float(led.sum(dtype=np.float64)), rel=0.005)


def test_multi_kernel_density_correction() -> None:
    """'multi_kernel': in a homogeneous medium at one of the levels the dose equals the convolution with that
    medium's kernel; energy is conserved in a lung/water phantom; in lung (0.3 g/mL) the 177Lu electrons reach
    3x farther than the water kernel scaled by 1/density assumes, so more dose lands beside the source."""
    vox = (2.0, 2.0, 2.0)
    tia = np.zeros((24, 24, 24), np.float32)
    tia[:, 8:16, 8:16] = 1e5
    rho = np.full(tia.shape, 1.92, np.float32)
    d_multi = dose_map(tia, vox, "Lu-177", density_g_per_mL=rho, density_method="multi_kernel", include_photons=False)
    k_bone = np.asarray(tt.dosimetry.voxel_kernel("Lu-177", vox, 10, density_g_per_mL=1.92, include_photons=False))
    direct = fft_convolve(tia, k_bone * (0.008 * 3600 * 1e-6 * 1e-3))
    np.testing.assert_allclose(d_multi, np.maximum(direct, 0), rtol=2e-3, atol=1e-6 * float(direct.max()))
    # lung | water halves along z; electrons only: energy deposited = energy emitted
    tia2 = np.zeros((32, 24, 24), np.float32)
    tia2[6:26, 8:16, 8:16] = 1e5
    rho2 = np.ones(tia2.shape, np.float32)
    rho2[:16] = 0.3
    d = dose_map(tia2, vox, "Lu-177", density_g_per_mL=rho2, density_method="multi_kernel", include_photons=False)
    led = dose_map(tia2, vox, "Lu-177", method="led", density_g_per_mL=rho2)
    assert float((d * rho2).sum(dtype=np.float64)) == pytest.approx(float((led * rho2).sum(dtype=np.float64)),
                                                                      rel=0.01)
    scaled = dose_map(tia2, vox, "Lu-177", density_g_per_mL=rho2, include_photons=False)
    # just beside the source, in lung: longer ranges put more dose there; in water the two methods agree
    assert d[10, 12, 16] > 1.5 * scaled[10, 12, 16]
    assert d[22, 12, 16] == pytest.approx(scaled[22, 12, 16], rel=0.02)
    with pytest.raises(tt.InvalidInputError, match="density_method"):
        dose_map(tia2, vox, "Lu-177", density_method="nope")
