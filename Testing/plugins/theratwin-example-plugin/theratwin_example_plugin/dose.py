"""A dose engine that deposits each decay's mean electron energy in the voxel where it happens.

``D = TIA x 3600 s/h x E_e x 1.602e-13 J/MeV / (rho x 1e-3 kg/mL)``, with ``E_e`` the mean electron energy per
decay from ``theratwin.nuclides`` (ICRP-107) and ``rho`` the density in g/mL (1 without a CT).
"""

from __future__ import annotations

import numpy as np

import theratwin as tt

_J_PER_MEV = 1.602176634e-13


class ElectronDepositionEngine:
    """Implements ``theratwin.dosimetry.DoseEngine``."""

    name = "example_electrons"
    description = "example plug-in: mean electron energy deposited locally"
    references = ["ICRP Publication 107 (mean electron energy per decay)"]

    def compute(self, tia_Bq_h_per_mL, voxel_mm, nuclide, *, density_g_per_mL=None, progress=None):
        e_MeV = tt.nuclides.get(nuclide).electron_energy_MeV
        dose_Gy = np.asarray(tia_Bq_h_per_mL, dtype=float) * (3600.0 * e_MeV * _J_PER_MEV / 1e-3)
        if density_g_per_mL is not None:
            dose_Gy = dose_Gy / np.asarray(density_g_per_mL, dtype=float)
        if progress is not None:
            progress(1.0, "example_electrons done")
        return dose_Gy
