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
    """177Lu in a 21 cm uniform cube: by reciprocity the centre's DVK dose = electrons + the photon energy that a
    point source at the centre deposits within the cube (ray-cast independently, every photon path to the faces);
    with photons stopped at the kernel's edge, only what the kernel's cube absorbs; LED = electrons only."""
    from test_dosimetry_kernels import _photon_energy_absorbed_in_box_MeV

    n, vox, r = 44, 4.8, 10
    tia = np.full((n, n, n), 1.0e5, np.float32)
    lu = tt.nuclides.get("Lu-177")
    dvk = dose_map(tia, vox, "Lu-177", method="dvk", radius_voxels=r)
    cut = dose_map(tia, vox, "Lu-177", method="dvk", radius_voxels=r, long_range_photons=False)
    led = dose_map(tia, vox, "Lu-177", method="led")
    c = n // 2
    # the centre voxel's source sees faces 22 and 21 voxels away (plus half a voxel); the mean of the two boxes
    photons = 0.5 * sum(_photon_energy_absorbed_in_box_MeV("Lu-177", np.full(3, (k + 0.5) * vox)) for k in (c - 1, c))
    photons_cut = _photon_energy_absorbed_in_box_MeV("Lu-177", np.full(3, (r + 0.5) * vox))
    analytic_dvk = 1.0e5 * GY_PER_BQH_PER_ML_PER_MEV * (lu.electron_energy_MeV + photons)
    analytic_cut = 1.0e5 * GY_PER_BQH_PER_ML_PER_MEV * (lu.electron_energy_MeV + photons_cut)
    analytic_led = 1.0e5 * GY_PER_BQH_PER_ML_PER_MEV * lu.electron_energy_MeV
    assert dvk[c, c, c] == pytest.approx(analytic_dvk, rel=0.01)
    assert cut[c, c, c] == pytest.approx(analytic_cut, rel=0.02)
    # the photon energy the 10-voxel kernel dropped (3.4 % of the dose here) is restored
    assert float(dvk[c, c, c] - cut[c, c, c]) == pytest.approx(analytic_dvk - analytic_cut, rel=0.1)
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
    d = dose_map(tia, 3.0, "Lu-177", radius_voxels=4, long_range_photons=False)
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


# -- long-range photons ----------------------------------------------------------------------------------------


