"""Sphere and organ S-values (limits, monotonicity, voxel consistency) and DVH metrics on analytic doses."""

from __future__ import annotations

import numpy as np
import pytest

import theratwin as tt
from theratwin.dosimetry import dose_map, dvh, organ_self_s_value, sphere_absorbed_fractions, sphere_s_value
from theratwin.dosimetry._physics import MEV_TO_MGY_G_PER_MBQ_S, emission_spectrum, mu_en_water_per_mm

MASSES_G = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]


@pytest.mark.parametrize("nuclide", ["Lu-177", "Y-90", "I-131"])
def test_sphere_s_values_monotonic(nuclide: str) -> None:
    s = np.array([sphere_s_value(nuclide, m) for m in MASSES_G])
    absorbed = s * np.array(MASSES_G)  # ∝ energy absorbed per decay
    assert np.all(np.diff(s) < 0)  # S falls with mass
    assert np.all(np.diff(absorbed) > 0)  # absorbed fraction rises with mass
    organ = np.array([organ_self_s_value(nuclide, m) for m in MASSES_G])
    assert np.all(organ >= s * (1 - 1e-9))  # electrons all absorbed in the organ model


def test_sphere_absorbed_fraction_limits() -> None:
    spec = emission_spectrum("Lu-177")
    # large spheres: every electron stays (1 kg: radius 62 mm >> 2 mm range)
    big = sphere_absorbed_fractions("Lu-177", 1000.0)
    assert big["electron"] > 0.995
    # small spheres: photon absorbed fraction -> mu_en x mean chord from an interior point (3a/4)
    a_mm = tt.dosimetry.sphere_radius_mm(0.01)
    mu = mu_en_water_per_mm(spec.photon_energy_MeV)
    # lines whose mean free path exceeds the sphere: first-order limit
    thin = mu * a_mm < 0.05
    expected_thin = float(np.sum(spec.photon_weight_MeV[thin] * mu[thin] * 0.75 * a_mm))
    af_small = sphere_absorbed_fractions("Lu-177", 0.01)
    got_total = af_small["photon"] * spec.photon_total_MeV
    assert got_total >= expected_thin * 0.95  # thick (low-energy X-ray) lines add on top
    # electrons escape small spheres; the first-order surface law 1 - 3<r>/(4a) (Berger 1971) holds for a >> <r>
    r_mm = tt.dosimetry.csda_range_mm(spec.electron_energy_MeV)
    x = np.linspace(0, 2.0, 4001)
    jx = tt.dosimetry._physics.scaled_dpk(x)
    mean_x = float(np.sum(x * jx) / np.sum(jx))
    mean_r = float(np.sum(spec.electron_weight_MeV * r_mm) / spec.electron_total_MeV) * mean_x
    for m in (10.0, 100.0):
        a = tt.dosimetry.sphere_radius_mm(m)
        af = sphere_absorbed_fractions("Lu-177", m)["electron"]
        assert af == pytest.approx(1 - 0.75 * mean_r / a, abs=0.003)
    assert af_small["electron"] < 0.9  # 0.01 g (1.3 mm radius): >10 % of the electron energy escapes


def test_organ_s_value_limits_and_units() -> None:
    lu = tt.nuclides.get("Lu-177")
    # tiny organ: photons escape -> S ~ electron energy / mass
    s = organ_self_s_value("Lu-177", 0.01)
    assert s == pytest.approx(MEV_TO_MGY_G_PER_MBQ_S * lu.electron_energy_MeV / 0.01, rel=0.01)
    # 0.16022 mGy g/(MBq s MeV): 1 MBq s = 1e6 decays, 1 MeV = 1.602e-13 J
    assert MEV_TO_MGY_G_PER_MBQ_S == pytest.approx(0.1602176634)
    with pytest.raises(tt.InvalidInputError, match="mass_g"):
        sphere_s_value("Lu-177", -1.0)


