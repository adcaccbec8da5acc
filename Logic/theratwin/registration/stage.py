"""Pipeline stage ``"registration"``: align every time point to the reference and propagate the segmentation.

Fills (see :class:`theratwin.pipeline.PipelineState`):

- ``state.reference_grid``: the SPECT grid of cycle 1's first time point;
- ``state.aligned_spect``: ``{cycle: [ImageVolume Bq/mL on the reference grid, per time point]}``;
- ``state.registration``: ``{cycle: [RegistrationResult per time point]}``;
- ``state.masks``: ``{structure: float32 fractional mask on the reference grid}``;
- ``state.body_mask``: bool body mask on the reference grid (from the reference CT; None without CT).

Each time point's CT is registered rigidly (optionally + B-spline) to the reference CT; the same transform
maps its SPECT (same frame of reference as its CT) onto the reference grid. Time points without CT are
registered SPECT-to-SPECT (rigid, mutual information) or, if that is switched off or fails, left
unregistered; both are reported as warnings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..options import parse_options
from ..pipeline.core import STAGES, PipelineContext
from ..study import ImageVolume
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

__all__ = ["RegistrationStage"]

_REFERENCES = [
    "Lowekamp BC, et al. The design of SimpleITK. Front Neuroinform 2013;7:45.",
    "Mattes D, et al. PET-CT image registration in the chest using free-form deformations. "
    "IEEE Trans Med Imaging 2003;22:120-8.",
]


class RegistrationStage:
    """Registers all time points to the reference (see the module docstring)."""

    name = "registration"
    requires: tuple[str, ...] = ()
    Options = RegistrationConfig

    def run(self, ctx: PipelineContext) -> None:
        """Register every time point's CT to the reference CT, resample its SPECT onto the reference grid
        and build the structure masks (see the module docstring)."""
        import SimpleITK as sitk

        cfg = parse_options(self.Options, ctx.config.options(self.name), stage=self.name)
        study = ctx.study
        res = ctx.results
        first_cycle = study.cycles[0]
        if not first_cycle.time_points:
            raise InvalidInputError(f"Cycle {first_cycle.number} has no time point; the reference grid is its "
                                    "first SPECT. Add the imaging of the first cycle.")
        ref_tp = first_cycle.time_points[0]
        grid = ref_tp.image.geometry
        ref_ct = study.reference_ct
        ref_spect = ref_tp.image
        aligned: dict[int, list[ImageVolume]] = {}
        regs: dict[int, list[RegistrationResult]] = {}
        n_total = sum(len(c.time_points) for c in study.cycles)
        ref_points = reference_surface_points(ref_ct, threshold_HU=cfg.body_threshold_HU, seed=cfg.seed) \
            if ref_ct is not None else None
        done = 0
        for cycle in study.cycles:
            aligned[cycle.number] = []
            regs[cycle.number] = []
            for i, tp in enumerate(cycle.time_points):
                ctx.stage_progress(done / max(n_total, 1), f"registering cycle {cycle.number} time point {i + 1}")
                done += 1
                label = f"cycle {cycle.number}, time point {i + 1} (t = {tp.time_h(cycle.administration):.1f} h)"
                if tp is ref_tp:
                    rr = RegistrationResult(sitk.Euler3DTransform(), 0.0, "reference")
                elif ref_ct is not None and tp.ct is not None:
                    try:
                        tr, val = register_images(ref_ct, tp.ct, cfg, modality="CT")
                    except InvalidInputError as exc:
                        ref_file = study.reference_ct_source.files[0] if study.reference_ct_source.files else "?"
                        ct_file = tp.ct_source.files[0] if tp.ct_source.files else "?"
                        raise InvalidInputError(f"{label}: CT {ct_file} cannot be registered to the reference CT "
                                                f"{ref_file}: {exc}") from exc
                    resid = residual_misalignment_mm(ref_ct, tp.ct, tr, threshold_HU=cfg.body_threshold_HU,
                                                     reference_points_mm=ref_points)
                    rot, trans = transform_parameters(tr)
                    rr = RegistrationResult(tr, resid, "rigid_ct+bspline" if cfg.deformable else "rigid_ct",
                                            rot, trans, val)
                elif cfg.spect_to_spect:
                    try:
                        tr, val = register_images(ref_spect, tp.image, cfg, modality="NM")
                        rot, trans = transform_parameters(tr)
                        rr = RegistrationResult(tr, float("nan"), "rigid_spect", rot, trans, val)
                        res.warn("registration", f"{label}: no CT; registered SPECT to the reference SPECT "
                                 "(activity redistribution between scans can bias this).", cycle=cycle.number)
                    except InvalidInputError as exc:
                        rr = RegistrationResult(sitk.Euler3DTransform(), float("nan"), "identity")
                        res.warn("registration", f"{label}: no CT and SPECT registration failed ({exc}); "
                                 "used without registration.", cycle=cycle.number)
                else:
                    rr = RegistrationResult(sitk.Euler3DTransform(), float("nan"), "identity")
                    res.warn("registration", f"{label}: no CT; used without registration (identity).",
                             cycle=cycle.number)
                img, factor = resample_activity(tp.image, grid, rr.transform)
                rr.conservation_factor = factor
                if abs(factor - 1.0) > 0.05:
                    rr.notes.append(f"Resampling changed the total activity by {100 * (1 / factor - 1):+.1f} %; "
                                    "restored by scaling.")
                if math.isfinite(rr.residual_mm) and rr.residual_mm > cfg.warn_residual_mm:
                    res.warn("registration", f"{label}: residual misalignment {rr.residual_mm:.1f} mm exceeds "
                             f"{cfg.warn_residual_mm:.1f} mm; check the registration (TACs may be biased).",
                             cycle=cycle.number)
                aligned[cycle.number].append(img)
                regs[cycle.number].append(rr)
        masks: dict[str, np.ndarray] = {}
        if study.segmentation is not None:
            for s in study.segmentation.structures:
                masks[s.name] = study.segmentation.fractional_mask(s.name, grid).astype(np.float32)
        else:
            res.warn("registration", "The study has no segmentation: no structure masks (only voxel results).")
        body = None
        if ref_ct is not None:
            small = shrink_volume(ref_ct, min(grid.spacing_mm))
            bm = body_mask(small, cfg.body_threshold_HU).astype(np.float32)
            body = ImageVolume.from_geometry(bm, small.geometry, "1").resample_to(grid, order=1).array >= 0.5
        ctx.state.reference_grid = grid
        ctx.state.aligned_spect = aligned
        ctx.state.registration = regs
        ctx.state.masks = masks
        ctx.state.body_mask = body
        res.extras.setdefault("registration", {})
        res.extras["registration"] = {
            str(c): [r.to_dict() for r in rs] for c, rs in regs.items()
        }
        params: dict[str, Any] = dataclasses.asdict(cfg)
        params["reference"] = "SPECT grid of cycle 1, time point 1; CT of that time point"
        res.record_method("registration", "Rigid CT-to-CT registration (SimpleITK, multi-resolution, "
                          f"{'Mattes mutual information' if cfg.metric == 'mattes' else 'correlation'}), SPECT "
                          "resampled onto the reference SPECT grid with total activity conserved; residual = mean "
                          "body-surface distance", params, _REFERENCES)
        ctx.stage_progress(1.0, "registration done")


STAGES.register("registration", RegistrationStage, replace=True)