def _ray_cast_photon_energy_MeV(nuclide: str, lo_mm: np.ndarray, hi_mm: np.ndarray, n_dirs: int = 200000) -> float:
    """Photon energy per decay that a point source absorbs within a box extending ``lo_mm`` / ``hi_mm`` from it on
    the negative / positive side of each axis: E <1 - exp(-mu_en L(u))>_u, L the path length to the box's surface
    along direction u (random directions; exact geometry, nothing of the dose engine)."""
    from theratwin.dosimetry._physics import emission_spectrum, mu_en_water_per_mm

    spec = emission_spectrum(nuclide)
    u = np.random.default_rng(7).normal(size=(n_dirs, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        length = np.min(np.where(u > 0, hi_mm / np.abs(u), lo_mm / np.abs(u)), axis=1)
    mu = mu_en_water_per_mm(spec.photon_energy_MeV)
    return float(np.sum(spec.photon_weight_MeV * np.mean(1.0 - np.exp(-mu[:, None] * length[None, :]), axis=1)))


def test_photon_energy_is_conserved_over_a_61_cm_water_cube() -> None:
    """A 177Lu point source at the centre of a 128^3 water cube of 4.8 mm voxels (61.4 cm): the energy deposited in
    the cube (dose x mass) equals the electron energy plus the photon energy that does not escape through the
    faces (ray casting, independent of the kernels), within 0.5 % with the long-range term; a 10-voxel kernel
    alone drops about 10 % of the total (76 % of the photon energy)."""
    n, vox = 128, 4.8
    c = n // 2
    tia = np.zeros((n, n, n), np.float32)
    tia[c, c, c] = 1.0e6
    decays = 1.0e6 * vox**3 / 1000.0 * 3600.0
    lu = tt.nuclides.get("Lu-177")
    photons = _ray_cast_photon_energy_MeV("Lu-177", np.full(3, (c + 0.5) * vox), np.full(3, (n - c - 0.5) * vox))
    expected_MeV = lu.electron_energy_MeV + lu.alpha_energy_MeV + photons

    def deposited_MeV(d: np.ndarray) -> float:
        return float(d.sum(dtype=np.float64)) * vox**3 / 1e6 / 1.602176634e-13 / decays  # Gy x kg -> MeV/decay

    with_lr = deposited_MeV(dose_map(tia, vox, "Lu-177"))
    cut = deposited_MeV(dose_map(tia, vox, "Lu-177", long_range_photons=False))
    print(f"\n61 cm cube: deposited {with_lr:.5f} MeV/decay with the long-range term, {cut:.5f} without; "
          f"expected {expected_MeV:.5f} (photons {photons:.5f})")
    assert with_lr == pytest.approx(expected_MeV, rel=0.005)
    assert cut < 0.92 * expected_MeV


def _exact_long_range_dose(tia: np.ndarray, vox: float, split_mm: float) -> np.ndarray:
    """The long-range photon dose by a direct linear convolution on the fine grid itself, over twice the volume
    (no wrap-around), with the long-range kernel sampled at every fine offset (it is smooth): the reference the
    coarse-grid term must reproduce."""
    import scipy.fft

    from theratwin.dosimetry.kernels import long_range_photon_density

    shape = tia.shape
    q = tuple(scipy.fft.next_fast_len(2 * s, real=True) for s in shape)
    d = [np.minimum(np.arange(k), k - np.arange(k)) * vox for k in q]
    r = np.sqrt(d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2)
    kernel = long_range_photon_density("Lu-177", r, split_mm) * vox**3 * 3600.0 * 1e-3 * 1.602176634e-13 / 1e-6
    buf = np.zeros(q)
    buf[: shape[0], : shape[1], : shape[2]] = tia
    return scipy.fft.irfftn(scipy.fft.rfftn(buf) * scipy.fft.rfftn(kernel), s=q)[: shape[0], : shape[1], : shape[2]]


def _torso(shape: tuple[int, int, int]) -> np.ndarray:
    """A body-like TIA map: an elliptic cylinder through both z faces (as a SPECT field of view cuts a patient),
    a hot sphere near one face and a larger one inside (Bq h/mL)."""
    z, y, x = np.indices(shape).astype(float)
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    tia = np.where(((x - cx) / (0.25 * shape[2])) ** 2 + ((y - cy) / (0.17 * shape[1])) ** 2 <= 1, 1.0e4, 0.0)
    tia[(x - cx - 6) ** 2 + (y - cy + 3) ** 2 + (z - 8) ** 2 < 16] = 3.0e5
    tia[(x - cx + 14) ** 2 + (y - cy + 2) ** 2 + (z - shape[0] / 2) ** 2 < 100] = 2.0e5
    return tia.astype(np.float32)


@pytest.mark.parametrize("path", ["spectral", "slabs"])
def test_long_range_term_equals_the_exact_full_range_convolution(path: str) -> None:
    """The long-range dose of a torso-like map, inside the body, against the exact full-range convolution: the
    fast path inside the FFT pair within 3 % of the long-range dose everywhere (measured 2.8 %, next to a 1 mL hot
    sphere at the face that cuts the body: a near point source, whose spectrum the 24 mm coarse grid cuts) and
    0.15 % on average; the overlap-add path's real-space coarse grid within 4 % (measured 3.0 %) and 0.5 % on
    average. Relative to the total dose (what a structure's dose sees) both stay below 1 %."""
    from theratwin.dosimetry.longrange import LongRangePhotons, split_length_mm

    shape, vox = (72, 80, 80), 4.8
    tia = _torso(shape)
    body = tia > 0
    split = split_length_mm((vox, vox, vox))
    lr = LongRangePhotons("Lu-177", (vox, vox, vox), split)
    from theratwin.dosimetry.longrange import MIN_RADIUS_VOXELS

    # the long-range part alone, padded as the engine pads
    kernel = np.zeros((2 * MIN_RADIUS_VOXELS + 1,) * 3, np.float32)
    # max_voxels below the padded grid forces the overlap-add slabs
    got = fft_convolve(tia, kernel, long_range=lr, max_voxels=(40 * 96 * 96) if path == "slabs" else 320**3)
    exact = _exact_long_range_dose(tia, vox, split)
    rel = np.abs(got - exact)[body] / exact[body]
    bound = 0.03 if path == "spectral" else 0.04
    assert float(rel.max()) < bound, float(rel.max())
    print(f"\n{path}: long-range dose vs exact, max {float(rel.max()):.4f}, mean {float(rel.mean()):.5f}")
    assert float(rel.mean()) < (0.0015 if path == "spectral" else 0.005)
    total = dose_map(tia, vox, "Lu-177")
    assert float((np.abs(got - exact)[body] / total[body]).max()) < 0.01


def test_long_range_term_on_the_demo_patient_is_within_1_percent_of_the_dose() -> None:
    """On the demo patient's true TIA map (cycle 1, 4.8 mm voxels), cropped to the abdomen so that the crop's faces
    cut through the body (kidneys, liver, spleen, red marrow, lesions): the coarse long-range term departs from the
    exact full-range convolution by < 1 % of the total dose in every body voxel (measured 0.5 %), while the
    long-range part itself is on average 8 % of the dose there and up to 40 %."""
    from theratwin.demo import build as db
    from theratwin.demo.kinetics import CYCLE1_KINETICS
    from theratwin.demo.phantom import paint_labels
    from theratwin.dosimetry.longrange import LongRangePhotons, split_length_mm

    opts = db.DemoOptions()
    _, fine, _, _ = db._grids(opts)
    labels_all_volumes = paint_labels(fine.shape, fine.origin, fine.spacing)
    luts, _ = db._compartment_luts(labels_all_volumes, fine.spacing**3 / 1000.0)
    start, stop = np.array([14, 36, 26]), np.array([74, 92, 102])  # SPECT voxels (z, y, x): the abdomen
    box = labels_all_volumes[2 * start[0]:2 * stop[0], 2 * start[1]:2 * stop[1], 2 * start[2]:2 * stop[2]]
    tia = db._block_mean(db._tia_lut_Bq_h_per_mL(dict(CYCLE1_KINETICS), luts, 7400.0).astype(np.float32)[box])
    body = db._block_mean((box > 0).astype(np.float32)) > 0.5
    vox = 4.8
    split = split_length_mm((vox, vox, vox))
    from theratwin.dosimetry.longrange import MIN_RADIUS_VOXELS

    padding = np.zeros((2 * MIN_RADIUS_VOXELS + 1,) * 3, np.float32)  # padded as the engine pads
    got = fft_convolve(tia, padding, long_range=LongRangePhotons("Lu-177", (vox,) * 3, split))
    exact = _exact_long_range_dose(tia, vox, split)
    dose = dose_map(tia, vox, "Lu-177")
    err = np.abs(got - exact)[body] / dose[body]
    share = exact[body] / dose[body]
    assert float(share.mean()) > 0.05
    assert float(err.max()) < 0.01, float(err.max())
    assert float(err.mean()) < 0.001


def test_long_range_term_in_the_overlap_add_and_multi_kernel_paths() -> None:
    """The slab (overlap-add) path and the multi-kernel density method add the same long-range dose as the single
    FFT: a torso map in water gives the same dose all three ways within 1 %."""
    shape, vox = (48, 56, 56), 4.8
    tia = _torso(shape)
    from theratwin.dosimetry.dose import DVKEngine

    one = DVKEngine().compute(tia, (vox,) * 3, "Lu-177")
    rho = np.ones(shape, np.float32)
    multi = DVKEngine(density_method="multi_kernel").compute(tia, (vox,) * 3, "Lu-177", density_g_per_mL=rho)
    body = tia > 0
    np.testing.assert_allclose(multi[body], one[body], rtol=0.01)
