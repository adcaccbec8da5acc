"""Registration of time points: rigid (and optional B-spline) CT-to-CT registration with SimpleITK,
activity-conserving resampling of SPECT onto the reference grid, segmentation propagation and residual
misalignment. The pipeline stage ``"registration"`` lives in :mod:`theratwin.registration.stage`.
"""

from .register import (
    RegistrationConfig,
    RegistrationResult,
    body_mask,
    reference_surface_points,
    register_images,
    resample_activity,
    residual_misalignment_mm,
    shrink_volume,
    transform_parameters,
)

__all__ = [
    "RegistrationConfig",
    "RegistrationResult",
    "register_images",
    "resample_activity",
    "residual_misalignment_mm",
    "body_mask",
    "transform_parameters",
    "reference_surface_points",
    "shrink_volume",
]
