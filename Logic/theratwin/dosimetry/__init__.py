"""Absorbed dose: voxel kernels, dose maps (DVK / LED and plug-in engines), MIRD S-values, DVH.

>>> import theratwin as tt
>>> k = tt.dosimetry.voxel_kernel("Lu-177", voxel_mm=(4.8, 4.8, 4.8), radius_voxels=3)
>>> k.shape
(7, 7, 7)

See ``_physics`` for the physics models and their sources, ``kernels`` for the voxel integration, ``longrange``
for the photon energy beyond the kernel (a coarse convolution inside the same FFT pair), ``dose`` for the
dose-engine protocol and registry (entry-point group ``theratwin.dose_engines``) and ``partial_volume`` for the
structure-dose correction that agrees with the recovery-corrected TIA.
"""

from ._physics import DEFAULT_HU_DENSITY_POINTS, csda_range_mm, density_to_hu, hu_to_density
from .dose import DOSE_ENGINES, DoseEngine, DVKEngine, LEDEngine, dose_map, fft_convolve
from .dvh import DVH, dose_metrics, dvh, weighted_quantile
from .kernels import kernel_energy_MeV, voxel_kernel
from .svalues import organ_self_s_value, sphere_absorbed_fractions, sphere_radius_mm, sphere_s_value

__all__ = [
    "voxel_kernel",
    "kernel_energy_MeV",
    "dose_map",
    "DOSE_ENGINES",
    "DoseEngine",
    "DVKEngine",
    "LEDEngine",
    "fft_convolve",
    "sphere_s_value",
    "organ_self_s_value",
    "sphere_absorbed_fractions",
    "sphere_radius_mm",
    "hu_to_density",
    "density_to_hu",
    "DEFAULT_HU_DENSITY_POINTS",
    "csda_range_mm",
    "DVH",
    "dvh",
    "dose_metrics",
    "weighted_quantile",
]
