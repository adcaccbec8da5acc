"""Voxel kernels: energy conservation, voxel-integration consistency, published voxel S-values."""

from __future__ import annotations

import numpy as np
import pytest

import theratwin as tt
from theratwin.dosimetry._physics import MEV_TO_MGY_G_PER_MBQ_S, emission_spectrum, mu_en_water_per_mm


def _photon_energy_absorbed_in_box_MeV(nuclide: str, half_sizes_mm: np.ndarray, n_dirs: int = 20000) -> float:
    """Photon energy per decay absorbed within a box centred on a point source (energy-absorption kernel):
    E * <1 - exp(-mu_en * L(u))>_u with L(u) the distance to the box surface along u (independent of the
    voxel integration: exact ray casting, random directions)."""
    spec = emission_spectrum(nuclide)
    rng = np.random.default_rng(1)
    u = rng.normal(size=(n_dirs, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        length = np.min(half_sizes_mm[None, :] / np.abs(u), axis=1)
    mu = mu_en_water_per_mm(spec.photon_energy_MeV)
    return float(np.sum(spec.photon_weight_MeV * np.mean(1.0 - np.exp(-mu[:, None] * length[None, :]), axis=1)))


def _kernel_energy_MeV(kernel: np.ndarray, voxel_mm: tuple[float, float, float], density: float = 1.0) -> float:
    mass_g = float(np.prod(voxel_mm)) / 1000.0 * density
    return float(kernel.sum()) * mass_g / MEV_TO_MGY_G_PER_MBQ_S


@pytest.mark.parametrize(("nuclide", "voxel_mm", "radius"), [
    ("Lu-177", (4.8, 4.8, 4.8), 10),
    ("Lu-177", (2.0, 3.0, 4.0), 8),
    ("Y-90", (4.0, 4.0, 5.0), 8),
    ("I-131", (4.42, 4.42, 4.42), 10),
    ("Ac-225", (4.8, 4.8, 4.8), 6),  # alphas of the chain deposited locally
])
def test_energy_conservation(nuclide: str, voxel_mm: tuple[float, float, float], radius: int) -> None:
    k = tt.dosimetry.voxel_kernel(nuclide, voxel_mm, radius)
    n = tt.nuclides.get(nuclide)
    # the electron energy of ICRP-107 is absorbed completely (ranges << kernel); photons: what the box absorbs
    half = (radius + 0.5) * np.asarray(voxel_mm)
    # a source spread over the central voxel sees a box that is, on average, as large as from its centre
    expected = n.electron_energy_MeV + n.alpha_energy_MeV + _photon_energy_absorbed_in_box_MeV(nuclide, half)
    assert _kernel_energy_MeV(k, voxel_mm) == pytest.approx(expected, rel=0.02)


def test_electron_only_kernel_holds_exactly_the_electron_energy() -> None:
    k = tt.dosimetry.voxel_kernel("Y-90", (3.0, 3.0, 3.0), 6, include_photons=False)
    y = tt.nuclides.get("Y-90")
    assert _kernel_energy_MeV(k, (3.0, 3.0, 3.0)) == pytest.approx(y.electron_energy_MeV, rel=0.005)


def test_kernel_symmetry_and_shape() -> None:
    k = tt.dosimetry.voxel_kernel("Lu-177", (2.0, 3.0, 4.0), 4)
    assert k.shape == (9, 9, 9)
    np.testing.assert_allclose(k, k[::-1, :, :])
    np.testing.assert_allclose(k, k[:, ::-1, :])
    np.testing.assert_allclose(k, k[:, :, ::-1])
    # array order (z, y, x): the neighbour along x (2 mm away) gets more than the one along z (4 mm away)
    assert k[4, 4, 5] > k[4, 5, 4] > k[5, 4, 4]


@pytest.mark.parametrize("nuclide", ["Lu-177", "Y-90"])
def test_anisotropic_kernel_equals_aggregated_fine_kernel(nuclide: str) -> None:
    """S for (2, 2, 4) mm voxels must equal the 2 mm kernel summed over voxel pairs: the dose to a 2x2x4 voxel
    from a source spread over another is the mean, over source sub-voxels, of the summed sub-voxel S-values
    times the mass ratio (1/2). Checks the voxel integration independently of the point kernel."""
    fine = np.asarray(tt.dosimetry.voxel_kernel(nuclide, (2.0, 2.0, 2.0), 9))
    coarse = tt.dosimetry.voxel_kernel(nuclide, (2.0, 2.0, 4.0), 3)
    c = 9
    for oz in range(0, 3):
        for oy in range(0, 2):
            for ox in range(0, 2):
                # source sub-voxels z in {0, 1}, target sub-voxels 2*oz + {0, 1}
                tot = 0.0
                for sz in (0, 1):
                    for tz in (0, 1):
                        tot += fine[c + 2 * oz + tz - sz, c + oy, c + ox]
                expected = tot / 2.0 / 2.0  # mean over 2 sources, mass ratio 1/2
                assert coarse[3 + oz, 3 + oy, 3 + ox] == pytest.approx(expected, rel=0.03, abs=1e-7)


# Lanconelli N et al. "A free database of radionuclide voxel S values for the dosimetry of nonuniform activity
# distributions." Phys Med Biol 2012;57:517-533, database file 177Lu, soft tissue (1.04 g/cm3), voxel 2.21 mm
# (values in mGy/(MBq s); (i, j, k) offsets in voxels).
LANCONELLI_LU177_2P21 = {
    (0, 0, 0): 1.66,
    (0, 0, 1): 4.83e-2,
    (0, 1, 1): 2.52e-3,
    (1, 1, 1): 2.50e-4,
    (0, 0, 2): 7.70e-5,
    (0, 0, 3): 3.24e-5,
    (0, 0, 5): 1.18e-5,
    (2, 2, 2): 2.42e-5,
}


def test_lanconelli_177Lu_voxel_s_values() -> None:
    k = tt.dosimetry.voxel_kernel("Lu-177", (2.21, 2.21, 2.21), 6, density_g_per_mL=1.04)
    c = 6
    # central voxel within 10 % (the acceptance the issue sets); electron cross-fire voxels within 15 %;
    # photon-dominated voxels within 20 % (energy-absorption approximation without buildup)
    tol = {(0, 0, 0): 0.10, (0, 0, 1): 0.15, (0, 1, 1): 0.15, (1, 1, 1): 0.15}
    for (i, j, kk), ref in LANCONELLI_LU177_2P21.items():
        got = float(k[c + i, c + j, c + kk])
        assert got == pytest.approx(ref, rel=tol.get((i, j, kk), 0.20)), (i, j, kk, got, ref)


def test_central_voxel_4p8mm_against_electron_escape_bound() -> None:
    """At 4.8 mm, 177Lu: the central S-value lies between the electron+photon energy over the voxel mass
    scaled by the escape estimated from the 2.21 mm Lanconelli central value (escape ~ surface/volume) and the
    no-escape bound."""
    k = tt.dosimetry.voxel_kernel("Lu-177", 4.8, 10, density_g_per_mL=1.04)
    lu = tt.nuclides.get("Lu-177")
    m_g = 0.48**3 * 1.04
    no_escape = MEV_TO_MGY_G_PER_MBQ_S * lu.electron_energy_MeV / m_g
    # escape fraction at 2.21 mm from the published central value, scaled by 2.21/4.8 (first-order S/V law)
    m_small = 0.221**3 * 1.04
    esc_small = 1.0 - 1.66 / (MEV_TO_MGY_G_PER_MBQ_S * lu.electron_energy_MeV / m_small)
    expected = no_escape * (1.0 - esc_small * 2.21 / 4.8)
    central = float(k[10, 10, 10])
    assert central < no_escape * 1.02
    assert central == pytest.approx(expected, rel=0.10)


def test_kernel_scales_with_voxel_size_and_density() -> None:
    k1 = tt.dosimetry.voxel_kernel("Lu-177", 4.8, 2)
    k2 = tt.dosimetry.voxel_kernel("Lu-177", 4.8, 2, density_g_per_mL=2.0)
    # in a medium twice as dense, the energy kept in the central voxel rises and the mass doubles
    assert 0.5 * k1[2, 2, 2] < k2[2, 2, 2] < 0.55 * k1[2, 2, 2]
    with pytest.raises(tt.InvalidInputError, match="voxel_mm"):
        tt.dosimetry.voxel_kernel("Lu-177", (4.8, -1.0, 4.8))
    with pytest.raises(tt.InvalidInputError):
        tt.dosimetry.voxel_kernel("Xx-999", 4.8)
