"""Physics data and models behind the dose engines (water, unit density unless stated).

Everything here is a documented approximation with its source:

* Electron ranges: the Katz-Penfold empirical range-energy relation (Katz L, Penfold AS. Rev Mod Phys
  1952;24:28-44, Eq. 8-9), R [g/cm^2] = 0.412 E^n with n = 1.265 - 0.0954 ln E (0.01-2.5 MeV) and
  R = 0.530 E - 0.106 above 2.5 MeV. Within 10 % of the ESTAR CSDA ranges in water (NIST, Berger et al.)
  from 10 keV to 3 MeV (e.g. 0.135 vs 0.143 mm at 100 keV, 1.64 vs 1.77 mm at 500 keV).
* Electron dose point kernel: a scaled energy-deposition distribution ``j(x)`` in ``x = r / R(E)`` (the form
  of Berger's scaled point kernels, MIRD Pamphlet 7, 1971, and of Cross et al. 1992), normalised so that
  ``integral j(x) dx = 1`` (energy conservation; bremsstrahlung is deposited with the electron, which
  overstates local dose by its radiative yield, < 0.5 % for 177Lu, about 1 % for 90Y). See :func:`scaled_dpk`.
* Photons: point-source kernel in water in the energy-absorption approximation (attenuation with
  ``mu_en`` in place of ``mu`` times buildup; Loevinger & Berman's "absorbed-energy" approximation as used in
  MIRD Pamphlet 2/3), ``e(r) = Y E mu_en exp(-mu_en r) / (4 pi r^2)``. It conserves energy (all photon energy is
  absorbed in an infinite medium) but, having no scatter buildup, deposits the energy of scattered photons
  farther away than they really go: photon absorbed fractions of organ-size volumes come out low (for 177Lu,
  where photons carry 19 % of the emitted energy, the photon part is a few % of an organ's self-dose).
  ``mu_en/rho`` of liquid water from NIST (Hubbell JH, Seltzer SM. NISTIR 5632, 1995, Table 4), interpolated
  log-log.
* Alphas and electrons below 10 keV (range < 3 um): deposited locally.
* CT number to mass density: bilinear calibration (see :func:`hu_to_density`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import InvalidInputError
from ..nuclides import Nuclide
from ..nuclides import get as get_nuclide

__all__ = [
    "MEV_TO_MGY_G_PER_MBQ_S",
    "csda_range_mm",
    "scaled_dpk",
    "scaled_dpk_cdf",
    "mu_en_water_per_mm",
    "EmissionSpectrum",
    "emission_spectrum",
    "hu_to_density",
    "density_to_hu",
    "DEFAULT_HU_DENSITY_POINTS",
    "DPK_X_MAX",
]

#: S [mGy/(MBq s)] = this x energy absorbed per decay [MeV] / mass [g]:
#: 1.602176634e-13 J/MeV x 1e6 decays/(MBq s) x 1e3 mGy/Gy / 1e-3 kg/g (SI definitions).
MEV_TO_MGY_G_PER_MBQ_S = 1.602176634e-13 * 1e6 * 1e3 / 1e-3

# Electrons (and photons) whose mean path is below this are deposited where they are emitted.
LOCAL_ENERGY_MeV = 0.010

# Scaled DPK shape (see scaled_dpk): j(x) = N (1 + A x) exp(-(x / S)^P), truncated at X_MAX.
# Constants chosen from a coarse grid (A in 0-4, S in 0.85-1.2, P in 3-5) so that the resulting 177Lu voxel
# S-values at 2.21 mm reproduce the off-centre values of Lanconelli et al. 2012 (S(1,0,0), S(1,1,0), S(1,1,1));
# the central value is then a check (see Testing/python/test_dosimetry_kernels.py).
_DPK_A = 2.0
_DPK_S = 0.85
_DPK_P = 3.0
DPK_X_MAX = 1.8  # j(1.8)/j_max < 1e-4: nothing noticeable is lost by the truncation

# mu_en/rho of liquid water, cm^2/g, vs photon energy, MeV (Hubbell & Seltzer, NISTIR 5632, Table 4).
_MUEN_E_MeV = np.array([
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.015, 0.020, 0.030, 0.040, 0.050,
    0.060, 0.080, 0.100, 0.150, 0.200, 0.300, 0.400, 0.500, 0.600, 0.800, 1.000, 1.250, 1.500, 2.000,
    3.000, 4.000, 5.000, 6.000, 8.000, 10.00,
])
_MUEN_CM2_PER_G = np.array([
    4065.0, 1372.0, 615.2, 192.9, 82.78, 42.58, 24.64, 10.37, 4.944, 1.374, 0.5503, 0.1557, 0.06947,
    0.04223, 0.03190, 0.02597, 0.02546, 0.02764, 0.02967, 0.03192, 0.03279, 0.03299, 0.03284, 0.03206,
    0.03103, 0.02965, 0.02833, 0.02608, 0.02281, 0.02066, 0.01915, 0.01806, 0.01658, 0.01566,
])


def csda_range_mm(energy_MeV: np.ndarray | float, density_g_per_mL: float = 1.0) -> np.ndarray:
    """Electron range in mm for kinetic energy ``energy_MeV`` (Katz & Penfold 1952, Eq. 8-9).

    Parameters
    ----------
    energy_MeV
        Kinetic energy in MeV (array or scalar, > 0).
    density_g_per_mL
        Density of the (water-like) medium; the range scales as 1/density.
    """
    e = np.clip(np.asarray(energy_MeV, dtype=float), 1e-4, None)
    n = 1.265 - 0.0954 * np.log(e)
    r_g_cm2 = np.where(e <= 2.5, 0.412 * e**n, 0.530 * e - 0.106)
    return r_g_cm2 * 10.0 / density_g_per_mL  # g/cm^2 -> mm at the given density


def _dpk_unnormalised(x: np.ndarray) -> np.ndarray:
    return (1.0 + _DPK_A * x) * np.exp(-((x / _DPK_S) ** _DPK_P))


@lru_cache(maxsize=1)
def _dpk_table() -> tuple[np.ndarray, np.ndarray, float]:
    x = np.linspace(0.0, DPK_X_MAX, 4001)
    y = _dpk_unnormalised(x)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])
    return x, cdf / cdf[-1], float(cdf[-1])


def scaled_dpk(x: np.ndarray | float) -> np.ndarray:
    """Scaled electron dose point kernel ``j(x)``, x = r / R_CSDA (dimensionless, integral 1).

    ``j(x) dx`` is the fraction of an electron's energy deposited in the spherical shell between ``x R`` and
    ``(x + dx) R`` around its emission point. Form ``N (1 + 2x) exp(-(x/0.85)^3)``: finite at the source,
    a maximum near x = 0.46, mean x = 0.52, 93 % of the energy within x = 1 and the rest in a straggling tail,
    the qualitative shape of the scaled kernels of monoenergetic electrons in water (Berger MJ, MIRD
    Pamphlet 7, J Nucl Med 1971;12 Suppl 5). The three constants were selected by us from a coarse grid to
    reproduce the off-centre 177Lu voxel S-values of Lanconelli et al. 2012 at 2.21 mm (see ``_DPK_A``); they
    are not a fit to Berger's tables.
    """
    x = np.asarray(x, dtype=float)
    _, _, norm = _dpk_table()
    return np.where((x >= 0) & (x <= DPK_X_MAX), _dpk_unnormalised(np.clip(x, 0, None)) / norm, 0.0)


def scaled_dpk_cdf(x: np.ndarray | float) -> np.ndarray:
    """Fraction of the electron energy deposited within scaled distance ``x`` (integral of j, 0..1)."""
    grid, cdf, _ = _dpk_table()
    return np.interp(np.asarray(x, dtype=float), grid, cdf, left=0.0, right=1.0)


def mu_en_water_per_mm(energy_MeV: np.ndarray | float, density_g_per_mL: float = 1.0) -> np.ndarray:
    """Linear energy-absorption coefficient of water-like tissue in 1/mm (NIST, log-log interpolation)."""
    e = np.clip(np.asarray(energy_MeV, dtype=float), _MUEN_E_MeV[0], _MUEN_E_MeV[-1])
    mu = np.exp(np.interp(np.log(e), np.log(_MUEN_E_MeV), np.log(_MUEN_CM2_PER_G)))
    return mu * density_g_per_mL / 10.0  # cm^2/g * g/cm^3 = 1/cm -> 1/mm


@dataclass(frozen=True)
class EmissionSpectrum:
    """A nuclide's emissions grouped for the dose engines (all energies per parent decay, MeV).

    ``electron_energy_MeV`` / ``electron_weight_MeV``: kinetic energies of electron "lines" (the beta spectrum
    binned, plus conversion and Auger lines) and the energy each carries per decay (yield x energy).
    ``photon_energy_MeV`` / ``photon_weight_MeV``: the same for photons. ``local_MeV``: energy deposited at the
    emission point (alphas, recoils, electrons below 10 keV).
    """

    nuclide: str
    electron_energy_MeV: np.ndarray
    electron_weight_MeV: np.ndarray
    photon_energy_MeV: np.ndarray
    photon_weight_MeV: np.ndarray
    local_MeV: float

    @property
    def electron_total_MeV(self) -> float:
        return float(self.electron_weight_MeV.sum())

    @property
    def photon_total_MeV(self) -> float:
        return float(self.photon_weight_MeV.sum())

    @property
    def total_MeV(self) -> float:
        return self.electron_total_MeV + self.photon_total_MeV + self.local_MeV


def emission_spectrum(nuclide: str | Nuclide) -> EmissionSpectrum:
    """Group the ICRP-107 emissions of ``nuclide`` for the dose engines.

    The continuous beta spectrum (``beta_spectrum_MeV``, ``beta_spectrum_per_MeV``) is cut into bins, each
    represented by its energy-weighted mean energy; it is rescaled so that its energy integral equals the sum
    of the beta lines' mean energies x yields (the nuclide's tabulated mean beta energy). Discrete conversion
    and Auger electrons are lines. Electrons below 10 keV, photons below 1 keV and alphas are local.
    """
    name = nuclide.name if isinstance(nuclide, Nuclide) else get_nuclide(nuclide).name
    return _emission_spectrum(name)


@lru_cache(maxsize=32)
def _emission_spectrum(name: str) -> EmissionSpectrum:
    nuclide = get_nuclide(name)
    e_beta_lines, y_beta_lines = nuclide.lines(("beta-", "beta+"))
    beta_energy_MeV = float(np.sum(e_beta_lines * y_beta_lines))
    energies: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    local = float(nuclide.alpha_energy_MeV)
    grid = np.asarray(nuclide.beta_spectrum_MeV, dtype=float)
    dens = np.asarray(nuclide.beta_spectrum_per_MeV, dtype=float)
    if beta_energy_MeV > 0 and grid.size > 1:
        # fine resampling so that each bin carries a small share of the energy
        fine = np.linspace(grid[0], grid[-1], 2001)
        p = np.interp(fine, grid, dens)
        ep = fine * p
        de = np.diff(fine)
        e_bin = 0.5 * (ep[1:] + ep[:-1]) * de  # energy per bin
        n_bin = 0.5 * (p[1:] + p[:-1]) * de  # electrons per bin
        keep = n_bin > 0
        e_mean = np.where(keep, e_bin / np.where(keep, n_bin, 1.0), 0.5 * (fine[1:] + fine[:-1]))
        e_bin = e_bin * (beta_energy_MeV / e_bin.sum())
        # group into 200 bins of equal width (enough for smooth range sampling)
        idx = np.minimum((np.arange(e_bin.size) * 200) // e_bin.size, 199)
        w = np.bincount(idx, weights=e_bin, minlength=200)
        emean = np.bincount(idx, weights=e_bin * e_mean, minlength=200) / np.where(w > 0, w, 1.0)
        energies.append(emean[w > 0])
        weights.append(w[w > 0])
    e_lines, y_lines = nuclide.lines(("IE", "auger"))
    energies.append(e_lines)
    weights.append(e_lines * y_lines)
    e_all = np.concatenate(energies) if energies else np.zeros(0)
    w_all = np.concatenate(weights) if weights else np.zeros(0)
    low = e_all < LOCAL_ENERGY_MeV
    local += float(w_all[low].sum())
    e_ph, y_ph = nuclide.lines(("gamma", "X", "annihilation"))
    w_ph = e_ph * y_ph
    low_ph = e_ph < LOCAL_ENERGY_MeV / 10  # photons below 1 keV (mean free path < 3 um)
    local += float(w_ph[low_ph].sum())
    return EmissionSpectrum(
        nuclide.name,
        e_all[~low],
        w_all[~low],
        e_ph[~low_ph],
        w_ph[~low_ph],
        local,
    )


#: Default bilinear CT calibration: (HU, density g/mL) breakpoints. Air (-1000 HU, 0.0012 g/mL, ICRU 46), water
#: (0 HU, 1.000 g/mL) and cortical bone (1600 HU, 1.92 g/mL; ICRU 46 density, HU of cortical bone at 120 kVp
#: in the stoichiometric calibration of Schneider W, Bortfeld T, Schlegel W. Phys Med Biol 2000;45:459-478,
#: Table 6). Scanner- and kVp-specific: pass your own calibration for quantitative work.
DEFAULT_HU_DENSITY_POINTS: tuple[tuple[float, float], ...] = ((-1000.0, 0.0012), (0.0, 1.0), (1600.0, 1.92))


def hu_to_density(hu: np.ndarray, points: tuple[tuple[float, float], ...] = DEFAULT_HU_DENSITY_POINTS,
                  *, min_density_g_per_mL: float = 0.0012, max_density_g_per_mL: float = 3.0) -> np.ndarray:
    """Mass density (g/mL) from CT numbers (HU) by piecewise-linear calibration, extrapolated linearly beyond
    the last breakpoint and clipped to ``[min_density_g_per_mL, max_density_g_per_mL]``.

    Parameters
    ----------
    hu
        CT numbers (any shape).
    points
        ``(HU, density)`` breakpoints in increasing HU (default: air-water-cortical bone, see
        :data:`DEFAULT_HU_DENSITY_POINTS`).
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 2 or np.any(np.diff(pts[:, 0]) <= 0):
        raise InvalidInputError(
            f"HU-density calibration must be >= 2 (HU, g/mL) pairs in increasing HU; got {points!r}."
        )
    h = np.asarray(hu, dtype=np.float32)
    rho = np.interp(h, pts[:, 0], pts[:, 1]).astype(np.float32)
    slope = (pts[-1, 1] - pts[-2, 1]) / (pts[-1, 0] - pts[-2, 0])
    above = h > pts[-1, 0]
    if np.any(above):
        rho = np.where(above, pts[-1, 1] + slope * (h - pts[-1, 0]), rho).astype(np.float32)
    return np.clip(rho, min_density_g_per_mL, max_density_g_per_mL).astype(np.float32)


def density_to_hu(density_g_per_mL: np.ndarray,
                  points: tuple[tuple[float, float], ...] = DEFAULT_HU_DENSITY_POINTS) -> np.ndarray:
    """Inverse of :func:`hu_to_density` within the calibration's range (for phantoms and synthetic CTs that
    must be consistent with a calibration): CT numbers (HU) for mass densities (g/mL), extrapolated linearly
    beyond the last breakpoint."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 2 or np.any(np.diff(pts[:, 1]) <= 0):
        raise InvalidInputError(
            f"HU-density calibration must be >= 2 (HU, g/mL) pairs, increasing in both; got {points!r}."
        )
    rho = np.asarray(density_g_per_mL, dtype=float)
    hu = np.interp(rho, pts[:, 1], pts[:, 0])
    slope = (pts[-1, 0] - pts[-2, 0]) / (pts[-1, 1] - pts[-2, 1])
    return np.where(rho > pts[-1, 1], pts[-1, 0] + slope * (rho - pts[-1, 1]), hu)
