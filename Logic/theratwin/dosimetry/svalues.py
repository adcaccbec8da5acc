"""MIRD self-dose S-values for unit-density spheres (lesions) and for organs of a patient-specific mass.

Both use the same emission data and point kernels as the voxel engine (``_physics``):

* ``sphere_s_value``: electrons and photons are transported with their point kernels in a uniformly
  activated sphere. The absorbed fraction of a radial energy distribution ``f(r)`` in a sphere of radius ``a``
  is ``phi = integral f(r) G(r) dr`` with the geometric reduction factor
  ``G(r) = 1 - 3r/(4a) + r^3/(16a^3)`` for ``r <= 2a`` (probability that a point at distance r from a random
  source point in a random direction lies in the sphere; Berger MJ, MIRD Pamphlet 7, J Nucl Med 1971, Eq. 20).
  So electrons escape small spheres (177Lu: about half the electron energy from a 0.01 g sphere).
* ``organ_self_s_value``: electrons and alphas absorbed locally (MIRD practice for organs, e.g. OLINDA/EXM:
  Stabin MG et al. J Nucl Med 2005;46:1023), photons with the absorbed fraction of a unit-density sphere of the
  organ's mass (the sphere model of mass-scaled photon self-absorbed fractions; cf. Stabin MG, Konijnenberg MW.
  J Nucl Med 2000;41:149-160).

S in mGy/(MBq s) = 0.16022 x absorbed energy per decay [MeV] / mass [g].
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ._physics import (
    DPK_X_MAX,
    MEV_TO_MGY_G_PER_MBQ_S,
    csda_range_mm,
    emission_spectrum,
    mu_en_water_per_mm,
    scaled_dpk_cdf,
)

__all__ = ["sphere_s_value", "organ_self_s_value", "sphere_absorbed_fractions", "sphere_radius_mm"]

_MASS_RANGE_G = (1e-3, 2e5)
# 64-point Gauss-Legendre rule on [-1, 1] (computed once: it costs an eigenvalue problem)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)


def sphere_radius_mm(mass_g: float, density_g_per_mL: float = 1.0) -> float:
    """Radius (mm) of a sphere of ``mass_g`` grams at the given density."""
    return float((3.0 * mass_g / density_g_per_mL / (4.0 * np.pi)) ** (1.0 / 3.0) * 10.0)


def _geometric_factor(r: np.ndarray, a: float) -> np.ndarray:
    # Berger 1971 (MIRD Pamphlet 7), reduction factor of a uniformly activated sphere
    x = np.clip(r / a, 0.0, 2.0)
    return np.where(r < 2 * a, 1.0 - 0.75 * x + x**3 / 16.0, 0.0)


def _check_mass(mass_g: float) -> float:
    m = float(mass_g)
    if not np.isfinite(m) or not (_MASS_RANGE_G[0] <= m <= _MASS_RANGE_G[1]):
        raise InvalidInputError(
            f"mass_g must be between {_MASS_RANGE_G[0]} and {_MASS_RANGE_G[1]} g (sphere model); got {mass_g!r}."
        )
    return m


def sphere_absorbed_fractions(nuclide: str, mass_g: float) -> dict[str, float]:
    """Self-absorbed fractions in a unit-density sphere of ``mass_g``: electrons, photons and the total.

    Returns
    -------
    dict
        ``{"electron": phi_e, "photon": phi_p, "local_MeV": ..., "absorbed_MeV": energy absorbed per decay}``.
    """
    m = _check_mass(mass_g)
    spec = emission_spectrum(nuclide)
    a = sphere_radius_mm(m)
    phi_e = 1.0
    if spec.electron_weight_MeV.size:
        r_max = min(2 * a, float(csda_range_mm(spec.electron_energy_MeV.max())) * DPK_X_MAX)
        edges = np.linspace(0.0, r_max, 2001)
        rr = csda_range_mm(spec.electron_energy_MeV)
        cdf = scaled_dpk_cdf(edges[None, :] / rr[:, None])
        shells = spec.electron_weight_MeV @ np.diff(cdf, axis=1)
        mid = 0.5 * (edges[1:] + edges[:-1])
        phi_e = float(shells @ _geometric_factor(mid, a)) / spec.electron_total_MeV
    phi_p = 0.0
    if spec.photon_weight_MeV.size:
        mu = mu_en_water_per_mm(spec.photon_energy_MeV)
        # integral_0^2a mu exp(-mu r) G(r) dr by Gauss-Legendre (smooth integrand)
        r = a * (_GL_NODES + 1.0)  # [0, 2a]
        wr = _GL_WEIGHTS * a
        f = mu[:, None] * np.exp(-mu[:, None] * r[None, :]) * _geometric_factor(r, a)[None, :]
        per_line = f @ wr
        phi_p = float(spec.photon_weight_MeV @ per_line) / spec.photon_total_MeV
    absorbed = spec.electron_total_MeV * phi_e + spec.photon_total_MeV * phi_p + spec.local_MeV
    return {"electron": phi_e, "photon": phi_p, "local_MeV": spec.local_MeV, "absorbed_MeV": absorbed}


def sphere_s_value(nuclide: str, mass_g: float) -> float:
    """Self-dose S-value of a uniformly activated unit-density sphere, mGy/(MBq s).

    Parameters
    ----------
    nuclide
        Nuclide name.
    mass_g
        Sphere mass in g (0.001 g - 200 kg accepted; the sphere model is meant for lesions of 0.01 g - 1 kg).
    """
    af = sphere_absorbed_fractions(nuclide, mass_g)
    return MEV_TO_MGY_G_PER_MBQ_S * af["absorbed_MeV"] / float(mass_g)


def organ_self_s_value(nuclide: str, mass_g: float) -> float:
    """Organ self-dose S-value for a patient-specific organ mass, mGy/(MBq s).

    Electrons and alphas are absorbed in the organ; photons with the self-absorbed fraction of a unit-density
    sphere of the same mass (see the module docstring).
    """
    af = sphere_absorbed_fractions(nuclide, mass_g)
    spec = emission_spectrum(nuclide)
    absorbed = spec.electron_total_MeV + spec.local_MeV + spec.photon_total_MeV * af["photon"]
    return MEV_TO_MGY_G_PER_MBQ_S * absorbed / float(mass_g)