def test_voxelised_sphere_dose_matches_sphere_s_value() -> None:
    """90Y (pure beta) uniform in a 30 mL sphere of 2 mm voxels: the mean DVK dose over the sphere equals the
    sphere S-value dose (two independent geometries: voxel kernels vs the analytic reduction factor).

    The voxelised sphere reads low by the partial-volume effect of its border voxels (activity and dose are
    voxel averages): -3.2 % at 2 mm and -1.1 % at 1 mm voxels, i.e. the bias vanishes linearly with the voxel
    size (measured when writing this test), hence the one-sided 4 % band at 2 mm."""
    n, vox = 40, 2.0
    z, y, x = (np.indices((n, n, n)) - (n - 1) / 2) * vox
    r = np.sqrt(x * x + y * y + z * z)
    radius = (3 * 30.0 / (4 * np.pi)) ** (1 / 3) * 10
    # fractional mask by 4x supersampling of each voxel
    sub = (np.arange(4) - 1.5) / 4 * vox
    frac = np.zeros((n, n, n))
    for dz in sub:
        for dy in sub:
            for dx in sub:
                frac += np.sqrt((x + dx) ** 2 + (y + dy) ** 2 + (z + dz) ** 2) <= radius
    frac /= 64
    mass_g = float(frac.sum()) * vox**3 / 1000
    tia = (frac * 1e5).astype(np.float32)  # Bq h/mL
    dose = dose_map(tia, vox, "Y-90", radius_voxels=8)
    mean_dose = float((dose * frac).sum() / frac.sum())
    tia_MBq_h = 1e5 * mass_g / 1e6
    expected = tia_MBq_h * 3600 * sphere_s_value("Y-90", mass_g) / 1000
    assert 0.96 * expected < mean_dose < expected
    assert r.max() > radius  # the grid holds the sphere with margin


def test_dvh_metrics_on_linear_gradient() -> None:
    """Dose rising linearly along x from 0 to 10 Gy over 1000 columns: uniform dose distribution on [0, 10]."""
    dose = np.broadcast_to(np.linspace(0.005, 9.995, 1000)[None, None, :], (2, 2, 1000)).astype(np.float32)
    mask = np.ones(dose.shape, np.float32)
    h = dvh(dose, mask, voxel_volume_mL=0.001)
    m = h.metrics
    assert m["Dmean_Gy"] == pytest.approx(5.0, rel=1e-4)
    assert m["D50_Gy"] == pytest.approx(5.0, abs=0.011)
    assert m["D2_Gy"] == pytest.approx(9.8, abs=0.011)
    assert m["D98_Gy"] == pytest.approx(0.2, abs=0.011)
    assert m["Dmin_Gy"] == pytest.approx(0.005, abs=1e-6) and m["Dmax_Gy"] == pytest.approx(9.995, abs=1e-5)
    assert m["V2Gy_fraction"] == pytest.approx(0.8, abs=0.002)
    assert h.bin_width_Gy <= 0.01
    # cumulative DVH: V(D) = 1 - D/10
    i = np.searchsorted(h.dose_Gy, 3.0)
    assert h.volume_fraction[i] == pytest.approx(0.7, abs=0.002)
    assert np.all(np.diff(h.volume_fraction) <= 1e-12) and h.volume_fraction[0] == pytest.approx(1.0)
    assert h.volume_mL == pytest.approx(4.0)


def test_dvh_with_fractional_mask() -> None:
    """Half-covered voxels count half: two dose levels, 3 Gy on full voxels and 7 Gy on half voxels."""
    dose = np.zeros((1, 2, 100), np.float32)
    dose[0, 0], dose[0, 1] = 3.0, 7.0
    mask = np.zeros(dose.shape, np.float32)
    mask[0, 0], mask[0, 1] = 1.0, 0.5
    m = dvh(dose, mask, voxel_volume_mL=1.0).metrics
    assert m["Dmean_Gy"] == pytest.approx((3 * 1 + 7 * 0.5) / 1.5)
    assert m["V5Gy_fraction"] == pytest.approx(1 / 3)
    assert m["D50_Gy"] == pytest.approx(3.0) and m["D2_Gy"] == pytest.approx(7.0)
    # mass weighting with density
    rho = np.ones(dose.shape, np.float32)
    rho[0, 1] = 2.0
    mm = dvh(dose, mask, density_g_per_mL=rho).metrics
    assert mm["Dmean_Gy"] == pytest.approx((3 * 1 + 7 * 1.0) / 2.0)
    with pytest.raises(tt.InvalidInputError, match="empty mask"):
        dvh(dose, np.zeros(dose.shape))
