"""Radionuclide data from ICRP Publication 107 (package ``icrp107-database``).

Nothing here is typed in by hand: half-lives and emission energies/yields come from the ICRP-107 files shipped
with ``icrp107-database``; decay chains and branching fractions (for alpha emitters with short-lived daughters,
e.g. Ac-225) come from ``radioactivedecay`` (ICRP-107 decay data too).

Energies are mean energies **per decay of the parent** in MeV (yield-weighted sums). Electrons are beta-minus
and beta-plus particles (their mean energies), internal-conversion and Auger electrons; photons are gamma rays,
X-rays and annihilation photons; alphas include their recoil nuclei.

>>> import theratwin as tt
>>> lu = tt.nuclides.get("177Lu")
>>> round(lu.half_life_h, 2)
159.53
"""

from ._data import Emission, Nuclide, available, get

__all__ = ["Nuclide", "Emission", "get", "available"]
