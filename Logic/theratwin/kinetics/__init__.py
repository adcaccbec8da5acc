"""Kinetics: time-activity curves, model fitting with selection and uncertainty, voxel-wise fits and
single-time-point methods.

>>> import numpy as np, theratwin as tt
>>> t = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
>>> fit = tt.kinetics.fit_tac(t, 100 * np.exp(-0.03 * t), nuclide="Lu-177", model="mono_exp")
>>> round(fit.tia_MBq_h, 1)
3333.3

Models are looked up in :data:`KINETIC_MODELS` (entry-point group ``theratwin.kinetic_models``); the
protocol a plug-in implements is documented in :mod:`theratwin.kinetics.models`.

Where to look:

- :mod:`~theratwin.kinetics.fit`: ``fit_tac`` (prior-informed MAP or weighted least-squares fits, covariance,
  analytic TIA with delta-method SD, model selection by Laplace evidence (default) or AICc with model
  averaging, documented fallbacks; ``TacFit.method`` says which);
- :mod:`~theratwin.kinetics.priors`: the population priors of the parameters sparse schedules cannot pin
  down (uptake half-time, fast phase), with their sources;
- :mod:`~theratwin.kinetics.voxel`: ``fit_voxels`` (all voxels at once: the hybrid tail + early-phase integral
  the stage uses, or a mono-exponential; pooled noise model for the SDs);
- :mod:`~theratwin.kinetics.stp`: single-time-point methods and when each is valid;
- :mod:`~theratwin.kinetics.tac`: structure activities from images, the uncertainty budget (Gear et al.
  2018) and partial-volume recovery (mask/sphere recovery coefficients, geometric transfer matrix);
- :mod:`~theratwin.kinetics.stage`: the pipeline stage and its options (``KineticsConfig``).
"""

from .fit import ModelFit, TacFit, aicc, describe_method, fit_tac
from .models import (
    KINETIC_MODELS,
    BiExponential,
    BiExponentialUptake,
    DirectFit,
    KineticModel,
    MonoExponential,
    Trapezoidal,
    TriExponential,
    get_model,
    selectable_models,
)
from .priors import KineticPriors, LogNormalPrior, NormalPrior
from .stp import StpEstimate, hanscheid_ratio, single_time_point, single_time_point_estimate
from .tac import (
    ActivityUncertaintyModel,
    GeometricTransferMatrix,
    RecoveryModel,
    StructureTac,
    mask_recovery_coefficient,
    partial_volume_flag,
    rbv_correct,
    sphere_recovery_coefficient,
    structure_tacs,
)
from .voxel import VOXEL_MODEL_CODES, VoxelFit, fit_voxels

__all__ = [
    "fit_tac",
    "TacFit",
    "ModelFit",
    "aicc",
    "describe_method",
    "KineticPriors",
    "LogNormalPrior",
    "NormalPrior",
    "fit_voxels",
    "VoxelFit",
    "VOXEL_MODEL_CODES",
    "single_time_point",
    "single_time_point_estimate",
    "StpEstimate",
    "hanscheid_ratio",
    "KINETIC_MODELS",
    "KineticModel",
    "DirectFit",
    "MonoExponential",
    "BiExponential",
    "BiExponentialUptake",
    "TriExponential",
    "Trapezoidal",
    "get_model",
    "selectable_models",
    "ActivityUncertaintyModel",
    "RecoveryModel",
    "StructureTac",
    "structure_tacs",
    "sphere_recovery_coefficient",
    "mask_recovery_coefficient",
    "GeometricTransferMatrix",
    "rbv_correct",
    "partial_volume_flag",
]
